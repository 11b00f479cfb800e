//! Settings, their defaults, and their validation at start-up.
//!
//! Every setting comes from one environment variable. Loading collects every
//! problem at once and names the variable, so an operator fixes a deploy in one go.

pub mod reference;
mod tokens;

pub use tokens::BearerToken;

use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The least length of a Support token: long enough that guessing is hopeless.
pub const MIN_TOKEN_CHARS: usize = 32;
/// Where `serve` keeps its SQLite database when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://goldrelay.db";

/// Everything goldrelay needs to run `serve`.
#[derive(Clone)]
pub struct Settings {
    /// `GOLDRELAY_LISTEN`: address to bind.
    pub listen: SocketAddr,
    /// `GOLDRELAY_TOKENS`: the Support bearer tokens; any one is accepted.
    /// One written `<account_id>:<token>` is bound to that account.
    pub tokens: Vec<BearerToken>,
    /// `GOLDRELAY_OPERATOR_TOKENS`: the operators' bearer tokens (list, retry,
    /// `/metrics`), never bound. None configured: operator endpoints answer 403.
    pub operator_tokens: Vec<BearerToken>,
    /// `GOLDRELAY_VIEWER_TOKENS`: read-only bearer tokens (the console, the
    /// list and the export); they change nothing. One written
    /// `<account_id>:<token>` is bound to that account. None configured: only
    /// operators read the console's data.
    pub viewer_tokens: Vec<BearerToken>,
    /// `GOLDRELAY_REQUEST_TIMEOUT`: how long a request's head, and then its
    /// body, may take to arrive before it is answered 408 and closed.
    pub request_timeout: Duration,
    /// `GOLDRELAY_TOKEN_RATE`: requests per second each bearer token may make
    /// (each viewer token from each client address); 0 lifts the cap.
    pub token_rate: u32,
    /// `GOLDRELAY_CLIENT_IP_HEADER`: the header a proxy in front of goldrelay
    /// writes the client's address in (`Fly-Client-IP` on Fly), for viewer
    /// tokens' rate. Unset: the TCP peer is the client, because a header
    /// anyone can write must not be believed unless a proxy overwrites it.
    pub client_ip_header: Option<String>,
    /// `DATABASE_URL`: where gold replies are stored.
    pub database_url: DatabaseUrl,
    /// `CHATWOOT_BASE_URL`: the Chatwoot installation, e.g. `https://chat.example.com`.
    pub chatwoot_base_url: reqwest::Url,
    /// `CHATWOOT_API_TOKEN`: sent as `Api-Access-Token`.
    pub chatwoot_api_token: SecretString,
    /// `GOLDRELAY_CHATWOOT_TIMEOUT`: the deadline for one request to Chatwoot.
    pub chatwoot_timeout: Duration,
    /// `GOLDRELAY_RETRY_BASE`: the first backoff delay.
    pub retry_base: Duration,
    /// `GOLDRELAY_RETRY_MAX`: the cap on one backoff delay.
    pub retry_max: Duration,
    /// `GOLDRELAY_LOOKUP_DELAY`: after an attempt that may have created the
    /// message (timeout, reset, 5xx, a 422 after the commit), how long the next
    /// attempt waits before looking it up, so a create Chatwoot commits late is seen.
    pub lookup_delay: Duration,
    /// `GOLDRELAY_CHATWOOT_IDEMPOTENT`: Chatwoot honours `client_message_id`
    /// (chatwoot#15743; not in any release yet), so a create that may have
    /// landed is sent again at once instead of being looked up. Default false.
    pub chatwoot_idempotent: bool,
    /// `GOLDRELAY_STATUS_RECONCILE`: how often a delivered reply's channel
    /// status is read back from Chatwoot until it is final (`read`) or the
    /// reply is older than `GOLDRELAY_MAX_AGE`; events only hint. `0` turns
    /// it off (statuses are then read only when an event asks). Default 5m.
    pub status_reconcile: Duration,
    /// `GOLDRELAY_CAPTURE_CONTEXT`: how many conversation turns before a
    /// reply are captured from Chatwoot's message list and kept with it, when
    /// Support posted no `context`; `0` turns capture off. Default 20.
    pub capture_context: usize,
    /// `GOLDRELAY_MAX_ATTEMPTS`: attempts before a reply is given up on.
    pub max_attempts: u32,
    /// `GOLDRELAY_MAX_AGE`: age after which a reply is given up on.
    pub max_age: Duration,
    /// `GOLDRELAY_MAX_BODY`: the largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `GOLDRELAY_WRITE_QUEUE`: the most writes that may wait for the database
    /// before new posts are answered 503 with Retry-After.
    pub write_queue: usize,
    /// `GOLDRELAY_SEND_RATE`: Chatwoot requests per second, all conversations together; 0 lifts the cap.
    pub send_rate: u32,
    /// `GOLDRELAY_DELIVERY_CONCURRENCY`: conversations delivered to at once.
    pub delivery_concurrency: usize,
    /// `GOLDRELAY_SHUTDOWN_DRAIN`: how long in-flight deliveries may finish after SIGTERM.
    pub shutdown_drain: Duration,
    /// `CHATWOOT_WEBHOOK_SECRETS`: the secrets Chatwoot signs webhooks with; any one may
    /// match. None configured: the webhook endpoint refuses everything.
    pub webhook_secrets: Vec<SecretString>,
    /// `GOLDRELAY_WEBHOOK_TOLERANCE`: how far a webhook's timestamp may be from now.
    pub webhook_tolerance: Duration,
    /// `GOLDRELAY_WEBHOOK_PATH_TOKEN`: opt-in for Chatwoot before 4.12, which does not
    /// sign: accept unsigned events at `/api/webhooks/chatwoot/<token>`.
    pub webhook_path_token: Option<SecretString>,
    /// `GOLDRELAY_EVENT_RETENTION`: how long received Chatwoot events are kept.
    pub event_retention: Duration,
    /// `GOLDRELAY_METRICS_LISTEN`: serve `/metrics` on this address instead of the
    /// main one, so metrics need not be public.
    pub metrics_listen: Option<SocketAddr>,
}

