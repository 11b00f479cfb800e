//! Bearer authentication of Support's endpoints.

use crate::export::VIEWER_TOKEN;
use crate::helpers::{
    assert_problem, creates_of, reply, spawn_app, spawn_app_with, OPERATOR_TOKEN, OTHER_TOKEN,
    TOKEN,
};
use goldrelay::sandbox::SandboxConfig;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::Response;

/// Asserts a 401 that challenges for a bearer token and echoes nothing of `presented`.
async fn assert_refused(response: Response, presented: &str) {
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    for (name, value) in response.headers() {
        let value = value.to_str().unwrap_or_default();
        assert!(
            presented.is_empty() || !value.contains(presented),
            "header {name} echoes the token"
        );
    }
    let problem = assert_problem(response, 401).await;
    assert!(
        presented.is_empty() || !problem.to_string().contains(presented),
        "the body echoes the token: {problem}"
    );
}

#[tokio::test]
async fn a_reply_without_an_authorization_header_is_rejected_with_401() {
    let app = spawn_app().await;
    let response = app
        .api
        .webhook()
        .json(&reply("gr-1", 1))
        .send()
        .await
        .unwrap();
    assert_refused(response, "").await;
}

#[tokio::test]
async fn a_reply_with_a_malformed_authorization_header_is_rejected_with_401() {
    let app = spawn_app().await;
    for header in [
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        TOKEN.to_owned(),
        format!("Basic {TOKEN}"),
        format!("Token {TOKEN}"),
        format!("Bearer{TOKEN}"),
    ] {
        let response = app
            .api
            .webhook()
            .header(AUTHORIZATION, &header)
            .json(&reply("gr-1", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "accepted {header:?}");
        assert_refused(response, "").await;
    }
}

#[tokio::test]
async fn a_reply_with_an_unknown_token_is_rejected_with_401() {
    let app = spawn_app().await;
    let guess = "guessed-token-that-nobody-configured-42";
    let response = app
        .api
        .webhook()
        .bearer_auth(guess)
        .json(&reply("gr-1", 1))
        .send()
        .await
        .unwrap();
    assert_refused(response, guess).await;
    assert_problem(app.api.get_reply("gr-1").await, 404).await;
}

#[tokio::test]
async fn a_token_that_is_a_prefix_of_a_configured_one_is_rejected_with_401() {
    let app = spawn_app().await;
    let prefix = &TOKEN[..TOKEN.len() - 1];
    let response = app
        .api
        .webhook()
        .bearer_auth(prefix)
        .json(&reply("gr-1", 1))
        .send()
        .await
        .unwrap();
    assert_refused(response, prefix).await;
}

#[tokio::test]
async fn the_second_configured_token_is_accepted_too() {
    let app = spawn_app().await;
    let response = app
        .api
        .webhook()
        .bearer_auth(OTHER_TOKEN)
        .json(&reply("gr-rotated", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let response = app
        .api
        .client
        .get(format!("{}/api/gold-replies/gr-rotated", app.api.address))
        .bearer_auth(OTHER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let response = app
        .api
        .webhook()
        .header(AUTHORIZATION, format!("bearer {TOKEN}"))
        .json(&reply("gr-lower", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn an_unauthenticated_request_is_refused_before_its_body_is_looked_at() {
    let app = spawn_app().await;
    let response = app
        .api
        .webhook()
        .header(CONTENT_TYPE, "text/plain")
        .body("not even json")
        .send()
        .await
        .unwrap();
    assert_refused(response, "").await;
}

#[tokio::test]
async fn a_valid_token_is_not_echoed_in_an_error_answer() {
    let app = spawn_app().await;
    let mut body = reply("gr-echo", 1);
    body["content"] = serde_json::json!("");
    let response = app.api.post_reply(&body).await;
    assert!(response
        .headers()
        .values()
        .all(|v| !v.to_str().unwrap_or_default().contains(TOKEN)));
    let problem = assert_problem(response, 422).await;
    assert!(!problem.to_string().contains(TOKEN), "{problem}");
}

#[tokio::test]
async fn reading_a_status_record_needs_a_valid_token() {
    let app = spawn_app().await;
    app.api.accept(&reply("gr-private", 1)).await;
    let url = format!("{}/api/gold-replies/gr-private", app.api.address);
    let anonymous = app.api.client.get(&url).send().await.unwrap();
    assert_refused(anonymous, "").await;
    let guess = "guessed-token-that-nobody-configured-42";
    let wrong = app
        .api
        .client
        .get(&url)
        .bearer_auth(guess)
        .send()
        .await
        .unwrap();
    assert_refused(wrong, guess).await;
}

/// The viewer token sits in the Dashboard App URL that every agent can read:
/// a post with it must reach neither the store nor a customer.
#[tokio::test]
async fn a_viewer_token_cannot_post_a_reply_and_nothing_is_stored_or_sent() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
        s.operator_tokens = vec![OPERATOR_TOKEN.into()];
    })
    .await;
    let response = app
        .api
        .webhook()
        .bearer_auth(VIEWER_TOKEN)
        .json(&reply("gr-by-viewer", 1))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 403).await;
    assert_eq!(problem["required_role"], "support or operator");
    // The reply id is still free for Support's real reply.
    let read = |token: &'static str| {
        app.api
            .client
            .get(format!("{}/api/gold-replies/gr-by-viewer", app.api.address))
            .bearer_auth(token)
            .send()
    };
    assert_problem(read(VIEWER_TOKEN).await.unwrap(), 404).await;
    app.api.accept(&reply("gr-by-viewer", 1)).await;
    app.settle(1).await;
    assert_eq!(creates_of(&app.chatwoot, "gr-by-viewer"), 1);
    // An operator may post, as the README's roles table says.
    let by_operator = app
        .api
        .webhook()
        .bearer_auth(OPERATOR_TOKEN)
        .json(&reply("gr-by-operator", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(by_operator.status(), 202);
}
