//! JUnit XML, the format CI systems render as a test report. Built by hand:
//! the shape is small and fixed, and `escape` is the one place that matters.

use super::{CheckResult, Report, Verdict};
use std::fmt::Write;

/// The report as one `<testsuite>` inside `<testsuites>`.
pub fn render(report: &Report) -> String {
    let counts = report.counts();
    let time = seconds(report.duration);
    // JUnit's schema wants a timestamp without a zone; it is UTC.
    let timestamp = report.started_at.format("%Y-%m-%dT%H:%M:%S");
    let (tests, failures, skipped) = (counts.total(), counts.fail, counts.skip);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"smoke\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time}\">"
    );
    let _ = writeln!(
        xml,
        "  <testsuite name=\"smoke\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time}\" timestamp=\"{timestamp}\">"
    );
    xml.push_str(&properties(report));
    for check in &report.checks {
        xml.push_str(&testcase(check));
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn properties(report: &Report) -> String {
    let mut pairs = vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("target", report.target.clone()),
    ];
    pairs.extend(report.chatwoot.clone().map(|c| ("chatwoot", c)));
    pairs.extend(report.reply_id.clone().map(|r| ("reply_id", r)));
    pairs.extend(report.warnings.iter().map(|w| ("warning", w.clone())));
    let mut xml = String::from("    <properties>\n");
    for (name, value) in pairs {
        let _ = writeln!(
            xml,
            "      <property name=\"{name}\" value=\"{}\"/>",
            escape(&value)
        );
    }
    xml.push_str("    </properties>\n");
    xml
}

/// `classname` groups the checks by system (`smoke.relay`, `smoke.chatwoot`).
fn testcase(check: &CheckResult) -> String {
    let name = check.name.as_str();
    let system = name.split('.').next().unwrap_or(name);
    let detail = escape(&check.detail);
    let open = format!(
        "    <testcase name=\"{name}\" classname=\"smoke.{system}\" time=\"{}\"",
        seconds(check.duration)
    );
    match check.verdict {
        Verdict::Pass => format!("{open}>\n      <system-out>{detail}</system-out>\n    </testcase>\n"),
        Verdict::Fail => format!(
            "{open}>\n      <failure message=\"{detail}\" type=\"fail\">{detail}</failure>\n    </testcase>\n"
        ),
        Verdict::Skip => format!("{open}>\n      <skipped message=\"{detail}\"/>\n    </testcase>\n"),
    }
}

fn seconds(duration: std::time::Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
}

/// Escapes for both text and attributes, and drops the characters XML 1.0
/// cannot hold at all (most C0 controls), which an error text might carry.
fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || matches!(c, '\u{FFFE}' | '\u{FFFF}') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_quotes_and_control_characters_are_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;"
        );
        assert_eq!(escape("a\u{1b}[2Kb"), "a\u{FFFD}[2Kb");
        assert_eq!(escape("line\nnext"), "line&#10;next");
    }
}
