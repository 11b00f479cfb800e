//! Two `goldrelay serve` processes on one PostgreSQL database. Replies posted
//! to either of them, while Chatwoot stalls and one process is killed and
//! started again, each reach Chatwoot exactly once and in the order they were
//! accepted, per conversation.
//!
//! Needs a PostgreSQL server in `TEST_DATABASE_URL`, so it is ignored unless
//! run with `--include-ignored`; the test gets a schema of its own there.

use crate::helpers::relay::{free_port, read_log, Serve};
use crate::helpers::{delivered_ids, postgres, reply, Api, OPERATOR_TOKEN, TOKEN};
use goldrelay::sandbox::{self, Faults, SandboxConfig, SandboxHandle};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The conversations replies are spread over.
const CONVERSATIONS: [i64; 5] = [61, 62, 63, 64, 65];
/// Replies per conversation: well under the sandbox's flood guard of 200 a minute.
const PER_CONVERSATION: usize = 60;
/// The pause between two posts to one conversation, so posting lasts long
/// enough for a kill and a restart to happen in the middle of it.
const POST_PACE: Duration = Duration::from_millis(40);
/// How long one reply may be refused by both instances before the test gives up.
const POST_PATIENCE: Duration = Duration::from_secs(20);
/// How long every accepted reply may take to reach Chatwoot.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(60);

