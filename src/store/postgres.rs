//! The PostgreSQL store, for several goldrelay instances on one database.
//!
//! Instances claim jobs with `FOR UPDATE SKIP LOCKED`, so no job is held by two
//! of them, and only a conversation's oldest job is ever claimable, so order
//! holds across instances. A new job sends `NOTIFY goldrelay_jobs` on commit;
//! every instance `LISTEN`s and wakes its worker at once.
//!
//! Throughput: posted replies go to a few writer tasks, each of which takes
//! every reply waiting and commits them in one call of a function (one round
//! trip in autocommit): one multi-row insert of the replies and their jobs,
//! one WAL flush and one `NOTIFY` per batch instead of one per reply. A
//! delivered job is recorded by one function call too.

use super::lifecycle::{self, NewReply, ReplyChange, Stored, Tx, Value};
use super::row;
use super::{
    reply_id_column, status_counts, ChannelRead, Cursor, DueReads, EventOutcome,
    Ingested, Job, Outcome, QueueStats, ReplyFilter, ReplyRecord, Requeued, SendSlot,
    StaleChannelStatus, Store, StoreError, REPLY_COLUMNS,
};
use super::export::capped_page_sql;
use super::{ExportPage, ExportRecord, StoreOptions};
use crate::domain::{ChatwootEvent, GoldReply, ReplyId, Status};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, QueryBuilder, Row};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

mod capture;

const CHANNEL: &str = "goldrelay_jobs";
/// The most replies committed together: bounds one transaction's latency.
const MAX_BATCH: usize = 256;
/// Ingest transactions in flight at once. One is filled while another
/// commits, so a batch never waits for a whole commit before it starts.
const INGEST_WRITERS: usize = 2;

pub struct PostgresStore {
    pool: PgPool,
    /// Asks the announcer to tell every instance that new jobs exist.
    announce: Arc<Notify>,
    /// Posted replies, waiting for an ingest writer.
    ingests: mpsc::Sender<PendingIngest>,
    /// How many posted replies may wait for a writer ([`StoreOptions`]).
    most_waiting: usize,
    /// Deliveries Chatwoot answered, waiting to be recorded together.
    delivereds: mpsc::Sender<PendingDelivered>,
    /// How far the database's clock is ahead of this process's, in ms.
    clock_offset: Arc<AtomicI64>,
}

/// How often the database's clock is read again.
const CLOCK_READ_EVERY: Duration = Duration::from_secs(10);

/// Reads the database's clock and stores how far it is ahead of ours, taking
/// the middle of the round trip as the moment it was read.
async fn read_clock(pool: &PgPool, offset: &AtomicI64) -> Result<(), StoreError> {
    let sent = Utc::now();
    let theirs: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?;
    let back = Utc::now();
    let ours = sent + (back - sent) / 2;
    offset.store((theirs - ours).num_milliseconds(), Ordering::Relaxed);
    Ok(())
}

/// Keeps [`PostgresStore::now`] on the database's clock.
async fn follow_clock(pool: PgPool, offset: Arc<AtomicI64>) {
    loop {
        tokio::time::sleep(CLOCK_READ_EVERY).await;
        if let Err(e) = read_clock(&pool, &offset).await {
            tracing::debug!(error = %e, "could not read the database's clock; keeping the last offset");
        }
    }
}

/// A delivery Chatwoot answered, on its way to the recorder, and where the
/// recorder says whether it was committed.
struct PendingDelivered {
    reply_id: String,
    message_id: i64,
    now: DateTime<Utc>,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

/// One posted reply on its way to a writer, and where its answer goes.
struct PendingIngest {
    new: NewReply,
    now: DateTime<Utc>,
    answer: oneshot::Sender<Result<Ingested, StoreError>>,
}

impl PostgresStore {
    /// Connects, and migrates unless another instance holds the migration lock.
    pub async fn open(url: &str, tuning: &StoreOptions) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // An outage must surface as a quick 503, not a request that hangs.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let announce = Arc::new(Notify::new());
        tokio::spawn(announce_new_jobs(pool.clone(), announce.clone()));
        let most = tuning.max_waiting_writes.max(1);
        let (ingests, waiting) = mpsc::channel(most);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..INGEST_WRITERS {
            tokio::spawn(run_ingest_writer(
                pool.clone(),
                waiting.clone(),
                announce.clone(),
                tuning.fast_paths,
            ));
        }
        // Bounded by the delivery slots in practice: each waits for its answer.
        let (delivereds, recorded) = mpsc::channel(MAX_BATCH);
        tokio::spawn(record_delivereds(pool.clone(), recorded, tuning.fast_paths));
        let clock_offset = Arc::new(AtomicI64::new(0));
        read_clock(&pool, &clock_offset).await?;
        tokio::spawn(follow_clock(pool.clone(), clock_offset.clone()));
        Ok(Self {
            pool,
            announce,
            ingests,
            most_waiting: most,
            delivereds,
            clock_offset,
        })
    }
}

