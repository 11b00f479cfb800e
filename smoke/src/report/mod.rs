//! The outcome of a run, and its three renderings.

pub mod github;
pub mod human;
pub mod json;
pub mod junit;

use crate::cli::CheckName;
use crate::exit::Exit;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    /// `pass`, `fail` or `skip`, as the reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: CheckName,
    pub verdict: Verdict,
    pub duration: Duration,
    /// One line for a person: what was seen, or why it failed or was skipped.
    pub detail: String,
}

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub started_at: DateTime<Utc>,
    /// goldrelay's URL, password redacted.
    pub target: String,
    /// Chatwoot's URL, password redacted, when given.
    pub chatwoot: Option<String>,
    /// The smoke reply's id, when relay.delivery ran.
    pub reply_id: Option<String>,
    /// The trace id the smoke reply was posted under, when relay.delivery ran.
    pub trace_id: Option<String>,
    pub checks: Vec<CheckResult>,
    /// Deploy pitfalls found after the checks, one line each; they never fail the run.
    pub warnings: Vec<String>,
    pub duration: Duration,
    /// goldrelay never gave an HTTP answer.
    pub unreachable: bool,
}

/// How many checks ended each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
}

impl Counts {
    /// Every check, run or not.
    pub fn total(self) -> usize {
        self.pass + self.fail + self.skip
    }
}

impl Report {
    /// How many checks passed, failed and were skipped.
    pub fn counts(&self) -> Counts {
        let count = |v: Verdict| self.checks.iter().filter(|c| c.verdict == v).count();
        Counts {
            pass: count(Verdict::Pass),
            fail: count(Verdict::Fail),
            skip: count(Verdict::Skip),
        }
    }

    /// Unreachable outranks a failure: the operator should fix reachability first.
    pub fn exit(&self) -> Exit {
        if self.unreachable {
            Exit::Unreachable
        } else if self.counts().fail > 0 {
            Exit::Failed
        } else {
            Exit::Passed
        }
    }
}
