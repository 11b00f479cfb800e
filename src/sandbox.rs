//! The sandbox Chatwoot: an in-memory stand-in that behaves like the real
//! Chatwoot for everything goldrelay uses (see `shared/chatwoot/FACTS.md`),
//! with fault injection. `goldrelay dev`, the tests, `smoke`'s tests and the
//! benchmark all use it as a real HTTP peer.
//!
//! Control endpoints live under `/_sandbox/` and exist only here.

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Chatwoot's per-conversation flood guard: messages per minute.
const FLOOD_LIMIT: usize = 200;
const PAGE: usize = 20;

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// A user token: may create and list messages.
    pub user_token: String,
    /// An agent-bot token: may create messages but not list them, like the real one.
    pub bot_token: Option<String>,
    /// Accounts that exist.
    pub accounts: Vec<i64>,
    /// Conversations 1..=this exist in every account.
    pub conversations: i64,
    /// Where to send signed webhook events, as an account webhook would.
    pub webhook_url: Option<String>,
    /// The webhook secret; without it events go unsigned, like Chatwoot before 4.12.
    pub webhook_secret: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            user_token: "sandbox-user-token".into(),
            bot_token: Some("sandbox-bot-token".into()),
            accounts: vec![1],
            conversations: 1000,
            webhook_url: None,
            webhook_secret: None,
        }
    }
}

/// Faults to inject, set through `POST /_sandbox/faults` or [`SandboxHandle::set_faults`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fail this many of the next message requests (create or list) with `fail_status`.
    pub fail_next: u32,
    /// 503 by default; 429 answers like rack-attack (`text/plain`, `Retry later`).
    pub fail_status: Option<u16>,
    /// Sent as `Retry-After` (seconds) with the failures.
    pub retry_after: Option<u64>,
    /// Delay every message request by this many milliseconds before answering.
    pub delay_ms: u64,
    /// For this many of the next creates: create the message, then wait
    /// `late_ms` before answering (longer than the client's timeout).
    pub late_next: u32,
    pub late_ms: u64,
}

/// A message as the sandbox keeps it (the REST partial of `_message.json.jbuilder`).
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: i64,
    pub account_id: i64,
    pub content: Value,
    pub inbox_id: i64,
    pub conversation_id: i64,
    pub message_type: i64,
    pub content_type: String,
    pub status: String,
    pub content_attributes: Value,
    pub created_at: i64,
    pub private: bool,
    pub source_id: Value,
    pub sender: Value,
}

/// One create request as it arrived, for tests and the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct CreateSeen {
    pub gold_reply_id: Option<String>,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub at_ms: i64,
}

#[derive(Default)]
struct State {
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    messages: Vec<Message>,
    next_id: i64,
    faults: Faults,
    creates: Vec<CreateSeen>,
    recent: HashMap<(i64, i64), Vec<Instant>>,
}

struct Shared {
    config: SandboxConfig,
    state: Mutex<State>,
    webhooks: reqwest::Client,
}

/// A running sandbox.
pub struct SandboxHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: ServerHandle,
}

