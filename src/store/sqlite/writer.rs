//! The SQLite writer: one thread that owns the only connection allowed to
//! write and commits whatever writes have queued up meanwhile in one
//! transaction (group commit), so concurrent requests share one disk flush.
//!
//! It talks to SQLite synchronously (rusqlite over the libsqlite3 sqlx also
//! links) with cached prepared statements: a statement costs a function call
//! here, where an async driver hands every statement to a thread of its own
//! and back (docs/benchmarks.md has the profile that chose this).

use super::millis;
use crate::domain::{ChatwootEvent, ReplyId};
use crate::store::lifecycle::{NewReply, ReplyChange, Stored, Tx, Value};
use crate::store::row;
use crate::store::{Job, StoreError, REPLY_COLUMNS};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most writes committed together: bounds one transaction's latency.
const MAX_BATCH: usize = 512;

/// What a write hands back once it ran: called with the batch's commit result.
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One write, run on the writer thread inside the batch's transaction.
pub(super) type WriteOp = Box<dyn FnOnce(&mut Connection) -> Completion + Send>;

/// WAL frames (4 KiB pages) past which the writer restarts the WAL between
/// two batches: 40 MiB. At 64 clients the writer appends ~150 MB/s of frames
/// (a reply dirties pages of several indexes), and the checkpointer publishes
/// the WAL's length every 10 ms while it grows, so the file stays under the
/// 64 MiB the issue allows (at most 50 MiB measured over 60 s).
const RESTART_WAL_FRAMES: i64 = 10 * 1024;

/// Opens the writer's connection with the durability the store promises
/// (WAL, `synchronous=FULL`) and no automatic checkpoints: the checkpointer
/// copies the WAL in a connection of its own ([`super::checkpoint_regularly`]).
pub(super) fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // Every statement the writer runs stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Runs `op` in a savepoint of its own: a write that fails leaves nothing
/// behind and its neighbours in the batch commit as if it had never been there.
pub(super) fn op<T, F>(op: F, answer: oneshot::Sender<Result<T, StoreError>>) -> WriteOp
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    Box::new(move |conn| {
        let result = in_savepoint(conn, op);
        Box::new(move |committed: Result<(), StoreError>| {
            let _ = answer.send(committed.and(result));
        })
    })
}

fn in_savepoint<T>(
    conn: &mut Connection,
    op: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.prepare_cached("SAVEPOINT write")?.execute([])?;
    let result = op(conn);
    if result.is_err() {
        conn.prepare_cached("ROLLBACK TO write")?.execute([])?;
    }
    conn.prepare_cached("RELEASE write")?.execute([])?;
    result
}

/// Runs a step of the state machine on the writer thread. Its statements are
/// synchronous calls, so the step completes without ever waiting.
pub(super) fn step<T>(step: impl std::future::Future<Output = T>) -> T {
    futures_executor::block_on(step)
}

/// The writer thread: takes every queued write, runs them in one
/// transaction, commits once, answers them all, then restarts the WAL if it
/// has grown long. Ends when the store is dropped.
pub(super) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    wal_frames: Arc<AtomicI64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        commit(&mut conn, batch.drain(..));
        restart_wal(&conn, &wal_frames);
    }
}

fn commit(conn: &mut Connection, batch: impl Iterator<Item = WriteOp>) {
    // IMMEDIATE takes the write lock at once, waiting out the busy timeout
    // for another process that holds it (a CLI command, `migrate`). A
    // deferred BEGIN whose first statement only reads (a claim finding
    // nothing) holds a read snapshot instead, and the batch's first write
    // then fails with BUSY at once, without waiting: SQLite cannot upgrade a
    // snapshot another writer has moved past.
    if let Err(e) = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
    {
        tracing::warn!(error = %e, "the writer could not begin a transaction");
        // Dropped unrun: their callers see `StoreError::Unavailable`.
        batch.for_each(drop);
        return;
    }
    let completions: Vec<Completion> = batch.map(|write| write(conn)).collect();
    let committed = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(|e| e.to_string());
    if committed.is_err() && !conn.is_autocommit() {
        // A failed COMMIT may leave the transaction open; nothing of it stays.
        let _ = conn.execute_batch("ROLLBACK");
    }
    for complete in completions {
        complete(committed.clone().map_err(StoreError::Commit));
    }
}

