//! The one table: every figure, the ceiling it is measured against, the ratio,
//! the target and whether it is met. Printed as Markdown, so a run
//! pastes into docs/benchmarks.md as it is.

use crate::delivery::{self, DeliveryLatency};
use crate::drain::{Drain, PER_CONVERSATION};
use crate::harness::Starts;
use crate::ingest::{Ingest, MANY};
use crate::slow::SlowClients;
use crate::sustained::Sustained;
use std::fmt;
use std::time::Duration;

/// svix-server's durable ingest on PostgreSQL, from the issue: the target is 3× this.
const SVIX_PER_SEC: f64 = 1_800.0;

pub enum Postgres {
    /// TEST_DATABASE_URL is not set.
    NotAsked,
    /// The measurement failed, for this reason (goldrelay before its
    /// PostgreSQL store refused such a URL).
    Failed(String),
    Measured(Box<Ingest>, Box<Drain>),
}

pub struct Report {
    pub revision: String,
    /// The machine's load average when the run began and when it ended.
    pub load: [String; 2],
    pub seconds: u64,
    pub bare: Ingest,
    pub relay: Ingest,
    pub sustained: Sustained,
    pub latency: DeliveryLatency,
    pub unlimited: Drain,
    pub capped: Drain,
    pub slow: SlowClients,
    pub postgres: Postgres,
    pub starts: Starts,
    pub relay_bytes: u64,
    pub bare_bytes: u64,
}

/// A target from the issue, in the unit of the figure it judges.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    Below(f64),
    /// Within a fraction of a value, either way.
    Near(f64, f64),
}

impl Goal {
    fn verdict(self, value: f64) -> String {
        let met = match self {
            Goal::AtLeast(t) => value >= t,
            Goal::Below(t) => value < t,
            Goal::Near(t, tolerance) => (value / t - 1.0).abs() <= tolerance,
        };
        match self {
            _ if met => "met".into(),
            Goal::AtLeast(t) if value > t / 2.0 => {
                format!("**missed** by {:.1} %", (1.0 - value / t) * 100.0)
            }
            Goal::AtLeast(t) => format!("**missed**: needs {:.1}×", t / value),
            Goal::Below(t) if value < t * 2.0 => {
                format!("**missed**: {:.0} % over", (value / t - 1.0) * 100.0)
            }
            Goal::Below(t) => format!("**missed**: {:.1}× over", value / t),
            Goal::Near(t, _) => format!("**missed**: {:+.0} %", (value / t - 1.0) * 100.0),
        }
    }
}

#[derive(Default)]
struct Row {
    figure: String,
    relay: String,
    ceiling: String,
    ratio: String,
    target: String,
    verdict: String,
}

