//! What a Chatwoot webhook event means for goldrelay.
//!
//! Facts from Chatwoot v4.13.0 that shape this reading (see `docs/chatwoot.md`):
//! - `message_created` and `message_updated` bodies are `message.webhook_data.merge(event:)`
//!   (`app/models/message.rb`, `webhook_data`): the message sits at the top level (`id`,
//!   `content`, `message_type` as a string, `account`, `conversation`, …) and
//!   `content_attributes` is echoed back, so the `gold_reply_id` goldrelay sent comes back
//!   with it. `webhook_data` has no top-level `status` key.
//! - Any message can carry a `gold_reply_id` (an agent can type one, another relay can
//!   send one), so a marker alone proves nothing: the store checks the account, the
//!   conversation (`conversation.id` is the per-account display id,
//!   `app/presenters/conversations/event_data_presenter.rb`) and the direction too.
//! - The `conversation` inside the body is `Conversations::EventDataPresenter#webhook_data`;
//!   its `messages` array, built by `push_messages`, holds only the conversation's latest
//!   message that is neither private nor an activity, each element with its `id` and `status`.
//! - An agent's retry (`MessagesController#retry`) sets `content_attributes` to `{}`: the
//!   marker is gone, so an update is also recognised by the message id alone.
//!
//! So a message's channel status is read from the top level when a later Chatwoot sends
//! it there, otherwise from `conversation.messages[]` when the message is listed there,
//! and otherwise it is unknown: the store then notes that it must be read from Chatwoot.

use super::{ChannelStatus, ReplyId};
use serde_json::Value;

/// One verified event, reduced to what goldrelay stores and acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatwootEvent {
    /// `X-Chatwoot-Delivery`: the same for Chatwoot's own retries of one delivery.
    delivery_id: Option<String>,
    /// The `event` field, e.g. `message_created`.
    kind: String,
    /// Equal for two deliveries of the same event (Chatwoot sometimes sends one
    /// event twice with different delivery ids).
    dedupe_key: String,
    /// The message's id, for message events.
    message_id: Option<i64>,
    /// The gold reply this event names in its marker, when it names one that
    /// could be a reply id (a marker anyone typed that cannot be names none).
    reply_id: Option<ReplyId>,
    /// What the event may change, once the store has checked it is about our message.
    effect: Option<Effect>,
    /// The message's sender (`sender.type`, `sender.id`), for message events.
    sender: Option<(String, i64)>,
}

/// goldrelay's own Chatwoot user, as far as the process knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnUser {
    /// Not read yet (`GET /api/v1/profile`).
    NotYetKnown,
    /// The token cannot read its profile (an agent bot).
    Unknowable,
    /// This user id.
    Is(i64),
}

/// What [`ChatwootEvent::keep_only_ours`] made of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Nothing dropped: not marked, or goldrelay's own message.
    Ours,
    /// Dropped: another sender's message carrying a marker.
    Foreign,
    /// Dropped: goldrelay's own user is not known yet, so it cannot be told.
    Unverified,
}

/// The message an event is about, as far as the store must check it against a
/// reply before the event may change that reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// Chatwoot's message id.
    pub id: i64,
    /// `account.id`; `None` when the body lacks it (then it matches no reply).
    pub account_id: Option<i64>,
    /// `conversation.id`, the display id goldrelay posts to.
    pub conversation_id: Option<i64>,
    /// `message_type` is `"outgoing"`: goldrelay only ever sends outgoing messages.
    pub outgoing: bool,
}

/// What an event may change on a gold reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The message named a reply when it was created: if it is that reply's
    /// message, the reply is `confirmed`.
    Confirm {
        reply_id: ReplyId,
        message: EventMessage,
    },
    /// The message was updated. It concerns the reply its marker names, or,
    /// without a marker, the reply whose known message id it carries. `status`
    /// is `None` when the event does not show it.
    ChannelStatus {
        reply_id: Option<ReplyId>,
        message: EventMessage,
        status: Option<ChannelStatus>,
        error: Option<String>,
    },
}

impl ChatwootEvent {
    /// Reads a parsed body. `raw_digest` identifies bodies no finer key covers.
    pub fn parse(delivery_id: Option<String>, body: &Value, raw_digest: &str) -> Self {
        let kind = body["event"].as_str().unwrap_or("unknown").to_owned();
        let message_id = message_event(&kind).then(|| body["id"].as_i64()).flatten();
        let reply_id = body
            .pointer("/content_attributes/gold_reply_id")
            .and_then(Value::as_str)
            .and_then(|marker| ReplyId::parse(marker).ok());
        let dedupe_key = match (kind.as_str(), message_id) {
            ("message_created", Some(id)) => format!("message_created:{id}"),
            // One message is updated many times, to the same status more than
            // once (failed, retried, failed again): only a byte-identical body
            // is the same update.
            ("message_updated", Some(id)) => format!("message_updated:{id}:{raw_digest}"),
            _ => format!("{kind}:{raw_digest}"),
        };
        let effect = message_id.and_then(|id| effect(&kind, body, id, reply_id.clone()));
        let sender = body["sender"]["type"]
            .as_str()
            .zip(body["sender"]["id"].as_i64())
            .map(|(kind, id)| (kind.to_owned(), id));
        Self {
            delivery_id,
            kind,
            dedupe_key,
            message_id,
            reply_id,
            effect,
            sender,
        }
    }

