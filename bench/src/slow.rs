//! Slow clients (issue 12): thousands of connections that each send a request
//! head promising a 256 KiB body and then one byte every half second, while
//! `/hc` is timed and goldrelay's peak memory is read. goldrelay must keep
//! answering `/hc` promptly, hold its memory, and answer every slow
//! connection 408 once `GOLDRELAY_REQUEST_TIMEOUT` has passed.

use crate::harness::{Database, Harness, Pair, TOKEN};
use crate::stats::percentile;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// `GOLDRELAY_REQUEST_TIMEOUT` for this row: short, so the row is too.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The body every slow client promises: goldrelay's default `GOLDRELAY_MAX_BODY`,
/// the most it lets a client announce.
const DECLARED_BYTES: usize = 256 * 1024;
/// How often each slow client sends its next byte.
const TRICKLE_EVERY: Duration = Duration::from_millis(500);
/// How long past the timeout a slow client waits for its answer before it
/// counts as unanswered: bounds the row's length whatever goldrelay does.
const GRACE: Duration = Duration::from_secs(5);
/// `/hc` requests timed while idle, and again under the slow clients.
const HC_SAMPLES: usize = 50;
/// The pause between two `/hc` requests: 50 of them span about 2 s, well
/// inside the 5 s the slow clients trickle for.
const HC_EVERY: Duration = Duration::from_millis(40);
/// How long goldrelay may take to close a connection it has answered 408:
/// actix-web lets a client go within its 1 s disconnect timeout, and a
/// loaded machine may add to that.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// Connections opened in one go before a pause that lets goldrelay accept
/// them: a faster burst overflows its listen backlog (128), and the SYNs the
/// kernel drops are retried a second later, which would time the kernel.
const OPEN_BATCH: usize = 64;
const OPEN_PAUSE: Duration = Duration::from_millis(10);
/// The longest an opening connection may take before it counts as refused.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);

/// `/hc` latency over [`HC_SAMPLES`] sequential requests, each on a new
/// connection, as a platform's health check makes them.
#[derive(Debug, Clone, Copy)]
pub struct Hc {
    pub p50: Duration,
    pub p99: Duration,
    /// Requests that failed or were not answered 200 (their time still counts).
    pub failures: usize,
}

/// How the slow connections ended.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// Answered 408 and closed, as the request timeout promises.
    pub timed_out: usize,
    /// Answered 408 but still open [`CLOSE_WITHIN`] later.
    pub left_open: usize,
    /// Answered with any other status.
    pub other_status: usize,
    /// Closed by goldrelay with no answer.
    pub closed: usize,
    /// Still open, unanswered, [`GRACE`] after the timeout.
    pub unanswered: usize,
    /// Could not connect or send the head.
    pub refused: usize,
    /// From the head to the 408, the earliest and the latest.
    pub answered_after: Option<(Duration, Duration)>,
    /// The longest from a 408 to the connection's close.
    pub closed_within: Duration,
}

pub struct SlowClients {
    pub clients: usize,
    pub timeout: Duration,
    /// How long opening every connection and sending its head took.
    pub opening: Duration,
    pub idle: Hc,
    pub loaded: Hc,
    /// Slow connections still trickling when the last loaded `/hc` answered.
    pub trickling_at_end: usize,
    /// goldrelay's peak RSS (VmHWM) before the slow clients, in KiB.
    pub idle_rss_kib: u64,
    /// goldrelay's peak RSS (VmHWM) once every slow connection had ended, in KiB.
    pub peak_rss_kib: u64,
    pub outcomes: Outcomes,
}

/// Descriptors beyond the slow connections: the database, logs, `/hc` and
/// the other processes' pipes.
const SPARE_FILES: u64 = 256;

