//! Spawns a real goldrelay on a random port, with a temporary SQLite database
//! and a sandbox Chatwoot as its peer, and talks to it over HTTP.

pub mod browser;
pub mod postgres;
pub mod relay;

use goldrelay::config::Settings;
use goldrelay::sandbox::{self, SandboxConfig, SandboxHandle};
use goldrelay::startup::Application;
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use std::time::Duration;
use tempfile::TempDir;

pub const TOKEN: &str = "test-token-0123456789abcdefghijklmnop";
pub const OTHER_TOKEN: &str = "rotated-token-0123456789abcdefghijklm";
/// An operator's token (`GOLDRELAY_OPERATOR_TOKENS`): list, retry, `/metrics`.
pub const OPERATOR_TOKEN: &str = "operator-token-0123456789abcdefghijk";
/// The Chatwoot webhook secret goldrelay is configured with.
pub const WEBHOOK_SECRET: &str = "q3Zx7PkT9mWcR2vLhN8sYdFb";
/// Long enough for anything the worker does in these tests; a test that hits
/// it has found a reply stuck for real.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub api: Api,
    pub chatwoot: SandboxHandle,
    /// Holds the temporary database for as long as the app runs.
    _dir: TempDir,
}

/// Support's view of one goldrelay: its HTTP API, nothing else.
pub struct Api {
    pub address: String,
    pub client: reqwest::Client,
}

/// Settings for tests: fast retries, a short Chatwoot timeout. Built through
/// the same loader as `serve`, so new settings get their defaults here too.
pub fn test_settings(chatwoot: &SandboxHandle, dir: &TempDir) -> Settings {
    let vars: std::collections::HashMap<&str, String> = [
        ("GOLDRELAY_LISTEN", "127.0.0.1:0".to_owned()),
        ("GOLDRELAY_TOKENS", format!("{TOKEN},{OTHER_TOKEN}")),
        ("GOLDRELAY_OPERATOR_TOKENS", OPERATOR_TOKEN.to_owned()),
        ("DATABASE_URL", database_url(dir)),
        ("CHATWOOT_BASE_URL", chatwoot.base_url()),
        ("CHATWOOT_API_TOKEN", SandboxConfig::default().user_token),
        ("GOLDRELAY_CHATWOOT_TIMEOUT", "2s".into()),
        ("GOLDRELAY_RETRY_BASE", "50ms".into()),
        ("GOLDRELAY_RETRY_MAX", "200ms".into()),
        ("GOLDRELAY_MAX_ATTEMPTS", "10".into()),
        // Short, so retries after a 5xx stay fast; tests of late commits set more.
        ("GOLDRELAY_LOOKUP_DELAY", "250ms".into()),
        ("GOLDRELAY_SEND_RATE", "0".into()),
        ("GOLDRELAY_DELIVERY_CONCURRENCY", "8".into()),
        ("GOLDRELAY_SHUTDOWN_DRAIN", "2s".into()),
        ("CHATWOOT_WEBHOOK_SECRETS", WEBHOOK_SECRET.into()),
        // Off, so other suites' counts of Chatwoot requests hold; tests/api/context.rs turns it on.
        ("GOLDRELAY_CAPTURE_CONTEXT", "0".into()),
    ]
    .into_iter()
    .collect();
    Settings::from_lookup(|name| vars.get(name).cloned()).expect("test settings are valid")
}

/// A fresh database for one test: SQLite in `dir`, or, when
/// `TEST_DATABASE_URL` names a PostgreSQL server, a schema of its own there.
pub fn database_url(dir: &TempDir) -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(admin) if !admin.is_empty() => postgres::fresh_schema(&admin),
        _ => format!("sqlite://{}/test.db", dir.path().display()),
    }
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        goldrelay::telemetry::init(goldrelay::telemetry::LogFormat::Text);
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(SandboxConfig::default(), |_| {}).await
}

/// Spawns with a customised sandbox and settings.
pub async fn spawn_app_with(sandbox: SandboxConfig, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let chatwoot = sandbox::start(sandbox, "127.0.0.1:0".parse().unwrap()).expect("sandbox starts");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&chatwoot, &dir);
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("app builds");
    let api = Api::new(format!("http://{}", app.addr()));
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        api,
        chatwoot,
        _dir: dir,
    }
}

/// A valid `approve_send` body.
pub fn reply(reply_id: &str, conversation_id: i64) -> Value {
    json!({
        "reply_id": reply_id,
        "account_id": 1,
        "conversation_id": conversation_id,
        "action": "approve_send",
        "content": format!("Reply {reply_id}"),
        "approved_by": "priya@example.com",
    })
}

impl Api {
    pub fn new(address: String) -> Self {
        Self {
            address,
            client: reqwest::Client::new(),
        }
    }