/// Between two batches, once the WAL is long: copies what the checkpointer
/// has not yet (a fraction of a second of writes) and makes the next commit
/// write from the start of the WAL again (RESTART waits for readers on older
/// snapshots, which reads keep short).
fn restart_wal(conn: &Connection, wal_frames: &AtomicI64) {
    if wal_frames.load(Ordering::Relaxed) < RESTART_WAL_FRAMES {
        return;
    }
    let restarted = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    });
    match restarted {
        Ok(_) => wal_frames.store(0, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "could not restart the WAL; trying after the next batch");
        }
    }
}

fn stored_where(
    conn: &Connection,
    condition: &str,
    value: impl rusqlite::ToSql,
) -> Result<Option<Stored>, StoreError> {
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE {condition}");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([value], |row| row::stored(row).map_err(undecodable))
        .optional()?)
}

/// A row [`row::stored`] could not read, as rusqlite reports it.
fn undecodable(error: sqlx::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(error))
}

/// A value of the state machine in SQLite's types (times as milliseconds).
fn sql_value(value: Value) -> Sql {
    match value {
        Value::Text(v) => v.map_or(Sql::Null, Sql::Text),
        Value::Int(v) => v.map_or(Sql::Null, Sql::Integer),
        Value::Time(v) => v.map_or(Sql::Null, |t| Sql::Integer(millis(t))),
        Value::Bool(v) => Sql::Integer(i64::from(v)),
    }
}

/// The statements of the delivery state machine, on the writer's connection.
pub(super) struct SqliteTx<'c>(pub &'c mut Connection);

