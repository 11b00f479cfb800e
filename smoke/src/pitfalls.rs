//! Deploy pitfalls of current Chatwoot, named in one line each after the
//! checks: each is a deploy that passes its checks and still does not do what
//! the operator expects (goldrelay's docs/deploy.md, "Deploy pitfalls"). They
//! warn; they never change the exit code.
//!
//! `goldrelay check-config` names the same pitfalls from goldrelay's own
//! settings; smoke sees them from outside, through the URLs and the token it was given.

use crate::chatwoot::Seen;
use crate::checks::Run;
use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Chatwoot's first release that signs account webhooks.
const SIGNS_SINCE: Version = Version(4, 12, 0);
/// Chatwoot's first release that refuses to deliver webhooks to private addresses
/// (`lib/webhooks/private_network_policy.rb`).
const REFUSES_PRIVATE_SINCE: Version = Version(4, 14, 0);
/// How long resolving goldrelay's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long smoke waits for goldrelay's `/hc` when reading its webhook setting.
const HC_TIMEOUT: Duration = Duration::from_secs(5);

/// A Chatwoot release as `GET /api` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u32, u32, u32);

impl Version {
    /// `4.14.0`, `v4.14.0` or `4.14.0-ce`; a missing part is 0.
    fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.trim().trim_start_matches('v').split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Every pitfall found, one line each. Needs `--chatwoot-url`; the token
/// pitfalls also need `--chatwoot-token`.
pub async fn find(run: &mut Run, relay_url: &Url) -> Vec<String> {
    let Some(chatwoot) = &run.chatwoot else {
        return Vec::new();
    };
    let version = match chatwoot.api_info().await {
        Ok(answer) => answer.json["version"].as_str().and_then(Version::parse),
        Err(_) => None,
    };
    let mut found = Vec::new();
    if chatwoot.has_token() {
        let hyphen = chatwoot.profile(false).await;
        let underscore = chatwoot.profile(true).await;
        found.extend(token(&hyphen, &underscore));
    }
    if let Some(v) = version {
        found.extend(private_url(relay_url, v).await);
        if v >= SIGNS_SINCE && goldrelay_refuses_events(run).await {
            found.push(format!(
                "goldrelay refuses every webhook event (no CHATWOOT_WEBHOOK_SECRETS) but Chatwoot {v} \
                 signs account webhooks (4.12 and later): no reply will ever be confirmed; \
                 set CHATWOOT_WEBHOOK_SECRETS to the webhook's secret"
            ));
        }
    }
    found
}

/// Pitfalls 2 and 3, from `GET /api/v1/profile` with the token in each header alone.
fn token(hyphen: &Seen, underscore: &Seen) -> Vec<String> {
    let mut found = Vec::new();
    if *hyphen == Seen::Bot {
        found.push(
            "--chatwoot-token is an agent-bot token: it can send but cannot list messages \
             (401 \"not authorized for bots\"), so duplicates cannot be prevented by lookups; \
             give goldrelay and smoke an agent's access token"
                .to_owned(),
        );
    }
    match (hyphen, underscore) {
        (Seen::NoToken, _) => found.push(
            "the Api-Access-Token header (what goldrelay and smoke send) never reaches Chatwoot: \
             a proxy in front of it drops the header"
                .to_owned(),
        ),
        (_, Seen::NoToken) => found.push(
            "a proxy in front of Chatwoot drops headers with `_`: Api-Access-Token (what goldrelay \
             sends) gets through, api_access_token does not, so other tools that send \
             api_access_token will fail (nginx: underscores_in_headers on;)"
                .to_owned(),
        ),
        _ => {}
    }
    found
}

/// Pitfall 1: goldrelay's URL is one Chatwoot 4.14+ will not deliver webhooks to.
async fn private_url(relay_url: &Url, v: Version) -> Option<String> {
    if v < REFUSES_PRIVATE_SINCE {
        return None;
    }
    let why = private_target(relay_url).await?;
    Some(format!(
        "goldrelay's URL {relay_url} is {why}, and Chatwoot {v} (4.14 and later) refuses to deliver \
         webhooks to private addresses unless SAFE_FETCH_ALLOW_PRIVATE_NETWORK, \
         WEBHOOK_ALLOWED_PRIVATE_HOSTS or WEBHOOK_ALLOWED_PRIVATE_CIDRS allows it: \
         if Chatwoot's webhook points here, no reply will ever be confirmed"
    ))
}

/// goldrelay's `/hc` says its webhook endpoint refuses every event.
async fn goldrelay_refuses_events(run: &mut Run) -> bool {
    if run.relay.never_answered() {
        return false;
    }
    match run.relay.health(HC_TIMEOUT).await {
        Ok(answer) => answer.json["webhooks"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("refusing all events")),
        Err(_) => false,
    }
}

/// Why `url` is one Chatwoot 4.14+ will not deliver to: its host itself, or
/// a private address its name resolves to (Chatwoot checks where a name leads).
async fn private_target(url: &Url) -> Option<String> {
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

fn private_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| private_v6(v6), private_v4),
    }
}

/// Why a host is one Chatwoot 4.14+ will not deliver to, or `None` for a public one.
fn private_host(url: &Url) -> Option<&'static str> {
    let host = url.host_str()?;
    match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => private_ip(ip),
        Err(_) => private_name(host),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_not_by_text() {
        assert!(Version::parse("4.14.0").unwrap() >= REFUSES_PRIVATE_SINCE);
        assert!(Version::parse("v4.9.2").unwrap() < SIGNS_SINCE);
        assert!(Version::parse("4.13.1-ce").unwrap() < REFUSES_PRIVATE_SINCE);
        assert_eq!(Version::parse("unknown"), None);
    }

    #[test]
    fn private_and_fly_internal_hosts_are_named_and_public_ones_are_not() {
        for raw in [
            "http://10.0.0.5/",
            "http://172.20.1.1/",
            "http://192.168.1.1/",
            "http://127.0.0.1:8080/",
            "http://169.254.1.1/",
            "http://[::1]/",
            "http://[fdaa:0:1::3]/",
            "http://[::ffff:10.1.2.3]/",
            "http://goldrelay.internal/",
            "http://goldrelay.flycast/",
        ] {
            assert!(private_host(&Url::parse(raw).unwrap()).is_some(), "{raw}");
        }
        for raw in [
            "https://goldrelay.fly.dev/",
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

    #[test]
    fn a_token_only_the_hyphenated_header_carries_is_named_as_a_proxy_pitfall() {
        let found = token(&Seen::User, &Seen::NoToken);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("drops headers with `_`"));
        assert!(token(&Seen::User, &Seen::User).is_empty());
    }
}
