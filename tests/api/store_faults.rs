//! Faults below the store: a write that fails half-way leaves nothing behind
//! and spares the writes committed with it; `/hc` says when writes fail and
//! recovers by itself; a `DATABASE_URL` goldrelay cannot use is refused by
//! every command in one line.

use crate::helpers::{self, spawn_app_with, TOKEN};
use assert_cmd::Command;
use chrono::Utc;
use goldrelay::config::DatabaseUrl;
use goldrelay::domain::GoldReply;
use goldrelay::sandbox::SandboxConfig;
use goldrelay::store::{self, Backend, Ingested, SharedStore};
use serde_json::Value;
use std::time::Duration;

/// Makes every insert of a delivery job for reply `poison` fail, after its
/// reply row was written in the same write: the half-committed case.
const SQLITE_POISON: &str = "CREATE TRIGGER poison BEFORE INSERT ON delivery_jobs \
     WHEN NEW.reply_id = 'poison' BEGIN SELECT RAISE(ABORT, 'injected fault'); END";
const PG_POISON: &str = "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
     IF NEW.reply_id = 'poison' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; \
     END $$ LANGUAGE plpgsql; \
     CREATE TRIGGER poison BEFORE INSERT ON delivery_jobs FOR EACH ROW EXECUTE FUNCTION poison()";
/// Makes every write of `/hc`'s probe fail, as a full disk would.
const SQLITE_BROKEN_PROBE: &str = "CREATE TRIGGER broken BEFORE UPDATE ON write_probe \
     BEGIN SELECT RAISE(ABORT, 'disk full'); END; \
     CREATE TRIGGER broken_insert BEFORE INSERT ON write_probe \
     BEGIN SELECT RAISE(ABORT, 'disk full'); END";
const PG_BROKEN_PROBE: &str = "CREATE FUNCTION broken() RETURNS trigger AS $$ BEGIN \
     RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql; \
     CREATE TRIGGER broken BEFORE INSERT OR UPDATE ON write_probe FOR EACH ROW EXECUTE FUNCTION broken()";

/// Runs `sql` (several statements allowed) on the database `url` names.
pub(crate) async fn execute(url: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    match Backend::of(url) {
        Some(Backend::Postgres) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            conn.execute(sql).await.unwrap();
        }
        _ => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            conn.execute(sql).await.unwrap();
        }
    }
}

fn send(reply_id: &str, conversation_id: i64) -> GoldReply {
    GoldReply::parse(&helpers::reply(reply_id, conversation_id)).expect("a valid reply")
}

async fn claimed_ids(store: &SharedStore) -> Vec<String> {
    let jobs = store
        .claim(
            "faults",
            Utc::now(),
            Duration::from_secs(60),
            Duration::ZERO,
            100,
        )
        .await
        .expect("claim");
    jobs.into_iter().map(|j| j.reply_id.to_string()).collect()
}

