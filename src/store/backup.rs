//! `goldrelay backup` and `goldrelay restore`, for the SQLite default.
//!
//! A backup is SQLite's online backup run inside one read transaction on a
//! connection of its own: the copy is the database as it stood when the
//! backup began, and `serve` keeps committing meanwhile (in WAL mode a reader
//! and the writer do not wait for each other). Copying in several read
//! transactions instead would start over whenever `serve` commits between two
//! of them, and under steady writes might never finish.
//!
//! Neither command leaves a half-written file under a final name: each writes
//! next to its target and renames once the copy is complete and synced. A
//! restore never deletes a database: the one it replaces is kept beside it.

use super::schema::{self, Applied, Schema, SQLITE_MIGRATIONS};
use super::{Backend, DatabaseUrl};
use anyhow::{anyhow, bail, Context};
use chrono::Utc;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use sqlx::sqlite::SqliteConnectOptions;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Pages copied per step (4 MiB at SQLite's default page size); a long copy
/// reports its progress between two steps.
const PAGES_PER_STEP: i32 = 1024;
/// How often a long copy says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a step may keep finding the database locked before the copy gives up.
const LOCKED_FOR_AT_MOST: Duration = Duration::from_secs(30);

/// What `goldrelay backup` wrote.
#[derive(Debug)]
pub struct BackedUp {
    pub path: PathBuf,
    /// Gold replies in the copy.
    pub replies: i64,
    pub bytes: u64,
}

impl fmt::Display for BackedUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backed up {} replies ({}) to {}",
            self.replies,
            size(self.bytes),
            self.path.display()
        )
    }
}

/// What `goldrelay restore` did.
#[derive(Debug)]
pub struct Restored {
    pub database: PathBuf,
    /// Gold replies in the restored database.
    pub replies: i64,
    /// Where the database it replaced now is; `None` when there was none.
    pub kept: Option<PathBuf>,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored {} replies into {}; ",
            self.replies,
            self.database.display()
        )?;
        match &self.kept {
            Some(kept) => write!(f, "the database it replaced is kept as {}", kept.display()),
            None => f.write_str("there was no database there before"),
        }
    }
}

/// `goldrelay backup FILE`: a consistent copy of the live database at `target`,
/// taken while `serve` may be writing. Refuses an existing `target` unless `force`.
pub fn backup(url: &DatabaseUrl, target: &Path, force: bool) -> anyhow::Result<BackedUp> {
    let database = sqlite_path(
        url,
        "back it up with pg_dump or your provider's backups (Supabase: Database > Backups)",
    )?;
    check_target(target, &database, force)?;
    let source = open_existing(&database, "DATABASE_URL")?;
    require_tables(&source, &database, &["gold_replies"])?;
    let partial = Partial::beside(target)?;
    copy_snapshot(&source, partial.path())?;
    let replies = seal(partial.path())?;
    let bytes = partial.put_in_place(target)?;
    Ok(BackedUp {
        path: target.to_owned(),
        replies,
        bytes,
    })
}

/// `goldrelay restore FILE`: checks the backup, then puts it in place of the
/// database `url` names, keeping that one aside. Refuses while anything has
/// the database open.
pub fn restore(url: &DatabaseUrl, backup: &Path) -> anyhow::Result<Restored> {
    let database = sqlite_path(
        url,
        "restore it with pg_restore or psql, or your provider's backups (Supabase: Database > Backups)",
    )?;
    let checked = check_backup(backup)?;
    if same_file(backup, &database) {
        bail!(
            "{} is the database itself; nothing to restore",
            backup.display()
        );
    }
    let lock = lock_out(&database)?;
    let partial = Partial::beside(&database)?;
    copy_snapshot(&checked, partial.path())?;
    let replies = seal(partial.path())?;
    let kept = keep_aside(&database)?;
    partial.put_in_place(&database)?;
    drop(lock);
    Ok(Restored {
        database,
        replies,
        kept,
    })
}

/// The file a SQLite `DATABASE_URL` names, or a refusal that says what to do instead.
fn sqlite_path(url: &DatabaseUrl, postgres_advice: &str) -> anyhow::Result<PathBuf> {
    if url.backend() == Backend::Postgres {
        bail!("DATABASE_URL is a PostgreSQL database: {postgres_advice}; this command is for the SQLite default only");
    }
    if url.expose().contains(":memory:") {
        bail!("DATABASE_URL ({url}) is an in-memory database: there is no file to copy");
    }
    let options = SqliteConnectOptions::from_str(url.expose())
        .map_err(|e| anyhow!("DATABASE_URL ({url}) cannot be read as a SQLite URL: {e}"))?;
    Ok(options.get_filename().to_owned())
}

fn check_target(target: &Path, database: &Path, force: bool) -> anyhow::Result<()> {
    let shown = target.display();
    if target.is_dir() {
        bail!("{shown} is a directory; name the backup file, e.g. {shown}/goldrelay.db");
    }
    let folder = folder_of(target);
    if !folder.is_dir() {
        bail!("{} does not exist; create it first", folder.display());
    }
    if same_file(target, database) {
        bail!("{shown} is the database itself; name another file");
    }
    if target.exists() && !force {
        bail!("{shown} exists; pass --force to replace it");
    }
    Ok(())
}

