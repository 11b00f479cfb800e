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

mod capture;
mod claim;
mod clock;
mod delivered;
mod ingest;
mod notify;
mod pages;
mod tx;

use super::lifecycle::{self, NewReply};
use super::{
    reply_id_column, status_counts, ChannelRead, DueReads, EventOutcome, Ingested, Job, Outcome,
    QueueStats, ReplyFilter, ReplyRecord, Requeued, SendSlot, StaleChannelStatus, Store,
    StoreError,
};
use super::{ExportPage, ExportRecord, StoreOptions};
use crate::domain::{ChatwootEvent, GoldReply, ReplyId, Status};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use delivered::{record_delivereds, PendingDelivered};
use ingest::{run_ingest_writer, PendingIngest};
use notify::announce_new_jobs;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tx::{fetch_stored, PgTx};

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
    /// Claims in one statement rather than through `lifecycle.rs` ([`StoreOptions`]).
    fast_paths: bool,
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
        crate::store::schema::POSTGRES_MIGRATIONS.run(&pool).await?;
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
        clock::read_clock(&pool, &clock_offset).await?;
        tokio::spawn(clock::follow_clock(pool.clone(), clock_offset.clone()));
        Ok(Self {
            pool,
            announce,
            ingests,
            most_waiting: most,
            delivereds,
            clock_offset,
            fast_paths: tuning.fast_paths,
        })
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
        if self.fast_paths {
            return claim::in_one_statement(&self.pool, owner, now, (lease, look_after), limit)
                .await;
        }
        let mut tx = self.pool.begin().await?;
        let times = (lease, look_after);
        let jobs = lifecycle::claim(&mut PgTx(&mut tx), owner, now, times, limit).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    async fn finish(
        &self,
        reply_id: &ReplyId,
        owner: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // The common outcome in one round trip; the rest through the rules.
        if let Outcome::Delivered { message_id } = outcome {
            let (answer, answered) = oneshot::channel();
            let reply_id = reply_id.clone();
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
        pages::list_page(&self.pool, filter).await
    }

    async fn requeue(
        &self,
        reply_id: &ReplyId,
        force: bool,
        now: DateTime<Utc>,
        look_after: Duration,
    ) -> Result<Requeued, StoreError> {
        let mut tx = self.pool.begin().await?;
        let tx_ = &mut PgTx(&mut tx);
        let requeued = lifecycle::requeue(tx_, reply_id, force, (now, look_after)).await?;
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
        clock::now(&self.clock_offset)
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
        pages::export_page(&self.pool, page, max_bytes).await
    }

    fn wake_on_new_jobs(&self, wake: Arc<Notify>) {
        notify::wake_on_new_jobs(self.pool.clone(), wake);
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
