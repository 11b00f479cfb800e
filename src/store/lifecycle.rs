//! The delivery state machine, written once for every backend.
//!
//! A reply's life: `recorded` (nothing to send) or `queued` with a delivery job;
//! then `delivered` when Chatwoot answered with the message, `confirmed` when a
//! Chatwoot webhook showed it in the conversation, or `dead` when goldrelay gave
//! up. Every rule about which change is allowed lives here; a backend only
//! offers the statements of [`Tx`], which these functions run inside one
//! transaction the backend opened and commits.

use super::{ChannelRead, EventOutcome, Ingested, Outcome, ReplyRecord, Requeued, StoreError};
use crate::domain::{
    channel_status_may_change, ChatwootEvent, Effect, EventMessage, GoldReply, Status,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A reply row as the rules need it: its public record and what only the rules read.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub record: ReplyRecord,
    pub fingerprint: String,
    /// An attempt that may have created the message went before it died.
    pub uncertain: bool,
    /// When an event last said its channel status needs reading from Chatwoot.
    pub stale_since: Option<DateTime<Utc>>,
}

/// Columns of a reply to overwrite; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplyChange {
    pub status: Option<Status>,
    pub last_error: Option<Option<String>>,
    pub next_attempt_at: Option<Option<DateTime<Utc>>>,
    pub chatwoot_message_id: Option<i64>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub channel_status: Option<Option<String>>,
    pub channel_error: Option<Option<String>>,
    /// Starts a fresh attempt budget: `attempts = 0`, `requeued_at = now`.
    pub requeued_at: Option<DateTime<Utc>>,
    pub uncertain: Option<bool>,
    pub channel_status_stale_at: Option<Option<DateTime<Utc>>>,
    /// Sets the attempt count (an attempt that sent nothing gives its count back).
    pub attempts: Option<i64>,
}

/// A value to write into one column, for the backend to bind in its own types.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Time(Option<DateTime<Utc>>),
    Bool(bool),
}

impl ReplyChange {
    /// `(column, value)` for every column this change writes.
    pub fn assignments(&self) -> Vec<(&'static str, Value)> {
        let mut set = Vec::new();
        if let Some(status) = self.status {
            set.push(("status", Value::Text(Some(status.as_str().to_owned()))));
        }
        if let Some(error) = &self.last_error {
            set.push(("last_error", Value::Text(error.as_deref().map(storable))));
        }
        if let Some(at) = self.next_attempt_at {
            set.push(("next_attempt_at", Value::Time(at)));
        }
        if let Some(id) = self.chatwoot_message_id {
            set.push(("chatwoot_message_id", Value::Int(Some(id))));
        }
        if let Some(at) = self.delivered_at {
            set.push(("delivered_at", Value::Time(Some(at))));
        }
        if let Some(at) = self.confirmed_at {
            set.push(("confirmed_at", Value::Time(Some(at))));
        }
        if let Some(status) = &self.channel_status {
            set.push((
                "channel_status",
                Value::Text(status.as_deref().map(storable)),
            ));
        }
        if let Some(error) = &self.channel_error {
            set.push(("channel_error", Value::Text(error.as_deref().map(storable))));
        }
        if let Some(at) = self.requeued_at {
            set.push(("attempts", Value::Int(Some(0))));
            set.push(("requeued_at", Value::Time(Some(at))));
        }
        if let Some(uncertain) = self.uncertain {
            set.push(("uncertain", Value::Bool(uncertain)));
        }
        if let Some(at) = self.channel_status_stale_at {
            set.push(("channel_status_stale_at", Value::Time(at)));
        }
        if let Some(attempts) = self.attempts {
            set.push(("attempts", Value::Int(Some(attempts))));
        }
        set
    }
}

/// Text that came from outside (Chatwoot's error messages, webhook fields)
/// made storable: PostgreSQL refuses NUL in text, and a record that cannot be
/// written would leave its job to be retried forever.
pub(crate) fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// A JSON document made storable: every NUL inside a string (written
/// `\u0000`) replaced, so PostgreSQL's jsonb takes it.
pub(crate) fn storable_json(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.contains("\\u0000") && !json.contains('\0') {
        return std::borrow::Cow::Borrowed(json);
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut value) => {
            clean_strings(&mut value);
            std::borrow::Cow::Owned(value.to_string())
        }
        Err(_) => std::borrow::Cow::Owned(storable(json)),
    }
}