/// Takes every posted reply waiting (up to [`MAX_BATCH`]), commits them in
/// one transaction and answers each. Writers take turns at the queue, so
/// while one commits the next gathers.
async fn run_ingest_writer(
    pool: PgPool,
    waiting: Arc<Mutex<mpsc::Receiver<PendingIngest>>>,
    announce: Arc<Notify>,
    fast: bool,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if waiting.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let (items, answers): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|p| ((p.new, lifecycle::stored_time(p.now)), p.answer))
            .unzip();
        let results = if fast {
            ingest_batch(&pool, &items).await
        } else {
            ingest_each(&pool, &items).await
        };
        keep_trace_contexts(&pool, &items, &results).await;
        // Told after the commit, in a transaction of the announcer's own
        // (migration 10 says why not inside the batch's).
        let queued = items.iter().zip(&results).any(|((new, _), result)| {
            new.reply.action().sends() && matches!(result, Ok(Ingested::Created(_)))
        });
        if queued {
            announce.notify_one();
        }
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }
}

/// Stores the trace context of the replies a batch created, when traces are
/// exported: a second round trip only then, so the batch's own statement
/// stays as it is. Best effort: a reply whose context is lost is traced from
/// its attempts on, in traces of their own.
async fn keep_trace_contexts(
    pool: &PgPool,
    items: &[(NewReply, DateTime<Utc>)],
    results: &[Result<Ingested, StoreError>],
) {
    let (ids, contexts): (Vec<&str>, Vec<&str>) = items
        .iter()
        .zip(results)
        .filter(|(_, result)| matches!(result, Ok(Ingested::Created(_))))
        .filter_map(|((new, _), _)| {
            let context = new.trace_context.as_deref()?;
            Some((new.reply.reply_id().as_str(), context))
        })
        .unzip();
    if ids.is_empty() {
        return;
    }
    let kept = sqlx::query(
        "UPDATE gold_replies r SET trace_context = t.context \
         FROM unnest($1::text[], $2::text[]) AS t(reply_id, context) \
         WHERE r.reply_id = t.reply_id AND r.trace_context IS NULL",
    )
    .bind(&ids)
    .bind(&contexts)
    .execute(pool)
    .await;
    if let Err(e) = kept {
        tracing::debug!(error = %e, "could not keep the trace context of posted replies");
    }
}

/// Stores a batch of posted replies, answering in the order of `items`. The
/// whole batch is one call of `goldrelay_ingest` in autocommit: one round trip,
/// committed (synchronously) when it returns. If it fails, nothing of it was
/// stored, and each reply is stored alone (in a savepoint of its own), so one
/// bad reply fails only itself.
async fn ingest_batch(
    pool: &PgPool,
    items: &[(NewReply, DateTime<Utc>)],
) -> Vec<Result<Ingested, StoreError>> {
    // A reply id posted twice in one batch: the first is the one inserted.
    let mut seen = HashSet::new();
    let firsts: Vec<&(NewReply, DateTime<Utc>)> = items
        .iter()
        .filter(|(new, _)| seen.insert(new.reply.reply_id().as_str()))
        .collect();
    match batch_insert(&firsts).fetch_all(pool).await {
        Ok(inserted) => answer_batch(pool, items, inserted.into_iter().collect()).await,
        Err(e) => {
            tracing::debug!(error = %e, "a batch of posted replies failed; storing each alone");
            ingest_each(pool, items).await
        }
    }
}

/// Commits a batch's transaction; every answer fails if the commit does.
async fn commit_all(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    results: Vec<Result<Ingested, StoreError>>,
) -> Vec<Result<Ingested, StoreError>> {
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => failed_all(results.len(), &e.into()),
    }
}

fn failed_all(n: usize, e: &StoreError) -> Vec<Result<Ingested, StoreError>> {
    (0..n)
        .map(|_| Err(StoreError::Commit(e.to_string())))
        .collect()
}