    /// `X-Chatwoot-Delivery`, when Chatwoot sent one.
    pub fn delivery_id(&self) -> Option<&str> {
        self.delivery_id.as_deref()
    }

    /// The `event` field, e.g. `message_created`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The key two deliveries of one event share.
    pub fn dedupe_key(&self) -> &str {
        &self.dedupe_key
    }

    /// The message's id, for message events.
    pub fn message_id(&self) -> Option<i64> {
        self.message_id
    }

    /// The reply the event's marker names, if it names one.
    pub fn reply_id(&self) -> Option<&ReplyId> {
        self.reply_id.as_ref()
    }

    /// What the event may change, if anything.
    pub fn effect(&self) -> Option<&Effect> {
        self.effect.as_ref()
    }

    /// Drops the effect of an event whose message carries a reply's marker
    /// but cannot be shown to be goldrelay's own: any user token may set
    /// `content_attributes` (`messages_controller.rb`, `message_builder.rb`),
    /// so the marker alone proves nothing. With goldrelay's user known, a
    /// message from anyone else is foreign; while it is not yet known (just
    /// after a start, or while the profile read fails) nothing marked is taken
    /// (the API answer and the lookup still decide); an agent-bot token, which
    /// cannot read its profile, leaves the marker alone to decide.
    pub fn keep_only_ours(&mut self, me: OwnUser) -> Kept {
        let marked = matches!(
            self.effect,
            Some(
                Effect::Confirm { .. }
                    | Effect::ChannelStatus {
                        reply_id: Some(_),
                        ..
                    }
            )
        );
        let from = |id: i64| {
            self.sender
                .as_ref()
                .is_some_and(|(kind, sender)| kind == "user" && *sender == id)
        };
        let kept = match me {
            _ if !marked => Kept::Ours,
            OwnUser::Unknowable => Kept::Ours,
            OwnUser::Is(id) if from(id) => Kept::Ours,
            OwnUser::Is(_) => Kept::Foreign,
            OwnUser::NotYetKnown => Kept::Unverified,
        };
        if kept != Kept::Ours {
            self.effect = None;
        }
        kept
    }
}

fn message_event(kind: &str) -> bool {
    matches!(kind, "message_created" | "message_updated")
}

fn effect(kind: &str, body: &Value, id: i64, reply_id: Option<ReplyId>) -> Option<Effect> {
    let message = EventMessage {
        id,
        account_id: body.pointer("/account/id").and_then(Value::as_i64),
        conversation_id: body.pointer("/conversation/id").and_then(Value::as_i64),
        outgoing: outgoing(&body["message_type"]),
    };
    match kind {
        "message_created" => Some(Effect::Confirm {
            reply_id: reply_id?,
            message,
        }),
        "message_updated" => {
            let error = body
                .pointer("/content_attributes/external_error")
                .and_then(Value::as_str)
                .map(str::to_owned);
            // Chatwoot sets `external_error` only on failed messages
            // (`app/services/messages/status_update_service.rb`).
            let status =
                channel_status(body, id).or_else(|| error.as_ref().map(|_| ChannelStatus::Failed));
            Some(Effect::ChannelStatus {
                reply_id,
                message,
                status,
                error,
            })
        }
        _ => None,
    }
}

/// Webhooks name the direction (`"outgoing"`); the push form in
/// `conversation.messages` uses its integer (1).
fn outgoing(message_type: &Value) -> bool {
    message_type.as_str() == Some("outgoing") || message_type.as_i64() == Some(1)
}

