//! Proof under chaos: hundreds of replies over dozens of conversations while
//! the sandbox Chatwoot injects, at random, every fault the real one shows
//! (commits that land any time up to the lookup delay after the client gave
//! up, 422s after the row committed, Enterprise's "Validation failed" after
//! the save, a proxy's 5xx after the commit, rack-attack's 429 (on throughout),
//! 5xx, slow answers, a proxy's HTML 401/403/404, a revoked token, a proxy
//! that drops `_` headers, echoes lost, doubled and late, ids that disagree
//! with `created_at`, other agents writing, one copying a reply's marker),
//! and goldrelay is SIGKILLed, or stopped with SIGTERM mid-create as a deploy
//! does, and restarted. On PostgreSQL two instances run with clocks 30 s
//! apart (libfaketime). Then: no reply lost, no customer-visible duplicate,
//! order kept in every conversation, every final record true to what the
//! sandbox holds.
//!
//! Seeded: the seed is printed, and `CHAOS_SEED=<n>` replays a run (the faults
//! and kills are chosen from the seed; timing still varies).

use crate::helpers::relay::{free_port, Relay, Serve};
use crate::helpers::{self, reply, WEBHOOK_SECRET};
use goldrelay::sandbox::{self, Faults, SandboxConfig, SandboxHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

const CONVERSATIONS: i64 = 24;
const REPLIES: usize = 240;
const ROUNDS: usize = 8;
/// goldrelay's lookup delay. Late commits land any time up to it after the
/// request, never later: that is the one case goldrelay cannot rule out.
const LOOKUP_DELAY_MS: u64 = 2_000;
/// rack-attack's requests per minute from one IP, on throughout.
const RACK_ATTACK_LIMIT: u32 = 400;
/// Everything settles well within this once the faults stop.
const SETTLE: Duration = Duration::from_secs(90);

fn seed() -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed: {seed} (replay with CHAOS_SEED={seed})");
    seed
}

/// One random fault, as the real Chatwoot (or the proxy before it) shows it.
fn random_fault(rng: &mut StdRng) -> Faults {
    let mut faults = Faults::default();
    match rng.random_range(0..12) {
        0 => {
            faults.commit_late_next = rng.random_range(1..4);
            faults.commit_after_ms = rng.random_range(0..LOOKUP_DELAY_MS);
            faults.answer_after_ms = None;
        }
        1 => {
            faults.error_after_commit_next = rng.random_range(1..4);
            faults.error_after_commit_echo = rng.random_bool(0.5);
        }
        2 => {
            faults.fail_next = rng.random_range(1..6);
            faults.fail_status = Some(429);
        }
        3 => {
            faults.fail_next = rng.random_range(1..6);
            faults.fail_status = Some(*[500, 502, 503].get(rng.random_range(0..3)).unwrap());
        }
        4 => faults.delay_ms = rng.random_range(50..400),
        5 => {
            faults.late_next = rng.random_range(1..3);
            faults.late_ms = 2_500;
        }
        6 => {
            // Enterprise: saved, then `conversation.open!` raised.
            faults.error_after_commit_next = rng.random_range(1..3);
            faults.error_after_commit_text = Some("Validation failed: Status is invalid".into());
        }
        7 => {
            faults.error_after_commit_next = rng.random_range(1..3);
            faults.error_after_commit_status =
                Some(*[502, 504].get(rng.random_range(0..2)).unwrap());
            faults.error_after_commit_echo = rng.random_bool(0.5);
        }
        8 => {
            faults.fail_next = rng.random_range(1..6);
            faults.fail_status = Some(*[401, 403, 404].get(rng.random_range(0..3)).unwrap());
        }
        9 => faults.token_revoked = true,
        10 => {
            faults.echo_drop_next = rng.random_range(1..5);
            faults.echo_twice = rng.random_bool(0.5);
            faults.echo_delay_ms = rng.random_range(0..1500);
        }
        _ => faults.drop_underscore_headers = true,
    }
    faults
}

