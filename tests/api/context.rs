//! Context with each reply (issue 21, item 1): a posted `context` is kept as
//! posted; otherwise goldrelay captures the turns before the reply from the
//! sandbox Chatwoot's message list, once, behind creates in priority and
//! within the send rate, leaving private notes, activity and deleted
//! messages out; a failed capture is retried and never delays a delivery.

use crate::helpers::{self, reply, TestApp, PATIENCE};
use goldrelay::config::DatabaseUrl;
use goldrelay::sandbox::{self, Faults, SandboxConfig};
use goldrelay::store::{self, ExportPage, ExportRecord, SharedStore};
use serde_json::{json, Value};
use std::time::Duration;

/// A goldrelay that captures contexts, and a second handle on its database
/// to read what it stored (the HTTP export holds back its last minute).
struct Capturing {
    app: TestApp,
    store: SharedStore,
}

async fn capturing(turns: usize, send_rate: u32) -> Capturing {
    capturing_within(turns, send_rate, None).await
}

/// [`capturing`], with `chatwoot_timeout` in place of the test settings' one.
async fn capturing_within(
    turns: usize,
    send_rate: u32,
    chatwoot_timeout: Option<Duration>,
) -> Capturing {
    let mut database: Option<DatabaseUrl> = None;
    let app = helpers::spawn_app_with(SandboxConfig::default(), |s| {
        s.capture_context = turns;
        s.send_rate = send_rate;
        if let Some(timeout) = chatwoot_timeout {
            s.chatwoot_timeout = timeout;
        }
        database = Some(s.database_url.clone());
    })
    .await;
    let database = database.expect("settings were built");
    let store = store::open(&database)
        .await
        .expect("the database opens twice");
    Capturing { app, store }
}

impl Capturing {
    /// The stored record of one reply, context included.
    async fn stored(&self, conversation_id: i64, reply_id: &str) -> ExportRecord {
        let page = ExportPage {
            after: None,
            until: chrono::Utc::now() + chrono::Duration::hours(1),
            conversation: Some((1, conversation_id)),
            account: None,
            limit: 100,
        };
        let records = self.store.export(&page).await.unwrap();
        let found = records
            .into_iter()
            .find(|r| r.reply_id.as_str() == reply_id);
        found.unwrap_or_else(|| panic!("{reply_id} is not stored"))
    }

    /// Waits until the reply's record says its context was `source`.
    async fn wait_for_context(&self, reply_id: &str, source: &str) -> Value {
        let has = |r: &Value| r["context"]["source"] == source;
        self.app
            .api
            .wait_until(reply_id, source, PATIENCE, has)
            .await
    }

