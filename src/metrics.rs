//! Prometheus metrics: what operators watch on `/metrics`.

use crate::health::PauseReason;
use crate::store::Store;
use chrono::Utc;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long store-derived gauges are reused: however often anyone scrapes,
/// the store is asked at most once per this period.
pub const STORE_GAUGE_TTL: Duration = Duration::from_secs(1);

/// Every metric goldrelay exports.
pub struct Metrics {
    registry: Registry,
    ingest: IntCounterVec,
    ingest_seconds: Histogram,
    attempts: IntCounterVec,
    delivery_seconds: Histogram,
    events: IntCounterVec,
    captures: IntCounterVec,
    mismatches: IntCounter,
    replies: IntGaugeVec,
    oldest_queued: Gauge,
    paused: IntGaugeVec,
    /// When the store-derived gauges were last refreshed; the lock also makes
    /// concurrent scrapes wait for one refresh instead of each querying.
    store_refreshed: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` with `registry` and hands it back.
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

/// `delivery_paused`, 0 for every reason until a pause starts.
fn paused_gauge() -> IntGaugeVec {
    let paused = IntGaugeVec::new(
        Opts::new(
            "delivery_paused",
            "1 while every delivery waits for the reason: rate_limited (Chatwoot answered 429) or token_refused (Chatwoot refused the API token).",
        ),
        &["reason"],
    )
    .expect("valid metric");
    for reason in PauseReason::ALL_LABELS {
        paused.with_label_values(&[reason]).set(0);
    }
    paused
}

/// `webhook_mismatches_total`.
fn mismatch_counter() -> IntCounter {
    IntCounter::new(
        "webhook_mismatches_total",
        "Chatwoot events naming a gold reply whose message they are not about (ignored).",
    )
    .expect("valid metric")
}

/// The gauges read from the store at scrape time, registered: replies by
/// status, and the oldest queued reply's age.
fn store_gauges(registry: &Registry) -> (IntGaugeVec, Gauge) {
    let replies = IntGaugeVec::new(
        Opts::new("replies", "Gold replies in the store, by status."),
        &["status"],
    )
    .expect("valid metric");
    let oldest_queued = Gauge::new(
        "oldest_queued_age_seconds",
        "Age of the oldest reply still waiting for delivery (0 when none).",
    )
    .expect("valid metric");
    (
        registered(registry, replies),
        registered(registry, oldest_queued),
    )
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("goldrelay".into()), None).expect("a static prefix is valid");
        let paused = registered(&registry, paused_gauge());
        let mismatches = registered(&registry, mismatch_counter());
        let (replies, oldest_queued) = store_gauges(&registry);
        let counter = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registered(&registry, c)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            registered(&registry, Histogram::with_opts(opts).expect("valid metric"))
        };
        Self {
            ingest: counter(
                "ingest_requests_total",
                "Gold-reply posts, by outcome.",
                "outcome",
            ),
            ingest_seconds: histogram(
                "ingest_duration_seconds",
                "Time to validate, store and answer a gold-reply post.",
                prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets"),
            ),
            attempts: counter(
                "delivery_attempts_total",
                "Delivery attempts to Chatwoot, by outcome.",
                "outcome",
            ),
            delivery_seconds: histogram(
                "delivery_latency_seconds",
                "Time from a reply's acceptance to Chatwoot creating the message.",
                prometheus::exponential_buckets(0.005, 2.0, 18).expect("valid buckets"),
            ),
            events: counter(
                "chatwoot_events_total",
                "Chatwoot webhook requests, by outcome.",
                "outcome",
            ),
            captures: counter(
                "context_captures_total",
                "Captures of a reply's conversation context from Chatwoot, by outcome: \
                 captured, retry (failed, tried again later) or failed (given up).",
                "outcome",
            ),
            mismatches,
            paused,
            replies,
            oldest_queued,
            store_refreshed: Mutex::new(None),
            registry,
        }
    }

    pub fn ingest(&self, outcome: &str, took: Duration) {
        self.ingest.with_label_values(&[outcome]).inc();
        self.ingest_seconds.observe(took.as_secs_f64());
    }

    pub fn attempt(&self, outcome: &str) {
        self.attempts.with_label_values(&[outcome]).inc();
    }

    pub fn delivered_after(&self, took: Duration) {
        self.delivery_seconds.observe(took.as_secs_f64());
    }

    /// Counts one webhook request by outcome; a `mismatch` is also counted on its own.
    pub fn event(&self, outcome: &str) {
        self.events.with_label_values(&[outcome]).inc();
        if outcome == "mismatch" {
            self.mismatches.inc();
        }
    }

    /// One capture of a reply's context ended: `captured`, `retry` or `failed`.
    pub fn capture(&self, outcome: &str) {
        self.captures.with_label_values(&[outcome]).inc();
    }

    /// A message carried a reply's marker without being that reply's message.
    pub fn mismatch(&self) {
        self.mismatches.inc();
    }

    /// Deliveries pause, or resume, for `reason`.
    pub fn paused(&self, reason: PauseReason, on: bool) {
        self.paused
            .with_label_values(&[reason.label()])
            .set(i64::from(on));
    }

    /// Refreshes the store-derived gauges (at most once per [`STORE_GAUGE_TTL`])
    /// and renders the text exposition format.
    pub async fn render(&self, store: &dyn Store) -> String {
        {
            let mut refreshed = self.store_refreshed.lock().await;
            if refreshed.is_none_or(|at| at.elapsed() >= STORE_GAUGE_TTL) {
                self.refresh_store_gauges(store).await;
                *refreshed = Some(Instant::now());
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    async fn refresh_store_gauges(&self, store: &dyn Store) {
        if let Ok(counts) = store.count_by_status().await {
            self.replies.reset();
            for (status, n) in counts {
                self.replies.with_label_values(&[status.as_str()]).set(n);
            }
        }
        if let Ok(stats) = store.queue_stats().await {
            let age = stats
                .oldest_queued_at
                .and_then(|at| (Utc::now() - at).to_std().ok())
                .unwrap_or_default();
            self.oldest_queued.set(age.as_secs_f64());
        }
    }
}
