//! The training formats' memory (issue 21): goldrelay's peak RSS while it
//! streams the whole gold dataset in each export format, at [`FIRST`]
//! replies and again at [`GROWTH`] times as many. Flat memory: the peak
//! stays where it was when the dataset grows.

use crate::harness::{Database, Harness, Pair, TOKEN};
use crate::memory::{status_kib, EXPORT_SETTLE, VIEWER};
use anyhow::{bail, Context};
use std::ops::Range;
use tokio::task::JoinSet;

/// Every export format, records first.
pub const FORMATS: [&str; 5] = [
    "records",
    "openai-chat",
    "openai-preference",
    "trl-preference",
    "trl-kto",
];
/// Replies at the first measurement.
pub const FIRST: usize = 10_000;
/// How many times as many replies the second measurement streams.
pub const GROWTH: usize = 3;
/// Posts in flight at once.
const POSTERS: usize = 16;

/// One whole export of one format.
#[derive(Debug, Clone, Copy)]
pub struct Streamed {
    /// Lines (one per training example) read.
    pub lines: usize,
    /// goldrelay's peak RSS while it streamed them (VmHWM, reset before), in KiB.
    pub peak_rss_kib: u64,
}

/// What the rows report: each format at [`FIRST`] replies, then at
/// `FIRST * GROWTH`.
#[derive(Debug, Clone)]
pub struct Formats {
    pub first: [Streamed; 5],
    pub grown: [Streamed; 5],
}

impl Formats {
    /// The lowest and highest peak of one measurement, in MiB.
    pub fn spread(measured: &[Streamed; 5]) -> (f64, f64) {
        let mib = |s: &Streamed| s.peak_rss_kib as f64 / 1024.0;
        let low = measured.iter().map(mib).fold(f64::INFINITY, f64::min);
        let high = measured.iter().map(mib).fold(0.0, f64::max);
        (low, high)
    }
}

pub async fn measure(h: &mut Harness) -> anyhow::Result<Formats> {
    eprintln!(
        "== formats: the whole export in each of {} formats at {FIRST} and {} replies",
        FORMATS.len(),
        FIRST * GROWTH
    );
    let env = [("GOLDRELAY_VIEWER_TOKENS", VIEWER)];
    let Pair { relay, sandbox, .. } = h.relay_and_sandbox(&Database::Sqlite, &env).await?;
    let pid = relay.pid()?;
    post_all(&relay.url, 0..FIRST).await?;
    let first = stream_each(&relay.url, pid).await?;
    post_all(&relay.url, FIRST..FIRST * GROWTH).await?;
    let grown = stream_each(&relay.url, pid).await?;
    relay.stop().await;
    sandbox.stop().await;
    Ok(Formats { first, grown })
}

/// Posts replies `ids`, [`POSTERS`] at a time.
async fn post_all(url: &str, ids: Range<usize>) -> anyhow::Result<()> {
    eprintln!("   posting replies {} to {}", ids.start, ids.end - 1);
    let http = reqwest::Client::new();
    let endpoint = format!("{url}/api/webhooks/gold-replies");
    let mut posts = JoinSet::new();
    for i in ids {
        if posts.len() == POSTERS {
            posts.join_next().await.context("a post")???;
        }
        let request = http
            .post(&endpoint)
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body(body(i).to_string());
        posts.spawn(async move {
            let status = request.send().await?.status();
            if status != reqwest::StatusCode::ACCEPTED {
                bail!("a post was answered {status}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(posted) = posts.join_next().await {
        posted??;
    }
    Ok(())
}

/// A reply as a support team posts them: personal data in the text, a draft
/// (a sixth approved as drafted), two turns of context; a third rejected.
fn body(i: usize) -> serde_json::Value {
    let text = format!(
        "Answer {i}: write to maria{i}@example.com or call +44 20 7946 {:04}. {}",
        i % 10_000,
        "word ".repeat(60)
    );
    let draft = if i % 6 == 0 {
        text.clone()
    } else {
        format!("draft {i} {}", "word ".repeat(50))
    };
    let action = ["approve", "reject", "approve"][i % 3];
    serde_json::json!({
        "reply_id": format!("fmt-{i:05}"),
        "account_id": 1,
        "conversation_id": 1 + i % 97,
        "action": action,
        "approved_by": "bench@example.com",
        "content": text,
        "draft": { "text": draft },
        "context": [
            {"role": "user", "content": format!("Hi, customer {i} here, card 4111 1111 1111 1111")},
            {"role": "assistant", "content": "Let me check."},
        ],
    })
}

/// Waits for the replies to reach the export, then streams it whole once per
/// format, each from a fresh peak.
async fn stream_each(url: &str, pid: u32) -> anyhow::Result<[Streamed; 5]> {
    eprintln!("   waiting {EXPORT_SETTLE:?} for the replies to reach the export");
    tokio::time::sleep(EXPORT_SETTLE).await;
    let http = reqwest::Client::new();
    let mut measured = [Streamed {
        lines: 0,
        peak_rss_kib: 0,
    }; 5];
    for (format, streamed) in FORMATS.iter().zip(&mut measured) {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("could not reset goldrelay's peak RSS")?;
        let mut response = http
            .get(format!("{url}/api/gold-replies/export?format={format}"))
            .bearer_auth(VIEWER)
            .send()
            .await?
            .error_for_status()?;
        let mut lines = 0;
        while let Some(chunk) = response.chunk().await? {
            lines += chunk.iter().filter(|&&b| b == b'\n').count();
        }
        if lines == 0 {
            bail!("the {format} export was empty");
        }
        *streamed = Streamed {
            lines,
            peak_rss_kib: status_kib(pid, "VmHWM:")?,
        };
        eprintln!(
            "   {format}: {} lines, peak {:.1} MiB",
            streamed.lines,
            streamed.peak_rss_kib as f64 / 1024.0
        );
    }
    Ok(measured)
}
