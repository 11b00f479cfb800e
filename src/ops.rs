//! Operator commands: inspect and repair replies, check a deployment's configuration.

use crate::chatwoot::{ChatwootClient, SendError};
use crate::config::Settings;
use crate::dataset;
use crate::domain::{ReplyId, Status, UnknownStatus};
use crate::store::schema::{self, Schema};
use crate::store::{self, export_lines, Cursor, ReplyFilter, ReplyRecord, Requeued, SharedStore};
use anyhow::{bail, Context};
use futures_util::StreamExt;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

mod pitfalls;

/// Opens the store `DATABASE_URL` names, only if its schema is this build's:
/// an operator's command never creates or migrates the database it inspects.
pub async fn open_store() -> anyhow::Result<SharedStore> {
    let url = Settings::database_url_from_env()?;
    let schema = schema::inspect(&url)
        .await
        .with_context(|| format!("could not open the database at {url}"))?;
    match schema {
        Schema::Current => {}
        Schema::Missing | Schema::Empty => {
            bail!("the database at {url} {schema}: check DATABASE_URL")
        }
        Schema::Behind(_) => bail!(
            "the database at {url} {schema}: use the goldrelay that serves it, or migrate it first (goldrelay migrate)"
        ),
        Schema::Newer(_) | Schema::Altered(_) | Schema::Unfinished(_) => {
            bail!("the database at {url} {schema}: use the goldrelay that serves it")
        }
    }
    store::open(&url)
        .await
        .with_context(|| format!("could not open the database at {url}"))
}

/// `goldrelay replies list`: one line per reply, newest first.
pub async fn list(store: &SharedStore, filter: ReplyFilter) -> anyhow::Result<String> {
    let replies = store.list(&filter).await?;
    let mut out = String::new();
    for r in &replies {
        let _ = writeln!(
            out,
            "{:<24} {:<9} conv {:<7} attempts {:<3} {}  {}",
            r.reply_id,
            r.status.as_str(),
            r.conversation_id,
            r.attempts,
            r.received_at.format("%Y-%m-%dT%H:%M:%SZ"),
            r.last_error.as_deref().unwrap_or("")
        );
    }
    if replies.is_empty() {
        out.push_str("no replies match\n");
    }
    Ok(out)
}

/// A reply id from the command line (clap's parser): an impossible one is
/// refused before the database is opened, naming the rule.
pub fn reply_id_arg(raw: &str) -> Result<ReplyId, String> {
    ReplyId::parse(raw).map_err(|rule| format!("not a reply_id: it {rule}"))
}

/// `goldrelay replies show ID`: the full status record as JSON.
pub async fn show(store: &SharedStore, reply_id: &ReplyId) -> anyhow::Result<String> {
    match store.reply(reply_id).await? {
        Some(record) => Ok(serde_json::to_string_pretty(&record)? + "\n"),
        None => bail!("no gold reply has reply_id {:?}", reply_id.as_str()),
    }
}

/// `goldrelay replies retry ID [--force]`: puts a dead reply back in the
/// queue; whether its next attempt looks in the conversation first (no
/// sooner than `GOLDRELAY_LOOKUP_DELAY` from now, as `serve` would).
pub async fn retry(
    store: &SharedStore,
    reply_id: &ReplyId,
    force: bool,
) -> anyhow::Result<(ReplyRecord, bool)> {
    let (delay, idempotent) = Settings::lookup_timing_from_env()?;
    let look_after = crate::delivery::look_after(delay, idempotent);
    match store
        .requeue(reply_id, force, store.now(), look_after)
        .await?
    {
        Requeued::Queued {
            record,
            lookup_first,
        } => Ok((record, lookup_first)),
        Requeued::NotDead(record) => bail!(
            "only a dead reply can be retried; {:?} is {}",
            reply_id.as_str(),
            record.status.as_str()
        ),
        Requeued::NotFound => bail!("no gold reply has reply_id {:?}", reply_id.as_str()),
    }
}

