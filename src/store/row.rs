//! One decoder of a reply row for every backend and driver: SQLite read
//! through sqlx and written through rusqlite, PostgreSQL through sqlx. Each
//! driver says only how it reads a column of each kind ([`Columns`]): SQLite
//! keeps times as milliseconds and JSON as text, PostgreSQL as `timestamptz`
//! and `jsonb`. What a row means is written once, here.

use super::lifecycle::Stored;
use super::{reply_id_column, status_column, ContextState, ExportRecord, Job, ReplyRecord};
use crate::domain::{Action, ChannelStatus};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// How one driver reads a column of each kind; `None` is SQL `NULL`.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
    fn json(&self, column: &str) -> Result<Option<Value>, sqlx::Error>;
}

/// A reply's public record, from [`super::REPLY_COLUMNS`].
pub(crate) fn reply_record(row: &impl Columns) -> Result<ReplyRecord, sqlx::Error> {
    Ok(ReplyRecord {
        reply_id: reply_id_column(&required(row.text("reply_id")?, "reply_id")?)?,
        account_id: required(row.int("account_id")?, "account_id")?,
        conversation_id: required(row.int("conversation_id")?, "conversation_id")?,
        action: action_column(&required(row.text("action")?, "action")?)?,
        status: status_column(&required(row.text("status")?, "status")?)?,
        attempts: row.int("attempts")?.unwrap_or_default(),
        last_error: row.text("last_error")?,
        chatwoot_message_id: row.int("chatwoot_message_id")?,
        received_at: required(row.time("received_at")?, "received_at")?,
        next_attempt_at: row.time("next_attempt_at")?,
        delivered_at: row.time("delivered_at")?,
        confirmed_at: row.time("confirmed_at")?,
        channel_status: channel_status_column(row)?,
        channel_error: row.text("channel_error")?,
        context: ContextState {
            source: row.text("context_source")?,
            captured_at: row.time("context_captured_at")?,
            capture_attempts: row.int("context_attempts")?.unwrap_or_default(),
            capture_error: row.text("context_error")?,
            next_capture_at: row.time("context_due_at")?,
        },
    })
}

/// A reply as the rules of `lifecycle.rs` read it.
pub(crate) fn stored(row: &impl Columns) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        record: reply_record(row)?,
        fingerprint: required(row.text("fingerprint")?, "fingerprint")?,
        uncertain: row.flag("uncertain")?,
        stale_since: row.time("channel_status_stale_at")?,
    })
}

/// A reply as the dataset export hands it out, from `EXPORT_COLUMNS`.
pub(crate) fn export_record(row: &impl Columns) -> Result<ExportRecord, sqlx::Error> {
    let context = row
        .json("context")?
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| undecodable("context", e))?;
    Ok(ExportRecord {
        reply_id: reply_id_column(&required(row.text("reply_id")?, "reply_id")?)?,
        account_id: required(row.int("account_id")?, "account_id")?,
        conversation_id: required(row.int("conversation_id")?, "conversation_id")?,
        action: action_column(&required(row.text("action")?, "action")?)?,
        content: required(row.text("content")?, "content")?,
        private: row.flag("private")?,
        draft: row.json("draft")?,
        approved_by: row.text("approved_by")?,
        tags: row.json("tags")?.unwrap_or_default(),
        metadata: row.json("metadata")?,
        received_at: required(row.time("received_at")?, "received_at")?,
        delivered_at: row.time("delivered_at")?,
        confirmed_at: row.time("confirmed_at")?,
        status: status_column(&required(row.text("status")?, "status")?)?,
        attempts: row.int("attempts")?.unwrap_or_default(),
        last_error: row.text("last_error")?,
        chatwoot_message_id: row.int("chatwoot_message_id")?,
        channel_status: channel_status_column(row)?,
        channel_error: row.text("channel_error")?,
        next_attempt_at: row.time("next_attempt_at")?,
        uncertain: row.flag("uncertain")?,
        context,
        context_source: row.text("context_source")?,
        context_captured_at: row.time("context_captured_at")?,
    })
}

/// A job as a claim hands it out: its reply's columns and the job's own
/// `maybe_sent`, with `attempts` as the claim counted it.
pub(crate) fn job(row: &impl Columns) -> Result<Job, sqlx::Error> {
    Ok(Job {
        reply_id: reply_id_column(&required(row.text("reply_id")?, "reply_id")?)?,
        account_id: required(row.int("account_id")?, "account_id")?,
        conversation_id: required(row.int("conversation_id")?, "conversation_id")?,
        content: required(row.text("content")?, "content")?,
        private: row.flag("private")?,
        liquid: row.flag("liquid")?,
        attempt: row.int("attempts")?.unwrap_or_default(),
        received_at: required(row.time("age_from")?, "age_from")?,
        accepted_at: required(row.time("accepted_at")?, "accepted_at")?,
        maybe_sent: row.flag("maybe_sent")?,
        trace_context: row.text("trace_context")?,
    })
}

/// A channel status; one Chatwoot does not name (none is written since the
/// status became a type) reads as none known.
fn channel_status_column(row: &impl Columns) -> Result<Option<ChannelStatus>, sqlx::Error> {
    Ok(row
        .text("channel_status")?
        .and_then(|name| ChannelStatus::parse(&name)))
}

/// An action of our own making, or the row is refused.
fn action_column(raw: &str) -> Result<Action, sqlx::Error> {
    Action::parse(raw).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "action".into(),
        source: format!("{raw:?} is not an action").into(),
    })
}

fn required<T>(value: Option<T>, column: &str) -> Result<T, sqlx::Error> {
    value.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: "NULL in a column that is never NULL".into(),
    })
}

fn undecodable(column: &str, error: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.into(),
        source: Box::new(error),
    }
}

/// SQLite's times: milliseconds since the Unix epoch.
fn millis(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// SQLite's JSON: text.
fn json_text(column: &str, raw: Option<String>) -> Result<Option<Value>, sqlx::Error> {
    raw.map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| undecodable(column, e))
}

impl Columns for SqliteRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }
    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(millis(self.try_get(column)?))
    }
    fn json(&self, column: &str) -> Result<Option<Value>, sqlx::Error> {
        json_text(column, self.try_get(column)?)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.get(column).map_err(|e| undecodable(column, e))
    }
    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.get(column).map_err(|e| undecodable(column, e))
    }
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.get(column).map_err(|e| undecodable(column, e))
    }
    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(millis(self.int(column)?))
    }
    fn json(&self, column: &str) -> Result<Option<Value>, sqlx::Error> {
        json_text(column, self.text(column)?)
    }
}

impl Columns for PgRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
    /// `int4` (attempts) or `int8` (ids).
    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get::<Option<i64>, _>(column).or_else(|_| {
            self.try_get::<Option<i32>, _>(column)
                .map(|v| v.map(i64::from))
        })
    }
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }
    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(column)
    }
    fn json(&self, column: &str) -> Result<Option<Value>, sqlx::Error> {
        self.try_get(column)
    }
}