/// The instances of one run: started on fixed ports so Chatwoot's webhook and
/// the test's client keep working across restarts.
struct Fleet {
    serve: Serve,
    ports: Vec<u16>,
    /// Each instance's own environment (its clock's skew).
    extra: Vec<Vec<(String, String)>>,
    running: Vec<Option<Relay>>,
}

impl Fleet {
    async fn start(serve: Serve, ports: Vec<u16>, extra: Vec<Vec<(String, String)>>) -> Self {
        let mut running = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let name = format!("goldrelay-{i}");
            running.push(Some(serve.start_with(&name, *port, &extra[i]).await));
        }
        Self {
            serve,
            ports,
            extra,
            running,
        }
    }

    fn api(&self, rng: &mut StdRng) -> &helpers::Api {
        let up: Vec<&Relay> = self.running.iter().flatten().collect();
        &up[rng.random_range(0..up.len())].api
    }

    /// SIGKILL (a crash) or SIGTERM (a deploy: the drain abandons what is
    /// in flight), then the same instance again.
    async fn stop_and_restart(&mut self, i: usize, deploy: bool) {
        if let Some(relay) = self.running[i].take() {
            if deploy {
                relay.terminate().await;
            } else {
                relay.kill();
            }
        }
        let name = format!("goldrelay-{i}");
        let extra = &self.extra[i];
        self.running[i] = Some(self.serve.start_with(&name, self.ports[i], extra).await);
    }
}

