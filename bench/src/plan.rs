//! Which measurements a run makes, decided before the first one starts, so a
//! part that cannot run stops the run at once rather than after minutes.

use anyhow::bail;

/// A part of the benchmark that `BENCH_ONLY` can ask for alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The bare handler's ingest, goldrelay's SQLite ingest (1 and 64
    /// clients), its peak RSS, starts and binary size, with the ratios to bare.
    Sqlite,
    /// The bare handler's ingest and the sustained SQLite run
    /// (`BENCH_SUSTAINED_SECONDS`), whose rows compare with bare's 64 clients.
    Sustained,
    /// The bare handler's ingest, then ingest and drain on PostgreSQL
    /// (needs `TEST_DATABASE_URL`).
    Postgres,
    /// The SQLite delivery-latency row and both SQLite drains (cap lifted and
    /// at the default cap).
    Drain,
    /// The slow-client rows: `/hc`, peak RSS and 408s under `BENCH_SLOW_CLIENTS`.
    Slow,
    /// Peak RSS with 500 replies of 256 KiB in one conversation, four
    /// views and four stalled exports at once (about 2 minutes).
    Memory,
    /// Peak RSS streaming the whole export in each training format at 10 000
    /// and 30 000 replies (about 4 minutes).
    Formats,
}

/// The measurements of one run, in the order they are made.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The bare handler's ingest: the ceiling every ingest ratio divides by.
    pub bare: bool,
    pub sqlite: bool,
    pub sustained: bool,
    /// Delivery latency and the two drains, on SQLite.
    pub drain: bool,
    pub slow: bool,
    pub memory: bool,
    pub formats: bool,
    /// Whether the PostgreSQL rows are printed; they are measured only with a URL.
    pub postgres: bool,
}

impl Plan {
    /// The plan for `BENCH_ONLY`'s values (none: everything), given whether
    /// `TEST_DATABASE_URL` is set.
    pub fn new(only: &[Only], postgres_url: bool) -> anyhow::Result<Self> {
        if only.is_empty() {
            return Ok(Self::everything());
        }
        if only.contains(&Only::Postgres) && !postgres_url {
            bail!("BENCH_ONLY=postgres needs TEST_DATABASE_URL set to a PostgreSQL server URL");
        }
        let asked = |part| only.contains(&part);
        Ok(Self {
            bare: asked(Only::Sqlite) || asked(Only::Sustained) || asked(Only::Postgres),
            sqlite: asked(Only::Sqlite),
            sustained: asked(Only::Sustained),
            drain: asked(Only::Drain),
            slow: asked(Only::Slow),
            memory: asked(Only::Memory),
            formats: asked(Only::Formats),
            postgres: asked(Only::Postgres),
        })
    }

    fn everything() -> Self {
        Self {
            bare: true,
            sqlite: true,
            sustained: true,
            drain: true,
            slow: true,
            memory: true,
            formats: true,
            postgres: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_value_runs_everything() {
        assert_eq!(Plan::new(&[], false).unwrap(), Plan::everything());
    }

    #[test]
    fn every_part_that_compares_with_bare_measures_bare() {
        for part in [Only::Sqlite, Only::Sustained, Only::Postgres] {
            assert!(Plan::new(&[part], true).unwrap().bare, "{part:?}");
        }
        for part in [Only::Drain, Only::Slow, Only::Memory, Only::Formats] {
            assert!(!Plan::new(&[part], true).unwrap().bare, "{part:?}");
        }
    }

    #[test]
    fn several_values_run_exactly_those_parts() {
        let plan = Plan::new(&[Only::Sustained, Only::Slow], false).unwrap();
        assert_eq!(
            plan,
            Plan {
                bare: true,
                sqlite: false,
                sustained: true,
                drain: false,
                slow: true,
                memory: false,
                formats: false,
                postgres: false,
            }
        );
    }

    #[test]
    fn postgres_alone_without_a_url_is_refused_before_anything_runs() {
        let error = Plan::new(&[Only::Postgres], false).unwrap_err();
        assert!(error.to_string().contains("TEST_DATABASE_URL"), "{error}");
    }
}