    /// Waits until /metrics holds `line`: a capture is counted just after its
    /// outcome is recorded, so the record can be seen a moment before the count.
    async fn wait_for_metric(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let metrics = self.app.metrics().await;
            if metrics.contains(line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {line} in {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The list requests a capture made (it asks Chatwoot to filter internal
    /// messages; lookups and status reads do not).
    fn captures_seen(&self) -> Vec<sandbox::ListSeen> {
        let seen = self.app.chatwoot.list_requests();
        seen.into_iter()
            .filter(|l| l.query.contains("filter_internal_messages=true"))
            .collect()
    }
}

fn turns(record: &ExportRecord) -> Vec<(String, String)> {
    let context = record.context.as_ref().expect("a context is stored");
    context
        .iter()
        .map(|t| {
            let role = serde_json::to_value(t.role).unwrap();
            (role.as_str().unwrap().to_owned(), t.content.clone())
        })
        .collect()
}

/// Fills a conversation of the sandbox as a busy one looks: the customer and
/// an agent take turns, with a private note, an activity message and a
/// deleted message among them. Returns the public turns, oldest first.
async fn busy_conversation(
    app: &TestApp,
    conversation_id: i64,
    rounds: usize,
) -> Vec<(String, String)> {
    let chatwoot = &app.chatwoot;
    let mut expected = Vec::new();
    for i in 0..rounds {
        let asked = format!("question {i}");
        chatwoot.customer_says(1, conversation_id, &asked);
        expected.push(("user".to_owned(), asked));
        let note = json!({"content": format!("note {i}: check the invoice"), "private": true});
        helpers::other_agent_posts(chatwoot, conversation_id, &note).await;
        chatwoot.activity(
            1,
            conversation_id,
            &format!("Assigned to Another Agent ({i})"),
        );
        let gone = chatwoot.customer_says(1, conversation_id, &format!("oops {i}"));
        assert!(chatwoot.delete_message(gone));
        let answer = format!("answer {i}");
        helpers::agent_says(chatwoot, conversation_id, &answer).await;
        expected.push(("assistant".to_owned(), answer));
    }
    expected
}

#[tokio::test]
async fn a_delivered_reply_keeps_the_turns_before_its_message_in_order_without_notes_or_activity() {
    let c = capturing(20, 0).await;
    // 15 rounds: 30 public turns among 75 messages, so the capture pages.
    let expected = busy_conversation(&c.app, 7, 15).await;
    c.app.api.accept(&reply("ctx-sent", 7)).await;
    let delivered = c
        .app
        .api
        .wait_for_status("ctx-sent", "delivered", PATIENCE)
        .await;
    // A message after the reply is not part of what it answered.
    c.app
        .chatwoot
        .customer_says(1, 7, "thanks, after the reply");
    let record = c.wait_for_context("ctx-sent", "captured").await;
    assert!(record["context"]["captured_at"].is_string(), "{record}");
    assert_eq!(record["context"]["next_capture_at"], Value::Null);

    let stored = c.stored(7, "ctx-sent").await;
    assert_eq!(stored.context_source.as_deref(), Some("captured"));
    assert!(stored.context_captured_at.is_some());
    assert_eq!(turns(&stored), expected[expected.len() - 20..].to_vec());
    let pages = c.captures_seen();
    let message_id = delivered["chatwoot_message_id"].as_i64().unwrap();
    assert!(
        pages[0].query.contains(&format!("before={message_id}")),
        "the capture did not start before the reply's own message: {pages:?}"
    );
    assert!(
        pages.len() >= 2,
        "20 turns among 75 messages fit one page? {pages:?}"
    );
}

#[tokio::test]
async fn approve_and_reject_capture_the_conversation_as_it_was_when_judged() {
    let c = capturing(4, 0).await;
    let expected = busy_conversation(&c.app, 8, 3).await;
    let mut approved = reply("ctx-approve", 8);
    approved["action"] = json!("approve");
    c.app.api.accept(&approved).await;
    let mut rejected = reply("ctx-reject", 8);
    rejected["action"] = json!("reject");
    c.app.api.accept(&rejected).await;
    for id in ["ctx-approve", "ctx-reject"] {
        c.wait_for_context(id, "captured").await;
        let stored = c.stored(8, id).await;
        assert_eq!(
            turns(&stored),
            expected[expected.len() - 4..].to_vec(),
            "{id}"
        );
    }
    // Captured once: a later reply's capture comes and goes, theirs stay.
    c.app.chatwoot.customer_says(1, 8, "later");
    let mut later = reply("ctx-later", 8);
    later["action"] = json!("approve");
    c.app.api.accept(&later).await;
    c.wait_for_context("ctx-later", "captured").await;
    let stored = c.stored(8, "ctx-approve").await;
    assert_eq!(turns(&stored), expected[expected.len() - 4..].to_vec());
    let reads = c
        .captures_seen()
        .iter()
        .filter(|l| l.conversation_id == 8)
        .count();
    assert_eq!(reads, 3, "one read per reply, none again");
}

#[tokio::test]
async fn a_posted_context_is_stored_as_posted_and_chatwoot_is_not_read_for_it() {
    let c = capturing(20, 0).await;
    busy_conversation(&c.app, 10, 2).await;
    let posted = json!([
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "user", "content": "Order 1234."}
    ]);
    let mut body = reply("ctx-posted", 10);
    body["context"] = posted.clone();
    c.app.api.accept(&body).await;
    let record = c.wait_for_context("ctx-posted", "posted").await;
    assert_eq!(
        record["context"]["next_capture_at"],
        Value::Null,
        "{record}"
    );
    c.app
        .api
        .wait_for_status("ctx-posted", "delivered", PATIENCE)
        .await;
    // A reply without context, captured after it, proves the loop ran.
    let mut other = reply("ctx-after-posted", 11);
    other["action"] = json!("approve");
    c.app.api.accept(&other).await;
    c.wait_for_context("ctx-after-posted", "captured").await;
    let conversations: Vec<i64> = c
        .captures_seen()
        .iter()
        .map(|l| l.conversation_id)
        .collect();
    assert_eq!(conversations, [11], "only the second reply is read");

    let stored = c.stored(10, "ctx-posted").await;
    assert_eq!(stored.context_source.as_deref(), Some("posted"));
    assert_eq!(stored.context_captured_at, None);
    assert_eq!(serde_json::to_value(&stored.context).unwrap(), posted);
    // The same reply posted again (same context) is the same reply.
    assert_eq!(c.app.api.post_reply(&body).await.status(), 200);
}

#[tokio::test]
async fn a_capture_in_flight_never_delays_a_delivery() {
    let c = capturing_within(20, 0, Some(Duration::from_secs(15))).await;
    busy_conversation(&c.app, 15, 1).await;
    // Chatwoot's list is slow (well under goldrelay's timeout); creates are not.
    c.app.chatwoot.set_faults(Faults {
        list_delay_ms: 5000,
        ..Faults::default()
    });
    let mut approved = reply("ctx-slow", 15);
    approved["action"] = json!("approve");
    c.app.api.accept(&approved).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while c.captures_seen().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no capture started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.app.api.accept(&reply("sent-while-reading", 16)).await;
    c.app
        .api
        .wait_for_status("sent-while-reading", "delivered", PATIENCE)
        .await;
    let reading = c.app.api.record("ctx-slow").await;
    assert_eq!(
        reading["context"]["source"],
        Value::Null,
        "the delivery waited for the capture: {reading}"
    );
    // Any further page of the capture comes at once.
    c.app.chatwoot.set_faults(Faults::default());
    c.wait_for_context("ctx-slow", "captured").await;
}

#[tokio::test]
async fn a_failed_capture_shows_and_is_retried_later_while_deliveries_go_on() {
    let c = capturing(20, 0).await;
    busy_conversation(&c.app, 12, 1).await;
    // Every list request fails for a while; creates are unaffected.
    c.app.chatwoot.set_faults(Faults {
        fail_lists_next: 2,
        ..Faults::default()
    });
    let mut approved = reply("ctx-fails", 12);
    approved["action"] = json!("approve");
    c.app.api.accept(&approved).await;
    let failing = |r: &Value| r["context"]["capture_attempts"].as_i64() >= Some(1);
    let record = c
        .app
        .api
        .wait_until("ctx-fails", "a failed capture", PATIENCE, failing)
        .await;
    let error = record["context"]["capture_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("503"), "{record}");
    assert!(record["context"]["next_capture_at"].is_string(), "{record}");
    assert_eq!(record["context"]["source"], Value::Null);

    // A delivery meanwhile goes out at once, whatever the capture's state.
    c.app.api.accept(&reply("sent-while-failing", 13)).await;
    let delivered = c
        .app
        .api
        .wait_for_status("sent-while-failing", "delivered", Duration::from_secs(2))
        .await;
    assert_eq!(delivered["attempts"], 1, "{delivered}");

    let record = c.wait_for_context("ctx-fails", "captured").await;
    assert_eq!(record["context"]["capture_error"], Value::Null, "{record}");
    assert!(record["context"]["capture_attempts"].as_i64() >= Some(2));
    for outcome in ["retry", "captured"] {
        let line = format!("goldrelay_context_captures_total{{outcome=\"{outcome}\"}}");
        c.wait_for_metric(&line).await;
    }
}

#[tokio::test]
async fn a_capture_chatwoot_refuses_for_good_is_given_up_and_shown() {
    let c = capturing(20, 0).await;
    c.app.chatwoot.set_faults(Faults {
        deleted_conversations: vec![14],
        ..Faults::default()
    });
    let mut approved = reply("ctx-gone", 14);
    approved["action"] = json!("reject");
    c.app.api.accept(&approved).await;
    let given_up = |r: &Value| r["context"]["capture_error"].is_string();
    let record = c
        .app
        .api
        .wait_until("ctx-gone", "given up", PATIENCE, given_up)
        .await;
    assert_eq!(
        record["context"]["next_capture_at"],
        Value::Null,
        "{record}"
    );
    assert_eq!(record["context"]["capture_attempts"], 1, "{record}");
    c.wait_for_metric("goldrelay_context_captures_total{outcome=\"failed\"} 1")
        .await;
}

#[tokio::test]
async fn captures_share_the_send_rate_and_wait_until_no_create_does() {
    let rate = 2;
    let c = capturing(20, rate).await;
    for conversation in 20..26 {
        busy_conversation(&c.app, conversation, 1).await;
    }
    for conversation in 20..26 {
        c.app
            .api
            .accept(&reply(&format!("paced-{conversation}"), conversation))
            .await;
    }
    helpers::wait_for_create(&c.app.chatwoot, "paced-20").await;
    // Due at once, while five creates still wait for their slots.
    for conversation in 20..26 {
        let mut approved = reply(&format!("judged-{conversation}"), conversation);
        approved["action"] = json!("approve");
        c.app.api.accept(&approved).await;
    }
    for conversation in 20..26 {
        for id in [
            format!("paced-{conversation}"),
            format!("judged-{conversation}"),
        ] {
            c.wait_for_context(&id, "captured").await;
        }
    }
    let creates: Vec<i64> = c
        .app
        .chatwoot
        .creates()
        .iter()
        .filter(|s| s.gold_reply_id.is_some())
        .map(|s| s.at_ms)
        .collect();
    let captures: Vec<i64> = c.captures_seen().iter().map(|l| l.at_ms).collect();
    assert_eq!(creates.len(), 6);
    assert_eq!(captures.len(), 12, "one page per reply");
    let last_create = creates.iter().max().unwrap();
    let first_capture = captures.iter().min().unwrap();
    assert!(
        first_capture >= last_create,
        "a capture went before a waiting create: creates {creates:?}, captures {captures:?}"
    );
    // Creates and captures together stay within the rate (plus the
    // limiter's burst of one second's worth).
    let mut all: Vec<i64> = creates.iter().chain(&captures).copied().collect();
    all.sort();
    let span_secs = (all[all.len() - 1] - all[0]) as f64 / 1000.0;
    let allowed = (span_secs * f64::from(rate)).ceil() as usize + rate as usize + 1;
    assert!(
        all.len() <= allowed,
        "{} requests in {span_secs} s at {rate}/s: {all:?}",
        all.len()
    );
}
