use crate::helpers::{reply, spawn_app};
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn an_approved_reply_is_accepted_and_delivered_to_chatwoot() {
    let app = spawn_app().await;
    let response = app.post_reply(&reply("gr-1", 7)).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["location"], "/api/gold-replies/gr-1");
    let record = app
        .wait_for_status("gr-1", "delivered", Duration::from_secs(5))
        .await;
    let messages = app.chatwoot.messages(1, 7);
    assert_eq!(messages.len(), 1);
    assert_eq!(record["chatwoot_message_id"], Value::from(messages[0].id));
    assert_eq!(messages[0].content_attributes["gold_reply_id"], "gr-1");
}
