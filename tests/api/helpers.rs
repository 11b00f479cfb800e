//! Spawns a real goldrelay on a random port, with a temporary SQLite database
//! and a sandbox Chatwoot as its peer.

use goldrelay::config::{DatabaseUrl, Settings};
use goldrelay::sandbox::{self, SandboxConfig, SandboxHandle};
use goldrelay::startup::Application;
use goldrelay::store::SharedStore;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::time::Duration;
use tempfile::TempDir;

pub const TOKEN: &str = "test-token-0123456789abcdefghijklmnop";
pub const OTHER_TOKEN: &str = "rotated-token-0123456789abcdefghijklm";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub chatwoot: SandboxHandle,
    pub store: SharedStore,
    pub db_url: String,
    pub dir: TempDir,
}

/// Settings for tests: fast retries, a short Chatwoot timeout.
pub fn test_settings(chatwoot: &SandboxHandle, dir: &TempDir) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: vec![SecretString::from(TOKEN), SecretString::from(OTHER_TOKEN)],
        database_url: DatabaseUrl::new(format!("sqlite://{}/test.db", dir.path().display())),
        chatwoot_base_url: chatwoot.base_url().parse().unwrap(),
        chatwoot_api_token: SecretString::from(SandboxConfig::default().user_token),
        chatwoot_timeout: Duration::from_secs(2),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        max_attempts: 10,
        max_age: Duration::from_secs(3600),
        max_body_bytes: 256 * 1024,
        send_rate: 0,
        delivery_concurrency: 8,
        shutdown_drain: Duration::from_secs(2),
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
    let db_url = settings.database_url.expose().to_owned();
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://{}", app.addr());
    let store = app.store();
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        chatwoot,
        store,
        db_url,
        dir,
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

impl TestApp {
    pub async fn post_reply(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/api/webhooks/gold-replies", self.address))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_reply(&self, reply_id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/api/gold-replies/{reply_id}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request sent")
    }

    /// Polls the status record until `status` (or panics after `within`).
    pub async fn wait_for_status(&self, reply_id: &str, status: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let record: Value = self.get_reply(reply_id).await.json().await.unwrap();
            if record["status"] == status {
                return record;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reply_id} never became {status}: {record}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
