//! The sandbox Chatwoot itself, over real HTTP: each behaviour it copies
//! from Chatwoot 4.13.0 (see `docs/chatwoot.md`), by default or as a fault.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use goldrelay::sandbox::{self, sign, Faults, SandboxConfig, SandboxHandle};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SECRET: &str = "sandbox-test-secret";
const PATIENCE: Duration = Duration::from_secs(5);

struct Chatwoot {
    handle: SandboxHandle,
    http: reqwest::Client,
    user: String,
    bot: String,
}

async fn chatwoot() -> Chatwoot {
    chatwoot_with(SandboxConfig::default()).await
}

async fn chatwoot_with(config: SandboxConfig) -> Chatwoot {
    let (user, bot) = (config.user_token.clone(), config.bot_token.clone().unwrap());
    let handle = sandbox::start(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    Chatwoot {
        handle,
        http: reqwest::Client::new(),
        user,
        bot,
    }
}

impl Chatwoot {
    fn messages_url(&self, conversation: i64) -> String {
        format!(
            "{}/api/v1/accounts/1/conversations/{conversation}/messages",
            self.handle.base_url()
        )
    }

    /// POSTs `body` with the user token in the hyphenated header.
    async fn post(&self, conversation: i64, body: Value) -> reqwest::Response {
        self.post_as(&self.user, conversation, body).await
    }

    async fn post_as(&self, token: &str, conversation: i64, body: Value) -> reqwest::Response {
        self.http
            .post(self.messages_url(conversation))
            .header("Api-Access-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates an outgoing message and returns the 200 body.
    async fn create(&self, conversation: i64, content: &str) -> Value {
        let body = json!({"content": content, "content_attributes": {"gold_reply_id": content}});
        let response = self.post(conversation, body).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// The ids of one page of the list endpoint.
    async fn page(&self, conversation: i64, query: &str) -> Vec<i64> {
        let url = format!("{}?{query}", self.messages_url(conversation));
        let response = self.list(&url, "Api-Access-Token").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let ids = body["payload"].as_array().unwrap().iter();
        ids.map(|m| m["id"].as_i64().unwrap()).collect()
    }

    async fn list(&self, url: &str, header: &str) -> reqwest::Response {
        let request = self.http.get(url).header(header, &self.user);
        request.send().await.unwrap()
    }

    async fn listed(&self, conversation: i64) -> Vec<Value> {
        let response = self
            .list(&self.messages_url(conversation), "Api-Access-Token")
            .await;
        let body: Value = response.json().await.unwrap();
        body["payload"].as_array().unwrap().clone()
    }
}

/// A webhook receiver standing where goldrelay would.
struct Hooks {
    events: mpsc::UnboundedReceiver<Value>,
}

async fn hooks(chatwoot: &Chatwoot) -> Hooks {
    let (sender, events) = mpsc::unbounded_channel();
    let server = HttpServer::new(move || {
        let sender = sender.clone();
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let sender = sender.clone();
                async move {
                    sender.send(verified(&req, &body)).unwrap();
                    HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}/hook", server.addrs()[0]);
    tokio::spawn(server.run());
    chatwoot.handle.set_webhook(url, Some(SECRET.into()));
    Hooks { events }
}

/// The body of a delivery whose signature is `sha256=hex(HMAC(secret, ts + "." + body))`.
fn verified(req: &HttpRequest, body: &[u8]) -> Value {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let ts = header("X-Chatwoot-Timestamp");
    assert_eq!(header("X-Chatwoot-Signature"), sign(SECRET, &ts, body));
    assert!(!header("X-Chatwoot-Delivery").is_empty());
    serde_json::from_slice(body).unwrap()
}

impl Hooks {
    /// Waits for the `event` about message `id`, skipping others.
    async fn about(&mut self, event: &str, id: i64) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            let body = next.expect("the event never came").unwrap();
            if body["event"] == event && body["id"] == id {
                return body;
            }
        }
    }
}

#[tokio::test]
async fn a_create_after_the_client_hung_up_appears_only_later() {
    let cw = chatwoot().await;
    cw.handle.set_faults(Faults {
        commit_late_next: 1,
        commit_after_ms: 3000,
        answer_after_ms: None,
        ..Faults::default()
    });
    let sent = Instant::now();
    let gave_up = cw
        .http
        .post(cw.messages_url(3))
        .header("Api-Access-Token", &cw.user)
        .json(&json!({"content": "late"}))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    assert!(cw.listed(3).await.is_empty(), "not committed yet");
    while cw.listed(3).await.is_empty() {
        assert!(sent.elapsed() < PATIENCE, "the create never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent.elapsed() >= Duration::from_millis(3000));
    assert_eq!(cw.listed(3).await[0]["content"], "late");
}

#[tokio::test]
async fn a_late_commit_answers_later_still_when_asked_to() {
    let cw = chatwoot().await;
    cw.handle.set_faults(Faults {
        commit_late_next: 1,
        commit_after_ms: 200,
        answer_after_ms: Some(700),
        ..Faults::default()
    });
    let sent = Instant::now();
    let body = cw.create(4, "slow").await;
    assert!(sent.elapsed() >= Duration::from_millis(700));
    assert_eq!(cw.listed(4).await[0]["id"], body["id"]);
}

#[tokio::test]
async fn a_422_after_the_commit_leaves_the_message_created() {
    let cw = chatwoot().await;
    cw.handle.set_faults(Faults {
        error_after_commit_next: 1,
        ..Faults::default()
    });
    let response = cw.post(5, json!({"content": "stored anyway"})).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    let text = body["error"].as_str().unwrap();
    assert!(text.starts_with("Redis::CannotConnectError"), "{text}");
    assert!(!text.starts_with("Validation failed"));
    let listed = cw.listed(5).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["content"], "stored anyway");
}

#[tokio::test]
async fn a_422_after_the_commit_can_still_send_the_echo() {
    let cw = chatwoot().await;
    let mut hooks = hooks(&cw).await;
    cw.handle.set_faults(Faults {
        error_after_commit_next: 1,
        error_after_commit_text: Some("ActiveJob::EnqueueError: boom".into()),
        error_after_commit_echo: true,
        ..Faults::default()
    });
    let response = cw.post(6, json!({"content": "echoed"})).await;
    assert_eq!(response.status(), 422);
    let id = cw.listed(6).await[0]["id"].as_i64().unwrap();
    assert_eq!(
        hooks.about("message_created", id).await["content"],
        "echoed"
    );
}

#[tokio::test]
async fn the_list_is_paged_like_message_finder() {
    let cw = chatwoot().await;
    let mut ids = Vec::new();
    for i in 0..130 {
        ids.push(cw.create(7, &format!("m{i}")).await["id"].as_i64().unwrap());
    }
    let range = |from: usize, to: usize| ids[from..to].to_vec();
    assert_eq!(
        cw.page(7, "").await,
        range(110, 130),
        "latest 20, ascending"
    );
    let before = format!("before={}", ids[110]);
    assert_eq!(cw.page(7, &before).await, range(90, 110), "20 older");
    let after = format!("after={}", ids[5]);
    assert_eq!(cw.page(7, &after).await, range(6, 106), "up to 100 after");
    let both = format!("after={}&before={}", ids[5], ids[129]);
    assert_eq!(cw.page(7, &both).await, range(5, 129), "after is inclusive");
}

#[tokio::test]
async fn webhooks_carry_no_status_and_only_the_latest_public_message() {
    let cw = chatwoot().await;
    let mut hooks = hooks(&cw).await;
    let first = cw.create(8, "first").await["id"].as_i64().unwrap();
    let second = cw.create(8, "second").await["id"].as_i64().unwrap();
    let note = cw
        .post(8, json!({"content": "note", "private": true}))
        .await;
    let note = note.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let created = hooks.about("message_created", note).await;
    assert_eq!(created["private"], true);
    assert_eq!(created["message_type"], "outgoing");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(created.get("status").is_none(), "{created}");
    let listed = &created["conversation"]["messages"];
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], second, "the private note is not listed");
    assert!(cw.handle.set_status(first, "delivered", None).await);
    let updated = hooks.about("message_updated", first).await;
    assert!(updated.get("status").is_none());
    assert_eq!(updated["conversation"]["messages"][0]["id"], second);
    assert!(cw.handle.set_status(second, "read", None).await);
    let updated = hooks.about("message_updated", second).await;
    assert_eq!(updated["conversation"]["messages"][0]["status"], "read");
}

#[tokio::test]
async fn only_read_to_delivered_is_refused_and_errors_clear_unless_failed() {
    let cw = chatwoot().await;
    let id = cw.create(9, "hello").await["id"].as_i64().unwrap();
    assert!(cw.handle.set_status(id, "read", None).await);
    assert!(!cw.handle.set_status(id, "delivered", None).await);
    assert_eq!(cw.listed(9).await[0]["status"], "read");
    assert!(
        cw.handle
            .set_status(id, "failed", Some("channel said no"))
            .await
    );
    assert_eq!(
        cw.listed(9).await[0]["content_attributes"]["external_error"],
        "channel said no"
    );
    assert!(cw.handle.set_status(id, "sent", Some("ignored")).await);
    let message = &cw.listed(9).await[0];
    assert_eq!(message["status"], "sent");
    assert!(
        message["content_attributes"]["external_error"].is_null(),
        "{message}"
    );
    assert_eq!(message["content_attributes"]["gold_reply_id"], "hello");
}

#[tokio::test]
async fn an_agent_retry_turns_failed_into_sent_and_empties_the_attributes() {
    let cw = chatwoot().await;
    let mut hooks = hooks(&cw).await;
    let id = cw.create(10, "retry me").await["id"].as_i64().unwrap();
    assert!(
        cw.handle
            .set_status(id, "failed", Some("24 hours passed"))
            .await
    );
    hooks.about("message_updated", id).await;
    assert!(cw.handle.agent_retry(id).await);
    let updated = hooks.about("message_updated", id).await;
    assert_eq!(
        updated["content_attributes"],
        json!({}),
        "the marker is gone"
    );
    assert_eq!(updated["conversation"]["messages"][0]["status"], "sent");
    assert_eq!(cw.listed(10).await[0]["status"], "sent");
    assert!(!cw.handle.agent_retry(999_999).await);
}

#[tokio::test]
async fn rack_attack_answers_429_retry_later_without_retry_after() {
    let cw = chatwoot_with(SandboxConfig {
        rack_attack_limit: Some(3),
        ..SandboxConfig::default()
    })
    .await;
    let url = cw.messages_url(11);
    for _ in 0..3 {
        assert_eq!(cw.list(&url, "Api-Access-Token").await.status(), 200);
    }
    let throttled = cw.list(&url, "Api-Access-Token").await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["content-type"], "text/plain");
    assert!(throttled.headers().get("retry-after").is_none());
    assert_eq!(throttled.text().await.unwrap(), "Retry later\n");
    let health = format!("{}/health", cw.handle.base_url());
    assert_eq!(cw.http.get(health).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn only_a_proxy_fault_adds_retry_after_to_a_429() {
    let cw = chatwoot().await;
    let faults = |retry_after| Faults {
        fail_next: 1,
        fail_status: Some(429),
        retry_after,
        ..Faults::default()
    };
    cw.handle.set_faults(faults(None));
    let plain = cw.post(12, json!({"content": "x"})).await;
    assert_eq!(plain.status(), 429);
    assert!(plain.headers().get("retry-after").is_none());
    cw.handle.set_faults(faults(Some(7)));
    let proxied = cw.post(12, json!({"content": "x"})).await;
    assert_eq!(proxied.headers()["retry-after"], "7");
    assert_eq!(proxied.text().await.unwrap(), "Retry later\n");
}

#[tokio::test]
async fn liquid_fills_contact_name_and_leaves_backticks_alone() {
    let cw = chatwoot().await;
    let content = "Hi {{contact.name}}, I am {{ agent.name }} on #{{conversation.display_id}} \
                   in {{inbox.name}}{{ unknown.thing }}. Type `{{contact.name}}` or\n```\n{{x}}\n```";
    let body = cw.post_as(&cw.bot, 13, json!({"content": content})).await;
    let body: Value = body.json().await.unwrap();
    assert_eq!(
        body["content"],
        "Hi Sandbox Customer, I am Sandbox Bot on #13 in Sandbox API. \
         Type `{{contact.name}}` or\n```\n{{x}}\n```"
    );
    assert_eq!(cw.listed(13).await[0]["content"], body["content"]);
}

#[tokio::test]
async fn liquid_renders_private_notes_keeps_raw_and_skips_broken_templates() {
    let cw = chatwoot().await;
    let note =
        json!({"content": "{{agent.name}} {% raw %}{{contact.name}}{% endraw %}", "private": true});
    let rendered: Value = cw.post(14, note).await.json().await.unwrap();
    assert_eq!(rendered["content"], "Sandbox Agent {{contact.name}}");
    let broken = "Dear {{contact.name}, {% raw %}unclosed";
    let kept: Value = cw
        .post(14, json!({"content": broken}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kept["content"], broken);
}

#[tokio::test]
async fn behind_nginx_an_underscore_token_header_is_dropped() {
    let cw = chatwoot().await;
    let url = cw.messages_url(15);
    assert_eq!(cw.list(&url, "api_access_token").await.status(), 200);
    cw.handle.set_faults(Faults {
        drop_underscore_headers: true,
        ..Faults::default()
    });
    let dropped = cw.list(&url, "api_access_token").await;
    assert_eq!(dropped.status(), 401);
    let body: Value = dropped.json().await.unwrap();
    assert_eq!(
        body,
        json!({"errors": ["You need to sign in or sign up before continuing."]})
    );
    assert_eq!(cw.list(&url, "Api-Access-Token").await.status(), 200);
}
