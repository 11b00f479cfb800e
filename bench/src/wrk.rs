//! Runs wrk with `post.lua` and reads the line its `done` hook prints.

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

/// Conversations the posted replies are spread over (the sandbox has 1..=1000),
/// so Chatwoot's per-conversation flood guard never fires.
const CONVERSATIONS: u32 = 1000;

/// One wrk run: closed loop, every client waits for its answer before the next request.
#[derive(Debug, Clone)]
pub struct WrkRun {
    pub requests: u64,
    pub duration: Duration,
    /// Answers of 400 and above.
    pub status_errors: u64,
    /// Connect, read and write errors and timeouts.
    pub socket_errors: u64,
    pub p50: Duration,
    pub p99: Duration,
}

impl WrkRun {
    /// Requests answered 2xx per second. Every reply id is new, so each 2xx is a 202.
    pub fn accepted_per_sec(&self) -> f64 {
        self.requests.saturating_sub(self.status_errors) as f64 / self.duration.as_secs_f64()
    }
}

pub struct Load<'a> {
    pub wrk: &'a Path,
    pub script: &'a Path,
    /// Base URL of goldrelay or the bare handler.
    pub url: &'a str,
    pub token: &'a str,
    /// Prefix of every reply id in this run.
    pub run_id: &'a str,
    pub clients: u32,
    pub seconds: u64,
}

impl Load<'_> {
    pub async fn run(&self) -> anyhow::Result<WrkRun> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        let threads = self.clients.min(cores).max(1);
        let output = Command::new(self.wrk)
            .args(["-t", &threads.to_string(), "-c", &self.clients.to_string()])
            .args(["-d", &format!("{}s", self.seconds), "--timeout", "10s"])
            .arg("-s")
            .arg(self.script)
            .arg(format!("{}/api/webhooks/gold-replies", self.url))
            .args(["--", self.token, self.run_id, &CONVERSATIONS.to_string()])
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("could not run {}", self.wrk.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!("wrk failed ({}):\n{stdout}{stderr}", output.status);
        }
        parse(&stdout).with_context(|| format!("could not read wrk's result from:\n{stdout}"))
    }
}

/// Reads `BENCH_RESULT key=value ...` (latencies in µs).
fn parse(stdout: &str) -> anyhow::Result<WrkRun> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_RESULT "))
        .context("no BENCH_RESULT line")?;
    let fields: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let get = |key: &str| {
        fields
            .get(key)
            .copied()
            .with_context(|| format!("no {key}"))
    };
    Ok(WrkRun {
        requests: get("requests")?,
        duration: Duration::from_micros(get("duration_us")?),
        status_errors: get("status_errors")?,
        socket_errors: get("socket_errors")?,
        p50: Duration::from_micros(get("p50_us")?),
        p99: Duration::from_micros(get("p99_us")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_line_is_read_among_wrks_own_output() {
        let out = "Running 1s test @ http://x\n  2 threads\nBENCH_RESULT requests=2000 duration_us=1000000 \
                   status_errors=5 socket_errors=0 p50_us=810 p99_us=3900\n";
        let run = parse(out).unwrap();
        assert_eq!(run.accepted_per_sec(), 1995.0);
        assert_eq!(run.p99, Duration::from_micros(3900));
    }
}