/// The database a `DATABASE_URL` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite:` or `postgres://` / `postgresql://`; anything else is refused.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// `DATABASE_URL`, parsed once: it knows its backend, and it never shows a
/// password (neither in the userinfo nor as `?password=`) when displayed.
#[derive(Clone)]
pub struct DatabaseUrl {
    backend: Backend,
    url: SecretString,
}

impl DatabaseUrl {
    /// Accepts `sqlite:…`, `postgres://…` and `postgresql://…`. The error names
    /// `DATABASE_URL` and shows at most the scheme, never the rest.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let backend = Backend::of(raw).ok_or_else(|| {
            let scheme = match raw.split_once(':') {
                Some((scheme, _)) if !scheme.is_empty() && scheme.len() <= 20 => {
                    format!("its scheme is {scheme:?}")
                }
                _ => "it has no scheme".to_owned(),
            };
            format!(
                "DATABASE_URL must start with sqlite:, postgres:// or postgresql:// ({scheme}), \
                 e.g. sqlite://goldrelay.db or postgres://user:password@host:5432/db"
            )
        })?;
        Ok(Self {
            backend,
            url: SecretString::from(raw.to_owned()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for DatabaseUrl {
    /// The URL with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.expose();
        let (base, query) = raw
            .split_once('?')
            .map_or((raw, None), |(b, q)| (b, Some(q)));
        match (base.find("://"), base.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &base[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                write!(f, "{}{user}:***{}", &base[..scheme + 3], &base[at..])?;
            }
            _ => f.write_str(base)?,
        }
        let Some(query) = query else {
            return Ok(());
        };
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        write!(f, "?{}", redacted.join("&"))
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field(
                "operator_tokens",
                &format_args!("[{} redacted]", self.operator_tokens.len()),
            )
            .field(
                "viewer_tokens",
                &format_args!("[{} redacted]", self.viewer_tokens.len()),
            )
            .field("database_url", &self.database_url)
            .field("chatwoot_base_url", &self.chatwoot_base_url.as_str())
            .field("chatwoot_timeout", &self.chatwoot_timeout)
            .finish_non_exhaustive()
    }
}

/// Every problem found in the environment, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `DATABASE_URL` alone, for commands that need only the database.
    pub fn database_url_from_env() -> Result<DatabaseUrl, ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        Env {
            lookup: &lookup,
            problems: Vec::new(),
        }
        .read_database_url()
        .map_err(|problem| ConfigError(vec![problem]))
    }

    /// `GOLDRELAY_LOOKUP_DELAY` and `GOLDRELAY_CHATWOOT_IDEMPOTENT` alone, for
    /// `replies retry`: how long a retried reply that may have been sent
    /// waits before it looks ([`crate::delivery::look_after`]).
    pub fn lookup_timing_from_env() -> Result<(Duration, bool), ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        let mut env = Env {
            lookup: &lookup,
            problems: Vec::new(),
        };
        let delay = env.duration("GOLDRELAY_LOOKUP_DELAY", "60s");
        let idempotent = env.parsed("GOLDRELAY_CHATWOOT_IDEMPOTENT", false);
        if env.problems.is_empty() {
            Ok((delay, idempotent))
        } else {
            Err(ConfigError(env.problems))
        }
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut env = Env {
            lookup: &lookup,
            problems: Vec::new(),
        };
        let settings = Settings {
            listen: env.parsed("GOLDRELAY_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080))),
            tokens: env.tokens("GOLDRELAY_TOKENS"),
            operator_tokens: env.optional_tokens("GOLDRELAY_OPERATOR_TOKENS", false),
            viewer_tokens: env.optional_tokens("GOLDRELAY_VIEWER_TOKENS", true),
            request_timeout: env.duration("GOLDRELAY_REQUEST_TIMEOUT", "10s"),
            token_rate: env.parsed("GOLDRELAY_TOKEN_RATE", 0),
            client_ip_header: env.header_name("GOLDRELAY_CLIENT_IP_HEADER"),
            database_url: env.database_url(),
            chatwoot_base_url: env.url("CHATWOOT_BASE_URL"),
            chatwoot_api_token: env.secret("CHATWOOT_API_TOKEN"),
            chatwoot_timeout: env.duration("GOLDRELAY_CHATWOOT_TIMEOUT", "10s"),
            retry_base: env.duration("GOLDRELAY_RETRY_BASE", "500ms"),
            retry_max: env.duration("GOLDRELAY_RETRY_MAX", "5m"),
            lookup_delay: env.duration("GOLDRELAY_LOOKUP_DELAY", "60s"),
            chatwoot_idempotent: env.parsed("GOLDRELAY_CHATWOOT_IDEMPOTENT", false),
            status_reconcile: env.duration("GOLDRELAY_STATUS_RECONCILE", "5m"),
            capture_context: env.parsed("GOLDRELAY_CAPTURE_CONTEXT", 20),
            max_attempts: env.parsed("GOLDRELAY_MAX_ATTEMPTS", 50),
            max_age: env.duration("GOLDRELAY_MAX_AGE", "24h"),
            max_body_bytes: env.parsed("GOLDRELAY_MAX_BODY", 256 * 1024),
            write_queue: env.parsed("GOLDRELAY_WRITE_QUEUE", 2048),
            send_rate: env.parsed("GOLDRELAY_SEND_RATE", 40),
            delivery_concurrency: env.parsed("GOLDRELAY_DELIVERY_CONCURRENCY", 16),
            shutdown_drain: env.duration("GOLDRELAY_SHUTDOWN_DRAIN", "25s"),
            webhook_secrets: env.secret_list("CHATWOOT_WEBHOOK_SECRETS"),
            webhook_tolerance: env.duration("GOLDRELAY_WEBHOOK_TOLERANCE", "5m"),
            webhook_path_token: env.path_token("GOLDRELAY_WEBHOOK_PATH_TOKEN"),
            event_retention: env.duration("GOLDRELAY_EVENT_RETENTION", "30d"),
            metrics_listen: env.optional("GOLDRELAY_METRICS_LISTEN").map(|_| {
                env.parsed(
                    "GOLDRELAY_METRICS_LISTEN",
                    SocketAddr::from(([127, 0, 0, 1], 9091)),
                )
            }),
        };
        env.check_settings(&settings);
        if env.problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError(env.problems))
        }
    }

    /// How long a claimed job stays with its worker. The worker cuts an attempt
    /// off 5 s before this (a lookup page or two and a create fit in it) and
    /// retries it later, looking the message up first.
    pub fn lease(&self) -> Duration {
        self.chatwoot_timeout * 3 + Duration::from_secs(5)
    }
}

