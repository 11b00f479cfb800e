//! Deploy pitfalls of current Chatwoot that `check-config` names before they
//! bite: each is a setting that works in a test and silently fails in a
//! deploy (docs/deploy.md, "Deploy pitfalls").

use super::Check;
use crate::config::Settings;
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// `GOLDRELAY_PUBLIC_URL`: the URL Chatwoot's webhook is given. Only
/// `check-config` reads it; `serve` does not need it.
pub const PUBLIC_URL: &str = "GOLDRELAY_PUBLIC_URL";

/// Chatwoot's first release that signs account webhooks.
const SIGNS_SINCE: Version = Version(4, 12, 0);
/// Chatwoot's first release that refuses to deliver webhooks to private addresses
/// (`lib/webhooks/private_network_policy.rb`).
const REFUSES_PRIVATE_SINCE: Version = Version(4, 14, 0);

/// How long resolving goldrelay's public name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A Chatwoot release, `major.minor.patch`, as `GET /api` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads `4.14.0`, `v4.14.0` or `4.14.0-ce`; a missing part is 0.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim().trim_start_matches('v');
        let mut parts = raw.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self(major, minor, patch))
    }
}

/// Why a host is one Chatwoot 4.14+ will not deliver to, or `None` for a public one.
pub fn private_host(url: &Url) -> Option<&'static str> {
    let host = url.host_str()?;
    match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => private_ip(ip),
        Err(_) => private_name(host),
    }
}

/// Why `url` is one Chatwoot 4.14+ will not deliver to: its host itself, or
/// a private address its name resolves to (Chatwoot checks where a name leads).
pub async fn private_target(url: &Url) -> Option<String> {
    if let Some(why) = private_host(url) {
        return Some(why.to_owned());
    }
    let host = url.host_str()?;
    let (ip, why) = resolves_private(host, url.port_or_known_default()?).await?;
    Some(format!("a name that resolves to {ip}, {why}"))
}

/// The first private address `host` resolves to; `None` when it resolves
/// to none, or not at all within [`RESOLVE_TIMEOUT`].
async fn resolves_private(host: &str, port: u16) -> Option<(IpAddr, &'static str)> {
    let lookup = tokio::net::lookup_host((host, port));
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .ok()?
        .ok()?;
    addrs
        .map(|addr| addr.ip())
        .find_map(|ip| private_ip(ip).map(|why| (ip, why)))
}

fn private_name(name: &str) -> Option<&'static str> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        Some("a loopback name")
    } else if name.ends_with(".internal") {
        Some("a Fly-internal name (.internal)")
    } else if name.ends_with(".flycast") {
        Some("a Fly-internal name (.flycast)")
    } else {
        None
    }
}

/// RFC 1918, loopback, link-local and unique-local (Fly's `fdaa::/16` among them).
pub fn private_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => private_v6(v6),
        },
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address (RFC 1918)")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else {
        None
    }
}

fn private_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if first == 0xfdaa {
        Some("a Fly-internal address (fdaa::/16)")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique-local address (fc00::/7)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else {
        None
    }
}

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
            "webhooks: Chatwoot {} signs account webhooks (4.12 and later) but CHATWOOT_WEBHOOK_SECRETS \
             is empty: goldrelay refuses every signed event, so no reply is ever confirmed; \
             set it to the webhook's secret from Chatwoot",
            show(v)
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
            "webhooks: {PUBLIC_URL} is not set, so whether Chatwoot {} can deliver webhooks \
             to goldrelay (4.14 refuses private addresses) was not checked",
            show(v)
        )));
    };
    let why = private_target(url).await?;
    Some(Check::warn(private_url_line(url, &why, v)))
}

/// The one line both `check-config` and its tests name the pitfall by.
fn private_url_line(url: &Url, why: &str, v: Version) -> String {
    format!(
        "webhooks: {PUBLIC_URL} {} is {why}, and Chatwoot {} (4.14 and later) refuses to deliver \
         webhooks to private addresses unless SAFE_FETCH_ALLOW_PRIVATE_NETWORK, \
         WEBHOOK_ALLOWED_PRIVATE_HOSTS or WEBHOOK_ALLOWED_PRIVATE_CIDRS allows it: \
         no reply will ever be confirmed",
        url.as_str(),
        show(v)
    )
}

fn show(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_not_by_text() {
        assert!(Version::parse("4.14.0").unwrap() >= REFUSES_PRIVATE_SINCE);
        assert!(Version::parse("v4.9.2").unwrap() < SIGNS_SINCE);
        assert!(Version::parse("4.13.1-ce").unwrap() < REFUSES_PRIVATE_SINCE);
        assert!(Version::parse("5").unwrap() >= REFUSES_PRIVATE_SINCE);
        assert_eq!(Version::parse("unknown"), None);
    }

    #[test]
    fn private_and_fly_internal_hosts_are_named_and_public_ones_are_not() {
        let private = [
            "http://10.0.0.5/",
            "http://172.20.1.1/",
            "http://192.168.1.1/",
            "http://127.0.0.1:8080/",
            "http://169.254.1.1/",
            "http://[::1]/",
            "http://[fdaa:0:1::3]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.1.2.3]/",
            "http://goldrelay.internal/",
            "http://goldrelay.flycast/",
            "http://localhost:8080/",
        ];
        for raw in private {
            assert!(private_host(&Url::parse(raw).unwrap()).is_some(), "{raw}");
        }
        for raw in [
            "https://goldrelay.fly.dev/",
            "http://8.8.8.8/",
            "http://172.32.0.1/",
            "http://[2a09:8280::1]/",
        ] {
            assert_eq!(private_host(&Url::parse(raw).unwrap()), None, "{raw}");
        }
    }

    #[tokio::test]
    async fn a_name_is_judged_by_the_addresses_it_resolves_to() {
        let (ip, why) = resolves_private("localhost", 80).await.expect("resolves");
        assert!(ip.is_loopback(), "{ip}");
        assert_eq!(why, "a loopback address");
        assert_eq!(resolves_private("no-such-host.invalid", 80).await, None);
    }
}