/// The fallback: each reply through the state machine in a savepoint of its
/// own, inside one transaction that took every conversation lock up front,
/// in the same order as a batch takes them.
async fn ingest_each(
    pool: &PgPool,
    items: &[(NewReply, DateTime<Utc>)],
) -> Vec<Result<Ingested, StoreError>> {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return failed_all(items.len(), &e.into()),
    };
    if let Err(e) = lock_conversations(&mut tx, items).await {
        return failed_all(items.len(), &e);
    }
    let mut results = Vec::with_capacity(items.len());
    for (new, now) in items {
        results.push(ingest_alone(&mut tx, new, *now).await);
    }
    commit_all(tx, results).await
}

async fn ingest_alone(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewReply,
    now: DateTime<Utc>,
) -> Result<Ingested, StoreError> {
    let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
    match lifecycle::ingest(&mut PgTx(&mut savepoint), new, now).await {
        Ok(ingested) => {
            savepoint.commit().await?;
            Ok(ingested)
        }
        Err(e) => {
            savepoint.rollback().await?;
            Err(e)
        }
    }
}

/// Takes the advisory lock of every conversation a batch adds jobs to, in
/// ascending key order, so two batches (of this or another instance) that
/// share conversations cannot deadlock.
async fn lock_conversations(
    conn: &mut PgConnection,
    items: &[(NewReply, DateTime<Utc>)],
) -> Result<(), StoreError> {
    let (accounts, conversations): (Vec<i64>, Vec<i64>) = items
        .iter()
        .filter(|(new, _)| new.reply.action().sends())
        .map(|(new, _)| (new.reply.account_id(), new.reply.conversation_id()))
        .unzip();
    if accounts.is_empty() {
        return Ok(());
    }
    // Since PostgreSQL 9.6 a volatile output expression is evaluated after
    // the ORDER BY sort, so the locks are taken in key order.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
           (SELECT DISTINCT goldrelay_line_lock(a, c) AS k \
            FROM unnest($1::int8[], $2::int8[]) AS t(a, c)) AS keys \
         ORDER BY k",
    )
    .bind(accounts)
    .bind(conversations)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The answers to a committed batch: `Created` for each id it `inserted` (a
/// later copy of it in the batch is answered as a repeat of the first), and
/// for each id taken before, its stored row, read now (the row was committed
/// before the batch, since `ON CONFLICT` waits for an insert in flight). The
/// batch is committed whatever happens here, so it is never stored again.
async fn answer_batch(
    pool: &PgPool,
    items: &[(NewReply, DateTime<Utc>)],
    inserted: HashSet<String>,
) -> Vec<Result<Ingested, StoreError>> {
    let taken: Vec<String> = items
        .iter()
        .map(|(new, _)| new.reply.reply_id().to_string())
        .filter(|id| !inserted.contains(id))
        .collect();
    let stored = fetch_many(pool, &taken).await;
    let mut created: HashMap<&str, Stored> = HashMap::new();
    let mut results = Vec::with_capacity(items.len());
    for (new, now) in items {
        let id = new.reply.reply_id().as_str();
        if let Some(first) = created.get(id) {
            results.push(Ok(lifecycle::existing(first.clone(), new)));
        } else if inserted.contains(id) {
            let record = lifecycle::created_record(new, *now);
            created.insert(id, just_stored(&record, new));
            results.push(Ok(Ingested::Created(record)));
        } else {
            results.push(match &stored {
                Ok(rows) => rows
                    .get(id)
                    .map(|row| lifecycle::existing(row.clone(), new))
                    .ok_or(StoreError::Unavailable),
                Err(e) => Err(StoreError::Commit(e.to_string())),
            });
        }
    }
    results
}

/// A reply as the batch just stored it, to answer a repeat of it in the batch.
fn just_stored(record: &ReplyRecord, new: &NewReply) -> Stored {
    Stored {
        record: record.clone(),
        fingerprint: new.fingerprint.clone(),
        uncertain: false,
        stale_since: None,
    }
}

/// The batch insert with every column bound as one array: `goldrelay_ingest`
/// (migrations 8 and 10) takes the conversations' locks and inserts the
/// replies and their jobs; the writer announces the new jobs after it returns.
fn batch_insert<'q>(
    items: &[&'q (NewReply, DateTime<Utc>)],
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments> {
    let reply = |(new, _): &&'q (NewReply, DateTime<Utc>)| &new.reply;
    let column = |f: fn(&'q (NewReply, DateTime<Utc>)) -> String| -> Vec<String> {
        items.iter().map(|item| f(item)).collect()
    };
    let sends: Vec<bool> = items.iter().map(|i| reply(i).action().sends()).collect();
    sqlx::query_scalar(
        "SELECT goldrelay_ingest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
         $15, $16, $17)",
    )
    .bind(column(|(n, _)| n.reply.reply_id().to_string()))
    .bind(
        items
            .iter()
            .map(|i| reply(i).account_id())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|i| reply(i).conversation_id())
            .collect::<Vec<_>>(),
    )
    .bind(column(|(n, _)| n.reply.action().as_str().to_owned()))
    .bind(column(|(n, _)| n.reply.content().to_owned()))
    .bind(items.iter().map(|i| reply(i).private()).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| reply(i).approved_by())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(n, _)| n.draft.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(n, _)| n.tags.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(n, _)| n.metadata.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(n, _)| n.fingerprint.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(column(|(n, _)| n.initial_status().as_str().to_owned()))
    .bind(items.iter().map(|(_, now)| *now).collect::<Vec<_>>())
    .bind(sends)
    .bind(items.iter().map(|i| reply(i).liquid()).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|(n, _)| n.context.as_deref())
            .collect::<Vec<_>>(),
    )
    // No channel: the function does not NOTIFY; the writer announces instead.
    .bind(None::<&str>)
}

