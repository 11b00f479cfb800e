//! The embedded SQLite store.
//!
//! Durability: WAL with `synchronous=FULL`, so a 202 survives a crash of the
//! process and of the machine. Throughput: every write goes through one writer
//! task that commits whatever has queued up meanwhile in one transaction (group
//! commit), so concurrent requests share one disk flush instead of paying for
//! one each. Reads use a small pool of their own connections.

use super::{
    created_record, initial_status, status_column, status_counts, EventOutcome, Ingested, Job,
    Outcome, QueueStats, ReplyFilter, ReplyRecord, Requeued, Store, StoreError,
};
use crate::domain::{channel_rank, ChatwootEvent, Effect, GoldReply, Status};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most writes committed together: bounds one transaction's latency.
const MAX_BATCH: usize = 512;
const REPLY_COLUMNS: &str = "reply_id, account_id, conversation_id, action, status, attempts, \
     last_error, chatwoot_message_id, received_at, next_attempt_at, delivered_at, confirmed_at, \
     channel_status, channel_error";

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type WriteOp =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Completion> + Send>;

/// One write for the writer task. Ingests are data, not closures, so a whole
/// batch of them becomes one multi-row INSERT.
enum Write {
    Ingest(Box<PendingIngest>),
    Op(WriteOp),
}

struct PendingIngest {
    new: NewReply,
    now: DateTime<Utc>,
    answer: oneshot::Sender<Result<Ingested, StoreError>>,
}

pub struct SqliteStore {
    writes: mpsc::Sender<Write>,
    reads: SqlitePool,
    /// The worker to wake after a commit that added a job.
    wake: std::sync::OnceLock<std::sync::Arc<tokio::sync::Notify>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Checkpoints run in a task of their own: copying the WAL into the
        // database inside the writer would stall every request waiting on it.
        // The WAL file is cut back to 64 MB whenever it restarts.
        let writer_options = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "67108864");
        let mut writer = SqliteConnection::connect_with(&writer_options).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        let checkpointer = SqliteConnection::connect_with(&options).await?;
        tokio::spawn(checkpoint_regularly(checkpointer));
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let (writes, rx) = mpsc::channel(4096);
        tokio::spawn(run_writer(writer, rx));
        Ok(Self {
            writes,
            reads,
            wake: std::sync::OnceLock::new(),
        })
    }

    /// Runs `op` inside the next group transaction and returns its result once committed.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let boxed: WriteOp = Box::new(move |conn| {
            Box::pin(async move {
                let result = op(conn).await;
                Box::new(move |committed: Result<(), StoreError>| {
                    let _ = tx.send(committed.and(result));
                }) as Completion
            })
        });
        self.writes
            .send(Write::Op(boxed))
            .await
            .map_err(|_| StoreError::Unavailable)?;
        rx.await.map_err(|_| StoreError::Unavailable)?
    }
}

/// Copies the WAL into the database every half second without blocking the
/// writer (PASSIVE), so commits stay short. The WAL restarts from its
/// beginning once a checkpoint has caught up with the writer, which a lull of
/// a fraction of a second allows; under hours of sustained load it keeps growing.
async fn checkpoint_regularly(mut conn: SqliteConnection) {
    const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; the WAL grows until the next one");
        }
    }
}

