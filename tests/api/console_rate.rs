//! The console under `GOLDRELAY_TOKEN_RATE`, in headless Chromium (see
//! `console.rs`: `#[ignore]`d where Chromium may be missing, run in CI).
//!
//! Requests are counted where they arrive, not where the page says it sent
//! them: the console is served through a small proxy in front of goldrelay
//! that records when each API request arrived and when each 429 left, with
//! its Retry-After. The rate is 1 a second, and the test spends the viewer's
//! budget itself just before the console asks, so the console's request is
//! the one refused.

use crate::console::cdp::{Browser, Tab};
use crate::export::VIEWER_TOKEN;
use crate::helpers::browser::{
    chatwoot_page, console_url, decision, spawn_console, ChatwootOrigin,
};
use crate::helpers::{TestApp, PATIENCE};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use goldrelay::config::Settings;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One API request as the proxy saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    arrived: Instant,
    answered: Instant,
    status: u16,
    /// The Retry-After the browser was given, in seconds.
    retry_after: Option<u64>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

struct Upstream {
    address: String,
    client: reqwest::Client,
    /// When set, every 429 reaches the browser with this Retry-After instead
    /// of goldrelay's (which is 1 s at a rate of 1 a second).
    retry_after: Option<u64>,
    /// How many API requests are still to be refused 429 by the proxy
    /// itself, with `Retry-After: 1`, before any reaches goldrelay.
    refuse: AtomicUsize,
    log: Log,
}

/// A proxy in front of `app`, answering at its own origin.
struct Proxy {
    address: String,
    log: Log,
}

impl Proxy {
    fn start(app: &TestApp, retry_after: Option<u64>) -> Proxy {
        Self::refusing(app, retry_after, 0)
    }