/// The environment that runs a process with its clock `skew` off (Debian's
/// `faketime` package: libfaketime, preloaded).
pub(crate) fn skewed_clock(skew: &str) -> Vec<(String, String)> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime is not installed: apt-get install faketime (.ci/run does)");
    vec![
        ("LD_PRELOAD".into(), lib.into()),
        ("FAKETIME".into(), skew.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

async fn run_chaos(database_url: String, instances: usize, skews: &[Option<&str>]) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let webhook_port = free_port();
    let config = SandboxConfig {
        webhook_url: Some(format!(
            "http://127.0.0.1:{webhook_port}/api/webhooks/chatwoot"
        )),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        rack_attack_limit: Some(RACK_ATTACK_LIMIT),
        created_at_disorder_secs: 5,
        ..SandboxConfig::default()
    };
    let chatwoot = sandbox::start(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let serve = Serve::new(&database_url, &chatwoot)
        .env("GOLDRELAY_MAX_ATTEMPTS", "10000")
        .env("GOLDRELAY_LOOKUP_DELAY", &format!("{LOOKUP_DELAY_MS}ms"))
        .env("GOLDRELAY_DELIVERY_CONCURRENCY", "8")
        // Captures read Chatwoot beside the deliveries, as in production.
        .env("GOLDRELAY_CAPTURE_CONTEXT", "20");
    // Chatwoot's webhooks go to the first instance's port, which it keeps.
    let ports = std::iter::once(webhook_port)
        .chain((1..instances).map(|_| free_port()))
        .collect();
    let extra = (0..instances)
        .map(|i| {
            skews
                .get(i)
                .copied()
                .flatten()
                .map(skewed_clock)
                .unwrap_or_default()
        })
        .collect();
    let mut fleet = Fleet::start(serve, ports, extra).await;

    let mut posted: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let per_round = REPLIES / ROUNDS;
    for round in 0..ROUNDS {
        let faults = random_fault(&mut rng);
        eprintln!("chaos: round {round}: {faults:?}");
        chatwoot.set_faults(faults);
        for n in 0..per_round {
            let conversation = rng.random_range(1..=CONVERSATIONS);
            let id = format!("chaos-{seed}-{round}-{n}");
            accept_despite_restarts(&fleet, &mut rng, &id, conversation).await;
            posted.entry(conversation).or_default().push(id.clone());
            if rng.random_bool(0.1) {
                others_write(&chatwoot, &mut rng, conversation, &id).await;
            }
        }
        if rng.random_bool(0.5) {
            let victim = rng.random_range(0..instances);
            let deploy = rng.random_bool(0.5);
            let how = if deploy {
                "SIGTERM (deploy)"
            } else {
                "SIGKILL"
            };
            eprintln!("chaos: round {round}: {how} instance {victim}");
            fleet.stop_and_restart(victim, deploy).await;
        }
    }
    chatwoot.set_faults(Faults::default());
    settle(&fleet, &mut rng, &posted).await;
    assert_exactly_once_in_order(&chatwoot, &posted, &fleet, &mut rng).await;
}

/// Another agent writes in the conversation, now and then copying the marker
/// (and text) of a reply that may still be waiting.
async fn others_write(chatwoot: &SandboxHandle, rng: &mut StdRng, conversation: i64, id: &str) {
    let mut body = serde_json::json!({"content": "an agent's own note to the customer"});
    if rng.random_bool(0.5) {
        body = serde_json::json!({
            "content": format!("Reply {id}"),
            "content_attributes": {"gold_reply_id": id},
        });
    }
    let url = format!(
        "{}/api/v1/accounts/1/conversations/{conversation}/messages",
        chatwoot.base_url()
    );
    // rack-attack may refuse it, and the round's fault may hold it without an
    // answer, like any other request: then nobody waits for it.
    let _ = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(3))
        .header("Api-Access-Token", sandbox::AGENT_TOKEN)
        .json(&body)
        .send()
        .await;
}

/// Posts one reply; a process restarting between two posts is retried, as
/// Support's tool would, and the reply is accepted exactly once either way.
async fn accept_despite_restarts(fleet: &Fleet, rng: &mut StdRng, id: &str, conversation: i64) {
    let body = reply(id, conversation);
    for _ in 0..50 {
        if let Ok(response) = fleet
            .api(rng)
            .client
            .post(format!(
                "{}/api/webhooks/gold-replies",
                fleet.api(rng).address
            ))
            .bearer_auth(helpers::TOKEN)
            .json(&body)
            .send()
            .await
        {
            if matches!(response.status().as_u16(), 200 | 202) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} was never accepted");
}

/// Waits until every reply has reached Chatwoot for good (delivered or confirmed).
async fn settle(fleet: &Fleet, rng: &mut StdRng, posted: &BTreeMap<i64, Vec<String>>) {
    let deadline = Instant::now() + SETTLE;
    for id in posted.values().flatten() {
        loop {
            let record = fleet.api(rng).record(id).await;
            match record["status"].as_str() {
                Some("delivered" | "confirmed") => break,
                Some("dead") => panic!("{id} was given up on: {record}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "{id} never arrived: {record}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn assert_exactly_once_in_order(
    chatwoot: &SandboxHandle,
    posted: &BTreeMap<i64, Vec<String>>,
    fleet: &Fleet,
    rng: &mut StdRng,
) {
    for (conversation, ids) in posted {
        let messages = chatwoot.messages(1, *conversation);
        // goldrelay's own messages: other agents' copies of a marker do not count.
        let marked: Vec<(String, i64)> = messages
            .iter()
            .filter(|m| m.sender["id"] == 1 && m.sender["type"] == "user")
            .filter_map(|m| {
                let id = m.content_attributes["gold_reply_id"].as_str()?;
                Some((id.to_owned(), m.id))
            })
            .collect();
        let delivered: Vec<&String> = marked.iter().map(|(id, _)| id).collect();
        let expected: Vec<&String> = ids.iter().collect();
        assert_eq!(
            delivered, expected,
            "conversation {conversation}: a reply lost, repeated or out of order"
        );
        for (id, message_id) in &marked {
            let record: Value = fleet.api(rng).record(id).await;
            assert_eq!(
                record["chatwoot_message_id"].as_i64(),
                Some(*message_id),
                "{id}'s record names another message: {record}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_under_chaos_every_reply_arrives_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/chaos.db", dir.path().display());
    run_chaos(url, 1, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn postgres_two_instances_with_clocks_30_s_apart_under_chaos_every_reply_arrives_once_and_in_order(
) {
    run_chaos(
        helpers::postgres::fresh_database(),
        2,
        &[None, Some("-30s")],
    )
    .await;
}