/// Opens a database that must exist (never creating one); `named_by` says
/// where its path came from, for the error.
fn open_existing(path: &Path, named_by: &str) -> anyhow::Result<Connection> {
    if !path.is_file() {
        bail!("there is no database at {} ({named_by})", path.display());
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| unreadable(path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| unreadable(path, e))?;
    Ok(conn)
}

/// One line that says why `path` could not be read as a database.
fn unreadable(path: &Path, e: rusqlite::Error) -> anyhow::Error {
    let shown = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => anyhow!("{shown} is not a SQLite database ({e})"),
        Some(ErrorCode::DatabaseCorrupt) => anyhow!("{shown} is damaged ({e})"),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            anyhow!("{shown} cannot be read ({e})")
        }
        _ => anyhow!("{shown}: {e}"),
    }
}

/// Refuses a SQLite database that lacks any of goldrelay's `tables`.
fn require_tables(conn: &Connection, path: &Path, tables: &[&str]) -> anyhow::Result<()> {
    for table in tables {
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get(0),
            )
            .map_err(|e| unreadable(path, e))?;
        if found == 0 {
            bail!(
                "{} is not a goldrelay database: it has no {table} table",
                path.display()
            );
        }
    }
    Ok(())
}

/// Opens a backup and refuses it unless it is whole, goldrelay's, and no
/// newer than this build: `serve` would refuse it otherwise, after the swap.
fn check_backup(path: &Path) -> anyhow::Result<Connection> {
    let conn = open_existing(path, "the backup to restore")?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| unreadable(path, e))?;
    if verdict != "ok" {
        bail!(
            "{} is damaged: SQLite's integrity_check says {verdict:?}",
            path.display()
        );
    }
    require_tables(&conn, path, &["_sqlx_migrations", "gold_replies"])?;
    check_migrations(&conn, path)?;
    Ok(conn)
}

