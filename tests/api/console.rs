//! The console in a real headless Chromium (Debian's `chromium`), driven over
//! the DevTools protocol (see `console/cdp.rs` for why a pipe and not a crate).
//! These tests are `#[ignore]`d where Chromium may be missing; CI installs it
//! and runs them with `GOLDRELAY_BROWSER_TESTS=1 … -- --include-ignored`, and
//! there a missing Chromium fails loudly, never silently.

pub(crate) mod cdp;

use crate::export::VIEWER_TOKEN;
use crate::helpers::browser::{
    chatwoot_page, console_url, decision, screenshot_path, spawn_console, ChatwootOrigin,
};
use crate::helpers::{creates_of, reply, OPERATOR_TOKEN, PATIENCE};
use cdp::{chromium, Browser, Tab};
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn browser_tests_find_chromium_wherever_they_are_required() {
    let required = std::env::var("GOLDRELAY_BROWSER_TESTS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty());
    if required {
        assert!(
            chromium().is_some(),
            "GOLDRELAY_BROWSER_TESTS=1 or CI is set, but Chromium is missing: \
             apt-get install -y chromium (looked on PATH and at /usr/bin/chromium)"
        );
    }
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_that_lets_chatwoot_frame_it() {
    let app = spawn_console(|_| {}).await;
    let chatwoot = app.chatwoot.base_url();
    let chatwoot = chatwoot.trim_end_matches('/');
    for path in [
        "/console/",
        "/console/app.js",
        "/console/judgement.js",
        "/console/summary.js",
        "/console/app.css",
    ] {
        let response = reqwest::get(format!("{}{path}", app.api.address))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert!(
            csp.ends_with(&format!("frame-ancestors 'self' {chatwoot}")),
            "{path}: {csp}"
        );
    }
    let page = reqwest::get(format!("{}/console/", app.api.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("http"),
        "inline script or a remote asset"
    );
    let missing = reqwest::get(format!("{}/console/nothing.js", app.api.address))
        .await
        .unwrap();
    crate::helpers::assert_problem(missing, 404).await;
}

/// `[reply_id, status]` of every card in the conversation view, in page order.
const CARDS: &str = "[...document.querySelectorAll('#replies .card')]\
     .map(c => [c.dataset.replyId, c.querySelector('.status').textContent])";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn the_conversation_view_lists_a_conversations_replies_in_order_with_their_statuses() {
    let app = spawn_console(|_| {}).await;
    for id in ["cv-1", "cv-2"] {
        app.api.accept(&reply(id, 7)).await;
        app.api.wait_for_status(id, "delivered", PATIENCE).await;
    }
    let edited = "Your refund was sent today.\nIt shows in 3 days.";
    app.api
        .accept(&decision("cv-3", 7, "approve", edited))
        .await;
    app.api.accept(&decision("cv-4", 7, "reject", "No.")).await;
    app.api.accept(&reply("elsewhere", 8)).await;

    let browser = Browser::launch().await;
    let fragment = format!("token={VIEWER_TOKEN}&account=1&conversation=7");
    let tab = browser
        .open(&console_url(&app.api.address, &fragment), 420, 900)
        .await;
    tab.wait_for("document.querySelectorAll('#replies .card').length === 4")
        .await;
    let expected: Vec<Value> = {
        let mut rows = Vec::new();
        for id in ["cv-1", "cv-2", "cv-3", "cv-4"] {
            rows.push(json!([id, app.api.record(id).await["status"]]));
        }
        rows
    };
    assert_eq!(tab.eval(CARDS).await, json!(expected));
    let first = tab
        .eval("document.querySelector('[data-reply-id=\"cv-1\"]').innerText")
        .await;
    let first = first.as_str().unwrap();
    for shown in [
        "Reply cv-1",
        "approved by priya@example.com",
        "accepted",
        "delivered to Chatwoot",
    ] {
        assert!(first.contains(shown), "{shown:?} missing from {first:?}");
    }
    let third = tab
        .eval("document.querySelector('[data-reply-id=\"cv-3\"] .content').textContent")
        .await;
    assert_eq!(third, edited);
    let hash = tab.eval("location.hash").await;
    assert!(
        !hash.as_str().unwrap().contains("token"),
        "token left in the address bar: {hash}"
    );
    tab.screenshot(&screenshot_path("console-conversation.png"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn a_reply_containing_markup_shows_the_markup_and_runs_nothing() {
    let app = spawn_console(|_| {}).await;
    let hostile = "<img src=x onerror=alert(1)>";
    app.api
        .accept(&decision("xss-1", 9, "approve", hostile))
        .await;
    let browser = Browser::launch().await;
    let fragment = format!("token={VIEWER_TOKEN}&account=1&conversation=9");
    let tab = browser
        .open(&console_url(&app.api.address, &fragment), 800, 600)
        .await;
    tab.wait_for("document.querySelector('[data-reply-id=\"xss-1\"]') !== null")
        .await;
    let shown = tab
        .eval("document.querySelector('[data-reply-id=\"xss-1\"] .content').textContent")
        .await;
    assert_eq!(shown, hostile, "the markup is not shown as text");
    // No element was made from the content, so there is nothing that could run.
    assert_eq!(tab.eval("document.querySelectorAll('img').length").await, 0);
    assert_eq!(browser.dialogs(), Vec::<Value>::new(), "a dialog opened");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn as_a_chatwoot_dashboard_app_it_shows_the_agents_conversation_and_follows_a_switch() {
    let chatwoot = ChatwootOrigin::bind().await;
    let origin = chatwoot.origin.clone();
    // Chatwoot's origin is the one frame-ancestors lets frame the console.
    let app = spawn_console(|s| s.chatwoot_base_url = origin.parse().unwrap()).await;
    app.api
        .accept(&decision("ctx-11", 11, "approve", "Hello from 11"))
        .await;
    app.api
        .accept(&decision("ctx-12", 12, "reject", "Hello from 12"))
        .await;
    let console = console_url(&app.api.address, &format!("token={VIEWER_TOKEN}"));
    chatwoot.serve(chatwoot_page(&console));

    let browser = Browser::launch().await;
    let tab = browser.open(&format!("{origin}/"), 900, 860).await;
    let frame = tab.child_frame().await;
    let shows =
        |id: &str| format!("document.querySelector('#replies [data-reply-id=\"{id}\"]') !== null");
    tab.wait_for_in(Some(&frame), &shows("ctx-11")).await;
    let title = tab
        .eval_in(
            Some(&frame),
            "document.getElementById('conversation-title').textContent",
        )
        .await;
    assert!(
        title.as_str().unwrap().contains("Conversation 11"),
        "{title}"
    );
    assert!(
        tab.eval("window.asked").await.as_u64() >= Some(1),
        "never asked fetch-info"
    );
    tab.screenshot(&screenshot_path("console-dashboard-app.png"))
        .await;

    assert_eq!(tab.eval("switchTo(12)").await, true);
    tab.wait_for_in(Some(&frame), &shows("ctx-12")).await;
    assert_eq!(
        tab.eval_in(Some(&frame), CARDS).await,
        json!([["ctx-12", "recorded"]])
    );
}

/// Clicks Retry on `reply_id`'s card, confirms, and returns the message shown.
async fn retry_through_the_page(tab: &Tab<'_>, reply_id: &str) -> String {
    let button = format!("document.querySelector('[data-reply-id=\"{reply_id}\"] .retry')");
    tab.wait_for(&format!("{button} !== null")).await;
    tab.eval("document.getElementById('message').textContent = ''")
        .await;
    tab.eval(&format!("{button}.click()")).await;
    tab.wait_for("!document.getElementById('confirm').hidden")
        .await;
    tab.eval("document.getElementById('confirm-yes').click()")
        .await;
    let message = tab
        .wait_for("document.getElementById('message').textContent")
        .await;
    message.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn a_viewer_token_cannot_retry_a_dead_reply_and_an_operator_token_can() {
    let app = spawn_console(|_| {}).await;
    // Conversation 5000 does not exist in the sandbox: Chatwoot says 404.
    app.api.accept(&reply("dead-1", 5000)).await;
    app.api.wait_for_status("dead-1", "dead", PATIENCE).await;
    let sent_before = creates_of(&app.chatwoot, "dead-1");
    let browser = Browser::launch().await;

    let viewer = format!("token={VIEWER_TOKEN}&view=operator");
    let tab = browser
        .open(&console_url(&app.api.address, &viewer), 1100, 700)
        .await;
    let refused = retry_through_the_page(&tab, "dead-1").await;
    assert!(refused.contains("may not retry"), "{refused}");
    assert_eq!(app.api.record("dead-1").await["status"], "dead");

    let operator = format!("token={OPERATOR_TOKEN}&view=operator");
    let tab = browser
        .open(&console_url(&app.api.address, &operator), 1100, 700)
        .await;
    tab.wait_for("document.querySelector('#health').textContent.includes('ok')")
        .await;
    tab.screenshot(&screenshot_path("console-operator.png"))
        .await;
    let done = retry_through_the_page(&tab, "dead-1").await;
    assert!(done.contains("queued again"), "{done}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while creates_of(&app.chatwoot, "dead-1") == sent_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried reply was never sent again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
