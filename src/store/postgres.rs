//! The PostgreSQL store, for several goldrelay instances on one database.
//!
//! Instances claim jobs with `FOR UPDATE SKIP LOCKED`, so no job is held by two
//! of them, and only a conversation's oldest job is ever claimable, so order
//! holds across instances. A new job sends `NOTIFY goldrelay_jobs` on commit;
//! every instance `LISTEN`s and wakes its worker at once. PostgreSQL groups
//! concurrent commits into shared WAL flushes by itself.

use super::{
    created_record, status_column, status_counts, Cursor, EventOutcome, Ingested, Job, Outcome,
    QueueStats, ReplyFilter, ReplyRecord, Requeued, Store, StoreError,
};
use crate::domain::{channel_rank, ChatwootEvent, Effect, GoldReply, Status};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const CHANNEL: &str = "goldrelay_jobs";
const REPLY_COLUMNS: &str = "reply_id, account_id, conversation_id, action, status, attempts, \
     last_error, chatwoot_message_id, received_at, next_attempt_at, delivered_at, confirmed_at, \
     channel_status, channel_error";

pub struct PostgresStore {
    pool: PgPool,
    /// Asks the announcer to tell every instance that new jobs exist.
    announce: Arc<Notify>,
}

impl PostgresStore {
    /// Connects, and migrates unless another instance holds the migration lock.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
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
        Ok(Self { pool, announce })
    }
}

fn record(row: &PgRow) -> Result<ReplyRecord, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(ReplyRecord {
        reply_id: row.try_get("reply_id")?,
        account_id: row.try_get("account_id")?,
        conversation_id: row.try_get("conversation_id")?,
        action: row.try_get("action")?,
        status: status_column(&status)?,
        attempts: row.try_get::<i32, _>("attempts")?.into(),
        last_error: row.try_get("last_error")?,
        chatwoot_message_id: row.try_get("chatwoot_message_id")?,
        received_at: row.try_get("received_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        delivered_at: row.try_get("delivered_at")?,
        confirmed_at: row.try_get("confirmed_at")?,
        channel_status: row.try_get("channel_status")?,
        channel_error: row.try_get("channel_error")?,
    })
}

async fn fetch_record(
    conn: &mut PgConnection,
    reply_id: &str,
) -> Result<Option<ReplyRecord>, StoreError> {
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = $1");
    let row = sqlx::query(&sql)
        .bind(reply_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(record).transpose()?)
}

