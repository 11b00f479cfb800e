//! The embedded SQLite store.
//!
//! Durability: WAL with `synchronous=FULL`, so a 202 survives a crash of the
//! process and of the machine. Throughput: every write goes through one writer
//! thread that commits whatever has queued up meanwhile in one transaction
//! (group commit, [`writer`]), so concurrent requests share one disk flush
//! instead of paying for one each. Reads use a small pool of their own
//! connections.

mod capture;
mod writer;

use super::export::capped_page_sql;
use super::lifecycle::{self, NewReply};
use super::row;
use super::{
    reply_id_column, status_counts, ChannelRead, DueReads, EventOutcome, Ingested, Job, Outcome,
    QueueStats, ReplyFilter, ReplyRecord, Requeued, StaleChannelStatus, Store, StoreError,
    REPLY_COLUMNS,
};
use super::{ExportPage, ExportRecord, StoreOptions};
use crate::domain::{ChatwootEvent, GoldReply, ReplyId, Status};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use writer::{step, SqliteTx, WriteOp};

pub struct SqliteStore {
    writes: mpsc::Sender<WriteOp>,
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
        let mut migrator = SqliteConnection::connect_with(&options).await?;
        super::schema::SQLITE_MIGRATIONS.run(&mut migrator).await?;
        migrator.close().await?;
        let path = options.get_filename().to_owned();
        let writer = tokio::task::spawn_blocking(move || writer::connect(&path))
            .await
            .map_err(|_| StoreError::Unavailable)??;
        // Checkpoints copy the WAL into the database in a connection of their
        // own: copying inside the writer would stall every request waiting on
        // it. The writer only restarts the WAL, and the file is cut back to
        // 64 MB whenever it restarts.
        let checkpointer = SqliteConnection::connect_with(&options).await?;
        let wal_frames = Arc::new(AtomicI64::new(0));
        tokio::spawn(checkpoint_regularly(checkpointer, wal_frames.clone()));
        // Read connections keep a 128 KiB page cache, not SQLite's 2 MB: the
        // view and the export read 254 KB values through overflow pages, and
        // four full caches kept peak RSS over issue 19 item 4's 64 MiB
        // (docs/benchmarks.md).
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true).pragma("cache_size", "-128"))
            .await?;
        let waiting = tuning.max_waiting_writes.max(1);
        let (writes, rx) = mpsc::channel(waiting);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer::run(writer, rx, wal_frames))
            .map_err(|_| StoreError::Unavailable)?;
        Ok(Self {
            writes,
            reads,
            waiting,
            wake: std::sync::OnceLock::new(),
        })
    }

    /// Runs `op` on the writer inside the next group transaction and returns
    /// its result once committed.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let op = writer::op(op, answer);
        self.writes.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded(self.waiting),
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })?;
        answered.await.map_err(|_| StoreError::Unavailable)?
    }
}

/// How often the checkpointer copies the WAL into the database while writes
/// come in, and while none do.
const CHECKPOINT_BUSY: Duration = Duration::from_millis(10);
const CHECKPOINT_IDLE: Duration = Duration::from_millis(100);