impl Row {
    fn new(figure: impl Into<String>, relay: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            relay: relay.into(),
            ..Self::default()
        }
    }

    fn against(mut self, ceiling: impl Into<String>, ratio: impl Into<String>) -> Self {
        self.ceiling = ceiling.into();
        self.ratio = ratio.into();
        self
    }

    fn goal(mut self, target: &str, goal: Goal, value: f64) -> Self {
        self.target = target.into();
        self.verdict = goal.verdict(value);
        self
    }

    /// Overrides the verdict when the figure could not be measured whole.
    fn unless_incomplete(mut self, d: &Drain) -> Self {
        if !d.complete() {
            self.verdict = "**missed**: not all delivered".into();
        }
        self
    }

    /// Overrides the verdict when some `/hc` requests failed.
    fn unless_hc_failed(mut self, failures: usize) -> Self {
        if failures > 0 {
            self.verdict = format!("**missed**: {failures} /hc failed");
        }
        self
    }

    fn cells(&self) -> [&str; 6] {
        [
            &self.figure,
            &self.relay,
            &self.ceiling,
            &self.ratio,
            &self.target,
            &self.verdict,
        ]
    }
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let mut rows = self.ingest_rows();
        rows.extend(self.sustained_rows());
        rows.extend(self.delivery_rows());
        rows.extend(self.footprint_rows());
        rows.extend(slow_rows(&self.slow));
        rows.extend(self.postgres_rows());
        rows
    }

    fn ingest_rows(&self) -> Vec<Row> {
        let (relay, bare) = (&self.relay, &self.bare);
        let many = format!("ingest, {MANY} clients");
        let share = relay.many.accepted_per_sec() / bare.many.accepted_per_sec();
        let p99 = ms(relay.many.p99);
        let one_p50 = ms(relay.one.p50);
        vec![
            Row::new(
                format!("{many}: accepted/s"),
                rate(relay.many.accepted_per_sec()),
            )
            .against(rate(bare.many.accepted_per_sec()), percent(share))
            .goal("≥ 40 % of bare", Goal::AtLeast(0.40), share),
            latency_row(&format!("{many}: p50"), relay.many.p50, bare.many.p50),
            latency_row(&format!("{many}: p99"), relay.many.p99, bare.many.p99).goal(
                "< 10 ms",
                Goal::Below(10.0),
                p99,
            ),
            Row::new(
                "ingest, 1 client: accepted/s",
                rate(relay.one.accepted_per_sec()),
            )
            .against(
                rate(bare.one.accepted_per_sec()),
                percent(relay.one.accepted_per_sec() / bare.one.accepted_per_sec()),
            ),
            latency_row("ingest, 1 client: p50", relay.one.p50, bare.one.p50).goal(
                "< 1 ms",
                Goal::Below(1.0),
                one_p50,
            ),
            latency_row("ingest, 1 client: p99", relay.one.p99, bare.one.p99),
        ]
    }

    fn sustained_rows(&self) -> Vec<Row> {
        let s = &self.sustained;
        let how = format!("sustained, {MANY} clients, {} s", s.seconds);
        let window = s.window_seconds();
        let share = s.accepted_per_sec() / self.bare.many.accepted_per_sec();
        let wal_mib = s.wal_max_bytes as f64 / (1024.0 * 1024.0);
        let (first, last) = match (s.windows.first(), s.windows.last()) {
            (Some(f), Some(l)) => (f.accepted_per_sec(), l.accepted_per_sec()),
            _ => (0.0, 0.0),
        };
        vec![
            Row::new(format!("{how}: accepted/s"), rate(s.accepted_per_sec()))
                .against(rate(self.bare.many.accepted_per_sec()), percent(share)),
            Row::new(
                format!("{how}: last {window} s against the first {window} s"),
                format!("{} / {}", rate(last), rate(first)),
            )
            .against("", percent(s.last_over_first()))
            .goal("≥ 90 %", Goal::AtLeast(0.90), s.last_over_first()),
            Row::new(
                format!("{how}: largest WAL file"),
                format!("{wal_mib:.1} MiB"),
            )
            .goal("≤ 64 MiB", Goal::Below(64.0 + 1e-9), wal_mib),
            Row::new(
                format!("{how}: p99 (the worst {window} s window)"),
                ms_text(s.p99()),
            )
            .against(
                ms_text(self.bare.many.p99),
                times(ms(s.p99()) / ms(self.bare.many.p99)),
            )
            .goal("< 25 ms", Goal::Below(25.0), ms(s.p99())),
        ]
    }

    fn delivery_rows(&self) -> Vec<Row> {
        let l = &self.latency;
        let how = format!(
            "{} replies at {}/s over {} s, idle queue",
            l.replies,
            delivery::RATE,
            l.seconds
        );
        let mut rows = vec![
            Row::new(
                format!("delivery, 202 → Chatwoot: p50 ({how})"),
                millis(l.p50_ms),
            )
            .goal("< 5 ms", Goal::Below(5.0), l.p50_ms),
            Row::new("delivery, 202 → Chatwoot: p99", millis(l.p99_ms)).goal(
                "< 20 ms",
                Goal::Below(20.0),
                l.p99_ms,
            ),
        ];
        let u = &self.unlimited;
        rows.push(
            drain_row("cap lifted (GOLDRELAY_SEND_RATE=0)", u)
                .goal("≥ 1 000/s", Goal::AtLeast(1_000.0), u.per_sec())
                .unless_incomplete(u),
        );
        let c = &self.capped;
        let cap = f64::from(c.send_rate);
        rows.push(
            drain_row(&format!("cap {}/s (default)", c.send_rate), c)
                .against(
                    format!("{}/s (the cap)", c.send_rate),
                    percent(c.per_sec() / cap),
                )
                .goal("within 10 % of the cap", Goal::Near(cap, 0.10), c.per_sec())
                .unless_incomplete(c),
        );
        for d in [u, c] {
            rows.push(Row::new(
                format!(
                    "drain, GOLDRELAY_SEND_RATE={}: Chatwoot back → last delivery",
                    d.send_rate
                ),
                format!(
                    "{:.1} s ({} overall)",
                    d.back_to_last.as_secs_f64(),
                    rate(d.overall_per_sec())
                ),
            ));
        }
        rows
    }

    fn footprint_rows(&self) -> Vec<Row> {
        let rss = self.relay.peak_rss_kib as f64 / 1024.0;
        let bare_rss = self.bare.peak_rss_kib as f64 / 1024.0;
        let start = slowest(&self.starts.sqlite);
        let bare_start = slowest(&self.starts.bare);
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        vec![
            Row::new("peak RSS during ingest (VmHWM)", format!("{rss:.1} MiB"))
                .against(format!("{bare_rss:.1} MiB"), times(rss / bare_rss))
                .goal("< 64 MiB", Goal::Below(64.0), rss),
            Row::new(
                format!(
                    "start → first /hc 200 (slowest of {} starts, fresh database each)",
                    self.starts.sqlite.len()
                ),
                ms_text(start),
            )
            .against(ms_text(bare_start), times(ms(start) / ms(bare_start)))
            .goal("< 200 ms", Goal::Below(200.0), ms(start)),
            Row::new(
                "release binary size",
                format!("{:.1} MiB", mib(self.relay_bytes)),
            )
            .against(
                format!("{:.1} MiB", mib(self.bare_bytes)),
                times(self.relay_bytes as f64 / self.bare_bytes as f64),
            ),
        ]
    }

    fn postgres_rows(&self) -> Vec<Row> {
        let target = format!("≥ {} (3× svix)", rate(3.0 * SVIX_PER_SEC));
        let unmeasured = |text: &str| {
            let mut row = Row::new(format!("PostgreSQL: ingest, {MANY} clients"), text);
            row.target.clone_from(&target);
            vec![row]
        };
        match &self.postgres {
            Postgres::NotAsked => unmeasured("not run (set TEST_DATABASE_URL)"),
            Postgres::Failed(_) => unmeasured("n/a (did not run: see the note)"),
            Postgres::Measured(ingest, drain) => {
                let per_sec = ingest.many.accepted_per_sec();
                let share = per_sec / self.bare.many.accepted_per_sec();
                vec![
                    Row::new(format!("PostgreSQL: ingest, {MANY} clients"), rate(per_sec))
                        .against(rate(self.bare.many.accepted_per_sec()), percent(share))
                        .goal(&target, Goal::AtLeast(3.0 * SVIX_PER_SEC), per_sec),
                    latency_row(
                        &format!("PostgreSQL: ingest, {MANY} clients: p99"),
                        ingest.many.p99,
                        self.bare.many.p99,
                    )
                    .goal("< 20 ms", Goal::Below(20.0), ms(ingest.many.p99)),
                    latency_row(
                        "PostgreSQL: ingest, 1 client: p50",
                        ingest.one.p50,
                        self.bare.one.p50,
                    )
                    .goal("< 2 ms", Goal::Below(2.0), ms(ingest.one.p50)),
                    drain_row("PostgreSQL, cap lifted", drain)
                        .goal("≥ 1 500/s", Goal::AtLeast(1_500.0), drain.per_sec())
                        .unless_incomplete(drain),
                    Row::new(
                        "PostgreSQL: goldrelay's peak RSS during ingest (the server's not counted)",
                        format!("{:.1} MiB", ingest.peak_rss_kib as f64 / 1024.0),
                    ),
                    Row::new(
                        format!(
                            "PostgreSQL: start → first /hc 200 (slowest of {}, new database each)",
                            self.starts.postgres.len()
                        ),
                        ms_text(slowest(&self.starts.postgres)),
                    ),
                ]
            }
        }
    }

    /// Runs where a server answered anything but success, which the figures exclude.
    fn errors(&self) -> Vec<String> {
        let mut runs = vec![
            ("bare, 1 client", &self.bare.one),
            ("bare, many clients", &self.bare.many),
            ("goldrelay, 1 client", &self.relay.one),
            ("goldrelay, many clients", &self.relay.many),
        ];
        for window in &self.sustained.windows {
            runs.push(("goldrelay, sustained (one window)", window));
        }
        if let Postgres::Measured(ingest, _) = &self.postgres {
            runs.push(("goldrelay on PostgreSQL, 1 client", &ingest.one));
            runs.push(("goldrelay on PostgreSQL, many clients", &ingest.many));
        }
        runs.iter()
            .filter(|(_, r)| r.status_errors + r.socket_errors > 0)
            .map(|(name, r)| {
                format!(
                    "{name}: {} answers ≥ 400 and {} socket errors out of {} requests",
                    r.status_errors, r.socket_errors, r.requests
                )
            })
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "goldrelay benchmark of {}: {}; load average {} at the start, {} at the end",
            self.revision,
            machine(),
            self.load[0],
            self.load[1]
        )?;
        writeln!(
            f,
            "{} s wrk runs, 1 KiB bodies, SQLite WAL + synchronous=FULL (the defaults)\n",
            self.seconds
        )?;
        table(f, "ceiling (bare handler)", &self.rows())?;
        for error in self.errors() {
            writeln!(f, "\nnote: {error}")?;
        }
        if let Postgres::Failed(reason) = &self.postgres {
            writeln!(f, "\nnote: PostgreSQL: {reason}")?;
        }
        Ok(())
    }
}

