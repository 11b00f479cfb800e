//! The reply id is the idempotency key: the same reply again is a 200 and no
//! second delivery; a different reply under a used id is a 409.

use crate::helpers::{assert_problem, creates_of, reply, spawn_app, PATIENCE};
use serde_json::{json, Value};

#[tokio::test]
async fn the_same_reply_again_is_answered_with_200_and_is_not_delivered_twice() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-twice", 8)).await;
    let delivered = app
        .api
        .wait_for_status("gr-twice", "delivered", PATIENCE)
        .await;
    let again = app.api.post_reply(&reply("gr-twice", 8)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["location"], "/api/gold-replies/gr-twice");
    let record: Value = again.json().await.unwrap();
    assert_eq!(record["status"], "delivered");
    assert_eq!(
        record["chatwoot_message_id"],
        delivered["chatwoot_message_id"]
    );
    let marker = app.settle(8).await;
    assert_eq!(app.delivered_ids(8), ["gr-twice", marker.as_str()]);
    assert_eq!(creates_of(&app.chatwoot, "gr-twice"), 1);
}

#[tokio::test]
async fn the_same_reply_again_while_it_is_queued_is_answered_with_200() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-queued", 9)).await;
    let again = app.api.post_reply(&reply("gr-queued", 9)).await;
    assert_eq!(again.status(), 200);
    let record: Value = again.json().await.unwrap();
    assert_eq!(record["reply_id"], "gr-queued");
    let marker = app.settle(9).await;
    assert_eq!(app.delivered_ids(9), ["gr-queued", marker.as_str()]);
}

#[tokio::test]
async fn the_same_reply_with_keys_reordered_and_defaults_spelled_out_is_the_same_reply() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-order", 10)).await;
    let reordered = r#"{
        "approved_by": "priya@example.com",
        "content": "Reply gr-order",
        "tags": [],
        "action": "approve_send",
        "private": false,
        "conversation_id": 10,
        "account_id": 1,
        "reply_id": "gr-order"
    }"#;
    let again = app.api.post_raw(reordered).await;
    assert_eq!(again.status(), 200);
    let marker = app.settle(10).await;
    assert_eq!(app.delivered_ids(10), ["gr-order", marker.as_str()]);
}

#[tokio::test]
async fn a_different_reply_under_a_used_reply_id_is_rejected_with_409() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-taken", 11)).await;
    let changes = [
        ("content", json!("Something else entirely")),
        ("conversation_id", json!(12)),
        ("private", json!(true)),
        ("action", json!("approve")),
        ("tags", json!(["late"])),
        ("metadata", json!({"ticket": 1})),
    ];
    for (field, value) in changes {
        let mut body = reply("gr-taken", 11);
        body[field] = value;
        let problem = assert_problem(app.api.post_reply(&body).await, 409).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("gr-taken"),
            "{problem}"
        );
    }
    let record = app.api.record("gr-taken").await;
    assert_eq!(record["conversation_id"], 11);
    assert_eq!(record["action"], "approve_send");
    app.settle(11).await;
    let messages = app.chatwoot.messages(1, 11);
    assert_eq!(messages[0].content, "Reply gr-taken");
    assert!(!messages[0].private);
    assert!(app.chatwoot.messages(1, 12).is_empty());
}

#[tokio::test]
async fn the_same_reply_posted_concurrently_is_accepted_exactly_once() {
    let app = spawn_app().await;
    let body = reply("gr-race", 13);
    let posts = (0..10).map(|_| app.api.post_reply(&body));
    let statuses: Vec<u16> = futures_util::future::join_all(posts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    let marker = app.settle(13).await;
    assert_eq!(app.delivered_ids(13), ["gr-race", marker.as_str()]);
}

#[tokio::test]
async fn a_recorded_reply_posted_again_is_answered_with_200_and_stays_recorded() {
    let app = spawn_app().await;
    let mut body = reply("gr-kept", 14);
    body["action"] = json!("approve");
    app.api.accept(&body).await;
    let again = app.api.post_reply(&body).await;
    assert_eq!(again.status(), 200);
    let record: Value = again.json().await.unwrap();
    assert_eq!(record["status"], "recorded");
}
