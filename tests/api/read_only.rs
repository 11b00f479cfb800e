//! The commands an operator runs against a live database (`check-config`,
//! `replies …`) read its schema and never create or migrate it: a new binary
//! run before its deploy must not move production's schema ahead of the
//! instances still serving it. On whichever backend `TEST_DATABASE_URL` selects.

use crate::helpers::{self, TOKEN, WEBHOOK_SECRET};
use crate::store_faults::execute;
use assert_cmd::Command;
use goldrelay::config::Backend;
use goldrelay::sandbox::{self, SandboxConfig, SandboxHandle};
use sqlx::Connection;
use std::path::PathBuf;

fn goldrelay(url: &str) -> Command {
    let mut cmd = Command::cargo_bin("goldrelay").unwrap();
    cmd.env_clear().env("DATABASE_URL", url);
    cmd
}

/// `check-config`'s database line, and whether the check passed.
async fn database_line(chatwoot: &SandboxHandle, url: &str) -> (bool, String) {
    let mut cmd = goldrelay(url);
    cmd.env("GOLDRELAY_TOKENS", TOKEN)
        .env("CHATWOOT_BASE_URL", chatwoot.base_url())
        .env("CHATWOOT_API_TOKEN", SandboxConfig::default().user_token)
        .env("CHATWOOT_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .arg("check-config");
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.contains("database:"))
        .unwrap_or_else(|| panic!("no database line: {stdout}"))
        .to_owned();
    (output.status.success(), line)
}

/// The migrations the database has on record; none when it has no record.
async fn applied(url: &str) -> Vec<i64> {
    const ROWS: &str = "SELECT version FROM _sqlx_migrations ORDER BY version";
    match Backend::of(url) {
        Some(Backend::Postgres) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            if !exists {
                return Vec::new();
            }
            sqlx::query_scalar(ROWS).fetch_all(&mut conn).await.unwrap()
        }
        _ => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar(ROWS)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default()
        }
    }
}

fn sqlite_file(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://").map(PathBuf::from)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_and_replies_read_the_schema_and_never_create_or_migrate_it() {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = helpers::database_url(&dir);

    // Nothing there yet: said, and left so.
    let (passed, line) = database_line(&chatwoot, &url).await;
    assert!(passed, "{line}");
    let listed = goldrelay(&url).args(["replies", "list"]).output().unwrap();
    assert!(!listed.status.success());
    let refused = String::from_utf8_lossy(&listed.stderr).into_owned();
    if let Some(file) = sqlite_file(&url) {
        assert!(
            line.starts_with("ok") && line.contains("does not exist yet"),
            "{line}"
        );
        assert!(refused.contains("does not exist"), "{refused}");
        assert!(!file.exists(), "a command created {}", file.display());
    } else {
        assert!(line.contains("holds no goldrelay tables yet"), "{line}");
        assert!(refused.contains("holds no goldrelay tables"), "{refused}");
        assert!(
            applied(&url).await.is_empty(),
            "a command migrated the database"
        );
    }

    goldrelay(&url).arg("migrate").assert().success();
    let all = applied(&url).await;
    assert!(all.len() > 1, "{all:?}");
    let (passed, line) = database_line(&chatwoot, &url).await;
    assert!(
        passed && line.contains("has this goldrelay's schema"),
        "{line}"
    );
    goldrelay(&url).args(["replies", "list"]).assert().success();

    // One migration short on record: named, and still not applied.
    let last = *all.last().unwrap();
    execute(
        &url,
        &format!("DELETE FROM _sqlx_migrations WHERE version = {last}"),
    )
    .await;
    let (passed, line) = database_line(&chatwoot, &url).await;
    assert!(passed, "{line}");
    assert!(
        line.contains(&format!("1 migration(s) behind this goldrelay ({last})")),
        "{line}"
    );
    let listed = goldrelay(&url).args(["replies", "list"]).output().unwrap();
    assert!(!listed.status.success());
    let refused = String::from_utf8_lossy(&listed.stderr).into_owned();
    assert!(refused.contains("goldrelay migrate"), "{refused}");
    assert_eq!(
        applied(&url).await,
        all[..all.len() - 1],
        "a command migrated"
    );

    // A migration only a newer goldrelay knows fails the check.
    let checksum = match Backend::of(&url) {
        Some(Backend::Postgres) => "'\\x00'::bytea",
        _ => "x'00'",
    };
    execute(
        &url,
        &format!(
            "INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES (99991231000001, 'from a newer goldrelay', true, {checksum}, 0)"
        ),
    )
    .await;
    let (passed, line) = database_line(&chatwoot, &url).await;
    assert!(!passed, "{line}");
    assert!(
        line.starts_with("FAIL") && line.contains("newer goldrelay"),
        "{line}"
    );
}

#[test]
fn on_fly_without_a_database_url_every_command_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["migrate"][..],
        &["serve"],
        &["check-config"],
        &["replies", "list"],
    ] {
        let output = Command::cargo_bin("goldrelay")
            .unwrap()
            .env_clear()
            .current_dir(dir.path())
            .env("FLY_APP_NAME", "goldrelay-prod")
            .env("GOLDRELAY_TOKENS", TOKEN)
            .env("CHATWOOT_BASE_URL", "http://127.0.0.1:9")
            .env("CHATWOOT_API_TOKEN", "x")
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        let naming = text
            .lines()
            .filter(|l| l.contains("DATABASE_URL is required on Fly.io"))
            .count();
        assert_eq!(naming, 1, "{args:?}: {text}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files were created: {left:?}");
}
