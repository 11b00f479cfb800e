//! Memory bounded by bytes, not rows (issue 19 item 4): one conversation of
//! 500 replies of about 256 KiB, then four conversation views read at once
//! while four exports read 64 KiB and stop reading. goldrelay's peak RSS
//! over those eight requests must stay under 64 MiB, and the stalled
//! exports must be cut off after `GOLDRELAY_REQUEST_TIMEOUT`.

use crate::harness::{Database, Harness, Pair, TOKEN};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Replies in the one conversation.
pub const REPLIES: usize = 500;
/// Conversation views and stalled exports, each this many at once.
pub const READERS: usize = 4;
/// `GOLDRELAY_REQUEST_TIMEOUT` for this row.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Two-byte characters of each reply's content: with its draft, a body just
/// under goldrelay's default `GOLDRELAY_MAX_BODY` (256 KiB).
const CONTENT_CHARS: usize = 120_000;
const DRAFT_CHARS: usize = 14_000;
/// What a stalled export reads before it stops reading.
const READ_BEFORE_STALL: usize = 64 * 1024;
/// The export leaves out replies younger than this (`EXPORT_SETTLE`).
pub const EXPORT_SETTLE: Duration = Duration::from_secs(61);
/// A viewer token: views and exports are a viewer's.
pub const VIEWER: &str = "bench-viewer-token-0123456789abcdefghij";

/// What the row reports.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Bytes of one posted body.
    pub body_bytes: usize,
    /// goldrelay's RSS once the replies were in, before the readers, in KiB.
    pub idle_rss_kib: u64,
    /// goldrelay's peak RSS (VmHWM, reset before the readers), in KiB.
    pub peak_rss_kib: u64,
    /// Views that came back whole (all 500 replies).
    pub views_whole: usize,
    /// Stalled exports goldrelay cut off within the timeout and a grace.
    pub exports_cut: usize,
}

pub async fn measure(h: &mut Harness) -> anyhow::Result<Memory> {
    eprintln!(
        "== memory: {REPLIES} replies of ~256 KiB in one conversation, {READERS} views + \
         {READERS} stalled exports, GOLDRELAY_REQUEST_TIMEOUT={}s",
        TIMEOUT.as_secs()
    );
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let env = [
        ("GOLDRELAY_REQUEST_TIMEOUT", timeout.as_str()),
        ("GOLDRELAY_VIEWER_TOKENS", VIEWER),
    ];
    let Pair { relay, sandbox, .. } = h.relay_and_sandbox(&Database::Sqlite, &env).await?;
    let body_bytes = post_all(&relay.url).await?;
    eprintln!("   waiting {EXPORT_SETTLE:?} for the replies to reach the export");
    tokio::time::sleep(EXPORT_SETTLE).await;
    let pid = relay.pid()?;
    let idle_rss_kib = status_kib(pid, "VmRSS:")?;
    // Forget the peak of posting: the row is about reading.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .context("could not reset goldrelay's peak RSS")?;
    let (views_whole, exports_cut) = readers(&relay.url).await?;
    let peak_rss_kib = status_kib(pid, "VmHWM:")?;
    relay.stop().await;
    sandbox.stop().await;
    Ok(Memory {
        body_bytes,
        idle_rss_kib,
        peak_rss_kib,
        views_whole,
        exports_cut,
    })
}

/// Posts the conversation, four at a time; returns one body's size.
async fn post_all(url: &str) -> anyhow::Result<usize> {
    let http = reqwest::Client::new();
    let endpoint = format!("{url}/api/webhooks/gold-replies");
    let mut posts = JoinSet::new();
    let mut size = 0;
    for i in 0..REPLIES {
        if posts.len() == READERS {
            posts.join_next().await.context("a post")???;
        }
        let body = body(i).to_string();
        size = body.len();
        let request = http
            .post(&endpoint)
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body(body);
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
    Ok(size)
}

fn body(i: usize) -> serde_json::Value {
    serde_json::json!({
        "reply_id": format!("mem-{i:04}"),
        "account_id": 1,
        "conversation_id": 1,
        "action": "approve",
        "approved_by": "bench@example.com",
        "content": format!("{i}: {}", "é".repeat(CONTENT_CHARS)),
        "draft": { "content": "d".repeat(DRAFT_CHARS) },
    })
}

/// The views and the stalled exports, all at once; returns how many views
/// came whole and how many exports were cut off.
async fn readers(url: &str) -> anyhow::Result<(usize, usize)> {
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .context("goldrelay's URL has no socket address")?;
    let mut stalled = JoinSet::new();
    for _ in 0..READERS {
        stalled.spawn(stalled_export(addr));
    }
    let http = reqwest::Client::new();
    let view = format!("{url}/api/accounts/1/conversations/1/gold-replies");
    let mut views = JoinSet::new();
    for _ in 0..READERS {
        let request = http.get(&view).bearer_auth(VIEWER);
        views.spawn(async move {
            let view: serde_json::Value = request.send().await?.json().await?;
            let items = view["items"].as_array().map_or(0, Vec::len);
            anyhow::Ok(items == REPLIES && view["truncated"] == false)
        });
    }
    let mut whole = 0;
    while let Some(view) = views.join_next().await {
        whole += usize::from(view??);
    }
    let mut cut = 0;
    while let Some(export) = stalled.join_next().await {
        cut += usize::from(export??);
    }
    Ok((whole, cut))
}

/// An export that reads [`READ_BEFORE_STALL`] and stops reading; whether
/// goldrelay ended the connection within the timeout and a grace.
async fn stalled_export(addr: SocketAddr) -> anyhow::Result<bool> {
    let socket = TcpSocket::new_v4()?;
    // A small window, so goldrelay's writes block soon after the stall.
    socket.set_recv_buffer_size(16 * 1024)?;
    let mut stream = socket.connect(addr).await?;
    let request = format!(
        "GET /api/gold-replies/export HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {VIEWER}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut read = vec![0; READ_BEFORE_STALL];
    stream.read_exact(&mut read).await?;
    let stalled = Instant::now();
    tokio::time::sleep(TIMEOUT * 3).await;
    Ok(ended_early(&mut stream, stalled).await)
}

/// Whether the connection was ended before the export was complete.
async fn ended_early(stream: &mut TcpStream, since: Instant) -> bool {
    let mut rest = Vec::new();
    let drained = tokio::time::timeout(
        Duration::from_secs(60).saturating_sub(since.elapsed()),
        stream.read_to_end(&mut rest),
    )
    .await;
    match drained {
        Ok(Ok(_)) => !rest.ends_with(b"\r\n0\r\n\r\n"),
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// A `kB` line of `/proc/<pid>/status`.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
