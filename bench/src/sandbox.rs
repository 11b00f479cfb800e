//! What the sandbox Chatwoot saw: every create request, with its arrival time.

use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a waiting measurement asks the sandbox what arrived: rarely
/// enough that serving the whole list does not slow the sandbox down.
const POLL_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
struct Create {
    gold_reply_id: Option<String>,
    /// Arrival, in milliseconds since the Unix epoch (the sandbox's resolution).
    at_ms: i64,
}

/// The first arrival (Unix ms) of every reply id that starts with `prefix`.
pub async fn arrivals(
    http: &reqwest::Client,
    sandbox_url: &str,
    prefix: &str,
) -> anyhow::Result<HashMap<String, i64>> {
    let creates: Vec<Create> = http
        .get(format!("{sandbox_url}/_sandbox/creates"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut first = HashMap::new();
    for create in creates {
        let Some(id) = create.gold_reply_id.filter(|id| id.starts_with(prefix)) else {
            continue;
        };
        first
            .entry(id)
            .and_modify(|at: &mut i64| *at = (*at).min(create.at_ms))
            .or_insert(create.at_ms);
    }
    Ok(first)
}

/// Waits until `expected` distinct replies under `prefix` have arrived, or
/// `patience` has passed; returns what arrived either way.
pub async fn wait_for(
    http: &reqwest::Client,
    sandbox_url: &str,
    prefix: &str,
    expected: usize,
    patience: Duration,
) -> anyhow::Result<HashMap<String, i64>> {
    let deadline = Instant::now() + patience;
    loop {
        let seen = arrivals(http, sandbox_url, prefix).await?;
        if seen.len() >= expected || Instant::now() >= deadline {
            return Ok(seen);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