/// Every migration the backup ran must be one this build knows, unchanged
/// and finished: the same test `serve` applies when it opens a database. An
/// older backup is fine: the next `serve` migrates it.
fn check_migrations(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let mut applied = conn
        .prepare("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .map_err(|e| unreadable(path, e))?;
    let rows = applied
        .query_map([], |row| {
            Ok(Applied {
                version: row.get(0)?,
                checksum: row.get(1)?,
                success: row.get(2)?,
            })
        })
        .map_err(|e| unreadable(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(path, e))?;
    let shown = path.display();
    match schema::compare(&SQLITE_MIGRATIONS, &rows) {
        Schema::Newer(version) => bail!(
            "{shown} was written by a newer goldrelay (its migration {version} is unknown to this one); restore it with that version or later"
        ),
        Schema::Altered(version) => {
            bail!("{shown}'s migration {version} differs from this goldrelay's")
        }
        Schema::Unfinished(version) => bail!("{shown}'s migration {version} did not finish"),
        Schema::Missing | Schema::Empty | Schema::Current | Schema::Behind(_) => Ok(()),
    }
}

/// Copies `source` into a new database at `to`, as of one snapshot.
fn copy_snapshot(source: &Connection, to: &Path) -> anyhow::Result<()> {
    // Reading inside an open transaction pins the snapshot: every step of
    // the backup then reads it, whatever `serve` commits meanwhile.
    source.execute_batch("BEGIN")?;
    source.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let copied = copy_pages(source, to);
    let _ = source.execute_batch("COMMIT");
    copied
}

fn copy_pages(source: &Connection, to: &Path) -> anyhow::Result<()> {
    let mut dest =
        Connection::open(to).with_context(|| format!("could not create {}", to.display()))?;
    // Nothing of a partial copy is worth a disk flush: it is synced once, whole,
    // before it gets its final name.
    dest.pragma_update(None, "synchronous", "OFF")?;
    let backup = Backup::new(source, &mut dest)?;
    let mut said = Instant::now();
    let mut locked_since: Option<Instant> = None;
    loop {
        match backup.step(PAGES_PER_STEP)? {
            StepResult::Done => return Ok(()),
            StepResult::More => locked_since = None,
            _ => {
                let since = *locked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > LOCKED_FOR_AT_MOST {
                    bail!("the database stayed locked for {LOCKED_FOR_AT_MOST:?}; nothing was written");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if said.elapsed() >= PROGRESS_EVERY {
            let progress = backup.progress();
            let total = progress.pagecount.max(1);
            let copied = progress.pagecount - progress.remaining;
            eprintln!(
                "copied {copied} of {total} pages ({}%)",
                i64::from(copied) * 100 / i64::from(total)
            );
            said = Instant::now();
        }
    }
}

/// Makes the copy one self-contained file (a rollback journal, so nothing
/// lives beside it in a -wal; `serve` turns WAL back on when it opens it)
/// and counts its replies.
fn seal(path: &Path) -> anyhow::Result<i64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "DELETE", |row| row.get(0))?;
    anyhow::ensure!(
        mode == "delete",
        "the copy stayed in {mode} mode; nothing was put in place"
    );
    let replies = conn.query_row("SELECT count(*) FROM gold_replies", [], |row| row.get(0))?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(replies)
}

/// Makes `database` this process's alone, or refuses. Every connection
/// `serve` holds keeps a shared lock on a WAL database for as long as it is
/// open, so leaving WAL (which needs the only lock) fails while `serve` runs.
/// Leaving WAL also copies the WAL's last commits into the file, so the
/// database kept aside is one complete file. The returned connection holds
/// an exclusive lock until it is dropped.
fn lock_out(database: &Path) -> anyhow::Result<Option<Connection>> {
    if !database.exists() {
        return Ok(None);
    }
    let shown = database.display();
    let conn = open_existing(database, "DATABASE_URL")?;
    conn.busy_timeout(Duration::ZERO)?;
    let left = conn.pragma_update_and_check(None, "journal_mode", "DELETE", |row| {
        row.get::<_, String>(0)
    });
    let in_use = || {
        anyhow!("{shown} is open in another process, most likely a running `goldrelay serve`: stop it first")
    };
    match left {
        Ok(mode) if mode == "delete" => {}
        Ok(_) => return Err(in_use()),
        Err(e) if code_is(&e, &[ErrorCode::DatabaseBusy, ErrorCode::DatabaseLocked]) => {
            return Err(in_use())
        }
        Err(e) if code_is(&e, &[ErrorCode::NotADatabase, ErrorCode::DatabaseCorrupt]) => {
            // Nothing can serve from it either; it is kept aside unread.
            eprintln!("{shown} does not open as a database ({e}); it is kept aside as it is");
            return Ok(None);
        }
        Err(e) => return Err(unreadable(database, e)),
    }
    // Held from here until the connection closes. Taken after leaving WAL,
    // which in this mode would leave a -journal file behind.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")
        .map_err(|e| {
            if code_is(&e, &[ErrorCode::DatabaseBusy, ErrorCode::DatabaseLocked]) {
                in_use()
            } else {
                unreadable(database, e)
            }
        })?;
    Ok(Some(conn))
}

fn code_is(e: &rusqlite::Error, codes: &[ErrorCode]) -> bool {
    e.sqlite_error_code()
        .is_some_and(|code| codes.contains(&code))
}

/// Renames the database being replaced, and anything SQLite keeps beside
/// it, to `<database>.before-restore-<UTC time>`.
fn keep_aside(database: &Path) -> anyhow::Result<Option<PathBuf>> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let kept = suffixed(database, &format!(".before-restore-{stamp}"));
    if kept.exists() {
        bail!(
            "{} exists already; run the restore again in a second",
            kept.display()
        );
    }
    let mut moved = false;
    for companion in ["", "-wal", "-shm", "-journal"] {
        let from = suffixed(database, companion);
        if from.exists() {
            let to = suffixed(&kept, companion);
            std::fs::rename(&from, &to).with_context(|| {
                format!("could not move {} to {}", from.display(), to.display())
            })?;
            moved = true;
        }
    }
    Ok(moved.then_some(kept))
}

/// A file being written next to its final place; removed unless put there.
struct Partial {
    path: PathBuf,
    placed: bool,
}

impl Partial {
    fn beside(target: &Path) -> anyhow::Result<Self> {
        let path = suffixed(target, &format!(".partial-{}", std::process::id()));
        // Left by an earlier run that had this process id and was killed.
        let _ = std::fs::remove_file(&path);
        Ok(Self {
            path,
            placed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the file, renames it to `target` and syncs the rename; its size.
    fn put_in_place(mut self, target: &Path) -> anyhow::Result<u64> {
        let shown = target.display();
        std::fs::File::open(&self.path)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("could not sync {}", self.path.display()))?;
        std::fs::rename(&self.path, target)
            .with_context(|| format!("could not rename {} to {shown}", self.path.display()))?;
        self.placed = true;
        std::fs::File::open(folder_of(target))
            .and_then(|folder| folder.sync_all())
            .with_context(|| format!("could not sync the folder of {shown}"))?;
        Ok(std::fs::metadata(target)?.len())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.placed {
            for companion in ["", "-journal", "-wal", "-shm"] {
                let _ = std::fs::remove_file(suffixed(&self.path, companion));
            }
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}

/// Whether both paths exist and are the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Bytes, in the unit a person reads at a glance.
fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.0} KiB", b / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_at_a_glance() {
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(5 * 1024 * 1024 + 300 * 1024), "5.3 MiB");
        assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn a_suffix_goes_after_the_whole_file_name() {
        assert_eq!(
            suffixed(Path::new("/data/goldrelay.db"), "-wal"),
            PathBuf::from("/data/goldrelay.db-wal")
        );
    }
}
