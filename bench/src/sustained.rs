//! Sustained ingest on SQLite: 64 clients for minutes on one goldrelay and
//! one database, in consecutive wrk windows, so a slowdown as the database
//! and its WAL grow shows as the last window against the first. The WAL
//! file's size is sampled throughout.

use crate::harness::{Database, Harness, Pair, TOKEN};
use crate::ingest::MANY;
use crate::wrk::{Load, WrkRun};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The longest window; shorter when the whole run is under a minute.
const WINDOW: u64 = 30;
/// How often the WAL file's size is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

pub struct Sustained {
    pub seconds: u64,
    /// One wrk run per window, in order.
    pub windows: Vec<WrkRun>,
    /// The largest size the `-wal` file reached, in bytes.
    pub wal_max_bytes: u64,
}

impl Sustained {
    pub fn window_seconds(&self) -> u64 {
        self.windows.first().map_or(0, |w| w.duration.as_secs())
    }

    /// Accepted/s of the last window over the first.
    pub fn last_over_first(&self) -> f64 {
        match (self.windows.first(), self.windows.last()) {
            (Some(first), Some(last)) => last.accepted_per_sec() / first.accepted_per_sec(),
            _ => f64::NAN,
        }
    }

    /// The worst window's p99: wrk gives no histogram to merge, so this bounds
    /// the run's p99 from above.
    pub fn p99(&self) -> Duration {
        self.windows.iter().map(|w| w.p99).max().unwrap_or_default()
    }

    pub fn accepted_per_sec(&self) -> f64 {
        let requests: u64 = self
            .windows
            .iter()
            .map(|w| w.requests - w.status_errors)
            .sum();
        let secs: f64 = self.windows.iter().map(|w| w.duration.as_secs_f64()).sum();
        requests as f64 / secs
    }
}

pub async fn measure(h: &mut Harness, seconds: u64) -> anyhow::Result<Sustained> {
    let window = WINDOW.min((seconds / 2).max(1));
    let count = (seconds / window).max(2);
    eprintln!("== sustained: goldrelay on SQLite, {MANY} clients, {count} × {window} s");
    let Pair {
        relay,
        sandbox,
        database_url,
    } = h.relay_and_sandbox(&Database::Sqlite, &[]).await?;
    let wal = PathBuf::from(format!(
        "{}-wal",
        database_url.trim_start_matches("sqlite://")
    ));
    let wal_max = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_size(wal, wal_max.clone()));
    let mut windows = Vec::new();
    for n in 0..count {
        let run_id = format!("{}-sustained-{n}", h.run_id);
        let run = Load {
            wrk: &h.tools.wrk,
            script: &h.script,
            url: &relay.url,
            token: TOKEN,
            run_id: &run_id,
            clients: MANY,
            seconds: window,
        }
        .run()
        .await?;
        windows.push(run);
    }
    sampler.abort();
    relay.stop().await;
    sandbox.stop().await;
    Ok(Sustained {
        seconds: window * count,
        windows,
        wal_max_bytes: wal_max.load(Ordering::Relaxed),
    })
}

/// Keeps the largest size `path` reaches in `max`, until aborted.
async fn sample_size(path: PathBuf, max: Arc<AtomicU64>) {
    loop {
        if let Ok(meta) = std::fs::metadata(&path) {
            max.fetch_max(meta.len(), Ordering::Relaxed);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}
