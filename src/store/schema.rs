//! Where a database's schema stands against this build's migrations, read without changing it.
//!
//! `serve` and `migrate` apply migrations; the commands an operator runs
//! against a live database (`check-config`, `replies …`) only look, so a new
//! binary run from a laptop never migrates production ahead of its deploy
//! (an older instance refuses a schema newer than it knows).

use super::{Backend, DatabaseUrl, StoreError};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::fmt;
use std::str::FromStr;

/// SQLite's migrations, as this build knows them.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// PostgreSQL's migrations, as this build knows them.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A database's schema against this build's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// No file at a SQLite path.
    Missing,
    /// No migration applied yet: not a goldrelay database, or a new one.
    Empty,
    /// Every migration this build has, and no other.
    Current,
    /// These versions of this build's migrations are still to apply.
    Behind(Vec<i64>),
    /// Applied by a newer goldrelay: this build does not know the migration.
    Newer(i64),
    /// Applied from a text other than this build's.
    Altered(i64),
    /// Began and did not finish.
    Unfinished(i64),
}

impl Schema {
    /// Whether this build can read and write the database as it stands.
    pub fn is_current(&self) -> bool {
        *self == Schema::Current
    }
}

impl fmt::Display for Schema {
    /// Completes "the database …".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schema::Missing => write!(f, "does not exist"),
            Schema::Empty => write!(f, "holds no goldrelay tables yet"),
            Schema::Current => write!(f, "has this goldrelay's schema"),
            Schema::Behind(versions) => {
                let listed: Vec<String> = versions.iter().map(i64::to_string).collect();
                write!(
                    f,
                    "is {} migration(s) behind this goldrelay ({})",
                    versions.len(),
                    listed.join(", ")
                )
            }
            Schema::Newer(v) => write!(
                f,
                "was migrated by a newer goldrelay (its migration {v} is unknown to this one)"
            ),
            Schema::Altered(v) => {
                write!(f, "ran a migration {v} that differs from this goldrelay's")
            }
            Schema::Unfinished(v) => write!(f, "has a migration {v} that did not finish"),
        }
    }
}

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: i64,
    pub checksum: Vec<u8>,
    pub success: bool,
}

/// Judges what a database applied against what `known` holds: the same test
/// sqlx applies before it migrates.
pub fn compare(known: &Migrator, applied: &[Applied]) -> Schema {
    if applied.is_empty() {
        return Schema::Empty;
    }
    for row in applied {
        match known.iter().find(|m| m.version == row.version) {
            None => return Schema::Newer(row.version),
            Some(m) if *m.checksum != *row.checksum => return Schema::Altered(row.version),
            Some(_) if !row.success => return Schema::Unfinished(row.version),
            Some(_) => {}
        }
    }
    let behind: Vec<i64> = known
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .filter(|v| !applied.iter().any(|row| row.version == *v))
        .collect();
    if behind.is_empty() {
        Schema::Current
    } else {
        Schema::Behind(behind)
    }
}

/// Reads where the database at `url` stands, creating and changing nothing.
pub async fn inspect(url: &DatabaseUrl) -> Result<Schema, StoreError> {
    const HAS_TABLE_SQLITE: &str =
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
    const HAS_TABLE_POSTGRES: &str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";
    const APPLIED: &str =
        "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version";
    let (rows, known) = match url.backend() {
        Backend::Sqlite => {
            let options = SqliteConnectOptions::from_str(url.expose())?
                .create_if_missing(false)
                .read_only(true);
            if !options.get_filename().exists() {
                return Ok(Schema::Missing);
            }
            let mut conn = options.connect().await?;
            let rows = applied::<sqlx::Sqlite>(&mut conn, HAS_TABLE_SQLITE, APPLIED).await;
            conn.close().await?;
            (rows?, &SQLITE_MIGRATIONS)
        }
        Backend::Postgres => {
            let mut conn = PgConnectOptions::from_str(url.expose())?.connect().await?;
            let rows = applied::<sqlx::Postgres>(&mut conn, HAS_TABLE_POSTGRES, APPLIED).await;
            conn.close().await?;
            (rows?, &POSTGRES_MIGRATIONS)
        }
    };
    Ok(compare(known, &rows))
}

async fn applied<DB>(
    conn: &mut DB::Connection,
    has_table: &str,
    rows: &str,
) -> Result<Vec<Applied>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let exists: bool = sqlx::query_scalar(has_table).fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as(rows).fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .map(|(version, checksum, success)| Applied {
            version,
            checksum,
            success,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied_all(known: &Migrator) -> Vec<Applied> {
        known
            .iter()
            .map(|m| Applied {
                version: m.version,
                checksum: m.checksum.to_vec(),
                success: true,
            })
            .collect()
    }

    #[test]
    fn a_database_is_judged_against_each_migration_this_build_knows() {
        let known = &SQLITE_MIGRATIONS;
        let all = applied_all(known);
        assert_eq!(compare(known, &[]), Schema::Empty);
        assert_eq!(compare(known, &all), Schema::Current);
        let last = all.last().unwrap().version;
        assert_eq!(
            compare(known, &all[..all.len() - 1]),
            Schema::Behind(vec![last])
        );
        let mut newer = all.clone();
        newer.push(Applied {
            version: last + 1,
            checksum: vec![0],
            success: true,
        });
        assert_eq!(compare(known, &newer), Schema::Newer(last + 1));
        let mut altered = all.clone();
        altered[0].checksum = vec![1, 2, 3];
        assert_eq!(compare(known, &altered), Schema::Altered(all[0].version));
        let mut unfinished = all.clone();
        unfinished[1].success = false;
        assert_eq!(
            compare(known, &unfinished),
            Schema::Unfinished(all[1].version)
        );
    }

    #[test]
    fn each_state_reads_as_the_end_of_a_sentence_about_the_database() {
        assert_eq!(
            Schema::Behind(vec![15, 16]).to_string(),
            "is 2 migration(s) behind this goldrelay (15, 16)"
        );
        assert_eq!(
            Schema::Newer(17).to_string(),
            "was migrated by a newer goldrelay (its migration 17 is unknown to this one)"
        );
    }
}
