//! The Markdown summary GitHub Actions shows on a run's page: appended to
//! the file `$GITHUB_STEP_SUMMARY` names, as GitHub expects (each step may
//! add to it), whatever `--format` is.

use super::{Report, Verdict};
use std::fmt::Write as _;
use std::io::Write as _;

/// The variable GitHub Actions sets to the summary file of the current step.
const STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";

/// Appends the summary when `$GITHUB_STEP_SUMMARY` is set; does nothing otherwise.
pub fn append_step_summary(report: &Report) -> std::io::Result<()> {
    let Some(path) = std::env::var_os(STEP_SUMMARY).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(render(report).as_bytes())?;
    file.flush()
}

/// The report as Markdown: a heading with the outcome, one table row per
/// check, then the warnings.
pub fn render(report: &Report) -> String {
    let mut md = format!("### smoke: {}\n\n", super::human::summary(report));
    let _ = writeln!(md, "Target: `{}`", cell(&report.target));
    if let Some(id) = &report.reply_id {
        let _ = writeln!(md, "  \nSmoke reply: `{}`", cell(id));
    }
    md.push_str("\n| check | result | time | detail |\n|---|---|---|---|\n");
    for check in &report.checks {
        let mark = match check.verdict {
            Verdict::Pass => "✅ pass",
            Verdict::Fail => "❌ fail",
            Verdict::Skip => "➖ skip",
        };
        let _ = writeln!(
            md,
            "| `{}` | {mark} | {:.2}s | {} |",
            check.name.as_str(),
            check.duration.as_secs_f64(),
            cell(&check.detail)
        );
    }
    if !report.warnings.is_empty() {
        md.push_str("\n**Deploy pitfalls**\n\n");
        for warning in &report.warnings {
            let _ = writeln!(md, "- ⚠️ {}", cell(warning));
        }
    }
    md.push('\n');
    md
}

/// Text safe inside a table cell: a `|` would end the cell, a newline the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}
