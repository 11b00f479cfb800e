//! One conformance suite for the `Store` trait: every behaviour the HTTP and
//! delivery code rely on, written once and run against SQLite always
//! (`conformance::sqlite::…`) and against PostgreSQL (`conformance::postgres::…`,
//! a fresh schema per test). The PostgreSQL twins need `TEST_DATABASE_URL`,
//! so they are ignored unless run with `--include-ignored`. Times are explicit
//! `now` values, so nothing here sleeps to let a lease or a retry delay run out.

use crate::helpers;
use chrono::{DateTime, SubsecRound, Utc};
use goldrelay::config::DatabaseUrl;
use goldrelay::domain::{ChannelStatus, ChatwootEvent, EventMessage, GoldReply, ReplyId, Status};
use goldrelay::store::{
    self, Backend, ChannelRead, Cursor, DueReads, EventOutcome, Ingested, Job, Outcome,
    ReplyFilter, ReplyRecord, Requeued, SharedStore, StaleChannelStatus,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::Notify;

/// The lease every claim here takes, unless a test says otherwise.
const LEASE: Duration = Duration::from_secs(60);
/// The lookup delay every claim here takes, unless a test says otherwise:
/// none, so a lost lease makes its job due when the lease ends.
const NO_LOOKUP_DELAY: Duration = Duration::ZERO;
/// Long enough for anything a store does; a test that hits it found a hang.
const PATIENCE: Duration = Duration::from_secs(30);

/// Generates one test per behaviour and backend: `sqlite::<behaviour>` and
/// `postgres::<behaviour>`. `stores` behaviours take a `SharedStore`;
/// `databases` ones take the whole `TestDb` (they open the database again).
macro_rules! conformance {
    (
        stores: [$($store_test:ident),* $(,)?],
        databases: [$($db_test:ident),* $(,)?],
        postgres_only: [$($pg_test:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite {
            use super::TestDb;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $store_test() {
                    let db = TestDb::sqlite().await;
                    super::$store_test(db.store.clone()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $db_test() {
                    super::$db_test(TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            use super::TestDb;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
                async fn $store_test() {
                    let db = TestDb::postgres().await;
                    super::$store_test(db.store.clone()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
                async fn $db_test() {
                    super::$db_test(TestDb::postgres().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
                async fn $pg_test() {
                    super::$pg_test(TestDb::postgres().await).await;
                }
            )*
        }
        /// Each case on PostgreSQL twice, with its server-side fast paths
        /// and with every write through `lifecycle.rs`: the rows must agree.
        mod postgres_fast_paths_agree {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
                async fn $store_test() {
                    super::fast_paths_agree(|store| Box::pin(super::$store_test(store))).await;
                }
            )*
        }
    };
}

conformance! {
    stores: [
        a_new_reply_is_created_a_repeat_is_existing_and_other_content_is_a_conflict,
        approve_and_reject_are_recorded_without_a_delivery_job,
        a_claim_leases_only_the_oldest_job_of_each_conversation,
        a_leased_job_is_claimed_again_only_after_its_lease_and_lookup_delay_then_as_maybe_sent,
        an_unsent_attempt_goes_back_as_it_was_without_counting,
        the_message_floor_is_the_last_message_delivered_before_a_reply_was_accepted,
        every_claim_counts_one_attempt,
        a_delivered_job_is_recorded_and_leaves_the_queue,
        a_retry_sets_the_due_time_next_attempt_at_and_maybe_sent,
        a_dead_job_records_its_error_and_unblocks_its_conversation,
        retry_or_dead_from_an_owner_who_lost_the_lease_changes_nothing,
        delivered_from_an_owner_who_lost_the_lease_is_recorded_anyway,
        next_due_ignores_jobs_blocked_behind_their_conversations_head,
        requeue_puts_a_dead_reply_at_the_back_of_its_line_with_fresh_attempts,
        requeue_refuses_replies_that_are_not_dead_and_unknown_ids,
        list_filters_by_status_account_and_conversation_newest_first,
        list_pages_through_equal_timestamps_without_gaps_or_repeats,
        an_export_page_narrowed_to_an_account_or_a_conversation_holds_only_its_replies,
        count_by_status_and_queue_stats_follow_the_replies,
        an_event_is_processed_once_by_delivery_id_and_by_dedupe_key,
        a_confirmation_removes_a_queued_replys_job_for_good,
        a_confirmation_outlives_the_attempt_in_flight,
        a_confirmation_marks_delivered_and_dead_replies_confirmed_but_not_recorded_ones,
        a_channel_status_moves_only_as_chatwoot_lets_it,
        only_an_outgoing_message_in_the_replys_conversation_confirms_it,
        an_update_without_the_marker_finds_the_reply_by_its_message_id,
        an_update_that_does_not_show_the_status_marks_it_for_reading,
        channel_statuses_are_read_back_until_final,
        requeue_looks_first_after_an_attempt_that_may_have_sent_unless_forced,
        prune_events_deletes_only_events_received_before_the_cutoff,
        concurrent_claims_from_two_owners_never_share_a_job,
        a_capture_comes_due_when_a_delivery_ends_and_at_once_for_a_kept_reply,
    ],
    databases: [a_database_with_a_newer_schema_is_refused],
    postgres_only: [a_new_job_from_another_instance_wakes_this_one],
}

/// A store on a fresh database, and what keeps that database alive.
struct TestDb {
    store: SharedStore,
    url: DatabaseUrl,
    _dir: TempDir,
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/conformance.db", dir.path().display());
        Self::open(DatabaseUrl::parse(&url).expect("a test database URL"), dir).await
    }

    /// A new schema on the `TEST_DATABASE_URL` server; fails the test without one.
    async fn postgres() -> Self {
        let url = helpers::postgres::fresh_database();
        let dir = tempfile::tempdir().unwrap();
        Self::open(DatabaseUrl::parse(&url).expect("a test database URL"), dir).await
    }

    /// [`TestDb::postgres`], with or without PostgreSQL's fast paths.
    async fn postgres_with(fast_paths: bool) -> Self {
        let url = helpers::postgres::fresh_database();
        let url = DatabaseUrl::parse(&url).expect("a test database URL");
        let options = store::StoreOptions {
            fast_paths,
            ..store::StoreOptions::default()
        };
        let store = store::open_with(&url, &options)
            .await
            .expect("the store opens");
        Self {
            store,
            url,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn open(url: DatabaseUrl, dir: TempDir) -> Self {
        let store = store::open(&url).await.expect("the store opens");
        Self {
            store,
            url,
            _dir: dir,
        }
    }
}

// ------------------------------------------------- fast paths vs the rules

/// Runs `case` on a PostgreSQL store with its fast paths (`goldrelay_ingest`,
/// `goldrelay_delivered_many`) and on one whose every write goes through
/// `lifecycle.rs`, and fails unless both leave the same rows.
async fn fast_paths_agree(
    case: impl Fn(SharedStore) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let fast = TestDb::postgres_with(true).await;
    case(fast.store.clone()).await;
    let rules = TestDb::postgres_with(false).await;
    case(rules.store.clone()).await;
    let (fast_rows, rules_rows) = (rows(&fast.url).await, rows(&rules.url).await);
    for ((table, fast), (_, rules)) in fast_rows.iter().zip(&rules_rows) {
        assert_eq!(
            fast, rules,
            "{table}: the fast path (left) and lifecycle.rs (right) left different rows"
        );
    }
}

/// The tables a case writes, as JSON rows in a stable order. Ids the server
/// draws (`seq`, event ids), lease owners (fresh per worker) and events'
/// dedupe keys (a counter the cases share across the process) are left out;
/// times are made relative to the earliest one, since each run starts at its
/// own `now`.
async fn rows(url: &DatabaseUrl) -> Vec<(&'static str, Value)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url.expose()).await.unwrap();
    let queries = [
        ("gold_replies", "SELECT COALESCE(jsonb_agg(to_jsonb(t) ORDER BY reply_id), '[]') FROM gold_replies t"),
        ("delivery_jobs", "SELECT COALESCE(jsonb_agg(to_jsonb(t) - 'seq' - 'lease_owner' ORDER BY seq), '[]') FROM delivery_jobs t"),
        ("chatwoot_events", "SELECT COALESCE(jsonb_agg(to_jsonb(t) - 'id' - 'dedupe_key' \
             ORDER BY received_at, message_id, event, reply_id, payload::text), '[]') FROM chatwoot_events t"),
    ];
    let mut tables = Vec::new();
    for (table, query) in queries {
        let (rows,): (Value,) = sqlx::query_as(query).fetch_one(&mut conn).await.unwrap();
        tables.push((table, rows));
    }
    let earliest = tables
        .iter()
        .filter_map(|(_, rows)| earliest_time(rows))
        .min();
    for (_, rows) in &mut tables {
        relative_times(rows, earliest);
    }
    tables
}

fn as_time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn earliest_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Array(items) => items.iter().filter_map(earliest_time).min(),
        Value::Object(fields) => fields.values().filter_map(earliest_time).min(),
        other => as_time(other),
    }
}

fn relative_times(value: &mut Value, earliest: Option<DateTime<Utc>>) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| relative_times(v, earliest)),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|v| relative_times(v, earliest)),
        other => {
            if let (Some(t), Some(base)) = (as_time(other), earliest) {
                *other = json!(format!("+{}ms", (t - base).num_milliseconds()));
            }
        }
    }
}

// ---------------------------------------------------------------- builders

/// A start time in whole seconds, which both backends store exactly.
fn start() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn body(reply_id: &str, account_id: i64, conversation_id: i64, action: &str) -> Value {
    json!({
        "reply_id": reply_id,
        "account_id": account_id,
        "conversation_id": conversation_id,
        "action": action,
        "content": format!("Reply {reply_id}"),
        "approved_by": "priya@example.com",
    })
}

/// A reply id the store's methods take.
fn rid(raw: &str) -> ReplyId {
    ReplyId::parse(raw).expect("a valid reply id")
}

fn parse(body: &Value) -> GoldReply {
    GoldReply::parse(body).expect("a valid gold reply")
}

/// An `approve_send` reply for account 1.
fn send(reply_id: &str, conversation_id: i64) -> GoldReply {
    parse(&body(reply_id, 1, conversation_id, "approve_send"))
}

fn gold(reply_id: &str, account_id: i64, conversation_id: i64, action: &str) -> GoldReply {
    parse(&body(reply_id, account_id, conversation_id, action))
}

/// The event Chatwoot's webhook body of `kind` about `message` reads as:
/// `marker` in `content_attributes.gold_reply_id`, a top-level `status` and
/// `external_error` when given. `digest` stands for the raw body's.
fn webhook(
    delivery_id: Option<&str>,
    kind: &str,
    message: &EventMessage,
    marker: Option<&str>,
    (status, error): (Option<&str>, Option<&str>),
    digest: &str,
) -> ChatwootEvent {
    let mut attributes = serde_json::Map::new();
    if let Some(marker) = marker {
        attributes.insert("gold_reply_id".into(), marker.into());
    }
    if let Some(error) = error {
        attributes.insert("external_error".into(), error.into());
    }
    let mut body = json!({
        "event": kind,
        "id": message.id,
        "account": { "id": message.account_id },
        "conversation": { "id": message.conversation_id },
        "message_type": if message.outgoing { "outgoing" } else { "incoming" },
        "content_attributes": attributes,
    });
    if let Some(status) = status {
        body["status"] = status.into();
    }
    ChatwootEvent::parse(delivery_id.map(str::to_owned), &body, digest)
}

/// An outgoing message in account 1's conversation `conversation_id`, where
/// `send` puts every reply.
fn outgoing(id: i64, conversation_id: i64) -> EventMessage {
    EventMessage {
        id,
        account_id: Some(1),
        conversation_id: Some(conversation_id),
        outgoing: true,
    }
}

/// The `message_created` echo of a reply's message in its conversation.
fn confirmation(reply_id: &str, conversation_id: i64, message_id: i64) -> ChatwootEvent {
    echo(reply_id, outgoing(message_id, conversation_id))
}

/// A `message_created` about `message`, carrying `reply_id`'s marker.
fn echo(reply_id: &str, message: EventMessage) -> ChatwootEvent {
    webhook(
        None,
        "message_created",
        &message,
        Some(reply_id),
        (None, None),
        "-",
    )
}

/// A `message_updated` with the channel's status for a reply's message.
fn channel_report(
    reply_id: &str,
    message: EventMessage,
    status: &str,
    error: Option<&str>,
) -> ChatwootEvent {
    update(Some(reply_id), message, Some(status), error)
}

/// A `message_updated` about `message`, with or without a marker and a status.
fn update(
    reply_id: Option<&str>,
    message: EventMessage,
    status: Option<&str>,
    error: Option<&str>,
) -> ChatwootEvent {
    // Unique per call: every update is a new event.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let digest = seq.to_string();
    webhook(
        None,
        "message_updated",
        &message,
        reply_id,
        (status, error),
        &digest,
    )
}

fn retry(at: DateTime<Utc>, error: &str, maybe_sent: bool) -> Outcome {
    Outcome::Retry {
        at,
        error: error.into(),
        maybe_sent,
    }
}

fn dead(error: &str) -> Outcome {
    Outcome::Dead {
        error: error.into(),
        maybe_sent: false,
    }
}

/// Given up after an attempt that may have created the message.
fn dead_maybe_sent(error: &str) -> Outcome {
    Outcome::Dead {
        error: error.into(),
        maybe_sent: true,
    }
}

// ------------------------------------------------------------ store calls

/// Ingests a reply that must be new.
async fn ingest(store: &SharedStore, reply: &GoldReply, now: DateTime<Utc>) -> ReplyRecord {
    match store.ingest(reply, now).await.expect("ingest") {
        Ingested::Created(record) => record,
        other => panic!("{} was not created: {other:?}", reply.reply_id()),
    }
}

async fn record(store: &SharedStore, reply_id: &str) -> ReplyRecord {
    store
        .reply(&rid(reply_id))
        .await
        .expect("reply")
        .unwrap_or_else(|| panic!("no record for {reply_id}"))
}

/// Every due job `owner` can lease at `now`, under the standard lease.
async fn claim(store: &SharedStore, owner: &str, now: DateTime<Utc>) -> Vec<Job> {
    store
        .claim(owner, now, LEASE, NO_LOOKUP_DELAY, 100)
        .await
        .expect("claim")
}

/// Claims at `now` and asserts exactly `expected` (in any order) came back.
async fn claim_exactly(
    store: &SharedStore,
    owner: &str,
    now: DateTime<Utc>,
    expected: &[&str],
) -> Vec<Job> {
    let jobs = claim(store, owner, now).await;
    assert_eq!(ids(&jobs), set(expected), "claimed by {owner} at {now}");
    jobs
}

async fn finish(
    store: &SharedStore,
    reply_id: &str,
    owner: &str,
    outcome: Outcome,
    now: DateTime<Utc>,
) {
    store
        .finish(&rid(reply_id), owner, outcome, now)
        .await
        .expect("finish");
}

async fn deliver(store: &SharedStore, reply_id: &str, owner: &str, now: DateTime<Utc>) {
    let outcome = Outcome::Delivered { message_id: 9000 };
    finish(store, reply_id, owner, outcome, now).await;
}

async fn record_event(
    store: &SharedStore,
    event: &ChatwootEvent,
    now: DateTime<Utc>,
) -> EventOutcome {
    let payload = json!({ "event": event.kind(), "id": event.message_id() }).to_string();
    store
        .record_event(event, &payload, now)
        .await
        .expect("record_event")
}

async fn listed(store: &SharedStore, filter: ReplyFilter) -> Vec<String> {
    let records = store.list(&filter).await.expect("list");
    records
        .into_iter()
        .map(|r| r.reply_id.to_string())
        .collect()
}

fn ids(jobs: &[Job]) -> BTreeSet<String> {
    jobs.iter().map(|j| j.reply_id.to_string()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(std::string::ToString::to_string).collect()
}

fn everything() -> ReplyFilter {
    ReplyFilter {
        limit: 100,
        ..ReplyFilter::default()
    }
}

// ---------------------------------------------------------------- ingest

async fn a_new_reply_is_created_a_repeat_is_existing_and_other_content_is_a_conflict(
    store: SharedStore,
) {
    let t0 = start();
    let created = ingest(&store, &send("r1", 7), t0).await;
    assert_eq!(created.reply_id, "r1");
    assert_eq!((created.account_id, created.conversation_id), (1, 7));
    assert_eq!(created.action, goldrelay::domain::Action::ApproveSend);
    assert_eq!(created.status, Status::Queued);
    assert_eq!(created.attempts, 0);
    assert_eq!(created.received_at, t0);
    assert_eq!(created.next_attempt_at, Some(t0));
    assert_eq!(record(&store, "r1").await, created);

    // The same reply, spelled with explicit defaults, later: nothing changes.
    let mut same = body("r1", 1, 7, "approve_send");
    same["private"] = json!(false);
    same["tags"] = json!([]);
    match store.ingest(&parse(&same), t0 + secs(5)).await.unwrap() {
        Ingested::Existing(existing) => assert_eq!(existing, created),
        other => panic!("a repeat is not Existing: {other:?}"),
    }
    let mut other = body("r1", 1, 7, "approve_send");
    other["content"] = json!("Something else entirely");
    match store.ingest(&parse(&other), t0 + secs(6)).await.unwrap() {
        Ingested::Conflict(stored) => assert_eq!(stored, created),
        other => panic!("other content under a taken id is not a Conflict: {other:?}"),
    }

    // A recorded reply's id cannot be reused to send something.
    ingest(&store, &gold("r2", 1, 8, "approve"), t0).await;
    match store.ingest(&send("r2", 8), t0 + secs(7)).await.unwrap() {
        Ingested::Conflict(stored) => assert_eq!(stored.status, Status::Recorded),
        other => panic!("approve_send over an approve is not a Conflict: {other:?}"),
    }

    // Still one job in all, carrying the first content.
    let jobs = claim_exactly(&store, "w", t0 + secs(10), &["r1"]).await;
    assert_eq!(jobs[0].content, "Reply r1");
    assert_eq!((jobs[0].account_id, jobs[0].conversation_id), (1, 7));
    assert!(!jobs[0].private);
}

async fn approve_and_reject_are_recorded_without_a_delivery_job(store: SharedStore) {
    let t0 = start();
    for (reply_id, action) in [("a1", "approve"), ("j1", "reject")] {
        let created = ingest(&store, &gold(reply_id, 1, 7, action), t0).await;
        assert_eq!(created.status, Status::Recorded, "{action}");
        assert_eq!(created.action.as_str(), action);
        assert_eq!(created.next_attempt_at, None, "{action}");
    }
    assert!(claim(&store, "w", t0 + secs(3600)).await.is_empty());
    assert_eq!(store.next_due().await.unwrap(), None);
    assert_eq!(store.queue_stats().await.unwrap().queued, 0);
}

// ---------------------------------------------------------------- claims

async fn a_claim_leases_only_the_oldest_job_of_each_conversation(store: SharedStore) {
    let t0 = start();
    for (i, (reply_id, conversation)) in [("a1", 1), ("a2", 1), ("b1", 2), ("c1", 3), ("c2", 3)]
        .into_iter()
        .enumerate()
    {
        ingest(&store, &send(reply_id, conversation), t0 + secs(i as i64)).await;
    }
    let now = t0 + secs(10);
    let first = store
        .claim("w1", now, LEASE, NO_LOOKUP_DELAY, 2)
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "the limit caps a claim");
    let rest = claim(&store, "w1", now).await;
    let heads: BTreeSet<_> = ids(&first).union(&ids(&rest)).cloned().collect();
    assert_eq!(heads, set(&["a1", "b1", "c1"]));

    // a2 and c2 wait behind their leased heads.
    claim_exactly(&store, "w2", now + secs(1), &[]).await;
    deliver(&store, "a1", "w1", now + secs(2)).await;
    claim_exactly(&store, "w2", now + secs(3), &["a2"]).await;
    deliver(&store, "a2", "w2", now + secs(3)).await;
    deliver(&store, "b1", "w1", now + secs(3)).await;

    // c1 retries late; c2, though due long before, still waits behind it.
    finish(
        &store,
        "c1",
        "w1",
        retry(now + secs(100), "503", false),
        now + secs(4),
    )
    .await;
    claim_exactly(&store, "w2", now + secs(50), &[]).await;
    claim_exactly(&store, "w2", now + secs(100), &["c1"]).await;
}

async fn a_leased_job_is_claimed_again_only_after_its_lease_and_lookup_delay_then_as_maybe_sent(
    store: SharedStore,
) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    let (lease, lookup) = (Duration::from_secs(30), Duration::from_secs(20));
    let first = store.claim("w1", t0, lease, lookup, 10).await.unwrap();
    assert_eq!(ids(&first), set(&["r1"]));
    assert!(!first[0].maybe_sent, "a first attempt has sent nothing");

    // A create may leave until the lease ends; the lookup waits its delay after that.
    for at in [29, 31, 49] {
        let early = store
            .claim("w2", t0 + secs(at), lease, lookup, 10)
            .await
            .unwrap();
        assert!(
            early.is_empty(),
            "claimed {at} s after the claim: {early:?}"
        );
    }
    assert_eq!(store.next_due().await.unwrap(), Some(t0 + secs(50)));
    let after = store
        .claim("w2", t0 + secs(50), lease, lookup, 10)
        .await
        .unwrap();
    assert_eq!(ids(&after), set(&["r1"]));
    assert!(
        after[0].maybe_sent,
        "the dead owner may have sent it: look first"
    );
    assert_eq!(after[0].attempt, 2);
}

async fn an_unsent_attempt_goes_back_as_it_was_without_counting(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    claim_exactly(&store, "w", t0, &["r1"]).await;
    let unsent = Outcome::Unsent {
        at: t0 + secs(5),
        maybe_sent: false,
        attempts: 0,
        why: Some("no send slot was free in time".into()),
    };
    finish(&store, "r1", "w", unsent, t0 + secs(1)).await;
    let r1 = record(&store, "r1").await;
    assert_eq!(r1.attempts, 0);
    assert_eq!(r1.next_attempt_at, Some(t0 + secs(5)));
    assert_eq!(
        r1.last_error.as_deref(),
        Some("no send slot was free in time")
    );
    claim_exactly(&store, "w", t0 + secs(4), &[]).await;
    let again = claim_exactly(&store, "w", t0 + secs(5), &["r1"]).await;
    assert_eq!(again[0].attempt, 1, "the unsent attempt was not counted");
    assert!(!again[0].maybe_sent, "nothing left: no lookup");

    // One that was maybe sent before stays so; from a lost lease it changes nothing.
    let kept = Outcome::Unsent {
        at: t0 + secs(9),
        maybe_sent: true,
        attempts: 0,
        why: None,
    };
    finish(&store, "r1", "someone-else", kept.clone(), t0 + secs(6)).await;
    assert_eq!(record(&store, "r1").await.attempts, 1);
    finish(&store, "r1", "w", kept, t0 + secs(6)).await;
    let jobs = claim_exactly(&store, "w", t0 + secs(9), &["r1"]).await;
    assert!(jobs[0].maybe_sent);
}

async fn the_message_floor_is_the_last_message_delivered_before_a_reply_was_accepted(
    store: SharedStore,
) {
    let t0 = start();
    assert_eq!(store.message_floor(1, 7, t0).await.unwrap(), 0);
    for (reply_id, conversation, message_id, at) in
        [("a1", 7, 500, 0), ("a2", 7, 900, 10), ("b1", 8, 4000, 0)]
    {
        ingest(&store, &send(reply_id, conversation), t0 + secs(at)).await;
        claim_exactly(&store, "w", t0 + secs(at), &[reply_id]).await;
        let delivered = Outcome::Delivered { message_id };
        finish(&store, reply_id, "w", delivered, t0 + secs(at + 1)).await;
    }
    assert_eq!(store.message_floor(1, 7, t0 + secs(5)).await.unwrap(), 500);
    assert_eq!(store.message_floor(1, 7, t0 + secs(20)).await.unwrap(), 900);
    assert_eq!(
        store.message_floor(1, 8, t0 + secs(20)).await.unwrap(),
        4000
    );
    assert_eq!(store.message_floor(2, 7, t0 + secs(20)).await.unwrap(), 0);
}

async fn every_claim_counts_one_attempt(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    for attempt in 1..=3 {
        let now = t0 + secs(attempt * 10);
        let jobs = claim_exactly(&store, "w", now, &["r1"]).await;
        assert_eq!(jobs[0].attempt, attempt);
        assert_eq!(record(&store, "r1").await.attempts, attempt);
        // An empty claim counts nothing.
        claim_exactly(&store, "w", now, &[]).await;
        finish(&store, "r1", "w", retry(now + secs(1), "503", false), now).await;
        assert_eq!(record(&store, "r1").await.attempts, attempt);
    }
}

// ---------------------------------------------------------------- finish

async fn a_delivered_job_is_recorded_and_leaves_the_queue(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    claim_exactly(&store, "w", t0, &["r1"]).await;
    finish(
        &store,
        "r1",
        "w",
        retry(t0 + secs(5), "503", false),
        t0 + secs(1),
    )
    .await;
    claim_exactly(&store, "w", t0 + secs(5), &["r1"]).await;
    let delivered = Outcome::Delivered { message_id: 4242 };
    finish(&store, "r1", "w", delivered, t0 + secs(6)).await;

    let r1 = record(&store, "r1").await;
    assert_eq!(r1.status, Status::Delivered);
    assert_eq!(r1.chatwoot_message_id, Some(4242));
    assert_eq!(r1.delivered_at, Some(t0 + secs(6)));
    assert_eq!(r1.last_error, None, "a delivery clears the last error");
    assert_eq!(r1.next_attempt_at, None);
    assert_eq!(r1.attempts, 2);
    claim_exactly(&store, "w", t0 + secs(3600), &[]).await;
    assert_eq!(store.next_due().await.unwrap(), None);
    assert_eq!(store.queue_stats().await.unwrap().queued, 0);
}

async fn a_retry_sets_the_due_time_next_attempt_at_and_maybe_sent(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    claim_exactly(&store, "w", t0, &["r1"]).await;
    finish(
        &store,
        "r1",
        "w",
        retry(t0 + secs(30), "HTTP 503", false),
        t0 + secs(1),
    )
    .await;

    let r1 = record(&store, "r1").await;
    assert_eq!(r1.status, Status::Queued);
    assert_eq!(r1.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(r1.next_attempt_at, Some(t0 + secs(30)));
    assert_eq!(store.next_due().await.unwrap(), Some(t0 + secs(30)));
    claim_exactly(&store, "w", t0 + secs(29), &[]).await;
    let jobs = claim_exactly(&store, "w", t0 + secs(30), &["r1"]).await;
    assert!(!jobs[0].maybe_sent, "the worker knew nothing was created");

    finish(
        &store,
        "r1",
        "w",
        retry(t0 + secs(60), "timeout", true),
        t0 + secs(31),
    )
    .await;
    let jobs = claim_exactly(&store, "w", t0 + secs(60), &["r1"]).await;
    assert!(jobs[0].maybe_sent, "a timed-out create may have happened");
}

async fn a_dead_job_records_its_error_and_unblocks_its_conversation(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("a1", 7), t0).await;
    ingest(&store, &send("a2", 7), t0 + secs(1)).await;
    claim_exactly(&store, "w", t0 + secs(2), &["a1"]).await;
    finish(&store, "a1", "w", dead("HTTP 422"), t0 + secs(3)).await;

    let a1 = record(&store, "a1").await;
    assert_eq!(a1.status, Status::Dead);
    assert_eq!(a1.last_error.as_deref(), Some("HTTP 422"));
    assert_eq!(a1.next_attempt_at, None);
    claim_exactly(&store, "w", t0 + secs(4), &["a2"]).await;
}

async fn retry_or_dead_from_an_owner_who_lost_the_lease_changes_nothing(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    claim_exactly(&store, "slow", t0, &["r1"]).await;
    claim_exactly(&store, "fast", t0 + secs(61), &["r1"]).await;
    let before = record(&store, "r1").await;

    let late = t0 + secs(62);
    finish(&store, "r1", "slow", retry(late, "late retry", false), late).await;
    finish(&store, "r1", "slow", dead("late dead"), late).await;
    assert_eq!(record(&store, "r1").await, before);
    // "fast" still holds the job, and its own outcome still counts.
    claim_exactly(&store, "other", late, &[]).await;
    finish(
        &store,
        "r1",
        "fast",
        retry(t0 + secs(70), "fast's error", false),
        late,
    )
    .await;
    let r1 = record(&store, "r1").await;
    assert_eq!(r1.last_error.as_deref(), Some("fast's error"));
    assert_eq!(r1.next_attempt_at, Some(t0 + secs(70)));
}

async fn delivered_from_an_owner_who_lost_the_lease_is_recorded_anyway(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    claim_exactly(&store, "slow", t0, &["r1"]).await;
    claim_exactly(&store, "fast", t0 + secs(61), &["r1"]).await;
    let delivered = Outcome::Delivered { message_id: 77 };
    finish(&store, "r1", "slow", delivered, t0 + secs(62)).await;

    let r1 = record(&store, "r1").await;
    assert_eq!(
        r1.status,
        Status::Delivered,
        "the message exists either way"
    );
    assert_eq!(r1.chatwoot_message_id, Some(77));
    claim_exactly(&store, "other", t0 + secs(3600), &[]).await;
}

async fn next_due_ignores_jobs_blocked_behind_their_conversations_head(store: SharedStore) {
    let t0 = start();
    assert_eq!(store.next_due().await.unwrap(), None);
    ingest(&store, &send("a1", 1), t0).await;
    ingest(&store, &send("a2", 1), t0 + secs(1)).await;
    assert_eq!(store.next_due().await.unwrap(), Some(t0));

    // a2 is due, but it waits behind a1: a1's lease end is what counts.
    claim_exactly(&store, "w", t0 + secs(2), &["a1"]).await;
    assert_eq!(store.next_due().await.unwrap(), Some(t0 + secs(62)));
    finish(
        &store,
        "a1",
        "w",
        retry(t0 + secs(100), "503", false),
        t0 + secs(3),
    )
    .await;
    assert_eq!(store.next_due().await.unwrap(), Some(t0 + secs(100)));

    ingest(&store, &send("b1", 2), t0 + secs(5)).await;
    assert_eq!(store.next_due().await.unwrap(), Some(t0 + secs(5)));
}

// ---------------------------------------------------------------- requeue

/// The lookup delay requeues are given (`GOLDRELAY_LOOKUP_DELAY`'s default).
const LOOK: std::time::Duration = std::time::Duration::from_secs(60);

async fn requeue_puts_a_dead_reply_at_the_back_of_its_line_with_fresh_attempts(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("a1", 7), t0).await;
    ingest(&store, &send("a2", 7), t0 + secs(1)).await;
    claim_exactly(&store, "w", t0 + secs(2), &["a1"]).await;
    finish(&store, "a1", "w", dead("HTTP 422"), t0 + secs(3)).await;

    let t1 = t0 + secs(10);
    let requeued = match store.requeue(&rid("a1"), false, t1, LOOK).await.unwrap() {
        Requeued::Queued { record, .. } => record,
        other => panic!("a dead reply was not requeued: {other:?}"),
    };
    assert_eq!(requeued.status, Status::Queued);
    assert_eq!(requeued.attempts, 0);
    assert_eq!(requeued.next_attempt_at, Some(t1));
    assert_eq!(record(&store, "a1").await, requeued);

    // a2 was accepted before the requeue, so it goes first.
    claim_exactly(&store, "w", t1 + secs(1), &["a2"]).await;
    deliver(&store, "a2", "w", t1 + secs(2)).await;
    let jobs = claim_exactly(&store, "w", t1 + secs(3), &["a1"]).await;
    assert_eq!(jobs[0].attempt, 1, "a fresh attempt budget");
    assert!(!jobs[0].maybe_sent, "the operator chose to send again");
    assert_eq!(jobs[0].received_at, t1, "its age counts from the requeue");
    assert_eq!(
        jobs[0].accepted_at, t0,
        "a lookup still pages back to when the reply was first accepted"
    );
}

async fn requeue_looks_first_after_an_attempt_that_may_have_sent_unless_forced(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("u1", 7), t0).await;
    claim_exactly(&store, "w", t0, &["u1"]).await;
    let timeout = retry(t0 + secs(5), "timeout", true);
    finish(&store, "u1", "w", timeout, t0 + secs(1)).await;
    let jobs = claim_exactly(&store, "w", t0 + secs(5), &["u1"]).await;
    assert!(jobs[0].maybe_sent);
    finish(&store, "u1", "w", dead_maybe_sent("gave up"), t0 + secs(6)).await;

    let requeue = |force: bool, at| {
        let store = store.clone();
        async move {
            match store.requeue(&rid("u1"), force, at, LOOK).await.unwrap() {
                Requeued::Queued { record, .. } => record,
                other => panic!("a dead reply was not requeued: {other:?}"),
            }
        }
    };
    // Its last create left at t0 + 5 s, moments before it died: the look
    // waits the lookup delay, as every other lookup does.
    let looks = requeue(false, t0 + secs(10)).await;
    assert_eq!(looks.next_attempt_at, Some(t0 + secs(70)));
    claim_exactly(&store, "w", t0 + secs(69), &[]).await;
    let jobs = claim_exactly(&store, "w", t0 + secs(70), &["u1"]).await;
    assert!(jobs[0].maybe_sent, "the operator's retry looks first");
    // It died again for sure (a 422 before anything was stored); the earlier
    // uncertainty remains, so a plain retry still looks first.
    finish(&store, "u1", "w", dead("HTTP 422"), t0 + secs(71)).await;
    requeue(false, t0 + secs(80)).await;
    let jobs = claim_exactly(&store, "w", t0 + secs(140), &["u1"]).await;
    assert!(jobs[0].maybe_sent, "still uncertain");
    finish(&store, "u1", "w", dead("HTTP 422"), t0 + secs(141)).await;
    let forced = requeue(true, t0 + secs(150)).await;
    assert_eq!(
        forced.next_attempt_at,
        Some(t0 + secs(150)),
        "forced: due at once"
    );
    let jobs = claim_exactly(&store, "w", t0 + secs(150), &["u1"]).await;
    assert!(!jobs[0].maybe_sent, "forced: sent without looking");
}

async fn requeue_refuses_replies_that_are_not_dead_and_unknown_ids(store: SharedStore) {
    let t0 = start();
    assert!(matches!(
        store.requeue(&rid("nope"), false, t0, LOOK).await.unwrap(),
        Requeued::NotFound
    ));
    ingest(&store, &send("queued", 1), t0).await;
    ingest(&store, &send("delivered", 2), t0).await;
    ingest(&store, &gold("recorded", 1, 3, "approve"), t0).await;
    claim_exactly(&store, "w", t0, &["queued", "delivered"]).await;
    deliver(&store, "delivered", "w", t0 + secs(1)).await;

    for (reply_id, status) in [
        ("queued", Status::Queued),
        ("delivered", Status::Delivered),
        ("recorded", Status::Recorded),
    ] {
        match store
            .requeue(&rid(reply_id), false, t0 + secs(2), LOOK)
            .await
            .unwrap()
        {
            Requeued::NotDead(record) => assert_eq!(record.status, status, "{reply_id}"),
            other => panic!("{reply_id} was requeued: {other:?}"),
        }
    }
    // No second job appeared for any of them.
    finish(
        &store,
        "queued",
        "w",
        retry(t0 + secs(5), "503", false),
        t0 + secs(3),
    )
    .await;
    claim_exactly(&store, "w", t0 + secs(3600), &["queued"]).await;
    deliver(&store, "queued", "w", t0 + secs(3601)).await;
    claim_exactly(&store, "w", t0 + secs(7200), &[]).await;
}

// ---------------------------------------------------------------- reading

async fn list_filters_by_status_account_and_conversation_newest_first(store: SharedStore) {
    let t0 = start();
    let replies = [
        ("x1", 1, 1, "approve_send"),
        ("x2", 1, 2, "approve"),
        ("x3", 2, 1, "approve_send"),
        ("x4", 2, 3, "reject"),
        ("x5", 1, 1, "approve_send"),
    ];
    for (i, (reply_id, account, conversation, action)) in replies.into_iter().enumerate() {
        let reply = gold(reply_id, account, conversation, action);
        ingest(&store, &reply, t0 + secs(i as i64)).await;
    }
    let filter = |status, account_id, conversation_id, limit| ReplyFilter {
        status,
        account_id,
        conversation_id,
        after: None,
        limit,
    };
    let cases = [
        (
            filter(None, None, None, 100),
            vec!["x5", "x4", "x3", "x2", "x1"],
        ),
        (filter(None, None, None, 2), vec!["x5", "x4"]),
        (
            filter(Some(Status::Recorded), None, None, 100),
            vec!["x4", "x2"],
        ),
        (
            filter(Some(Status::Queued), None, None, 100),
            vec!["x5", "x3", "x1"],
        ),
        (filter(Some(Status::Dead), None, None, 100), vec![]),
        (filter(None, Some(2), None, 100), vec!["x4", "x3"]),
        (filter(None, None, Some(1), 100), vec!["x5", "x3", "x1"]),
        (filter(None, Some(1), Some(1), 100), vec!["x5", "x1"]),
        (filter(Some(Status::Queued), Some(2), None, 100), vec!["x3"]),
    ];
    for (filter, expected) in cases {
        assert_eq!(listed(&store, filter.clone()).await, expected, "{filter:?}");
    }
}

async fn an_export_page_narrowed_to_an_account_or_a_conversation_holds_only_its_replies(
    store: SharedStore,
) {
    let t0 = start();
    let replies = [
        ("e1", 1, 1),
        ("e2", 2, 1),
        ("e3", 1, 2),
        ("e4", 2, 2),
        ("e5", 1, 1),
    ];
    for (i, (reply_id, account, conversation)) in replies.into_iter().enumerate() {
        let reply = gold(reply_id, account, conversation, "approve");
        ingest(&store, &reply, t0 + secs(i as i64)).await;
    }
    let page = |account, conversation, limit| store::ExportPage {
        after: None,
        until: t0 + secs(60),
        conversation,
        account,
        limit,
    };
    let cases = [
        (page(None, None, 100), vec!["e1", "e2", "e3", "e4", "e5"]),
        (page(Some(1), None, 100), vec!["e1", "e3", "e5"]),
        (page(Some(2), None, 1), vec!["e2"]),
        (page(None, Some((1, 1)), 100), vec!["e1", "e5"]),
        (page(Some(1), Some((1, 2)), 100), vec!["e3"]),
        (page(Some(2), Some((1, 1)), 100), vec![]),
        (page(Some(3), None, 100), vec![]),
    ];
    for (page, expected) in cases {
        let records = store.export(&page).await.expect("export");
        let exported: Vec<String> = records.iter().map(|r| r.reply_id.to_string()).collect();
        assert_eq!(exported, expected, "{page:?}");
    }
}

async fn list_pages_through_equal_timestamps_without_gaps_or_repeats(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("p-f", 1), t0).await;
    // Five replies in one second, stored in an order unlike their ids.
    for reply_id in ["p-c", "p-a", "p-e", "p-b", "p-d"] {
        ingest(&store, &send(reply_id, 2), t0 + secs(5)).await;
    }
    ingest(&store, &send("p-g", 3), t0 + secs(9)).await;
    let newest_first = ["p-g", "p-a", "p-b", "p-c", "p-d", "p-e", "p-f"];
    assert_eq!(listed(&store, everything()).await, newest_first);

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let filter = ReplyFilter {
            after: after.clone(),
            limit: 2,
            ..ReplyFilter::default()
        };
        let page = store.list(&filter).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(Cursor {
            received_at: last.received_at,
            reply_id: last.reply_id.clone(),
        });
        pages.push(page.iter().map(|r| r.reply_id.clone()).collect::<Vec<_>>());
    }
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert_eq!(pages.concat(), newest_first);
}

