//! A goldrelay process killed while it holds a delivery job, and started
//! again on the same database, delivers that reply exactly once; one stopped
//! with SIGTERM finishes its in-flight delivery before it exits.
//!
//! These run the real binary (`goldrelay serve`), configured through the
//! environment, against an in-process sandbox Chatwoot.

use crate::helpers::{creates_of, reply, wait_for_create, Api, PATIENCE, TOKEN};
use goldrelay::sandbox::{self, Faults, SandboxConfig, SandboxHandle};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The Chatwoot timeout the processes run with. Their lease is 3 × this + 5 s,
/// so a restarted process takes the job over after about 8 s.
const CHATWOOT_TIMEOUT: &str = "1s";
/// Longer than the lease, with room for the restarted process to finish.
const AFTER_LEASE: Duration = Duration::from_secs(25);

/// A running `goldrelay serve`, killed when dropped so a failed test leaves nothing behind.
struct Relay {
    child: Child,
    api: Api,
}

impl Relay {
    async fn start(chatwoot: &SandboxHandle, dir: &TempDir) -> Self {
        let port = free_port();
        let logs = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit
        } else {
            Stdio::null
        };
        let child = Command::new(env!("CARGO_BIN_EXE_goldrelay"))
            .arg("serve")
            .env_clear()
            .env("GOLDRELAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GOLDRELAY_TOKENS", TOKEN)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/relay.db", dir.path().display()),
            )
            .env("CHATWOOT_BASE_URL", chatwoot.base_url())
            .env("CHATWOOT_API_TOKEN", SandboxConfig::default().user_token)
            .env("GOLDRELAY_CHATWOOT_TIMEOUT", CHATWOOT_TIMEOUT)
            .env("GOLDRELAY_RETRY_BASE", "50ms")
            .env("GOLDRELAY_RETRY_MAX", "200ms")
            .env("GOLDRELAY_SEND_RATE", "0")
            .stdin(Stdio::null())
            .stdout(logs())
            .stderr(logs())
            .spawn()
            .expect("goldrelay starts");
        let relay = Relay {
            child,
            api: Api::new(format!("http://127.0.0.1:{port}")),
        };
        relay.wait_until_healthy().await;
        relay
    }

    async fn wait_until_healthy(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let url = format!("{}/hc", self.api.address);
        loop {
            let answer = self.api.client.get(&url).send().await;
            if answer.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "goldrelay serve never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no drain, no lease released.
    fn kill(mut self) {
        self.child.kill().expect("goldrelay killed");
        self.child.wait().expect("goldrelay reaped");
    }

    /// SIGTERM, then waits for the process to exit on its own.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("goldrelay waited for") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "goldrelay ignored SIGTERM"
            );
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

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Posts `reply_id`, lets its create reach the sandbox (which is set up to
/// hold the answer), checks the attempt is still open, and kills the process.
async fn kill_mid_delivery(relay: Relay, chatwoot: &SandboxHandle, reply_id: &str) {
    relay.api.accept(&reply(reply_id, 51)).await;
    wait_for_create(chatwoot, reply_id).await;
    let record: Value = relay.api.record(reply_id).await;
    assert_eq!(record["status"], "queued", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(
        record["last_error"],
        Value::Null,
        "the attempt already ended: {record}"
    );
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_after_chatwoot_created_the_message_delivers_it_exactly_once_on_restart() {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The message is created at once; the answer would come long after the kill.
    chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 5000,
        ..Faults::default()
    });
    let first = Relay::start(&chatwoot, &dir).await;
    kill_mid_delivery(first, &chatwoot, "gr-crash-after").await;

    let second = Relay::start(&chatwoot, &dir).await;
    let record = second
        .api
        .wait_for_status("gr-crash-after", "delivered", AFTER_LEASE)
        .await;
    let messages = chatwoot.messages(1, 51);
    assert_eq!(messages.len(), 1, "sent twice");
    assert_eq!(record["chatwoot_message_id"], messages[0].id);
    assert_eq!(creates_of(&chatwoot, "gr-crash-after"), 1, "created again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_before_chatwoot_created_the_message_sends_it_exactly_once_on_restart() {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Chatwoot sits on the request, then refuses it: no message is created,
    // and nobody is left to hear the refusal.
    chatwoot.set_faults(Faults {
        fail_next: 1,
        delay_ms: 600,
        ..Faults::default()
    });
    let first = Relay::start(&chatwoot, &dir).await;
    kill_mid_delivery(first, &chatwoot, "gr-crash-before").await;
    chatwoot.set_faults(Faults::default());

    let second = Relay::start(&chatwoot, &dir).await;
    second
        .api
        .wait_for_status("gr-crash-before", "delivered", AFTER_LEASE)
        .await;
    let messages = chatwoot.messages(1, 51);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        messages[0].content_attributes["gold_reply_id"],
        "gr-crash-before"
    );
    assert_eq!(
        creates_of(&chatwoot, "gr-crash-before"),
        2,
        "never sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_stopped_with_sigterm_finishes_its_in_flight_delivery_before_it_exits() {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Within the Chatwoot timeout and the drain period: the answer is worth waiting for.
    chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 700,
        ..Faults::default()
    });
    let first = Relay::start(&chatwoot, &dir).await;
    first.api.accept(&reply("gr-sigterm", 52)).await;
    wait_for_create(&chatwoot, "gr-sigterm").await;
    let exit = first.terminate().await;
    assert!(exit.success(), "{exit}");

    // Read the outcome the stopped process recorded, before any new attempt.
    let second = Relay::start(&chatwoot, &dir).await;
    let record = second.api.record("gr-sigterm").await;
    assert_eq!(record["status"], "delivered", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(chatwoot.messages(1, 52).len(), 1);
}
