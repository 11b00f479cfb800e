//! `goldrelay check-config` names each deploy pitfall of current Chatwoot in
//! one line (docs/deploy.md, "Deploy pitfalls"), against the sandbox set up
//! to show it, and stays quiet about it when the sandbox does not.

use crate::helpers::{TOKEN, WEBHOOK_SECRET};
use assert_cmd::Command;
use goldrelay::sandbox::{self, Faults, SandboxConfig, SandboxHandle};

/// The lines of `check-config` against `chatwoot`, with `vars` on top of a valid environment.
async fn check_config(chatwoot: &SandboxHandle, vars: &[(&str, &str)]) -> (bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::cargo_bin("goldrelay").unwrap();
    cmd.env_clear()
        .env("GOLDRELAY_TOKENS", TOKEN)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/check.db", dir.path().display()),
        )
        .env("CHATWOOT_BASE_URL", chatwoot.base_url())
        .env("CHATWOOT_API_TOKEN", SandboxConfig::default().user_token)
        .env("CHATWOOT_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .envs(vars.iter().copied())
        .arg("check-config");
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    drop(dir);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout.lines().map(str::to_owned).collect();
    (output.status.success(), lines)
}

fn chatwoot(version: &str) -> SandboxHandle {
    let config = SandboxConfig {
        version: version.into(),
        ..SandboxConfig::default()
    };
    sandbox::start(config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// The one line that starts with `WARN` and holds every one of `words`.
fn warning<'a>(lines: &'a [String], words: &[&str]) -> Option<&'a String> {
    lines
        .iter()
        .find(|l| l.starts_with("WARN") && words.iter().all(|w| l.contains(w)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fly_internal_public_url_is_named_when_chatwoot_refuses_private_webhooks() {
    let cw = chatwoot("4.14.0");
    for url in [
        "http://goldrelay.internal:8080",
        "http://[fdaa:0:1::3]:8080",
    ] {
        let (ok, lines) = check_config(&cw, &[("GOLDRELAY_PUBLIC_URL", url)]).await;
        assert!(ok, "a warning is not a failure: {lines:#?}");
        let line = warning(
            &lines,
            &["GOLDRELAY_PUBLIC_URL", "4.14.0", "private addresses"],
        );
        assert!(
            line.is_some_and(|l| l.contains("WEBHOOK_ALLOWED_PRIVATE_HOSTS")),
            "{lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_public_url_is_not_a_pitfall_before_chatwoot_4_14() {
    let cw = chatwoot("4.13.0");
    let (ok, lines) = check_config(&cw, &[("GOLDRELAY_PUBLIC_URL", "http://10.0.0.7:8080")]).await;
    assert!(ok, "{lines:#?}");
    assert!(lines.iter().all(|l| !l.starts_with("WARN")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_url_on_the_internet_is_not_a_pitfall() {
    let cw = chatwoot("4.14.0");
    let url = ("GOLDRELAY_PUBLIC_URL", "https://goldrelay.fly.dev");
    let (ok, lines) = check_config(&cw, &[url]).await;
    assert!(ok, "{lines:#?}");
    assert!(lines.iter().all(|l| !l.starts_with("WARN")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_bot_token_is_named_as_unable_to_prevent_duplicates() {
    let cw = chatwoot("4.13.0");
    let bot = SandboxConfig::default().bot_token.unwrap();
    let (ok, lines) = check_config(&cw, &[("CHATWOOT_API_TOKEN", &bot)]).await;
    assert!(ok, "{lines:#?}");
    assert!(
        warning(
            &lines,
            &["agent-bot token", "duplicates cannot be prevented"]
        )
        .is_some(),
        "{lines:#?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("agent-bot")).count(),
        2,
        "named once as a warning, once where the token is checked: {lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(&bot)),
        "no token in the output"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_dropping_underscore_headers_is_named_and_goldrelays_header_passes() {
    let cw = chatwoot("4.13.0");
    let (_, quiet) = check_config(&cw, &[]).await;
    assert!(
        quiet.iter().all(|l| !l.contains("drops headers")),
        "{quiet:#?}"
    );
    cw.set_faults(Faults {
        drop_underscore_headers: true,
        ..Faults::default()
    });
    let (ok, lines) = check_config(&cw, &[]).await;
    assert!(ok, "goldrelay's own header still gets through: {lines:#?}");
    assert!(
        warning(&lines, &["drops headers with `_`", "api_access_token"]).is_some(),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_webhook_secrets_are_named_when_chatwoot_signs() {
    let no_secrets = [("CHATWOOT_WEBHOOK_SECRETS", "")];
    let (ok, lines) = check_config(&chatwoot("4.12.0"), &no_secrets).await;
    assert!(ok, "{lines:#?}");
    assert!(
        warning(
            &lines,
            &["4.12.0 signs", "CHATWOOT_WEBHOOK_SECRETS is empty"]
        )
        .is_some(),
        "{lines:#?}"
    );
    let (_, older) = check_config(&chatwoot("4.11.1"), &no_secrets).await;
    assert!(older.iter().all(|l| !l.starts_with("WARN")), "{older:#?}");
    assert!(
        older
            .iter()
            .any(|l| l.contains("no CHATWOOT_WEBHOOK_SECRETS")),
        "{older:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_url_that_is_not_a_web_url_fails_naming_the_variable() {
    let cw = chatwoot("4.14.0");
    let (ok, lines) = check_config(&cw, &[("GOLDRELAY_PUBLIC_URL", "goldrelay.internal")]).await;
    assert!(!ok, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAIL GOLDRELAY_PUBLIC_URL")),
        "{lines:#?}"
    );
}