async fn count_by_status_and_queue_stats_follow_the_replies(store: SharedStore) {
    let counts = |store: SharedStore| async move {
        let counts = store.count_by_status().await.unwrap();
        let counts: BTreeMap<_, _> = counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect();
        let count = |s: Status| counts.get(s.as_str()).copied().unwrap_or(0);
        [
            Status::Recorded,
            Status::Queued,
            Status::Delivered,
            Status::Confirmed,
            Status::Dead,
        ]
        .map(count)
    };
    let t0 = start();
    assert_eq!(counts(store.clone()).await, [0; 5]);
    let empty = store.queue_stats().await.unwrap();
    assert_eq!((empty.queued, empty.oldest_queued_at), (0, None));

    for (i, reply_id) in ["q1", "q2", "q3"].into_iter().enumerate() {
        ingest(&store, &send(reply_id, i as i64 + 1), t0 + secs(i as i64)).await;
    }
    ingest(&store, &gold("ok", 1, 9, "approve"), t0 + secs(3)).await;
    ingest(&store, &gold("no", 1, 9, "reject"), t0 + secs(4)).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.queued, stats.oldest_queued_at), (3, Some(t0)));

    claim_exactly(&store, "w", t0 + secs(5), &["q1", "q2", "q3"]).await;
    deliver(&store, "q1", "w", t0 + secs(6)).await;
    finish(&store, "q2", "w", dead("HTTP 404"), t0 + secs(6)).await;
    finish(
        &store,
        "q3",
        "w",
        retry(t0 + secs(9), "503", false),
        t0 + secs(6),
    )
    .await;
    assert_eq!(counts(store.clone()).await, [2, 1, 1, 0, 1]);
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        (stats.queued, stats.oldest_queued_at),
        (1, Some(t0 + secs(2)))
    );
}

