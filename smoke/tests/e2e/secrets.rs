//! No token reaches any output: stdout, stderr, report files, or `--help`.

use crate::helpers::{
    closed_port_url, run, smoke, start, stderr, stdout, Stack, CHATWOOT_TOKEN, TOKEN,
};
use assert_cmd::Command;

fn assert_clean(text: &str, what: &str) {
    for secret in [TOKEN, CHATWOOT_TOKEN] {
        assert!(!text.contains(secret), "a token appears in {what}:\n{text}");
    }
}

/// Runs `cmd` with a report file in `format`, and checks all three outputs.
async fn run_and_check(cmd: Command, format: &str, output: &std::path::Path) {
    let mut cmd = cmd;
    cmd.args(["--format", format, "--output"]).arg(output);
    let assert = run(cmd).await;
    assert_clean(&stdout(&assert), &format!("stdout ({format})"));
    assert_clean(&stderr(&assert), &format!("stderr ({format})"));
    let report = std::fs::read_to_string(output).expect("the report was written");
    assert_clean(&report, &format!("the {format} report"));
}

/// smoke with both tokens given through the environment, as CI does.
fn from_env(stack: &Stack, conversation: &str) -> Command {
    let mut cmd = smoke();
    cmd.env("SMOKE_URL", &stack.relay_url)
        .env("SMOKE_TOKEN", TOKEN)
        .env("SMOKE_ACCOUNT_ID", "1")
        .env("SMOKE_CONVERSATION_ID", conversation)
        .env("SMOKE_CHATWOOT_URL", stack.chatwoot.base_url())
        .env("SMOKE_CHATWOOT_TOKEN", CHATWOOT_TOKEN)
        .env("SMOKE_WAIT", "5s")
        .env("SMOKE_TIMEOUT", "10s");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_any_output_of_passing_or_failing_runs() {
    let stack = start().await;
    let dir = tempfile::tempdir().unwrap();
    for format in ["human", "json", "junit"] {
        let path = dir.path().join(format!("pass.{format}"));
        run_and_check(from_env(&stack, "7"), format, &path).await;
        let path = dir.path().join(format!("dead.{format}"));
        run_and_check(from_env(&stack, "99999"), format, &path).await;
    }
    let mut unreachable = from_env(&stack, "7");
    unreachable
        .env("SMOKE_URL", closed_port_url())
        .env("SMOKE_WAIT", "0s");
    run_and_check(unreachable, "json", &dir.path().join("down.json")).await;
}

#[test]
fn help_does_not_show_tokens_set_in_the_environment() {
    let assert = smoke()
        .env("SMOKE_TOKEN", TOKEN)
        .env("SMOKE_CHATWOOT_URL", "http://chatwoot.test")
        .env("SMOKE_CHATWOOT_TOKEN", CHATWOOT_TOKEN)
        .arg("--help")
        .assert()
        .success();
    assert_clean(&stdout(&assert), "--help");
}

#[test]
fn a_password_in_the_url_is_redacted_from_reports() {
    let url = closed_port_url().replace("http://", "http://ops:hunter2-password@");
    let assert = smoke()
        .args(["--url", &url, "--wait", "0s", "--format", "json"])
        .assert()
        .code(3);
    let out = stdout(&assert);
    assert!(!out.contains("hunter2-password"), "{out}");
    assert!(out.contains("ops:***@"), "{out}");
}