    /// `POST /api/webhooks/gold-replies` with nothing set: no token, no body.
    pub fn webhook(&self) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/api/webhooks/gold-replies", self.address))
    }

    /// Posts raw bytes as `application/json` with the first token.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.webhook()
            .bearer_auth(TOKEN)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_reply(&self, body: &Value) -> reqwest::Response {
        self.post_raw(body.to_string()).await
    }

    /// Posts a reply that must be accepted as new.
    pub async fn accept(&self, body: &Value) -> Value {
        let response = self.post_reply(body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 202, "{body} was not accepted: {text}");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn get_reply(&self, reply_id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/api/gold-replies/{reply_id}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request sent")
    }

    /// The status record of a reply that must exist.
    pub async fn record(&self, reply_id: &str) -> Value {
        let response = self.get_reply(reply_id).await;
        assert_eq!(response.status(), 200, "no record for {reply_id}");
        response.json().await.unwrap()
    }

    /// Polls the status record until `status` (or panics after `within`).
    pub async fn wait_for_status(&self, reply_id: &str, status: &str, within: Duration) -> Value {
        self.wait_until(reply_id, status, within, |r| r["status"] == status)
            .await
    }

    /// Polls the status record until `done` holds (or panics after `within`,
    /// saying it was waiting for `what`).
    pub async fn wait_until(
        &self,
        reply_id: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let record: Value = self.get_reply(reply_id).await.json().await.unwrap();
            if done(&record) {
                return record;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reply_id} never became {what}: {record}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl TestApp {
    /// `/metrics`, read with the operator's token.
    pub async fn metrics(&self) -> String {
        self.api
            .client
            .get(format!("{}/metrics", self.api.address))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Delivers one more reply to `conversation_id` and waits for it. Replies
    /// of a conversation go out in order, so once this one is delivered every
    /// job accepted before it for that conversation has been dealt with: what
    /// has not reached the sandbox by then never will. Returns the marker's id.
    pub async fn settle(&self, conversation_id: i64) -> String {
        let marker = format!("settle-{}", uuid::Uuid::new_v4());
        self.api.accept(&reply(&marker, conversation_id)).await;
        // With the sandbox's webhook on, its echo may confirm it first.
        let sent = |r: &Value| r["status"] == "delivered" || r["status"] == "confirmed";
        self.api
            .wait_until(&marker, "delivered", PATIENCE, sent)
            .await;
        marker
    }

    /// Ids of the replies whose messages the sandbox holds for a conversation, oldest first.
    pub fn delivered_ids(&self, conversation_id: i64) -> Vec<String> {
        delivered_ids(&self.chatwoot, conversation_id)
    }
}

/// Ids of the replies whose messages `chatwoot` holds for a conversation of
/// account 1, oldest first.
pub fn delivered_ids(chatwoot: &SandboxHandle, conversation_id: i64) -> Vec<String> {
    chatwoot
        .messages(1, conversation_id)
        .iter()
        .map(|m| {
            let id = m.content_attributes["gold_reply_id"].as_str();
            id.unwrap_or_default().to_owned()
        })
        .collect()
}

/// How many create requests the sandbox received for one reply, failed ones included.
pub fn creates_of(chatwoot: &SandboxHandle, reply_id: &str) -> usize {
    chatwoot
        .creates()
        .iter()
        .filter(|c| c.gold_reply_id.as_deref() == Some(reply_id))
        .count()
}

/// Waits until the sandbox has received a create request for `reply_id`.
pub async fn wait_for_create(chatwoot: &SandboxHandle, reply_id: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while creates_of(chatwoot, reply_id) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sandbox never saw a create for {reply_id}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts an RFC 9457 problem with `status` and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "a {status} came as {content_type}"
    );
    let body: Value = response.json().await.expect("a problem body is JSON");
    for member in ["type", "title", "detail"] {
        let text = body[member].as_str().unwrap_or_default();
        assert!(!text.is_empty(), "problem without {member}: {body}");
    }
    assert_eq!(body["status"], status, "{body}");
    body
}

/// The fields a 422 problem names, in its order.
pub fn error_fields(problem: &Value) -> Vec<String> {
    let errors = problem["errors"].as_array().expect("422 lists errors");
    errors
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            e["field"]
                .as_str()
                .expect("each error names its field")
                .to_owned()
        })
        .collect()
}

/// Posts a message to a sandbox conversation as an agent would (not through
/// goldrelay), so that it becomes the conversation's latest public message.
pub async fn agent_says(chatwoot: &SandboxHandle, conversation_id: i64, text: &str) {
    let token = SandboxConfig::default().user_token;
    let body = json!({ "content": text, "message_type": "outgoing" });
    post_message(chatwoot, conversation_id, &token, &body).await;
}

/// Another agent (not goldrelay's Chatwoot user) posts `body` to a sandbox
/// conversation; returns the message.
pub async fn other_agent_posts(
    chatwoot: &SandboxHandle,
    conversation_id: i64,
    body: &Value,
) -> Value {
    post_message(
        chatwoot,
        conversation_id,
        goldrelay::sandbox::AGENT_TOKEN,
        body,
    )
    .await
}

async fn post_message(
    chatwoot: &SandboxHandle,
    conversation_id: i64,
    token: &str,
    body: &Value,
) -> Value {
    let url = format!(
        "{}/api/v1/accounts/1/conversations/{conversation_id}/messages",
        chatwoot.base_url()
    );
    let sent = reqwest::Client::new()
        .post(url)
        .header("Api-Access-Token", token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200, "a sandbox message was refused");
    sent.json().await.unwrap()
}
