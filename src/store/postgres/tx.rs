//! [`PgTx`]: the statements of lifecycle's delivery state machine
//! ([`Tx`]) on PostgreSQL, inside one transaction.

use crate::domain::{ChatwootEvent, ReplyId};
use crate::store::lifecycle::{NewReply, ReplyChange, Stored, Tx, Value};
use crate::store::{row, Job, StoreError, REPLY_COLUMNS};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, QueryBuilder};

/// The stored row of `reply_id`, locked `FOR UPDATE` if `lock`.
pub(super) async fn fetch_stored(
    conn: &mut PgConnection,
    reply_id: &ReplyId,
    lock: bool,
) -> Result<Option<Stored>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = $1{lock}");
    let row = sqlx::query(&sql)
        .bind(reply_id.as_str())
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
pub(super) struct PgTx<'c>(pub(super) &'c mut PgConnection);

#[async_trait]
impl Tx for PgTx<'_> {
    async fn reply(
        &mut self,
        reply_id: &ReplyId,
        lock: bool,
    ) -> Result<Option<Stored>, StoreError> {
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
        .bind(new.capture_due(now))
        .execute(&mut *self.0)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn update_reply(
        &mut self,
        reply_id: &ReplyId,
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
        update
            .push(" WHERE reply_id = ")
            .push_bind(reply_id.as_str());
        update.build().execute(&mut *self.0).await?;
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
        lock_conversation(self.0, account_id, conversation_id).await?;
        sqlx::query(
            "INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, \
             maybe_sent, is_head) VALUES ($1, $2, $3, $4, $5, NOT EXISTS (SELECT 1 \
             FROM delivery_jobs WHERE account_id = $2 AND conversation_id = $3))",
        )
        .bind(reply_id.as_str())
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
        reply_id: &ReplyId,
        owner: Option<&str>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        // Finding the job's conversation and taking its lock is one round trip.
        let line: Option<(i64, i64)> = sqlx::query_as(
            "SELECT account_id, conversation_id FROM ( \
               SELECT account_id, conversation_id, \
                 pg_advisory_xact_lock(goldrelay_line_lock(account_id, conversation_id)) \
               FROM delivery_jobs WHERE reply_id = $1) AS locked",
        )
        .bind(reply_id.as_str())
        .fetch_optional(&mut *self.0)
        .await?;
        if line.is_none() {
            return Ok(None);
        }
        // Under the lock, so its line cannot change until commit.
        Ok(sqlx::query_as(
            "DELETE FROM delivery_jobs WHERE reply_id = $1 \
             AND ($2::text IS NULL OR lease_owner = $2) \
             RETURNING account_id, conversation_id",
        )
        .bind(reply_id.as_str())
        .bind(owner)
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn promote_head(
        &mut self,
        (account_id, conversation_id): (i64, i64),
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE delivery_jobs SET is_head = true WHERE seq = (SELECT MIN(seq) \
             FROM delivery_jobs WHERE account_id = $1 AND conversation_id = $2)",
        )
        .bind(account_id)
        .bind(conversation_id)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn due_heads(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        // Since PostgreSQL 9.5, a head another claimant holds is skipped, not waited for.
        let sql = format!(
            "{} FOR UPDATE OF j SKIP LOCKED",
            crate::store::due_heads_sql("j.is_head", "$1", "$2")
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows.iter().map(row::job).collect::<Result<_, _>>()?)
    }

    async fn count_attempt(&mut self, reply_id: &ReplyId) -> Result<i64, StoreError> {
        let attempts: i32 = sqlx::query_scalar(
            "UPDATE gold_replies SET attempts = attempts + 1 WHERE reply_id = $1 RETURNING attempts",
        )
        .bind(reply_id.as_str())
        .fetch_one(&mut *self.0)
        .await?;
        Ok(attempts.into())
    }

    async fn lease_job(
        &mut self,
        reply_id: &ReplyId,
        owner: &str,
        until: DateTime<Utc>,
        due_again: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE delivery_jobs SET lease_owner = $2, lease_until = $3, maybe_sent = true, \
             due_at = $4 WHERE reply_id = $1",
        )
        .bind(reply_id.as_str())
        .bind(owner)
        .bind(until)
        .bind(due_again)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn reschedule_job(
        &mut self,
        reply_id: &ReplyId,
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
        .bind(reply_id.as_str())
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
        .bind(event.delivery_id())
        .bind(event.dedupe_key())
        .bind(event.kind())
        .bind(event.message_id())
        .bind(event.reply_id().map(ReplyId::as_str))
        .bind(payload)
        .bind(now)
        .execute(&mut *self.0)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}
