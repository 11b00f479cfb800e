//! Deploy pitfalls of current Chatwoot that `check-config` names before they
//! bite: each is a setting that works in a test and silently fails in a
//! deploy (docs/deploy.md, "Deploy pitfalls").

use super::Check;
use crate::chatwoot::webhook_policy::{
    private_target, refuses_private, Version, REFUSES_PRIVATE_SINCE, SIGNS_SINCE,
};
use crate::config::Settings;
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;

/// `GOLDRELAY_PUBLIC_URL`: the URL Chatwoot's webhook is given. Only
/// `check-config` reads it; `serve` does not need it.
pub const PUBLIC_URL: &str = "GOLDRELAY_PUBLIC_URL";

/// What Chatwoot made of a token sent in one header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A user's token, accepted.
    User,
    /// An agent-bot token: refused on every endpoint not open to bots.
    Bot,
    /// Chatwoot answered as if no token had been sent: the header never arrived.
    NoToken,
    /// Anything else (an unknown token, an error page).
    Other(u16),
}

/// Every pitfall line; Chatwoot is asked only when `reachable`.
pub async fn check(settings: &Settings, public_url: Option<&Url>, reachable: bool) -> Vec<Check> {
    let probe = match Probe::new(settings) {
        Ok(probe) if reachable => Some(probe),
        Ok(_) => None,
        Err(e) => return vec![Check::fail(format!("chatwoot: cannot build a client: {e}"))],
    };
    let version = match &probe {
        Some(probe) => probe.version().await,
        None => None,
    };
    let mut checks = vec![
        webhook_secrets(settings, version),
        private_webhook_url(public_url, version).await,
    ];
    if let Some(probe) = probe {
        checks.extend(probe.headers().await);
    }
    checks.into_iter().flatten().collect()
}

/// Pitfall 4: Chatwoot signs, goldrelay has no secret to check the signature with.
fn webhook_secrets(settings: &Settings, version: Option<Version>) -> Option<Check> {
    // A path token is the opt-in for unsigned events: nothing to warn about.
    if !settings.webhook_secrets.is_empty() || settings.webhook_path_token.is_some() {
        return None;
    }
    Some(match version {
        Some(v) if v >= SIGNS_SINCE => Check::warn(format!(
            "webhooks: Chatwoot {v} signs account webhooks (4.12 and later) but CHATWOOT_WEBHOOK_SECRETS \
             is empty: goldrelay refuses every signed event, so no reply is ever confirmed; \
             set it to the webhook's secret from Chatwoot"
        )),
        _ => Check::pass(
            "webhooks: no CHATWOOT_WEBHOOK_SECRETS; the Chatwoot webhook endpoint will refuse every event",
        ),
    })
}

/// Pitfall 1: Chatwoot 4.14+ will not deliver to a private address.
async fn private_webhook_url(public_url: Option<&Url>, version: Option<Version>) -> Option<Check> {
    let v = version.filter(|v| *v >= REFUSES_PRIVATE_SINCE)?;
    let Some(url) = public_url else {
        return Some(Check::pass(format!(
            "webhooks: {PUBLIC_URL} is not set, so whether Chatwoot {v} can deliver webhooks \
             to goldrelay (4.14 refuses private addresses) was not checked"
        )));
    };
    let why = private_target(url).await?;
    Some(Check::warn(private_url_line(url, &why, v)))
}

/// The one line both `check-config` and its tests name the pitfall by.
fn private_url_line(url: &Url, why: &str, v: Version) -> String {
    format!(
        "webhooks: {PUBLIC_URL} {url} is {why}, and {}: no reply will ever be confirmed",
        refuses_private(v)
    )
}

/// Raw requests to Chatwoot: the pitfalls are about exactly which header
/// arrives, which the delivery client must not be bent to probe.
struct Probe {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl Probe {
    fn new(settings: &Settings) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.chatwoot_timeout)
            .build()?;
        Ok(Self {
            http,
            base: settings.chatwoot_base_url.clone(),
            token: settings.chatwoot_api_token.expose_secret().to_owned(),
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}/{path}",
            self.base.path().trim_end_matches('/')
        ));
        url
    }

    /// `GET /api` → `version` (`app/controllers/api_controller.rb`).
    async fn version(&self) -> Option<Version> {
        let response = self.http.get(self.url("api")).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        Version::parse(body["version"].as_str()?)
    }

    /// `GET /api/v1/profile` with the token in `header` alone.
    async fn profile(&self, header: &str) -> Seen {
        let request = self.http.get(self.url("api/v1/profile"));
        let Ok(response) = request.header(header, &self.token).send().await else {
            return Seen::Other(0);
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        let error = body["error"].as_str().unwrap_or_default();
        match status {
            StatusCode::OK => Seen::User,
            StatusCode::UNAUTHORIZED if error.contains("not authorized for bots") => Seen::Bot,
            StatusCode::UNAUTHORIZED if body["errors"].is_array() => Seen::NoToken,
            other => Seen::Other(other.as_u16()),
        }
    }

    /// Pitfalls 2 and 3: an agent-bot token, and a proxy that drops `_` headers.
    async fn headers(&self) -> Vec<Option<Check>> {
        let hyphen = self.profile("Api-Access-Token").await;
        let underscore = self.profile("api_access_token").await;
        let bot = (hyphen == Seen::Bot).then(|| {
            Check::warn(
                "chatwoot: CHATWOOT_API_TOKEN is an agent-bot token: it can send but cannot list \
                 messages (401 \"not authorized for bots\"), so duplicates cannot be prevented by \
                 lookups and a reply whose delivery is uncertain goes dead; use an agent's access token",
            )
        });
        let proxy = match (&hyphen, &underscore) {
            (Seen::NoToken, _) => Some(Check::fail(
                "chatwoot: the Api-Access-Token header goldrelay sends never reaches Chatwoot \
                 (it answers as if no token were sent): a proxy in front of it drops the header",
            )),
            (_, Seen::NoToken) => Some(Check::warn(
                "chatwoot: a proxy in front of Chatwoot drops headers with `_`: Api-Access-Token \
                 (what goldrelay sends) gets through, api_access_token does not, so other tools \
                 that send api_access_token will fail (nginx: underscores_in_headers on;)",
            )),
            _ => None,
        };
        vec![bot, proxy]
    }
}
