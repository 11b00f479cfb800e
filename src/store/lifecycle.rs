//! The delivery state machine, written once for every backend.
//!
//! A reply's life: `recorded` (nothing to send) or `queued` with a delivery job;
//! then `delivered` when Chatwoot answered with the message, `confirmed` when a
//! Chatwoot webhook showed it in the conversation, or `dead` when goldrelay gave
//! up. Every rule about which change is allowed lives here; a backend only
//! offers the statements of [`Tx`], which these functions run inside one
//! transaction the backend opened and commits.

mod events;

pub(crate) use events::{record_channel_status, record_event};

use super::{Ingested, Job, Outcome, ReplyRecord, Requeued, StoreError};
use crate::domain::{ChannelStatus, ChatwootEvent, GoldReply, ReplyId, Status};
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
    pub channel_status: Option<Option<ChannelStatus>>,
    pub channel_error: Option<Option<String>>,
    /// Starts a fresh attempt budget: `attempts = 0`, `requeued_at = now`.
    pub requeued_at: Option<DateTime<Utc>>,
    pub uncertain: Option<bool>,
    pub channel_status_stale_at: Option<Option<DateTime<Utc>>>,
    /// Sets the attempt count (an attempt that sent nothing gives its count back).
    pub attempts: Option<i64>,
    /// Makes the context capture due at this time.
    pub context_due_at: Option<DateTime<Utc>>,
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
        if let Some(status) = self.channel_status {
            let name = status.map(|s| s.as_str().to_owned());
            set.push(("channel_status", Value::Text(name)));
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
        if let Some(at) = self.context_due_at {
            set.push(("context_due_at", Value::Time(Some(at))));
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
            draft: reply.draft().as_ref().map(std::string::ToString::to_string),
            tags: serde_json::Value::from(reply.tags().to_vec()).to_string(),
            metadata: reply
                .metadata()
                .as_ref()
                .map(std::string::ToString::to_string),
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

    /// When its context capture is due, stored `now`: at once for a reply
    /// posted without context that is only kept; for one to be sent, not
    /// yet: its capture comes due when its delivery ends ([`capture_due`]),
    /// so a backlog of queued replies is no load on the capture index.
    pub fn capture_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.context.is_none() && !self.reply.action().sends()).then_some(now)
    }
}

/// When a reply's delivery ended (delivered, confirmed or dead) at `now`: its
/// capture comes due then, if it was posted without context and no capture
/// has been tried or scheduled. Replies stored before captures existed
/// qualify too, the first time their delivery ends.
pub(crate) fn capture_due(
    context: &super::ContextState,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let untouched = context.source.is_none()
        && context.capture_attempts == 0
        && context.next_capture_at.is_none();
    untouched.then_some(now)
}