/// Copies the WAL into the database often, without blocking the writer
/// (PASSIVE), and publishes the WAL's length in frames for the writer. A
/// PASSIVE checkpoint cannot restart the WAL under sustained writes (new
/// frames always follow the ones it copied), so the writer does that between
/// two batches; the more of the WAL is copied by then, the shorter the
/// writer stalls, hence the quick pace while the WAL grows.
async fn checkpoint_regularly(mut conn: SqliteConnection, wal_frames: Arc<AtomicI64>) {
    let mut pace = CHECKPOINT_IDLE;
    loop {
        tokio::time::sleep(pace).await;
        let copied: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await;
        match copied {
            Ok((_busy, frames, _copied)) => {
                let before = wal_frames.swap(frames, Ordering::Relaxed);
                pace = if frames != before {
                    CHECKPOINT_BUSY
                } else {
                    CHECKPOINT_IDLE
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; the WAL grows until the next one");
            }
        }
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
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
        Ok(rows
            .iter()
            .map(row::reply_record)
            .collect::<Result<_, _>>()?)
    }

    async fn requeue(
        &self,
        reply_id: &ReplyId,
        force: bool,
        now: DateTime<Utc>,
        look_after: Duration,
    ) -> Result<Requeued, StoreError> {
        let reply_id = reply_id.clone();
        let requeued = self
            .write(move |c| {
                let tx = &mut SqliteTx(c);
                step(lifecycle::requeue(tx, &reply_id, force, (now, look_after)))
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
            step(lifecycle::record_event(
                &mut SqliteTx(c),
                &event,
                &payload,
                now,
            ))
        })
        .await
    }

    async fn stale_channel_statuses(
        &self,
        due: &DueReads,
    ) -> Result<Vec<StaleChannelStatus>, StoreError> {
        let every = due
            .every
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4));
        let first = "(delivered_at + ?3)";
        let sql =
            super::stale_channel_statuses_sql("?1", "?2", "?3", "?4", first, due.every.is_some());
        let rows = sqlx::query(&sql)
            .bind(millis(due.now))
            .bind(millis(due.horizon))
            .bind(every)
            .bind(due.limit as i64)
            .fetch_all(&self.reads)
            .await?;
        let stale = |row: &SqliteRow| -> Result<StaleChannelStatus, sqlx::Error> {
            Ok(StaleChannelStatus {
                reply_id: reply_id_column(row.try_get("reply_id")?)?,
                account_id: row.try_get("account_id")?,
                conversation_id: row.try_get("conversation_id")?,
                message_id: row.try_get("chatwoot_message_id")?,
                since: time(row.try_get("channel_status_stale_at")?),
                received_at: time(row.try_get("received_at")?).unwrap_or_default(),
            })
        };
        Ok(rows.iter().map(stale).collect::<Result<_, _>>()?)
    }

    async fn record_channel_status(
        &self,
        reply_id: &ReplyId,
        read: &ChannelRead<'_>,
    ) -> Result<(), StoreError> {
        let reply_id = reply_id.clone();
        let status = read.status;
        let error = read.error.map(str::to_owned);
        let (since, next) = (read.since, read.next);
        self.write(move |c| {
            let read = ChannelRead {
                status,
                error: error.as_deref(),
                since,
                next,
            };
            step(lifecycle::record_channel_status(
                &mut SqliteTx(c),
                &reply_id,
                &read,
            ))
        })
        .await
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |c| {
            let pruned = c
                .prepare_cached("DELETE FROM chatwoot_events WHERE received_at < ?1")?
                .execute([millis(before)])?;
            Ok(pruned as u64)
        })
        .await
    }

    async fn ingest(&self, reply: &GoldReply, now: DateTime<Utc>) -> Result<Ingested, StoreError> {
        let new = NewReply::new(reply);
        let ingested = self
            .write(move |c| step(lifecycle::ingest(&mut SqliteTx(c), &new, now)))
            .await?;
        if matches!(ingested, Ingested::Created(_)) && reply.action().sends() {
            self.new_jobs();
        }
        Ok(ingested)
    }

    async fn trace_context(&self, reply_id: &ReplyId) -> Result<Option<String>, StoreError> {
        let context =
            sqlx::query_scalar("SELECT trace_context FROM gold_replies WHERE reply_id = ?")
                .bind(reply_id.as_str())
                .fetch_optional(&self.reads)
                .await?;
        Ok(context.flatten())
    }

    async fn reply(&self, reply_id: &ReplyId) -> Result<Option<ReplyRecord>, StoreError> {
        let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = ?");
        let row = sqlx::query(&sql)
            .bind(reply_id.as_str())
            .fetch_optional(&self.reads)
            .await?;
        Ok(row.as_ref().map(row::reply_record).transpose()?)
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        look_after: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let owner = owner.to_owned();
        self.write(move |c| {
            let times = (lease, look_after);
            step(lifecycle::claim(
                &mut SqliteTx(c),
                &owner,
                now,
                times,
                limit,
            ))
        })
        .await
    }

    async fn finish(
        &self,
        reply_id: &ReplyId,
        owner: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (reply_id, owner) = (reply_id.clone(), owner.to_owned());
        self.write(move |c| {
            step(lifecycle::finish(
                &mut SqliteTx(c),
                &reply_id,
                &owner,
                outcome,
                now,
            ))
        })
        .await
    }

    async fn message_floor(
        &self,
        account_id: i64,
        conversation_id: i64,
        before: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let floor: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(chatwoot_message_id) FROM gold_replies \
             WHERE account_id = ?1 AND conversation_id = ?2 AND delivered_at < ?3",
        )
        .bind(account_id)
        .bind(conversation_id)
        .bind(millis(before))
        .fetch_one(&self.reads)
        .await?;
        Ok(floor.unwrap_or(0))
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
            c.prepare_cached(
                "INSERT INTO write_probe (id, at) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )?
            .execute([now])?;
            Ok(())
        })
        .await
    }

    async fn export_capped(
        &self,
        page: &ExportPage,
        max_bytes: usize,
    ) -> Result<Vec<ExportRecord>, StoreError> {
        export_page(&self.reads, page, max_bytes).await
    }

    fn wake_on_new_jobs(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        let _ = self.wake.set(wake);
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
        self.capture_recorded(reply_id, capture).await
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

/// The gold dataset, one page at a time, cut after `max_bytes`; the
/// cursor's bound is written out rather than as a row value so SQLite uses
/// the `received_at` index. `octet_length` reads a value's size from its
/// row's header, not the value.
async fn export_page(
    reads: &SqlitePool,
    page: &ExportPage,
    max_bytes: usize,
) -> Result<Vec<ExportRecord>, StoreError> {
    let (after_ms, after_id) = match &page.after {
        Some(cursor) => (millis(cursor.received_at), cursor.reply_id.to_string()),
        None => (i64::MIN, String::new()),
    };
    let narrowing = page.narrowing();
    let sql = capped_page_sql(
        &format!(
            "SELECT reply_id, received_at, octet_length(content) \
             + COALESCE(octet_length(draft), 0) + COALESCE(octet_length(metadata), 0) \
             + COALESCE(octet_length(context), 0) AS size \
             FROM gold_replies \
             WHERE received_at >= ? AND (received_at > ? OR reply_id > ?) AND received_at <= ? \
             {narrowing} ORDER BY received_at, reply_id LIMIT ?"
        ),
        "?",
    );
    use futures_util::TryStreamExt;
    sqlx::query(&sql)
        .bind(after_ms)
        .bind(after_ms)
        .bind(after_id)
        .bind(millis(page.until))
        .bind(page.limit as i64)
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch(reads)
        // Each row is decoded as it arrives: a page is never held twice.
        .map_err(StoreError::from)
        .and_then(|row| {
            futures_util::future::ready(row::export_record(&row).map_err(StoreError::from))
        })
        .try_collect()
        .await
}