impl SandboxHandle {
    /// The base URL to give goldrelay as `CHATWOOT_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Points webhook events at `url`, signed with `secret` when given.
    pub fn set_webhook(&self, url: String, secret: Option<String>) {
        let mut state = self.shared.lock();
        state.webhook_url = Some(url);
        state.webhook_secret = secret;
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// Every message of one conversation, oldest first.
    pub fn messages(&self, account_id: i64, conversation_id: i64) -> Vec<Message> {
        self.shared
            .lock()
            .messages
            .iter()
            .filter(|m| m.account_id == account_id && m.conversation_id == conversation_id)
            .cloned()
            .collect()
    }

    /// Every create request received so far, failed ones included.
    pub fn creates(&self) -> Vec<CreateSeen> {
        self.shared.lock().creates.clone()
    }

    /// Changes a message's channel status and sends `message_updated`, as
    /// Chatwoot does when the customer's channel reports back.
    pub async fn set_status(&self, message_id: i64, status: &str, external_error: Option<&str>) {
        let updated = self
            .shared
            .update_status(message_id, status, external_error);
        if let Some(message) = updated {
            self.shared.emit(&message, "message_updated").await;
        }
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_status(&self, id: i64, status: &str, error: Option<&str>) -> Option<Message> {
        let mut state = self.lock();
        let message = state.messages.iter_mut().find(|m| m.id == id)?;
        message.status = status.to_owned();
        if let (Some(error), Some(attrs)) = (error, message.content_attributes.as_object_mut()) {
            attrs.insert("external_error".into(), json!(error));
        }
        Some(message.clone())
    }

    /// Posts one event like `Webhooks::Trigger`: compact JSON, delivery id,
    /// timestamp and signature when a secret is set, 5 s timeout, no retry.
    async fn emit(&self, message: &Message, event: &str) {
        let (Some(url), secret) = ({
            let state = self.lock();
            (state.webhook_url.clone(), state.webhook_secret.clone())
        }) else {
            return;
        };
        let body = webhook_payload(message, event).to_string();
        let mut request = self
            .webhooks
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header("X-Chatwoot-Delivery", uuid::Uuid::new_v4().to_string());
        if let Some(secret) = &secret {
            let ts = Utc::now().timestamp().to_string();
            request = request
                .header("X-Chatwoot-Timestamp", &ts)
                .header("X-Chatwoot-Signature", sign(secret, &ts, body.as_bytes()));
        }
        if let Err(e) = request.body(body).send().await {
            tracing::warn!(error = %e, "sandbox webhook delivery failed (not retried, like Chatwoot)");
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"), as Chatwoot signs.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The `message.webhook_data` shape, trimmed to what a receiver reads.
fn webhook_payload(m: &Message, event: &str) -> Value {
    let created = chrono::DateTime::from_timestamp(m.created_at, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut listed = serde_json::to_value(m).unwrap_or_default();
    listed["updated_at"] = json!(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
    json!({
        "account": {"id": m.account_id, "name": "Sandbox"},
        "additional_attributes": {},
        "content_attributes": m.content_attributes,
        "content_type": m.content_type,
        "content": m.content,
        "conversation": {
            "id": m.conversation_id, "inbox_id": m.inbox_id, "channel": "Channel::Api",
            "status": "open", "messages": [listed],
        },
        "created_at": created,
        "id": m.id,
        "inbox": {"id": m.inbox_id, "name": "Sandbox API"},
        "message_type": if m.message_type == 0 { "incoming" } else { "outgoing" },
        "private": m.private,
        "sender": m.sender,
        "source_id": m.source_id,
        "event": event,
    })
}

/// Starts a sandbox on `addr` (port 0 picks a free one).
pub fn start(config: SandboxConfig, addr: SocketAddr) -> std::io::Result<SandboxHandle> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let webhooks = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(std::io::Error::other)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            webhook_url: config.webhook_url.clone(),
            webhook_secret: config.webhook_secret.clone(),
            next_id: 1,
            ..State::default()
        }),
        webhooks,
        config,
    });
    let data = web::Data::from(shared.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(SandboxHandle {
        addr,
        shared,
        server: handle,
    })
}

fn routes(cfg: &mut web::ServiceConfig) {
    let messages = "/api/v1/accounts/{account_id}/conversations/{conversation_id}/messages";
    cfg.route(messages, web::post().to(create))
        .route(messages, web::get().to(list))
        .route(
            "/health",
            web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "woot"})) }),
        )
        .route("/api", web::get().to(api_info))
        .route("/_sandbox/faults", web::post().to(set_faults))
        .route("/_sandbox/messages", web::get().to(all_messages))
        .route("/_sandbox/creates", web::get().to(all_creates))
        .route("/_sandbox/messages/{id}/status", web::post().to(set_status));
}

async fn api_info() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "version": "4.13.0",
        "timestamp": Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        "queue_services": "ok",
        "data_services": "ok",
    }))
}

/// A refusal in Chatwoot's shape: `{"error": "…"}`.
struct Refusal {
    status: StatusCode,
    body: Value,
}

