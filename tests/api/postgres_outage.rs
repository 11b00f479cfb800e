//! PostgreSQL stops under a running goldrelay and starts again. While it is
//! down, ingest answers 503 rather than acknowledging what it could not store
//! and `/hc` says so; once it is back, everything resumes on its own.
//!
//! Needs `TEST_DATABASE_URL` to name a PostgreSQL server and `TEST_PG_STOP` /
//! `TEST_PG_START` to be shell commands that stop and start it (`.ci/run` sets
//! all three), so it is ignored unless run with `--include-ignored`. It stops
//! the whole server, so no other test may run beside it: run it on its own
//! (`cargo test --test api postgres_outage -- --include-ignored`) and skip it
//! in the run of every other test (`--skip postgres_outage`).

use crate::helpers::{
    assert_problem, postgres, reply, spawn_app, wait_for_create, Api, TestApp, PATIENCE,
};
use goldrelay::sandbox::Faults;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Generous bounds that only catch a hang: an answer during the outage, and
/// recovery after it.
const OUTAGE_ANSWER: Duration = Duration::from_secs(15);
const RECOVERY: Duration = Duration::from_secs(30);

/// The shell commands that stop and start the PostgreSQL server.
struct PgControl {
    stop: String,
    start: String,
}

impl PgControl {
    /// From `TEST_PG_STOP` and `TEST_PG_START`, next to a PostgreSQL server in
    /// `TEST_DATABASE_URL`; fails the test, naming what is missing, without them.
    fn from_env() -> Self {
        postgres::server_url();
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| {
                    panic!("this test stops PostgreSQL: set {name} to a shell command that does")
                })
        };
        Self {
            stop: var("TEST_PG_STOP"),
            start: var("TEST_PG_START"),
        }
    }

    /// Stops the server; it starts again when the returned guard is dropped,
    /// whether or not the test got that far.
    async fn stop(&self) -> Outage<'_> {
        let outage = Outage {
            pg: self,
            over: false,
        };
        shell(&self.stop).await;
        outage
    }
}

/// PostgreSQL is down while this lives.
struct Outage<'a> {
    pg: &'a PgControl,
    over: bool,
}

impl Outage<'_> {
    async fn end(mut self) {
        shell(&self.pg.start).await;
        self.over = true;
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        if self.over {
            return;
        }
        // The test failed during the outage: later tests need the server.
        let status = std::process::Command::new("sh")
            .args(["-c", &self.pg.start])
            .status();
        eprintln!("started PostgreSQL again after a failure: {status:?}");
    }
}

async fn shell(command: &str) {
    let status = tokio::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .await
        .expect("sh runs");
    assert!(status.success(), "`{command}` failed: {status}");
}

/// `GET /hc`: its status code and body.
async fn health(api: &Api) -> (u16, Value) {
    let response = api
        .client
        .get(format!("{}/hc", api.address))
        .send()
        .await
        .expect("/hc answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("/hc answers JSON"))
}

/// Posts a reply while the database is down and checks it is refused with a
/// 503 problem, not acknowledged, and not left hanging.
async fn assert_refused(api: &Api, reply_id: &str) {
    let body = reply(reply_id, 74);
    let response = tokio::time::timeout(OUTAGE_ANSWER, api.post_reply(&body))
        .await
        .unwrap_or_else(|_| panic!("no answer to {reply_id} within {OUTAGE_ANSWER:?}"));
    let problem = assert_problem(response, 503).await;
    eprintln!("{reply_id} refused: {problem}");
}

/// Polls `/hc` until the worker says it has paused for the store.
async fn wait_for_paused_worker(api: &Api) -> Value {
    let deadline = Instant::now() + OUTAGE_ANSWER;
    loop {
        let (status, body) = health(api).await;
        assert_eq!(status, 503, "/hc during the outage: {body}");
        assert_ne!(body["store"]["status"], "ok", "{body}");
        if body["worker"]["status"] != "running" {
            return body;
        }
        assert!(Instant::now() < deadline, "the worker never paused: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until_healthy(api: &Api) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (status, body) = health(api).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "/hc never recovered: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Exactly one message in the sandbox for `reply_id`, in `conversation`, and
/// its record points at it.
async fn assert_delivered_once(app: &TestApp, reply_id: &str, conversation: i64) {
    let record = app
        .api
        .wait_for_status(reply_id, "delivered", RECOVERY)
        .await;
    let messages = app.chatwoot.messages(1, conversation);
    let ids: Vec<&Value> = messages
        .iter()
        .map(|m| &m.content_attributes["gold_reply_id"])
        .collect();
    assert_eq!(ids, [reply_id], "conversation {conversation}");
    assert_eq!(record["chatwoot_message_id"], messages[0].id, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL, TEST_PG_STOP and TEST_PG_START and run alone with --include-ignored"]
async fn ingest_answers_503_while_postgres_is_down_and_everything_resumes_when_it_is_back() {
    let pg = PgControl::from_env();
    let app = spawn_app().await;
    app.api.accept(&reply("gr-before", 71)).await;
    let before = app
        .api
        .wait_for_status("gr-before", "delivered", PATIENCE)
        .await;
    // Chatwoot creates this one at once but answers late, so the worker has
    // an outcome to record while the database is down.
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 1500,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-in-flight", 72)).await;
    wait_for_create(&app.chatwoot, "gr-in-flight").await;

    let outage = pg.stop().await;
    assert_refused(&app.api, "gr-during-1").await;
    let hc = wait_for_paused_worker(&app.api).await;
    eprintln!("/hc during the outage: {hc}");
    assert_refused(&app.api, "gr-during-2").await;
    assert_refused(&app.api, "gr-during-3").await;
    outage.end().await;

    wait_until_healthy(&app.api).await;
    app.api.accept(&reply("gr-after", 73)).await;
    assert_delivered_once(&app, "gr-after", 73).await;
    assert_delivered_once(&app, "gr-in-flight", 72).await;
    assert_delivered_once(&app, "gr-before", 71).await;
    assert_eq!(
        app.api.record("gr-before").await,
        before,
        "changed by the outage"
    );
    let again = app.api.post_reply(&reply("gr-before", 71)).await;
    assert_eq!(again.status(), 200, "the stored reply was forgotten");
    for refused in ["gr-during-1", "gr-during-2", "gr-during-3"] {
        let response = app.api.get_reply(refused).await;
        assert_eq!(response.status(), 404, "{refused} was refused yet stored");
    }
}