/// The rows under a header, as a Markdown table with aligned columns.
fn table(f: &mut fmt::Formatter<'_>, ceiling: &str, rows: &[Row]) -> fmt::Result {
    let header = Row {
        figure: "figure".into(),
        relay: "goldrelay".into(),
        ceiling: ceiling.into(),
        ratio: "ratio".into(),
        target: "target (issues 7, 12, 13)".into(),
        verdict: "verdict".into(),
    };
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row.cells()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |f: &mut fmt::Formatter<'_>, cells: [&str; 6]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        writeln!(f, "| {} |", padded.join(" | "))
    };
    line(f, header.cells())?;
    let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(f, std::array::from_fn(|i| rules[i].as_str()))?;
    for row in rows {
        line(f, row.cells())?;
    }
    Ok(())
}

/// The slow-client rows alone (`BENCH_ONLY=slow`).
pub struct OnlySlow {
    pub revision: String,
    pub load: [String; 2],
    pub slow: SlowClients,
}

impl fmt::Display for OnlySlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "goldrelay benchmark of {}, slow clients only: {}; load average {} at the start, {} at the end\n",
            self.revision,
            machine(),
            self.load[0],
            self.load[1]
        )?;
        table(f, "against (idle)", &slow_rows(&self.slow))
    }
}