impl Refusal {
    fn new(status: StatusCode, text: &str) -> Self {
        Self {
            status,
            body: json!({ "error": text }),
        }
    }

    fn into_response(self) -> HttpResponse {
        HttpResponse::build(self.status)
            .content_type("application/json; charset=utf-8")
            .body(self.body.to_string())
    }
}

fn error(status: StatusCode, text: &str) -> HttpResponse {
    Refusal::new(status, text).into_response()
}

enum Caller {
    User,
    Bot,
}

/// Chatwoot's before-actions, in their order: token, account, conversation.
fn authorize(shared: &Shared, req: &HttpRequest, path: (i64, i64)) -> Result<Caller, Refusal> {
    // Rack maps `api_access_token` and `Api-Access-Token` to the same variable.
    let headers = req.headers();
    let token = headers
        .get("api_access_token")
        .or_else(|| headers.get("api-access-token"))
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty());
    let caller = match token {
        None => {
            // devise_token_auth's shape: a list under "errors".
            return Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                body: json!({"errors": ["You need to sign in or sign up before continuing."]}),
            });
        }
        Some(t) if t == shared.config.user_token => Caller::User,
        Some(t) if Some(t) == shared.config.bot_token.as_deref() => Caller::Bot,
        Some(_) => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "Invalid Access Token",
            ))
        }
    };
    let (account, conversation) = path;
    let exists = shared.config.accounts.contains(&account)
        && (1..=shared.config.conversations).contains(&conversation);
    if !exists {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "Resource could not be found",
        ));
    }
    Ok(caller)
}

/// Applies delay and injected failures; `Some` is the response to send instead.
async fn injected(shared: &Shared) -> Option<HttpResponse> {
    let (delay, failure) = {
        let mut state = shared.lock();
        let f = &mut state.faults;
        let failure = (f.fail_next > 0).then(|| {
            f.fail_next -= 1;
            (f.fail_status.unwrap_or(503), f.retry_after)
        });
        (f.delay_ms, failure)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let (status, retry_after) = failure?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
        HttpResponse::TooManyRequests()
            .content_type("text/plain")
            .body("Retry later\n")
    } else {
        HttpResponse::build(status)
            .content_type("text/html")
            .body("<html><body>Service Unavailable</body></html>")
    };
    if let Some(secs) = retry_after {
        response.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(secs),
        );
    }
    Some(response)
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    content: Value,
    message_type: Option<String>,
    #[serde(default)]
    private: bool,
    content_type: Option<String>,
    #[serde(default)]
    content_attributes: Value,
    source_id: Option<String>,
}

async fn create(
    req: HttpRequest,
    path: web::Path<(i64, i64)>,
    body: web::Json<CreateBody>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let (account_id, conversation_id) = path.into_inner();
    let gold_reply_id = body
        .content_attributes
        .get("gold_reply_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    shared.lock().creates.push(CreateSeen {
        gold_reply_id,
        at_ms: Utc::now().timestamp_millis(),
    });
    let caller = match authorize(&shared, &req, (account_id, conversation_id)) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(response) = injected(&shared).await {
        return response;
    }
    let created = match new_message(
        &shared,
        caller,
        account_id,
        conversation_id,
        body.into_inner(),
    ) {
        Ok(m) => m,
        Err(refusal) => return refusal.into_response(),
    };
    let late = {
        let mut state = shared.lock();
        let f = &mut state.faults;
        (f.late_next > 0).then(|| {
            f.late_next -= 1;
            f.late_ms
        })
    };
    let emitter = shared.clone();
    let echo = created.clone();
    tokio::spawn(async move { emitter.emit(&echo, "message_created").await });
    if let Some(ms) = late {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    HttpResponse::Ok().json(created)
}