fn api_at(port: u16) -> Api {
    Api {
        address: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

/// Posts `body` until an instance accepts it, starting with `apis[first]` and
/// turning to the other one after a failed connection or a 5xx. A 200 counts
/// too: an earlier attempt cut short by the kill had stored the reply.
/// Returns how many attempts failed.
async fn post_until_accepted(apis: &[Api; 2], first: usize, body: &Value) -> usize {
    let deadline = Instant::now() + POST_PATIENCE;
    for (failed, turn) in (first..).enumerate() {
        let sent = apis[turn % 2]
            .webhook()
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if matches!(r.status().as_u16(), 200 | 202) => return failed,
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                panic!(
                    "{body} was refused with {status}: {}",
                    r.text().await.unwrap()
                )
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "neither instance accepted {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("the loop above returns or panics")
}

/// What one conversation's poster did.
struct Posted {
    /// Reply ids in the order they were accepted.
    accepted: Vec<String>,
    failed_attempts: usize,
}

/// Posts one conversation's replies one after another, alternating between
/// the instances, so their acceptance order is well defined.
async fn post_conversation(
    apis: Arc<[Api; 2]>,
    conversation: i64,
    progress: Arc<AtomicUsize>,
) -> Posted {
    let mut posted = Posted {
        accepted: Vec::with_capacity(PER_CONVERSATION),
        failed_attempts: 0,
    };
    for i in 0..PER_CONVERSATION {
        let id = format!("gr-c{conversation}-{i:03}");
        let first = (i + conversation as usize) % 2;
        posted.failed_attempts +=
            post_until_accepted(&apis, first, &reply(&id, conversation)).await;
        posted.accepted.push(id);
        progress.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(POST_PACE).await;
    }
    posted
}

async fn wait_for_accepted(progress: &AtomicUsize, count: usize) {
    let deadline = Instant::now() + POST_PATIENCE;
    while progress.load(Ordering::SeqCst) < count {
        assert!(
            Instant::now() < deadline,
            "posting stalled before {count} replies were accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Ids of (at most 20) replies goldrelay holds with `status`.
async fn replies_with_status(api: &Api, status: &str) -> Vec<String> {
    let listed: Value = api
        .client
        .get(format!(
            "{}/api/gold-replies?status={status}&limit=20",
            api.address
        ))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .expect("the surviving instance answers")
        .json()
        .await
        .expect("a reply list");
    let items = listed["items"].as_array().expect("items");
    items
        .iter()
        .map(|r| r["reply_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the sandbox holds every accepted reply and no job is left, so
/// no late duplicate can still arrive.
async fn wait_until_all_delivered(chatwoot: &SandboxHandle, api: &Api, accepted: &[Vec<String>]) {
    let deadline = Instant::now() + DELIVERY_PATIENCE;
    loop {
        let missing: Vec<&String> = CONVERSATIONS
            .iter()
            .zip(accepted)
            .flat_map(|(&c, ids)| {
                let delivered = delivered_ids(chatwoot, c);
                ids.iter().filter(move |id| !delivered.contains(id))
            })
            .collect();
        let dead = replies_with_status(api, "dead").await;
        assert!(dead.is_empty(), "goldrelay gave up on {dead:?}");
        let queued = replies_with_status(api, "queued").await;
        if missing.is_empty() && queued.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted replies never reached Chatwoot (first: {:?}); still queued: {queued:?}",
            missing.len(),
            missing.iter().take(10).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits, for a few seconds at most, until both processes hold a delivery job
/// (two lease owners in the documented `delivery_jobs` table), so a kill now
/// lands in the middle of a delivery. Returns the owners and jobs it last saw.
async fn wait_until_both_hold_jobs(database_url: &str) -> (i64, i64) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(database_url)
        .await
        .expect("the test database accepts connections");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (owners, jobs): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(DISTINCT lease_owner), COUNT(lease_owner) FROM delivery_jobs \
             WHERE lease_until > now()",
        )
        .fetch_one(&mut db)
        .await
        .expect("delivery_jobs can be read");
        if owners >= 2 || Instant::now() > deadline {
            return (owners, jobs);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many delivery attempts ended in "delivered" according to one log.
fn deliveries_logged(log: &Path) -> usize {
    read_log(log)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["message"] == "delivery attempt" && event["outcome"] == "delivered")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn replies_posted_to_two_instances_while_one_is_killed_reach_chatwoot_once_each_in_order() {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let database_url = postgres::fresh_database();
    let serve = Serve::new(&database_url, &chatwoot);
    let ports = [free_port(), free_port()];
    let a = serve.start_on("a", ports[0]).await;
    let _b = serve.start_on("b", ports[1]).await;

    let apis = Arc::new(ports.map(api_at));
    let progress = Arc::new(AtomicUsize::new(0));
    let posters: Vec<_> = CONVERSATIONS
        .iter()
        .map(|&c| tokio::spawn(post_conversation(apis.clone(), c, progress.clone())))
        .collect();

    // Chatwoot turns slow, and a few creates succeed but answer after the
    // timeout, so both processes have attempts open when one of them dies.
    wait_for_accepted(&progress, 60).await;
    chatwoot.set_faults(Faults {
        delay_ms: 300,
        late_next: 3,
        late_ms: 1500,
        ..Faults::default()
    });
    wait_for_accepted(&progress, 100).await;
    let (owners, held) = wait_until_both_hold_jobs(&database_url).await;
    assert_eq!(
        owners, 2,
        "the instances never both held a job to kill one in"
    );
    a.kill();
    let _a = serve.start_on("a", ports[0]).await;
    chatwoot.set_faults(Faults::default());
    wait_for_accepted(&progress, 200).await;
    chatwoot.set_faults(Faults {
        fail_next: 8,
        ..Faults::default()
    });

    let mut accepted = Vec::new();
    let mut failed_attempts = 0;
    for poster in posters {
        let posted = poster.await.expect("a poster panicked");
        failed_attempts += posted.failed_attempts;
        accepted.push(posted.accepted);
    }
    wait_until_all_delivered(&chatwoot, &apis[1], &accepted).await;

    for (&conversation, ids) in CONVERSATIONS.iter().zip(&accepted) {
        assert_eq!(
            &delivered_ids(&chatwoot, conversation),
            ids,
            "conversation {conversation}: Chatwoot's messages differ from the accepted replies, in order"
        );
    }
    let (by_a, by_b) = (
        deliveries_logged(&serve.log_of("a")),
        deliveries_logged(&serve.log_of("b")),
    );
    eprintln!(
        "{} replies accepted ({failed_attempts} posts failed and were retried); \
         {held} jobs held by the two instances at the kill; \
         deliveries logged by a: {by_a}, by b: {by_b}; {} creates seen by Chatwoot",
        accepted.iter().map(Vec::len).sum::<usize>(),
        chatwoot.creates().len()
    );
    assert!(
        by_a > 0 && by_b > 0,
        "one instance did all the work: a {by_a}, b {by_b}"
    );
}

/// What the ingest writer logs when a batch's `goldrelay_ingest` call failed.
const BATCH_FELL_BACK: &str = "a batch of posted replies failed; storing each alone";

/// Posts `n` replies at once, to conversations 1 to 4, and waits for each 202.
async fn post_at_once(api: &Api, prefix: &str, n: usize) {
    let posts = (0..n).map(|i| {
        let body = reply(&format!("{prefix}-{i}"), 1 + (i % 4) as i64);
        async move { api.accept(&body).await }
    });
    futures_util::future::join_all(posts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn posted_replies_go_in_batches_through_goldrelay_ingest_and_one_by_one_if_it_breaks() {
    use sqlx::{Connection, Executor};
    let database = postgres::fresh_database();
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let serve = Serve::new(&database, &chatwoot);
    let relay = serve.start("goldrelay").await;
    post_at_once(&relay.api, "batched", 40).await;
    let log = read_log(&serve.log_of("goldrelay"));
    assert!(
        !log.contains(BATCH_FELL_BACK),
        "the batch path failed:\n{log}"
    );

    // A schema whose batch function is gone (a botched migration, say):
    // every post is still stored, one by one, and the log says why.
    let mut conn = sqlx::PgConnection::connect(&database).await.unwrap();
    let gone = conn
        .execute(
            "DROP FUNCTION goldrelay_ingest(text[], int8[], int8[], text[], text[], bool[], \
             text[], text[], text[], text[], text[], text[], timestamptz[], bool[], bool[], \
             text[], text[], text)",
        )
        .await;
    gone.expect("goldrelay_ingest with p_trace_contexts exists");
    post_at_once(&relay.api, "alone", 8).await;
    let log = read_log(&serve.log_of("goldrelay"));
    assert!(log.contains(BATCH_FELL_BACK), "no fallback logged:\n{log}");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM gold_replies")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 48);
    assert!(relay.terminate().await.success());
}

/// Every time an instance writes is the database's: one whose own clock is
/// 30 s behind stamps a reply's acceptance and its confirmation as the
/// others would. A lookup's floor compares those times across instances, so
/// a skewed stamp could hide a reply's own message from its lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn an_instance_whose_clock_is_behind_stamps_replies_and_events_by_the_databases_clock() {
    use crate::helpers::WEBHOOK_SECRET;
    let port = free_port();
    let config = SandboxConfig {
        webhook_url: Some(format!("http://127.0.0.1:{port}/api/webhooks/chatwoot")),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        ..SandboxConfig::default()
    };
    let chatwoot = sandbox::start(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let database = postgres::fresh_database();
    let serve = Serve::new(&database, &chatwoot);
    let behind = serve
        .start_with("behind", port, &crate::chaos::skewed_clock("-30s"))
        .await;
    behind.api.accept(&reply("gr-skewed", 71)).await;
    let record = behind
        .api
        .wait_for_status("gr-skewed", "confirmed", Duration::from_secs(20))
        .await;
    let now = chrono::Utc::now();
    for field in ["received_at", "delivered_at", "confirmed_at"] {
        let at: chrono::DateTime<chrono::Utc> = record[field].as_str().unwrap().parse().unwrap();
        let off = (now - at).num_seconds();
        assert!(
            (0..15).contains(&off),
            "{field} is {off} s before the database's now: {record}"
        );
    }
}
