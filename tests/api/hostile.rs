//! goldrelay's HTTP surface under hostile or careless clients: roles, whole-
//! request deadlines, what the database cannot hold, HTTP semantics
//! (405, HEAD, query errors) and per-token rates.

use crate::helpers::{
    assert_problem, error_fields, reply, spawn_app, spawn_app_with, TestApp, OPERATOR_TOKEN,
    OTHER_TOKEN, TOKEN,
};
use goldrelay::sandbox::SandboxConfig;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn url(app: &TestApp, path: &str) -> String {
    format!("{}{path}", app.api.address)
}

async fn call(app: &TestApp, method: Method, path: &str, token: &str) -> reqwest::Response {
    app.api
        .client
        .request(method, url(app, path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The operator-only endpoints, as (method, path).
const OPERATOR_ONLY: [(&str, &str); 3] = [
    ("GET", "/api/gold-replies"),
    ("POST", "/api/gold-replies/any-reply/retry"),
    ("GET", "/metrics"),
];

#[tokio::test]
async fn a_support_token_on_an_operator_endpoint_is_told_which_role_it_needs() {
    let app = spawn_app().await;
    for (method, path) in OPERATOR_ONLY {
        let response = call(&app, method.parse().unwrap(), path, TOKEN).await;
        let problem = assert_problem(response, 403).await;
        assert_eq!(problem["type"], "urn:goldrelay:problem:role-required");
        assert_eq!(problem["required_role"], "operator", "{path}");
        assert!(problem["detail"].as_str().unwrap().contains("operator"));
    }
}

#[tokio::test]
async fn an_operator_token_may_do_what_support_does_and_operate() {
    let app = spawn_app().await;
    let posted = app
        .api
        .webhook()
        .bearer_auth(OPERATOR_TOKEN)
        .json(&reply("op-1", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let read = call(&app, Method::GET, "/api/gold-replies/op-1", OPERATOR_TOKEN).await;
    assert_eq!(read.status(), 200);
    let listed: Value = call(&app, Method::GET, "/api/gold-replies", OPERATOR_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["reply_id"], "op-1");
    let metrics = call(&app, Method::GET, "/metrics", OPERATOR_TOKEN).await;
    assert_eq!(metrics.status(), 200);
    let retried = call(
        &app,
        Method::POST,
        "/api/gold-replies/op-1/retry",
        OPERATOR_TOKEN,
    )
    .await;
    assert_ne!(retried.status(), 403);
}

#[tokio::test]
async fn without_operator_tokens_operator_endpoints_say_how_to_turn_them_on() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.operator_tokens.clear()).await;
    for (method, path) in OPERATOR_ONLY {
        for token in [TOKEN, OPERATOR_TOKEN] {
            let response = call(&app, method.parse().unwrap(), path, token).await;
            let problem = assert_problem(response, 403).await;
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.contains("GOLDRELAY_OPERATOR_TOKENS"), "{detail}");
        }
    }
    // Support's endpoints are untouched.
    app.api.accept(&reply("still-open", 1)).await;
}

/// The sum of every `goldrelay_replies{status=…}` series: how many replies
/// the last store refresh counted.
fn replies_counted(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("goldrelay_replies{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(app: &TestApp) -> String {
    let response = call(app, Method::GET, "/metrics", OPERATOR_TOKEN).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn store_gauges_are_refreshed_at_most_once_a_second_however_often_scraped() {
    let app = spawn_app().await;
    let started = Instant::now();
    assert_eq!(replies_counted(&scrape(&app).await), 0.0);
    app.api.accept(&reply("counted", 1)).await;
    // Every scrape that starts within a second of the first one must reuse
    // its numbers: the store was asked once, before the reply existed.
    let mut scrapes = 0;
    while scrapes < 50 {
        let sent = Instant::now();
        let text = scrape(&app).await;
        scrapes += 1;
        if sent.duration_since(started) < Duration::from_millis(950) {
            assert_eq!(
                replies_counted(&text),
                0.0,
                "scrape {scrapes} asked the store"
            );
        }
    }
    // And the cache does expire: the reply shows up once the second is over.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if replies_counted(&scrape(&app).await) == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the gauges never refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_a_408_and_the_server_stays_up() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_with(SandboxConfig::default(), |s| s.request_timeout = timeout).await;
    let address = app.api.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /api/webhooks/gold-replies HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: 262144\r\n\r\n"
    );
    let started = Instant::now();
    write.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        while write.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // The server answers others while this request trickles in.
    let health = reqwest::get(url(&app, "/hc")).await.unwrap();
    assert_eq!(health.status(), 200);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(timeout + Duration::from_secs(3), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(closed.is_ok(), "the connection was never closed");
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
    assert!(took >= timeout, "cut off after {took:?}");
    assert!(
        took < timeout + Duration::from_millis(1500),
        "took {took:?}"
    );
}

#[tokio::test]
async fn nul_characters_are_refused_naming_the_field_and_zero_fractions_are_integers() {
    let app = spawn_app().await;
    let mut body = reply("nul-1", 1);
    body["content"] = json!("before\u{0}after");
    body["draft"] = json!({"k\u{0}": "v"});
    body["tags"] = json!(["fine", "n\u{0}l"]);
    let problem = assert_problem(app.api.post_reply(&body).await, 422).await;
    assert_eq!(error_fields(&problem), ["content", "draft", "tags[1]"]);
    let mut body = reply("float-1", 1);
    body["conversation_id"] = json!(2372.0);
    assert_eq!(app.api.accept(&body).await["conversation_id"], 2372);
    body["reply_id"] = json!("float-2");
    body["conversation_id"] = json!(2372.5);
    let problem = assert_problem(app.api.post_reply(&body).await, 422).await;
    assert_eq!(error_fields(&problem), ["conversation_id"]);
}

/// Every documented path with `{…}` filled in, and its documented methods.
async fn documented(app: &TestApp) -> Vec<(String, Vec<String>)> {
    let doc: Value = reqwest::get(url(app, "/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    paths
        .iter()
        .map(|(path, operations)| {
            let concrete = path.replace("{reply_id}", "r-1").replace("{token}", "t");
            let methods = operations.as_object().unwrap().keys();
            (concrete, methods.map(|m| m.to_uppercase()).collect())
        })
        .collect()
}

#[tokio::test]
async fn a_wrong_method_on_a_known_path_is_a_405_with_allow() {
    let app = spawn_app().await;
    for (path, methods) in documented(&app).await {
        let response = call(&app, Method::DELETE, &path, OPERATOR_TOKEN).await;
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        let problem = assert_problem(response, 405).await;
        assert_eq!(problem["type"], "urn:goldrelay:problem:method-not-allowed");
        let mut expected = methods.clone();
        if methods.iter().any(|m| m == "GET") {
            expected.push("HEAD".into());
        }
        let mut allowed: Vec<String> = allow.split(", ").map(str::to_owned).collect();
        allowed.sort();
        expected.sort();
        assert_eq!(allowed, expected, "Allow for {path}");
    }
    let unknown = call(&app, Method::DELETE, "/nowhere", OPERATOR_TOKEN).await;
    assert_problem(unknown, 404).await;
}

#[tokio::test]
async fn head_works_wherever_get_does() {
    let app = spawn_app().await;
    app.api.accept(&reply("r-1", 1)).await;
    for (path, methods) in documented(&app).await {
        if !methods.iter().any(|m| m == "GET") {
            continue;
        }
        let get = call(&app, Method::GET, &path, OPERATOR_TOKEN).await;
        let head = call(&app, Method::HEAD, &path, OPERATOR_TOKEN).await;
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "HEAD {path}"
        );
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has a body"
        );
    }
}

#[tokio::test]
async fn query_strings_are_read_after_authentication_and_refused_as_problems() {
    let app = spawn_app().await;
    let anonymous = app
        .api
        .client
        .get(url(&app, "/api/gold-replies?limit=many&%%%"))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401).await;
    let cases = [
        ("limit=many", 400, "malformed-query"),
        ("account_id=%FF%FE&limit=1", 400, "malformed-query"),
        ("status=lost", 422, "invalid-query"),
        ("limit=0", 422, "invalid-query"),
        ("cursor=not-a-cursor", 422, "invalid-cursor"),
        ("cursor=-268648601880935.a", 422, "invalid-cursor"),
        ("conversation_id=0", 422, "invalid-query"),
    ];
    for (query, status, slug) in cases {
        let path = format!("/api/gold-replies?{query}");
        let response = call(&app, Method::GET, &path, OPERATOR_TOKEN).await;
        let problem = assert_problem(response, status).await;
        assert_eq!(
            problem["type"],
            format!("urn:goldrelay:problem:{slug}"),
            "{query}"
        );
    }
}

#[tokio::test]
async fn a_token_past_its_rate_gets_429_with_retry_after_and_others_are_unaffected() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.token_rate = 2).await;
    app.api.accept(&reply("rated", 1)).await;
    let mut limited = None;
    for _ in 0..10 {
        let response = call(&app, Method::GET, "/api/gold-replies/rated", TOKEN).await;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("10 requests in a row at 2/s were never limited");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let problem = assert_problem(limited, 429).await;
    assert_eq!(problem["type"], "urn:goldrelay:problem:rate-limited");
    // Another token has a budget of its own, and what was accepted stays so.
    let other = call(&app, Method::GET, "/api/gold-replies/rated", OTHER_TOKEN).await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.json::<Value>().await.unwrap()["reply_id"], "rated");
}

#[tokio::test]
async fn a_head_that_never_completes_is_cut_off_with_a_408() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_with(SandboxConfig::default(), |s| s.request_timeout = timeout).await;
    let address = app.api.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /hc HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(timeout * 4, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was never closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < timeout + Duration::from_millis(1500));
}
