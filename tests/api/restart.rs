//! A goldrelay process killed while it holds a delivery job, and started
//! again on the same database, delivers that reply exactly once; one stopped
//! with SIGTERM finishes its in-flight delivery before it exits.
//!
//! These run the real binary (`goldrelay serve`), configured through the
//! environment, against an in-process sandbox Chatwoot, on SQLite.

use crate::helpers::relay::{Relay, Serve};
use crate::helpers::{creates_of, reply, wait_for_create};
use goldrelay::sandbox::{self, Faults, SandboxConfig, SandboxHandle};
use serde_json::Value;
use std::time::Duration;
use tempfile::TempDir;

/// Longer than the lease (about 8 s with the helpers' Chatwoot timeout), with
/// room for the restarted process to finish.
const AFTER_LEASE: Duration = Duration::from_secs(25);

/// A sandbox Chatwoot, and how to start goldrelay against it on a SQLite
/// database every process of the test shares.
fn setup() -> (SandboxHandle, Serve, TempDir) {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/relay.db", dir.path().display());
    let serve = Serve::new(&database, &chatwoot);
    (chatwoot, serve, dir)
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
    let (chatwoot, serve, _dir) = setup();
    // The message is created at once; the answer would come long after the kill.
    chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 5000,
        ..Faults::default()
    });
    let first = serve.start("goldrelay").await;
    kill_mid_delivery(first, &chatwoot, "gr-crash-after").await;

    let second = serve.start("goldrelay").await;
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
    let (chatwoot, serve, _dir) = setup();
    // Chatwoot sits on the request, then refuses it: no message is created,
    // and nobody is left to hear the refusal. The wait is well inside this
    // test's Chatwoot timeout (lease 3 × 3 s + 5 s = 14 s, inside AFTER_LEASE),
    // so the attempt is still open when the test reads it and kills.
    let serve = serve.env("GOLDRELAY_CHATWOOT_TIMEOUT", "3s");
    chatwoot.set_faults(Faults {
        fail_next: 1,
        delay_ms: 2500,
        ..Faults::default()
    });
    let first = serve.start("goldrelay").await;
    kill_mid_delivery(first, &chatwoot, "gr-crash-before").await;
    chatwoot.set_faults(Faults::default());

    let second = serve.start("goldrelay").await;
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
    let (chatwoot, serve, _dir) = setup();
    // Well within this test's Chatwoot timeout and the drain period (25 s by
    // default): the answer is worth waiting for, and comes after the SIGTERM.
    let serve = serve.env("GOLDRELAY_CHATWOOT_TIMEOUT", "5s");
    chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 2000,
        ..Faults::default()
    });
    let first = serve.start("goldrelay").await;
    first.api.accept(&reply("gr-sigterm", 52)).await;
    wait_for_create(&chatwoot, "gr-sigterm").await;
    let exit = first.terminate().await;
    assert!(exit.success(), "{exit}");

    // Read the outcome the stopped process recorded, before any new attempt.
    let second = serve.start("goldrelay").await;
    let record = second.api.record("gr-sigterm").await;
    assert_eq!(record["status"], "delivered", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(chatwoot.messages(1, 52).len(), 1);
}

/// A routine deploy: SIGTERM while Chatwoot is still committing a create
/// (Rails finishes a create after the client hung up; rack-timeout allows
/// about 15 s). The drain abandons the attempt; the next process must not look
/// the message up sooner than `GOLDRELAY_LOOKUP_DELAY` after the create left,
/// or it misses the late commit and sends a second message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_while_chatwoot_is_slow_never_sends_the_reply_twice() {
    let (chatwoot, serve, _dir) = setup();
    let serve = serve
        .env("GOLDRELAY_CHATWOOT_TIMEOUT", "3s")
        .env("GOLDRELAY_SHUTDOWN_DRAIN", "500ms")
        .env("GOLDRELAY_LOOKUP_DELAY", "6s");
    // The row commits 4 s after the request arrived; no answer ever comes.
    chatwoot.set_faults(Faults {
        commit_late_next: 1,
        commit_after_ms: 4000,
        answer_after_ms: None,
        ..Faults::default()
    });
    let first = serve.start("goldrelay").await;
    first.api.accept(&reply("gr-deploy", 53)).await;
    wait_for_create(&chatwoot, "gr-deploy").await;
    let exit = first.terminate().await;
    assert!(exit.success(), "{exit}");

    let second = serve.start("goldrelay").await;
    let record = second
        .api
        .wait_for_status("gr-deploy", "delivered", AFTER_LEASE)
        .await;
    let messages = chatwoot.messages(1, 53);
    assert_eq!(messages.len(), 1, "sent twice: {messages:?}");
    assert_eq!(record["chatwoot_message_id"], messages[0].id);
    assert_eq!(creates_of(&chatwoot, "gr-deploy"), 1, "created again");
}

/// A crash mid-create whose commit lands after the lease ran out: the next
/// claim comes only `GOLDRELAY_LOOKUP_DELAY` after the lease (the claim set
/// it so before the create left), so its lookup sees the late commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_whose_create_commits_after_the_lease_is_found_not_sent_again() {
    let (chatwoot, serve, _dir) = setup();
    // Lease: 3 x 1 s + 5 s = 8 s. The row commits at 9 s.
    let serve = serve.env("GOLDRELAY_LOOKUP_DELAY", "5s");
    chatwoot.set_faults(Faults {
        commit_late_next: 1,
        commit_after_ms: 9000,
        answer_after_ms: None,
        ..Faults::default()
    });
    let first = serve.start("goldrelay").await;
    kill_mid_delivery(first, &chatwoot, "gr-late-crash").await;

    let second = serve.start("goldrelay").await;
    let record = second
        .api
        .wait_for_status("gr-late-crash", "delivered", AFTER_LEASE)
        .await;
    let messages = chatwoot.messages(1, 51);
    assert_eq!(messages.len(), 1, "sent twice: {messages:?}");
    assert_eq!(record["chatwoot_message_id"], messages[0].id);
    assert_eq!(creates_of(&chatwoot, "gr-late-crash"), 1, "created again");
}