// ---------------------------------------------------------------- Chatwoot events

async fn an_event_is_processed_once_by_delivery_id_and_by_dedupe_key(store: SharedStore) {
    let t0 = start();
    // Incoming messages: their dedupe key is `message_created:<id>`.
    let cases = [
        (Some("d-1"), 1, EventOutcome::Processed),
        (Some("d-1"), 2, EventOutcome::Duplicate),
        (Some("d-2"), 1, EventOutcome::Duplicate),
        (None, 3, EventOutcome::Processed),
        (None, 3, EventOutcome::Duplicate),
        // Events without a delivery id never collide on it.
        (None, 4, EventOutcome::Processed),
        (Some("d-3"), 5, EventOutcome::Processed),
    ];
    for (delivery_id, message_id, expected) in cases {
        let message = EventMessage {
            outgoing: false,
            ..outgoing(message_id, 1)
        };
        let event = webhook(
            delivery_id,
            "message_created",
            &message,
            None,
            (None, None),
            "-",
        );
        assert_eq!(event.dedupe_key(), format!("message_created:{message_id}"));
        let outcome = record_event(&store, &event, t0).await;
        assert_eq!(outcome, expected, "{delivery_id:?} {message_id}");
    }
}

async fn a_confirmation_removes_a_queued_replys_job_for_good(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("a1", 7), t0).await;
    ingest(&store, &send("a2", 7), t0 + secs(1)).await;
    let outcome = record_event(&store, &confirmation("a1", 7, 501), t0 + secs(2)).await;
    assert_eq!(outcome, EventOutcome::Processed);

    let a1 = record(&store, "a1").await;
    assert_eq!(a1.status, Status::Confirmed);
    assert_eq!(a1.chatwoot_message_id, Some(501));
    assert_eq!(a1.confirmed_at, Some(t0 + secs(2)));
    assert_eq!(a1.next_attempt_at, None);
    // a1 is never claimed; a2 no longer waits for it.
    claim_exactly(&store, "w", t0 + secs(3), &["a2"]).await;
    deliver(&store, "a2", "w", t0 + secs(4)).await;
    claim_exactly(&store, "w", t0 + secs(3600), &[]).await;
    assert_eq!(record(&store, "a1").await.status, Status::Confirmed);
}