/// The statements a backend offers the rules, all inside one transaction.
#[async_trait]
pub(crate) trait Tx: Send {
    /// One reply; `lock` keeps other transactions off it until commit.
    async fn reply(&mut self, reply_id: &ReplyId, lock: bool)
        -> Result<Option<Stored>, StoreError>;
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
        reply_id: &ReplyId,
        change: &ReplyChange,
    ) -> Result<(), StoreError>;
    /// Adds a job at the back of its conversation's line (the head if the
    /// line was empty); `maybe_sent` makes its first attempt look first.
    async fn enqueue(
        &mut self,
        reply_id: &ReplyId,
        account_id: i64,
        conversation_id: i64,
        due: DateTime<Utc>,
        maybe_sent: bool,
    ) -> Result<(), StoreError>;
    /// Removes a reply's job (only while `owner` leases it, when given); the
    /// line `(account_id, conversation_id)` it was in, if one was removed.
    async fn remove_job(
        &mut self,
        reply_id: &ReplyId,
        owner: Option<&str>,
    ) -> Result<Option<(i64, i64)>, StoreError>;
    /// Makes the oldest job left in the line `(account_id, conversation_id)`
    /// its head.
    async fn promote_head(&mut self, line: (i64, i64)) -> Result<(), StoreError>;
    /// Up to `limit` jobs at the head of their line that are due at `now` and
    /// not leased, oldest due first (then oldest job), each with the attempt
    /// count its reply has so far and whether the job was maybe sent; kept
    /// from other claimants until commit (on PostgreSQL, one held by another
    /// claimant is skipped).
    async fn due_heads(&mut self, now: DateTime<Utc>, limit: usize)
        -> Result<Vec<Job>, StoreError>;
    /// Counts one more attempt on a reply; the count now.
    async fn count_attempt(&mut self, reply_id: &ReplyId) -> Result<i64, StoreError>;
    /// Leases a reply's job to `owner` until `until`, marks it maybe sent, and
    /// makes it due again at `due_again`.
    async fn lease_job(
        &mut self,
        reply_id: &ReplyId,
        owner: &str,
        until: DateTime<Utc>,
        due_again: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Hands a job leased by `owner` back, due again at `at`; whether `owner` held it.
    async fn reschedule_job(
        &mut self,
        reply_id: &ReplyId,
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
            next_capture_at: new.capture_due(at),
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
    let id = reply.reply_id();
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

/// Leases up to `limit` due heads to `owner`, oldest due first, and counts
/// their attempts. Each is marked maybe sent and due again only after its
/// lease and `look_after`, before its attempt starts: if this process dies
/// mid-request, the next claimant waits, then looks before sending again.
pub(crate) async fn claim(
    tx: &mut dyn Tx,
    owner: &str,
    now: DateTime<Utc>,
    (lease, look_after): (std::time::Duration, std::time::Duration),
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let (until, due_again) = lease_times(now, lease, look_after);
    let mut jobs = tx.due_heads(now, limit).await?;
    for job in &mut jobs {
        tx.lease_job(&job.reply_id, owner, until, due_again).await?;
        // Counted in place, not written from the count read above.
        job.attempt = tx.count_attempt(&job.reply_id).await?;
    }
    Ok(jobs)
}

/// When a lease taken `now` ends, and when its job is due again after a
/// further `look_after`; a time past the calendar's end saturates there (a
/// lease never ends sooner for being absurdly long).
pub(crate) fn lease_times(
    now: DateTime<Utc>,
    lease: std::time::Duration,
    look_after: std::time::Duration,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let after = |at: DateTime<Utc>, wait| {
        chrono::Duration::from_std(wait)
            .ok()
            .and_then(|wait| at.checked_add_signed(wait))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    let until = after(now, lease);
    (until, after(until, look_after))
}

/// Removes a reply's job (only while `owner` leases it, when given); the next
/// job of its conversation becomes the head. Whether one was removed.
pub(crate) async fn remove_job(
    tx: &mut dyn Tx,
    reply_id: &ReplyId,
    owner: Option<&str>,
) -> Result<bool, StoreError> {
    let Some(line) = tx.remove_job(reply_id, owner).await? else {
        return Ok(false);
    };
    tx.promote_head(line).await?;
    Ok(true)
}

/// Records how a delivery attempt by `owner` ended.
pub(crate) async fn finish(
    tx: &mut dyn Tx,
    reply_id: &ReplyId,
    owner: &str,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    match outcome {
        Outcome::Delivered { message_id } => delivered(tx, reply_id, message_id, now).await,
        Outcome::Retry {
            at,
            error,
            maybe_sent,
        } => {
            let change = ReplyChange {
                last_error: Some(Some(error)),
                next_attempt_at: Some(Some(at)),
                ..ReplyChange::default()
            };
            rescheduled(tx, reply_id, owner, (at, maybe_sent), &change).await
        }
        Outcome::Unsent {
            at,
            maybe_sent,
            attempts,
            why,
        } => {
            let change = ReplyChange {
                last_error: why.map(Some),
                next_attempt_at: Some(Some(at)),
                attempts: Some(attempts),
                ..ReplyChange::default()
            };
            rescheduled(tx, reply_id, owner, (at, maybe_sent), &change).await
        }
        Outcome::Dead { error, maybe_sent } => {
            dead(tx, reply_id, owner, (error, maybe_sent), now).await
        }
    }
}

/// `Delivered`, recorded whoever holds the lease: the message exists either
/// way, and a lost "delivered" would send it twice.
async fn delivered(
    tx: &mut dyn Tx,
    reply_id: &ReplyId,
    message_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    remove_job(tx, reply_id, None).await?;
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
        context_due_at: capture_due(&record.context, now),
        ..ReplyChange::default()
    };
    tx.update_reply(reply_id, &change).await
}

/// `Retry` or `Unsent`: the job comes back `at` (with `maybe_sent`) and the
/// reply takes `change`, only while `owner` still holds the lease.
async fn rescheduled(
    tx: &mut dyn Tx,
    reply_id: &ReplyId,
    owner: &str,
    (at, maybe_sent): (DateTime<Utc>, bool),
    change: &ReplyChange,
) -> Result<(), StoreError> {
    if !tx.reschedule_job(reply_id, owner, at, maybe_sent).await? {
        return Ok(());
    }
    tx.update_reply(reply_id, change).await
}

/// `Dead`: goldrelay gives up, only while `owner` still holds the lease, and
/// only a reply still queued becomes dead.
async fn dead(
    tx: &mut dyn Tx,
    reply_id: &ReplyId,
    owner: &str,
    (error, maybe_sent): (String, bool),
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if !remove_job(tx, reply_id, Some(owner)).await? {
        return Ok(());
    }
    let Some(stored) = tx.reply(reply_id, true).await? else {
        return Ok(());
    };
    if stored.record.status != Status::Queued {
        return Ok(());
    }
    // Sticky: a forced retry that dies for sure does not make an
    // earlier maybe-sent attempt certain.
    let change = ReplyChange {
        status: Some(Status::Dead),
        last_error: Some(Some(error)),
        next_attempt_at: Some(None),
        uncertain: maybe_sent.then_some(true),
        context_due_at: capture_due(&stored.record.context, now),
        ..ReplyChange::default()
    };
    tx.update_reply(reply_id, &change).await
}

/// Puts a `dead` reply back at the end of its conversation's line with a fresh
/// attempt budget. If an earlier attempt may have created the message, the
/// first new attempt looks for it before sending, unless the operator `force`s
/// a send; and it is due only `look_after` from `now`, because the reply may
/// have died moments after its last create left and the lookup must give
/// that create time to commit, as every other lookup does.
pub(crate) async fn requeue(
    tx: &mut dyn Tx,
    reply_id: &ReplyId,
    force: bool,
    (now, look_after): (DateTime<Utc>, std::time::Duration),
) -> Result<Requeued, StoreError> {
    let now = stored_time(now);
    let Some(stored) = tx.reply(reply_id, true).await? else {
        return Ok(Requeued::NotFound);
    };
    let record = stored.record;
    if record.status != Status::Dead {
        return Ok(Requeued::NotDead(record));
    }
    let look_first = stored.uncertain && !force;
    let due = if look_first {
        stored_time(now + chrono::Duration::from_std(look_after).unwrap_or(chrono::Duration::MAX))
    } else {
        now
    };
    let change = ReplyChange {
        status: Some(Status::Queued),
        requeued_at: Some(now),
        next_attempt_at: Some(Some(due)),
        ..ReplyChange::default()
    };
    tx.update_reply(reply_id, &change).await?;
    tx.enqueue(
        reply_id,
        record.account_id,
        record.conversation_id,
        due,
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

#[cfg(test)]
mod tests {
    use super::lease_times;
    use chrono::{DateTime, TimeZone, Utc};
    use std::time::Duration;

    #[test]
    fn a_lease_ends_after_its_length_and_saturates_rather_than_ending_at_once() {
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let (until, again) = lease_times(now, Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(until, now + chrono::Duration::seconds(30));
        assert_eq!(again, now + chrono::Duration::seconds(35));
        let forever = Duration::from_secs(u64::MAX);
        assert_eq!(
            lease_times(now, forever, forever),
            (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC)
        );
        let (until, again) = lease_times(now, Duration::from_secs(30), forever);
        assert_eq!(
            (until, again),
            (
                now + chrono::Duration::seconds(30),
                DateTime::<Utc>::MAX_UTC
            )
        );
    }
}
