//! Delivery to Chatwoot: what is sent, what is retried, what is given up on,
//! and how a reply is never sent twice.

use crate::helpers::{creates_of, reply, spawn_app, spawn_app_with, TestApp, PATIENCE};
use goldrelay::sandbox::{Faults, SandboxConfig};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::time::Duration;

/// The record's `last_error`, which must be set.
fn last_error(record: &Value) -> &str {
    record["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_error: {record}"))
}

/// Milliseconds between the sandbox's first and second create of `reply_id`.
fn gap_between_creates(app: &TestApp, reply_id: &str) -> i64 {
    let at: Vec<i64> = app
        .chatwoot
        .creates()
        .iter()
        .filter(|c| c.gold_reply_id.as_deref() == Some(reply_id))
        .map(|c| c.at_ms)
        .collect();
    assert!(at.len() >= 2, "{reply_id} was tried {} time(s)", at.len());
    at[1] - at[0]
}

#[tokio::test]
async fn an_approved_reply_reaches_chatwoot_as_an_outgoing_text_message_marked_with_its_reply_id() {
    let app = spawn_app().await;
    let mut body = reply("gr-sent", 20);
    body["content"] = json!("Hello Ana,\nyour refund is on its way.");
    app.api.accept(&body).await;
    let record = app
        .api
        .wait_for_status("gr-sent", "delivered", PATIENCE)
        .await;
    let messages = app.chatwoot.messages(1, 20);
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.content, "Hello Ana,\nyour refund is on its way.");
    assert_eq!(message.message_type, 1, "outgoing");
    assert_eq!(message.content_type, "text");
    assert!(!message.private);
    assert_eq!(message.content_attributes["gold_reply_id"], "gr-sent");
    assert_eq!(record["chatwoot_message_id"], message.id);
}

#[tokio::test]
async fn a_private_reply_is_sent_as_a_private_note() {
    let app = spawn_app().await;
    let mut body = reply("gr-note", 21);
    body["private"] = json!(true);
    app.api.accept(&body).await;
    app.api
        .wait_for_status("gr-note", "delivered", PATIENCE)
        .await;
    let messages = app.chatwoot.messages(1, 21);
    assert_eq!(messages.len(), 1);
    assert!(messages[0].private);
}

#[tokio::test]
async fn approve_and_reject_are_recorded_and_never_sent() {
    let app = spawn_app().await;
    for (id, action) in [("gr-approve", "approve"), ("gr-reject", "reject")] {
        let mut body = reply(id, 22);
        body["action"] = json!(action);
        let record = app.api.accept(&body).await;
        assert_eq!(record["status"], "recorded");
    }
    let marker = app.settle(22).await;
    assert_eq!(app.delivered_ids(22), [marker]);
    for id in ["gr-approve", "gr-reject"] {
        let record = app.api.record(id).await;
        assert_eq!(record["status"], "recorded");
        assert_eq!(record["attempts"], 0);
        assert_eq!(record["chatwoot_message_id"], Value::Null);
        assert_eq!(creates_of(&app.chatwoot, id), 0);
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_the_reply_is_delivered() {
    let app = spawn_app().await;
    for (conversation, status) in [
        (23, 503),
        (24, 500),
        (25, 502),
        (26, 504),
        (27, 408),
        (28, 429),
    ] {
        app.chatwoot.set_faults(Faults {
            fail_next: 1,
            fail_status: Some(status),
            ..Faults::default()
        });
        let id = format!("gr-transient-{status}");
        app.api.accept(&reply(&id, conversation)).await;
        let record = app.api.wait_for_status(&id, "delivered", PATIENCE).await;
        // A 429 gives its attempt back: throttling is not the reply's failure.
        let attempts = if status == 429 { 1 } else { 2 };
        assert_eq!(record["attempts"], attempts, "after a {status}: {record}");
        assert_eq!(record["last_error"], Value::Null, "{record}");
        assert_eq!(creates_of(&app.chatwoot, &id), 2, "after a {status}");
        assert_eq!(app.delivered_ids(conversation), [id]);
    }
}

#[tokio::test]
async fn a_reply_waiting_to_retry_is_queued_with_the_error_and_its_next_attempt() {
    let app = spawn_app().await;
    app.chatwoot.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(503),
        retry_after: Some(2),
        ..Faults::default()
    });
    app.api.accept(&reply("gr-waiting", 29)).await;
    let record = app
        .api
        .wait_until("gr-waiting", "a failed attempt", PATIENCE, |r| {
            !r["last_error"].is_null()
        })
        .await;
    assert_eq!(record["status"], "queued", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert!(last_error(&record).contains("503"), "{record}");
    assert!(record["next_attempt_at"].is_string(), "{record}");
    app.api
        .wait_for_status("gr-waiting", "delivered", PATIENCE)
        .await;
}

#[tokio::test]
async fn retry_after_from_chatwoot_is_honoured_before_the_next_attempt() {
    let app = spawn_app().await;
    app.chatwoot.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(429),
        retry_after: Some(1),
        ..Faults::default()
    });
    app.api.accept(&reply("gr-throttled", 30)).await;
    app.api
        .wait_for_status("gr-throttled", "delivered", PATIENCE)
        .await;
    // The backoff alone would retry after 25 to 50 ms. The sandbox stamps
    // whole milliseconds, so allow for rounding at each end.
    let gap = gap_between_creates(&app, "gr-throttled");
    assert!(gap >= 998, "retried {gap} ms after a Retry-After of 1 s");
    assert_eq!(app.delivered_ids(30), ["gr-throttled"]);
}