async fn a_confirmation_outlives_the_attempt_in_flight(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    claim_exactly(&store, "w", t0, &["r1"]).await;
    record_event(&store, &confirmation("r1", 7, 601), t0 + secs(1)).await;

    finish(
        &store,
        "r1",
        "w",
        retry(t0 + secs(5), "timeout", true),
        t0 + secs(2),
    )
    .await;
    finish(&store, "r1", "w", dead("gave up"), t0 + secs(2)).await;
    claim_exactly(&store, "w", t0 + secs(3600), &[]).await;
    let r1 = record(&store, "r1").await;
    assert_eq!(r1.status, Status::Confirmed);
    assert_eq!(r1.last_error, None);

    let delivered = Outcome::Delivered { message_id: 601 };
    finish(&store, "r1", "w", delivered, t0 + secs(3)).await;
    assert_eq!(record(&store, "r1").await.status, Status::Confirmed);
}

async fn a_confirmation_marks_delivered_and_dead_replies_confirmed_but_not_recorded_ones(
    store: SharedStore,
) {
    let t0 = start();
    ingest(&store, &send("sent", 1), t0).await;
    ingest(&store, &send("lost", 2), t0).await;
    ingest(&store, &gold("kept", 1, 3, "approve"), t0).await;
    claim_exactly(&store, "w", t0, &["sent", "lost"]).await;
    let delivered = Outcome::Delivered { message_id: 11 };
    finish(&store, "sent", "w", delivered, t0 + secs(1)).await;
    finish(&store, "lost", "w", dead("timeout"), t0 + secs(1)).await;

    let at = t0 + secs(5);
    for (reply_id, conversation_id, message_id) in [
        ("sent", 1, 11),
        ("lost", 2, 12),
        ("kept", 3, 13),
        ("unknown", 4, 14),
    ] {
        let confirmation = confirmation(reply_id, conversation_id, message_id);
        let outcome = record_event(&store, &confirmation, at).await;
        assert_eq!(outcome, EventOutcome::Processed, "{reply_id}");
    }
    let sent = record(&store, "sent").await;
    assert_eq!(sent.status, Status::Confirmed);
    assert_eq!(sent.chatwoot_message_id, Some(11));
    assert_eq!(
        sent.delivered_at,
        Some(t0 + secs(1)),
        "delivery time is kept"
    );
    assert_eq!(sent.confirmed_at, Some(at));
    let lost = record(&store, "lost").await;
    assert_eq!(lost.status, Status::Confirmed, "it arrived after all");
    assert_eq!(lost.chatwoot_message_id, Some(12));
    assert_eq!(lost.confirmed_at, Some(at));
    assert!(matches!(
        store.requeue(&rid("lost"), false, at, LOOK).await.unwrap(),
        Requeued::NotDead(_)
    ));
    let kept = record(&store, "kept").await;
    assert_eq!((kept.status, kept.confirmed_at), (Status::Recorded, None));
    assert!(store.reply(&rid("unknown")).await.unwrap().is_none());
    claim_exactly(&store, "w", t0 + secs(3600), &[]).await;
}