/// Takes every queued write, runs them in one transaction, commits once, then answers them all.
async fn run_writer(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // If the transaction cannot even begin, the writes are dropped unrun
        // and their callers see `StoreError::Unavailable`.
        let Ok(mut tx) = conn.begin().await else {
            batch.clear();
            continue;
        };
        let (mut ingests, mut answers) = (Vec::new(), Vec::new());
        let mut completions = Vec::with_capacity(batch.len());
        for write in batch.drain(..) {
            match write {
                Write::Ingest(pending) => {
                    let PendingIngest { new, now, answer } = *pending;
                    ingests.push((new, now));
                    answers.push(answer);
                }
                Write::Op(op) => completions.push(op(&mut tx).await),
            }
        }
        let ingested = ingest_batch(&mut tx, &ingests).await;
        let committed = tx.commit().await.map_err(|e| e.to_string());
        for complete in completions {
            complete(committed.clone().map_err(StoreError::Commit));
        }
        for (answer, result) in answers.into_iter().zip(ingested) {
            let result = committed.clone().map_err(StoreError::Commit).and(result);
            let _ = answer.send(result);
        }
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

fn record(row: &SqliteRow) -> Result<ReplyRecord, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(ReplyRecord {
        reply_id: row.try_get("reply_id")?,
        account_id: row.try_get("account_id")?,
        conversation_id: row.try_get("conversation_id")?,
        action: row.try_get("action")?,
        status: status_column(&status)?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        chatwoot_message_id: row.try_get("chatwoot_message_id")?,
        received_at: time(row.try_get("received_at")?).unwrap_or_default(),
        next_attempt_at: time(row.try_get("next_attempt_at")?),
        delivered_at: time(row.try_get("delivered_at")?),
        confirmed_at: time(row.try_get("confirmed_at")?),
        channel_status: row.try_get("channel_status")?,
        channel_error: row.try_get("channel_error")?,
    })
}

async fn fetch_record(
    conn: &mut SqliteConnection,
    reply_id: &str,
) -> Result<Option<ReplyRecord>, StoreError> {
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = ?");
    let row = sqlx::query(&sql)
        .bind(reply_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(record).transpose()?)
}

/// A reply ready to insert: everything serialised before it reaches the
/// writer, which is the one place every request waits for.
struct NewReply {
    reply: GoldReply,
    fingerprint: String,
    draft: Option<String>,
    tags: String,
    metadata: Option<String>,
}

impl NewReply {
    fn new(reply: &GoldReply) -> Self {
        Self {
            fingerprint: reply.fingerprint(),
            draft: reply.draft().map(|v| v.to_string()),
            tags: serde_json::Value::from(reply.tags().to_vec()).to_string(),
            metadata: reply.metadata().map(|v| v.to_string()),
            reply: reply.clone(),
        }
    }
}

/// The most rows in one INSERT: 14 parameters each, far below SQLite's limit.
const INSERT_CHUNK: usize = 256;

/// Stores a batch of posted replies with one multi-row INSERT (and one more
/// for their jobs), so a batch costs a few statements, not a few per reply.
/// Answers in the order of `items`.
async fn ingest_batch(
    conn: &mut SqliteConnection,
    items: &[(NewReply, DateTime<Utc>)],
) -> Vec<Result<Ingested, StoreError>> {
    if items.is_empty() {
        return Vec::new();
    }
    match try_ingest_batch(conn, items).await {
        Ok(results) => results,
        Err(e) => {
            let text = e.to_string();
            items
                .iter()
                .map(|_| Err(StoreError::Commit(text.clone())))
                .collect()
        }
    }
}

async fn try_ingest_batch(
    conn: &mut SqliteConnection,
    items: &[(NewReply, DateTime<Utc>)],
) -> Result<Vec<Result<Ingested, StoreError>>, StoreError> {
    let mut inserted = std::collections::HashSet::new();
    for chunk in items.chunks(INSERT_CHUNK) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO gold_replies (reply_id, account_id, conversation_id, action, content, private, \
             approved_by, draft, tags, metadata, fingerprint, status, received_at, next_attempt_at) ",
        );
        insert.push_values(chunk, |mut row, (new, now)| {
            let reply = &new.reply;
            let now_ms = millis(*now);
            row.push_bind(reply.reply_id().as_str())
                .push_bind(reply.account_id())
                .push_bind(reply.conversation_id())
                .push_bind(reply.action().as_str())
                .push_bind(reply.content())
                .push_bind(reply.private())
                .push_bind(reply.approved_by())
                .push_bind(new.draft.as_deref())
                .push_bind(new.tags.as_str())
                .push_bind(new.metadata.as_deref())
                .push_bind(new.fingerprint.as_str())
                .push_bind(initial_status(reply).as_str())
                .push_bind(now_ms)
                .push_bind(reply.action().sends().then_some(now_ms));
        });
        insert.push(" ON CONFLICT (reply_id) DO NOTHING RETURNING reply_id");
        let ids: Vec<String> = insert.build_query_scalar().fetch_all(&mut *conn).await?;
        inserted.extend(ids);
    }
    let mut results = Vec::with_capacity(items.len());
    let mut jobs = Vec::new();
    for (new, now) in items {
        let id = new.reply.reply_id().as_str();
        // The first of two posts of one id in a batch is the one inserted.
        if inserted.remove(id) {
            if new.reply.action().sends() {
                jobs.push((&new.reply, millis(*now)));
            }
            results.push(Ok(Ingested::Created(created_record(&new.reply, *now))));
        } else {
            results.push(existing(conn, id, &new.fingerprint).await);
        }
    }
    enqueue_batch(conn, &jobs).await?;
    Ok(results)
}