/// `goldrelay replies export`'s choice of training format, the same as
/// `GET /api/gold-replies/export`'s query string (see the README).
#[derive(Debug, Default, clap::Args)]
pub struct DatasetArgs {
    /// records (default), openai-chat, openai-preference, trl-preference or trl-kto.
    #[arg(long)]
    format: Option<String>,
    /// Only this side of the split: train or eval.
    #[arg(long)]
    split: Option<String>,
    /// The share of conversations held out for eval, 0 to 1 (default 0.1).
    #[arg(long)]
    eval_share: Option<String>,
    /// false: keep personal data in the training formats (redacted by default).
    #[arg(long)]
    redact: Option<String>,
    /// Where a draft object holds its text, as a dot path (default text).
    #[arg(long)]
    draft_field: Option<String>,
}

impl DatasetArgs {
    /// The options these flags ask for; every bad one named at once.
    pub fn options(&self) -> anyhow::Result<dataset::Options> {
        dataset::Options::parse(&dataset::Asked {
            format: self.format.as_deref(),
            split: self.split.as_deref(),
            eval_share: self.eval_share.as_deref(),
            redact: self.redact.as_deref(),
            draft_field: self.draft_field.as_deref(),
        })
        .map_err(|errors| {
            let each: Vec<String> = errors
                .iter()
                .map(|e| format!("--{} {}", e.field.replace('_', "-"), e.message))
                .collect();
            anyhow::anyhow!("{}", each.join("; "))
        })
    }
}

/// `goldrelay replies export`: the gold dataset after `since` as JSON Lines,
/// the same lines `GET /api/gold-replies/export` streams, written to `out`
/// page by page, in the format `options` asks for. With `progress`, a
/// running count on standard error. Returns how many lines were written.
pub async fn export(
    store: SharedStore,
    since: Option<&str>,
    options: dataset::Options,
    out: &mut dyn Write,
    progress: bool,
) -> anyhow::Result<u64> {
    let after = since
        .filter(|s| !s.is_empty())
        .map(|raw| Cursor::decode(raw).with_context(|| format!("{raw:?} is not an export cursor")))
        .transpose()?;
    let now = store.now();
    let records =
        export_lines(store, after, None, now).map(|page| page.map_err(anyhow::Error::from));
    let mut lines = Box::pin(dataset::converted(records, options, anyhow::Error::from));
    let mut written = 0u64;
    while let Some(chunk) = lines.next().await {
        let chunk = chunk.context("the export stopped; resume it from the last line's cursor")?;
        out.write_all(chunk.as_bytes())?;
        written += chunk.bytes().filter(|b| *b == b'\n').count() as u64;
        if progress {
            eprint!("\rexported {written} lines");
        }
    }
    out.flush()?;
    if progress {
        eprintln!("\rexported {written} lines, done");
    }
    Ok(written)
}

/// Whether the export's progress is worth drawing: only for a person watching.
pub fn progress_wanted() -> bool {
    std::io::stderr().is_terminal()
}

/// Parses `--status`.
pub fn parse_status(raw: &str) -> Result<Status, String> {
    raw.parse().map_err(|e: UnknownStatus| e.to_string())
}

/// How a `check-config` line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// A deploy pitfall: it works, but something the operator expects will not happen.
    Warn,
    Fail,
}

impl Level {
    /// The line's prefix, four characters wide.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of `check-config` output.
pub struct Check {
    pub level: Level,
    pub line: String,
}

impl Check {
    fn pass(line: impl Into<String>) -> Self {
        Self {
            level: Level::Ok,
            line: line.into(),
        }
    }

    fn warn(line: impl Into<String>) -> Self {
        Self {
            level: Level::Warn,
            line: line.into(),
        }
    }