/// `/hc` and memory under slow clients, against the same goldrelay idle just before.
fn slow_rows(s: &SlowClients) -> Vec<Row> {
    let how = format!(
        "{} slow clients (GOLDRELAY_REQUEST_TIMEOUT={} s)",
        grouped(s.clients as f64),
        s.timeout.as_secs()
    );
    let (idle, loaded) = (&s.idle, &s.loaded);
    let p99 = Row::new(
        format!(
            "/hc p99 under {how}; {} still trickling at the last /hc",
            grouped(s.trickling_at_end as f64)
        ),
        ms_text(loaded.p99),
    )
    .against(
        format!("{} (idle)", ms_text(idle.p99)),
        times(ms(loaded.p99) / ms(idle.p99)),
    )
    .goal("< 100 ms", Goal::Below(100.0), ms(loaded.p99));
    let rss = s.peak_rss_kib as f64 / 1024.0;
    let idle_rss = s.idle_rss_kib as f64 / 1024.0;
    vec![
        Row::new(format!("/hc p50 under {how}"), ms_text(loaded.p50)).against(
            format!("{} (idle)", ms_text(idle.p50)),
            times(ms(loaded.p50) / ms(idle.p50)),
        ),
        p99.unless_hc_failed(loaded.failures),
        Row::new(format!("peak RSS under {how}"), format!("{rss:.1} MiB"))
            .against(format!("{idle_rss:.1} MiB (idle)"), times(rss / idle_rss))
            .goal("< 64 MiB", Goal::Below(64.0), rss),
        answered_row(s),
    ]
}