/// Fails unless this process, and so goldrelay, which inherits the limit, may
/// open a descriptor for every slow connection (`bench/run` raises the soft
/// limit to the hard one).
pub fn check_open_files(clients: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .context("no open-file limit in /proc/self/limits")?;
    let needed = clients as u64 + SPARE_FILES;
    match soft.parse::<u64>() {
        Ok(limit) if limit < needed => bail!(
            "{clients} slow clients need {needed} open files and the limit is {limit}: \
             raise it (ulimit -n {needed}) or lower BENCH_SLOW_CLIENTS"
        ),
        // A number above the need, or "unlimited".
        _ => Ok(()),
    }
}

/// One slow connection's end.
enum End {
    /// The status, how long after the head it came, and how long after it
    /// the connection was closed (`None`: not within [`CLOSE_WITHIN`]).
    Status(u16, Duration, Option<Duration>),
    Closed,
    Unanswered,
    Refused,
}

pub async fn measure(h: &mut Harness, clients: usize) -> anyhow::Result<SlowClients> {
    eprintln!(
        "== slow clients: {clients} connections trickling a byte every {TRICKLE_EVERY:?}, \
         GOLDRELAY_REQUEST_TIMEOUT={}s",
        TIMEOUT.as_secs()
    );
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let env = [("GOLDRELAY_REQUEST_TIMEOUT", timeout.as_str())];
    let Pair { relay, sandbox, .. } = h.relay_and_sandbox(&Database::Sqlite, &env).await?;
    let hc_url = format!("{}/hc", relay.url);
    let addr: SocketAddr = relay
        .url
        .trim_start_matches("http://")
        .parse()
        .context("goldrelay's URL has no socket address")?;
    let idle = time_hc(&hc_url).await?;
    let idle_rss_kib = relay.peak_rss_kib()?;
    let trickling = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = open(addr, clients, &trickling).await;
    let opening = started.elapsed();
    let loaded = time_hc(&hc_url).await?;
    let trickling_at_end = trickling.load(Ordering::Relaxed);
    let mut outcomes = Outcomes::default();
    while let Some(end) = tasks.join_next().await {
        outcomes.count(end.context("a slow client panicked")?);
    }
    let peak_rss_kib = relay.peak_rss_kib()?;
    relay.stop().await;
    sandbox.stop().await;
    Ok(SlowClients {
        clients,
        timeout: TIMEOUT,
        opening,
        idle,
        loaded,
        trickling_at_end,
        idle_rss_kib,
        peak_rss_kib,
        outcomes,
    })
}

impl Outcomes {
    fn count(&mut self, end: End) {
        match end {
            End::Status(408, _, None) => self.left_open += 1,
            End::Status(408, after, Some(closing)) => {
                self.closed_within = self.closed_within.max(closing);
                self.timed_out += 1;
                let (low, high) = self.answered_after.unwrap_or((after, after));
                self.answered_after = Some((low.min(after), high.max(after)));
            }
            End::Status(..) => self.other_status += 1,
            End::Closed => self.closed += 1,
            End::Unanswered => self.unanswered += 1,
            End::Refused => self.refused += 1,
        }
    }
}

/// Opens the connections one after another (a burst of thousands of SYNs
/// would overflow the listen backlog and measure the kernel's retries) and
/// leaves each trickling in its own task.
async fn open(addr: SocketAddr, clients: usize, trickling: &Arc<AtomicUsize>) -> JoinSet<End> {
    let head: Arc<[u8]> = format!(
        "POST /api/webhooks/gold-replies HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {DECLARED_BYTES}\r\n\r\n"
    )
    .into_bytes()
    .into();
    let mut tasks = JoinSet::new();
    for n in 0..clients {
        if n % OPEN_BATCH == OPEN_BATCH - 1 {
            tokio::time::sleep(OPEN_PAUSE).await;
        }
        let connected = tokio::time::timeout(CONNECT_WITHIN, async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(&head).await?;
            std::io::Result::Ok(stream)
        })
        .await;
        let Ok(Ok(stream)) = connected else {
            tasks.spawn(async { End::Refused });
            continue;
        };
        let sent = Instant::now();
        trickling.fetch_add(1, Ordering::Relaxed);
        let trickling = trickling.clone();
        tasks.spawn(async move {
            let mut stream = stream;
            let heard = tokio::time::timeout(TIMEOUT + GRACE, trickle(&mut stream)).await;
            trickling.fetch_sub(1, Ordering::Relaxed);
            match heard {
                Ok(Some(status)) => End::Status(status, sent.elapsed(), closing(&mut stream).await),
                Ok(None) => End::Closed,
                Err(_) => End::Unanswered,
            }
        });
    }
    tasks
}