/// Adds the jobs of a batch at the back of their conversations' lines, then
/// makes each touched conversation's oldest job its head (a no-op where the
/// line already had one).
async fn enqueue_batch(
    conn: &mut SqliteConnection,
    jobs: &[(&GoldReply, i64)],
) -> Result<(), StoreError> {
    let mut first_seq: Option<i64> = None;
    for chunk in jobs.chunks(INSERT_CHUNK) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at) ",
        );
        insert.push_values(chunk, |mut row, (reply, due_ms)| {
            row.push_bind(reply.reply_id().as_str())
                .push_bind(reply.account_id())
                .push_bind(reply.conversation_id())
                .push_bind(*due_ms);
        });
        insert.push(" RETURNING seq");
        let seqs: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *conn).await?;
        first_seq = first_seq.into_iter().chain(seqs).min();
    }
    let Some(first_seq) = first_seq else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE delivery_jobs SET is_head = 1 WHERE is_head = 0 AND seq IN ( \
           SELECT MIN(d.seq) FROM delivery_jobs d \
           WHERE (d.account_id, d.conversation_id) IN \
             (SELECT account_id, conversation_id FROM delivery_jobs WHERE seq >= ?) \
           GROUP BY d.account_id, d.conversation_id)",
    )
    .bind(first_seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds a job at the back of its conversation's line; it is the head when the
/// line was empty.
async fn enqueue(
    conn: &mut SqliteConnection,
    reply_id: &str,
    account_id: i64,
    conversation_id: i64,
    due_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, is_head) \
         VALUES (?1, ?2, ?3, ?4, NOT EXISTS (SELECT 1 FROM delivery_jobs \
         WHERE account_id = ?2 AND conversation_id = ?3))",
    )
    .bind(reply_id)
    .bind(account_id)
    .bind(conversation_id)
    .bind(due_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a reply's job (only if `owner` holds it, when given) and makes the
/// next job of its conversation the head. Returns whether a job was removed.
async fn remove_job(
    conn: &mut SqliteConnection,
    reply_id: &str,
    owner: Option<&str>,
) -> Result<bool, StoreError> {
    let removed: Option<(i64, i64)> = sqlx::query_as(
        "DELETE FROM delivery_jobs WHERE reply_id = ?1 AND (?2 IS NULL OR lease_owner = ?2) \
         RETURNING account_id, conversation_id",
    )
    .bind(reply_id)
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((account_id, conversation_id)) = removed else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE delivery_jobs SET is_head = 1 WHERE seq = (SELECT MIN(seq) FROM delivery_jobs \
         WHERE account_id = ? AND conversation_id = ?)",
    )
    .bind(account_id)
    .bind(conversation_id)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// The reply id is taken: the same reply again, or a conflicting one.
async fn existing(
    conn: &mut SqliteConnection,
    reply_id: &str,
    fingerprint: &str,
) -> Result<Ingested, StoreError> {
    let stored: String =
        sqlx::query_scalar("SELECT fingerprint FROM gold_replies WHERE reply_id = ?")
            .bind(reply_id)
            .fetch_one(&mut *conn)
            .await?;
    let record = fetch_record(conn, reply_id)
        .await?
        .ok_or(StoreError::Unavailable)?;
    Ok(if stored == fingerprint {
        Ingested::Existing(record)
    } else {
        Ingested::Conflict(record)
    })
}

async fn claim_tx(
    conn: &mut SqliteConnection,
    owner: String,
    now: DateTime<Utc>,
    lease: Duration,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let now_ms = millis(now);
    let rows = sqlx::query(
        "SELECT j.seq, j.reply_id, j.account_id, j.conversation_id, j.maybe_sent, \
         r.content, r.private, r.attempts, COALESCE(r.requeued_at, r.received_at) AS age_from \
         FROM delivery_jobs j JOIN gold_replies r ON r.reply_id = j.reply_id \
         WHERE j.is_head = 1 AND j.due_at <= ?1 \
         AND (j.lease_until IS NULL OR j.lease_until <= ?1) \
         ORDER BY j.due_at, j.seq LIMIT ?2",
    )
    .bind(now_ms)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await?;
    let lease_until = now_ms + lease.as_millis() as i64;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        let reply_id: String = row.try_get("reply_id")?;
        // Mark the attempt as possibly sent before it starts: if this process
        // dies mid-request, the next claimant looks before sending again.
        sqlx::query(
            "UPDATE delivery_jobs SET lease_owner = ?, lease_until = ?, maybe_sent = 1 WHERE seq = ?",
        )
        .bind(&owner)
        .bind(lease_until)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE gold_replies SET attempts = attempts + 1 WHERE reply_id = ?")
            .bind(&reply_id)
            .execute(&mut *conn)
            .await?;
        jobs.push(Job {
            reply_id,
            account_id: row.try_get("account_id")?,
            conversation_id: row.try_get("conversation_id")?,
            content: row.try_get("content")?,
            private: row.try_get("private")?,
            attempt: row.try_get::<i64, _>("attempts")? + 1,
            received_at: time(row.try_get("age_from")?).unwrap_or(now),
            maybe_sent: row.try_get("maybe_sent")?,
        });
    }
    Ok(jobs)
}

