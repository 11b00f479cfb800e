//! Chatwoot's word on a reply: a webhook event (stored once, then applied
//! when it is about the reply's own message) and a channel status read back.

use super::{capture_due, remove_job, storable_json, stored_time, ReplyChange, Tx};
use crate::domain::{ChannelStatus, ChatwootEvent, Effect, EventMessage, ReplyId, Status};
use crate::store::{ChannelRead, EventOutcome, ReplyRecord, StoreError};
use chrono::{DateTime, Utc};

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
    match event.effect() {
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
            apply(tx, reply_id.as_ref(), message, Some(report), now).await
        }
        None => Ok(EventOutcome::Processed),
    }
}

/// What a `message_updated` says about the channel.
struct Report<'a> {
    status: &'a Option<ChannelStatus>,
    error: &'a Option<String>,
}

/// Applies an event to the reply it concerns: the one its marker names, or
/// without a marker the one whose message it is. An event naming a reply it
/// does not belong to changes nothing and is logged, once.
async fn apply(
    tx: &mut dyn Tx,
    reply_id: Option<&ReplyId>,
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
    confirm(tx, &record.reply_id, message.id, now).await?;
    if let Some(report) = report {
        channel_status(tx, &record.reply_id, message.id, report, now).await?;
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
    reply_id: &ReplyId,
    message_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    remove_job(tx, reply_id, None).await?;
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
        context_due_at: capture_due(&record.context, now),
        ..ReplyChange::default()
    };
    tx.update_reply(reply_id, &change).await
}

/// The customer's channel reported on the reply's message `message_id`. A
/// status moves only as Chatwoot lets it ([`ChannelStatus::may_follow`]); an
/// event that does not show the status marks it for reading from Chatwoot
/// instead. A reply that never had a message (`recorded`) has no channel.
async fn channel_status(
    tx: &mut dyn Tx,
    reply_id: &ReplyId,
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
    let change = match *report.status {
        None => ReplyChange {
            channel_status_stale_at: Some(Some(now)),
            ..ReplyChange::default()
        },
        Some(status) => {
            if !status.may_follow(stored.record.channel_status) {
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
fn channel_change(status: ChannelStatus, error: Option<&str>) -> ReplyChange {
    let error = (status == ChannelStatus::Failed)
        .then(|| error.map(str::to_owned))
        .flatten();
    ReplyChange {
        channel_status: Some(Some(status)),
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
    reply_id: &ReplyId,
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