fn clean_strings(value: &mut serde_json::Value) {
    use serde_json::Value as Json;
    match value {
        Json::String(s) if s.contains('\0') => *s = storable(s),
        Json::Array(items) => items.iter_mut().for_each(clean_strings),
        Json::Object(map) => {
            let dirty: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
            for key in dirty {
                if let Some(v) = map.remove(&key) {
                    map.insert(storable(&key), v);
                }
            }
            map.values_mut().for_each(clean_strings);
        }
        _ => {}
    }
}

/// A reply serialised for insertion, before it reaches a transaction (on
/// SQLite, the single writer every request waits for).
#[derive(Debug, Clone)]
pub(crate) struct NewReply {
    pub reply: GoldReply,
    pub fingerprint: String,
    pub draft: Option<String>,
    pub tags: String,
    pub metadata: Option<String>,
    /// The ingest span's W3C traceparent, when traces are exported.
    pub trace_context: Option<String>,
    /// The posted context as JSON; `None`: a capture is due.
    pub context: Option<String>,
}

impl NewReply {
    pub fn new(reply: &GoldReply) -> Self {
        Self {
            fingerprint: reply.fingerprint(),
            draft: reply.draft().as_ref().map(|v| v.to_string()),
            tags: serde_json::Value::from(reply.tags().to_vec()).to_string(),
            metadata: reply.metadata().as_ref().map(|v| v.to_string()),
            // Read from the calling request's span, so no signature changes.
            trace_context: crate::telemetry::traceparent(),
            context: reply.context().and_then(|t| serde_json::to_string(t).ok()),
            reply: reply.clone(),
        }
    }

    /// `queued` when the reply is to be sent, `recorded` when it is only kept.
    pub fn initial_status(&self) -> Status {
        if self.reply.action().sends() {
            Status::Queued
        } else {
            Status::Recorded
        }
    }
}

