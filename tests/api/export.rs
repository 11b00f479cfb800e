//! The gold dataset export: `GET /api/gold-replies/export` and
//! `goldrelay replies export`, cut off part-way and resumed.

use crate::helpers::{
    assert_problem, database_url, spawn_app_with, TestApp, OPERATOR_TOKEN, TOKEN,
};
use assert_cmd::Command;
use chrono::{Duration as Age, Utc};
use goldrelay::config::DatabaseUrl;
use goldrelay::domain::GoldReply;
use goldrelay::sandbox::SandboxConfig;
use serde_json::{json, Value};
use std::collections::HashSet;
use tempfile::TempDir;

/// A viewer's token (`GOLDRELAY_VIEWER_TOKENS`): reads, changes nothing.
pub const VIEWER_TOKEN: &str = "viewer-token-0123456789abcdefghijklmn";

/// A goldrelay whose database already holds `count` decisions, received an
/// hour ago (older than the export's settling time), one millisecond apart.
pub struct Seeded {
    pub app: TestApp,
    pub db_url: String,
    _dir: TempDir,
}

/// Every kind of decision the data team trains on; none is sent, so the
/// worker leaves them alone.
fn decision(i: usize) -> Value {
    let action = ["approve", "reject"][i % 2];
    json!({
        "reply_id": format!("gr-{i:05}"),
        "account_id": 1 + (i % 3) as i64,
        "conversation_id": 1 + (i % 97) as i64,
        "action": action,
        "content": format!("Answer {i}: ünïcode,\n\"quotes\" and <b>markup</b>"),
        "approved_by": "priya@example.com",
        "draft": { "content": format!("draft {i}"), "model": "m-1" },
        "tags": ["billing"],
        "metadata": { "n": i },
    })
}

pub async fn seeded(count: usize) -> Seeded {
    let dir = tempfile::tempdir().unwrap();
    let db_url = database_url(&dir);
    let url = DatabaseUrl::parse(&db_url).unwrap();
    let store = goldrelay::store::open(&url).await.unwrap();
    let start = Utc::now() - Age::hours(1);
    let ids: Vec<usize> = (0..count).collect();
    for chunk in ids.chunks(1000) {
        let writes = chunk.iter().map(|&i| {
            let reply = GoldReply::parse(&decision(i)).unwrap();
            let store = store.clone();
            async move {
                let at = start + Age::milliseconds(i as i64);
                store.ingest(&reply, at).await.unwrap();
            }
        });
        futures_util::future::join_all(writes).await;
    }
    drop(store);
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.database_url = url;
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
    })
    .await;
    Seeded {
        app,
        db_url,
        _dir: dir,
    }
}

async fn export(app: &TestApp, since: &str, token: &str) -> reqwest::Response {
    app.api
        .client
        .get(format!("{}/api/gold-replies/export", app.api.address))
        .query(&[("since", since)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Reads an export until at least `stop_after` lines have arrived, then
/// hangs up mid-stream; returns the complete lines read.
async fn read_until(mut response: reqwest::Response, stop_after: usize) -> Vec<Value> {
    let mut text = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
        if text.iter().filter(|b| **b == b'\n').count() >= stop_after {
            break;
        }
    }
    drop(response);
    // Whatever follows the last newline is a cut line: it is not read.
    let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8(text[..end].to_vec())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["reply_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_cut_off_part_way_resumes_from_its_last_cursor_with_nothing_lost_or_repeated() {
    const COUNT: usize = 10_000;
    let seeded = seeded(COUNT).await;
    let app = &seeded.app;
    let response = export(app, "", VIEWER_TOKEN).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "application/x-ndjson");
    let first = read_until(response, 3_700).await;
    assert!(
        first.len() >= 3_700 && first.len() < COUNT,
        "{}",
        first.len()
    );
    let cursor = first.last().unwrap()["cursor"].as_str().unwrap().to_owned();

    let rest = read_until(export(app, &cursor, OPERATOR_TOKEN).await, usize::MAX).await;
    let all: Vec<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), COUNT, "lines in both parts");
    assert_eq!(unique.len(), COUNT, "a reply came twice");
    let expected: Vec<String> = (0..COUNT).map(|i| format!("gr-{i:05}")).collect();
    assert_eq!(all, expected, "not in the order received");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_line_carries_the_whole_decision_and_the_cursor_after_it() {
    let seeded = seeded(3).await;
    let lines = read_until(export(&seeded.app, "", VIEWER_TOKEN).await, usize::MAX).await;
    assert_eq!(ids(&lines), ["gr-00000", "gr-00001", "gr-00002"]);
    let line = &lines[1];
    let posted = decision(1);
    for field in [
        "reply_id",
        "account_id",
        "conversation_id",
        "action",
        "content",
        "approved_by",
        "draft",
        "tags",
        "metadata",
    ] {
        assert_eq!(line[field], posted[field], "{field}");
    }
    assert_eq!(line["status"], "recorded");
    assert!(line["received_at"].is_string(), "{line}");
    let after_second = line["cursor"].as_str().unwrap();
    let resumed = read_until(export(&seeded.app, after_second, VIEWER_TOKEN).await, 9).await;
    assert_eq!(ids(&resumed), ["gr-00002"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_received_within_the_settling_time_waits_for_the_next_export() {
    let seeded = seeded(1).await;
    seeded
        .app
        .api
        .accept(
            &json!({"reply_id": "just-now", "account_id": 1, "conversation_id": 2,
            "action": "approve", "content": "hi", "approved_by": "sam@example.com"}),
        )
        .await;
    let lines = read_until(export(&seeded.app, "", VIEWER_TOKEN).await, 9).await;
    assert_eq!(ids(&lines), ["gr-00000"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_viewers_and_operators_may_export_and_a_bad_cursor_is_refused() {
    let seeded = seeded(1).await;
    let app = &seeded.app;
    let support = assert_problem(export(app, "", TOKEN).await, 403).await;
    assert_eq!(support["required_role"], "viewer or operator");
    assert_problem(
        export(app, "", "not-a-token-at-all-0123456789abcdef").await,
        401,
    )
    .await;
    let bad = assert_problem(export(app, "yesterday", VIEWER_TOKEN).await, 422).await;
    assert_eq!(bad["type"], "urn:goldrelay:problem:invalid-cursor");
    let bc = assert_problem(
        export(app, "-268648601880935000.a", VIEWER_TOKEN).await,
        422,
    )
    .await;
    assert_eq!(bc["type"], "urn:goldrelay:problem:invalid-cursor");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_export_command_writes_the_same_lines_and_resumes_the_same_way() {
    let seeded = seeded(1_200).await;
    let over_http = read_until(export(&seeded.app, "", VIEWER_TOKEN).await, usize::MAX).await;
    let cursor = over_http[699]["cursor"].as_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("gold.jsonl");
    Command::cargo_bin("goldrelay")
        .unwrap()
        .env_clear()
        .env("DATABASE_URL", &seeded.db_url)
        .args(["replies", "export", "--since", cursor, "--output"])
        .arg(&file)
        .assert()
        .success();
    let written: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(written, over_http[700..], "the command's lines differ");
}