    fn refusing(app: &TestApp, retry_after: Option<u64>, refuse: usize) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let log = Log::default();
        let upstream = web::Data::new(Upstream {
            address: app.api.address.clone(),
            client: reqwest::Client::new(),
            retry_after,
            refuse: refuse.into(),
            log: log.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(upstream.clone())
                .default_service(web::to(forward))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Proxy { address, log }
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The console kept quiet after every 429 and, once the wait after
    /// `refused` was over, sent exactly one request.
    fn assert_one_request_after(&self, refused: &Seen) {
        let seen = self.seen();
        assert_quiet_after_every_429(&seen);
        let after: Vec<_> = seen
            .iter()
            .filter(|s| s.arrived > refused.answered)
            .collect();
        assert_eq!(
            after.len(),
            1,
            "one request once the wait was over: {after:?}"
        );
    }

    /// Waits until an API request answered `status` arrived after `after`.
    async fn wait_for_answer(&self, status: u16, after: Instant) -> Seen {
        self.wait_longer_for_answer(status, after, PATIENCE).await
    }

    async fn wait_longer_for_answer(
        &self,
        status: u16,
        after: Instant,
        patience: Duration,
    ) -> Seen {
        let deadline = Instant::now() + patience;
        loop {
            let found = self
                .seen()
                .into_iter()
                .find(|s| s.arrived > after && s.status == status);
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {status} after {after:?}: {:?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn forward(req: HttpRequest, body: web::Bytes, to: web::Data<Upstream>) -> HttpResponse {
    let arrived = Instant::now();
    let api = req.path().starts_with("/api/");
    let take = |left: usize| left.checked_sub(1);
    if api
        && to
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
            .is_ok()
    {
        to.log.lock().unwrap().push(Seen {
            path: req.uri().to_string(),
            arrived,
            answered: Instant::now(),
            status: 429,
            retry_after: Some(1),
        });
        return HttpResponse::TooManyRequests()
            .insert_header(("retry-after", "1"))
            .finish();
    }
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let mut request = to
        .client
        .request(method, format!("{}{}", to.address, req.uri()))
        .body(body.to_vec());
    for (name, value) in req.headers() {
        if !matches!(name.as_str(), "host" | "connection") {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = request.send().await.expect("goldrelay answers");
    let status = answer.status().as_u16();
    let mut reply = HttpResponse::build(StatusCode::from_u16(status).unwrap());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "retry-after"
        ) {
            reply.append_header((name.as_str(), value.as_bytes()));
        }
    }
    let goldrelays = answer.headers().get("retry-after").map(|v| {
        let seconds = v.to_str().unwrap().parse::<u64>();
        seconds.expect("Retry-After in seconds")
    });
    let retry_after = match (status, to.retry_after) {
        (429, Some(seconds)) => Some(seconds),
        _ => goldrelays,
    };
    if let Some(seconds) = retry_after {
        reply.insert_header(("retry-after", seconds.to_string()));
    }
    let body = answer.bytes().await.expect("goldrelay's body");
    if api {
        to.log.lock().unwrap().push(Seen {
            path: req.uri().to_string(),
            arrived,
            answered: Instant::now(),
            status,
            retry_after,
        });
    }
    reply.body(body)
}

/// No API request arrived after a 429 left and before its Retry-After was
/// over. (The browser got the 429 after it left, so this cannot be early.)
fn assert_quiet_after_every_429(seen: &[Seen]) {
    for refused in seen.iter().filter(|s| s.status == 429) {
        let wait = Duration::from_secs(refused.retry_after.expect("a 429 says when"));
        for later in seen.iter().filter(|s| s.arrived > refused.answered) {
            let gap = later.arrived - refused.answered;
            assert!(
                gap >= wait,
                "{} came {gap:?} after a 429 that asked for {wait:?}",
                later.path
            );
        }
    }
}

async fn spawn_rated(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_console(|s| {
        s.token_rate = 1;
        tweak(s);
    })
    .await
}

/// A decision that is stored and never sent.
async fn rejected(app: &TestApp, reply_id: &str, conversation_id: i64) {
    let body = decision(reply_id, conversation_id, "reject", "No.");
    app.api.accept(&body).await;
}

/// Spends the viewer's budget (same token, same address as the proxy's) so
/// the console's next request is over the rate.
async fn spend_the_viewers_budget(app: &TestApp) {
    let spent = app
        .api
        .client
        .get(format!("{}/api/gold-replies", app.api.address))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        [200, 429].contains(&spent.status().as_u16()),
        "{}",
        spent.status()
    );
}

const MESSAGE: &str = "document.getElementById('message').textContent";

/// Waits for the calm line and returns the seconds it names.
async fn wait_for_slow_down(tab: &Tab<'_>, frame: Option<&str>) -> u64 {
    let said = tab
        .wait_for_in(
            frame,
            &format!("{MESSAGE}.includes('slow down') && {MESSAGE}"),
        )
        .await;
    let said = said.as_str().unwrap();
    let seconds = said
        .strip_prefix("goldrelay asked the console to slow down; trying again in ")
        .and_then(|rest| rest.strip_suffix(" s"))
        .unwrap_or_else(|| panic!("not the calm line: {said:?}"));
    seconds.parse().unwrap()
}

const CARDS: &str = "document.querySelectorAll('#replies .card').length";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn a_throttled_console_sends_nothing_before_retry_after_and_then_shows_the_view() {
    let app = spawn_rated(|_| {}).await;
    rejected(&app, "rate-1", 7).await;
    let proxy = Proxy::start(&app, None);
    let browser = Browser::launch().await;
    let fragment = format!("token={VIEWER_TOKEN}&account=1&conversation=7");
    let url = console_url(&proxy.address, &fragment);
    let tab = browser.open(&url, 800, 600).await;
    tab.wait_for(&format!("{CARDS} === 1")).await;
    tab.eval(&format!(
        "document.getElementById('replies').replaceChildren(); {MESSAGE} = ''"
    ))
    .await;

    let asked = Instant::now();
    spend_the_viewers_budget(&app).await;
    tab.eval("document.getElementById('conversation-form').requestSubmit(); true")
        .await;
    let refused = proxy.wait_for_answer(429, asked).await;
    let named = wait_for_slow_down(&tab, None).await;
    assert!(
        (1..=2).contains(&named),
        "goldrelay asked for 1 s: {named} s"
    );

    let shown = proxy.wait_for_answer(200, refused.answered).await;
    tab.wait_for(&format!("{CARDS} === 1 && {MESSAGE} === ''"))
        .await;
    proxy.assert_one_request_after(&refused);
    assert!(shown.path.contains("/conversations/7/"), "{}", shown.path);
}

/// How often the Chatwoot page was asked for its context.
async fn asked(tab: &Tab<'_>) -> u64 {
    tab.eval("window.asked").await.as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn as_a_dashboard_app_the_console_does_not_refetch_every_3_s_shown_or_throttled() {
    let chatwoot = ChatwootOrigin::bind().await;
    let origin = chatwoot.origin.clone();
    let app = spawn_rated(|s| s.chatwoot_base_url = origin.parse().unwrap()).await;
    rejected(&app, "rate-12", 12).await;
    // Goldrelay's Retry-After is 1 s at this rate; 4 s shows it is the
    // server's word the console waits for, not a guess of its own.
    let proxy = Proxy::start(&app, Some(4));
    let console = console_url(&proxy.address, &format!("token={VIEWER_TOKEN}"));
    chatwoot.serve(chatwoot_page(&console));
    let browser = Browser::launch().await;
    let tab = browser.open(&format!("{origin}/"), 900, 700).await;
    let frame = tab.child_frame().await;

    // Conversation 11 has no reply: shown empty, and not fetched again
    // however often Chatwoot is asked.
    let empty = "!document.getElementById('conversation-empty').hidden \
         && document.getElementById('conversation-title').textContent.includes('Conversation 11')";
    tab.wait_for_in(Some(&frame), empty).await;
    let first = asked(&tab).await;
    let deadline = Instant::now() + PATIENCE;
    while asked(&tab).await < first + 2 {
        assert!(Instant::now() < deadline, "Chatwoot was not asked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.seen().len(), 1, "refetched: {:?}", proxy.seen());

    // A switch while over the rate: one 429, then nothing until it is over.
    let switched = Instant::now();
    spend_the_viewers_budget(&app).await;
    assert_eq!(tab.eval("switchTo(12)").await, true);
    let refused = proxy.wait_for_answer(429, switched).await;
    let named = wait_for_slow_down(&tab, Some(&frame)).await;
    assert!(
        (4..=5).contains(&named),
        "the proxy asked for 4 s: {named} s"
    );
    let while_throttled = asked(&tab).await;
    let shows_12 = "document.querySelector('#replies [data-reply-id=\"rate-12\"]') !== null";
    tab.wait_for_in(Some(&frame), shows_12).await;
    assert!(
        asked(&tab).await > while_throttled,
        "Chatwoot was not asked while the console waited"
    );
    proxy.assert_one_request_after(&refused);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn after_each_429_in_a_row_the_console_waits_twice_as_long_at_least() {
    let app = spawn_rated(|_| {}).await;
    rejected(&app, "rate-3", 7).await;
    // Three refusals, each asking for 1 s: the console waits 1, 2, then 4 s.
    let proxy = Proxy::refusing(&app, None, 3);
    let browser = Browser::launch().await;
    let fragment = format!("token={VIEWER_TOKEN}&account=1&conversation=7");
    let url = console_url(&proxy.address, &fragment);
    let opened = Instant::now();
    let tab = browser.open(&url, 800, 600).await;
    let patience = Duration::from_secs(30);
    proxy.wait_longer_for_answer(200, opened, patience).await;
    tab.wait_for(&format!("{CARDS} === 1 && {MESSAGE} === ''"))
        .await;
    let seen = proxy.seen();
    assert_quiet_after_every_429(&seen);
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [429, 429, 429, 200], "{seen:?}");
    for (i, least) in [1, 2, 4].into_iter().enumerate() {
        let gap = seen[i + 1].arrived - seen[i].answered;
        assert!(
            gap >= Duration::from_secs(least),
            "after 429 number {}: {gap:?}, not at least {least} s",
            i + 1
        );
    }
}