/// Parses one duration such as `250ms`, `5s` or `1h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{e} (write a duration such as 250ms, 5s or 1h)"))
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Env<'_> {
    fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// `DATABASE_URL`, or the default SQLite file when it is not set, except
    /// on Fly.io (`FLY_APP_NAME` set): there the default file would sit on the
    /// machine's temporary disk and lose every accepted reply at the next
    /// restart or deploy.
    fn read_database_url(&self) -> Result<DatabaseUrl, String> {
        match self.optional("DATABASE_URL") {
            Some(raw) => DatabaseUrl::parse(&raw),
            None if self.optional("FLY_APP_NAME").is_some() => Err(format!(
                "DATABASE_URL is required on Fly.io: the default ({DEFAULT_DATABASE_URL}) would \
                 sit on the machine's temporary disk and lose every reply at the next restart; \
                 set a postgres:// URL, or sqlite:///data/goldrelay.db with a volume mounted at /data"
            )),
            None => DatabaseUrl::parse(DEFAULT_DATABASE_URL),
        }
    }

    /// [`Env::read_database_url`], its problem noted.
    fn database_url(&mut self) -> DatabaseUrl {
        self.read_database_url().unwrap_or_else(|problem| {
            self.problems.push(problem);
            DatabaseUrl {
                backend: Backend::Sqlite,
                url: SecretString::from(DEFAULT_DATABASE_URL),
            }
        })
    }

    /// The checks that span more than one setting, after every variable is read.
    fn check_settings(&mut self, settings: &Settings) {
        self.check_ambiguity(&[
            ("GOLDRELAY_TOKENS", &settings.tokens),
            ("GOLDRELAY_OPERATOR_TOKENS", &settings.operator_tokens),
            ("GOLDRELAY_VIEWER_TOKENS", &settings.viewer_tokens),
        ]);
        self.check(
            settings.max_attempts >= 1,
            "GOLDRELAY_MAX_ATTEMPTS must be at least 1",
        );
        self.check(
            settings.delivery_concurrency >= 1,
            "GOLDRELAY_DELIVERY_CONCURRENCY must be at least 1",
        );
        self.check(
            settings.write_queue >= 1,
            "GOLDRELAY_WRITE_QUEUE must be at least 1",
        );
        self.check(
            settings.retry_base <= settings.retry_max,
            "GOLDRELAY_RETRY_BASE must not exceed GOLDRELAY_RETRY_MAX",
        );
        self.check(
            !settings.chatwoot_timeout.is_zero(),
            "GOLDRELAY_CHATWOOT_TIMEOUT must be more than 0",
        );
        self.check(
            !settings.request_timeout.is_zero(),
            "GOLDRELAY_REQUEST_TIMEOUT must be more than 0",
        );
    }

    fn check(&mut self, ok: bool, problem: &str) {
        if !ok {
            self.problems.push(problem.to_owned());
        }
    }

    fn required(&mut self, name: &str) -> Option<String> {
        let value = self.optional(name);
        if value.is_none() {
            self.problems
                .push(format!("{name} is required but not set"));
        }
        value
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.optional(name) {
            None => default,
            Some(raw) => raw.trim().parse().unwrap_or_else(|e| {
                self.problems
                    .push(format!("{name}={raw:?} is invalid: {e}"));
                default
            }),
        }
    }

    fn duration(&mut self, name: &str, default: &str) -> Duration {
        let raw = self.optional(name).unwrap_or_else(|| default.to_owned());
        parse_duration(&raw).unwrap_or_else(|e| {
            self.problems
                .push(format!("{name}={raw:?} is invalid: {e}"));
            Duration::ZERO
        })
    }

    fn secret(&mut self, name: &str) -> SecretString {
        SecretString::from(self.required(name).unwrap_or_default())
    }

    fn url(&mut self, name: &str) -> reqwest::Url {
        let fallback = || reqwest::Url::parse("http://invalid.invalid").expect("static URL");
        let Some(raw) = self.required(name) else {
            return fallback();
        };
        match reqwest::Url::parse(raw.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(_) => {
                self.problems
                    .push(format!("{name} must be an http:// or https:// URL"));
                fallback()
            }
            Err(e) => {
                self.problems
                    .push(format!("{name}={raw:?} is invalid: {e}"));
                fallback()
            }
        }
    }

    /// An optional HTTP header name (RFC 9110 token characters only).
    fn header_name(&mut self, name: &str) -> Option<String> {
        let raw = self.optional(name)?;
        let raw = raw.trim();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if raw.chars().all(token) {
            return Some(raw.to_owned());
        }
        self.problems.push(format!(
            "{name}={raw:?} is not a header name such as Fly-Client-IP"
        ));
        None
    }

    /// Optional comma-separated secrets.
    fn secret_list(&mut self, name: &str) -> Vec<SecretString> {
        self.optional(name)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| SecretString::from(s.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An optional secret that must be long and URL-safe, since it sits in a path.
    fn path_token(&mut self, name: &str) -> Option<SecretString> {
        let raw = self.optional(name)?;
        let raw = raw.trim();
        let url_safe = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if raw.chars().count() < MIN_TOKEN_CHARS || !url_safe {
            self.problems.push(format!(
                "{name} must be at least {MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 - _"
            ));
            return None;
        }
        Some(SecretString::from(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests;
