//! Drain: replies queued while Chatwoot is down, delivered once it is back.
//!
//! The outage is a Chatwoot that is not running: goldrelay is pointed at a
//! port where the sandbox starts only after every reply is queued. A refused
//! connection tells goldrelay the message was never created, so the drain
//! sends each reply once, with no lookup first (a 5xx outage would add one
//! lookup per conversation, since a 5xx may come after Chatwoot created it).

use crate::delivery::unix_ms;
use crate::harness::{Database, Harness, RelaySetup};
use crate::process::free_port;
use crate::sandbox;
use std::time::{Duration, Instant};

/// goldrelay's default `GOLDRELAY_SEND_RATE` (src/config.rs).
pub const DEFAULT_SEND_RATE: u32 = 40;
/// Replies per conversation: far under Chatwoot's flood guard of 200 a minute.
pub const PER_CONVERSATION: usize = 20;
/// Replies in flight while queueing.
const CONCURRENCY: usize = 32;

pub struct Drain {
    pub replies: usize,
    pub conversations: usize,
    /// `GOLDRELAY_SEND_RATE`; 0 lifts the cap.
    pub send_rate: u32,
    pub delivered: usize,
    /// From the sandbox answering to the last delivery: the drain itself plus
    /// whatever retry backoff the outage left behind.
    pub back_to_last: Duration,
    /// From the first delivery to the last.
    pub span: Duration,
}

impl Drain {
    /// Deliveries per second from the first to the last.
    pub fn per_sec(&self) -> f64 {
        if self.delivered < 2 || self.span.is_zero() {
            return 0.0;
        }
        (self.delivered - 1) as f64 / self.span.as_secs_f64()
    }

    /// Deliveries per second from Chatwoot's return to the last delivery.
    pub fn overall_per_sec(&self) -> f64 {
        if self.back_to_last.is_zero() {
            return 0.0;
        }
        self.delivered as f64 / self.back_to_last.as_secs_f64()
    }

    pub fn complete(&self) -> bool {
        self.delivered == self.replies
    }
}

/// Queues `replies` while Chatwoot is down, brings it back, and times the
/// deliveries, on a new database of the given kind.
pub async fn measure(
    h: &mut Harness,
    replies: usize,
    send_rate: u32,
    database: &Database,
) -> anyhow::Result<Drain> {
    let conversations = (replies / PER_CONVERSATION).clamp(1, 1000);
    eprintln!(
        "== drain: {replies} replies over {conversations} conversations, GOLDRELAY_SEND_RATE={send_rate}"
    );
    let port = free_port()?;
    let database_url = h.fresh_database(database).await?;
    let relay = h
        .relay(&RelaySetup {
            database_url,
            chatwoot_url: format!("http://127.0.0.1:{port}"),
            send_rate: Some(send_rate),
        })
        .await?;
    let prefix = format!("{}-drain-{send_rate}-", h.run_id);
    let queueing = Instant::now();
    let ids = (0..replies).map(|i| (format!("{prefix}{i}"), (i % conversations) as u32 + 1));
    h.support(&relay.url).post_all(ids, CONCURRENCY).await?;
    eprintln!(
        "   queued in {:.1} s; Chatwoot comes back",
        queueing.elapsed().as_secs_f64()
    );
    let sandbox = h.sandbox(port).await?;
    let back_at = unix_ms();
    let arrived = sandbox::wait_for(
        &h.http,
        &sandbox.url,
        &prefix,
        replies,
        patience(replies, send_rate),
    )
    .await?;
    relay.stop().await;
    sandbox.stop().await;
    let first = arrived.values().min().copied().unwrap_or_default() as f64;
    let last = arrived.values().max().copied().unwrap_or_default() as f64;
    Ok(Drain {
        replies,
        conversations,
        send_rate,
        delivered: arrived.len(),
        back_to_last: ms(last - back_at),
        span: ms(last - first),
    })
}

/// Twice the time the cap allows, plus time for the outage's backoff to run out.
fn patience(replies: usize, send_rate: u32) -> Duration {
    let at_cap = replies as f64 / f64::from(if send_rate == 0 { 500 } else { send_rate });
    Duration::from_secs_f64(2.0 * at_cap + 60.0)
}

fn ms(millis: f64) -> Duration {
    Duration::from_secs_f64(millis.max(0.0) / 1000.0)
}
