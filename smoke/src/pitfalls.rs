//! Deploy pitfalls of current Chatwoot, named in one line each after the
//! checks: each is a deploy that passes its checks and still does not do what
//! the operator expects (goldrelay's docs/deploy.md, "Deploy pitfalls"). They
//! warn; they never change the exit code.
//!
//! `goldrelay check-config` names the same pitfalls from goldrelay's own
//! settings; smoke sees them from outside, through the URLs and the token it was given.

use crate::chatwoot::Seen;
use crate::checks::Run;
use goldrelay::chatwoot::webhook_policy::{
    private_target, refuses_private, Version, REFUSES_PRIVATE_SINCE, SIGNS_SINCE,
};
use reqwest::Url;
use std::time::Duration;

/// How long smoke waits for goldrelay's `/hc` when reading its webhook setting.
const HC_TIMEOUT: Duration = Duration::from_secs(5);

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
        "goldrelay's URL {relay_url} is {why}, and {}: \
         if Chatwoot's webhook points here, no reply will ever be confirmed",
        refuses_private(v)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_only_the_hyphenated_header_carries_is_named_as_a_proxy_pitfall() {
        let found = token(&Seen::User, &Seen::NoToken);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("drops headers with `_`"));
        assert!(token(&Seen::User, &Seen::User).is_empty());
    }
}