/// Sends a byte of the body every [`TRICKLE_EVERY`] until goldrelay answers
/// (its status) or closes (`None`).
async fn trickle(stream: &mut TcpStream) -> Option<u16> {
    let (mut reader, mut writer) = stream.split();
    let mut tick = tokio::time::interval(TRICKLE_EVERY);
    // The head went out just now; the first byte of the body comes a tick later.
    tick.tick().await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut writable = true;
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => return status(&answer),
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if let Some(s) = status(&answer) {
                        return Some(s);
                    }
                }
            },
            // Whitespace: a JSON body may begin with it, so only the pace is slow.
            _ = tick.tick(), if writable => writable = writer.write_all(b" ").await.is_ok(),
        }
    }
}

/// How long goldrelay takes to close an answered connection (the rest of
/// the answer is read and dropped), if it does within [`CLOSE_WITHIN`].
async fn closing(stream: &mut TcpStream) -> Option<Duration> {
    let answered = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(CLOSE_WITHIN, closed).await.ok()?;
    Some(answered.elapsed())
}

/// The status code of an HTTP/1.1 answer, once its status line has arrived.
fn status(answer: &[u8]) -> Option<u16> {
    let line_end = answer.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&answer[..line_end]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Times [`HC_SAMPLES`] sequential `GET /hc`, each on a new connection.
async fn time_hc(url: &str) -> anyhow::Result<Hc> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(TIMEOUT)
        .build()?;
    let mut samples = Vec::with_capacity(HC_SAMPLES);
    let mut failures = 0;
    for _ in 0..HC_SAMPLES {
        let asked = Instant::now();
        let answer = http.get(url).send().await;
        let ok = match answer {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        samples.push(asked.elapsed().as_secs_f64());
        failures += usize::from(!ok);
        tokio::time::sleep(HC_EVERY).await;
    }
    if failures == HC_SAMPLES {
        bail!("no GET {url} of {HC_SAMPLES} was answered 200");
    }
    samples.sort_by(f64::total_cmp);
    Ok(Hc {
        p50: Duration::from_secs_f64(percentile(&samples, 50.0)),
        p99: Duration::from_secs_f64(percentile(&samples, 99.0)),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_read_once_its_line_is_whole() {
        assert_eq!(
            status(b"HTTP/1.1 408 Request Timeout\r\ncontent-type"),
            Some(408)
        );
        assert_eq!(status(b"HTTP/1.1 408 Req"), None);
        assert_eq!(status(b""), None);
    }

    #[test]
    fn every_408_widens_the_span_it_came_in() {
        let mut outcomes = Outcomes::default();
        let ms = Duration::from_millis;
        outcomes.count(End::Status(408, ms(5_100), Some(ms(200))));
        outcomes.count(End::Status(408, ms(5_020), Some(ms(900))));
        outcomes.count(End::Status(408, ms(9_000), None));
        outcomes.count(End::Status(400, ms(1), Some(ms(1))));
        outcomes.count(End::Closed);
        assert_eq!(outcomes.timed_out, 2);
        assert_eq!(outcomes.left_open, 1);
        assert_eq!(outcomes.closed_within, ms(900));
        assert_eq!(outcomes.other_status, 1);
        assert_eq!(outcomes.closed, 1);
        assert_eq!(
            outcomes.answered_after,
            Some((Duration::from_millis(5_020), Duration::from_millis(5_100)))
        );
    }
}
