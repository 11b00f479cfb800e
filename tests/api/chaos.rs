//! Proof under chaos: hundreds of replies over dozens of conversations while
//! the sandbox Chatwoot injects, at random, every fault the real one shows
//! (late commits after the client gave up, 422 after the row committed,
//! rack-attack's 429 without Retry-After, 5xx, slow answers, a proxy that drops
//! `_` headers) and goldrelay is SIGKILLed and restarted. Then: no reply lost,
//! no customer-visible duplicate, order kept in every conversation, every
//! final record true to what the sandbox holds.
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
/// The late commits land this long after the request; goldrelay's lookup
/// delay is longer, as `GOLDRELAY_LOOKUP_DELAY` must be in production.
const COMMIT_AFTER_MS: u64 = 1_500;
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
    match rng.random_range(0..7) {
        0 => {
            faults.commit_late_next = rng.random_range(1..4);
            faults.commit_after_ms = COMMIT_AFTER_MS;
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
        _ => faults.drop_underscore_headers = true,
    }
    faults
}

/// The instances of one run: started on fixed ports so Chatwoot's webhook and
/// the test's client keep working across restarts.
struct Fleet {
    serve: Serve,
    ports: Vec<u16>,
    running: Vec<Option<Relay>>,
}

impl Fleet {
    async fn start(serve: Serve, ports: Vec<u16>) -> Self {
        let mut running = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            running.push(Some(serve.start_on(&format!("goldrelay-{i}"), *port).await));
        }
        Self {
            serve,
            ports,
            running,
        }
    }

    fn api(&self, rng: &mut StdRng) -> &helpers::Api {
        let up: Vec<&Relay> = self.running.iter().flatten().collect();
        &up[rng.random_range(0..up.len())].api
    }

    async fn kill_and_restart(&mut self, i: usize) {
        if let Some(relay) = self.running[i].take() {
            relay.kill();
        }
        let name = format!("goldrelay-{i}");
        self.running[i] = Some(self.serve.start_on(&name, self.ports[i]).await);
    }
}

async fn run_chaos(database_url: String, instances: usize) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let webhook_port = free_port();
    let config = SandboxConfig {
        webhook_url: Some(format!(
            "http://127.0.0.1:{webhook_port}/api/webhooks/chatwoot"
        )),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        ..SandboxConfig::default()
    };
    let chatwoot = sandbox::start(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let serve = Serve::new(&database_url, &chatwoot)
        .env("GOLDRELAY_MAX_ATTEMPTS", "10000")
        .env("GOLDRELAY_LOOKUP_DELAY", "2s")
        .env("GOLDRELAY_DELIVERY_CONCURRENCY", "8");
    // Chatwoot's webhooks go to the first instance's port, which it keeps.
    let ports = std::iter::once(webhook_port)
        .chain((1..instances).map(|_| free_port()))
        .collect();
    let mut fleet = Fleet::start(serve, ports).await;

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
            posted.entry(conversation).or_default().push(id);
        }
        if rng.random_bool(0.5) {
            let victim = rng.random_range(0..instances);
            eprintln!("chaos: round {round}: SIGKILL instance {victim}");
            fleet.kill_and_restart(victim).await;
        }
    }
    chatwoot.set_faults(Faults::default());
    settle(&fleet, &mut rng, &posted).await;
    assert_exactly_once_in_order(&chatwoot, &posted, &fleet, &mut rng).await;
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
        let marked: Vec<(String, i64)> = messages
            .iter()
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
    run_chaos(url, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn postgres_two_instances_under_chaos_every_reply_arrives_once_and_in_order() {
    run_chaos(helpers::postgres::fresh_database(), 2).await;
}
