//! What a posted body must look like: media type, size, JSON, and every field rule.

use crate::helpers::{
    assert_problem, error_fields, reply, spawn_app, spawn_app_with, TestApp, TOKEN,
};
use goldrelay::sandbox::SandboxConfig;
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `reply(id, 1)` with `field` set to `value` (or removed when `value` is `None`).
fn with(id: &str, field: &str, value: Option<Value>) -> Value {
    let mut body = reply(id, 1);
    let object = body.as_object_mut().unwrap();
    match value {
        Some(v) => object.insert(field.to_owned(), v),
        None => object.remove(field),
    };
    body
}

/// Posts `body` and asserts a 422 naming exactly `fields`.
async fn assert_invalid(app: &TestApp, body: &Value, fields: &[&str]) {
    let problem = assert_problem(app.api.post_reply(body).await, 422).await;
    assert_eq!(error_fields(&problem), fields, "for {body}");
}

/// A body of exactly `len` bytes, padded inside `metadata`.
fn body_of_len(id: &str, len: usize) -> String {
    let mut body = reply(id, 1);
    body["metadata"] = json!({ "pad": "" });
    let bare = body.to_string().len();
    assert!(len >= bare, "{len} is shorter than an empty padded body");
    body["metadata"]["pad"] = json!("x".repeat(len - bare));
    let text = body.to_string();
    assert_eq!(text.len(), len);
    text
}

#[tokio::test]
async fn a_body_that_is_not_declared_as_json_is_rejected_with_415() {
    let app = spawn_app().await;
    let body = reply("gr-415", 1).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app.api.webhook().bearer_auth(TOKEN).body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "for {content_type:?}");
        assert_problem(response, 415).await;
    }
    assert_problem(app.api.get_reply("gr-415").await, 404).await;
}