/// The message's channel status: top level when Chatwoot sends it, otherwise
/// from the conversation's message list. A name Chatwoot does not use is a
/// status not shown: the store then reads it back from Chatwoot.
fn channel_status(body: &Value, id: i64) -> Option<ChannelStatus> {
    let named = match body["status"].as_str() {
        Some(status) => status,
        None => body
            .pointer("/conversation/messages")?
            .as_array()?
            .iter()
            .find(|m| m["id"].as_i64() == Some(id))?["status"]
            .as_str()?,
    };
    ChannelStatus::parse(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_on_another_senders_message_changes_nothing() {
        let mut body = example("webhook_message_created_outgoing_echo.json");
        // goldrelay's own messages come from its user (the fixture's is a bot).
        body["sender"]["type"] = "user".into();
        let sender = body["sender"]["id"].as_i64().unwrap();
        let judged = |me| {
            let mut event = ChatwootEvent::parse(None, &body, "x");
            let kept = event.keep_only_ours(me);
            (kept, event.effect.is_some())
        };
        assert_eq!(judged(OwnUser::Is(sender)), (Kept::Ours, true));
        assert_eq!(judged(OwnUser::Is(sender + 1)), (Kept::Foreign, false));
        assert_eq!(judged(OwnUser::NotYetKnown), (Kept::Unverified, false));
        assert_eq!(judged(OwnUser::Unknowable), (Kept::Ours, true));
    }

    fn example(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/chatwoot/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_outgoing_echo_confirms_the_reply_it_names_with_what_must_match() {
        let event = ChatwootEvent::parse(
            None,
            &example("webhook_message_created_outgoing_echo.json"),
            "x",
        );
        assert_eq!(
            event.effect,
            Some(Effect::Confirm {
                reply_id: ReplyId::parse("gr_01JV2K8M4Q7T9XWZ3N5B6C8D0E").unwrap(),
                message: EventMessage {
                    id: 55240,
                    account_id: Some(1),
                    conversation_id: Some(187),
                    outgoing: true,
                },
            })
        );
        assert_eq!(event.dedupe_key, "message_created:55240");
    }

    #[test]
    fn an_incoming_message_carrying_a_marker_is_not_outgoing() {
        let mut body = example("webhook_message_created_incoming.json");
        body["content_attributes"] = serde_json::json!({"gold_reply_id": "gr-x"});
        let event = ChatwootEvent::parse(None, &body, "x");
        let Some(Effect::Confirm { message, .. }) = event.effect else {
            panic!("no confirmation to check: {event:?}");
        };
        assert!(!message.outgoing);
    }

    #[test]
    fn a_failed_update_without_top_level_status_is_read_from_the_conversation() {
        let event =
            ChatwootEvent::parse(None, &example("webhook_message_updated_failed.json"), "x");
        let Some(Effect::ChannelStatus { status, error, .. }) = event.effect else {
            panic!("no channel status: {event:?}");
        };
        assert_eq!(status, Some(ChannelStatus::Failed));
        assert!(error.unwrap().contains("more than 24 hours"));
    }

    #[test]
    fn an_update_without_marker_or_listed_status_still_names_the_message() {
        let mut body = example("webhook_message_updated_failed.json");
        body["content_attributes"] = serde_json::json!({});
        body["conversation"]["messages"][0]["id"] = serde_json::json!(99999);
        let event = ChatwootEvent::parse(None, &body, "x");
        let Some(Effect::ChannelStatus {
            reply_id,
            message,
            status,
            error,
        }) = event.effect
        else {
            panic!("no channel status: {event:?}");
        };
        assert_eq!((reply_id, status, error), (None, None, None));
        assert_eq!(message.id, 55240);
    }

    #[test]
    fn two_different_updates_of_one_message_are_not_the_same_event() {
        let body = example("webhook_message_updated_failed.json");
        let first = ChatwootEvent::parse(None, &body, "digest-1");
        let again = ChatwootEvent::parse(None, &body, "digest-2");
        assert_ne!(first.dedupe_key, again.dedupe_key);
        assert_eq!(first.dedupe_key, "message_updated:55240:digest-1");
    }

    #[test]
    fn a_status_chatwoot_does_not_use_is_a_status_not_shown() {
        let mut body = example("webhook_message_updated_failed.json");
        body["status"] = "bogus".into();
        body["content_attributes"] = serde_json::json!({});
        let event = ChatwootEvent::parse(None, &body, "x");
        let Some(Effect::ChannelStatus { status, .. }) = event.effect else {
            panic!("no channel status: {event:?}");
        };
        assert_eq!(status, None);
    }

    #[test]
    fn a_marker_that_cannot_be_a_reply_id_names_no_reply() {
        let mut body = example("webhook_message_updated_failed.json");
        body["content_attributes"] = serde_json::json!({"gold_reply_id": "not an id!"});
        let event = ChatwootEvent::parse(None, &body, "x");
        assert_eq!(event.reply_id(), None);
        let Some(Effect::ChannelStatus {
            reply_id, message, ..
        }) = event.effect
        else {
            panic!("no channel status: {event:?}");
        };
        assert_eq!((reply_id, message.id), (None, 55240));
    }

    #[test]
    fn an_incoming_customer_message_changes_nothing() {
        let event =
            ChatwootEvent::parse(None, &example("webhook_message_created_incoming.json"), "x");
        assert_eq!(event.effect, None);
        assert_eq!(event.message_id, Some(55231));
    }

    #[test]
    fn an_unused_event_is_keyed_by_its_body() {
        let event = ChatwootEvent::parse(
            None,
            &example("webhook_conversation_status_changed.json"),
            "abc",
        );
        assert_eq!(event.dedupe_key, "conversation_status_changed:abc");
        assert_eq!(event.effect, None);
    }
}