/// `(channel_status, channel_error)` of a reply.
async fn channel(store: &SharedStore, reply_id: &str) -> (Option<String>, Option<String>) {
    let r = record(store, reply_id).await;
    let status = r.channel_status.map(|s| s.as_str().to_owned());
    (status, r.channel_error)
}

fn some(status: &str, error: Option<&str>) -> (Option<String>, Option<String>) {
    (Some(status.to_owned()), error.map(str::to_owned))
}

async fn a_channel_status_moves_only_as_chatwoot_lets_it(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 1), t0).await;
    ingest(&store, &send("r2", 2), t0).await;
    claim_exactly(&store, "w", t0, &["r1", "r2"]).await;
    deliver(&store, "r2", "w", t0 + secs(1)).await;

    // A report on a message proves it exists: the queued r1 is confirmed too.
    record_event(
        &store,
        &channel_report("r1", outgoing(31, 1), "sent", None),
        t0 + secs(2),
    )
    .await;
    let r1 = record(&store, "r1").await;
    assert_eq!(r1.status, Status::Confirmed);
    assert_eq!(r1.channel_status, Some(ChannelStatus::Sent));
    claim_exactly(&store, "w", t0 + secs(3600), &[]).await;
    // read never goes back to delivered, nor to sent.
    for (status, expected) in [("read", "read"), ("delivered", "read"), ("sent", "read")] {
        let report = channel_report("r1", outgoing(31, 1), status, None);
        record_event(&store, &report, t0 + secs(3)).await;
        assert_eq!(
            channel(&store, "r1").await,
            some(expected, None),
            "after {status}"
        );
    }

    // failed is not final: an agent's retry makes the message sent again, and
    // the error goes with the failure.
    let error = "Message failed to send: more than 24 hours";
    let steps = [
        ("failed", Some(error), some("failed", Some(error))),
        ("sent", None, some("sent", None)),
        ("failed", Some(error), some("failed", Some(error))),
        ("delivered", None, some("delivered", None)),
        ("read", None, some("read", None)),
        ("failed", Some(error), some("failed", Some(error))),
        ("bogus", None, some("failed", Some(error))),
    ];
    for (status, error, expected) in steps {
        let report = channel_report("r2", outgoing(9000, 2), status, error);
        record_event(&store, &report, t0 + secs(4)).await;
        assert_eq!(channel(&store, "r2").await, expected, "after {status}");
    }

    // A status Chatwoot does not name is one the event did not show: the
    // status stays, and the reply is marked for reading back from Chatwoot.
    for marked in stale(&store, due(t0 + secs(5), None)).await {
        let id = marked.reply_id.to_string();
        record_read(&store, &id, None, marked.since, None).await;
    }
    assert_eq!(stale(&store, due(t0 + secs(6), None)).await, []);
    let unnamed = channel_report("r2", outgoing(9000, 2), "bogus", None);
    record_event(&store, &unnamed, t0 + secs(7)).await;
    assert_eq!(
        ids_of(&stale(&store, due(t0 + secs(8), None)).await),
        ["r2"]
    );
    assert_eq!(channel(&store, "r2").await, some("failed", Some(error)));
}