/// How many slow connections were answered 408, and when.
fn answered_row(s: &SlowClients) -> Row {
    let o = &s.outcomes;
    let when = o.answered_after.map_or(String::new(), |(low, high)| {
        format!(
            ", {:.1}–{:.1} s after the head, closed ≤ {:.1} s later",
            low.as_secs_f64(),
            high.as_secs_f64(),
            o.closed_within.as_secs_f64()
        )
    });
    let mut row = Row::new(
        format!(
            "slow connections answered 408 and closed (opened in {:.1} s)",
            s.opening.as_secs_f64()
        ),
        format!(
            "{} of {}{when}",
            grouped(o.timed_out as f64),
            grouped(s.clients as f64)
        ),
    );
    row.target = "all".into();
    let missed: Vec<String> = [
        (o.left_open, "408 left open"),
        (o.other_status, "another status"),
        (o.closed, "closed unanswered"),
        (o.unanswered, "unanswered"),
        (o.refused, "refused"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    row.verdict = if missed.is_empty() {
        "met".into()
    } else {
        format!("**missed**: {}", missed.join(", "))
    };
    row
}

fn latency_row(figure: &str, relay: Duration, bare: Duration) -> Row {
    Row::new(figure, ms_text(relay)).against(ms_text(bare), times(ms(relay) / ms(bare)))
}

fn drain_row(how: &str, d: &Drain) -> Row {
    let figure = format!(
        "drain, {how}: {} replies over {} conversations ({PER_CONVERSATION} each)",
        grouped(d.replies as f64),
        d.conversations
    );
    let value = if d.complete() {
        format!("{} (first → last delivery)", rate(d.per_sec()))
    } else {
        format!("incomplete: {} of {} delivered", d.delivered, d.replies)
    };
    Row::new(figure, value)
}

fn slowest(starts: &[Duration]) -> Duration {
    starts.iter().max().copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ms_text(d: Duration) -> String {
    millis(ms(d))
}

fn millis(value: f64) -> String {
    match value {
        v if v < 1.0 => format!("{v:.2} ms"),
        v if v < 10.0 => format!("{v:.1} ms"),
        v => format!("{v:.0} ms"),
    }
}

/// `12 345/s`, or `39.8/s` below a hundred.
fn rate(per_sec: f64) -> String {
    if per_sec < 100.0 {
        return format!("{per_sec:.1}/s");
    }
    format!("{}/s", grouped(per_sec))
}

/// A whole number with its thousands apart: `10 000`.
fn grouped(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

fn times(factor: f64) -> String {
    if factor >= 10.0 {
        format!("{factor:.0}×")
    } else {
        format!("{factor:.1}×")
    }
}

/// Cores, CPU model and memory, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    format!(
        "{cores} cores ({model}), {:.1} GiB memory",
        mem_kib / (1024.0 * 1024.0)
    )
}

/// The 1, 5 and 15 minute load averages: above the core count, other work
/// shared the machine and every figure is lower than it could be.
pub fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_grouped_by_thousands() {
        assert_eq!(rate(77_012.4), "77 012/s");
        assert_eq!(rate(1_000.0), "1 000/s");
        assert_eq!(rate(39.84), "39.8/s");
    }

    #[test]
    fn a_missed_target_says_by_how_much() {
        assert_eq!(Goal::AtLeast(0.40).verdict(0.10), "**missed**: needs 4.0×");
        assert_eq!(Goal::AtLeast(1000.0).verdict(996.0), "**missed** by 0.4 %");
        assert_eq!(Goal::Below(10.0).verdict(15.0), "**missed**: 50 % over");
        assert_eq!(Goal::Below(10.0).verdict(59.0), "**missed**: 5.9× over");
        assert_eq!(Goal::Near(40.0, 0.1).verdict(41.0), "met");
    }
}