#[async_trait]
impl Tx for SqliteTx<'_> {
    // One writer does every write, so nothing needs locking.
    async fn reply(
        &mut self,
        reply_id: &ReplyId,
        _lock: bool,
    ) -> Result<Option<Stored>, StoreError> {
        stored_where(self.0, "reply_id = ?1", reply_id.as_str())
    }

    async fn reply_by_message(
        &mut self,
        message_id: i64,
        _lock: bool,
    ) -> Result<Option<Stored>, StoreError> {
        stored_where(
            self.0,
            "chatwoot_message_id = ?1 ORDER BY received_at DESC LIMIT 1",
            message_id,
        )
    }

    async fn insert_reply(
        &mut self,
        new: &NewReply,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let reply = &new.reply;
        let now_ms = millis(now);
        let inserted = self
            .0
            .prepare_cached(
                "INSERT INTO gold_replies (reply_id, account_id, conversation_id, action, \
                 content, private, approved_by, draft, tags, metadata, fingerprint, status, \
                 received_at, next_attempt_at, liquid, trace_context, context, context_source, \
                 context_due_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
                 ?14, ?15, ?16, ?17, ?18, ?19) ON CONFLICT (reply_id) DO NOTHING",
            )?
            .execute(params![
                reply.reply_id().as_str(),
                reply.account_id(),
                reply.conversation_id(),
                reply.action().as_str(),
                reply.content(),
                reply.private(),
                reply.approved_by(),
                new.draft,
                new.tags,
                new.metadata,
                new.fingerprint,
                new.initial_status().as_str(),
                now_ms,
                reply.action().sends().then_some(now_ms),
                reply.liquid(),
                new.trace_context,
                new.context,
                new.context.as_ref().map(|_| "posted"),
                new.capture_due(now).map(millis),
            ])?;
        Ok(inserted == 1)
    }

    async fn update_reply(
        &mut self,
        reply_id: &ReplyId,
        change: &ReplyChange,
    ) -> Result<(), StoreError> {
        let assignments = change.assignments();
        if assignments.is_empty() {
            return Ok(());
        }
        let set: Vec<String> = assignments
            .iter()
            .enumerate()
            .map(|(i, (column, _))| format!("{column} = ?{}", i + 1))
            .collect();
        let sql = format!(
            "UPDATE gold_replies SET {} WHERE reply_id = ?{}",
            set.join(", "),
            assignments.len() + 1
        );
        let values = assignments
            .into_iter()
            .map(|(_, value)| sql_value(value))
            .chain([Sql::Text(reply_id.to_string())]);
        self.0
            .prepare_cached(&sql)?
            .execute(params_from_iter(values))?;
        Ok(())
    }

    async fn enqueue(
        &mut self,
        reply_id: &ReplyId,
        account_id: i64,
        conversation_id: i64,
        due: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<(), StoreError> {
        // The head is the conversation's oldest job: this one, if none waits.
        self.0
            .prepare_cached(
                "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, \
                 maybe_sent, is_head) VALUES (?1, ?2, ?3, ?4, ?5, NOT EXISTS (SELECT 1 \
                 FROM delivery_jobs WHERE account_id = ?2 AND conversation_id = ?3))",
            )?
            .execute(params![
                reply_id.as_str(),
                account_id,
                conversation_id,
                millis(due),
                maybe_sent
            ])?;
        Ok(())
    }

    async fn remove_job(
        &mut self,
        reply_id: &ReplyId,
        owner: Option<&str>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "DELETE FROM delivery_jobs WHERE reply_id = ?1 AND (?2 IS NULL OR lease_owner = ?2) \
                 RETURNING account_id, conversation_id",
            )?
            .query_row(params![reply_id.as_str(), owner], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?)
    }

    async fn promote_head(
        &mut self,
        (account_id, conversation_id): (i64, i64),
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "UPDATE delivery_jobs SET is_head = 1 WHERE seq = (SELECT MIN(seq) \
                 FROM delivery_jobs WHERE account_id = ?1 AND conversation_id = ?2)",
            )?
            .execute(params![account_id, conversation_id])?;
        Ok(())
    }

    async fn due_heads(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        // `is_head = 1`, as the partial index on the heads is declared, so it serves.
        let sql = crate::store::due_heads_sql("j.is_head = 1", "?1", "?2");
        let mut due = self.0.prepare_cached(&sql)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let jobs = due
            .query_map(params![millis(now), limit], |row| {
                row::job(row).map_err(undecodable)
            })?
            .collect::<Result<_, _>>()?;
        Ok(jobs)
    }

    async fn count_attempt(&mut self, reply_id: &ReplyId) -> Result<i64, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "UPDATE gold_replies SET attempts = attempts + 1 WHERE reply_id = ?1 \
                 RETURNING attempts",
            )?
            .query_row([reply_id.as_str()], |row| row.get(0))?)
    }

    async fn lease_job(
        &mut self,
        reply_id: &ReplyId,
        owner: &str,
        until: DateTime<Utc>,
        due_again: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "UPDATE delivery_jobs SET lease_owner = ?2, lease_until = ?3, maybe_sent = 1, \
                 due_at = ?4 WHERE reply_id = ?1",
            )?
            .execute(params![
                reply_id.as_str(),
                owner,
                millis(until),
                millis(due_again)
            ])?;
        Ok(())
    }

    async fn reschedule_job(
        &mut self,
        reply_id: &ReplyId,
        owner: &str,
        at: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<bool, StoreError> {
        let held = self
            .0
            .prepare_cached(
                "UPDATE delivery_jobs SET due_at = ?1, lease_owner = NULL, lease_until = NULL, \
                 maybe_sent = ?2 WHERE reply_id = ?3 AND lease_owner = ?4",
            )?
            .execute(params![millis(at), maybe_sent, reply_id.as_str(), owner])?;
        Ok(held > 0)
    }

    async fn insert_event(
        &mut self,
        event: &ChatwootEvent,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let inserted = self
            .0
            .prepare_cached(
                "INSERT INTO chatwoot_events (delivery_id, dedupe_key, event, message_id, \
                 reply_id, payload, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                event.delivery_id(),
                event.dedupe_key(),
                event.kind(),
                event.message_id(),
                event.reply_id().map(ReplyId::as_str),
                payload,
                millis(now)
            ])?;
        Ok(inserted == 1)
    }
}