async fn finish_tx(
    conn: &mut SqliteConnection,
    reply_id: String,
    owner: String,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now_ms = millis(now);
    match outcome {
        Outcome::Delivered { message_id } => {
            // Recorded whoever holds the lease: the message exists either way.
            remove_job(conn, &reply_id, None).await?;
            sqlx::query(
                "UPDATE gold_replies SET \
                 status = CASE WHEN status = 'confirmed' THEN status ELSE 'delivered' END, \
                 chatwoot_message_id = ?, delivered_at = COALESCE(delivered_at, ?), \
                 last_error = NULL, next_attempt_at = NULL WHERE reply_id = ?",
            )
            .bind(message_id)
            .bind(now_ms)
            .bind(&reply_id)
            .execute(&mut *conn)
            .await?;
        }
        Outcome::Retry {
            at,
            error,
            maybe_sent,
        } => {
            let held = sqlx::query(
                "UPDATE delivery_jobs SET due_at = ?, lease_owner = NULL, lease_until = NULL, \
                 maybe_sent = ? WHERE reply_id = ? AND lease_owner = ?",
            )
            .bind(millis(at))
            .bind(maybe_sent)
            .bind(&reply_id)
            .bind(&owner)
            .execute(&mut *conn)
            .await?;
            if held.rows_affected() > 0 {
                sqlx::query(
                    "UPDATE gold_replies SET last_error = ?, next_attempt_at = ? WHERE reply_id = ?",
                )
                .bind(error)
                .bind(millis(at))
                .bind(&reply_id)
                .execute(&mut *conn)
                .await?;
            }
        }
        Outcome::Dead { error } => {
            if remove_job(conn, &reply_id, Some(&owner)).await? {
                sqlx::query(
                    "UPDATE gold_replies SET status = 'dead', last_error = ?, next_attempt_at = NULL \
                     WHERE reply_id = ? AND status = 'queued'",
                )
                .bind(error)
                .bind(&reply_id)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

async fn requeue_tx(
    conn: &mut SqliteConnection,
    reply_id: String,
    now: DateTime<Utc>,
) -> Result<Requeued, StoreError> {
    let Some(record) = fetch_record(conn, &reply_id).await? else {
        return Ok(Requeued::NotFound);
    };
    if record.status != Status::Dead {
        return Ok(Requeued::NotDead(record));
    }
    let now_ms = millis(now);
    sqlx::query(
        "UPDATE gold_replies SET status = 'queued', attempts = 0, requeued_at = ?, \
         next_attempt_at = ? WHERE reply_id = ?",
    )
    .bind(now_ms)
    .bind(now_ms)
    .bind(&reply_id)
    .execute(&mut *conn)
    .await?;
    // A new job goes to the back of its conversation's line. The operator
    // decided to send again, so no lookup first (maybe_sent = 0).
    enqueue(
        conn,
        &reply_id,
        record.account_id,
        record.conversation_id,
        now_ms,
    )
    .await?;
    let record = fetch_record(conn, &reply_id)
        .await?
        .ok_or(StoreError::Unavailable)?;
    Ok(Requeued::Queued(record))
}

async fn record_event_tx(
    conn: &mut SqliteConnection,
    event: ChatwootEvent,
    payload: String,
    now: DateTime<Utc>,
) -> Result<EventOutcome, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO chatwoot_events (delivery_id, dedupe_key, event, message_id, reply_id, payload, received_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(&event.delivery_id)
    .bind(&event.dedupe_key)
    .bind(&event.kind)
    .bind(event.message_id)
    .bind(&event.reply_id)
    .bind(payload)
    .bind(millis(now))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(EventOutcome::Duplicate);
    }
    match event.effect {
        Some(Effect::Confirm {
            reply_id,
            message_id,
        }) => confirm(conn, &reply_id, message_id, now).await?,
        Some(Effect::ChannelStatus {
            reply_id,
            message_id,
            status,
            error,
        }) => {
            confirm(conn, &reply_id, message_id, now).await?;
            channel_status(conn, &reply_id, status, error).await?;
        }
        None => {}
    }
    Ok(EventOutcome::Processed)
}

/// The message is in the conversation: mark the reply confirmed and drop its
/// job, so it is never sent again even if the API answer was lost.
async fn confirm(
    conn: &mut SqliteConnection,
    reply_id: &str,
    message_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE gold_replies SET status = 'confirmed', confirmed_at = ?, \
         chatwoot_message_id = COALESCE(chatwoot_message_id, ?), \
         delivered_at = COALESCE(delivered_at, ?), last_error = NULL, next_attempt_at = NULL \
         WHERE reply_id = ? AND status IN ('queued', 'delivered', 'dead')",
    )
    .bind(millis(now))
    .bind(message_id)
    .bind(millis(now))
    .bind(reply_id)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() > 0 {
        remove_job(conn, reply_id, None).await?;
    }
    Ok(())
}

async fn channel_status(
    conn: &mut SqliteConnection,
    reply_id: &str,
    status: Option<String>,
    error: Option<String>,
) -> Result<(), StoreError> {
    let current: Option<Option<String>> =
        sqlx::query_scalar("SELECT channel_status FROM gold_replies WHERE reply_id = ?")
            .bind(reply_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(current) = current else {
        return Ok(());
    };
    let rank = |s: &Option<String>| s.as_deref().map_or(0, channel_rank);
    if status.is_none() || rank(&status) < rank(&current) {
        return Ok(());
    }
    sqlx::query("UPDATE gold_replies SET channel_status = ?, channel_error = ? WHERE reply_id = ?")
        .bind(status)
        .bind(error)
        .bind(reply_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn list(&self, filter: &ReplyFilter) -> Result<Vec<ReplyRecord>, StoreError> {
        let mut sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE 1 = 1");
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.account_id.is_some() {
            sql.push_str(" AND account_id = ?");
        }
        if filter.conversation_id.is_some() {
            sql.push_str(" AND conversation_id = ?");
        }
        if filter.after.is_some() {
            sql.push_str(" AND (received_at < ? OR (received_at = ? AND reply_id > ?))");
        }
        sql.push_str(" ORDER BY received_at DESC, reply_id ASC LIMIT ?");
        let mut query = sqlx::query(&sql);
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(account) = filter.account_id {
            query = query.bind(account);
        }
        if let Some(conversation) = filter.conversation_id {
            query = query.bind(conversation);
        }
        if let Some(cursor) = &filter.after {
            let at = millis(cursor.received_at);
            query = query.bind(at).bind(at).bind(cursor.reply_id.clone());
        }
        let rows = query
            .bind(filter.limit as i64)
            .fetch_all(&self.reads)
            .await?;
        Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
    }

    async fn requeue(&self, reply_id: &str, now: DateTime<Utc>) -> Result<Requeued, StoreError> {
        let reply_id = reply_id.to_owned();
        let requeued = self
            .write(move |c| Box::pin(requeue_tx(c, reply_id, now)))
            .await?;
        if matches!(requeued, Requeued::Queued(_)) {
            self.new_jobs();
        }
        Ok(requeued)
    }

    async fn count_by_status(&self) -> Result<Vec<(Status, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM gold_replies GROUP BY status")
                .fetch_all(&self.reads)
                .await?;
        Ok(status_counts(rows))
    }

    async fn record_event(
        &self,
        event: &ChatwootEvent,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        let (event, payload) = (event.clone(), payload.to_owned());
        self.write(move |c| Box::pin(record_event_tx(c, event, payload, now)))
            .await
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM chatwoot_events WHERE received_at < ?")
                    .bind(millis(before))
                    .execute(c)
                    .await?;
                Ok(done.rows_affected())
            })
        })
        .await
    }

    async fn ingest(&self, reply: &GoldReply, now: DateTime<Utc>) -> Result<Ingested, StoreError> {
        let (answer, answered) = oneshot::channel();
        let new = NewReply::new(reply);
        self.writes
            .send(Write::Ingest(Box::new(PendingIngest { new, now, answer })))
            .await
            .map_err(|_| StoreError::Unavailable)?;
        let ingested = answered.await.map_err(|_| StoreError::Unavailable)??;
        if matches!(ingested, Ingested::Created(_)) && reply.action().sends() {
            self.new_jobs();
        }
        Ok(ingested)
    }

    async fn reply(&self, reply_id: &str) -> Result<Option<ReplyRecord>, StoreError> {
        let mut conn = self.reads.acquire().await?;
        fetch_record(&mut conn, reply_id).await
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let owner = owner.to_owned();
        self.write(move |c| Box::pin(claim_tx(c, owner, now, lease, limit)))
            .await
    }

    async fn finish(
        &self,
        reply_id: &str,
        owner: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (reply_id, owner) = (reply_id.to_owned(), owner.to_owned());
        self.write(move |c| Box::pin(finish_tx(c, reply_id, owner, outcome, now)))
            .await
    }

    async fn release_all(&self, owner: &str) -> Result<(), StoreError> {
        let owner = owner.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE delivery_jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                )
                .bind(owner)
                .execute(c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ms: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(due_at, COALESCE(lease_until, 0))) FROM delivery_jobs WHERE is_head = 1",
        )
        .fetch_one(&self.reads)
        .await?;
        Ok(time(ms))
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS queued, MIN(received_at) AS oldest FROM gold_replies WHERE status = 'queued'",
        )
        .fetch_one(&self.reads)
        .await?;
        Ok(QueueStats {
            queued: row.try_get("queued")?,
            oldest_queued_at: time(row.try_get("oldest")?),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        Ok(())
    }

    fn wake_on_new_jobs(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        let _ = self.wake.set(wake);
    }
}

impl SqliteStore {
    /// Tells this process's worker that a committed job waits.
    fn new_jobs(&self) {
        if let Some(wake) = self.wake.get() {
            wake.notify_one();
        }
    }
}
