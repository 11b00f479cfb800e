//! The JSON and JUnit reports parse and say what happened.

use crate::helpers::{check, json_report, run, start, stdout, MISSING_CONVERSATION};
use chrono::DateTime;

const ORDER: [&str; 7] = [
    "relay.health",
    "relay.auth",
    "relay.validation",
    "relay.delivery",
    "relay.idempotency",
    "chatwoot.health",
    "chatwoot.message",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_matches_a_passing_run() {
    let stack = start().await;
    let mut cmd = stack.smoke();
    cmd.args(["--format", "json"]);
    let assert = run(cmd).await;
    let report = json_report(&assert);
    assert.code(0);
    assert_eq!(report["tool"], "smoke");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert!(DateTime::parse_from_rfc3339(report["started_at"].as_str().unwrap()).is_ok());
    assert_eq!(report["target"], format!("{}/", stack.relay_url));
    assert_eq!(
        report["chatwoot"],
        format!("{}/", stack.chatwoot.base_url())
    );
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ORDER);
    for name in ORDER {
        let entry = check(&report, name);
        assert_eq!(entry["status"], "pass", "{entry}");
        assert!(
            entry["duration_ms"].is_u64() && entry["detail"].is_string(),
            "{entry}"
        );
    }
    let counts = serde_json::json!({"total": 7, "pass": 7, "fail": 0, "skip": 0});
    assert_eq!(report["counts"], counts);
    assert_eq!(report["exit_code"], 0);
    let messages = stack.smoke_messages(crate::helpers::CONVERSATION);
    assert_eq!(
        report["reply_id"],
        messages[0].content_attributes["gold_reply_id"]
    );
    let trace_id = report["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a W3C trace id: {trace_id:?}"
    );
    let delivery = check(&report, "relay.delivery")["detail"].as_str().unwrap();
    assert!(
        delivery.starts_with(&format!("delivered as Chatwoot message {}", messages[0].id)),
        "{delivery}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_junit_report_parses_and_matches_a_failing_run() {
    let stack = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smoke.xml");
    let mut args = stack.args();
    args.conversation = MISSING_CONVERSATION;
    let mut cmd = args.command();
    cmd.args(["--skip", "chatwoot.health", "--format", "junit", "--output"])
        .arg(&path);
    let assert = run(cmd).await;
    let out = stdout(&assert);
    assert.code(1);
    assert!(
        out.contains("✗ relay.delivery"),
        "stdout keeps the human lines:\n{out}"
    );
    let xml = std::fs::read_to_string(&path).expect("the report was written");
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .expect("a testsuite");
    assert_eq!(suite.attribute("tests"), Some("7"));
    assert_eq!(suite.attribute("failures"), Some("2"));
    assert_eq!(suite.attribute("skipped"), Some("1"));
    let cases: Vec<_> = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let names: Vec<_> = cases.iter().filter_map(|c| c.attribute("name")).collect();
    assert_eq!(names, ORDER);
    let outcome = |name: &str| {
        let case = cases
            .iter()
            .find(|c| c.attribute("name") == Some(name))
            .unwrap();
        let child = case.children().find(roxmltree::Node::is_element).unwrap();
        (
            child.tag_name().name().to_owned(),
            child.attribute("message").map(str::to_owned),
        )
    };
    let (tag, message) = outcome("relay.delivery");
    assert_eq!(tag, "failure");
    assert!(message.unwrap().contains("Resource could not be found"));
    assert_eq!(outcome("chatwoot.message").0, "failure");
    assert_eq!(
        outcome("chatwoot.health"),
        ("skipped".into(), Some("skipped by --skip".into()))
    );
    assert_eq!(outcome("relay.health").0, "system-out");
    let reply_id = suite
        .descendants()
        .find(|n| n.attribute("name") == Some("reply_id"))
        .and_then(|n| n.attribute("value"))
        .expect("the reply_id property");
    let creates = stack.chatwoot.creates();
    assert_eq!(creates[0].gold_reply_id.as_deref(), Some(reply_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_report_file_holds_the_lines_stdout_showed() {
    let stack = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smoke.txt");
    let mut cmd = stack.smoke();
    cmd.arg("--output").arg(&path);
    let assert = run(cmd).await;
    let out = stdout(&assert);
    assert.code(0);
    let file = std::fs::read_to_string(&path).unwrap();
    let without_timings = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split("  ").next().unwrap_or(l).to_owned())
            .collect()
    };
    assert_eq!(without_timings(&file)[..8], without_timings(&out)[..8]);
    assert!(
        file.lines().last().unwrap().starts_with("PASSED: 7 passed"),
        "{file}"
    );
}
