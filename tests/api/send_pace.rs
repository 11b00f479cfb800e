//! One send rate for the whole deployment: on PostgreSQL every instance
//! reserves its Chatwoot requests from one shared pace, so two instances
//! together stay under `GOLDRELAY_SEND_RATE`, and a 429 slows them all.

use crate::helpers;
use chrono::{Duration, SubsecRound, Utc};
use goldrelay::config::DatabaseUrl;
use goldrelay::store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn two_instances_share_one_send_rate_and_one_pause() {
    let url = DatabaseUrl::parse(&helpers::postgres::fresh_database()).unwrap();
    let (a, b) = (
        store::open(&url).await.unwrap(),
        store::open(&url).await.unwrap(),
    );
    let now = Utc::now().trunc_subsecs(3);
    let mut slots = Vec::new();
    for i in 0..40 {
        let instance = if i % 2 == 0 { &a } else { &b };
        let slot = instance.reserve_send(20, now).await.unwrap();
        slots.push(slot.expect("PostgreSQL paces sends for every instance"));
    }
    for pair in slots.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::milliseconds(49),
            "two sends {gap} apart at 20/s: {slots:?}"
        );
    }
    assert!(slots[39] - now >= Duration::milliseconds(1940), "{slots:?}");

    let until = now + Duration::seconds(30);
    b.pause_sends(until).await.unwrap();
    let after = a.reserve_send(20, now).await.unwrap().unwrap();
    assert!(
        after >= until,
        "a 429 seen by one instance did not hold back the other: {after}"
    );
}

#[tokio::test]
async fn a_single_sqlite_instance_paces_itself() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/pace.db", dir.path().display());
    let store = store::open(&DatabaseUrl::parse(&url).unwrap())
        .await
        .unwrap();
    assert_eq!(store.reserve_send(20, Utc::now()).await.unwrap(), None);
}
