//! One JSON document per run, for scripts. Serialised from structs so the
//! keys keep a reading order (tool and target first, counts last).

use super::{Counts, Report};
use chrono::SecondsFormat;
use serde::Serialize;

#[derive(Serialize)]
struct Document<'a> {
    tool: &'static str,
    version: &'static str,
    started_at: String,
    target: &'a str,
    chatwoot: Option<&'a str>,
    reply_id: Option<&'a str>,
    /// The W3C trace id the smoke reply was posted under.
    trace_id: Option<&'a str>,
    checks: Vec<Check<'a>>,
    warnings: &'a [String],
    counts: Tally,
    duration_ms: u64,
    exit_code: u8,
}

#[derive(Serialize)]
struct Check<'a> {
    name: &'static str,
    /// `pass`, `fail` or `skip`.
    status: &'static str,
    duration_ms: u64,
    detail: &'a str,
}

#[derive(Serialize)]
struct Tally {
    total: usize,
    pass: usize,
    fail: usize,
    skip: usize,
}

/// The report as pretty-printed JSON.
pub fn render(report: &Report) -> String {
    let document = Document {
        tool: "smoke",
        version: env!("CARGO_PKG_VERSION"),
        started_at: report
            .started_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        target: &report.target,
        chatwoot: report.chatwoot.as_deref(),
        reply_id: report.reply_id.as_deref(),
        trace_id: report.trace_id.as_deref(),
        checks: report
            .checks
            .iter()
            .map(|c| Check {
                name: c.name.as_str(),
                status: c.verdict.as_str(),
                duration_ms: millis(c.duration),
                detail: &c.detail,
            })
            .collect(),
        warnings: &report.warnings,
        counts: tally(report.counts()),
        duration_ms: millis(report.duration),
        exit_code: report.exit().code(),
    };
    // Plain data with string keys: serialising cannot fail.
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

fn tally(counts: Counts) -> Tally {
    Tally {
        total: counts.total(),
        pass: counts.pass,
        fail: counts.fail,
        skip: counts.skip,
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
