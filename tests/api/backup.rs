//! `goldrelay backup` and `goldrelay restore`, run as the real binary: a
//! backup taken while `serve` takes writes holds every reply accepted before
//! it began, restores into a database `serve` runs on, and each refusal says
//! what is wrong in one line and touches nothing.

use crate::helpers::relay::{Relay, Serve};
use crate::helpers::{reply, Api};
use assert_cmd::Command;
use goldrelay::sandbox::{self, SandboxConfig, SandboxHandle};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// `goldrelay` with nothing in its environment but `DATABASE_URL`.
fn goldrelay(database_url: &str) -> Command {
    let mut cmd = Command::cargo_bin("goldrelay").unwrap();
    cmd.env_clear().env("DATABASE_URL", database_url);
    cmd
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A goldrelay database with no replies, made by `goldrelay migrate`.
fn migrated(path: &Path) {
    goldrelay(&sqlite_url(path))
        .arg("migrate")
        .assert()
        .success();
}

/// Runs a command off the async runtime, so the posters keep posting.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A refusal: a non-zero exit and exactly one line on standard error.
fn refusal(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "not refused: {}",
        text(&output.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    stderr
}

/// Every reply id in a SQLite database.
fn reply_ids(path: &Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut query = conn.prepare("SELECT reply_id FROM gold_replies").unwrap();
    let ids = query.query_map([], |row| row.get(0)).unwrap();
    ids.collect::<Result<_, _>>().unwrap()
}

/// Files in `dir` whose names contain `part`.
fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(part))
        .collect()
}

/// Clients posting new replies as fast as goldrelay answers, each recording
/// the ids it got a 202 for, in the order they came.
struct Posters {
    accepted: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Posters {
    fn start(address: &str, clients: usize) -> Self {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|client| {
                let (api, accepted, stop) =
                    (Api::new(address.to_owned()), accepted.clone(), stop.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = format!("gr-backup-{client}-{n}");
                        let mut body = reply(&id, n % 200 + 1);
                        // Bulk: the database outgrows one step of the copy (4 MiB), so
                        // serve commits between the copy's steps.
                        body["content"] = format!("{id} {}", "x".repeat(16 * 1024)).into();
                        let answer = api.post_reply(&body).await;
                        if answer.status() == 202 {
                            accepted.lock().unwrap().push(id);
                        }
                    }
                })
            })
            .collect();
        Self {
            accepted,
            stop,
            tasks,
        }
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) {
        while self.accepted.lock().unwrap().len() < count {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops posting, waits for every answer, and returns every accepted id.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let accepted = self.accepted.lock().unwrap().clone();
        accepted
    }
}