async fn only_an_outgoing_message_in_the_replys_conversation_confirms_it(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    let foreign = [
        EventMessage {
            account_id: Some(2),
            ..outgoing(41, 7)
        },
        EventMessage {
            account_id: None,
            ..outgoing(42, 7)
        },
        outgoing(43, 8),
        EventMessage {
            conversation_id: None,
            ..outgoing(44, 7)
        },
        EventMessage {
            outgoing: false,
            ..outgoing(45, 7)
        },
    ];
    for message in foreign {
        let echo = echo("r1", message.clone());
        let outcome = record_event(&store, &echo, t0 + secs(1)).await;
        assert_eq!(outcome, EventOutcome::Mismatch, "{message:?}");
        let report = channel_report("r1", message.clone(), "failed", Some("no"));
        let outcome = record_event(&store, &report, t0 + secs(1)).await;
        assert_eq!(outcome, EventOutcome::Mismatch, "{message:?}");
    }
    let r1 = record(&store, "r1").await;
    assert_eq!((r1.status, r1.chatwoot_message_id), (Status::Queued, None));
    assert_eq!(channel(&store, "r1").await, (None, None));

    // Still in the queue; once goldrelay knows its message, only that message confirms it.
    claim_exactly(&store, "w", t0 + secs(2), &["r1"]).await;
    deliver(&store, "r1", "w", t0 + secs(3)).await;
    let other = confirmation("r1", 7, 9001);
    assert_eq!(
        record_event(&store, &other, t0 + secs(4)).await,
        EventOutcome::Mismatch
    );
    assert_eq!(record(&store, "r1").await.status, Status::Delivered);
    let ours = confirmation("r1", 7, 9000);
    assert_eq!(
        record_event(&store, &ours, t0 + secs(5)).await,
        EventOutcome::Processed
    );
    let r1 = record(&store, "r1").await;
    assert_eq!(
        (r1.status, r1.chatwoot_message_id),
        (Status::Confirmed, Some(9000))
    );
}

