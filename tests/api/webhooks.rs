//! Chatwoot → goldrelay: signed webhook events, over real HTTP.

use crate::helpers::{creates_of, reply, spawn_app, spawn_app_with, TestApp, WEBHOOK_SECRET};
use goldrelay::sandbox::{sign, Faults, SandboxConfig};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::time::Duration;

const ROTATED_SECRET: &str = "n3wS3cr3tAfterRotationXy";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/chatwoot/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn now() -> String {
    chrono::Utc::now().timestamp().to_string()
}

/// Posts `body` as Chatwoot would, signed with `secret` at `timestamp`.
async fn deliver(
    app: &TestApp,
    body: &str,
    timestamp: &str,
    secret: &str,
    delivery: &str,
) -> reqwest::Response {
    app.api
        .client
        .post(format!("{}/api/webhooks/chatwoot", app.api.address))
        .header("Content-Type", "application/json")
        .header("X-Chatwoot-Delivery", delivery)
        .header("X-Chatwoot-Timestamp", timestamp)
        .header(
            "X-Chatwoot-Signature",
            sign(secret, timestamp, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The outgoing echo of a message in account 1's `conversation_id`, naming `reply_id`.
fn echo(reply_id: &str, conversation_id: i64, message_id: i64) -> String {
    echo_body(reply_id, conversation_id, message_id).to_string()
}

/// The sender of goldrelay's messages: the sandbox's user, whose token goldrelay
/// holds (the fixture's sender is an agent bot, which goldrelay would not know
/// itself as).
fn from_goldrelay(body: &mut Value) {
    body["sender"] = json!({"id": 1, "name": "Sandbox Agent", "type": "user"});
}

fn echo_body(reply_id: &str, conversation_id: i64, message_id: i64) -> Value {
    let mut body = fixture("webhook_message_created_outgoing_echo.json");
    from_goldrelay(&mut body);
    body["id"] = json!(message_id);
    body["content_attributes"]["gold_reply_id"] = json!(reply_id);
    body["conversation"]["id"] = json!(conversation_id);
    body
}

fn failed_update(reply_id: &str, conversation_id: i64, message_id: i64) -> String {
    let mut body = fixture("webhook_message_updated_failed.json");
    from_goldrelay(&mut body);
    body["id"] = json!(message_id);
    body["content_attributes"]["gold_reply_id"] = json!(reply_id);
    body["conversation"]["id"] = json!(conversation_id);
    body["conversation"]["messages"][0]["id"] = json!(message_id);
    body.to_string()
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_shared_signature_vector_is_accepted_and_the_body_only_hmac_is_not() {
    let vector = fixture("webhook_signature_vector.json");
    // The vector was signed in May 2026: widen the window so only the signature is tested.
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.webhook_secrets = vec![SecretString::from(vector["secret"].as_str().unwrap())];
        s.webhook_tolerance = Duration::from_secs(100 * 365 * 86400);
    })
    .await;
    let send = |signature: &str| {
        let mut request = app
            .api
            .client
            .post(format!("{}/api/webhooks/chatwoot", app.api.address));
        let headers = vector["headers"].as_object().unwrap();
        for (name, value) in headers.iter().filter(|(n, _)| *n != "X-Chatwoot-Signature") {
            request = request.header(name, value.as_str().unwrap());
        }
        request
            .header("X-Chatwoot-Signature", signature)
            .body(vector["raw_body"].as_str().unwrap().to_owned())
            .send()
    };
    let wrong = send(vector["wrong_signature_body_only_hmac"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = send(vector["expected_signature"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(right.json::<Value>().await.unwrap()["status"], "processed");
}

#[tokio::test]
async fn a_valid_event_of_an_unused_type_is_stored_and_answered_200() {
    let app = spawn_app().await;
    let body = fixture("webhook_conversation_status_changed.json").to_string();
    let response = deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["event"],
        "conversation_status_changed"
    );
}

#[tokio::test]
async fn a_wrong_signature_is_refused_with_401_naming_only_the_signature() {
    let app = spawn_app().await;
    let body = echo("gr-x", 1, 1);
    let (status, problem) =
        problem(deliver(&app, &body, &now(), "not-the-secret", "d-1").await).await;
    assert_eq!(status, 401);
    assert_eq!(
        problem["detail"],
        "the webhook signature is missing or wrong"
    );
}

#[tokio::test]
async fn a_missing_signature_is_refused_with_401() {
    let app = spawn_app().await;
    let response = app
        .api
        .client
        .post(format!("{}/api/webhooks/chatwoot", app.api.address))
        .header("Content-Type", "application/json")
        .body(echo("gr-x", 1, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_body_changed_by_one_byte_after_signing_is_refused() {
    let app = spawn_app().await;
    let body = echo("gr-x", 1, 1);
    let ts = now();
    let signature = sign(WEBHOOK_SECRET, &ts, body.as_bytes());
    let tampered = body.replacen("gr-x", "gr-y", 1);
    assert_eq!(tampered.len(), body.len());
    let response = app
        .api
        .client
        .post(format!("{}/api/webhooks/chatwoot", app.api.address))
        .header("X-Chatwoot-Timestamp", &ts)
        .header("X-Chatwoot-Signature", signature)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn stale_and_future_timestamps_are_refused_naming_the_timestamp() {
    let app = spawn_app().await;
    let body = echo("gr-x", 1, 1);
    let now = chrono::Utc::now().timestamp();
    for ts in [now - 360, now + 360] {
        let (status, problem) =
            problem(deliver(&app, &body, &ts.to_string(), WEBHOOK_SECRET, "d-1").await).await;
        assert_eq!(status, 401);
        assert_eq!(
            problem["detail"],
            "the webhook timestamp is missing or wrong"
        );
    }
    let inside = (now - 250).to_string();
    assert_eq!(
        deliver(&app, &body, &inside, WEBHOOK_SECRET, "d-2")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_second_secret_is_accepted_after_rotation() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.webhook_secrets = vec![
            SecretString::from(WEBHOOK_SECRET),
            SecretString::from(ROTATED_SECRET),
        ];
    })
    .await;
    let first = deliver(&app, &echo("gr-a", 1, 1), &now(), WEBHOOK_SECRET, "d-1").await;
    let second = deliver(&app, &echo("gr-b", 1, 2), &now(), ROTATED_SECRET, "d-2").await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
}

#[tokio::test]
async fn a_replayed_delivery_id_is_answered_200_without_processing_twice() {
    let app = spawn_app().await;
    let body = fixture("webhook_message_created_incoming.json").to_string();
    let first: Value = deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-1")
        .await
        .json()
        .await
        .unwrap();
    let again = deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-1").await;
    assert_eq!(again.status(), 200);
    assert_eq!(first["status"], "processed");
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
}

#[tokio::test]
async fn the_same_event_under_two_delivery_ids_is_processed_once() {
    let app = spawn_app().await;
    let body = echo("gr-none", 1, 77);
    let first: Value = deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-1")
        .await
        .json()
        .await
        .unwrap();
    let second: Value = deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (first["status"].as_str(), second["status"].as_str()),
        (Some("processed"), Some("duplicate"))
    );
}

#[tokio::test]
async fn a_verified_body_that_is_not_json_is_refused_with_400() {
    let app = spawn_app().await;
    let (status, _) = problem(deliver(&app, "not json", &now(), WEBHOOK_SECRET, "d-1").await).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn an_oversized_event_is_refused_with_413() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.max_body_bytes = 1024).await;
    let body = json!({"event": "message_created", "content": "x".repeat(2048)}).to_string();
    let (status, _) = problem(deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-1").await).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn the_echo_of_a_delivered_reply_confirms_it() {
    let app = spawn_app().await;
    assert_eq!(app.api.post_reply(&reply("gr-1", 5)).await.status(), 202);
    let delivered = app
        .api
        .wait_for_status("gr-1", "delivered", Duration::from_secs(5))
        .await;
    let message_id = delivered["chatwoot_message_id"].as_i64().unwrap();
    let response = deliver(
        &app,
        &echo("gr-1", 5, message_id),
        &now(),
        WEBHOOK_SECRET,
        "d-1",
    )
    .await;
    assert_eq!(response.status(), 200);
    let record: Value = app.api.get_reply("gr-1").await.json().await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert!(record["confirmed_at"].is_string(), "{record}");
    assert_eq!(record["chatwoot_message_id"], message_id);
}

#[tokio::test]
async fn a_confirmation_before_the_api_answer_means_the_reply_is_never_sent_again() {
    // One delivery at a time, so the marker below goes out only once the
    // attempt in flight has ended and its outcome is recorded.
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.delivery_concurrency = 1;
        s.chatwoot_timeout = Duration::from_secs(6);
    })
    .await;
    app.chatwoot.set_webhook(
        format!("{}/api/webhooks/chatwoot", app.api.address),
        Some(WEBHOOK_SECRET.into()),
    );
    // Chatwoot creates the message and sends its echo, but answers the API call
    // only after goldrelay's 6 s timeout (this test's).
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 7000,
        ..Faults::default()
    });
    assert_eq!(app.api.post_reply(&reply("gr-race", 9)).await.status(), 202);
    let record = app
        .api
        .wait_for_status("gr-race", "confirmed", Duration::from_secs(6))
        .await;
    assert!(record["delivered_at"].is_string(), "{record}");
    // Past the timed-out attempt: had it put gr-race back in the queue, the
    // marker would wait behind a second send of it.
    let marker = app.settle(9).await;
    assert_eq!(app.delivered_ids(9), ["gr-race", marker.as_str()]);
    assert_eq!(creates_of(&app.chatwoot, "gr-race"), 1);
    let record: Value = app.api.get_reply("gr-race").await.json().await.unwrap();
    assert_eq!(record["status"], "confirmed");
}

#[tokio::test]
async fn a_channel_failure_reaches_the_reply_record() {
    let app = spawn_app().await;
    app.api.post_reply(&reply("gr-fail", 3)).await;
    let delivered = app
        .api
        .wait_for_status("gr-fail", "delivered", Duration::from_secs(5))
        .await;
    let message_id = delivered["chatwoot_message_id"].as_i64().unwrap();
    // What Chatwoot holds by then: the event is read back and must agree.
    let error = "(#131047) Re-engagement message: more than 24 hours have passed since the customer last replied";
    app.chatwoot
        .set_status_silently(message_id, "failed", Some(error));
    let body = failed_update("gr-fail", 3, message_id);
    assert_eq!(
        deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-9")
            .await
            .status(),
        200
    );
    let record: Value = app.api.get_reply("gr-fail").await.json().await.unwrap();
    assert_eq!(record["channel_status"], "failed");
    assert!(
        record["channel_error"]
            .as_str()
            .unwrap()
            .contains("more than 24 hours"),
        "{record}"
    );
}

#[tokio::test]
async fn the_sandbox_closes_the_whole_loop_with_signed_events() {
    let app = spawn_app().await;
    app.chatwoot.set_webhook(
        format!("{}/api/webhooks/chatwoot", app.api.address),
        Some(WEBHOOK_SECRET.into()),
    );
    app.api.post_reply(&reply("gr-loop", 4)).await;
    let record = app
        .api
        .wait_for_status("gr-loop", "confirmed", Duration::from_secs(5))
        .await;
    let message_id = record["chatwoot_message_id"].as_i64().unwrap();
    app.chatwoot.set_status(message_id, "read", None).await;
    let record: Value = app.api.get_reply("gr-loop").await.json().await.unwrap();
    assert_eq!(record["channel_status"], "read");
}

#[tokio::test]
async fn with_no_secret_configured_every_event_is_refused_and_hc_says_so() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.webhook_secrets.clear()).await;
    let body = echo("gr-x", 1, 1);
    let (status, problem) =
        problem(deliver(&app, &body, &now(), WEBHOOK_SECRET, "d-1").await).await;
    assert_eq!(status, 401);
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("CHATWOOT_WEBHOOK_SECRETS"));
    let hc: Value = reqwest::get(format!("{}/hc", app.api.address))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        hc["webhooks"]["status"]
            .as_str()
            .unwrap()
            .starts_with("refusing"),
        "{hc}"
    );
}