async fn insert_reply(
    conn: &mut PgConnection,
    reply: &GoldReply,
    status: Status,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let sends = reply.action().sends();
    let inserted = sqlx::query(
        "INSERT INTO gold_replies (reply_id, account_id, conversation_id, action, content, private, \
         approved_by, draft, tags, metadata, fingerprint, status, received_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (reply_id) DO NOTHING",
    )
    .bind(reply.reply_id().as_str())
    .bind(reply.account_id())
    .bind(reply.conversation_id())
    .bind(reply.action().as_str())
    .bind(reply.content())
    .bind(reply.private())
    .bind(reply.approved_by())
    .bind(reply.draft())
    .bind(serde_json::Value::from(reply.tags().to_vec()))
    .bind(reply.metadata())
    .bind(reply.fingerprint())
    .bind(status.as_str())
    .bind(now)
    .bind(sends.then_some(now))
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Serialises every change to one conversation's line of jobs, across instances.
async fn lock_conversation(
    conn: &mut PgConnection,
    account_id: i64,
    conversation_id: i64,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("goldrelay:{account_id}:{conversation_id}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Adds a job at the back of its conversation's line; it is the head when the
/// line was empty.
async fn enqueue(
    conn: &mut PgConnection,
    reply_id: &str,
    account_id: i64,
    conversation_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    lock_conversation(conn, account_id, conversation_id).await?;
    sqlx::query(
        "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, is_head) \
         VALUES ($1, $2, $3, $4, NOT EXISTS (SELECT 1 FROM delivery_jobs \
         WHERE account_id = $2 AND conversation_id = $3))",
    )
    .bind(reply_id)
    .bind(account_id)
    .bind(conversation_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a reply's job (only if `owner` holds it, when given) and makes the
/// next job of its conversation the head. Returns whether a job was removed.
async fn remove_job(
    conn: &mut PgConnection,
    reply_id: &str,
    owner: Option<&str>,
) -> Result<bool, StoreError> {
    let line: Option<(i64, i64)> =
        sqlx::query_as("SELECT account_id, conversation_id FROM delivery_jobs WHERE reply_id = $1")
            .bind(reply_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((account_id, conversation_id)) = line else {
        return Ok(false);
    };
    lock_conversation(conn, account_id, conversation_id).await?;
    let removed = sqlx::query(
        "DELETE FROM delivery_jobs WHERE reply_id = $1 AND ($2::text IS NULL OR lease_owner = $2)",
    )
    .bind(reply_id)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    if removed.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE delivery_jobs SET is_head = true WHERE seq = (SELECT MIN(seq) FROM delivery_jobs \
         WHERE account_id = $1 AND conversation_id = $2)",
    )
    .bind(account_id)
    .bind(conversation_id)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

async fn confirm(
    conn: &mut PgConnection,
    reply_id: &str,
    message_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // The message exists, so the job goes whatever the reply's status. Locks
    // are taken job first, then reply, as claim and finish do, so a
    // confirmation racing a delivery never deadlocks.
    remove_job(conn, reply_id, None).await?;
    sqlx::query(
        "UPDATE gold_replies SET status = 'confirmed', confirmed_at = $1, \
         chatwoot_message_id = COALESCE(chatwoot_message_id, $2), \
         delivered_at = COALESCE(delivered_at, $1), last_error = NULL, next_attempt_at = NULL \
         WHERE reply_id = $3 AND status IN ('queued', 'delivered', 'dead')",
    )
    .bind(now)
    .bind(message_id)
    .bind(reply_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn channel_status(
    conn: &mut PgConnection,
    reply_id: &str,
    status: Option<String>,
    error: Option<String>,
) -> Result<(), StoreError> {
    let current: Option<Option<String>> = sqlx::query_scalar(
        "SELECT channel_status FROM gold_replies WHERE reply_id = $1 FOR UPDATE",
    )
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
    sqlx::query(
        "UPDATE gold_replies SET channel_status = $1, channel_error = $2 WHERE reply_id = $3",
    )
    .bind(status)
    .bind(error)
    .bind(reply_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(&self, reply: &GoldReply, now: DateTime<Utc>) -> Result<Ingested, StoreError> {
        // Millisecond precision, as the record answered without reading back.
        let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        let sends = reply.action().sends();
        let status = if sends {
            Status::Queued
        } else {
            Status::Recorded
        };
        let mut tx = self.pool.begin().await?;
        if !insert_reply(&mut tx, reply, status, now).await? {
            let existing = fetch_record(&mut tx, reply.reply_id().as_str())
                .await?
                .ok_or(StoreError::Unavailable)?;
            let stored: String =
                sqlx::query_scalar("SELECT fingerprint FROM gold_replies WHERE reply_id = $1")
                    .bind(reply.reply_id().as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            return Ok(if stored == reply.fingerprint() {
                Ingested::Existing(existing)
            } else {
                Ingested::Conflict(existing)
            });
        }
        if sends {
            let id = reply.reply_id().as_str();
            enqueue(
                &mut tx,
                id,
                reply.account_id(),
                reply.conversation_id(),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        let created = created_record(reply, now);
        if sends {
            self.announce.notify_one();
        }
        Ok(Ingested::Created(created))
    }

    async fn reply(&self, reply_id: &str) -> Result<Option<ReplyRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_record(&mut conn, reply_id).await
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        let sql = "WITH picked AS ( \
               SELECT j.seq, j.maybe_sent AS was_maybe_sent FROM delivery_jobs j \
               WHERE j.is_head AND j.due_at <= $1 \
               AND (j.lease_until IS NULL OR j.lease_until <= $1) \
               ORDER BY j.due_at, j.seq LIMIT $2 FOR UPDATE OF j SKIP LOCKED) \
             UPDATE delivery_jobs j SET lease_owner = $3, lease_until = $4, maybe_sent = true \
             FROM picked WHERE j.seq = picked.seq \
             RETURNING j.reply_id, j.account_id, j.conversation_id, picked.was_maybe_sent";
        let leased = sqlx::query(sql)
            .bind(now)
            .bind(limit as i64)
            .bind(owner)
            .bind(lease_until)
            .fetch_all(&mut *tx)
            .await?;
        let mut jobs = Vec::with_capacity(leased.len());
        for row in leased {
            let reply_id: String = row.try_get("reply_id")?;
            let reply = sqlx::query(
                "UPDATE gold_replies SET attempts = attempts + 1 WHERE reply_id = $1 \
                 RETURNING content, private, attempts, COALESCE(requeued_at, received_at) AS age_from",
            )
            .bind(&reply_id)
            .fetch_one(&mut *tx)
            .await?;
            jobs.push(Job {
                reply_id,
                account_id: row.try_get("account_id")?,
                conversation_id: row.try_get("conversation_id")?,
                content: reply.try_get("content")?,
                private: reply.try_get("private")?,
                attempt: reply.try_get::<i32, _>("attempts")?.into(),
                received_at: reply.try_get("age_from")?,
                maybe_sent: row.try_get("was_maybe_sent")?,
            });
        }
        tx.commit().await?;
        Ok(jobs)
    }

    async fn finish(
        &self,
        reply_id: &str,
        owner: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        match outcome {
            Outcome::Delivered { message_id } => {
                remove_job(&mut tx, reply_id, None).await?;
                sqlx::query(
                    "UPDATE gold_replies SET \
                     status = CASE WHEN status = 'confirmed' THEN status ELSE 'delivered' END, \
                     chatwoot_message_id = $1, delivered_at = COALESCE(delivered_at, $2), \
                     last_error = NULL, next_attempt_at = NULL WHERE reply_id = $3",
                )
                .bind(message_id)
                .bind(now)
                .bind(reply_id)
                .execute(&mut *tx)
                .await?;
            }
            Outcome::Retry {
                at,
                error,
                maybe_sent,
            } => {
                let held = sqlx::query(
                    "UPDATE delivery_jobs SET due_at = $1, lease_owner = NULL, lease_until = NULL, \
                     maybe_sent = $2 WHERE reply_id = $3 AND lease_owner = $4",
                )
                .bind(at)
                .bind(maybe_sent)
                .bind(reply_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
                if held.rows_affected() > 0 {
                    sqlx::query(
                        "UPDATE gold_replies SET last_error = $1, next_attempt_at = $2 WHERE reply_id = $3",
                    )
                    .bind(error)
                    .bind(at)
                    .bind(reply_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            Outcome::Dead { error } => {
                if remove_job(&mut tx, reply_id, Some(owner)).await? {
                    sqlx::query(
                        "UPDATE gold_replies SET status = 'dead', last_error = $1, next_attempt_at = NULL \
                         WHERE reply_id = $2 AND status = 'queued'",
                    )
                    .bind(error)
                    .bind(reply_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
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
                .push_bind(reply_id.clone())
                .push("))");
        }
        query
            .push(" ORDER BY received_at DESC, reply_id ASC LIMIT ")
            .push_bind(filter.limit as i64);
        let rows = query.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
    }

    async fn requeue(&self, reply_id: &str, now: DateTime<Utc>) -> Result<Requeued, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql =
            format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = $1 FOR UPDATE");
        let Some(row) = sqlx::query(&sql)
            .bind(reply_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Requeued::NotFound);
        };
        let current = record(&row)?;
        if current.status != Status::Dead {
            return Ok(Requeued::NotDead(current));
        }
        sqlx::query(
            "UPDATE gold_replies SET status = 'queued', attempts = 0, requeued_at = $1, \
             next_attempt_at = $1 WHERE reply_id = $2",
        )
        .bind(now)
        .bind(reply_id)
        .execute(&mut *tx)
        .await?;
        enqueue(
            &mut tx,
            reply_id,
            current.account_id,
            current.conversation_id,
            now,
        )
        .await?;
        let record = fetch_record(&mut tx, reply_id)
            .await?
            .ok_or(StoreError::Unavailable)?;
        tx.commit().await?;
        self.announce.notify_one();
        Ok(Requeued::Queued(record))
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
        let inserted = sqlx::query(
            "INSERT INTO chatwoot_events (delivery_id, dedupe_key, event, message_id, reply_id, payload, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&event.delivery_id)
        .bind(&event.dedupe_key)
        .bind(&event.kind)
        .bind(event.message_id)
        .bind(&event.reply_id)
        .bind(payload)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(EventOutcome::Duplicate);
        }
        match &event.effect {
            Some(Effect::Confirm {
                reply_id,
                message_id,
            }) => confirm(&mut tx, reply_id, *message_id, now).await?,
            Some(Effect::ChannelStatus {
                reply_id,
                message_id,
                status,
                error,
            }) => {
                confirm(&mut tx, reply_id, *message_id, now).await?;
                channel_status(&mut tx, reply_id, status.clone(), error.clone()).await?;
            }
            None => {}
        }
        tx.commit().await?;
        Ok(EventOutcome::Processed)
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM chatwoot_events WHERE received_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn release_all(&self, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE delivery_jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
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
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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
