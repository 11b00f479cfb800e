//! The command line: every option also reads an environment variable, so
//! secrets stay out of shell history and CI logs.

use clap::builder::BoolishValueParser;
use clap::{Parser, ValueEnum};
use reqwest::Url;
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;

/// Shown at the end of `--help`; docs/smoke.md repeats it.
const AFTER_HELP: &str = "\
Exit codes:
  0  every check that ran passed
  1  a check failed
  2  usage or configuration error (bad option, missing input, report file not writable)
  3  goldrelay could not be reached at all (DNS, connect, TLS)

Checks, in the order they run, and what each needs:
  relay.health       GET /hc answers 200 with status ok, retried until --wait runs out
  relay.auth         posts without a token and with a wrong one are refused with 401
  relay.validation   an invalid gold reply is refused with 422 (--token)
  relay.delivery     a private smoke reply is accepted with 202 and delivered
                     within --timeout (--token, --account-id, --conversation-id)
  relay.idempotency  the same reply again answers 200 and is not sent twice
  chatwoot.health    Chatwoot's /health, or /api on older versions (--chatwoot-url)
  chatwoot.message   the conversation holds exactly one message with the smoke
                     reply's gold_reply_id (--chatwoot-token)

With --chatwoot-url, deploy pitfalls found after the checks are printed as
'! warning:' lines (and listed under 'warnings' in the JSON report); they never
change the exit code. With GITHUB_STEP_SUMMARY set, a Markdown summary is
appended to that file.

A check that lacks its inputs is skipped, unless it is named in --only: then
smoke stops with exit code 2. An empty environment variable is an error, not
'unset', so a CI secret that is missing fails loudly instead of skipping.";

/// Post-deploy smoke test for goldrelay and, optionally, its Chatwoot.
#[derive(Debug, Parser)]
#[command(name = "smoke", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// goldrelay's base URL, e.g. https://goldrelay.fly.dev
    #[arg(long, env = "SMOKE_URL", value_parser = parse_url)]
    pub url: Url,

    /// A Support bearer token; without it only the checks that need none run.
    #[arg(long, env = "SMOKE_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<SecretString>,

    /// The Chatwoot account of the conversation that receives the smoke reply.
    #[arg(long, env = "SMOKE_ACCOUNT_ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub account_id: Option<i64>,

    /// A conversation kept for smoke traffic (a test contact, not a customer).
    #[arg(long, env = "SMOKE_CONVERSATION_ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub conversation_id: Option<i64>,

    /// Chatwoot's base URL: also check Chatwoot itself.
    #[arg(long, env = "SMOKE_CHATWOOT_URL", value_parser = parse_url)]
    pub chatwoot_url: Option<Url>,

    /// A Chatwoot user access token: read the conversation through Chatwoot's API.
    #[arg(
        long,
        env = "SMOKE_CHATWOOT_TOKEN",
        hide_env_values = true,
        requires = "chatwoot_url",
        value_parser = parse_secret
    )]
    pub chatwoot_token: Option<SecretString>,

    /// How long to keep retrying the health check while a deploy comes up.
    #[arg(long, env = "SMOKE_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,

    /// Deadline for end-to-end delivery, counted from goldrelay's 202.
    #[arg(long, env = "SMOKE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// The report's format.
    #[arg(long, env = "SMOKE_FORMAT", value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// Write the report to this file; stdout then shows the human summary.
    #[arg(long, env = "SMOKE_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Run only these checks (comma-separated); each must have its inputs.
    #[arg(
        long,
        env = "SMOKE_ONLY",
        value_delimiter = ',',
        conflicts_with = "skip"
    )]
    pub only: Vec<CheckName>,

    /// Skip these checks (comma-separated).
    #[arg(long, env = "SMOKE_SKIP", value_delimiter = ',')]
    pub skip: Vec<CheckName>,

    /// relay.delivery waits for `confirmed` (Chatwoot's webhook came back) instead of `delivered`.
    #[arg(long, env = "SMOKE_EXPECT_CONFIRMATION", value_parser = BoolishValueParser::new())]
    pub expect_confirmation: bool,

    /// Send the smoke reply as a public message instead of a private note.
    /// Only for a conversation with a test contact: a customer would see it.
    #[arg(long, env = "SMOKE_PUBLIC", value_parser = BoolishValueParser::new())]
    pub public: bool,
}

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    Junit,
}

/// The checks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckName {
    #[value(name = "relay.health")]
    RelayHealth,
    #[value(name = "relay.auth")]
    RelayAuth,
    #[value(name = "relay.validation")]
    RelayValidation,
    #[value(name = "relay.delivery")]
    RelayDelivery,
    #[value(name = "relay.idempotency")]
    RelayIdempotency,
    #[value(name = "chatwoot.health")]
    ChatwootHealth,
    #[value(name = "chatwoot.message")]
    ChatwootMessage,
}

impl CheckName {
    pub const ALL: [CheckName; 7] = [
        CheckName::RelayHealth,
        CheckName::RelayAuth,
        CheckName::RelayValidation,
        CheckName::RelayDelivery,
        CheckName::RelayIdempotency,
        CheckName::ChatwootHealth,
        CheckName::ChatwootMessage,
    ];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::RelayHealth => "relay.health",
            CheckName::RelayAuth => "relay.auth",
            CheckName::RelayValidation => "relay.validation",
            CheckName::RelayDelivery => "relay.delivery",
            CheckName::RelayIdempotency => "relay.idempotency",
            CheckName::ChatwootHealth => "chatwoot.health",
            CheckName::ChatwootMessage => "chatwoot.message",
        }
    }

    /// Whether the check talks to goldrelay (and so cannot run when it is unreachable).
    pub fn needs_relay(self) -> bool {
        self != CheckName::ChatwootHealth
    }
}

fn parse_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "must be an http:// or https:// URL, not {other}://"
        )),
    }
}

/// Refuses an empty token so a missing CI secret is an error, not a silent skip.
fn parse_secret(raw: &str) -> Result<SecretString, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("the token is empty (is the secret set?)".into());
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// `30s`, `500ms`, `2m`; a bare number means seconds.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(raw).map_err(|e| format!("{e} (write e.g. 500ms, 30s or 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_bare_number_of_seconds_is_a_duration() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn check_names_on_the_command_line_match_their_report_names() {
        for name in CheckName::ALL {
            let parsed = CheckName::from_str(name.as_str(), false);
            assert_eq!(parsed, Ok(name));
        }
    }

    #[test]
    fn only_web_urls_are_accepted() {
        assert!(parse_url("https://relay.example.com").is_ok());
        assert!(parse_url("ftp://relay.example.com").is_err());
        assert!(parse_url("relay.example.com").is_err());
    }
}
