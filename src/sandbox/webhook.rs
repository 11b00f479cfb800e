//! Outgoing webhook events, shaped and signed as Chatwoot 4.13.0 sends them
//! to an account webhook (`lib/webhooks/trigger.rb`, `app/models/message.rb`
//! `webhook_data`, `app/presenters/conversations/event_data_presenter.rb`).

use super::{Caller, Message, State};
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"), as
/// `lib/webhooks/trigger.rb` signs (`X-Chatwoot-Signature`).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `message.webhook_data.merge(event:)`: no top-level `status`, and the
/// conversation lists only its latest public, non-activity message, which
/// is `latest` as of the event, not necessarily `m`.
pub(super) fn message_event(state: &State, m: &Message, event: &str) -> Value {
    json!({
        "account": {"id": m.account_id, "name": "Sandbox"},
        "additional_attributes": {},
        "content_attributes": m.content_attributes,
        "content_type": m.content_type,
        "content": m.content,
        "conversation": conversation_data(state, m),
        "created_at": iso_millis(m.created),
        "id": m.id,
        "inbox": {"id": m.inbox_id, "name": super::INBOX_NAME},
        "message_type": type_name(m.message_type),
        "private": m.private,
        "sender": sender_webhook_data(m.sent_by),
        "source_id": m.source_id,
        "event": event,
    })
}

fn type_name(message_type: i64) -> &'static str {
    match message_type {
        0 => "incoming",
        2 => "activity",
        3 => "template",
        _ => "outgoing",
    }
}

/// `Conversations::EventDataPresenter#push_data`; `messages` is
/// `[messages.chat.last&.push_event_data].compact`.
fn conversation_data(state: &State, m: &Message) -> Value {
    let latest = state.latest_public(m.account_id, m.conversation_id);
    let now = Utc::now().timestamp();
    json!({
        "additional_attributes": {}, "can_reply": true, "channel": "Channel::Api",
        "contact_inbox": {"id": m.conversation_id, "contact_id": 1, "inbox_id": m.inbox_id,
            "source_id": format!("sandbox-{}", m.conversation_id), "hmac_verified": false},
        "id": m.conversation_id,
        "inbox_id": m.inbox_id,
        "messages": latest.map(push_event_data).into_iter().collect::<Vec<_>>(),
        "labels": [],
        "meta": {"sender": super::contact(), "assignee": null, "assignee_type": null,
            "team": null, "hmac_verified": false},
        "status": "open", "custom_attributes": {}, "snoozed_until": null, "unread_count": 0,
        "first_reply_created_at": null, "priority": null, "waiting_since": 0,
        "agent_last_seen_at": 0, "contact_last_seen_at": 0, "last_activity_at": now,
        "timestamp": now, "created_at": 0, "updated_at": now as f64,
    })
}

/// `Message#push_event_data`: the columns (integer `message_type` and
/// `created_at`), plus `sender` in its push form, which carries `type`.
fn push_event_data(m: &Message) -> Value {
    let (sender_type, sender_id, _) = m.sent_by.identity();
    json!({
        "id": m.id, "content": m.content, "account_id": m.account_id, "inbox_id": m.inbox_id,
        "conversation_id": m.conversation_id, "message_type": m.message_type,
        "created_at": m.created_at, "updated_at": iso_millis(m.updated),
        "private": m.private, "status": m.status, "source_id": m.source_id,
        "content_type": m.content_type, "content_attributes": m.content_attributes,
        "sender_type": sender_type, "sender_id": sender_id, "external_source_ids": {},
        "additional_attributes": {}, "processed_message_content": m.content, "sentiment": {},
        "conversation": {"assignee_id": null, "unread_count": 0, "last_activity_at": m.created_at,
            "contact_inbox": {"source_id": format!("sandbox-{}", m.conversation_id)}},
        "sender": m.sender,
    })
}

/// `sender.webhook_data`: shorter than the push form (`app/models/user.rb`,
/// `app/models/agent_bot.rb`).
fn sender_webhook_data(caller: Caller) -> Value {
    match caller.identity() {
        ("User", id, name) => json!({"id": id, "name": name,
            "email": "agent@sandbox.invalid", "type": "user"}),
        (_, id, name) => json!({"id": id, "name": name, "type": "agent_bot"}),
    }
}

fn iso_millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Posts one event like `Webhooks::Trigger`: compact JSON, delivery id,
/// timestamp and signature when a secret is set, 5 s timeout, no retry.
pub(super) async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    body: String,
) {
    let mut request = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .header("X-Chatwoot-Delivery", uuid::Uuid::new_v4().to_string());
    if let Some(secret) = secret {
        let ts = Utc::now().timestamp().to_string();
        request = request
            .header("X-Chatwoot-Timestamp", &ts)
            .header("X-Chatwoot-Signature", sign(secret, &ts, body.as_bytes()));
    }
    if let Err(e) = request.body(body).send().await {
        tracing::warn!(error = %e, "sandbox webhook delivery failed (not retried, like Chatwoot)");
    }
}
