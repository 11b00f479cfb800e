//! Context capture's statements on PostgreSQL ([`crate::store::Store::claim_captures`],
//! [`crate::store::Store::record_capture`]). Claims skip rows another
//! instance is claiming, so two instances never capture the same reply at once.

use super::PostgresStore;
use crate::domain::ReplyId;
use crate::store::{reply_id_column, Capture, DueCapture, StoreError, CAPTURE_DUE};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;

impl PostgresStore {
    pub(super) async fn captures_due(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueCapture>, StoreError> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let sql = format!(
            "UPDATE gold_replies r SET context_due_at = $2 FROM ( \
             SELECT reply_id FROM gold_replies WHERE {} \
             ORDER BY context_due_at LIMIT $3 FOR UPDATE SKIP LOCKED) d \
             WHERE r.reply_id = d.reply_id \
             RETURNING r.reply_id, r.account_id, r.conversation_id, r.chatwoot_message_id, \
             r.received_at, r.context_attempts",
            CAPTURE_DUE.replace("{now}", "$1")
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(until)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let due = |row: &sqlx::postgres::PgRow| -> Result<DueCapture, sqlx::Error> {
            Ok(DueCapture {
                reply_id: reply_id_column(row.try_get("reply_id")?)?,
                account_id: row.try_get("account_id")?,
                conversation_id: row.try_get("conversation_id")?,
                message_id: row.try_get("chatwoot_message_id")?,
                accepted_at: row.try_get("received_at")?,
                attempts: row.try_get::<i32, _>("context_attempts")?.into(),
            })
        };
        Ok(rows.iter().map(due).collect::<Result<_, _>>()?)
    }

    pub(super) async fn capture_recorded(
        &self,
        reply_id: &ReplyId,
        capture: &Capture<'_>,
    ) -> Result<(), StoreError> {
        let kept = "WHERE reply_id = $1 AND context_source IS NULL";
        match *capture {
            Capture::Turns { turns, at } => {
                let json = serde_json::to_string(turns).unwrap_or_else(|_| "[]".into());
                let sql = format!(
                    "UPDATE gold_replies SET context = $2::jsonb, context_source = 'captured', \
                     context_captured_at = $3, context_due_at = NULL, context_error = NULL, \
                     context_attempts = context_attempts + 1 {kept}"
                );
                let query = sqlx::query(&sql)
                    .bind(reply_id.as_str())
                    .bind(json)
                    .bind(at);
                query.execute(&self.pool).await?;
            }
            Capture::Failed { error, retry_at } => {
                let sql = format!(
                    "UPDATE gold_replies SET context_error = $2, context_due_at = $3, \
                     context_attempts = context_attempts + 1 {kept}"
                );
                let query = sqlx::query(&sql)
                    .bind(reply_id.as_str())
                    .bind(error)
                    .bind(retry_at);
                query.execute(&self.pool).await?;
            }
            Capture::Later { at } => {
                let sql = format!("UPDATE gold_replies SET context_due_at = $2 {kept}");
                sqlx::query(&sql)
                    .bind(reply_id.as_str())
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }
}