/// The stored rows of `reply_ids`, by id.
async fn fetch_many(
    pool: &PgPool,
    reply_ids: &[String],
) -> Result<HashMap<String, Stored>, StoreError> {
    if reply_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = ANY($1)");
    let rows = sqlx::query(&sql).bind(reply_ids).fetch_all(pool).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("reply_id")?, row::stored(row)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

async fn fetch_stored(
    conn: &mut PgConnection,
    reply_id: &str,
    lock: bool,
) -> Result<Option<Stored>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = $1{lock}");
    let row = sqlx::query(&sql)
        .bind(reply_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(row::stored).transpose()?)
}

/// Serialises every change to one conversation's line of jobs, across
/// instances: the key is `goldrelay_line_lock`'s (migration 14), the one
/// spelling every statement and function shares.
async fn lock_conversation(
    conn: &mut PgConnection,
    account_id: i64,
    conversation_id: i64,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(goldrelay_line_lock($1, $2))")
        .bind(account_id)
        .bind(conversation_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The statements of the delivery state machine, inside one transaction.
struct PgTx<'c>(&'c mut PgConnection);

#[async_trait]
impl Tx for PgTx<'_> {
    async fn reply(&mut self, reply_id: &str, lock: bool) -> Result<Option<Stored>, StoreError> {
        fetch_stored(self.0, reply_id, lock).await
    }

    async fn reply_by_message(
        &mut self,
        message_id: i64,
        lock: bool,
    ) -> Result<Option<Stored>, StoreError> {
        let lock = if lock { " FOR UPDATE" } else { "" };
        let sql = format!(
            "SELECT {REPLY_COLUMNS} FROM gold_replies WHERE chatwoot_message_id = $1 \
             ORDER BY received_at DESC LIMIT 1{lock}"
        );
        let row = sqlx::query(&sql)
            .bind(message_id)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(row.as_ref().map(row::stored).transpose()?)
    }

    async fn insert_reply(
        &mut self,
        new: &NewReply,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let reply = &new.reply;
        let inserted = sqlx::query(
            "INSERT INTO gold_replies (reply_id, account_id, conversation_id, action, content, \
             private, approved_by, draft, tags, metadata, fingerprint, status, received_at, \
             next_attempt_at, liquid, trace_context, context, context_source, context_due_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10::jsonb, $11, $12, $13, \
             $14, $15, $16, $17::jsonb, $18, $19) ON CONFLICT (reply_id) DO NOTHING",
        )
        .bind(reply.reply_id().as_str())
        .bind(reply.account_id())
        .bind(reply.conversation_id())
        .bind(reply.action().as_str())
        .bind(reply.content())
        .bind(reply.private())
        .bind(reply.approved_by())
        .bind(&new.draft)
        .bind(&new.tags)
        .bind(&new.metadata)
        .bind(&new.fingerprint)
        .bind(new.initial_status().as_str())
        .bind(now)
        .bind(reply.action().sends().then_some(now))
        .bind(reply.liquid())
        .bind(&new.trace_context)
        .bind(&new.context)
        .bind(new.context.as_ref().map(|_| "posted"))
        .bind(new.context.is_none().then_some(now))
        .execute(&mut *self.0)
        .await?;
        Ok(inserted.rows_affected() == 1)
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
                Value::Time(v) => set.push_bind_unseparated(v),
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
        lock_conversation(self.0, account_id, conversation_id).await?;
        sqlx::query(
            "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, \
             maybe_sent, is_head) VALUES ($1, $2, $3, $4, $5, NOT EXISTS (SELECT 1 \
             FROM delivery_jobs WHERE account_id = $2 AND conversation_id = $3))",
        )
        .bind(reply_id)
        .bind(account_id)
        .bind(conversation_id)
        .bind(due)
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
        // Finding the job's conversation and taking its lock is one round trip.
        let line: Option<(i64, i64)> = sqlx::query_as(
            "SELECT account_id, conversation_id FROM ( \
               SELECT account_id, conversation_id, \
                 pg_advisory_xact_lock(goldrelay_line_lock(account_id, conversation_id)) \
               FROM delivery_jobs WHERE reply_id = $1) AS locked",
        )
        .bind(reply_id)
        .fetch_optional(&mut *self.0)
        .await?;
        if line.is_none() {
            return Ok(false);
        }
        // Under the lock: remove the job and make the oldest of the rest of
        // its line the head (the statement still sees the removed row, so it
        // is left out by name).
        let removed: i64 = sqlx::query_scalar(
            "WITH gone AS ( \
               DELETE FROM delivery_jobs WHERE reply_id = $1 \
               AND ($2::text IS NULL OR lease_owner = $2) \
               RETURNING seq, account_id, conversation_id), \
             head AS ( \
               UPDATE delivery_jobs SET is_head = true WHERE seq = ( \
                 SELECT MIN(d.seq) FROM delivery_jobs d JOIN gone \
                 ON d.account_id = gone.account_id AND d.conversation_id = gone.conversation_id \
                 WHERE d.seq <> gone.seq)) \
             SELECT COUNT(*) FROM gone",
        )
        .bind(reply_id)
        .bind(owner)
        .fetch_one(&mut *self.0)
        .await?;
        Ok(removed > 0)
    }

    async fn reschedule_job(
        &mut self,
        reply_id: &str,
        owner: &str,
        at: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<bool, StoreError> {
        let held = sqlx::query(
            "UPDATE delivery_jobs SET due_at = $1, lease_owner = NULL, lease_until = NULL, \
             maybe_sent = $2 WHERE reply_id = $3 AND lease_owner = $4",
        )
        .bind(at)
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
             payload, received_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&event.delivery_id)
        .bind(&event.dedupe_key)
        .bind(&event.kind)
        .bind(event.message_id)
        .bind(&event.reply_id)
        .bind(payload)
        .bind(now)
        .execute(&mut *self.0)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(&self, reply: &GoldReply, now: DateTime<Utc>) -> Result<Ingested, StoreError> {
        // The writer's transaction sends the NOTIFY for new jobs itself.
        let (answer, answered) = oneshot::channel();
        let new = NewReply::new(reply);
        let pending = PendingIngest { new, now, answer };
        self.ingests.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded(self.most_waiting),
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })?;
        answered.await.map_err(|_| StoreError::Unavailable)?
    }

    async fn trace_context(&self, reply_id: &ReplyId) -> Result<Option<String>, StoreError> {
        let context =
            sqlx::query_scalar("SELECT trace_context FROM gold_replies WHERE reply_id = $1")
                .bind(reply_id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(context.flatten())
    }

    async fn reply(&self, reply_id: &ReplyId) -> Result<Option<ReplyRecord>, StoreError> {
        let reply_id = reply_id.as_str();
        let mut conn = self.pool.acquire().await?;
        Ok(fetch_stored(&mut conn, reply_id, false)
            .await?
            .map(|s| s.record))
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        look_after: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
        let lease_until = now + span(lease);
        let due_again = lease_until + span(look_after);
        // One statement, so one round trip and no explicit transaction: pick
        // the due heads, lease them, and count the attempt on their replies.
        let sql = "WITH picked AS ( \
               SELECT j.seq, j.maybe_sent AS was_maybe_sent FROM delivery_jobs j \
               WHERE j.is_head AND j.due_at <= $1 \
               AND (j.lease_until IS NULL OR j.lease_until <= $1) \
               ORDER BY j.due_at, j.seq LIMIT $2 FOR UPDATE OF j SKIP LOCKED), \
             leased AS ( \
               UPDATE delivery_jobs j SET lease_owner = $3, lease_until = $4, maybe_sent = true, \
                 due_at = $5 \
               FROM picked WHERE j.seq = picked.seq \
               RETURNING j.seq, j.due_at, j.reply_id, j.account_id, j.conversation_id, \
                 picked.was_maybe_sent), \
             counted AS ( \
               UPDATE gold_replies r SET attempts = r.attempts + 1 FROM leased \
               WHERE r.reply_id = leased.reply_id \
               RETURNING r.reply_id, r.content, r.private, r.liquid, r.attempts, r.trace_context, \
                 COALESCE(r.requeued_at, r.received_at) AS age_from, \
                 r.received_at AS accepted_at) \
             SELECT l.reply_id, l.account_id, l.conversation_id, l.was_maybe_sent, \
               c.content, c.private, c.liquid, c.attempts, c.age_from, c.accepted_at, \
               c.trace_context \
             FROM leased l JOIN counted c USING (reply_id) ORDER BY l.due_at, l.seq";
        let leased = sqlx::query(sql)
            .bind(now)
            .bind(limit as i64)
            .bind(owner)
            .bind(lease_until)
            .bind(due_again)
            .fetch_all(&self.pool)
            .await?;
        let job = |row: &PgRow| -> Result<Job, sqlx::Error> {
            Ok(Job {
                reply_id: reply_id_column(row.try_get("reply_id")?)?,
                account_id: row.try_get("account_id")?,
                conversation_id: row.try_get("conversation_id")?,
                content: row.try_get("content")?,
                private: row.try_get("private")?,
                liquid: row.try_get("liquid")?,
                attempt: row.try_get::<i32, _>("attempts")?.into(),
                received_at: row.try_get("age_from")?,
                accepted_at: row.try_get("accepted_at")?,
                maybe_sent: row.try_get("was_maybe_sent")?,
                trace_context: row.try_get("trace_context")?,
            })
        };
        Ok(leased.iter().map(job).collect::<Result<_, _>>()?)
    }

    async fn finish(
        &self,
        reply_id: &ReplyId,
        owner: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let reply_id = reply_id.as_str();
        // The common outcome in one round trip; the rest through the rules.
        if let Outcome::Delivered { message_id } = outcome {
            let (answer, answered) = oneshot::channel();
            let reply_id = reply_id.to_owned();
            let pending = PendingDelivered {
                reply_id,
                message_id,
                now,
                answer,
            };
            self.delivereds
                .send(pending)
                .await
                .map_err(|_| StoreError::Unavailable)?;
            return answered.await.map_err(|_| StoreError::Unavailable)?;
        }
        let mut tx = self.pool.begin().await?;
        lifecycle::finish(&mut PgTx(&mut tx), reply_id, owner, outcome, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list(&self, filter: &ReplyFilter) -> Result<Vec<ReplyRecord>, StoreError> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {REPLY_COLUMNS} FROM gold_replies WHERE true"
        ));
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(account) = filter.account_id {
            query.push(" AND account_id = ").push_bind(account);
        }
        if let Some(conversation) = filter.conversation_id {
            query
                .push(" AND conversation_id = ")
                .push_bind(conversation);
        }
        if let Some(Cursor {
            received_at,
            reply_id,
        }) = &filter.after
        {
            query
                .push(" AND (received_at < ")
                .push_bind(*received_at)
                .push(" OR (received_at = ")
                .push_bind(*received_at)
                .push(" AND reply_id > ")
                .push_bind(reply_id.to_string())
                .push("))");
        }
        query
            .push(" ORDER BY received_at DESC, reply_id ASC LIMIT ")
            .push_bind(filter.limit as i64);
        let rows = query.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(row::reply_record).collect::<Result<_, _>>()?)
    }

    async fn requeue(
        &self,
        reply_id: &ReplyId,
        force: bool,
        now: DateTime<Utc>,
    ) -> Result<Requeued, StoreError> {
        let reply_id = reply_id.as_str();
        let mut tx = self.pool.begin().await?;
        let requeued = lifecycle::requeue(&mut PgTx(&mut tx), reply_id, force, now).await?;
        tx.commit().await?;
        if matches!(requeued, Requeued::Queued { .. }) {
            self.announce.notify_one();
        }
        Ok(requeued)
    }

    async fn count_by_status(&self) -> Result<Vec<(Status, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM gold_replies GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(status_counts(rows))
    }

    async fn record_event(
        &self,
        event: &ChatwootEvent,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let outcome = lifecycle::record_event(&mut PgTx(&mut tx), event, payload, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn stale_channel_statuses(
        &self,
        due: &DueReads,
    ) -> Result<Vec<StaleChannelStatus>, StoreError> {
        let every = due.every.map_or(0.0, |d| d.as_secs_f64());
        let first_check = "(delivered_at + make_interval(secs => $3::float8))";
        let sql = super::stale_channel_statuses_sql(
            "$1",
            "$2::timestamptz",
            "$3::float8",
            "$4",
            first_check,
            due.every.is_some(),
        );
        let rows = sqlx::query(&sql)
            .bind(due.now)
            .bind(due.horizon)
            .bind(every)
            .bind(due.limit as i64)
            .fetch_all(&self.pool)
            .await?;
        let stale = |row: &PgRow| -> Result<StaleChannelStatus, sqlx::Error> {
            Ok(StaleChannelStatus {
                reply_id: reply_id_column(row.try_get("reply_id")?)?,
                account_id: row.try_get("account_id")?,
                conversation_id: row.try_get("conversation_id")?,
                message_id: row.try_get("chatwoot_message_id")?,
                since: row.try_get("channel_status_stale_at")?,
                received_at: row.try_get("received_at")?,
            })
        };
        Ok(rows.iter().map(stale).collect::<Result<_, _>>()?)
    }

    async fn record_channel_status(
        &self,
        reply_id: &ReplyId,
        read: &ChannelRead<'_>,
    ) -> Result<(), StoreError> {
        let reply_id = reply_id.as_str();
        let mut tx = self.pool.begin().await?;
        let mut pg = PgTx(&mut tx);
        lifecycle::record_channel_status(&mut pg, reply_id, read).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM chatwoot_events WHERE received_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn message_floor(
        &self,
        account_id: i64,
        conversation_id: i64,
        before: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let floor: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(chatwoot_message_id) FROM gold_replies \
             WHERE account_id = $1 AND conversation_id = $2 AND delivered_at < $3",
        )
        .bind(account_id)
        .bind(conversation_id)
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        Ok(floor.unwrap_or(0))
    }

    fn now(&self) -> DateTime<Utc> {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        Utc::now() + chrono::Duration::milliseconds(offset)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(GREATEST(due_at, COALESCE(lease_until, due_at))) FROM delivery_jobs WHERE is_head",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS queued, MIN(received_at) AS oldest FROM gold_replies WHERE status = 'queued'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            queued: row.try_get("queued")?,
            oldest_queued_at: row.try_get("oldest")?,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO write_probe (id, at) VALUES (1, now()) \
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn reserve_send(
        &self,
        rate: u32,
        now: DateTime<Utc>,
        latest: Option<DateTime<Utc>>,
    ) -> Result<Option<SendSlot>, StoreError> {
        let spacing = 1.0 / f64::from(rate.max(1));
        // One round trip: take the slot if it starts in time; either way say
        // when the next free one starts (the row as it was before the update).
        let (reserved, next): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
            "WITH reserved AS ( \
               UPDATE send_pace SET next_at = GREATEST(next_at, $1) + make_interval(secs => $2) \
               WHERE id = 1 AND ($3::timestamptz IS NULL OR GREATEST(next_at, $1) <= $3) \
               RETURNING next_at - make_interval(secs => $2) AS starts) \
             SELECT (SELECT starts FROM reserved), \
               GREATEST((SELECT next_at FROM send_pace WHERE id = 1), $1)",
        )
        .bind(now)
        .bind(spacing)
        .bind(latest)
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(match reserved {
            Some(starts) => SendSlot::Reserved(starts),
            None => SendSlot::NotBefore(next.unwrap_or(now)),
        }))
    }

    async fn pause_sends(&self, until: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO send_pace (id, next_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET next_at = GREATEST(send_pace.next_at, $1)",
        )
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn export_capped(
        &self,
        page: &ExportPage,
        max_bytes: usize,
    ) -> Result<Vec<ExportRecord>, StoreError> {
        export_page(&self.pool, page, max_bytes).await
    }

    fn wake_on_new_jobs(&self, wake: Arc<Notify>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = listen(&pool, &wake).await {
                    tracing::warn!(error = %e, "LISTEN for new jobs failed; polling until it is back");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    async fn claim_captures(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<super::DueCapture>, StoreError> {
        self.captures_due(now, lease, limit).await
    }

    async fn record_capture(
        &self,
        reply_id: &ReplyId,
        capture: &super::Capture<'_>,
    ) -> Result<(), StoreError> {
        self.capture_recorded(reply_id.as_str(), capture).await
    }
}

/// Records every delivery Chatwoot answered that is waiting, in one call of
/// `goldrelay_delivered_many` (migration `20261129000009_delivered_together.sql`)
/// and one commit, and answers each. If that call fails, nothing of it was
/// stored, and each is recorded alone, so one bad outcome fails only itself.
async fn record_delivereds(
    pool: PgPool,
    mut waiting: mpsc::Receiver<PendingDelivered>,
    fast: bool,
) {
    let mut group = Vec::with_capacity(MAX_BATCH);
    loop {
        if waiting.recv_many(&mut group, MAX_BATCH).await == 0 {
            return;
        }
        if !fast {
            for p in group.drain(..) {
                let alone = delivered(&pool, &p.reply_id, p.message_id, p.now).await;
                let _ = p.answer.send(alone);
            }
            continue;
        }
        let together = sqlx::query("SELECT goldrelay_delivered_many($1, $2, $3)")
            .bind(
                group
                    .iter()
                    .map(|p| p.reply_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(group.iter().map(|p| p.message_id).collect::<Vec<_>>())
            .bind(group.iter().map(|p| p.now).collect::<Vec<_>>())
            .execute(&pool)
            .await;
        match together {
            Ok(_) => answer_all(&mut group, || Ok(())),
            // A statement the server refused: one outcome may be at fault.
            Err(sqlx::Error::Database(_)) => {
                for p in group.drain(..) {
                    let alone = delivered(&pool, &p.reply_id, p.message_id, p.now).await;
                    let _ = p.answer.send(alone);
                }
            }
            // No answer from the server: trying each alone would only wait longer.
            Err(e) => answer_all(&mut group, || Err(StoreError::Commit(e.to_string()))),
        }
    }
}

fn answer_all(group: &mut Vec<PendingDelivered>, answer: impl Fn() -> Result<(), StoreError>) {
    for p in group.drain(..) {
        let _ = p.answer.send(answer());
    }
}

/// Records one delivery Chatwoot answered through the state machine, in a
/// transaction of its own: the path a group takes when the server refused it.
async fn delivered(
    pool: &PgPool,
    reply_id: &str,
    message_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let outcome = Outcome::Delivered { message_id };
    // Recorded whoever holds the lease, so the owner does not matter here.
    lifecycle::finish(&mut PgTx(&mut tx), reply_id, "", outcome, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Sends `NOTIFY goldrelay_jobs` after new jobs were committed, at most once
/// per `COALESCE` period. NOTIFY takes a database-wide lock at commit, so it is
/// kept out of the ingest transaction, where it would serialise every commit.
async fn announce_new_jobs(pool: PgPool, announce: Arc<Notify>) {
    const COALESCE: Duration = Duration::from_millis(10);
    loop {
        announce.notified().await;
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "could not NOTIFY other instances; they will poll");
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// Wakes the worker for every notification until the connection fails.
async fn listen(pool: &PgPool, wake: &Notify) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Anything committed while we were not listening is found by this wake-up.
    wake.notify_one();
    loop {
        listener.recv().await?;
        wake.notify_one();
    }
}

/// The gold dataset, one page at a time, in `(received_at, reply_id)` order,
/// cut after `max_bytes`. `octet_length` of a text reads its stored length,
/// not the value; JSON is measured as the text it is sent as.
async fn export_page(
    pool: &PgPool,
    page: &ExportPage,
    max_bytes: usize,
) -> Result<Vec<ExportRecord>, StoreError> {
    let after_at = page.after.as_ref().map(|cursor| cursor.received_at);
    let after_id = page
        .after
        .as_ref()
        .map(|cursor| cursor.reply_id.to_string());
    let narrowing = page.narrowing();
    let sql = capped_page_sql(
        &format!(
            "SELECT reply_id, received_at, octet_length(content) \
             + COALESCE(octet_length(draft::text), 0) \
             + COALESCE(octet_length(metadata::text), 0) \
             + COALESCE(octet_length(context::text), 0) AS size \
             FROM gold_replies \
             WHERE ($1::timestamptz IS NULL OR (received_at, reply_id) > ($1, $2)) \
             AND received_at <= $3 {narrowing} \
             ORDER BY received_at, reply_id LIMIT $4"
        ),
        "$5",
    );
    use futures_util::TryStreamExt;
    sqlx::query(&sql)
        .bind(after_at)
        .bind(after_id)
        .bind(page.until)
        .bind(page.limit as i64)
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch(pool)
        // Each row is decoded as it arrives: a page is never held twice.
        .map_err(StoreError::from)
        .and_then(|row| {
            futures_util::future::ready(row::export_record(&row).map_err(StoreError::from))
        })
        .try_collect()
        .await
}

