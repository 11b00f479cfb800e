//! The embedded SQLite store.
//!
//! Durability: WAL with `synchronous=FULL`, so a 202 survives a crash of the
//! process and of the machine. Throughput: every write goes through one writer
//! task that commits whatever has queued up meanwhile in one transaction (group
//! commit), so concurrent requests share one disk flush instead of paying for
//! one each. Reads use a small pool of their own connections.

use super::lifecycle::{self, NewReply, ReplyChange, Stored, Tx, Value};
use super::{
    reply_id_column, status_column, status_counts, EventOutcome, Ingested, Job, Outcome,
    QueueStats, ReplyFilter, ReplyRecord, Requeued, StaleChannelStatus, Store, StoreError,
    REPLY_COLUMNS, STALE_CHANNEL_STATUSES,
};
use super::{ExportPage, ExportRecord, StoreOptions, EXPORT_COLUMNS};
use crate::domain::{ChatwootEvent, GoldReply, ReplyId, Status};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most writes committed together: bounds one transaction's latency.
const MAX_BATCH: usize = 512;

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
    /// How many writes may wait for the writer ([`StoreOptions`]).
    waiting: usize,
    /// The worker to wake after a commit that added a job.
    wake: std::sync::OnceLock<std::sync::Arc<tokio::sync::Notify>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn open(url: &str, tuning: &StoreOptions) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Checkpoints copy the WAL into the database in a task of their own:
        // copying inside the writer would stall every request waiting on it.
        // The writer only restarts the WAL (see `restart_wal`), and the file
        // is cut back to 64 MB whenever it restarts.
        let writer_options = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "67108864");
        let mut writer = SqliteConnection::connect_with(&writer_options).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        let checkpointer = SqliteConnection::connect_with(&options).await?;
        let wal_frames = std::sync::Arc::new(AtomicI64::new(0));
        tokio::spawn(checkpoint_regularly(checkpointer, wal_frames.clone()));
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let waiting = tuning.max_waiting_writes.max(1);
        let (writes, rx) = mpsc::channel(waiting);
        tokio::spawn(run_writer(writer, rx, wal_frames));
        Ok(Self {
            writes,
            reads,
            waiting,
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
                let result = match savepoint(conn).await {
                    Ok(()) => {
                        let result = op(conn).await;
                        settle(conn, result).await
                    }
                    Err(e) => Err(e),
                };
                Box::new(move |committed: Result<(), StoreError>| {
                    let _ = tx.send(committed.and(result));
                }) as Completion
            })
        });
        self.enqueue_write(Write::Op(boxed))?;
        rx.await.map_err(|_| StoreError::Unavailable)?
    }

    /// Hands a write to the writer, or refuses it at once when too many wait.
    fn enqueue_write(&self, write: Write) -> Result<(), StoreError> {
        self.writes.try_send(write).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded(self.waiting),
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })
    }
}

/// WAL frames (4 KiB pages) past which the writer restarts the WAL between
/// two batches: about 40 MiB, so with what is written until the writer next
/// looks, the file stays under the 64 MiB the issue allows.
const RESTART_WAL_FRAMES: i64 = 10 * 1024;
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies the WAL into the database often, without blocking the writer
/// (PASSIVE), and publishes the WAL's length in frames for the writer. A
/// PASSIVE checkpoint cannot restart the WAL under sustained writes (new
/// frames always follow the ones it copied), so the writer does that, cheaply,
/// since nearly everything is copied by then.
async fn checkpoint_regularly(mut conn: SqliteConnection, wal_frames: Arc<AtomicI64>) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        match checkpoint(&mut conn, "PASSIVE").await {
            Ok(frames) => wal_frames.store(frames, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; the WAL grows until the next one")
            }
        }
    }
}

/// Runs one checkpoint in `mode`; returns the WAL's length in frames.
async fn checkpoint(conn: &mut SqliteConnection, mode: &str) -> Result<i64, sqlx::Error> {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    let (_busy, frames, _copied): (i64, i64, i64) = sqlx::query_as(&sql).fetch_one(conn).await?;
    Ok(frames)
}

/// Between two batches, once the WAL is long: copies what the checkpointer
/// has not yet (a fraction of a second of writes) and makes the next commit
/// write from the start of the WAL again (RESTART waits for readers on older
/// snapshots, which reads keep short).
async fn restart_wal(conn: &mut SqliteConnection, wal_frames: &AtomicI64) {
    if wal_frames.load(Ordering::Relaxed) < RESTART_WAL_FRAMES {
        return;
    }
    match checkpoint(conn, "RESTART").await {
        Ok(_) => wal_frames.store(0, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "could not restart the WAL; trying after the next batch")
        }
    }
}