async fn a_failed_write_leaves_nothing_and_spares_its_neighbours(
    url: &str,
    poison: &str,
    cure: &str,
) {
    let url_value = DatabaseUrl::parse(url).unwrap();
    let store = store::open(&url_value).await.expect("the store opens");
    execute(url, poison).await;
    // Posted at once, so SQLite's writer commits them in one batch.
    let names: Vec<String> = (0..30)
        .map(|i| {
            if i == 15 {
                "poison".into()
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    let posts = names.iter().enumerate().map(|(i, name)| {
        let store = store.clone();
        let reply = send(name, 100 + i as i64);
        async move { store.ingest(&reply, Utc::now()).await }
    });
    let results = futures_util::future::join_all(posts).await;
    for (name, result) in names.iter().zip(&results) {
        match (name.as_str(), result) {
            ("poison", Err(_)) => {}
            ("poison", Ok(other)) => panic!("the failing write was answered {other:?}"),
            (_, Ok(Ingested::Created(_))) => {}
            (_, other) => panic!("{name} was answered {other:?}"),
        }
    }
    assert_eq!(
        store
            .reply(&goldrelay::domain::ReplyId::parse("poison").unwrap())
            .await
            .unwrap(),
        None,
        "the failed write left its reply behind without a job"
    );
    let mut claimed = claimed_ids(&store).await;
    claimed.sort();
    let mut expected: Vec<String> = names.into_iter().filter(|n| n != "poison").collect();
    expected.sort();
    assert_eq!(claimed, expected, "every other write committed whole");

    execute(url, cure).await;
    let again = store.ingest(&send("poison", 99), Utc::now()).await;
    assert!(matches!(again, Ok(Ingested::Created(_))), "{again:?}");
    assert_eq!(claimed_ids(&store).await, ["poison"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_write_leaves_nothing_and_spares_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/faults.db", dir.path().display());
    let cure = "DROP TRIGGER poison";
    a_failed_write_leaves_nothing_and_spares_its_neighbours(&url, SQLITE_POISON, cure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn postgres_a_failed_write_leaves_nothing_and_spares_its_neighbours() {
    let url = helpers::postgres::fresh_database();
    let cure = "DROP TRIGGER poison ON delivery_jobs";
    a_failed_write_leaves_nothing_and_spares_its_neighbours(&url, PG_POISON, cure).await;
}

async fn health(api: &helpers::Api) -> (u16, Value) {
    let response = api
        .client
        .get(format!("{}/hc", api.address))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Polls `/hc` until it answers `status`, for at most a few seconds.
async fn health_becomes(api: &helpers::Api, status: u16) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (now, body) = health(api).await;
        if now == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/hc never answered {status}: {now} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes every insert into `gold_replies` fail, as a revoked grant or a full
/// tablespace for that table would; `/hc`'s probe table is untouched.
const SQLITE_NO_REPLIES: &str = "CREATE TRIGGER no_replies BEFORE INSERT ON gold_replies \
     BEGIN SELECT RAISE(ABORT, 'x'); END";
const PG_NO_REPLIES: &str = "CREATE FUNCTION no_replies() RETURNS trigger AS $$ BEGIN \
     RAISE EXCEPTION 'x'; END $$ LANGUAGE plpgsql; \
     CREATE TRIGGER no_replies BEFORE INSERT ON gold_replies FOR EACH ROW EXECUTE FUNCTION no_replies()";

/// Runs on whichever backend `TEST_DATABASE_URL` selects (the PostgreSQL
/// run is the suite run with it set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hc_answers_503_while_posts_cannot_be_stored_and_200_after_a_good_post() {
    let dir = tempfile::tempdir().unwrap();
    let url = helpers::database_url(&dir);
    let app = spawn_app_with(SandboxConfig::default(), |settings| {
        settings.database_url = DatabaseUrl::parse(&url).unwrap();
    })
    .await;
    let (status, body) = health(&app.api).await;
    assert_eq!(status, 200, "{body}");
    let backend = match Backend::of(&url) {
        Some(Backend::Postgres) => "postgres",
        _ => "sqlite",
    };
    assert_eq!(body["store"]["backend"], backend, "{body}");
    let (poison, cure) = match Backend::of(&url) {
        Some(Backend::Postgres) => (PG_NO_REPLIES, "DROP TRIGGER no_replies ON gold_replies"),
        _ => (SQLITE_NO_REPLIES, "DROP TRIGGER no_replies"),
    };
    execute(&url, poison).await;
    let refused = app.api.post_reply(&helpers::reply("hc-refused", 5)).await;
    assert_eq!(refused.status().as_u16(), 503);
    let body = health_becomes(&app.api, 503).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(
        body["store"]["status"]
            .as_str()
            .unwrap()
            .starts_with("failing"),
        "{body}"
    );
    assert_eq!(body["store"]["backend"], backend, "{body}");

    execute(&url, cure).await;
    // Still failing: nothing has shown the writes work again yet.
    assert_eq!(health(&app.api).await.0, 503);
    let accepted = app.api.post_reply(&helpers::reply("hc-accepted", 5)).await;
    assert_eq!(accepted.status().as_u16(), 202);
    health_becomes(&app.api, 200).await;
}

/// Counts every write of `/hc`'s probe into `probe_writes`.
const SQLITE_COUNT_PROBES: &str = "CREATE TABLE probe_writes (n INTEGER); \
     CREATE TRIGGER count_probe_update AFTER UPDATE ON write_probe \
     BEGIN INSERT INTO probe_writes VALUES (1); END; \
     CREATE TRIGGER count_probe_insert AFTER INSERT ON write_probe \
     BEGIN INSERT INTO probe_writes VALUES (1); END";
const PG_COUNT_PROBES: &str = "CREATE TABLE probe_writes (n INTEGER); \
     CREATE FUNCTION count_probe() RETURNS trigger AS $$ BEGIN \
     INSERT INTO probe_writes VALUES (1); RETURN NEW; END $$ LANGUAGE plpgsql; \
     CREATE TRIGGER count_probe AFTER INSERT OR UPDATE ON write_probe \
     FOR EACH ROW EXECUTE FUNCTION count_probe()";

async fn probe_writes(url: &str) -> i64 {
    use sqlx::Connection;
    let sql = "SELECT COUNT(*) FROM probe_writes";
    match Backend::of(url) {
        Some(Backend::Postgres) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
        _ => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
    }
}

/// An anonymous flood of `/hc` must not reach the writer Support's posts use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hc_adds_at_most_about_one_probe_write_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let url = helpers::database_url(&dir);
    let app = spawn_app_with(SandboxConfig::default(), |settings| {
        settings.database_url = DatabaseUrl::parse(&url).unwrap();
    })
    .await;
    let counting = match Backend::of(&url) {
        Some(Backend::Postgres) => PG_COUNT_PROBES,
        _ => SQLITE_COUNT_PROBES,
    };
    execute(&url, counting).await;
    let started = std::time::Instant::now();
    let mut answered = 0;
    for _ in 0..20 {
        let flood = (0..25).map(|_| health(&app.api));
        for (status, body) in futures_util::future::join_all(flood).await {
            assert_eq!(status, 200, "{body}");
            answered += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let writes = probe_writes(&url).await;
    assert!(
        writes as f64 <= seconds.ceil() + 1.0,
        "{answered} /hc in {seconds:.2} s wrote the probe {writes} times"
    );
    assert!(answered == 500 && writes >= 1, "{writes}");
}

/// Runs on whichever backend `TEST_DATABASE_URL` selects, like the rest of the API suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hc_answers_503_while_writes_fail_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let url = helpers::database_url(&dir);
    let app = spawn_app_with(SandboxConfig::default(), |settings| {
        settings.database_url = DatabaseUrl::parse(&url).unwrap();
    })
    .await;
    assert_eq!(health(&app.api).await.0, 200);
    let (broken, repair) = match Backend::of(&url) {
        Some(Backend::Postgres) => (PG_BROKEN_PROBE, "DROP TRIGGER broken ON write_probe"),
        _ => (
            SQLITE_BROKEN_PROBE,
            "DROP TRIGGER broken; DROP TRIGGER broken_insert",
        ),
    };
    execute(&url, broken).await;
    // The probe's verdict stands for a second, so the next one sees the fault.
    let body = health_becomes(&app.api, 503).await;
    assert_ne!(body["store"]["status"], "ok", "{body}");

    execute(&url, repair).await;
    health_becomes(&app.api, 200).await;
    let accepted = app.api.post_reply(&helpers::reply("after-repair", 5)).await;
    assert_eq!(accepted.status().as_u16(), 202);
}

#[test]
fn a_database_url_of_an_unknown_kind_is_refused_by_every_command_in_one_line() {
    for args in [
        &["migrate"][..],
        &["serve"],
        &["replies", "list"],
        &["check-config"],
    ] {
        let output = Command::cargo_bin("goldrelay")
            .unwrap()
            .args(args)
            .env_clear()
            .env("DATABASE_URL", "mysql://root:hunter2@db.example.com/gold")
            .env("GOLDRELAY_TOKENS", TOKEN)
            .env("CHATWOOT_BASE_URL", "http://127.0.0.1:9")
            .env("CHATWOOT_API_TOKEN", "x")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let text = String::from_utf8_lossy(&output.stderr).to_string()
            + &String::from_utf8_lossy(&output.stdout);
        let naming: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("DATABASE_URL must start with sqlite:"))
            .collect();
        assert_eq!(naming.len(), 1, "{args:?}: {text}");
        assert!(naming[0].contains("\"mysql\""), "{args:?}: {text}");
        assert!(
            !text.contains("hunter2"),
            "{args:?} showed the password: {text}"
        );
        assert!(
            !text.to_lowercase().contains("error returned from database")
                && !text.contains("SqliteError")
                && !text.contains("unable to open"),
            "{args:?} fell through to SQLite: {text}"
        );
    }
}

/// Holds the database's write lock (SQLite) or a conversation's line lock
/// (PostgreSQL) until dropped, as a stalled disk or a long transaction would.
enum Stall {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

async fn stall_writes(url: &str, conversation_id: i64) -> Stall {
    use sqlx::{Connection, Executor};
    match Backend::of(url) {
        Some(Backend::Postgres) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let lock = format!(
                "SELECT pg_advisory_lock(hashtextextended('goldrelay:1:{conversation_id}', 0))"
            );
            conn.execute(lock.as_str()).await.unwrap();
            Stall::Postgres(conn)
        }
        _ => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            conn.execute("BEGIN IMMEDIATE").await.unwrap();
            Stall::Sqlite(conn)
        }
    }
}

async fn release(stall: Stall) {
    use sqlx::Connection;
    match stall {
        Stall::Sqlite(conn) => conn.close().await.unwrap(),
        Stall::Postgres(conn) => conn.close().await.unwrap(),
    }
}

/// Runs on whichever backend `TEST_DATABASE_URL` selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_writes_back_up_new_posts_get_503_with_retry_after_at_once_and_nothing_accepted_is_lost(
) {
    let dir = tempfile::tempdir().unwrap();
    let url = helpers::database_url(&dir);
    let app = spawn_app_with(SandboxConfig::default(), |settings| {
        settings.database_url = DatabaseUrl::parse(&url).unwrap();
        settings.write_queue = 4;
    })
    .await;
    let stall = stall_writes(&url, 77).await;
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..24 {
        let api = helpers::Api::new(app.api.address.clone());
        posts.spawn(async move {
            let id = format!("gr-flood-{i}");
            let started = std::time::Instant::now();
            let response = api.post_reply(&helpers::reply(&id, 77)).await;
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status().as_u16();
            let took = started.elapsed();
            let problem = response.text().await.unwrap_or_default();
            (id, status, retry_after.zip(Some(problem)), took)
        });
    }
    // The writes the store cannot take are refused while the rest wait.
    let mut refused = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused.len() < 12 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(Some(done)) = tokio::time::timeout(left, posts.join_next()).await else {
            panic!(
                "only {} posts were refused while writes were stalled",
                refused.len()
            );
        };
        let (id, status, retry_after, took) = done.unwrap();
        assert_eq!(
            status, 503,
            "{id} was answered {status} while writes were stalled"
        );
        let (_, problem) = retry_after.expect("a 503 carries Retry-After");
        assert!(problem.contains("store-overloaded"), "{id}: {problem}");
        assert!(
            took < Duration::from_secs(1),
            "{id} waited {took:?} to be refused"
        );
        refused.push(id);
    }
    release(stall).await;
    while let Some(done) = posts.join_next().await {
        let (id, status, _, _) = done.unwrap();
        match status {
            202 => {}
            503 => refused.push(id),
            other => panic!("{id} was answered {other}"),
        }
    }
    for id in &refused {
        let again = app.api.post_reply(&helpers::reply(id, 77)).await;
        assert_eq!(again.status(), 202, "{id} posted again");
    }
    for i in 0..24 {
        let id = format!("gr-flood-{i}");
        app.api
            .wait_for_status(&id, "delivered", helpers::PATIENCE)
            .await;
        assert_eq!(helpers::creates_of(&app.chatwoot, &id), 1, "{id}");
    }
}
