//! The approved text is what the customer reads. Chatwoot renders outgoing
//! content as Liquid (`app/models/concerns/liquidable.rb`), and the sandbox
//! does the same; goldrelay sends a reply so that, once rendered, it reads
//! exactly as approved, unless the reply asks for Liquid (`"liquid": true`).

use crate::helpers::{reply, spawn_app, PATIENCE};
use goldrelay::sandbox::CONTACT_NAME;
use serde_json::json;

async fn delivered_content(body: serde_json::Value) -> String {
    let app = spawn_app().await;
    let id = body["reply_id"].as_str().unwrap().to_owned();
    let conversation = body["conversation_id"].as_i64().unwrap();
    app.api.accept(&body).await;
    app.api.wait_for_status(&id, "delivered", PATIENCE).await;
    let messages = app.chatwoot.messages(1, conversation);
    let ours = messages
        .iter()
        .find(|m| m.content_attributes["gold_reply_id"] == id.as_str())
        .expect("the reply reached the conversation");
    ours.content.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn liquid_markup_in_an_approved_reply_reaches_the_customer_exactly_as_approved() {
    // Valid Liquid: sent as it is, Chatwoot would fill the name, drop the
    // unknown variable and unwrap the raw block.
    let approved = "Hi {{contact.name}}! Type `{{name}}` or {% raw %}{{x}}{% endraw %} here; \
                    ```\n{% if x %}{{y}}{% endif %}\n``` {{ unknown }} 100%";
    let mut body = reply("gr-liquid-literal", 81);
    body["content"] = json!(approved);
    assert_eq!(delivered_content(body).await, approved);
}

#[tokio::test]
async fn a_reply_that_asks_for_liquid_gets_the_contacts_name_filled_in() {
    let mut body = reply("gr-liquid-on", 82);
    body["content"] = json!("Hi {{contact.name}}, `{{kept}}` stays.");
    body["liquid"] = json!(true);
    assert_eq!(
        delivered_content(body).await,
        format!("Hi {CONTACT_NAME}, `{{{{kept}}}}` stays.")
    );
}

#[tokio::test]
async fn text_with_backticks_and_no_liquid_is_sent_untouched() {
    let approved = "Run `ls -la` then ``` a ` b ``` {not liquid} 50%";
    let mut body = reply("gr-backticks", 83);
    body["content"] = json!(approved);
    assert_eq!(delivered_content(body).await, approved);
}