/// Takes every queued write, runs them in one transaction, commits once, then
/// answers them all. Each write runs inside a savepoint of its own, so a write
/// that fails leaves nothing behind and its neighbours commit as if it had
/// never been there.
async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Write>,
    wal_frames: Arc<AtomicI64>,
) {
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
        restart_wal(&mut conn, &wal_frames).await;
    }
}

/// Starts a write inside the batch's transaction; [`settle`] ends it.
async fn savepoint(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("SAVEPOINT write").execute(conn).await?;
    Ok(())
}

/// Keeps a write's changes if it succeeded and undoes all of them if it did
/// not, so a failed write leaves nothing half-done for the batch to commit.
async fn settle<T>(
    conn: &mut SqliteConnection,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    if result.is_err() {
        sqlx::query("ROLLBACK TO write").execute(&mut *conn).await?;
    }
    sqlx::query("RELEASE write").execute(conn).await?;
    result
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

fn stored(row: &SqliteRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        record: record(row)?,
        fingerprint: row.try_get("fingerprint")?,
        uncertain: row.try_get("uncertain")?,
        stale_since: time(row.try_get("channel_status_stale_at")?),
    })
}

fn record(row: &SqliteRow) -> Result<ReplyRecord, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(ReplyRecord {
        reply_id: reply_id_column(row.try_get("reply_id")?)?,
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

async fn fetch_stored(
    conn: &mut SqliteConnection,
    reply_id: &str,
) -> Result<Option<Stored>, StoreError> {
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = ?");
    let row = sqlx::query(&sql)
        .bind(reply_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(stored).transpose()?)
}

/// The most rows in one INSERT: 15 parameters each, far below SQLite's limit.
const INSERT_CHUNK: usize = 256;
const INSERT_REPLY: &str = "INSERT INTO gold_replies (reply_id, account_id, conversation_id, \
     action, content, private, approved_by, draft, tags, metadata, fingerprint, status, \
     received_at, next_attempt_at, liquid) ";

/// Stores a batch of posted replies, answering in the order of `items`. The
/// whole batch is tried as a few multi-row statements; if any of it fails,
/// that is undone and each reply is stored alone, so one bad reply fails
/// only itself.
async fn ingest_batch(
    conn: &mut SqliteConnection,
    items: &[(NewReply, DateTime<Utc>)],
) -> Vec<Result<Ingested, StoreError>> {
    if items.is_empty() {
        return Vec::new();
    }
    if let Ok(results) = ingest_together(conn, items).await {
        return results;
    }
    let mut results = Vec::with_capacity(items.len());
    for (new, now) in items {
        results.push(ingest_alone(conn, new, *now).await);
    }
    results
}

async fn ingest_together(
    conn: &mut SqliteConnection,
    items: &[(NewReply, DateTime<Utc>)],
) -> Result<Vec<Result<Ingested, StoreError>>, StoreError> {
    savepoint(conn).await?;
    let result = try_ingest_batch(conn, items).await;
    settle(conn, result).await
}

async fn ingest_alone(
    conn: &mut SqliteConnection,
    new: &NewReply,
    now: DateTime<Utc>,
) -> Result<Ingested, StoreError> {
    savepoint(conn).await?;
    let result = lifecycle::ingest(&mut SqliteTx(conn), new, now).await;
    settle(conn, result).await
}

async fn try_ingest_batch(
    conn: &mut SqliteConnection,
    items: &[(NewReply, DateTime<Utc>)],
) -> Result<Vec<Result<Ingested, StoreError>>, StoreError> {
    let mut inserted = std::collections::HashSet::new();
    for chunk in items.chunks(INSERT_CHUNK) {
        let mut insert = QueryBuilder::new(INSERT_REPLY);
        insert.push_values(chunk, |mut row, (new, now)| {
            push_reply(&mut row, new, lifecycle::stored_time(*now));
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
            results.push(Ok(Ingested::Created(lifecycle::created_record(new, *now))));
        } else {
            let stored = fetch_stored(conn, id).await?;
            results.push(Ok(lifecycle::existing(
                stored.ok_or(StoreError::Unavailable)?,
                new,
            )));
        }
    }
    enqueue_batch(conn, &jobs).await?;
    Ok(results)
}

fn push_reply(
    row: &mut sqlx::query_builder::Separated<'_, '_, sqlx::Sqlite, &str>,
    new: &NewReply,
    now: DateTime<Utc>,
) {
    let reply = &new.reply;
    let now_ms = millis(now);
    row.push_bind(reply.reply_id().to_string())
        .push_bind(reply.account_id())
        .push_bind(reply.conversation_id())
        .push_bind(reply.action().as_str())
        .push_bind(reply.content().to_owned())
        .push_bind(reply.private())
        .push_bind(reply.approved_by().map(str::to_owned))
        .push_bind(new.draft.clone())
        .push_bind(new.tags.clone())
        .push_bind(new.metadata.clone())
        .push_bind(new.fingerprint.clone())
        .push_bind(new.initial_status().as_str())
        .push_bind(now_ms)
        .push_bind(reply.action().sends().then_some(now_ms))
        .push_bind(reply.liquid());
}

/// Adds the jobs of a batch at the back of their conversations' lines. A job
/// is its conversation's head when it is the batch's first there and no job
/// was waiting: each statement looks only at the conversations it touches,
/// so its cost does not grow with the queue. (Which rows of the statement
/// the `NOT EXISTS` sees does not matter: only a conversation's first job in
/// the batch asks, before any later one of that conversation is inserted.)
async fn enqueue_batch(
    conn: &mut SqliteConnection,
    jobs: &[(&GoldReply, i64)],
) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<bool> = jobs
        .iter()
        .map(|(reply, _)| seen.insert((reply.account_id(), reply.conversation_id())))
        .collect();
    for (chunk, firsts) in jobs.chunks(INSERT_CHUNK).zip(firsts.chunks(INSERT_CHUNK)) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, is_head) \
             VALUES ",
        );
        for (i, ((reply, due_ms), first)) in chunk.iter().zip(firsts).enumerate() {
            if i > 0 {
                insert.push(", ");
            }
            insert
                .push("(")
                .push_bind(reply.reply_id().as_str())
                .push(", ")
                .push_bind(reply.account_id())
                .push(", ")
                .push_bind(reply.conversation_id())
                .push(", ")
                .push_bind(*due_ms);
            // `first AND …` keeps the statement's text the same for every
            // batch of one size, so its prepared form is reused.
            insert
                .push(", ")
                .push_bind(*first)
                .push(" AND NOT EXISTS (SELECT 1 FROM delivery_jobs WHERE account_id = ")
                .push_bind(reply.account_id())
                .push(" AND conversation_id = ")
                .push_bind(reply.conversation_id())
                .push("))");
        }
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The statements of the delivery state machine, on the writer's connection.
struct SqliteTx<'c>(&'c mut SqliteConnection);

