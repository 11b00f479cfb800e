//! Real `goldrelay serve` processes, for the tests that need the binary
//! itself: a kill, a SIGTERM, a restart on the same database, two instances
//! side by side, or the log lines a process writes.

use super::{Api, OPERATOR_TOKEN, PATIENCE, TOKEN, WEBHOOK_SECRET};
use goldrelay::sandbox::{SandboxConfig, SandboxHandle};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// The Chatwoot timeout processes run with unless a test says otherwise. Their
/// lease is 3 × this + 5 s, so a job a killed process held is taken over after
/// about 8 s.
pub const CHATWOOT_TIMEOUT: &str = "1s";

/// How to start `goldrelay serve`: its environment, and a directory for the
/// logs of every process started from it. The logs are kept (and their place
/// printed) when the test fails, and deleted when it passes.
pub struct Serve {
    vars: BTreeMap<String, String>,
    logs: Option<TempDir>,
}

impl Serve {
    /// Against `database_url` and the sandbox, with the test token, the test
    /// webhook secret, fast retries, no send rate limit, no context capture and
    /// JSON logs.
    pub fn new(database_url: &str, chatwoot: &SandboxHandle) -> Self {
        let vars = [
            ("GOLDRELAY_TOKENS", TOKEN.to_owned()),
            ("GOLDRELAY_OPERATOR_TOKENS", OPERATOR_TOKEN.to_owned()),
            ("DATABASE_URL", database_url.to_owned()),
            ("CHATWOOT_BASE_URL", chatwoot.base_url()),
            ("CHATWOOT_API_TOKEN", SandboxConfig::default().user_token),
            ("CHATWOOT_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
            ("GOLDRELAY_CHATWOOT_TIMEOUT", CHATWOOT_TIMEOUT.to_owned()),
            ("GOLDRELAY_RETRY_BASE", "50ms".to_owned()),
            ("GOLDRELAY_RETRY_MAX", "200ms".to_owned()),
            ("GOLDRELAY_LOOKUP_DELAY", "250ms".to_owned()),
            ("GOLDRELAY_SEND_RATE", "0".to_owned()),
            ("GOLDRELAY_LOG_FORMAT", "json".to_owned()),
            // Off, as in test_settings: a capture's list request would take
            // failures injected for creates. Chaos turns it on.
            ("GOLDRELAY_CAPTURE_CONTEXT", "0".to_owned()),
        ];
        Self {
            vars: vars.map(|(k, v)| (k.to_owned(), v)).into_iter().collect(),
            logs: Some(tempfile::tempdir().expect("a directory for the logs")),
        }
    }

    /// Sets (or replaces) one environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Where the process called `name` writes its output.
    pub fn log_of(&self, name: &str) -> PathBuf {
        let logs = self.logs.as_ref().expect("the logs are kept until drop");
        logs.path().join(format!("{name}.log"))
    }

    /// Starts `name` on a free port and waits until it is healthy.
    pub async fn start(&self, name: &str) -> Relay {
        self.start_on(name, free_port()).await
    }

    /// Starts `name` on `port`, appending its output to its log (so a
    /// restarted process keeps one log), and waits until it is healthy.
    pub async fn start_on(&self, name: &str, port: u16) -> Relay {
        self.start_with(name, port, &[]).await
    }

    /// [`Serve::start_on`] with `extra` environment variables for this
    /// process alone (a skewed clock, say).
    pub async fn start_with(&self, name: &str, port: u16, extra: &[(String, String)]) -> Relay {
        let log_path = self.log_of(name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file opens");
        let child = Command::new(env!("CARGO_BIN_EXE_goldrelay"))
            .arg("serve")
            .env_clear()
            .envs(&self.vars)
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .env("GOLDRELAY_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .expect("goldrelay starts");
        let mut relay = Relay {
            child,
            api: Api::new(format!("http://127.0.0.1:{port}")),
            log: log_path,
        };
        relay.wait_until_healthy().await;
        relay
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (std::thread::panicking(), self.logs.take()) {
            eprintln!("goldrelay logs kept in {}", dir.keep().display());
        }
    }
}

/// A running `goldrelay serve`, killed when dropped so a failed test leaves
/// nothing behind.
pub struct Relay {
    child: Child,
    /// Its HTTP API.
    pub api: Api,
    log: PathBuf,
}

impl Relay {
    async fn wait_until_healthy(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let url = format!("{}/hc", self.api.address);
        loop {
            if let Some(exit) = self.child.try_wait().expect("goldrelay waited for") {
                panic!("goldrelay exited with {exit}:\n{}", self.log());
            }
            let answer = self.api.client.get(&url).send().await;
            if answer.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "goldrelay at {} never became healthy:\n{}",
                self.api.address,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process has written so far.
    fn log(&self) -> String {
        read_log(&self.log)
    }

    /// SIGKILL: no drain, no lease handed back.
    pub fn kill(mut self) {
        self.child.kill().expect("goldrelay killed");
        self.child.wait().expect("goldrelay reaped");
    }

    /// SIGTERM, then waits for the process to exit on its own.
    pub async fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("goldrelay waited for") {
                return status;
            }
            assert!(Instant::now() < deadline, "goldrelay ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log's text, or nothing if it was never written.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address").port()
}
