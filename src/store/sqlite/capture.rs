//! Context capture's statements on SQLite ([`crate::store::Store::claim_captures`],
//! [`crate::store::Store::record_capture`]): both are writes, so both go
//! through the writer.

use super::{millis, time, SqliteStore};
use crate::domain::ReplyId;
use crate::store::{reply_id_column, Capture, DueCapture, StoreError, CAPTURE_DUE};
use chrono::{DateTime, Utc};
use rusqlite::params;
use std::time::Duration;

/// One claimed row before its reply id is checked.
type Claimed = (String, i64, i64, Option<i64>, i64, i64);

impl SqliteStore {
    pub(super) async fn captures_due(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueCapture>, StoreError> {
        let now_ms = millis(now);
        // Looked for on a reader first: an idle loop costs the writer nothing.
        let any = format!(
            "SELECT 1 FROM gold_replies WHERE {} LIMIT 1",
            CAPTURE_DUE.replace("{now}", "?1")
        );
        let due: Option<i64> = sqlx::query_scalar(&any)
            .bind(now_ms)
            .fetch_optional(&self.reads)
            .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<Claimed> = self
            .write(move |c| {
                let sql = format!(
                    "UPDATE gold_replies SET context_due_at = ?2 WHERE reply_id IN ( \
                     SELECT reply_id FROM gold_replies WHERE {} \
                     ORDER BY context_due_at LIMIT ?3) \
                     RETURNING reply_id, account_id, conversation_id, chatwoot_message_id, \
                     received_at, context_attempts",
                    CAPTURE_DUE.replace("{now}", "?1")
                );
                let mut statement = c.prepare_cached(&sql)?;
                let rows = statement.query_map(params![now_ms, until, limit], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<Claimed>, _>>()?)
            })
            .await?;
        let due = |(id, account_id, conversation_id, message_id, at, attempts): Claimed| {
            Ok(DueCapture {
                reply_id: reply_id_column(&id)?,
                account_id,
                conversation_id,
                message_id,
                accepted_at: time(Some(at)).unwrap_or(now),
                attempts,
            })
        };
        rows.into_iter()
            .map(due)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    pub(super) async fn capture_recorded(
        &self,
        reply_id: &ReplyId,
        capture: &Capture<'_>,
    ) -> Result<(), StoreError> {
        let id = reply_id.to_string();
        let kept = "WHERE reply_id = ?1 AND context_source IS NULL";
        match *capture {
            Capture::Turns { turns, at } => {
                let json = serde_json::to_string(turns).unwrap_or_else(|_| "[]".into());
                let at = millis(at);
                self.write(move |c| {
                    let sql = format!(
                        "UPDATE gold_replies SET context = ?2, context_source = 'captured', \
                         context_captured_at = ?3, context_due_at = NULL, context_error = NULL, \
                         context_attempts = context_attempts + 1 {kept}"
                    );
                    c.prepare_cached(&sql)?.execute(params![id, json, at])?;
                    Ok(())
                })
                .await
            }
            Capture::Failed { error, retry_at } => {
                let (error, retry) = (error.to_owned(), retry_at.map(millis));
                self.write(move |c| {
                    let sql = format!(
                        "UPDATE gold_replies SET context_error = ?2, context_due_at = ?3, \
                         context_attempts = context_attempts + 1 {kept}"
                    );
                    c.prepare_cached(&sql)?.execute(params![id, error, retry])?;
                    Ok(())
                })
                .await
            }
            Capture::Later { at } => {
                let at = millis(at);
                self.write(move |c| {
                    let sql = format!("UPDATE gold_replies SET context_due_at = ?2 {kept}");
                    c.prepare_cached(&sql)?.execute(params![id, at])?;
                    Ok(())
                })
                .await
            }
        }
    }
}
