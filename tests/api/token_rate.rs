//! `GOLDRELAY_TOKEN_RATE` over real HTTP: a viewer token (the Dashboard App's,
//! shared by a whole team) has a budget per client address, found from the
//! TCP peer or, only when `GOLDRELAY_CLIENT_IP_HEADER` names it, from a
//! proxy's header; a Support token has one budget wherever it is sent from.
//! The rate is 1 a second, so a second request at once is over it.

use crate::export::VIEWER_TOKEN;
use crate::helpers::{assert_problem, spawn_app_with, TestApp, TOKEN};
use goldrelay::config::Settings;
use goldrelay::sandbox::SandboxConfig;
use std::net::IpAddr;

const HEADER: &str = "Fly-Client-IP";

async fn spawn(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(SandboxConfig::default(), |s| {
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
        s.token_rate = 1;
        tweak(s);
    })
    .await
}

/// `GET path` with `token`, sent from the loopback address `from` and
/// carrying `Fly-Client-IP: told` when given.
async fn get(
    app: &TestApp,
    path: &str,
    token: &str,
    from: &str,
    told: Option<&str>,
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut request = client
        .get(format!("{}{path}", app.api.address))
        .bearer_auth(token);
    if let Some(told) = told {
        request = request.header(HEADER, told);
    }
    request.send().await.expect("request sent")
}

/// A viewer's read of the list.
async fn list(app: &TestApp, from: &str, told: Option<&str>) -> reqwest::Response {
    get(app, "/api/gold-replies", VIEWER_TOKEN, from, told).await
}

/// Asserts a 429 problem that says when to come back; its detail.
async fn assert_refused(response: reqwest::Response) -> String {
    let wait = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .expect("Retry-After is a number of seconds");
    assert!(wait >= 1, "Retry-After: {wait}");
    let problem = assert_problem(response, 429).await;
    assert_eq!(problem["type"], "urn:goldrelay:problem:rate-limited");
    problem["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_viewer_token_has_a_budget_per_client_address_found_from_the_tcp_peer() {
    let app = spawn(|_| {}).await;
    assert_eq!(list(&app, "127.0.0.2", None).await.status(), 200);
    let detail = assert_refused(list(&app, "127.0.0.2", None).await).await;
    assert!(detail.contains("from your address"), "{detail}");
    assert_eq!(list(&app, "127.0.0.3", None).await.status(), 200);
    assert_refused(list(&app, "127.0.0.3", None).await).await;
}

#[tokio::test]
async fn the_client_address_header_is_ignored_unless_it_is_configured() {
    let app = spawn(|_| {}).await;
    assert_eq!(
        list(&app, "127.0.0.2", Some("192.0.2.1")).await.status(),
        200
    );
    // Another address in the header, the same peer: the same budget.
    assert_refused(list(&app, "127.0.0.2", Some("192.0.2.2")).await).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_address_in_its_header_has_its_own_budget() {
    let app = spawn(|s| s.client_ip_header = Some(HEADER.into())).await;
    // One peer, the proxy, for every client.
    let proxy = "127.0.0.2";
    assert_eq!(list(&app, proxy, Some("192.0.2.1")).await.status(), 200);
    assert_refused(list(&app, proxy, Some("192.0.2.1")).await).await;
    assert_eq!(list(&app, proxy, Some("192.0.2.2")).await.status(), 200);
    assert_refused(list(&app, proxy, Some("192.0.2.2")).await).await;
    // No header, or one that is not an address: the proxy's own budget.
    assert_eq!(list(&app, proxy, None).await.status(), 200);
    assert_refused(list(&app, proxy, Some("unknown")).await).await;
}

#[tokio::test]
async fn a_support_token_has_one_budget_whatever_address_it_is_sent_from() {
    let app = spawn(|s| s.client_ip_header = Some(HEADER.into())).await;
    let read = |from: &'static str, told: &'static str| {
        get(
            &app,
            "/api/gold-replies/nothing-here",
            TOKEN,
            from,
            Some(told),
        )
    };
    assert_eq!(read("127.0.0.2", "192.0.2.1").await.status(), 404);
    let detail = assert_refused(read("127.0.0.3", "192.0.2.2").await).await;
    assert!(!detail.contains("address"), "{detail}");
    // The viewer token's budgets are its own.
    assert_eq!(
        list(&app, "127.0.0.2", Some("192.0.2.1")).await.status(),
        200
    );
}
