//! The one table: every figure, the ceiling it is measured against, the ratio,
//! the target and whether it is met. Printed as Markdown, so a run
//! pastes into docs/benchmarks.md as it is.

use crate::delivery::{self, DeliveryLatency};
use crate::drain::{Drain, PER_CONVERSATION};
use crate::formats::{self, Formats};
use crate::harness::Starts;
use crate::ingest::{Ingest, MANY};
use crate::memory::{self, Memory};
use crate::slow::SlowClients;
use crate::sustained::Sustained;
use std::fmt;
use std::time::Duration;

/// svix-server's durable ingest on PostgreSQL, from the issue: the target is 3× this.
const SVIX_PER_SEC: f64 = 1_800.0;

/// The PostgreSQL rows of a run that asked for them.
pub enum Postgres {
    /// TEST_DATABASE_URL is not set.
    NotAsked,
    /// The measurement failed, for this reason (goldrelay before its
    /// PostgreSQL store refused such a URL).
    Failed(String),
    Measured(Box<Ingest>, Box<Drain>),
}

/// Delivery on SQLite: latency at an idle queue, and the two drains.
pub struct SqliteDelivery {
    pub latency: DeliveryLatency,
    pub unlimited: Drain,
    pub capped: Drain,
}

/// Whatever a run measured; `None` is a part it did not run (`BENCH_ONLY`),
/// and its rows are left out. The plan measures `bare` whenever a part that
/// compares with it runs.
pub struct Report {
    pub revision: String,
    /// The machine's load average when the run began and when it ended.
    pub load: [String; 2],
    pub seconds: u64,
    pub bare: Option<Ingest>,
    pub relay: Option<Ingest>,
    pub sustained: Option<Sustained>,
    pub delivery: Option<SqliteDelivery>,
    pub slow: Option<SlowClients>,
    pub memory: Option<Memory>,
    pub formats: Option<Formats>,
    pub postgres: Option<Postgres>,
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
    /// Every measured part's rows, in the full run's order.
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        if let (Some(relay), Some(bare)) = (&self.relay, &self.bare) {
            rows.extend(ingest_rows(relay, bare));
        }
        if let (Some(sustained), Some(bare)) = (&self.sustained, &self.bare) {
            rows.extend(sustained_rows(sustained, bare));
        }
        if let Some(delivery) = &self.delivery {
            rows.extend(delivery_rows(delivery));
        }
        if let (Some(relay), Some(bare)) = (&self.relay, &self.bare) {
            rows.extend(self.footprint_rows(relay, bare));
        }
        if let Some(slow) = &self.slow {
            rows.extend(slow_rows(slow));
        }
        if let Some(memory) = &self.memory {
            rows.extend(memory_rows(memory));
        }
        if let Some(formats) = &self.formats {
            rows.extend(formats_rows(formats));
        }
        if let (Some(postgres), Some(bare)) = (&self.postgres, &self.bare) {
            rows.extend(self.postgres_rows(postgres, bare));
        }
        rows
    }

    fn footprint_rows(&self, relay: &Ingest, bare: &Ingest) -> Vec<Row> {
        let rss = relay.peak_rss_kib as f64 / 1024.0;
        let bare_rss = bare.peak_rss_kib as f64 / 1024.0;
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

    fn postgres_rows(&self, postgres: &Postgres, bare: &Ingest) -> Vec<Row> {
        let target = format!("≥ {} (3× svix)", rate(3.0 * SVIX_PER_SEC));
        let unmeasured = |text: &str| {
            let mut row = Row::new(format!("PostgreSQL: ingest, {MANY} clients"), text);
            row.target.clone_from(&target);
            vec![row]
        };
        match postgres {
            Postgres::NotAsked => unmeasured("not run (set TEST_DATABASE_URL)"),
            Postgres::Failed(_) => unmeasured("n/a (did not run: see the note)"),
            Postgres::Measured(ingest, drain) => {
                let per_sec = ingest.many.accepted_per_sec();
                let share = per_sec / bare.many.accepted_per_sec();
                vec![
                    Row::new(format!("PostgreSQL: ingest, {MANY} clients"), rate(per_sec))
                        .against(rate(bare.many.accepted_per_sec()), percent(share))
                        .goal(&target, Goal::AtLeast(3.0 * SVIX_PER_SEC), per_sec),
                    latency_row(
                        &format!("PostgreSQL: ingest, {MANY} clients: p99"),
                        ingest.many.p99,
                        bare.many.p99,
                    )
                    .goal("< 20 ms", Goal::Below(20.0), ms(ingest.many.p99)),
                    latency_row(
                        "PostgreSQL: ingest, 1 client: p50",
                        ingest.one.p50,
                        bare.one.p50,
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
        let mut runs = Vec::new();
        if let Some(bare) = &self.bare {
            runs.push(("bare, 1 client", &bare.one));
            runs.push(("bare, many clients", &bare.many));
        }
        if let Some(relay) = &self.relay {
            runs.push(("goldrelay, 1 client", &relay.one));
            runs.push(("goldrelay, many clients", &relay.many));
        }
        for window in self.sustained.iter().flat_map(|s| &s.windows) {
            runs.push(("goldrelay, sustained (one window)", window));
        }
        if let Some(Postgres::Measured(ingest, _)) = &self.postgres {
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

    /// The parts this run measured, when it left some out (`BENCH_ONLY`).
    fn partial(&self) -> Option<String> {
        let parts = [
            (self.bare.is_some(), "bare handler ingest"),
            (self.relay.is_some(), "SQLite ingest"),
            (self.sustained.is_some(), "sustained SQLite"),
            (self.delivery.is_some(), "SQLite delivery and drains"),
            (self.slow.is_some(), "slow clients"),
            (self.memory.is_some(), "memory"),
            (self.formats.is_some(), "training formats"),
            (self.postgres.is_some(), "PostgreSQL ingest and drain"),
        ];
        if parts.iter().all(|(ran, _)| *ran) {
            return None;
        }
        let ran: Vec<&str> = parts
            .iter()
            .filter(|(ran, _)| *ran)
            .map(|(_, name)| *name)
            .collect();
        Some(ran.join(", "))
    }

    fn heading(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let only = self
            .partial()
            .map_or(String::new(), |parts| format!(", only {parts}"));
        writeln!(
            f,
            "goldrelay benchmark of {}{only}: {}; load average {} at the start, {} at the end",
            self.revision,
            machine(),
            self.load[0],
            self.load[1]
        )?;
        let setup = self.setup();
        if setup.is_empty() {
            return writeln!(f);
        }
        writeln!(f, "{}\n", setup.join(", "))
    }

    /// How the measured parts ran, for the heading's second line: a part
    /// that runs no wrk, or stores nothing on SQLite, leaves its clause out.
    fn setup(&self) -> Vec<String> {
        let mut setup = Vec::new();
        if self.bare.is_some() {
            setup.push(format!("{} s wrk runs, 1 KiB bodies", self.seconds));
        }
        if self.relay.is_some() || self.sustained.is_some() || self.delivery.is_some() {
            setup.push("SQLite WAL + synchronous=FULL (the defaults)".into());
        }
        setup
    }
}

fn ingest_rows(relay: &Ingest, bare: &Ingest) -> Vec<Row> {
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

fn sustained_rows(s: &Sustained, bare: &Ingest) -> Vec<Row> {
    let how = format!("sustained, {MANY} clients, {} s", s.seconds);
    let window = s.window_seconds();
    let share = s.accepted_per_sec() / bare.many.accepted_per_sec();
    let wal_mib = s.wal_max_bytes as f64 / (1024.0 * 1024.0);
    let (first, last) = match (s.windows.first(), s.windows.last()) {
        (Some(f), Some(l)) => (f.accepted_per_sec(), l.accepted_per_sec()),
        _ => (0.0, 0.0),
    };
    vec![
        Row::new(format!("{how}: accepted/s"), rate(s.accepted_per_sec()))
            .against(rate(bare.many.accepted_per_sec()), percent(share)),
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
            ms_text(bare.many.p99),
            times(ms(s.p99()) / ms(bare.many.p99)),
        )
        .goal("< 25 ms", Goal::Below(25.0), ms(s.p99())),
    ]
}

fn delivery_rows(d: &SqliteDelivery) -> Vec<Row> {
    let l = &d.latency;
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
    let u = &d.unlimited;
    rows.push(
        drain_row("cap lifted (GOLDRELAY_SEND_RATE=0)", u)
            .goal("≥ 1 000/s", Goal::AtLeast(1_000.0), u.per_sec())
            .unless_incomplete(u),
    );
    let c = &d.capped;
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

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.heading(f)?;
        // Without bare, the column holds what each row is against: idle, the cap.
        let ceiling = match self.bare {
            Some(_) => "ceiling (bare handler)",
            None => "against",
        };
        table(f, ceiling, &self.rows())?;
        for error in self.errors() {
            writeln!(f, "\nnote: {error}")?;
        }
        if let Some(Postgres::Failed(reason)) = &self.postgres {
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
        target: "target (issues 7, 12, 13, 19, 21)".into(),
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

/// Peak memory while large replies are read, against the same goldrelay
/// idle just before; and whether the readers got what they should.
fn memory_rows(m: &Memory) -> Vec<Row> {
    let rss = m.peak_rss_kib as f64 / 1024.0;
    let idle_rss = m.idle_rss_kib as f64 / 1024.0;
    let how = format!(
        "{} views + {} stalled exports",
        memory::READERS,
        memory::READERS
    );
    let figure = format!(
        "memory: {}×{} KB in one conversation, {how} (peak RSS, VmHWM)",
        memory::REPLIES,
        m.body_bytes / 1000
    );
    let mut readers = Row::new(
        format!(
            "memory: views whole; stalled exports cut off (GOLDRELAY_REQUEST_TIMEOUT={} s)",
            memory::TIMEOUT.as_secs()
        ),
        format!(
            "{} of {}; {} of {}",
            m.views_whole,
            memory::READERS,
            m.exports_cut,
            memory::READERS
        ),
    );
    readers.target = "all".into();
    readers.verdict = if m.views_whole == memory::READERS && m.exports_cut == memory::READERS {
        "met".into()
    } else {
        "**missed**".into()
    };
    vec![
        Row::new(figure, format!("{rss:.1} MiB"))
            .against(format!("{idle_rss:.1} MiB (idle)"), times(rss / idle_rss))
            .goal("< 64 MiB", Goal::Below(64.0), rss),
        readers,
    ]
}

/// Peak memory streaming every training format, and how it moved when the
/// dataset grew [`formats::GROWTH`] times.
fn formats_rows(f: &Formats) -> Vec<Row> {
    let (low, high) = Formats::spread(&f.first);
    let (grown_low, grown_high) = Formats::spread(&f.grown);
    let label = |n: usize| {
        format!(
            "formats: whole export of {n} replies, each of {} formats (peak RSS, VmHWM)",
            formats::FORMATS.len()
        )
    };
    let growth = grown_high / high;
    let grown = formats::FIRST * formats::GROWTH;
    vec![
        Row::new(label(formats::FIRST), format!("{low:.1}–{high:.1} MiB")),
        Row::new(label(grown), format!("{grown_low:.1}–{grown_high:.1} MiB"))
            .against(
                format!("{high:.1} MiB at {}", formats::FIRST),
                times(growth),
            )
            .goal("< 1.2× at 3× the replies", Goal::Below(1.2), growth),
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
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
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
    use crate::slow::{Hc, Outcomes};
    use crate::wrk::WrkRun;

    fn wrk(requests: u64, p50_ms: u64, p99_ms: u64) -> WrkRun {
        WrkRun {
            requests,
            duration: Duration::from_secs(3),
            status_errors: 0,
            socket_errors: 0,
            p50: Duration::from_millis(p50_ms),
            p99: Duration::from_millis(p99_ms),
        }
    }

    fn ingest(one: u64, many: u64) -> Ingest {
        Ingest {
            one: wrk(one, 1, 2),
            many: wrk(many, 3, 9),
            peak_rss_kib: 20_480,
        }
    }

    fn drain(send_rate: u32) -> Drain {
        Drain {
            replies: 1_000,
            conversations: 50,
            send_rate,
            delivered: 1_000,
            back_to_last: Duration::from_secs(2),
            span: Duration::from_secs(1),
        }
    }

    fn slow() -> SlowClients {
        let hc = |ms| Hc {
            p50: Duration::from_millis(ms),
            p99: Duration::from_millis(ms * 2),
            failures: 0,
        };
        SlowClients {
            clients: 200,
            timeout: Duration::from_secs(5),
            opening: Duration::from_millis(100),
            idle: hc(1),
            loaded: hc(2),
            trickling_at_end: 200,
            idle_rss_kib: 10_240,
            peak_rss_kib: 20_480,
            outcomes: Outcomes {
                timed_out: 200,
                ..Outcomes::default()
            },
        }
    }

    /// A report with every part, as the full run makes it.
    fn full() -> Report {
        let mut relay = ingest(3_000, 9_000);
        relay.many.status_errors = 7;
        Report {
            revision: "abc1234".into(),
            load: ["0.10 0.20 0.30".into(), "1.00 2.00 3.00".into()],
            seconds: 3,
            bare: Some(ingest(30_000, 90_000)),
            relay: Some(relay),
            sustained: Some(Sustained {
                seconds: 6,
                windows: vec![wrk(9_000, 3, 9), wrk(8_000, 4, 12)],
                wal_max_bytes: 4 << 20,
            }),
            delivery: Some(SqliteDelivery {
                latency: DeliveryLatency {
                    replies: 60,
                    seconds: 3,
                    p50_ms: 2.0,
                    p99_ms: 8.0,
                },
                unlimited: drain(0),
                capped: drain(40),
            }),
            slow: Some(slow()),
            memory: Some(Memory {
                body_bytes: 254_000,
                idle_rss_kib: 20_480,
                peak_rss_kib: 40_960,
                views_whole: 4,
                exports_cut: 4,
            }),
            formats: Some(Formats {
                first: streamed(44),
                grown: streamed(50),
            }),
            postgres: Some(Postgres::Measured(
                Box::new(ingest(2_000, 6_000)),
                Box::new(drain(0)),
            )),
            starts: Starts {
                sqlite: vec![Duration::from_millis(30); 4],
                postgres: vec![Duration::from_millis(60); 2],
                bare: vec![Duration::from_millis(5); 2],
            },
            relay_bytes: 12 << 20,
            bare_bytes: 6 << 20,
        }
    }

    /// Where each part's first row is in `text`, `None` for a part not printed.
    fn positions(text: &str) -> Vec<Option<usize>> {
        [
            "| ingest, 64 clients: accepted/s",
            "| sustained, 64 clients",
            "| delivery, 202 → Chatwoot",
            "| peak RSS during ingest",
            "| /hc p50 under",
            "| PostgreSQL: ingest",
        ]
        .iter()
        .map(|row| text.find(row))
        .collect()
    }

    #[test]
    fn the_full_report_prints_every_part_in_order_and_names_none() {
        let text = full().to_string();
        let found: Vec<usize> = positions(&text).into_iter().flatten().collect();
        assert_eq!(found.len(), 6, "{text}");
        assert!(found.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            text.starts_with("goldrelay benchmark of abc1234: "),
            "{text}"
        );
        let setup =
            "\n3 s wrk runs, 1 KiB bodies, SQLite WAL + synchronous=FULL (the defaults)\n\n";
        assert!(text.contains(setup), "{text}");
        assert!(text.contains("| ceiling (bare handler) |"), "{text}");
        assert!(
            text.contains("note: goldrelay, many clients: 7 answers"),
            "{text}"
        );
    }

    #[test]
    fn a_report_of_sqlite_alone_prints_its_rows_and_says_what_ran() {
        let report = Report {
            sustained: None,
            delivery: None,
            slow: None,
            memory: None,
            formats: None,
            postgres: None,
            ..full()
        };
        let text = report.to_string();
        let printed: Vec<bool> = positions(&text).iter().map(Option::is_some).collect();
        assert_eq!(printed, [true, false, false, true, false, false], "{text}");
        assert!(
            text.starts_with(
                "goldrelay benchmark of abc1234, only bare handler ingest, SQLite ingest: "
            ),
            "{text}"
        );
        assert!(text.contains("| release binary size"), "{text}");
        assert!(
            text.contains("note: goldrelay, many clients: 7 answers"),
            "{text}"
        );
    }

    #[test]
    fn a_report_of_slow_clients_alone_compares_with_idle_and_names_no_wrk_run() {
        let report = Report {
            bare: None,
            relay: None,
            sustained: None,
            delivery: None,
            memory: None,
            formats: None,
            postgres: None,
            ..full()
        };
        let text = report.to_string();
        let printed: Vec<bool> = positions(&text).iter().map(Option::is_some).collect();
        assert_eq!(printed, [false, false, false, false, true, false], "{text}");
        assert!(text.contains(" at the end\n\n| figure"), "{text}");
        assert!(text.contains(", only slow clients: "), "{text}");
        assert!(text.contains("| against  "), "{text}");
        assert!(!text.contains("bare handler"), "{text}");
        assert!(
            !text.contains("wrk runs") && !text.contains("SQLite WAL"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_postgres_part_prints_its_row_and_the_reason() {
        let report = Report {
            relay: None,
            sustained: None,
            delivery: None,
            slow: None,
            memory: None,
            formats: None,
            postgres: Some(Postgres::Failed("connection refused".into())),
            ..full()
        };
        let text = report.to_string();
        assert!(text.contains("n/a (did not run: see the note)"), "{text}");
        assert!(
            text.contains("note: PostgreSQL: connection refused"),
            "{text}"
        );
        assert!(
            text.contains(", only bare handler ingest, PostgreSQL ingest and drain: "),
            "{text}"
        );
        assert!(text.contains("\n3 s wrk runs, 1 KiB bodies\n"), "{text}");
    }

    #[test]
    fn the_memory_rows_judge_the_peak_and_every_reader() {
        let row = |report: &Report, starts: &str| -> Vec<String> {
            let text = report.to_string();
            let line = text.lines().find(|l| l.starts_with(starts));
            let line = line.unwrap_or_else(|| panic!("no {starts:?} in {text}"));
            line.split('|').map(|cell| cell.trim().to_owned()).collect()
        };
        let peak = "| memory: 500×254 KB in one conversation, 4 views + 4 stalled exports";
        let cells = row(&full(), peak);
        assert_eq!(
            cells[2..7],
            ["40.0 MiB", "20.0 MiB (idle)", "2.0×", "< 64 MiB", "met"]
        );
        let readers = "| memory: views whole; stalled exports cut off";
        assert_eq!(
            row(&full(), readers)[2..7],
            ["4 of 4; 4 of 4", "", "", "all", "met"]
        );
        let stuck = Report {
            memory: Some(Memory {
                exports_cut: 3,
                ..full().memory.unwrap()
            }),
            ..full()
        };
        assert_eq!(row(&stuck, readers)[5..7], ["all", "**missed**"]);
    }

    /// Five formats streamed, peaking at `peak_mib` to `peak_mib + 4` MiB.
    fn streamed(peak_mib: u64) -> [crate::formats::Streamed; 5] {
        std::array::from_fn(|i| crate::formats::Streamed {
            lines: 1_000,
            peak_rss_kib: (peak_mib + i as u64) * 1024,
        })
    }

    #[test]
    fn the_formats_rows_judge_the_growth_of_the_peak() {
        let row = |report: &Report, starts: &str| -> Vec<String> {
            let text = report.to_string();
            let line = text.lines().find(|l| l.starts_with(starts));
            let line = line.unwrap_or_else(|| panic!("no {starts:?} in {text}"));
            line.split('|').map(|cell| cell.trim().to_owned()).collect()
        };
        let first = "| formats: whole export of 10000 replies";
        assert_eq!(row(&full(), first)[2], "44.0–48.0 MiB");
        let grown = "| formats: whole export of 30000 replies";
        assert_eq!(
            row(&full(), grown)[2..7],
            [
                "50.0–54.0 MiB",
                "48.0 MiB at 10000",
                "1.1×",
                "< 1.2× at 3× the replies",
                "met"
            ]
        );
        let growing = Report {
            formats: Some(Formats {
                first: streamed(44),
                grown: streamed(88),
            }),
            ..full()
        };
        assert!(row(&growing, grown)[6].starts_with("**missed**"));
    }

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
