//! Memory bounded by bytes, not rows: the conversation view and the export
//! read pages cut by their size and stream them, so replies of a quarter of
//! a megabyte come whole, in order, each once; and a client that stops
//! reading is cut off after `GOLDRELAY_REQUEST_TIMEOUT`.

use crate::export::VIEWER_TOKEN;
use crate::helpers::{database_url, spawn_app_with, TestApp};
use chrono::{DateTime, Duration as Age, Utc};
use goldrelay::config::DatabaseUrl;
use goldrelay::domain::GoldReply;
use goldrelay::sandbox::SandboxConfig;
use goldrelay::store::{self, ExportPage, SharedStore, EXPORT_PAGE_BYTES};
use serde_json::{json, Value};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Characters of a large reply's content: two bytes each, 200 KB in all.
const LARGE_CHARS: usize = 100_000;

/// A decision of conversation `conversation` whose content is `chars`
/// two-byte characters, marked with its number so a mix-up shows.
fn decision(i: usize, conversation: i64, chars: usize) -> Value {
    let content = format!("{i:05}:{}", "é".repeat(chars));
    json!({
        "reply_id": format!("big-{i:05}"),
        "account_id": 1,
        "conversation_id": conversation,
        "action": "approve",
        "approved_by": "priya@example.com",
        "content": content,
        "draft": { "content": format!("draft {i}") },
        "metadata": { "n": i },
    })
}

/// A store holding `count` decisions of conversation 7 with `chars`
/// characters each (and one small reply of conversation 8 among them),
/// received an hour ago, a millisecond apart.
async fn seeded_store(dir: &TempDir, count: usize, chars: usize) -> (DatabaseUrl, SharedStore) {
    let url = DatabaseUrl::parse(&database_url(dir)).unwrap();
    let store = store::open(&url).await.unwrap();
    let start = Utc::now() - Age::hours(1);
    for i in 0..count {
        ingest(
            &store,
            &decision(i, 7, chars),
            start + Age::milliseconds(i as i64),
        )
        .await;
    }
    ingest(&store, &decision(count, 8, 10), start).await;
    (url, store)
}

async fn ingest(store: &SharedStore, body: &Value, at: DateTime<Utc>) {
    let reply = GoldReply::parse(body).unwrap();
    store.ingest(&reply, at).await.unwrap();
}

async fn app_on(url: DatabaseUrl, request_timeout: Duration) -> TestApp {
    spawn_app_with(SandboxConfig::default(), |s| {
        s.database_url = url;
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
        s.request_timeout = request_timeout;
    })
    .await
}

fn expected_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("big-{i:05}")).collect()
}

/// Each item's id, after checking its content came whole.
fn checked_ids(items: &[Value], chars: usize) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            let id = item["reply_id"].as_str().unwrap().to_owned();
            let content = item["content"].as_str().unwrap();
            let expected = format!("{}:{}", &id[4..], "é".repeat(chars));
            assert!(content == expected, "{id}: content changed on the way");
            id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_stops_at_its_byte_budget_but_always_holds_one_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = seeded_store(&dir, 3, LARGE_CHARS).await;
    let page = ExportPage {
        after: None,
        until: Utc::now(),
        conversation: Some((1, 7)),
        account: None,
        limit: 500,
    };
    let ids = |records: Vec<store::ExportRecord>| -> Vec<String> {
        records.iter().map(|r| r.reply_id.to_string()).collect()
    };
    let reply_bytes = 2 * LARGE_CHARS;
    let cases = [
        (usize::MAX, 3),
        (reply_bytes + reply_bytes / 2, 2),
        (reply_bytes, 1),
        (1, 1),
    ];
    for (budget, rows) in cases {
        let records = store.export_capped(&page, budget).await.unwrap();
        assert_eq!(ids(records), expected_ids(rows), "budget {budget}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_view_many_pages_long_comes_whole_in_order_each_reply_once() {
    const COUNT: usize = 12;
    const { assert!(COUNT * 2 * LARGE_CHARS > 4 * EXPORT_PAGE_BYTES) };
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = seeded_store(&dir, COUNT, LARGE_CHARS).await;
    let app = app_on(url, Duration::from_secs(10)).await;
    let view: Value = conversation_view(&app, 7).await;
    assert_eq!(view["truncated"], false);
    let items = view["items"].as_array().unwrap();
    assert_eq!(checked_ids(items, LARGE_CHARS), expected_ids(COUNT));
    assert_eq!(items[3]["draft"], json!({ "content": "draft 3" }));
    assert_eq!(items[3]["metadata"], json!({ "n": 3 }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_view_shows_its_first_500_replies_and_says_it_left_some_out() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = seeded_store(&dir, 501, 10).await;
    let app = app_on(url, Duration::from_secs(10)).await;
    let view = conversation_view(&app, 7).await;
    assert_eq!(view["truncated"], true);
    let items = view["items"].as_array().unwrap();
    assert_eq!(checked_ids(items, 10), expected_ids(500));
    let empty = conversation_view(&app, 9).await;
    assert_eq!(empty, json!({ "items": [], "truncated": false }));
}

async fn conversation_view(app: &TestApp, conversation: i64) -> Value {
    let response = app
        .api
        .client
        .get(format!(
            "{}/api/accounts/1/conversations/{conversation}/gold-replies",
            app.api.address
        ))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "application/json");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_many_pages_long_streams_every_reply_once_in_order() {
    const COUNT: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = seeded_store(&dir, COUNT, LARGE_CHARS).await;
    let app = app_on(url, Duration::from_secs(10)).await;
    let text = app
        .api
        .client
        .get(format!("{}/api/gold-replies/export", app.api.address))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (large, small): (Vec<Value>, Vec<Value>) = lines
        .into_iter()
        .partition(|line| line["conversation_id"] == 7);
    assert_eq!(checked_ids(&large, LARGE_CHARS), expected_ids(COUNT));
    assert_eq!(small.len(), 1, "the other conversation's reply");
}

/// 40 replies of 200 KB: more than the kernel's buffers on both sides hold,
/// so goldrelay's writes block once the client stops reading.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_an_export_is_cut_off_after_the_request_timeout() {
    const COUNT: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = seeded_store(&dir, COUNT, LARGE_CHARS).await;
    let app = app_on(url, Duration::from_secs(1)).await;
    let address = app.api.address.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut client = socket.connect(address.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /api/gold-replies/export HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {VIEWER_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut read = vec![0; 64 * 1024];
    client.read_exact(&mut read).await.unwrap();
    assert!(read.starts_with(b"HTTP/1.1 200"));

    // The client stalls for well past the timeout, then reads what is left.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut rest))
        .await
        .expect("the connection ends");
    let whole = 64 * 1024 + rest.len();
    let complete = ended.is_ok() && rest.ends_with(b"\r\n0\r\n\r\n");
    assert!(
        !complete,
        "the stalled client got the whole export ({whole} bytes) instead of being cut off"
    );
    assert!(whole < COUNT * 2 * LARGE_CHARS, "{whole} bytes arrived");
}
