//! Migrations are append-only. A database migrated by one build is opened by
//! the next, and sqlx refuses a database whose applied migration no longer
//! matches its file (or, worse, an edit that sqlx does not catch leaves old
//! databases and new ones with different schemas). So every committed
//! migration's checksum is recorded in `tests/fixtures/migrations.sha256`, and
//! the files must match that record exactly.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The record, relative to the repository root.
const RECORD: &str = "tests/fixtures/migrations.sha256";
/// Every directory of migrations, one per backend.
const DIRECTORIES: [&str; 2] = ["migrations/sqlite", "migrations/postgres"];

/// Hex SHA-256 by path relative to the repository root.
type Checksums = BTreeMap<String, String>;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The record: `sha256sum` lines (`<hex>  <path>`); `#` starts a comment.
fn recorded() -> Checksums {
    let text = std::fs::read_to_string(root().join(RECORD)).expect("the record is readable");
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (hash, path) = line
                .split_once("  ")
                .unwrap_or_else(|| panic!("{RECORD}: `{line}` is not `<sha256>  <path>`"));
            (path.trim().to_owned(), hash.to_owned())
        })
        .collect()
}

/// The checksum of every file in the migration directories.
fn on_disk() -> Checksums {
    let mut checksums = Checksums::new();
    for directory in DIRECTORIES {
        let entries = std::fs::read_dir(root().join(directory))
            .unwrap_or_else(|e| panic!("cannot list {directory}: {e}"));
        for entry in entries.map(|e| e.expect("a directory entry")) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).expect("a migration is readable");
            let hash = hex::encode(Sha256::digest(&bytes));
            checksums.insert(format!("{directory}/{name}"), hash);
        }
    }
    checksums
}

/// What is wrong with the files against the record, one sentence each.
fn problems(recorded: &Checksums, on_disk: &Checksums) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, hash) in on_disk {
        match recorded.get(path) {
            None => problems.push(format!(
                "{path} is new: record its checksum by adding the line `{hash}  {path}` to \
                 {RECORD}; from then on it never changes"
            )),
            Some(kept) if kept != hash => problems.push(format!(
                "{path} changed: a committed migration is never edited — put the change in a \
                 new migration"
            )),
            Some(_) => {}
        }
    }
    for path in recorded.keys().filter(|p| !on_disk.contains_key(*p)) {
        problems.push(format!(
            "{path} is gone: a committed migration is never deleted or renamed — databases \
             have applied it"
        ));
    }
    problems
}

#[test]
fn every_migration_matches_the_checksum_recorded_when_it_was_committed() {
    let files = on_disk();
    for directory in DIRECTORIES {
        let prefix = format!("{directory}/");
        assert!(
            files.keys().any(|path| path.starts_with(&prefix)),
            "{directory} holds no migration"
        );
    }
    let problems = problems(&recorded(), &files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_edited_migration_is_named_and_sent_to_a_new_one() {
    let files = on_disk();
    let mut record = files.clone();
    let (edited, hash) = record.iter_mut().next().expect("a migration");
    hash.replace_range(..1, if hash.starts_with('0') { "1" } else { "0" });
    let edited = edited.clone();
    assert_eq!(
        problems(&record, &files),
        [format!(
            "{edited} changed: a committed migration is never edited — put the change in a new \
             migration"
        )]
    );
}

#[test]
fn a_migration_not_yet_recorded_is_named_with_the_line_that_records_it() {
    let files = on_disk();
    let mut record = files.clone();
    let (new, hash) = record.pop_last().expect("a migration");
    let problems = problems(&record, &files);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!("{new} is new: record its checksum"))
            && problems[0].contains(&format!("`{hash}  {new}` to {RECORD}")),
        "{}",
        problems[0]
    );
}

#[test]
fn a_deleted_migration_is_named() {
    let mut files = on_disk();
    let record = files.clone();
    let (gone, _) = files.pop_first().expect("a migration");
    let problems = problems(&record, &files);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!("{gone} is gone")),
        "{}",
        problems[0]
    );
}

/// Migrations that spelled a conversation's lock key before
/// `goldrelay_line_lock` (migration 14) existed; committed, so they stay.
/// (Counted per line: the one line of `goldrelay_line_lock` spells it.)
const SPELLED_THE_KEY_BEFORE: [&str; 4] = [
    "migrations/postgres/20261129000008_one_round_trip.sql",
    "migrations/postgres/20261129000009_delivered_together.sql",
    "migrations/postgres/20261129000010_notify_after_commit.sql",
    "migrations/postgres/20261206000013_context.sql",
];

/// Every file under `dir`, with its text.
fn texts(dir: &Path, found: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()) {
        let path = entry.path();
        if path.is_dir() {
            texts(&path, found);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            let relative = path
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            found.push((relative, text));
        }
    }
}

#[test]
fn a_conversations_lock_key_is_spelled_once() {
    let mut files = Vec::new();
    texts(&root().join("src"), &mut files);
    texts(&root().join("migrations/postgres"), &mut files);
    let spelled: Vec<String> = files
        .iter()
        .filter(|(path, _)| !SPELLED_THE_KEY_BEFORE.contains(&path.as_str()))
        .flat_map(|(path, text)| {
            let hits = text
                .lines()
                .filter(|line| {
                    ["'goldrelay:'", "\"goldrelay:{", "hashtextextended("]
                        .iter()
                        .any(|spelling| line.contains(spelling))
                })
                .count();
            std::iter::repeat_n(path.clone(), hits)
        })
        .collect();
    assert_eq!(
        spelled,
        ["migrations/postgres/20261206000014_line_lock.sql"],
        "the key is spelled only in goldrelay_line_lock; everything else calls it"
    );
}
