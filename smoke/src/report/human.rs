//! Lines for a person: one per check, then a summary.

use super::{CheckResult, Report, Verdict};
use crate::exit::Exit;
use std::fmt::Write;

/// The first line: what is being checked, and the smoke reply to look for.
pub fn header(target: &str, reply_id: Option<&str>) -> String {
    let mut line = format!("smoke {} checking {target}", env!("CARGO_PKG_VERSION"));
    if let Some(id) = reply_id {
        let _ = write!(line, " (smoke reply {id})");
    }
    line
}

/// `✓ relay.health          0.01s  ok: version 0.1.0`
pub fn line(check: &CheckResult) -> String {
    let mark = match check.verdict {
        Verdict::Pass => '✓',
        Verdict::Fail => '✗',
        Verdict::Skip => '–',
    };
    let name = check.name.as_str();
    let secs = check.duration.as_secs_f64();
    format!("{mark} {name:<18} {secs:>6.2}s  {}", check.detail)
}

/// `! <pitfall>`: a deploy pitfall, after the checks.
pub fn warning(line: &str) -> String {
    format!("! warning: {line}")
}

/// `PASSED: 5 passed, 0 failed, 2 skipped in 1.23s`
pub fn summary(report: &Report) -> String {
    let outcome = match report.exit() {
        Exit::Passed => "PASSED",
        Exit::Failed => "FAILED",
        Exit::Unreachable => "UNREACHABLE (goldrelay never answered)",
        Exit::Usage => "USAGE ERROR",
    };
    let counts = report.counts();
    format!(
        "{outcome}: {} passed, {} failed, {} skipped in {:.2}s",
        counts.pass,
        counts.fail,
        counts.skip,
        report.duration.as_secs_f64()
    )
}

/// The whole report as the terminal showed it, for `--output` files.
pub fn render(report: &Report) -> String {
    let mut text = header(&report.target, report.reply_id.as_deref());
    text.push('\n');
    for check in &report.checks {
        text.push_str(&line(check));
        text.push('\n');
    }
    for pitfall in &report.warnings {
        text.push_str(&warning(pitfall));
        text.push('\n');
    }
    text.push_str(&summary(report));
    text.push('\n');
    text
}