#[tokio::test]
async fn json_with_a_charset_parameter_is_accepted() {
    let app = spawn_app().await;
    let response = app
        .api
        .webhook()
        .bearer_auth(TOKEN)
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(reply("gr-charset", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_body_over_256_kib_is_rejected_with_413_by_default() {
    let app = spawn_app().await;
    let response = app
        .api
        .post_raw(body_of_len("gr-big", 256 * 1024 + 1))
        .await;
    assert_problem(response, 413).await;
    assert_problem(app.api.get_reply("gr-big").await, 404).await;
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_accepted() {
    let app = spawn_app().await;
    let response = app.api.post_raw(body_of_len("gr-limit", 256 * 1024)).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.max_body_bytes = 1024).await;
    assert_problem(app.api.post_raw(body_of_len("gr-over", 1025)).await, 413).await;
    let response = app.api.post_raw(body_of_len("gr-under", 1024)).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_chunked_body_without_a_length_is_still_held_to_the_limit() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.max_body_bytes = 1024).await;
    let body = body_of_len("gr-chunked", 2000);
    let host = app.api.address.trim_start_matches("http://");
    let request = format!(
        "POST /api/webhooks/gold-replies HTTP/1.1\r\nHost: {host}\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The server may close as soon as it has answered; what arrived is enough.
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_problem(app.api.get_reply("gr-chunked").await, 404).await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_rejected_with_400() {
    let app = spawn_app().await;
    for body in ["{\"reply_id\": \"gr-1\",", "not json", ""] {
        let response = app.api.post_raw(body).await;
        assert_eq!(response.status(), 400, "for {body:?}");
        assert_problem(response, 400).await;
    }
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_is_rejected_with_422() {
    let app = spawn_app().await;
    for body in [json!([reply("gr-1", 1)]), json!("gr-1"), json!(null)] {
        let problem = assert_problem(app.api.post_reply(&body).await, 422).await;
        assert_eq!(error_fields(&problem).len(), 1, "{problem}");
    }
}

#[tokio::test]
async fn every_violation_is_listed_at_once() {
    let app = spawn_app().await;
    let body = json!({
        "reply_id": "has space",
        "account_id": 0,
        "action": "send",
        "content": "   ",
        "private": "yes",
        "approved_by": "",
        "draft": "a draft",
        "tags": "urgent",
        "metadata": [1],
        "colour": "gold",
    });
    let problem = assert_problem(app.api.post_reply(&body).await, 422).await;
    let mut fields = error_fields(&problem);
    fields.sort();
    let mut expected = [
        "account_id",
        "action",
        "approved_by",
        "colour",
        "content",
        "conversation_id",
        "draft",
        "metadata",
        "private",
        "reply_id",
        "tags",
    ];
    expected.sort();
    assert_eq!(fields, expected, "{problem}");
}

#[tokio::test]
async fn an_unknown_top_level_field_is_rejected_with_422() {
    let app = spawn_app().await;
    let body = with("gr-extra", "priority", Some(json!("high")));
    assert_invalid(&app, &body, &["priority"]).await;
}

#[tokio::test]
async fn unknown_fields_inside_draft_and_metadata_are_stored_as_given() {
    let app = spawn_app().await;
    let mut body = reply("gr-nested", 1);
    body["draft"] =
        json!({"model": "m-1", "sources": [{"url": "https://x.example"}], "anything": null});
    body["metadata"] = json!({"ticket": {"id": 9}});
    app.api.accept(&body).await;
}

#[tokio::test]
async fn reply_id_must_be_1_to_128_characters_of_the_allowed_set() {
    let app = spawn_app().await;
    let broken = [
        None,
        Some(json!(null)),
        Some(json!("")),
        Some(json!("a".repeat(129))),
        Some(json!("has space")),
        Some(json!("slash/y")),
        Some(json!("caf\u{e9}")),
        Some(json!("semi;colon")),
        Some(json!(42)),
    ];
    for value in broken {
        assert_invalid(&app, &with("unused", "reply_id", value), &["reply_id"]).await;
    }
    let longest = "b".repeat(128);
    for id in ["AZaz09._:-", "x", longest.as_str()] {
        app.api.accept(&with(id, "reply_id", Some(json!(id)))).await;
    }
}

#[tokio::test]
async fn account_and_conversation_ids_must_be_integers_of_at_least_1() {
    let app = spawn_app().await;
    for field in ["account_id", "conversation_id"] {
        for value in [
            None,
            Some(json!(0)),
            Some(json!(-3)),
            Some(json!(1.5)),
            Some(json!("7")),
            Some(json!(null)),
        ] {
            assert_invalid(&app, &with("gr-ids", field, value), &[field]).await;
        }
    }
}

#[tokio::test]
async fn action_must_be_one_of_the_three_decisions() {
    let app = spawn_app().await;
    for value in [
        None,
        Some(json!("send")),
        Some(json!("APPROVE_SEND")),
        Some(json!(1)),
    ] {
        assert_invalid(&app, &with("gr-action", "action", value), &["action"]).await;
    }
    for (id, action) in [
        ("gr-as", "approve_send"),
        ("gr-a", "approve"),
        ("gr-r", "reject"),
    ] {
        app.api
            .accept(&with(id, "action", Some(json!(action))))
            .await;
    }
}

#[tokio::test]
async fn content_must_not_be_blank_and_at_most_150000_characters() {
    // Room for 150 000 two-byte characters, so the size limit does not answer first.
    let app = spawn_app_with(SandboxConfig::default(), |s| s.max_body_bytes = 1 << 20).await;
    let too_long = "é".repeat(150_001);
    for value in [
        None,
        Some(json!("")),
        Some(json!(" \n\t ")),
        Some(json!(too_long)),
        Some(json!(["text"])),
    ] {
        assert_invalid(&app, &with("gr-content", "content", value), &["content"]).await;
    }
    // Characters, not bytes: 150 000 two-byte characters still fit.
    let longest = "é".repeat(150_000);
    app.api
        .accept(&with("gr-longest", "content", Some(json!(longest))))
        .await;
}

/// Chatwoot holds the text it receives to its limit, and goldrelay escapes
/// Liquid's openers in it (`{{` becomes 10 characters): a reply to be sent is
/// held to the limit as Chatwoot will count it, or every attempt would be
/// refused with 422 and the reply would die.
#[tokio::test]
async fn a_reply_to_send_is_held_to_the_limit_as_chatwoot_receives_it() {
    let app = spawn_app().await;
    let near = format!("{{{{{}", "x".repeat(149_993));
    assert_eq!(near.chars().count(), 149_995);
    let body = with("gr-near", "content", Some(json!(near)));
    let problem = assert_problem(app.api.post_reply(&body).await, 422).await;
    assert_eq!(error_fields(&problem), ["content"], "{problem}");
    assert!(
        problem.to_string().contains("as Chatwoot receives it"),
        "{problem}"
    );
    // Sent as a template, the text goes as it is; kept only, it is not sent.
    let mut template = with("gr-near-liquid", "content", Some(json!(near)));
    template["liquid"] = json!(true);
    app.api.accept(&template).await;
    let mut kept = with("gr-near-kept", "content", Some(json!(near)));
    kept["action"] = json!("approve");
    app.api.accept(&kept).await;
}

#[tokio::test]
async fn private_must_be_a_boolean() {
    let app = spawn_app().await;
    for value in [json!("true"), json!(1)] {
        assert_invalid(
            &app,
            &with("gr-private", "private", Some(value)),
            &["private"],
        )
        .await;
    }
    app.api
        .accept(&with("gr-private", "private", Some(json!(true))))
        .await;
}

#[tokio::test]
async fn approved_by_is_required_to_approve_but_not_to_reject() {
    let app = spawn_app().await;
    for action in ["approve_send", "approve"] {
        let mut body = with("gr-who", "approved_by", None);
        body["action"] = json!(action);
        assert_invalid(&app, &body, &["approved_by"]).await;
    }
    let mut rejected = with("gr-rejected", "approved_by", None);
    rejected["action"] = json!("reject");
    app.api.accept(&rejected).await;
}

#[tokio::test]
async fn approved_by_must_be_1_to_256_characters() {
    let app = spawn_app().await;
    for value in [json!(""), json!("p".repeat(257)), json!(7)] {
        assert_invalid(
            &app,
            &with("gr-who", "approved_by", Some(value)),
            &["approved_by"],
        )
        .await;
    }
    let longest = "p".repeat(256);
    app.api
        .accept(&with("gr-who", "approved_by", Some(json!(longest))))
        .await;
}

#[tokio::test]
async fn draft_and_metadata_must_be_objects() {
    let app = spawn_app().await;
    for field in ["draft", "metadata"] {
        for value in [json!("text"), json!([1, 2]), json!(3), json!(true)] {
            assert_invalid(&app, &with("gr-obj", field, Some(value)), &[field]).await;
        }
    }
    let mut body = reply("gr-obj", 1);
    body["draft"] = json!({});
    body["metadata"] = json!({});
    app.api.accept(&body).await;
}

#[tokio::test]
async fn tags_must_be_at_most_32_strings_of_1_to_64_characters() {
    let app = spawn_app().await;
    let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    assert_invalid(&app, &with("gr-tags", "tags", Some(json!(many))), &["tags"]).await;
    assert_invalid(
        &app,
        &with("gr-tags", "tags", Some(json!("urgent"))),
        &["tags"],
    )
    .await;
    let bad = json!(["ok", "", "x".repeat(65), 5]);
    assert_invalid(
        &app,
        &with("gr-tags", "tags", Some(bad)),
        &["tags[1]", "tags[2]", "tags[3]"],
    )
    .await;
    let mut most: Vec<String> = (0..31).map(|i| format!("t{i}")).collect();
    most.push("y".repeat(64));
    app.api
        .accept(&with("gr-tags", "tags", Some(json!(most))))
        .await;
}

#[tokio::test]
async fn a_422_lists_each_violation_as_field_and_message() {
    let app = spawn_app().await;
    let body = with("gr-shape", "content", Some(json!("")));
    let problem = assert_problem(app.api.post_reply(&body).await, 422).await;
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{problem}");
    assert_eq!(errors[0]["field"], "content");
    assert!(errors[0]["message"].is_string());
    assert_problem(app.api.get_reply("gr-shape").await, 404).await;
}