fn chatwoot() -> SandboxHandle {
    sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// `goldrelay serve` on `live.db` in a fresh folder, with replies posted to it.
async fn serving_with_replies(
    chatwoot: &SandboxHandle,
) -> (TempDir, PathBuf, Serve, Relay, Posters) {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let serve = Serve::new(&sqlite_url(&live), chatwoot);
    let relay = serve.start("goldrelay").await;
    let posters = Posters::start(&relay.api.address, 4);
    posters.wait_for(320).await;
    (dir, live, serve, relay, posters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serve_takes_writes_restores_every_reply_accepted_before_it() {
    let chatwoot = chatwoot();
    let (dir, live, _serve, _relay, posters) = serving_with_replies(&chatwoot).await;
    let copy = dir.path().join("copy.db");

    let before: BTreeSet<String> = posters.accepted().into_iter().collect();
    let mut backup = goldrelay(&sqlite_url(&live));
    backup.arg("backup").arg(&copy);
    let backed_up = run(backup).await;
    let during = posters.accepted().len() - before.len();
    let accepted: BTreeSet<String> = posters.stop().await.into_iter().collect();

    assert!(backed_up.status.success(), "{}", text(&backed_up.stderr));
    assert!(
        during > 0,
        "no reply was accepted while the backup ran, so it proves nothing"
    );
    assert!(files_named(dir.path(), "partial").is_empty());
    let restored = dir.path().join("restored.db");
    goldrelay(&sqlite_url(&restored))
        .arg("restore")
        .arg(&copy)
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "there was no database there before",
        ));

    let in_restored = reply_ids(&restored);
    let missing: Vec<_> = before.difference(&in_restored).collect();
    assert!(
        missing.is_empty(),
        "accepted before the backup, lost: {missing:?}"
    );
    let unknown: Vec<_> = in_restored.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "never accepted, yet restored: {unknown:?}"
    );
    let summary = format!("backed up {} replies (", in_restored.len());
    assert!(
        text(&backed_up.stdout).starts_with(&summary),
        "{}",
        text(&backed_up.stdout)
    );

    // `serve` runs on the restored database and answers for its replies.
    let on_restored = Serve::new(&sqlite_url(&restored), &chatwoot);
    let again = on_restored.start("restored").await;
    let first = before.iter().next().unwrap();
    assert_eq!(again.api.get_reply(first).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refuses_while_serve_runs_then_keeps_the_replaced_database_aside() {
    let chatwoot = chatwoot();
    let (dir, live, serve, relay, posters) = serving_with_replies(&chatwoot).await;
    let copy = dir.path().join("copy.db");
    goldrelay(&sqlite_url(&live))
        .arg("backup")
        .arg(&copy)
        .assert()
        .success();
    posters.stop().await;
    relay.api.accept(&reply("gr-after-the-backup", 7)).await;
    let live_now = reply_ids(&live);

    let mut restore = goldrelay(&sqlite_url(&live));
    restore.arg("restore").arg(&copy);
    let refused = run(restore).await;
    assert!(refusal(&refused).contains("stop it first"));
    assert!(files_named(dir.path(), "before-restore").is_empty());
    assert_eq!(
        relay.api.get_reply("gr-after-the-backup").await.status(),
        200
    );

    assert!(relay.terminate().await.success());
    goldrelay(&sqlite_url(&live))
        .arg("restore")
        .arg(&copy)
        .assert()
        .success()
        .stdout(predicates::str::contains("is kept as"));
    let kept = files_named(dir.path(), "live.db.before-restore-");
    assert_eq!(kept.len(), 1, "{kept:?}: the WAL should be folded into it");
    assert_eq!(
        reply_ids(&kept[0]),
        live_now,
        "the kept database lost replies"
    );
    for stale in ["live.db-wal", "live.db-shm", "live.db-journal"] {
        assert!(!dir.path().join(stale).exists(), "{stale} left behind");
    }
    assert_eq!(reply_ids(&live), reply_ids(&copy));

    let again = serve.start("goldrelay").await;
    assert_eq!(
        again.api.get_reply("gr-after-the-backup").await.status(),
        404
    );
}

#[test]
fn a_backup_refuses_a_target_that_exists_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    migrated(&live);
    let target = dir.path().join("precious.db");
    std::fs::write(&target, "keep me").unwrap();

    let output = goldrelay(&sqlite_url(&live))
        .arg("backup")
        .arg(&target)
        .output()
        .unwrap();
    assert!(refusal(&output).contains("exists; pass --force"));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");

    goldrelay(&sqlite_url(&live))
        .args(["backup", "--force"])
        .arg(&target)
        .assert()
        .success();
    assert_eq!(reply_ids(&target), BTreeSet::new());
}

#[test]
fn a_backup_refuses_a_database_that_is_missing_or_not_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("copy.db");
    let missing = dir.path().join("missing.db");
    let output = goldrelay(&sqlite_url(&missing))
        .arg("backup")
        .arg(&target)
        .output()
        .unwrap();
    assert!(refusal(&output).contains("there is no database at"));
    assert!(!missing.exists(), "the backup created the database it read");

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "this is not SQLite, not even close to it, at all").unwrap();
    let output = goldrelay(&sqlite_url(&junk))
        .arg("backup")
        .arg(&target)
        .output()
        .unwrap();
    assert!(refusal(&output).contains("is not a SQLite database"));
    assert!(!target.exists());
    assert_eq!(files_named(dir.path(), "copy.db"), Vec::<PathBuf>::new());
}

#[test]
fn backup_and_restore_refuse_postgresql_and_point_at_its_own_tools() {
    let dir = tempfile::tempdir().unwrap();
    let url = "postgres://goldrelay:hunter2-password@db.example.com:5432/goldrelay";
    let target = dir.path().join("copy.db");
    let output = goldrelay(url).arg("backup").arg(&target).output().unwrap();
    let stderr = refusal(&output);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!target.exists());

    std::fs::write(&target, "anything").unwrap();
    let output = goldrelay(url).arg("restore").arg(&target).output().unwrap();
    let stderr = refusal(&output);
    assert!(stderr.contains("pg_restore"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A live database, and the outcome of restoring `backup` over it, which
/// must be refused with `expected` and leave the database as it was.
fn assert_restore_refused(dir: &TempDir, backup: &Path, expected: &str) {
    let live = dir.path().join("live.db");
    if !live.exists() {
        migrated(&live);
    }
    let untouched = std::fs::read(&live).unwrap();
    let output = goldrelay(&sqlite_url(&live))
        .arg("restore")
        .arg(backup)
        .output()
        .unwrap();
    let stderr = refusal(&output);
    assert!(stderr.contains(expected), "{stderr}");
    assert_eq!(std::fs::read(&live).unwrap(), untouched);
    assert!(files_named(dir.path(), "before-restore").is_empty());
    assert!(files_named(dir.path(), "partial").is_empty());
}

#[test]
fn a_restore_refuses_a_damaged_backup_and_leaves_the_database_alone() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "no database here, only words").unwrap();
    assert_restore_refused(&dir, &junk, "is not a SQLite database");

    // A real backup with every page after the first overwritten.
    let damaged = dir.path().join("damaged.db");
    migrated(&damaged);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[4096..].fill(0xAB);
    std::fs::write(&damaged, bytes).unwrap();
    assert_restore_refused(&dir, &damaged, "is damaged");
}

#[test]
fn a_restore_refuses_a_sqlite_file_that_is_not_a_goldrelay_database() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('hi');")
        .unwrap();
    assert_restore_refused(&dir, &other, "is not a goldrelay database");
}

#[test]
fn a_restore_refuses_a_backup_from_a_newer_goldrelay() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.db");
    migrated(&newer);
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch(
            "INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES (99991231000001, 'from the future', 1, x'00', 0);",
        )
        .unwrap();
    assert_restore_refused(&dir, &newer, "written by a newer goldrelay");
}