    fn fail(line: impl Into<String>) -> Self {
        Self {
            level: Level::Fail,
            line: line.into(),
        }
    }
}

/// `goldrelay check-config`: the environment, the database, and Chatwoot.
pub async fn check_config(
    lookup: impl Fn(&str) -> Option<String>,
    account_id: i64,
    conversation_id: i64,
) -> Vec<Check> {
    let public_url = public_url(&lookup);
    let settings = match Settings::from_lookup(lookup) {
        Ok(settings) => settings,
        Err(e) => return e.0.into_iter().map(Check::fail).collect(),
    };
    let mut checks = vec![Check::pass("configuration: every variable is valid")];
    let public_url = public_url.unwrap_or_else(|problem| {
        checks.push(Check::fail(problem));
        None
    });
    checks.push(check_database(&settings).await);
    let chatwoot = check_chatwoot(&settings, account_id, conversation_id).await;
    let reachable = chatwoot.iter().all(|c| c.level != Level::Fail);
    checks.extend(chatwoot);
    checks.extend(pitfalls::check(&settings, public_url.as_ref(), reachable).await);
    checks
}

/// `GOLDRELAY_PUBLIC_URL`, read here alone: only the pitfall checks need it.
fn public_url(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<reqwest::Url>, String> {
    let Some(raw) = lookup(pitfalls::PUBLIC_URL).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match reqwest::Url::parse(raw.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Some(url)),
        _ => Err(format!(
            "{}={raw:?} must be an http:// or https:// URL",
            pitfalls::PUBLIC_URL
        )),
    }
}

/// Reads the database's schema and changes nothing: run before a deploy, a
/// migration here would reach production ahead of the code that expects it.
async fn check_database(settings: &Settings) -> Check {
    let url = &settings.database_url;
    let schema = match schema::inspect(url).await {
        Ok(schema) => schema,
        Err(e) => return Check::fail(format!("database: cannot open {url}: {e}")),
    };
    match schema {
        Schema::Current => Check::pass(format!("database: {url} answers and {schema}")),
        Schema::Missing => Check::pass(format!(
            "database: {url} {schema} yet; serve (or goldrelay migrate) creates it, so check the path if it should already hold replies"
        )),
        Schema::Empty => Check::pass(format!(
            "database: {url} answers and {schema}; the deploy's release_command (goldrelay migrate) creates them"
        )),
        Schema::Behind(_) => Check::pass(format!(
            "database: {url} answers and {schema}; the deploy's release_command (goldrelay migrate) applies them"
        )),
        Schema::Newer(_) | Schema::Altered(_) | Schema::Unfinished(_) => Check::fail(format!(
            "database: {url} {schema}; this goldrelay refuses to serve it"
        )),
    }
}

async fn check_chatwoot(settings: &Settings, account_id: i64, conversation_id: i64) -> Vec<Check> {
    let base = settings
        .chatwoot_base_url
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let client = match ChatwootClient::new(
        settings.chatwoot_base_url.clone(),
        settings.chatwoot_api_token.clone(),
        settings.chatwoot_timeout,
    ) {
        Ok(client) => client,
        Err(e) => return vec![Check::fail(format!("chatwoot: cannot build a client: {e}"))],
    };
    let health = match client.health().await {
        Ok(detail) => Check::pass(format!("chatwoot: {base} is up ({detail})")),
        Err(e) => {
            return vec![Check::fail(format!(
                "chatwoot: {base} is not reachable: {e}"
            ))]
        }
    };
    let token = match client.can_read(account_id, conversation_id).await {
        Ok(()) => Check::pass(format!(
            "chatwoot: CHATWOOT_API_TOKEN can read account {account_id}, conversation {conversation_id}"
        )),
        // Named once, as a warning, by the pitfall checks that follow.
        Err(SendError::Permanent { status: 401, detail }) if detail.contains("for bots") => {
            Check::pass("chatwoot: CHATWOOT_API_TOKEN is accepted for sending only (see the agent-bot warning)")
        }
        Err(SendError::Permanent { status: 404, .. }) => Check::pass(format!(
            "chatwoot: CHATWOOT_API_TOKEN is accepted (account {account_id} or conversation {conversation_id} does not exist; pass --account-id/--conversation-id to read a real one)"
        )),
        Err(e) => Check::fail(format!("chatwoot: CHATWOOT_API_TOKEN was refused: {}", e.detail())),
    };
    vec![health, token]
}
