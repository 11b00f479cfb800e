//! Whole runs and their exit codes.

use crate::helpers::{
    check, closed_port_url, json_report, run, smoke, start, stdout, MISSING_CONVERSATION,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_against_a_healthy_goldrelay_and_its_chatwoot() {
    let stack = start().await;
    let assert = run(stack.smoke()).await;
    let out = stdout(&assert);
    assert.code(0);
    for name in [
        "relay.health",
        "relay.auth",
        "relay.validation",
        "relay.delivery",
        "relay.idempotency",
        "chatwoot.health",
        "chatwoot.message",
    ] {
        assert!(
            out.contains(&format!("✓ {name} ")),
            "{name} did not pass:\n{out}"
        );
    }
    assert!(
        out.contains("PASSED: 7 passed, 0 failed, 0 skipped"),
        "{out}"
    );
    let messages = stack.smoke_messages(crate::helpers::CONVERSATION);
    assert_eq!(messages.len(), 1, "sent once, even though posted twice");
    assert!(messages[0].private, "smoke traffic is a private note");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_to_a_pipe_has_plain_lines_without_a_spinner() {
    let stack = start().await;
    let assert = run(stack.smoke()).await;
    let out = stdout(&assert);
    assert.code(0);
    assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");
    assert_eq!(
        out.lines().count(),
        9,
        "header, seven checks, summary:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_goldrelay_exits_3_and_says_so() {
    let mut cmd = smoke();
    cmd.args([
        "--url",
        &closed_port_url(),
        "--wait",
        "1s",
        "--format",
        "json",
    ]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(3);
    let health = check(&report, "relay.health");
    assert_eq!(health["status"], "fail");
    let detail = health["detail"].as_str().unwrap();
    assert!(detail.contains("could not reach goldrelay"), "{detail}");
    assert_eq!(
        check(&report, "relay.auth")["detail"],
        "goldrelay could not be reached"
    );
    assert_eq!(report["exit_code"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_the_checks_that_need_it_with_a_clear_reason() {
    let stack = start().await;
    let mut args = stack.args();
    args.token = "not-the-token-0123456789abcdefghijklmn".into();
    let mut cmd = args.command();
    cmd.args(["--format", "json"]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(1);
    assert_eq!(check(&report, "relay.health")["status"], "pass");
    assert_eq!(check(&report, "relay.auth")["status"], "pass");
    for name in ["relay.validation", "relay.delivery", "relay.idempotency"] {
        let entry = check(&report, name);
        assert_eq!(entry["status"], "fail", "{entry}");
        let detail = entry["detail"].as_str().unwrap();
        assert!(
            detail.contains("goldrelay refused the token with 401") && detail.contains("--token"),
            "{name}: {detail}"
        );
    }
    assert!(stack
        .smoke_messages(crate::helpers::CONVERSATION)
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_chatwoot_refuses_goes_dead_and_fails_with_goldrelays_reason() {
    let stack = start().await;
    let mut args = stack.args();
    args.conversation = MISSING_CONVERSATION;
    let mut cmd = args.command();
    cmd.args(["--format", "json"]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(1);
    let delivery = check(&report, "relay.delivery");
    assert_eq!(delivery["status"], "fail");
    let detail = delivery["detail"].as_str().unwrap();
    assert!(detail.contains("went dead"), "{detail}");
    assert!(
        detail.contains("Chatwoot answered 404: Resource could not be found"),
        "{detail}"
    );
    let message = check(&report, "chatwoot.message");
    assert_eq!(message["status"], "fail");
    assert!(
        message["detail"].as_str().unwrap().contains("went dead"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_expect_confirmation_delivery_waits_for_chatwoots_webhook() {
    let stack = start().await;
    stack.confirm_through_webhooks();
    let mut cmd = stack.smoke();
    cmd.args(["--expect-confirmation", "--format", "json"]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(0);
    let detail = check(&report, "relay.delivery")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.starts_with("confirmed as Chatwoot message"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_expect_confirmation_a_delivery_never_confirmed_fails_at_the_timeout() {
    let stack = start().await;
    let mut args = stack.args();
    args.timeout = "5s";
    let mut cmd = args.command();
    cmd.args(["--expect-confirmation", "--format", "json"]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(1);
    let detail = check(&report, "relay.delivery")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.starts_with("not confirmed within 5.00s"), "{detail}");
    assert!(
        detail.contains("no confirmation from Chatwoot's webhook"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatwoot_being_down_fails_its_checks_but_is_not_an_unreachable_goldrelay() {
    let stack = start().await;
    let mut args = stack.args();
    args.chatwoot_url = closed_port_url();
    let mut cmd = args.command();
    cmd.args(["--format", "json"]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(1);
    let health = check(&report, "chatwoot.health");
    assert_eq!(health["status"], "fail");
    assert!(health["detail"]
        .as_str()
        .unwrap()
        .contains("could not reach Chatwoot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expect_confirmation_variable_reads_yes_and_no() {
    let stack = start().await;
    let mut args = stack.args();
    args.timeout = "5s";
    let mut no = args.command();
    no.env("SMOKE_EXPECT_CONFIRMATION", "no");
    run(no).await.code(0);
    let mut yes = args.command();
    yes.env("SMOKE_EXPECT_CONFIRMATION", "yes");
    let out = stdout(&run(yes).await.code(1));
    assert!(out.contains("✗ relay.delivery"), "{out}");
    assert!(out.contains("not confirmed within"), "{out}");
}