#[tokio::test]
async fn an_unknown_conversation_is_dead_at_once_with_chatwoots_status_and_error() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-nowhere", 5000)).await;
    let record = app
        .api
        .wait_for_status("gr-nowhere", "dead", PATIENCE)
        .await;
    let error = last_error(&record);
    assert!(error.contains("404"), "{error}");
    assert!(error.contains("Resource could not be found"), "{error}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(creates_of(&app.chatwoot, "gr-nowhere"), 1);
    assert_eq!(record["chatwoot_message_id"], Value::Null);
}

#[tokio::test]
async fn an_unknown_account_is_dead_at_once() {
    let app = spawn_app().await;
    let mut body = reply("gr-no-account", 1);
    body["account_id"] = json!(99);
    app.api.accept(&body).await;
    let record = app
        .api
        .wait_for_status("gr-no-account", "dead", PATIENCE)
        .await;
    assert!(last_error(&record).contains("404"), "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
}

/// Chatwoot's own 401 means goldrelay's token is wrong for every reply:
/// deliveries pause for the deployment, `/hc` and `/metrics` say why, nothing
/// goes dead, and they resume by themselves once the token works again.
#[tokio::test]
async fn a_refused_chatwoot_token_pauses_deliveries_until_it_works_again() {
    let app = spawn_app().await;
    app.chatwoot.set_faults(Faults {
        token_revoked: true,
        ..Faults::default()
    });
    for (id, conversation) in [("gr-locked-1", 31), ("gr-locked-2", 32)] {
        app.api.accept(&reply(id, conversation)).await;
    }
    let refused = |r: &Value| {
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Invalid Access Token"))
    };
    let record = app
        .api
        .wait_until("gr-locked-1", "refused", PATIENCE, refused)
        .await;
    assert_eq!(record["status"], "queued", "{record}");
    assert_eq!(
        record["attempts"], 0,
        "a refused token costs no attempt: {record}"
    );
    let hc: Value = app
        .api
        .client
        .get(format!("{}/hc", app.api.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let worker = hc["worker"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(worker.contains("refuses goldrelay's API token"), "{hc}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("goldrelay_delivery_paused{reason=\"token_refused\"} 1"),
        "{metrics}"
    );
    // Long past the attempt limit's worth of retries, still nothing is dead.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.api.record("gr-locked-2").await["status"], "queued");

    app.chatwoot.set_faults(Faults::default());
    for id in ["gr-locked-1", "gr-locked-2"] {
        app.api.wait_for_status(id, "delivered", PATIENCE).await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("goldrelay_delivery_paused{reason=\"token_refused\"} 0"),
        "{metrics}"
    );
    assert_eq!(app.delivered_ids(31), ["gr-locked-1"]);
}

/// A 401, 403 or 404 that is not Chatwoot's JSON comes from a proxy, a WAF or
/// a rollout in front of it: it passes, so nothing goes dead for it.
#[tokio::test]
async fn a_proxys_401_403_or_404_is_retried_not_dead() {
    let app = spawn_app().await;
    for (conversation, status) in [(33, 401), (34, 403), (35, 404)] {
        app.chatwoot.set_faults(Faults {
            fail_next: 3,
            fail_status: Some(status),
            ..Faults::default()
        });
        let id = format!("gr-proxy-{status}");
        app.api.accept(&reply(&id, conversation)).await;
        let record = app.api.wait_for_status(&id, "delivered", PATIENCE).await;
        assert_eq!(record["attempts"], 4, "after three {status}s: {record}");
        assert_eq!(app.delivered_ids(conversation), [id]);
    }
}

/// Chatwoot's own JSON 404 (the conversation does not exist) is permanent.
#[tokio::test]
async fn chatwoots_own_404_is_dead_at_once() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-nowhere", 5000)).await;
    let record = app
        .api
        .wait_for_status("gr-nowhere", "dead", PATIENCE)
        .await;
    let error = last_error(&record);
    assert!(
        error.contains("404") && error.contains("Resource could not be found"),
        "{error}"
    );
    assert_eq!(record["attempts"], 1, "{record}");
}

#[tokio::test]
async fn a_reply_that_keeps_failing_is_dead_after_the_maximum_attempts() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.max_attempts = 3).await;
    app.chatwoot.set_faults(Faults {
        fail_next: 1000,
        fail_status: Some(503),
        ..Faults::default()
    });
    app.api.accept(&reply("gr-hopeless", 32)).await;
    let record = app
        .api
        .wait_for_status("gr-hopeless", "dead", PATIENCE)
        .await;
    assert_eq!(record["attempts"], 3, "{record}");
    let error = last_error(&record);
    assert!(error.contains("3 attempts"), "{error}");
    assert!(error.contains("503"), "{error}");
    assert!(app.chatwoot.messages(1, 32).is_empty());
}

#[tokio::test]
async fn a_reply_whose_next_attempt_would_pass_the_maximum_age_is_dead() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.max_age = Duration::from_secs(1);
    })
    .await;
    app.chatwoot.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(429),
        retry_after: Some(30),
        ..Faults::default()
    });
    app.api.accept(&reply("gr-too-old", 33)).await;
    let record = app
        .api
        .wait_for_status("gr-too-old", "dead", PATIENCE)
        .await;
    assert_eq!(record["attempts"], 1, "{record}");
    assert!(last_error(&record).contains("429"), "{record}");
    assert_eq!(creates_of(&app.chatwoot, "gr-too-old"), 1);
}

