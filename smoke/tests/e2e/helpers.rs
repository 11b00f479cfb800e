//! Starts goldrelay and the sandbox Chatwoot in-process on random ports, and
//! runs the smoke binary against them as a subprocess.
//!
//! The binary blocks, so it runs on a blocking thread while the servers keep
//! running on the test's multi-thread runtime.

use assert_cmd::assert::Assert;
use assert_cmd::Command;
use goldrelay::config::Settings;
use goldrelay::sandbox::{self, SandboxConfig, SandboxHandle};
use goldrelay::startup::Application;
use serde_json::Value;
use std::collections::HashMap;
use std::net::TcpListener;
use tempfile::TempDir;

/// goldrelay's Support token in these tests.
pub const TOKEN: &str = "smoke-relay-token-0123456789abcdefghijkl";
/// The sandbox's user token, which smoke reads the conversation with.
pub const CHATWOOT_TOKEN: &str = "sandbox-user-token";
/// The conversation that receives the smoke reply.
pub const CONVERSATION: i64 = 7;
/// A conversation the sandbox answers 404 for, so the reply goes dead.
pub const MISSING_CONVERSATION: i64 = 99_999;
/// The webhook secret shared by the sandbox and goldrelay when confirming.
const WEBHOOK_SECRET: &str = "smoke-webhook-secret-0123456789";

/// A running goldrelay with the sandbox as its Chatwoot.
pub struct Stack {
    pub relay_url: String,
    pub chatwoot: SandboxHandle,
    _dir: TempDir,
}

/// goldrelay with fast retries; the sandbox sends no webhooks.
pub async fn start() -> Stack {
    start_with(SandboxConfig::default(), &[]).await
}

/// Like [`start`], with the sandbox set up as `config` and goldrelay's
/// environment changed by `vars` (an empty value unsets a variable).
pub async fn start_with(config: SandboxConfig, vars: &[(&str, &str)]) -> Stack {
    let chatwoot =
        sandbox::start(config, "127.0.0.1:0".parse().unwrap()).expect("the sandbox starts");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let vars: HashMap<&str, String> = [
        ("GOLDRELAY_LISTEN", "127.0.0.1:0".to_owned()),
        ("GOLDRELAY_TOKENS", TOKEN.to_owned()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/smoke.db", dir.path().display()),
        ),
        ("CHATWOOT_BASE_URL", chatwoot.base_url()),
        ("CHATWOOT_API_TOKEN", CHATWOOT_TOKEN.to_owned()),
        ("CHATWOOT_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
        ("GOLDRELAY_CHATWOOT_TIMEOUT", "2s".to_owned()),
        ("GOLDRELAY_RETRY_BASE", "50ms".to_owned()),
        ("GOLDRELAY_RETRY_MAX", "200ms".to_owned()),
        ("GOLDRELAY_SEND_RATE", "0".to_owned()),
        ("GOLDRELAY_SHUTDOWN_DRAIN", "1s".to_owned()),
    ]
    .into_iter()
    .chain(vars.iter().map(|(k, v)| (*k, (*v).to_owned())))
    .collect();
    // From the environment's names, so new settings with defaults need no change here.
    let settings = Settings::from_lookup(|name| vars.get(name).cloned()).expect("valid settings");
    let app = Application::build(settings)
        .await
        .expect("goldrelay builds");
    let relay_url = format!("http://{}", app.addr());
    tokio::spawn(app.run_until(std::future::pending()));
    Stack {
        relay_url,
        chatwoot,
        _dir: dir,
    }
}

impl Stack {
    /// Makes the sandbox send signed webhooks to goldrelay, as a configured
    /// Chatwoot account webhook does, so replies become `confirmed`.
    pub fn confirm_through_webhooks(&self) {
        self.chatwoot.set_webhook(
            format!("{}/api/webhooks/chatwoot", self.relay_url),
            Some(WEBHOOK_SECRET.to_owned()),
        );
    }

    /// Every input for every check, and short deadlines; change fields, then `command()`.
    pub fn args(&self) -> Args {
        Args {
            url: self.relay_url.clone(),
            token: TOKEN.to_owned(),
            conversation: CONVERSATION,
            chatwoot_url: self.chatwoot.base_url(),
            timeout: "10s",
        }
    }

    /// smoke with [`Stack::args`] unchanged.
    pub fn smoke(&self) -> Command {
        self.args().command()
    }

    /// The smoke messages the sandbox holds in `conversation`.
    pub fn smoke_messages(&self, conversation: i64) -> Vec<sandbox::Message> {
        self.chatwoot
            .messages(1, conversation)
            .into_iter()
            .filter(|m| {
                m.content_attributes["gold_reply_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("smoke-"))
            })
            .collect()
    }
}

/// smoke's inputs for one run (clap refuses an option given twice).
pub struct Args {
    pub url: String,
    pub token: String,
    pub conversation: i64,
    pub chatwoot_url: String,
    pub timeout: &'static str,
}

impl Args {
    pub fn command(&self) -> Command {
        let mut cmd = smoke();
        cmd.args(["--url", &self.url, "--token", &self.token])
            .args(["--account-id", "1", "--conversation-id"])
            .arg(self.conversation.to_string())
            .args(["--chatwoot-url", &self.chatwoot_url])
            .args(["--chatwoot-token", CHATWOOT_TOKEN])
            .args(["--wait", "5s", "--timeout", self.timeout]);
        cmd
    }
}

/// The smoke binary with no `SMOKE_*` variable inherited from the developer's shell.
pub fn smoke() -> Command {
    let mut cmd = Command::cargo_bin("smoke").expect("the smoke binary is built");
    // A test run inside GitHub Actions must not write to the job's own summary.
    cmd.env_remove("GITHUB_STEP_SUMMARY");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SMOKE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs the binary on a blocking thread so the servers keep serving.
pub async fn run(mut cmd: Command) -> Assert {
    tokio::task::spawn_blocking(move || cmd.assert())
        .await
        .expect("the smoke process ran")
}

pub fn stdout(assert: &Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

pub fn stderr(assert: &Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

/// stdout parsed as the JSON report.
pub fn json_report(assert: &Assert) -> Value {
    serde_json::from_slice(&assert.get_output().stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(assert)))
}

/// One check's entry in a JSON report.
pub fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

/// A local URL where nothing listens: bound, then released.
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}
