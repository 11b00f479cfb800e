//! smoke names each deploy pitfall in one warning line, against a sandbox set
//! up to show it, without failing the run; and it writes GitHub's step summary.

use crate::helpers::{json_report, run, smoke, start, start_with, stdout, Stack};
use goldrelay::sandbox::{Faults, SandboxConfig};
use serde_json::Value;

fn sandbox(version: &str) -> SandboxConfig {
    SandboxConfig {
        version: version.into(),
        ..SandboxConfig::default()
    }
}

/// The checks that need no goldrelay token, reading Chatwoot with `chatwoot_token`.
async fn warnings_with(stack: &Stack, chatwoot_token: &str) -> (String, Vec<String>) {
    let mut cmd = smoke();
    cmd.args(["--url", &stack.relay_url, "--wait", "5s"])
        .args(["--chatwoot-url", &stack.chatwoot.base_url()])
        .args(["--chatwoot-token", chatwoot_token])
        .args(["--format", "json"]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(0);
    let warnings = report["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings list in {report}"))
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect();
    (report.to_string(), warnings)
}

async fn warnings(stack: &Stack) -> Vec<String> {
    warnings_with(stack, crate::helpers::CHATWOOT_TOKEN).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_goldrelay_url_is_named_when_chatwoot_refuses_private_webhooks() {
    let stack = start_with(sandbox("4.14.0"), &[]).await;
    let found = warnings(&stack).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("is a loopback address, and Chatwoot 4.14.0")
            && found[0].contains("WEBHOOK_ALLOWED_PRIVATE_HOSTS"),
        "{found:#?}"
    );
    let older = start().await;
    assert!(warnings(&older).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_bot_token_is_named_as_unable_to_prevent_duplicates() {
    let stack = start().await;
    let bot = SandboxConfig::default().bot_token.unwrap();
    let (report, found) = warnings_with(&stack, &bot).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("agent-bot token") && found[0].contains("duplicates cannot be prevented"),
        "{found:#?}"
    );
    assert!(!report.contains(&bot), "the token is never shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_dropping_underscore_headers_is_named() {
    let stack = start().await;
    stack.chatwoot.set_faults(Faults {
        drop_underscore_headers: true,
        ..Faults::default()
    });
    let found = warnings(&stack).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("drops headers with `_`") && found[0].contains("api_access_token"),
        "{found:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_webhook_secrets_are_named_when_chatwoot_signs() {
    let no_secrets = [("CHATWOOT_WEBHOOK_SECRETS", "")];
    let stack = start_with(sandbox("4.12.0"), &no_secrets).await;
    let found = warnings(&stack).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("no CHATWOOT_WEBHOOK_SECRETS") && found[0].contains("Chatwoot 4.12.0"),
        "{found:#?}"
    );
    let unsigned = start_with(sandbox("4.11.0"), &no_secrets).await;
    assert!(warnings(&unsigned).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_is_one_human_line_and_does_not_fail_the_run() {
    let stack = start_with(sandbox("4.14.0"), &[]).await;
    let mut cmd = smoke();
    cmd.args(["--url", &stack.relay_url, "--wait", "5s"])
        .args(["--chatwoot-url", &stack.chatwoot.base_url()]);
    let assert = run(cmd).await;
    let out = stdout(&assert);
    assert.code(0);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("! warning:"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("Chatwoot 4.14.0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_github_step_summary_is_appended_with_every_check_and_the_reply_id() {
    let stack = start_with(sandbox("4.14.0"), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.md");
    std::fs::write(&summary, "# an earlier step\n").unwrap();
    let mut cmd = stack.smoke();
    cmd.env("GITHUB_STEP_SUMMARY", &summary)
        .args(["--format", "json"]);
    let assert = run(cmd).await;
    let report: Value = json_report(&assert);
    assert.code(0);
    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(text.starts_with("# an earlier step\n"), "appended: {text}");
    assert!(text.contains("### smoke: PASSED: 7 passed"), "{text}");
    for check in report["checks"].as_array().unwrap() {
        let row = format!("| `{}` | ✅ pass |", check["name"].as_str().unwrap());
        assert!(text.contains(&row), "{row} in {text}");
    }
    let reply_id = report["reply_id"].as_str().unwrap();
    assert!(text.contains(reply_id), "{text}");
    assert!(text.contains("**Deploy pitfalls**") && text.contains("Chatwoot 4.14.0"));
    assert!(
        !text.contains(crate::helpers::TOKEN),
        "no token in the summary"
    );
}