#[tokio::test]
async fn an_unreachable_chatwoot_is_retried_and_not_given_up_on_at_once() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        s.chatwoot_base_url = format!("http://127.0.0.1:{port}").parse().unwrap();
        s.max_attempts = 3;
    })
    .await;
    app.api.accept(&reply("gr-unreachable", 34)).await;
    let record = app
        .api
        .wait_for_status("gr-unreachable", "dead", PATIENCE)
        .await;
    assert_eq!(record["attempts"], 3, "{record}");
    assert!(last_error(&record).contains("3 attempts"), "{record}");
}

#[tokio::test]
async fn chatwoots_too_many_messages_flood_guard_is_transient() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.max_attempts = 2).await;
    let url = format!(
        "{}/api/v1/accounts/1/conversations/35/messages",
        app.chatwoot.base_url()
    );
    let client = reqwest::Client::new();
    for i in 0..200 {
        let sent = client
            .post(&url)
            .header("api_access_token", SandboxConfig::default().user_token)
            .json(&json!({"content": format!("flood {i}"), "message_type": "outgoing"}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200);
    }
    app.api.accept(&reply("gr-flooded", 35)).await;
    let record = app
        .api
        .wait_for_status("gr-flooded", "dead", PATIENCE)
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    let error = last_error(&record);
    assert!(error.contains("2 attempts"), "{error}");
    assert!(error.contains("Too many messages"), "{error}");
}

