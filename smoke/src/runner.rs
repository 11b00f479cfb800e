//! One run: plan the checks, run them in order, stream lines, write the report.

use crate::checks::Run;
use crate::cli::{CheckName, Cli, Format};
use crate::exit::Exit;
use crate::http::redacted;
use crate::pitfalls;
use crate::plan::{plan, Plan, Selection};
use crate::progress::Progress;
use crate::redact::Redactor;
use crate::report::{github, human, json, junit, CheckResult, Report, Verdict};
use chrono::Utc;
use reqwest::Url;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use tokio::time::Instant;

/// Runs every planned check and reports; configuration problems stop it before any request.
pub async fn run(cli: Cli) -> Exit {
    let (planned, output, mut run) = match prepare(&cli) {
        Ok(prepared) => prepared,
        Err(e) => return usage(&e),
    };
    let redactor = Redactor::new(cli.token.iter().chain(&cli.chatwoot_token).cloned());
    let delivery_runs = planned.contains(&(CheckName::RelayDelivery, Selection::Run));
    let delivered = run.smoke.as_ref().filter(|_| delivery_runs);
    let mut report = Report {
        started_at: Utc::now(),
        target: redacted(&cli.url),
        chatwoot: cli.chatwoot_url.as_ref().map(redacted),
        reply_id: delivered.map(|s| s.id.clone()),
        trace_id: delivered.map(|s| s.trace_id.clone()),
        checks: Vec::new(),
        warnings: Vec::new(),
        duration: Default::default(),
        unreachable: false,
    };
    let clock = Instant::now();
    output.say(&human::header(&report.target, report.reply_id.as_deref()));
    for (name, selection) in planned {
        let mut result = check(&mut run, name, selection, output.spinner).await;
        result.detail = redactor.scrub(&result.detail);
        output.say(&human::line(&result));
        report.checks.push(result);
    }
    report.warnings = warnings(&mut run, &report, &cli.url, &redactor).await;
    for warning in &report.warnings {
        output.say(&human::warning(warning));
    }
    report.duration = clock.elapsed();
    report.unreachable = run.relay.never_answered();
    match output.finish(&report) {
        Ok(()) => report.exit(),
        Err(e) => usage(&e),
    }
}

/// The deploy pitfalls, read from a Chatwoot that answered (an unreachable
/// one is a failed check already).
async fn warnings(run: &mut Run, report: &Report, url: &Url, redactor: &Redactor) -> Vec<String> {
    let chatwoot_up = report
        .checks
        .iter()
        .any(|c| c.name == CheckName::ChatwootHealth && c.verdict == Verdict::Pass);
    if !chatwoot_up {
        return Vec::new();
    }
    let found = pitfalls::find(run, url).await;
    found.iter().map(|w| redactor.scrub(w)).collect()
}

/// Everything that can fail on configuration alone, in that order.
fn prepare(cli: &Cli) -> Result<(Plan, Output, Run), String> {
    let planned = plan(cli).map_err(|e| e.to_string())?;
    let output = Output::open(cli)?;
    let run = Run::new(cli).map_err(|e| format!("could not set up the HTTP client: {e}"))?;
    Ok((planned, output, run))
}

/// Runs or skips one check, timed.
async fn check(run: &mut Run, name: CheckName, selection: Selection, spinner: bool) -> CheckResult {
    let started = Instant::now();
    let (verdict, detail) = match selection {
        Selection::Skip(reason) => (Verdict::Skip, reason),
        Selection::Run if name.needs_relay() && run.relay.never_answered() => {
            (Verdict::Skip, "goldrelay could not be reached".into())
        }
        Selection::Run => {
            let progress = Progress::start(name.as_str(), spinner);
            match run.check(name, &progress).await {
                Ok(detail) => (Verdict::Pass, detail),
                Err(detail) => (Verdict::Fail, detail),
            }
        }
    };
    CheckResult {
        name,
        verdict,
        duration: started.elapsed(),
        detail,
    }
}

fn usage(message: &str) -> Exit {
    eprintln!("error: {message}");
    Exit::Usage
}

/// Where lines and the report go. Human lines stream to stdout unless stdout
/// carries a JSON or JUnit document, which must stay parseable.
struct Output {
    format: Format,
    file: Option<File>,
    live: bool,
    spinner: bool,
}

impl Output {
    /// Opens `--output` first, so an unwritable path fails before any traffic.
    fn open(cli: &Cli) -> Result<Self, String> {
        let file = cli.output.as_ref().map(create).transpose()?;
        let live = cli.format == Format::Human || file.is_some();
        Ok(Self {
            format: cli.format,
            file,
            live,
            spinner: live && std::io::stdout().is_terminal(),
        })
    }

    /// One human line; a closed stdout must not abort the run.
    fn say(&self, line: &str) {
        if self.live {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }

    fn finish(self, report: &Report) -> Result<(), String> {
        self.say(&human::summary(report));
        // A CI summary that cannot be written is not a failed check: say so, go on.
        if let Err(e) = github::append_step_summary(report) {
            eprintln!("warning: could not write $GITHUB_STEP_SUMMARY: {e}");
        }
        let rendered = match self.format {
            Format::Human => human::render(report),
            Format::Json => json::render(report),
            Format::Junit => junit::render(report),
        };
        match (self.file, self.format) {
            (Some(mut file), _) => file
                .write_all(rendered.as_bytes())
                .and_then(|()| file.flush())
                .map_err(|e| format!("could not write the report: {e}")),
            (None, Format::Human) => Ok(()),
            (None, _) => {
                let _ = std::io::stdout().lock().write_all(rendered.as_bytes());
                Ok(())
            }
        }
    }
}

fn create(path: &PathBuf) -> Result<File, String> {
    File::create(path).map_err(|e| format!("cannot write the report to {}: {e}", path.display()))
}
