//! Delivery latency: from goldrelay's 202 to the sandbox Chatwoot receiving
//! the create request, at a steady rate well under the send-rate cap, so the
//! queue is idle and the figure is the worker's own path.

use crate::harness::{Database, Harness, Pair};
use crate::sandbox;
use crate::stats::percentile;
use anyhow::bail;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Replies per second: half the default send-rate cap (40/s), so the rate
/// limiter never holds a reply back and nothing queues.
pub const RATE: u32 = 20;
/// The most seconds the measurement posts for.
const MAX_SECONDS: u64 = 10;
/// How long the last replies may take to arrive before the run gives up.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct DeliveryLatency {
    pub replies: usize,
    pub seconds: u64,
    /// Milliseconds; the sandbox stamps arrivals to the millisecond.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub async fn measure(h: &mut Harness) -> anyhow::Result<DeliveryLatency> {
    let seconds = h.seconds.min(MAX_SECONDS);
    let count = RATE as u64 * seconds;
    eprintln!("== delivery latency: {count} replies at {RATE}/s");
    let Pair { relay, sandbox, .. } = h.relay_and_sandbox(&Database::Sqlite, &[]).await?;
    let prefix = format!("{}-latency-", h.run_id);
    let support = h.support(&relay.url);
    let mut accepted = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
    for i in 0..count {
        tick.tick().await;
        let id = format!("{prefix}{i}");
        support.post(&id, (i % 1000) as u32 + 1).await?;
        accepted.insert(id, unix_ms());
    }
    let arrived =
        sandbox::wait_for(&h.http, &sandbox.url, &prefix, accepted.len(), PATIENCE).await?;
    if arrived.len() < accepted.len() {
        bail!(
            "only {} of {} replies reached the sandbox within {PATIENCE:?}",
            arrived.len(),
            accepted.len()
        );
    }
    relay.stop().await;
    sandbox.stop().await;
    // The worker may send before the client has read the 202; that is no delay at all.
    let mut latencies: Vec<f64> = accepted
        .iter()
        .map(|(id, at)| (arrived[id] as f64 - at).max(0.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(DeliveryLatency {
        replies: latencies.len(),
        seconds,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
    })
}

/// Now, in milliseconds since the Unix epoch, the clock the sandbox stamps with.
pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
