//! Accepting a reply, reading its status record, and `/hc`.

use crate::helpers::{assert_problem, reply, spawn_app, PATIENCE};
use chrono::{DateTime, Utc};
use serde_json::Value;

fn time(record: &Value, field: &str) -> DateTime<Utc> {
    let raw = record[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing: {record}"));
    DateTime::parse_from_rfc3339(raw)
        .unwrap_or_else(|e| panic!("{field} is not RFC 3339 ({e}): {raw}"))
        .with_timezone(&Utc)
}

#[tokio::test]
async fn an_approved_reply_is_accepted_and_delivered_to_chatwoot() {
    let app = spawn_app().await;
    let response = app.api.post_reply(&reply("gr-1", 7)).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["location"], "/api/gold-replies/gr-1");
    let record = app.api.wait_for_status("gr-1", "delivered", PATIENCE).await;
    let messages = app.chatwoot.messages(1, 7);
    assert_eq!(messages.len(), 1);
    assert_eq!(record["chatwoot_message_id"], Value::from(messages[0].id));
    assert_eq!(messages[0].content_attributes["gold_reply_id"], "gr-1");
}

#[tokio::test]
async fn a_new_reply_is_answered_with_202_its_location_and_a_queued_status_record() {
    let app = spawn_app().await;
    let response = app.api.post_reply(&reply("gr-new", 3)).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["location"], "/api/gold-replies/gr-new");
    let record: Value = response.json().await.unwrap();
    assert_eq!(record["reply_id"], "gr-new");
    assert_eq!(record["account_id"], 1);
    assert_eq!(record["conversation_id"], 3);
    assert_eq!(record["action"], "approve_send");
    assert_eq!(record["status"], "queued");
    assert_eq!(record["attempts"], 0);
    assert_eq!(record["last_error"], Value::Null);
    assert_eq!(record["chatwoot_message_id"], Value::Null);
    assert_eq!(record["delivered_at"], Value::Null);
    let received = time(&record, "received_at");
    assert!(
        (Utc::now() - received).num_seconds().abs() < 60,
        "{received}"
    );
}

#[tokio::test]
async fn a_reply_can_be_read_back_as_soon_as_it_is_acknowledged() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-read", 4)).await;
    let record = app.api.record("gr-read").await;
    assert_eq!(record["reply_id"], "gr-read");
    assert_eq!(record["conversation_id"], 4);
}

#[tokio::test]
async fn a_delivered_status_record_carries_every_field_with_times_in_rfc_3339() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-fields", 5)).await;
    let record = app
        .api
        .wait_for_status("gr-fields", "delivered", PATIENCE)
        .await;
    for field in [
        "reply_id",
        "account_id",
        "conversation_id",
        "action",
        "status",
        "attempts",
        "last_error",
        "chatwoot_message_id",
        "received_at",
        "delivered_at",
    ] {
        assert!(record.get(field).is_some(), "{field} missing: {record}");
    }
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["last_error"], Value::Null);
    assert!(record["chatwoot_message_id"].is_i64(), "{record}");
    assert!(time(&record, "delivered_at") >= time(&record, "received_at"));
}

#[tokio::test]
async fn an_unknown_reply_id_is_a_404_problem() {
    let app = spawn_app().await;
    let problem = assert_problem(app.api.get_reply("never-posted").await, 404).await;
    assert!(problem["detail"].as_str().unwrap().contains("never-posted"));
}

#[tokio::test]
async fn a_reply_id_that_could_never_exist_is_a_404_problem() {
    let app = spawn_app().await;
    assert_problem(app.api.get_reply("not%20valid").await, 404).await;
}

#[tokio::test]
async fn the_health_check_needs_no_token_and_reports_version_store_and_worker() {
    let app = spawn_app().await;
    let response = app
        .api
        .client
        .get(format!("{}/hc", app.api.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"), "{body}");
    assert_eq!(body["store"]["status"], "ok", "{body}");
    let worker = body["worker"]["status"].as_str().unwrap_or_default();
    assert!(
        ["starting", "running"].contains(&worker),
        "worker state {worker:?}: {body}"
    );
}
