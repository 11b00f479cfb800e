//! Which account webhooks a Chatwoot release signs or refuses to deliver, and
//! what it counts as a private target; `check-config` and smoke both judge by it.

use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Chatwoot's first release that signs account webhooks.
pub const SIGNS_SINCE: Version = Version(4, 12, 0);
/// Chatwoot's first release that refuses to deliver webhooks to private addresses
/// (`lib/webhooks/private_network_policy.rb`).
pub const REFUSES_PRIVATE_SINCE: Version = Version(4, 14, 0);

/// How long resolving goldrelay's name may take.
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

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What release `v` does with a private target and which of its settings let
/// one through, for the middle of a pitfall line.
pub fn refuses_private(v: Version) -> String {
    format!(
        "Chatwoot {v} (4.14 and later) refuses to deliver webhooks to private addresses \
         unless SAFE_FETCH_ALLOW_PRIVATE_NETWORK, WEBHOOK_ALLOWED_PRIVATE_HOSTS or \
         WEBHOOK_ALLOWED_PRIVATE_CIDRS allows it"
    )
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

/// Why a host is one Chatwoot 4.14+ will not deliver to, or `None` for a public one.
fn private_host(url: &Url) -> Option<&'static str> {
    let host = url.host_str()?;
    match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => private_ip(ip),
        Err(_) => private_name(host),
    }
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
fn private_ip(ip: IpAddr) -> Option<&'static str> {
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
        assert_eq!(Version::parse("v4.14.2-ce").unwrap().to_string(), "4.14.2");
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
