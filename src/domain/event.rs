//! What a Chatwoot webhook event means for goldrelay.
//!
//! Facts from Chatwoot v4.13.0 that shape this reading:
//! - `message_created` and `message_updated` bodies are `message.webhook_data.merge(event:)`
//!   (`app/models/message.rb`, `webhook_data`): the message sits at the top level (`id`,
//!   `content`, `message_type`, …) and `content_attributes` is echoed back, so the
//!   `gold_reply_id` goldrelay sent comes back with it. `webhook_data` has no top-level
//!   `status` key.
//! - The `conversation` inside the body is `Conversations::EventDataPresenter#webhook_data`
//!   (`app/presenters/conversations/event_data_presenter.rb`); its `messages` array, built by
//!   `push_messages`, holds only the conversation's latest message that is neither private
//!   nor an activity, each element with its `id` and `status`.
//!
//! So a message's channel status is read from the top level when a later Chatwoot sends
//! it there, and otherwise from `conversation.messages[]` when the message is listed there.

use serde_json::Value;

/// One verified event, reduced to what goldrelay stores and acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatwootEvent {
    /// `X-Chatwoot-Delivery`: the same for Chatwoot's own retries of one delivery.
    pub delivery_id: Option<String>,
    /// The `event` field, e.g. `message_created`.
    pub kind: String,
    /// Equal for two deliveries of the same event (Chatwoot sometimes sends one
    /// event twice with different delivery ids).
    pub dedupe_key: String,
    pub message_id: Option<i64>,
    /// The gold reply this event is about, when it names one.
    pub reply_id: Option<String>,
    pub effect: Option<Effect>,
}

/// What an event changes on a gold reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The message is in the conversation: the reply is `confirmed`.
    Confirm { reply_id: String, message_id: i64 },
    /// The customer's channel reported on the message (and so it exists, too).
    ChannelStatus {
        reply_id: String,
        message_id: i64,
        status: Option<String>,
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
            .map(str::to_owned);
        let status = channel_status(body, message_id);
        let error = body
            .pointer("/content_attributes/external_error")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let dedupe_key = match (kind.as_str(), message_id) {
            ("message_created", Some(id)) => format!("message_created:{id}"),
            ("message_updated", Some(id)) => format!(
                "message_updated:{id}:{}:{}",
                status.as_deref().unwrap_or("-"),
                error.as_deref().unwrap_or("-")
            ),
            _ => format!("{kind}:{raw_digest}"),
        };
        let effect = match (kind.as_str(), &reply_id, message_id) {
            ("message_created", Some(r), Some(m)) => Some(Effect::Confirm {
                reply_id: r.clone(),
                message_id: m,
            }),
            ("message_updated", Some(r), Some(m)) => Some(Effect::ChannelStatus {
                reply_id: r.clone(),
                message_id: m,
                status: status.or_else(|| error.as_ref().map(|_| "failed".to_owned())),
                error,
            }),
            _ => None,
        };
        Self {
            delivery_id,
            kind,
            dedupe_key,
            message_id,
            reply_id,
            effect,
        }
    }
}

fn message_event(kind: &str) -> bool {
    matches!(kind, "message_created" | "message_updated")
}

/// The message's channel status: top level when Chatwoot sends it, otherwise
/// from the conversation's message list.
fn channel_status(body: &Value, message_id: Option<i64>) -> Option<String> {
    if let Some(status) = body["status"].as_str() {
        return Some(status.to_owned());
    }
    let id = message_id?;
    body.pointer("/conversation/messages")?
        .as_array()?
        .iter()
        .find(|m| m["id"].as_i64() == Some(id))?["status"]
        .as_str()
        .map(str::to_owned)
}

/// How far along a channel status is; a late event never moves a reply back.
pub fn channel_rank(status: &str) -> u8 {
    match status {
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "failed" => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/chatwoot/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_outgoing_echo_confirms_the_reply_it_names() {
        let event = ChatwootEvent::parse(
            None,
            &example("webhook_message_created_outgoing_echo.json"),
            "x",
        );
        assert_eq!(
            event.effect,
            Some(Effect::Confirm {
                reply_id: "gr_01JV2K8M4Q7T9XWZ3N5B6C8D0E".into(),
                message_id: 55240
            })
        );
        assert_eq!(event.dedupe_key, "message_created:55240");
    }

    #[test]
    fn a_failed_update_without_top_level_status_is_read_from_the_conversation() {
        let event =
            ChatwootEvent::parse(None, &example("webhook_message_updated_failed.json"), "x");
        let Some(Effect::ChannelStatus { status, error, .. }) = event.effect else {
            panic!("no channel status: {event:?}");
        };
        assert_eq!(status.as_deref(), Some("failed"));
        assert!(error.unwrap().contains("more than 24 hours"));
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