#[tokio::test]
async fn the_unsigned_path_token_is_off_by_default_and_works_when_configured() {
    const PATH_TOKEN: &str = "pathtoken0123456789abcdefghijklmnopq";
    let body = fixture("webhook_message_created_incoming.json").to_string();
    let post = |app: &TestApp, token: &str| {
        app.api
            .client
            .post(format!("{}/api/webhooks/chatwoot/{token}", app.api.address))
            .body(body.clone())
            .send()
    };
    let off = spawn_app().await;
    assert_eq!(post(&off, PATH_TOKEN).await.unwrap().status(), 401);
    let on = spawn_app_with(SandboxConfig::default(), |s| {
        s.webhook_path_token = Some(SecretString::from(PATH_TOKEN));
    })
    .await;
    assert_eq!(post(&on, "wrong-token").await.unwrap().status(), 401);
    assert_eq!(post(&on, PATH_TOKEN).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_marker_on_a_message_that_is_not_the_replys_changes_nothing_and_is_counted() {
    let app = spawn_app().await;
    app.api.post_reply(&reply("gr-own", 5)).await;
    let delivered = app
        .api
        .wait_for_status("gr-own", "delivered", Duration::from_secs(5))
        .await;
    let ours = delivered["chatwoot_message_id"].as_i64().unwrap();
    let mut other_account: Value = serde_json::from_str(&failed_update("gr-own", 5, ours)).unwrap();
    other_account["account"]["id"] = json!(2);
    let mut incoming = echo_body("gr-own", 5, ours);
    incoming["message_type"] = json!("incoming");
    let foreign = [
        ("another conversation", failed_update("gr-own", 6, ours)),
        ("another account", other_account.to_string()),
        ("incoming", incoming.to_string()),
        ("another message", echo("gr-own", 5, ours + 1000)),
        (
            "another message's failure",
            failed_update("gr-own", 5, ours + 1001),
        ),
    ];
    for (i, (what, body)) in foreign.iter().enumerate() {
        let response = deliver(&app, body, &now(), WEBHOOK_SECRET, &format!("d-{i}")).await;
        assert_eq!(response.status(), 200, "{what}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "mismatch", "{what}");
    }
    let record: Value = app.api.get_reply("gr-own").await.json().await.unwrap();
    assert_eq!(record["status"], "delivered", "{record}");
    assert_eq!(record["chatwoot_message_id"], ours);
    assert!(record["channel_status"].is_null(), "{record}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("goldrelay_webhook_mismatches_total 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_agent_retry_without_the_marker_brings_a_failed_reply_back_to_sent() {
    let app = spawn_app().await;
    app.chatwoot.set_webhook(
        format!("{}/api/webhooks/chatwoot", app.api.address),
        Some(WEBHOOK_SECRET.into()),
    );
    app.api.post_reply(&reply("gr-retry", 4)).await;
    let record = app
        .api
        .wait_for_status("gr-retry", "confirmed", Duration::from_secs(5))
        .await;
    let message_id = record["chatwoot_message_id"].as_i64().unwrap();
    let error = "(#131047) Re-engagement message";
    assert!(
        app.chatwoot
            .set_status(message_id, "failed", Some(error))
            .await
    );
    let record: Value = app.api.get_reply("gr-retry").await.json().await.unwrap();
    assert_eq!(
        (&record["channel_status"], &record["channel_error"]),
        (&json!("failed"), &json!(error))
    );
    // Chatwoot 4.13 empties content_attributes on retry: no marker comes back.
    assert!(app.chatwoot.agent_retry(message_id).await);
    let record: Value = app.api.get_reply("gr-retry").await.json().await.unwrap();
    assert_eq!(record["channel_status"], "sent", "{record}");
    assert!(record["channel_error"].is_null(), "{record}");
}

async fn wait_for_channel_status(app: &crate::helpers::TestApp, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let record: Value = app.api.get_reply(id).await.json().await.unwrap();
        if record["channel_status"] == status {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel status never became {status}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_status_change_no_event_shows_is_read_from_chatwoot_once_newer_messages_exist() {
    let app = spawn_app().await;
    app.chatwoot.set_webhook(
        format!("{}/api/webhooks/chatwoot", app.api.address),
        Some(WEBHOOK_SECRET.into()),
    );
    app.api.post_reply(&reply("gr-buried-status", 14)).await;
    let record = app
        .api
        .wait_for_status("gr-buried-status", "confirmed", Duration::from_secs(5))
        .await;
    let message_id = record["chatwoot_message_id"].as_i64().unwrap();
    // Now ours is no longer the latest: its updates' payloads list the newer one.
    crate::helpers::agent_says(&app.chatwoot, 14, "Anything else I can do?").await;
    app.chatwoot
        .set_status(message_id, "failed", Some("24 hour window closed"))
        .await;
    let record = wait_for_channel_status(&app, "gr-buried-status", "failed").await;
    assert_eq!(record["channel_error"], "24 hour window closed", "{record}");
    app.chatwoot.set_status(message_id, "delivered", None).await;
    let record = wait_for_channel_status(&app, "gr-buried-status", "delivered").await;
    assert!(record["channel_error"].is_null(), "{record}");
}

/// PostgreSQL refuses NUL in text and jsonb; Chatwoot does not retry a
/// webhook, so an event carrying one must still be stored and applied.
#[tokio::test]
async fn an_event_whose_texts_hold_nul_is_stored_and_applied() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-nul", 15)).await;
    let record = app
        .api
        .wait_for_status("gr-nul", "delivered", Duration::from_secs(5))
        .await;
    let message_id = record["chatwoot_message_id"].as_i64().unwrap();
    let mut body = echo_body("gr-nul", 15, message_id);
    body["content"] = json!("a customer wrote \u{0} here");
    body["content_attributes"]["nul\u{0}key"] = json!("x\u{0}y");
    let response = deliver(&app, &body.to_string(), &now(), WEBHOOK_SECRET, "d-nul").await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let record = app
        .api
        .wait_for_status("gr-nul", "confirmed", Duration::from_secs(5))
        .await;
    assert_eq!(record["chatwoot_message_id"], message_id);
}

/// Reads the record until its channel status is `status` (or panics).
async fn wait_for_channel(app: &crate::helpers::TestApp, reply_id: &str, status: &str) -> Value {
    app.api
        .wait_until(reply_id, status, Duration::from_secs(10), |r| {
            r["channel_status"] == status
        })
        .await
}

/// A delivered reply's channel status is read back from Chatwoot every
/// `GOLDRELAY_STATUS_RECONCILE`, so a change no webhook reported (Chatwoot
/// never retries one: `lib/webhooks/trigger.rb`) still reaches the record,
/// until the status is final.
#[tokio::test]
async fn a_status_change_no_webhook_reported_is_read_back_from_chatwoot() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.status_reconcile = Duration::from_millis(500);
    })
    .await;
    app.api.accept(&reply("gr-quiet", 80)).await;
    let delivered = app
        .api
        .wait_for_status("gr-quiet", "delivered", Duration::from_secs(5))
        .await;
    let message_id = delivered["chatwoot_message_id"].as_i64().unwrap();
    wait_for_channel(&app, "gr-quiet", "sent").await;
    assert!(app
        .chatwoot
        .set_status_silently(message_id, "delivered", None));
    wait_for_channel(&app, "gr-quiet", "delivered").await;
    assert!(app.chatwoot.set_status_silently(message_id, "read", None));
    wait_for_channel(&app, "gr-quiet", "read").await;
    // Final: no more reads of it.
    let lists = app.chatwoot.lists();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.chatwoot.lists(), lists, "a read status was read again");
}

/// An event is a hint: a late `sent` after Chatwoot moved the message to
/// `failed` is read back, and the record ends with what Chatwoot holds.
#[tokio::test]
async fn a_late_event_cannot_leave_a_status_chatwoot_does_not_hold() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-late", 81)).await;
    let delivered = app
        .api
        .wait_for_status("gr-late", "delivered", Duration::from_secs(5))
        .await;
    let message_id = delivered["chatwoot_message_id"].as_i64().unwrap();
    app.chatwoot
        .set_status_silently(message_id, "failed", Some("undeliverable"));
    let mut late = echo_body("gr-late", 81, message_id);
    late["event"] = json!("message_updated");
    late["status"] = json!("sent");
    let response = deliver(&app, &late.to_string(), &now(), WEBHOOK_SECRET, "d-late").await;
    assert_eq!(response.status(), 200);
    let record = wait_for_channel(&app, "gr-late", "failed").await;
    assert_eq!(record["channel_error"], "undeliverable", "{record}");
}

/// One reply whose status cannot be read (its conversation was deleted:
/// Chatwoot answers 404) waits alone; every other status still converges.
#[tokio::test]
async fn one_failing_status_read_holds_up_no_other() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.status_reconcile = Duration::from_millis(300);
    })
    .await;
    let mut messages = Vec::new();
    for (id, conversation) in [("gr-gone", 82), ("gr-here", 83)] {
        app.api.accept(&reply(id, conversation)).await;
        let record = app
            .api
            .wait_for_status(id, "delivered", Duration::from_secs(5))
            .await;
        messages.push(record["chatwoot_message_id"].as_i64().unwrap());
    }
    app.chatwoot.set_faults(Faults {
        deleted_conversations: vec![82],
        ..Faults::default()
    });
    for message_id in &messages {
        app.chatwoot
            .set_status_silently(*message_id, "delivered", None);
    }
    wait_for_channel(&app, "gr-here", "delivered").await;
    assert_ne!(
        app.api.record("gr-gone").await["channel_status"],
        "delivered"
    );
}
