//! Replies reach a conversation in the order they were accepted; one
//! conversation waiting never holds up another.

use crate::helpers::{creates_of, reply, spawn_app, spawn_app_with, wait_for_create, PATIENCE};
use goldrelay::sandbox::{Faults, SandboxConfig};
use std::time::Duration;

#[tokio::test]
async fn a_conversation_waiting_for_a_retry_keeps_its_order_while_another_conversation_proceeds() {
    let app = spawn_app().await;
    // The first request goldrelay makes, A1's, is refused with a 503 that asks
    // for 10 s: long enough that B is delivered well before A1 may go again.
    app.chatwoot.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(503),
        retry_after: Some(10),
        ..Faults::default()
    });
    let (a, b) = (41, 42);
    for id in ["a1", "a2", "a3"] {
        app.api.accept(&reply(id, a)).await;
    }
    wait_for_create(&app.chatwoot, "a1").await;
    for id in ["b1", "b2", "b3"] {
        app.api.accept(&reply(id, b)).await;
    }
    app.api.wait_for_status("b3", "delivered", PATIENCE).await;
    assert_eq!(app.delivered_ids(b), ["b1", "b2", "b3"]);

    // B went through while A is still held by its first reply.
    let a1 = app.api.record("a1").await;
    assert_eq!(a1["status"], "queued", "{a1}");
    assert!(app.chatwoot.messages(1, a).is_empty(), "A was not held");
    for later in ["a2", "a3"] {
        let record = app.api.record(later).await;
        assert_eq!(record["status"], "queued", "{record}");
        assert_eq!(record["attempts"], 0, "{later} jumped the queue: {record}");
        assert_eq!(
            creates_of(&app.chatwoot, later),
            0,
            "{later} jumped the queue"
        );
    }

    // A1's retry waits out the 10 s first.
    app.api
        .wait_for_status("a3", "delivered", PATIENCE * 2)
        .await;
    assert_eq!(app.delivered_ids(a), ["a1", "a2", "a3"]);
}

#[tokio::test]
async fn replies_to_one_conversation_are_delivered_in_acceptance_order_through_failures() {
    let app = spawn_app().await;
    app.chatwoot.set_faults(Faults {
        fail_next: 4,
        fail_status: Some(503),
        ..Faults::default()
    });
    let ids: Vec<String> = (1..=10).map(|i| format!("seq-{i:02}")).collect();
    for id in &ids {
        app.api.accept(&reply(id, 43)).await;
    }
    app.api
        .wait_for_status(ids.last().unwrap(), "delivered", PATIENCE)
        .await;
    assert_eq!(app.delivered_ids(43), ids);
}

#[tokio::test]
async fn a_slow_chatwoot_answer_in_one_conversation_does_not_hold_up_another() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_timeout = Duration::from_secs(20);
    })
    .await;
    // A's message is created at once, but its answer takes 8 s.
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 8000,
        ..Faults::default()
    });
    app.api.accept(&reply("slow-a", 44)).await;
    wait_for_create(&app.chatwoot, "slow-a").await;
    app.api.accept(&reply("fast-b", 45)).await;
    app.api
        .wait_for_status("fast-b", "delivered", PATIENCE)
        .await;
    let slow = app.api.record("slow-a").await;
    assert_eq!(slow["status"], "queued", "B waited for A: {slow}");
    let slow = app
        .api
        .wait_for_status("slow-a", "delivered", PATIENCE * 2)
        .await;
    assert_eq!(slow["attempts"], 1, "{slow}");
    assert_eq!(app.delivered_ids(44), ["slow-a"]);
}