async fn an_update_without_the_marker_finds_the_reply_by_its_message_id(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    claim_exactly(&store, "w", t0, &["r1"]).await;
    deliver(&store, "r1", "w", t0 + secs(1)).await;
    let error = "(#131047) Re-engagement message";
    let steps = [
        ("failed", Some(error), some("failed", Some(error))),
        // An agent's retry in Chatwoot 4.13 empties content_attributes, marker included.
        ("sent", None, some("sent", None)),
    ];
    for (status, error, expected) in steps {
        let report = update(None, outgoing(9000, 7), Some(status), error);
        let outcome = record_event(&store, &report, t0 + secs(2)).await;
        assert_eq!(outcome, EventOutcome::Processed);
        assert_eq!(channel(&store, "r1").await, expected, "after {status}");
    }
    assert_eq!(record(&store, "r1").await.status, Status::Confirmed);

    // Someone else's message, and our message id seen in another conversation.
    let unknown = update(None, outgoing(777, 7), Some("failed"), Some("x"));
    let outcome = record_event(&store, &unknown, t0 + secs(3)).await;
    assert_eq!(outcome, EventOutcome::Processed);
    let elsewhere = update(None, outgoing(9000, 8), Some("failed"), Some("x"));
    let outcome = record_event(&store, &elsewhere, t0 + secs(3)).await;
    assert_eq!(outcome, EventOutcome::Mismatch);
    assert_eq!(channel(&store, "r1").await, some("sent", None));

    // A reply kept without sending has no message, so no channel either.
    ingest(&store, &gold("kept", 1, 3, "approve"), t0).await;
    let report = channel_report("kept", outgoing(555, 3), "read", None);
    record_event(&store, &report, t0 + secs(4)).await;
    let kept = record(&store, "kept").await;
    assert_eq!((kept.status, kept.channel_status), (Status::Recorded, None));
}

/// What is due for reading at `now`: marked replies only, or (`every`) also
/// delivered replies whose first check has come.
fn due(now: DateTime<Utc>, every: Option<Duration>) -> DueReads {
    DueReads {
        now,
        limit: 10,
        every,
        horizon: now - secs(3600),
    }
}

async fn stale(store: &SharedStore, due: DueReads) -> Vec<StaleChannelStatus> {
    store
        .stale_channel_statuses(&due)
        .await
        .expect("stale_channel_statuses")
}

async fn record_read(
    store: &SharedStore,
    reply_id: &str,
    status: Option<&str>,
    since: Option<DateTime<Utc>>,
    next: Option<DateTime<Utc>>,
) {
    let read = ChannelRead {
        status: status.map(|name| ChannelStatus::parse(name).expect("a channel status")),
        error: None,
        since,
        next,
    };
    store
        .record_channel_status(&rid(reply_id), &read)
        .await
        .expect("record_channel_status");
}

async fn an_update_that_does_not_show_the_status_marks_it_for_reading(store: SharedStore) {
    let t0 = start();
    ingest(&store, &send("r1", 7), t0).await;
    ingest(&store, &send("r2", 8), t0).await;
    claim_exactly(&store, "w", t0, &["r1", "r2"]).await;
    finish(&store, "r1", "w", Outcome::Delivered { message_id: 71 }, t0).await;
    finish(&store, "r2", "w", Outcome::Delivered { message_id: 81 }, t0).await;
    assert!(stale(&store, due(t0 + secs(1), None)).await.is_empty());

    let unseen = |id, conversation| update(None, outgoing(id, conversation), None, None);
    record_event(&store, &unseen(71, 7), t0 + secs(2)).await;
    record_event(&store, &unseen(81, 8), t0 + secs(3)).await;
    let listed = stale(&store, due(t0 + secs(3), None)).await;
    let expected = |reply_id: &str, conversation_id, message_id, at| StaleChannelStatus {
        reply_id: rid(reply_id),
        account_id: 1,
        conversation_id,
        message_id,
        since: Some(at),
        received_at: t0,
    };
    assert_eq!(
        listed,
        [
            expected("r1", 7, 71, t0 + secs(2)),
            expected("r2", 8, 81, t0 + secs(3))
        ]
    );
    let first = DueReads {
        limit: 1,
        ..due(t0 + secs(3), None)
    };
    assert_eq!(stale(&store, first).await, listed[..1]);
    assert_eq!(
        stale(&store, due(t0 + secs(2), None)).await,
        listed[..1],
        "r2's read is not due yet"
    );
    assert_eq!(
        channel(&store, "r1").await,
        (None, None),
        "an unseen status changes nothing yet"
    );

    // The worker read r1 as failed; r2 changed again after its read.
    record_event(&store, &unseen(81, 8), t0 + secs(4)).await;
    let read = ChannelRead {
        status: Some(ChannelStatus::Failed),
        error: Some("undeliverable"),
        since: listed[0].since,
        next: None,
    };
    store
        .record_channel_status(&rid("r1"), &read)
        .await
        .unwrap();
    record_read(&store, "r2", Some("read"), listed[1].since, None).await;
    assert_eq!(
        channel(&store, "r1").await,
        some("failed", Some("undeliverable"))
    );
    assert_eq!(channel(&store, "r2").await, some("read", None));
    assert_eq!(
        stale(&store, due(t0 + secs(5), None)).await,
        [expected("r2", 8, 81, t0 + secs(4))],
        "read again: it changed after the read"
    );
}

/// Events are hints: a status an event shows is applied and read back soon,
/// and with `every` each delivered reply is checked after delivery, again at
/// each scheduled read, until it is final; a failed read waits alone.
async fn channel_statuses_are_read_back_until_final(store: SharedStore) {
    let t0 = start();
    let every = Some(Duration::from_secs(300));
    for (id, conversation, message_id) in [("r1", 7, 71), ("r2", 8, 81), ("r3", 9, 91)] {
        ingest(&store, &send(id, conversation), t0).await;
        claim_exactly(&store, "w", t0, &[id]).await;
        finish(&store, id, "w", Outcome::Delivered { message_id }, t0).await;
    }
    assert!(stale(&store, due(t0 + secs(299), every)).await.is_empty());
    let first = stale(&store, due(t0 + secs(300), every)).await;
    assert_eq!(ids_of(&first), ["r1", "r2", "r3"]);
    assert!(first.iter().all(|s| s.since.is_none()), "{first:?}");
    // Without `every` only marked replies are read.
    assert!(stale(&store, due(t0 + secs(300), None)).await.is_empty());

    // r1 is read as read (final), r2 as delivered (read again in 5 min),
    // r3's read failed (it alone waits a minute).
    record_read(&store, "r1", Some("read"), None, None).await;
    record_read(&store, "r2", Some("delivered"), None, Some(t0 + secs(600))).await;
    record_read(&store, "r3", None, None, Some(t0 + secs(360))).await;
    assert!(stale(&store, due(t0 + secs(359), every)).await.is_empty());
    assert_eq!(
        ids_of(&stale(&store, due(t0 + secs(360), every)).await),
        ["r3"]
    );
    assert_eq!(
        ids_of(&stale(&store, due(t0 + secs(600), every)).await),
        ["r3", "r2"]
    );

    // A late event's status is applied, and marked to be read back at once.
    let late = channel_report("r2", outgoing(81, 8), "sent", None);
    record_event(&store, &late, t0 + secs(400)).await;
    assert_eq!(channel(&store, "r2").await, some("sent", None));
    let now = due(t0 + secs(400), every);
    assert_eq!(
        ids_of(&stale(&store, now).await),
        ["r3", "r2"],
        "r3 since 360 s, r2 now"
    );
    // An old reply is no longer checked unless marked.
    let old = DueReads {
        horizon: t0 + secs(1),
        ..due(t0 + secs(600), every)
    };
    assert!(stale(&store, old).await.iter().all(|s| s.since.is_some()));
}