fn new_message(
    shared: &Shared,
    caller: Caller,
    account_id: i64,
    conversation_id: i64,
    body: CreateBody,
) -> Result<Message, Refusal> {
    let message_type = match body.message_type.as_deref().unwrap_or("outgoing") {
        "outgoing" => 1,
        "incoming" => {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Incoming messages are only allowed in Api inboxes",
            ))
        }
        other => {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("'{other}' is not a valid message_type"),
            ))
        }
    };
    if body.content.as_str().map_or(0, |c| c.chars().count()) > 150_000 {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Content is too long (maximum is 150000 characters)",
        ));
    }
    let mut state = shared.lock();
    let recent = state
        .recent
        .entry((account_id, conversation_id))
        .or_default();
    recent.retain(|t| t.elapsed() < Duration::from_secs(60));
    if recent.len() >= FLOOD_LIMIT {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Too many messages",
        ));
    }
    recent.push(Instant::now());
    let sender = match caller {
        Caller::User => json!({"id": 1, "name": "Sandbox Agent", "available_name": "Sandbox Agent",
            "avatar_url": "", "type": "user", "availability_status": "online", "thumbnail": ""}),
        Caller::Bot => {
            json!({"id": 2, "name": "Sandbox Bot", "avatar_url": "", "type": "agent_bot"})
        }
    };
    let id = state.next_id;
    state.next_id += 1;
    let attributes = match body.content_attributes {
        Value::Object(map) => Value::Object(map),
        _ => json!({}),
    };
    let message = Message {
        id,
        account_id,
        content: body.content,
        inbox_id: 1,
        conversation_id,
        message_type,
        content_type: body.content_type.unwrap_or_else(|| "text".into()),
        status: "sent".into(),
        content_attributes: attributes,
        created_at: Utc::now().timestamp(),
        private: body.private,
        source_id: body.source_id.map(Value::from).unwrap_or(Value::Null),
        sender,
    };
    state.messages.push(message.clone());
    Ok(message)
}

#[derive(Deserialize)]
struct ListQuery {
    before: Option<i64>,
    after: Option<i64>,
}

async fn list(
    req: HttpRequest,
    path: web::Path<(i64, i64)>,
    query: web::Query<ListQuery>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let (account_id, conversation_id) = path.into_inner();
    match authorize(&shared, &req, (account_id, conversation_id)) {
        Ok(Caller::User) => {}
        Ok(Caller::Bot) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "Access to this endpoint is not authorized for bots",
            )
        }
        Err(refusal) => return refusal.into_response(),
    }
    if let Some(response) = injected(&shared).await {
        return response;
    }
    let state = shared.lock();
    let all: Vec<&Message> = state
        .messages
        .iter()
        .filter(|m| m.account_id == account_id && m.conversation_id == conversation_id)
        .filter(|m| query.before.is_none_or(|b| m.id < b))
        .filter(|m| query.after.is_none_or(|a| m.id > a))
        .collect();
    // MessageFinder: the latest 20 (or up to 100 after `after`), ascending.
    let take = if query.after.is_some() { 100 } else { PAGE };
    let page: Vec<&Message> = if query.after.is_some() && query.before.is_none() {
        all.into_iter().take(take).collect()
    } else {
        let skip = all.len().saturating_sub(take);
        all.into_iter().skip(skip).collect()
    };
    HttpResponse::Ok().json(json!({
        "meta": {
            "labels": [], "additional_attributes": {},
            "contact": {"id": 1, "name": "Sandbox Customer", "type": "contact"},
            "agent_last_seen_at": null, "assignee_last_seen_at": null,
        },
        "payload": page,
    }))
}

async fn set_faults(faults: web::Json<Faults>, shared: web::Data<Shared>) -> HttpResponse {
    shared.lock().faults = faults.into_inner();
    HttpResponse::NoContent().finish()
}

async fn all_messages(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.lock().messages)
}

async fn all_creates(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.lock().creates)
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
    external_error: Option<String>,
}

async fn set_status(
    path: web::Path<i64>,
    body: web::Json<StatusBody>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let updated = shared.update_status(*path, &body.status, body.external_error.as_deref());
    match updated {
        Some(message) => {
            shared.emit(&message, "message_updated").await;
            HttpResponse::Ok().json(message)
        }
        None => error(StatusCode::NOT_FOUND, "Resource could not be found"),
    }
}