/// The statements a backend offers the rules, all inside one transaction.
#[async_trait]
pub(crate) trait Tx: Send {
    /// One reply; `lock` keeps other transactions off it until commit.
    async fn reply(&mut self, reply_id: &str, lock: bool) -> Result<Option<Stored>, StoreError>;
    /// The reply whose known Chatwoot message is `message_id`, if any.
    async fn reply_by_message(
        &mut self,
        message_id: i64,
        lock: bool,
    ) -> Result<Option<Stored>, StoreError>;
    /// Inserts a reply unless its id is taken; whether it was inserted.
    async fn insert_reply(
        &mut self,
        new: &NewReply,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    async fn update_reply(
        &mut self,
        reply_id: &str,
        change: &ReplyChange,
    ) -> Result<(), StoreError>;
    /// Adds a job at the back of its conversation's line (the head if the
    /// line was empty); `maybe_sent` makes its first attempt look first.
    async fn enqueue(
        &mut self,
        reply_id: &str,
        account_id: i64,
        conversation_id: i64,
        due: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<(), StoreError>;
    /// Removes a reply's job (only while `owner` leases it, when given) and
    /// makes the next job of its conversation the head; whether one was removed.
    async fn remove_job(&mut self, reply_id: &str, owner: Option<&str>)
        -> Result<bool, StoreError>;
    /// Hands a job leased by `owner` back, due again at `at`; whether `owner` held it.
    async fn reschedule_job(
        &mut self,
        reply_id: &str,
        owner: &str,
        at: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<bool, StoreError>;
    /// Stores an event unless its delivery or dedupe key was seen; whether it was new.
    async fn insert_event(
        &mut self,
        event: &ChatwootEvent,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

/// Times are stored with millisecond precision; rules answer with what a read returns.
pub(crate) fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// The record of a reply just inserted, without reading it back.
pub(crate) fn created_record(new: &NewReply, now: DateTime<Utc>) -> ReplyRecord {
    let at = stored_time(now);
    let reply = &new.reply;
    ReplyRecord {
        reply_id: reply.reply_id().clone(),
        account_id: reply.account_id(),
        conversation_id: reply.conversation_id(),
        action: reply.action(),
        status: new.initial_status(),
        attempts: 0,
        last_error: None,
        chatwoot_message_id: None,
        received_at: at,
        next_attempt_at: reply.action().sends().then_some(at),
        delivered_at: None,
        confirmed_at: None,
        channel_status: None,
        channel_error: None,
        context: super::ContextState {
            source: new.context.as_ref().map(|_| "posted".to_owned()),
            next_capture_at: new.context.is_none().then_some(at),
            ..Default::default()
        },
    }
}

/// A posted reply whose id was taken: the same reply again, or a conflict.
pub(crate) fn existing(stored: Stored, new: &NewReply) -> Ingested {
    if stored.fingerprint == new.fingerprint {
        Ingested::Existing(stored.record)
    } else {
        Ingested::Conflict(stored.record)
    }
}

/// Stores a posted reply and, when it is to be sent, its delivery job.
pub(crate) async fn ingest(
    tx: &mut dyn Tx,
    new: &NewReply,
    now: DateTime<Utc>,
) -> Result<Ingested, StoreError> {
    let now = stored_time(now);
    let reply = &new.reply;
    let id = reply.reply_id().as_str();
    if !tx.insert_reply(new, now).await? {
        let stored = tx.reply(id, false).await?.ok_or(StoreError::Unavailable)?;
        return Ok(existing(stored, new));
    }
    if reply.action().sends() {
        tx.enqueue(id, reply.account_id(), reply.conversation_id(), now, false)
            .await?;
    }
    Ok(Ingested::Created(created_record(new, now)))
}

/// Records how a delivery attempt by `owner` ended.
pub(crate) async fn finish(
    tx: &mut dyn Tx,
    reply_id: &str,
    owner: &str,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    match outcome {
        // Recorded whoever holds the lease: the message exists either way, and
        // a lost "delivered" would send it twice.
        Outcome::Delivered { message_id } => {
            tx.remove_job(reply_id, None).await?;
            let Some(stored) = tx.reply(reply_id, true).await? else {
                return Ok(());
            };
            let record = stored.record;
            let change = ReplyChange {
                status: (record.status != Status::Confirmed).then_some(Status::Delivered),
                chatwoot_message_id: Some(message_id),
                delivered_at: Some(record.delivered_at.unwrap_or(now)),
                last_error: Some(None),
                next_attempt_at: Some(None),
                ..ReplyChange::default()
            };
            tx.update_reply(reply_id, &change).await
        }
        Outcome::Retry {
            at,
            error,
            maybe_sent,
        } => {
            if !tx.reschedule_job(reply_id, owner, at, maybe_sent).await? {
                return Ok(());
            }
            let change = ReplyChange {
                last_error: Some(Some(error)),
                next_attempt_at: Some(Some(at)),
                ..ReplyChange::default()
            };
            tx.update_reply(reply_id, &change).await
        }
        Outcome::Unsent {
            at,
            maybe_sent,
            attempts,
            why,
        } => {
            if !tx.reschedule_job(reply_id, owner, at, maybe_sent).await? {
                return Ok(());
            }
            let change = ReplyChange {
                last_error: why.map(Some),
                next_attempt_at: Some(Some(at)),
                attempts: Some(attempts),
                ..ReplyChange::default()
            };
            tx.update_reply(reply_id, &change).await
        }
        Outcome::Dead { error, maybe_sent } => {
            if !tx.remove_job(reply_id, Some(owner)).await? {
                return Ok(());
            }
            let queued = tx
                .reply(reply_id, true)
                .await?
                .is_some_and(|s| s.record.status == Status::Queued);
            if !queued {
                return Ok(());
            }
            // Sticky: a forced retry that dies for sure does not make an
            // earlier maybe-sent attempt certain.
            let change = ReplyChange {
                status: Some(Status::Dead),
                last_error: Some(Some(error)),
                next_attempt_at: Some(None),
                uncertain: maybe_sent.then_some(true),
                ..ReplyChange::default()
            };
            tx.update_reply(reply_id, &change).await
        }
    }
}

/// Puts a `dead` reply back at the end of its conversation's line with a fresh
/// attempt budget. If an earlier attempt may have created the message, the
/// first new attempt looks for it before sending, unless the operator `force`s
/// a send.
pub(crate) async fn requeue(
    tx: &mut dyn Tx,
    reply_id: &str,
    force: bool,
    now: DateTime<Utc>,
) -> Result<Requeued, StoreError> {
    let now = stored_time(now);
    let Some(stored) = tx.reply(reply_id, true).await? else {
        return Ok(Requeued::NotFound);
    };
    let record = stored.record;
    if record.status != Status::Dead {
        return Ok(Requeued::NotDead(record));
    }
    let change = ReplyChange {
        status: Some(Status::Queued),
        requeued_at: Some(now),
        next_attempt_at: Some(Some(now)),
        ..ReplyChange::default()
    };
    tx.update_reply(reply_id, &change).await?;
    let look_first = stored.uncertain && !force;
    tx.enqueue(
        reply_id,
        record.account_id,
        record.conversation_id,
        now,
        look_first,
    )
    .await?;
    let stored = tx
        .reply(reply_id, false)
        .await?
        .ok_or(StoreError::Unavailable)?;
    Ok(Requeued::Queued {
        record: stored.record,
        lookup_first: look_first,
    })
}

/// Stores a verified Chatwoot event and applies its effect, unless it was
/// seen. An event changes a reply only when it is about that reply's message.
pub(crate) async fn record_event(
    tx: &mut dyn Tx,
    event: &ChatwootEvent,
    payload: &str,
    now: DateTime<Utc>,
) -> Result<EventOutcome, StoreError> {
    // Chatwoot's texts may hold NUL, which PostgreSQL refuses in text and
    // jsonb; Chatwoot does not retry a webhook, so a refusal would lose it.
    let payload = storable_json(payload);
    if !tx.insert_event(event, &payload, now).await? {
        return Ok(EventOutcome::Duplicate);
    }
    let now = stored_time(now);
    match &event.effect {
        Some(Effect::Confirm { reply_id, message }) => {
            apply(tx, Some(reply_id), message, None, now).await
        }
        Some(Effect::ChannelStatus {
            reply_id,
            message,
            status,
            error,
        }) => {
            let report = Report { status, error };
            apply(tx, reply_id.as_deref(), message, Some(report), now).await
        }
        None => Ok(EventOutcome::Processed),
    }
}

/// What a `message_updated` says about the channel.
struct Report<'a> {
    status: &'a Option<String>,
    error: &'a Option<String>,
}

/// Applies an event to the reply it concerns: the one its marker names, or
/// without a marker the one whose message it is. An event naming a reply it
/// does not belong to changes nothing and is logged, once.
async fn apply(
    tx: &mut dyn Tx,
    reply_id: Option<&str>,
    message: &EventMessage,
    report: Option<Report<'_>>,
    now: DateTime<Utc>,
) -> Result<EventOutcome, StoreError> {
    // Read unlocked: the job is removed before the reply is locked (see `confirm`).
    let stored = match reply_id {
        Some(id) => tx.reply(id, false).await?,
        None => tx.reply_by_message(message.id, false).await?,
    };
    let Some(stored) = stored else {
        return Ok(EventOutcome::Processed);
    };
    let record = &stored.record;
    if let Some(field) = mismatch(record, message) {
        tracing::warn!(
            reply_id = %record.reply_id,
            message_id = message.id,
            mismatched = field,
            event_account_id = message.account_id,
            event_conversation_id = message.conversation_id,
            "a Chatwoot event names a gold reply but is not about its message; ignored"
        );
        return Ok(EventOutcome::Mismatch);
    }
    confirm(tx, record.reply_id.as_str(), message.id, now).await?;
    if let Some(report) = report {
        channel_status(tx, record.reply_id.as_str(), message.id, report, now).await?;
    }
    Ok(EventOutcome::Processed)
}

/// Which fact of `message` shows it is not `record`'s message, if one does.
/// Goldrelay sends only outgoing messages, to the reply's own conversation.
fn mismatch(record: &ReplyRecord, message: &EventMessage) -> Option<&'static str> {
    if message.account_id != Some(record.account_id) {
        Some("account")
    } else if message.conversation_id != Some(record.conversation_id) {
        Some("conversation")
    } else if !message.outgoing {
        Some("direction")
    } else if record
        .chatwoot_message_id
        .is_some_and(|id| id != message.id)
    {
        Some("message id")
    } else {
        None
    }
}

/// The message is in the conversation: the reply is `confirmed` and its job
/// goes, so it is never sent again even if the API's answer was lost. The job
/// is removed before the reply is touched: locks are taken job first, then
/// reply, as claims and outcomes take them, so a confirmation racing a
/// delivery cannot deadlock.
async fn confirm(
    tx: &mut dyn Tx,
    reply_id: &str,
    message_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.remove_job(reply_id, None).await?;
    let Some(stored) = tx.reply(reply_id, true).await? else {
        return Ok(());
    };
    let record = stored.record;
    let other_message = record
        .chatwoot_message_id
        .is_some_and(|id| id != message_id);
    if other_message
        || !matches!(
            record.status,
            Status::Queued | Status::Delivered | Status::Dead
        )
    {
        return Ok(());
    }
    let change = ReplyChange {
        status: Some(Status::Confirmed),
        confirmed_at: Some(now),
        chatwoot_message_id: Some(record.chatwoot_message_id.unwrap_or(message_id)),
        delivered_at: Some(record.delivered_at.unwrap_or(now)),
        last_error: Some(None),
        next_attempt_at: Some(None),
        ..ReplyChange::default()
    };
    tx.update_reply(reply_id, &change).await
}

/// The customer's channel reported on the reply's message `message_id`. A
/// status moves only as Chatwoot lets it ([`channel_status_may_change`]); an
/// event that does not show the status marks it for reading from Chatwoot
/// instead. A reply that never had a message (`recorded`) has no channel.
async fn channel_status(
    tx: &mut dyn Tx,
    reply_id: &str,
    message_id: i64,
    report: Report<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(stored) = tx.reply(reply_id, true).await? else {
        return Ok(());
    };
    if stored.record.chatwoot_message_id != Some(message_id) {
        return Ok(());
    }
    let change = match report.status.as_deref() {
        None => ReplyChange {
            channel_status_stale_at: Some(Some(now)),
            ..ReplyChange::default()
        },
        Some(status) => {
            let current = stored.record.channel_status.as_deref();
            if !channel_status_may_change(current, status) {
                return Ok(());
            }
            // An event is a hint: late, replayed or out of order, it may not
            // be what Chatwoot holds now, so the status is read back soon.
            ReplyChange {
                channel_status_stale_at: Some(Some(now)),
                ..channel_change(status, report.error.as_deref())
            }
        }
    };
    tx.update_reply(reply_id, &change).await
}

/// Writes a channel status; Chatwoot keeps an error only on a failed message
/// (`app/services/messages/status_update_service.rb`).
fn channel_change(status: &str, error: Option<&str>) -> ReplyChange {
    let error = (status == "failed")
        .then(|| error.map(str::to_owned))
        .flatten();
    ReplyChange {
        channel_status: Some(Some(status.to_owned())),
        channel_error: Some(error),
        ..ReplyChange::default()
    }
}

/// Records a channel status read from Chatwoot, which is the truth as of the
/// read, and when to read it next. The reply stays marked for reading when an
/// event marked it again after `read.since`: that change may have come after
/// the read.
pub(crate) async fn record_channel_status(
    tx: &mut dyn Tx,
    reply_id: &str,
    read: &ChannelRead<'_>,
) -> Result<(), StoreError> {
    let Some(stored) = tx.reply(reply_id, true).await? else {
        return Ok(());
    };
    // No status: the read failed, or Chatwoot no longer has the message.
    let mut change = read
        .status
        .map_or_else(ReplyChange::default, |s| channel_change(s, read.error));
    if stored.stale_since == read.since.map(stored_time) {
        change.channel_status_stale_at = Some(read.next.map(stored_time));
    }
    tx.update_reply(reply_id, &change).await
}