fn ids_of(stale: &[StaleChannelStatus]) -> Vec<String> {
    stale.iter().map(|s| s.reply_id.to_string()).collect()
}

async fn prune_events_deletes_only_events_received_before_the_cutoff(store: SharedStore) {
    let t0 = start();
    let events: Vec<_> = (0..3)
        .map(|i| {
            // An incoming message: stored, changing nothing.
            let message = EventMessage {
                outgoing: false,
                ..outgoing(i, 1)
            };
            let delivery = format!("d-{i}");
            webhook(
                Some(&delivery),
                "message_created",
                &message,
                None,
                (None, None),
                "-",
            )
        })
        .collect();
    for (i, e) in events.iter().enumerate() {
        record_event(&store, e, t0 + secs(10 * i as i64)).await;
    }
    assert_eq!(store.prune_events(t0 + secs(10)).await.unwrap(), 1);
    assert_eq!(store.prune_events(t0 + secs(15)).await.unwrap(), 1);
    assert_eq!(store.prune_events(t0 + secs(15)).await.unwrap(), 0);

    // The kept event is still known; a pruned one is forgotten.
    let again = t0 + secs(30);
    assert_eq!(
        record_event(&store, &events[2], again).await,
        EventOutcome::Duplicate
    );
    assert_eq!(
        record_event(&store, &events[0], again).await,
        EventOutcome::Processed
    );
}

// ---------------------------------------------------------------- several instances

async fn concurrent_claims_from_two_owners_never_share_a_job(store: SharedStore) {
    const CONVERSATIONS: i64 = 8;
    const PER_CONVERSATION: usize = 25;
    let t0 = start();
    // One round per position, each ingested at once across conversations
    // (fewer at once than PostgreSQL's pool has connections).
    for position in 0..PER_CONVERSATION {
        let round = (1..=CONVERSATIONS).map(|conversation| {
            let store = store.clone();
            let reply = send(&format!("c{conversation}-{position}"), conversation);
            async move { ingest(&store, &reply, t0).await }
        });
        futures_util::future::join_all(round).await;
    }
    let total = CONVERSATIONS as usize * PER_CONVERSATION;
    let log = Arc::new(Mutex::new(Vec::new()));
    let workers = ["owner-a", "owner-b"].map(|owner| {
        tokio::spawn(drain(
            store.clone(),
            owner,
            t0 + secs(1),
            log.clone(),
            total,
        ))
    });
    for worker in workers {
        tokio::time::timeout(PATIENCE, worker)
            .await
            .expect("the queue drains")
            .unwrap();
    }

    let log = log.lock().unwrap().clone();
    let claimed: BTreeSet<_> = log.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(claimed.len(), total, "not every job was claimed");
    assert_eq!(log.len(), total, "some job was claimed twice: {log:?}");
    for conversation in 1..=CONVERSATIONS {
        let prefix = format!("c{conversation}-");
        let order: Vec<_> = log
            .iter()
            .filter(|(_, id)| id.starts_with(&prefix))
            .map(|(_, id)| id.clone())
            .collect();
        let expected: Vec<_> = (0..PER_CONVERSATION)
            .map(|p| format!("{prefix}{p}"))
            .collect();
        assert_eq!(order, expected, "conversation {conversation} out of order");
    }
}

/// Claims and delivers as `owner` until `total` jobs are logged, logging each
/// claim (before its delivery, so the log keeps each conversation's order).
async fn drain(
    store: SharedStore,
    owner: &'static str,
    now: DateTime<Utc>,
    log: Arc<Mutex<Vec<(&'static str, String)>>>,
    total: usize,
) {
    while log.lock().unwrap().len() < total {
        let jobs = store
            .claim(owner, now, LEASE, NO_LOOKUP_DELAY, 4)
            .await
            .expect("claim");
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for job in jobs {
            log.lock().unwrap().push((owner, job.reply_id.to_string()));
            deliver(&store, job.reply_id.as_str(), owner, now).await;
        }
    }
}

async fn a_new_job_from_another_instance_wakes_this_one(db: TestDb) {
    let wake = Arc::new(Notify::new());
    db.store.wake_on_new_jobs(wake.clone());
    // The listener wakes once as it starts, for jobs committed before it listened.
    tokio::time::timeout(PATIENCE, wake.notified())
        .await
        .expect("the listener starts");

    let other = store::open(&db.url).await.expect("a second instance opens");
    ingest(&other, &send("r1", 7), start()).await;
    tokio::time::timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("the other instance's new job wakes this one");
}

// ---------------------------------------------------------------- schema

const FUTURE_VERSION: i64 = 99990101000000;

async fn a_database_with_a_newer_schema_is_refused(db: TestDb) {
    pretend_a_newer_build_migrated(&db.url).await;
    let error = match store::open(&db.url).await {
        Ok(_) => panic!("a database from a newer build was opened"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("migration") && error.contains(&FUTURE_VERSION.to_string()),
        "the error does not name the unknown migration: {error}"
    );
}

/// Records a migration this build does not have, as a newer goldrelay would.
async fn pretend_a_newer_build_migrated(url: &DatabaseUrl) {
    use sqlx::{Connection, Executor};
    let insert = |checksum: &str| {
        format!(
            "INSERT INTO _sqlx_migrations \
             (version, description, installed_on, success, checksum, execution_time) \
             VALUES ({FUTURE_VERSION}, 'from a newer goldrelay', CURRENT_TIMESTAMP, TRUE, {checksum}, 0)"
        )
    };
    match Backend::of(url.expose()) {
        Some(Backend::Postgres) => {
            let mut conn = sqlx::PgConnection::connect(url.expose()).await.unwrap();
            conn.execute(insert("decode('00', 'hex')").as_str())
                .await
                .unwrap();
        }
        _ => {
            let mut conn = sqlx::SqliteConnection::connect(url.expose()).await.unwrap();
            conn.execute(insert("X'00'").as_str()).await.unwrap();
        }
    }
}

// ---------------------------------------------------------------- context capture

/// When each reply's capture is due (`next_capture_at`).
async fn capture_due(store: &SharedStore, reply_id: &str) -> Option<DateTime<Utc>> {
    record(store, reply_id).await.context.next_capture_at
}

async fn a_capture_comes_due_when_a_delivery_ends_and_at_once_for_a_kept_reply(store: SharedStore) {
    let t0 = start();
    let kept = ingest(&store, &gold("kept", 1, 3, "reject"), t0).await;
    assert_eq!(
        kept.context.next_capture_at,
        Some(t0),
        "a kept reply's capture is due at once"
    );
    for (reply_id, conversation_id) in [("sent", 1), ("lost", 2), ("echoed", 4)] {
        let queued = ingest(&store, &send(reply_id, conversation_id), t0).await;
        assert_eq!(
            queued.context.next_capture_at, None,
            "{reply_id}: due before its delivery ended"
        );
    }
    let mut with_context = body("posted", 1, 5, "approve_send");
    with_context["context"] = json!([{"role": "user", "content": "Where is my parcel?"}]);
    ingest(&store, &parse(&with_context), t0).await;
    claim_exactly(&store, "w", t0, &["sent", "lost", "echoed", "posted"]).await;
    assert_eq!(
        capture_due(&store, "sent").await,
        None,
        "due while its attempt runs"
    );

    deliver(&store, "sent", "w", t0 + secs(1)).await;
    finish(&store, "lost", "w", dead("timeout"), t0 + secs(2)).await;
    let echo = confirmation("echoed", 4, 77);
    record_event(&store, &echo, t0 + secs(3)).await;
    deliver(&store, "posted", "w", t0 + secs(4)).await;
    assert_eq!(capture_due(&store, "sent").await, Some(t0 + secs(1)));
    assert_eq!(capture_due(&store, "lost").await, Some(t0 + secs(2)));
    assert_eq!(capture_due(&store, "echoed").await, Some(t0 + secs(3)));
    assert_eq!(
        capture_due(&store, "posted").await,
        None,
        "posted with its context"
    );

    // Once scheduled, a later end of delivery (the echo) does not move it.
    let late_echo = confirmation("sent", 1, 9000);
    record_event(&store, &late_echo, t0 + secs(9)).await;
    assert_eq!(record(&store, "sent").await.status, Status::Confirmed);
    assert_eq!(capture_due(&store, "sent").await, Some(t0 + secs(1)));
}