#[async_trait]
impl Tx for SqliteTx<'_> {
    // One writer does every write, so nothing needs locking.
    async fn reply(&mut self, reply_id: &str, _lock: bool) -> Result<Option<Stored>, StoreError> {
        fetch_stored(self.0, reply_id).await
    }

    async fn reply_by_message(
        &mut self,
        message_id: i64,
        _lock: bool,
    ) -> Result<Option<Stored>, StoreError> {
        let sql = format!(
            "SELECT {REPLY_COLUMNS} FROM gold_replies WHERE chatwoot_message_id = ? \
             ORDER BY received_at DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(message_id)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(row.as_ref().map(stored).transpose()?)
    }

    async fn insert_reply(
        &mut self,
        new: &NewReply,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut insert = QueryBuilder::new(INSERT_REPLY);
        insert.push_values([new], |mut row, new| push_reply(&mut row, new, now));
        insert.push(" ON CONFLICT (reply_id) DO NOTHING");
        let done = insert.build().execute(&mut *self.0).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn update_reply(
        &mut self,
        reply_id: &str,
        change: &ReplyChange,
    ) -> Result<(), StoreError> {
        let mut update = QueryBuilder::new("UPDATE gold_replies SET ");
        let mut set = update.separated(", ");
        for (column, value) in change.assignments() {
            set.push(column).push_unseparated(" = ");
            match value {
                Value::Text(v) => set.push_bind_unseparated(v),
                Value::Int(v) => set.push_bind_unseparated(v),
                Value::Time(v) => set.push_bind_unseparated(v.map(millis)),
                Value::Bool(v) => set.push_bind_unseparated(v),
            };
        }
        update.push(" WHERE reply_id = ").push_bind(reply_id);
        update.build().execute(&mut *self.0).await?;
        Ok(())
    }

    async fn enqueue(
        &mut self,
        reply_id: &str,
        account_id: i64,
        conversation_id: i64,
        due: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, \
             maybe_sent, is_head) VALUES (?1, ?2, ?3, ?4, ?5, NOT EXISTS (SELECT 1 \
             FROM delivery_jobs WHERE account_id = ?2 AND conversation_id = ?3))",
        )
        .bind(reply_id)
        .bind(account_id)
        .bind(conversation_id)
        .bind(millis(due))
        .bind(maybe_sent)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn remove_job(
        &mut self,
        reply_id: &str,
        owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        let removed: Option<(i64, i64)> = sqlx::query_as(
            "DELETE FROM delivery_jobs WHERE reply_id = ?1 AND (?2 IS NULL OR lease_owner = ?2) \
             RETURNING account_id, conversation_id",
        )
        .bind(reply_id)
        .bind(owner)
        .fetch_optional(&mut *self.0)
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
        .execute(&mut *self.0)
        .await?;
        Ok(true)
    }

    async fn reschedule_job(
        &mut self,
        reply_id: &str,
        owner: &str,
        at: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<bool, StoreError> {
        let held = sqlx::query(
            "UPDATE delivery_jobs SET due_at = ?, lease_owner = NULL, lease_until = NULL, \
             maybe_sent = ? WHERE reply_id = ? AND lease_owner = ?",
        )
        .bind(millis(at))
        .bind(maybe_sent)
        .bind(reply_id)
        .bind(owner)
        .execute(&mut *self.0)
        .await?;
        Ok(held.rows_affected() > 0)
    }

    async fn insert_event(
        &mut self,
        event: &ChatwootEvent,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO chatwoot_events (delivery_id, dedupe_key, event, message_id, reply_id, \
             payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&event.delivery_id)
        .bind(&event.dedupe_key)
        .bind(&event.kind)
        .bind(event.message_id)
        .bind(&event.reply_id)
        .bind(payload)
        .bind(millis(now))
        .execute(&mut *self.0)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
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
         r.content, r.private, r.liquid, r.attempts, COALESCE(r.requeued_at, r.received_at) AS age_from, r.received_at AS accepted_at \
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
        let reply_id = reply_id_column(row.try_get("reply_id")?)?;
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
            .bind(reply_id.as_str())
            .execute(&mut *conn)
            .await?;
        jobs.push(Job {
            reply_id,
            account_id: row.try_get("account_id")?,
            conversation_id: row.try_get("conversation_id")?,
            content: row.try_get("content")?,
            private: row.try_get("private")?,
            liquid: row.try_get("liquid")?,
            attempt: row.try_get::<i64, _>("attempts")? + 1,
            received_at: time(row.try_get("age_from")?).unwrap_or(now),
            accepted_at: time(row.try_get("accepted_at")?).unwrap_or(now),
            maybe_sent: row.try_get("maybe_sent")?,
        });
    }
    Ok(jobs)
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
            query = query.bind(at).bind(at).bind(cursor.reply_id.to_string());
        }
        let rows = query
            .bind(filter.limit as i64)
            .fetch_all(&self.reads)
            .await?;
        Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
    }

    async fn requeue(
        &self,
        reply_id: &ReplyId,
        force: bool,
        now: DateTime<Utc>,
    ) -> Result<Requeued, StoreError> {
        let reply_id = reply_id.as_str();
        let reply_id = reply_id.to_owned();
        let requeued = self
            .write(move |c| {
                Box::pin(async move {
                    lifecycle::requeue(&mut SqliteTx(c), &reply_id, force, now).await
                })
            })
            .await?;
        if matches!(requeued, Requeued::Queued { .. }) {
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
        self.write(move |c| {
            Box::pin(async move {
                lifecycle::record_event(&mut SqliteTx(c), &event, &payload, now).await
            })
        })
        .await
    }

    async fn stale_channel_statuses(
        &self,
        limit: usize,
    ) -> Result<Vec<StaleChannelStatus>, StoreError> {
        let rows = sqlx::query(STALE_CHANNEL_STATUSES)
            .bind(limit as i64)
            .fetch_all(&self.reads)
            .await?;
        let stale = |row: &SqliteRow| -> Result<StaleChannelStatus, sqlx::Error> {
            Ok(StaleChannelStatus {
                reply_id: reply_id_column(row.try_get("reply_id")?)?,
                account_id: row.try_get("account_id")?,
                conversation_id: row.try_get("conversation_id")?,
                message_id: row.try_get("chatwoot_message_id")?,
                since: time(row.try_get("channel_status_stale_at")?).unwrap_or_default(),
            })
        };
        Ok(rows.iter().map(stale).collect::<Result<_, _>>()?)
    }

    async fn record_channel_status(
        &self,
        reply_id: &ReplyId,
        status: Option<&str>,
        error: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let reply_id = reply_id.as_str();
        let (reply_id, status) = (reply_id.to_owned(), status.map(str::to_owned));
        let error = error.map(str::to_owned);
        self.write(move |c| {
            Box::pin(async move {
                let mut tx = SqliteTx(c);
                lifecycle::record_channel_status(
                    &mut tx,
                    &reply_id,
                    status.as_deref(),
                    error.as_deref(),
                    since,
                )
                .await
            })
        })
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
        self.enqueue_write(Write::Ingest(Box::new(PendingIngest { new, now, answer })))?;
        let ingested = answered.await.map_err(|_| StoreError::Unavailable)??;
        if matches!(ingested, Ingested::Created(_)) && reply.action().sends() {
            self.new_jobs();
        }
        Ok(ingested)
    }

    async fn reply(&self, reply_id: &ReplyId) -> Result<Option<ReplyRecord>, StoreError> {
        let reply_id = reply_id.as_str();
        let mut conn = self.reads.acquire().await?;
        Ok(fetch_stored(&mut conn, reply_id).await?.map(|s| s.record))
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
        reply_id: &ReplyId,
        owner: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let reply_id = reply_id.as_str();
        let (reply_id, owner) = (reply_id.to_owned(), owner.to_owned());
        self.write(move |c| {
            Box::pin(async move {
                lifecycle::finish(&mut SqliteTx(c), &reply_id, &owner, outcome, now).await
            })
        })
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
        let now = millis(Utc::now());
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO write_probe (id, at) VALUES (1, ?) \
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                )
                .bind(now)
                .execute(c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn export(&self, page: &ExportPage) -> Result<Vec<ExportRecord>, StoreError> {
        export_page(&self.reads, page).await
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

/// The gold dataset, one page at a time; the cursor's bound is written out
/// rather than as a row value so SQLite uses the `received_at` index.
async fn export_page(
    reads: &SqlitePool,
    page: &ExportPage,
) -> Result<Vec<ExportRecord>, StoreError> {
    let (after_ms, after_id) = match &page.after {
        Some(cursor) => (millis(cursor.received_at), cursor.reply_id.to_string()),
        None => (i64::MIN, String::new()),
    };
    // Written out, not as `? IS NULL OR …`, so the conversation's index is used.
    let one_conversation = match page.conversation {
        Some((account, conversation)) => {
            format!("AND account_id = {account} AND conversation_id = {conversation}")
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT {EXPORT_COLUMNS} FROM gold_replies \
         WHERE received_at >= ? AND (received_at > ? OR reply_id > ?) AND received_at <= ? \
         {one_conversation} ORDER BY received_at, reply_id LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(after_ms)
        .bind(after_ms)
        .bind(after_id)
        .bind(millis(page.until))
        .bind(page.limit as i64)
        .fetch_all(reads)
        .await?;
    Ok(rows.iter().map(export_record).collect::<Result<_, _>>()?)
}

fn export_record(row: &SqliteRow) -> Result<ExportRecord, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(ExportRecord {
        reply_id: reply_id_column(row.try_get("reply_id")?)?,
        account_id: row.try_get("account_id")?,
        conversation_id: row.try_get("conversation_id")?,
        action: row.try_get("action")?,
        content: row.try_get("content")?,
        private: row.try_get("private")?,
        draft: json_column(row, "draft")?,
        approved_by: row.try_get("approved_by")?,
        tags: json_column(row, "tags")?.unwrap_or_default(),
        metadata: json_column(row, "metadata")?,
        received_at: time(row.try_get("received_at")?).unwrap_or_default(),
        delivered_at: time(row.try_get("delivered_at")?),
        confirmed_at: time(row.try_get("confirmed_at")?),
        status: status_column(&status)?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        chatwoot_message_id: row.try_get("chatwoot_message_id")?,
        channel_status: row.try_get("channel_status")?,
        channel_error: row.try_get("channel_error")?,
        next_attempt_at: time(row.try_get("next_attempt_at")?),
        uncertain: row.try_get("uncertain")?,
    })
}

/// A JSON column SQLite keeps as text.
fn json_column(row: &SqliteRow, column: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let raw: Option<String> = row.try_get(column)?;
    raw.map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: column.into(),
            source: Box::new(e),
        })
}