#[tokio::test]
async fn a_timeout_after_chatwoot_created_the_message_delivers_it_exactly_once() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_timeout = Duration::from_millis(500);
    })
    .await;
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 1500,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-late", 36)).await;
    let record = app
        .api
        .wait_for_status("gr-late", "delivered", PATIENCE)
        .await;
    let messages = app.chatwoot.messages(1, 36);
    assert_eq!(messages.len(), 1, "sent twice");
    assert_eq!(record["chatwoot_message_id"], messages[0].id);
    assert_eq!(
        creates_of(&app.chatwoot, "gr-late"),
        1,
        "created again after the timeout"
    );
    assert!(record["attempts"].as_i64().unwrap() >= 2, "{record}");
}

#[tokio::test]
async fn a_bot_token_delivers_a_reply_when_nothing_goes_wrong() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_api_token = SecretString::from(SandboxConfig::default().bot_token.unwrap());
    })
    .await;
    app.api.accept(&reply("gr-bot", 37)).await;
    app.api
        .wait_for_status("gr-bot", "delivered", PATIENCE)
        .await;
    assert_eq!(app.delivered_ids(37), ["gr-bot"]);
}

#[tokio::test]
async fn a_token_that_cannot_list_messages_gives_up_after_an_ambiguous_failure_rather_than_risk_a_duplicate(
) {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_api_token = SecretString::from(SandboxConfig::default().bot_token.unwrap());
        s.chatwoot_timeout = Duration::from_millis(500);
    })
    .await;
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 1500,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-bot-late", 38)).await;
    let record = app
        .api
        .wait_for_status("gr-bot-late", "dead", PATIENCE)
        .await;
    let error = last_error(&record);
    assert!(error.contains("401"), "{error}");
    assert!(error.contains("not authorized for bots"), "{error}");
    assert!(
        error.contains("duplicate"),
        "does not explain itself: {error}"
    );
    assert_eq!(creates_of(&app.chatwoot, "gr-bot-late"), 1, "sent again");
    assert_eq!(app.chatwoot.messages(1, 38).len(), 1);
}

#[tokio::test]
async fn replies_still_deliver_behind_a_proxy_that_drops_underscored_headers() {
    let app = spawn_app().await;
    // nginx's default: `api_access_token` never reaches Chatwoot.
    app.chatwoot.set_faults(Faults {
        drop_underscore_headers: true,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-behind-nginx", 39)).await;
    let record = app
        .api
        .wait_for_status("gr-behind-nginx", "delivered", PATIENCE)
        .await;
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(app.delivered_ids(39), ["gr-behind-nginx"]);
}

#[tokio::test]
async fn a_huge_retry_after_makes_the_reply_dead_at_once_and_the_conversation_moves_on() {
    let app = spawn_app().await;
    // A proxy in front of Chatwoot asks for a wait no clock can add.
    app.chatwoot.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(429),
        retry_after: Some(u64::MAX),
        ..Faults::default()
    });
    app.api.accept(&reply("gr-forever", 40)).await;
    let record = app
        .api
        .wait_for_status("gr-forever", "dead", PATIENCE)
        .await;
    let error = last_error(&record);
    assert!(error.contains("Retry-After"), "{error}");
    assert!(error.contains("older than 1day"), "{error}");
    assert_eq!(record["attempts"], 1, "{record}");
    // The worker did not die with it: the conversation's next reply goes out.
    let marker = app.settle(40).await;
    assert_eq!(app.delivered_ids(40), [marker]);
}
