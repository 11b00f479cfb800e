//! The sandbox Chatwoot: an in-memory stand-in that behaves like Chatwoot
//! 4.13.0 for everything goldrelay uses (see `docs/chatwoot.md`, which also
//! lists every fault and how a test switches it on). `goldrelay dev`, the
//! tests, `smoke`'s tests and the benchmark all use it as a real HTTP peer.
//!
//! What real Chatwoot simply does (pagination, Liquid rendering, webhook
//! shapes, status rules) is the default; what happens only under load or
//! behind a proxy is a fault in [`Faults`] or [`SandboxConfig`].
//! Control endpoints live under `/_sandbox/` and exist only here.

mod api;
mod config;
mod faults;
pub mod liquid;
mod webhook;

pub use config::SandboxConfig;
pub use faults::{Faults, REDIS_DOWN};
pub use webhook::sign;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USER_ID: i64 = 1;
const USER_NAME: &str = "Sandbox Agent";
const BOT_ID: i64 = 2;
const BOT_NAME: &str = "Sandbox Bot";
/// Another agent of the account, with a user token of its own.
const AGENT_ID: i64 = 3;
const AGENT_NAME: &str = "Another Agent";
/// The token of that other agent (`SandboxConfig::agent_token` by default).
pub const AGENT_TOKEN: &str = "sandbox-other-agent-token";
const INBOX_NAME: &str = "Sandbox API";
/// The name of every conversation's contact, as `{{contact.name}}` renders it.
pub const CONTACT_NAME: &str = "Sandbox Customer";

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
    #[serde(skip)]
    created: DateTime<Utc>,
    /// `client_message_id`, when the sandbox honours it.
    #[serde(skip)]
    client_message_id: Option<String>,
    #[serde(skip)]
    updated: DateTime<Utc>,
    #[serde(skip)]
    sent_by: Caller,
}

impl Message {
    /// `_message.json.jbuilder`: what create and list answer (no `account_id`).
    fn rest_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("account_id");
        }
        value
    }
}

/// One create request as it arrived, for tests and the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct CreateSeen {
    pub gold_reply_id: Option<String>,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub at_ms: i64,
}

/// One message-list request as it arrived, for tests.
#[derive(Debug, Clone, Serialize)]
pub struct ListSeen {
    /// Milliseconds since the Unix epoch when the request arrived.
    pub at_ms: i64,
    /// The conversation listed.
    pub conversation_id: i64,
    /// The raw query string (`before=…&filter_internal_messages=true`).
    pub query: String,
}

/// The text a deleted message is left with: `messages_controller.rb#destroy`
/// replaces the content with Chatwoot's own deleted-message text (this is
/// the sandbox's English wording of it).
pub const DELETED_TEXT: &str = "This message was deleted";

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    /// The user whose token goldrelay holds.
    User,
    Bot,
    /// Another agent of the account.
    Agent,
}

impl Caller {
    /// `(sender_type, id, name)` of the sender.
    fn identity(self) -> (&'static str, i64, &'static str) {
        match self {
            Caller::User => ("User", USER_ID, USER_NAME),
            Caller::Bot => ("AgentBot", BOT_ID, BOT_NAME),
            Caller::Agent => ("User", AGENT_ID, AGENT_NAME),
        }
    }
}

#[derive(Default)]
struct State {
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    messages: Vec<Message>,
    next_id: i64,
    faults: Faults,
    creates: Vec<CreateSeen>,
    /// List requests received (message lists, the profile excluded).
    lists: usize,
    /// Every message-list request: when it arrived and its query string.
    list_log: Vec<ListSeen>,
    recent: HashMap<(i64, i64), Vec<Instant>>,
    /// rack-attack's fixed windows: client IP → (minute, requests in it).
    throttle: HashMap<IpAddr, (i64, u32)>,
}

impl State {
    /// `conversation.messages.chat.last`: neither private nor activity.
    fn latest_public(&self, account_id: i64, conversation_id: i64) -> Option<&Message> {
        self.messages.iter().rev().find(|m| {
            m.account_id == account_id
                && m.conversation_id == conversation_id
                && !m.private
                && m.message_type != 2
        })
    }
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

    /// The address the sandbox listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Points webhook events at `url`, signed with `secret` when given.
    pub fn set_webhook(&self, url: String, secret: Option<String>) {
        let mut state = self.shared.lock();
        state.webhook_url = Some(url);
        state.webhook_secret = secret;
    }

    /// Replaces every fault.
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

    /// Rewrites a message's `created_at`, as a channel that stores the
    /// provider's time does (`app/services/tiktok/message_service.rb`).
    pub fn set_created_at(&self, message_id: i64, at: DateTime<Utc>) -> bool {
        let mut state = self.shared.lock();
        let Some(message) = state.messages.iter_mut().find(|m| m.id == message_id) else {
            return false;
        };
        message.created = at;
        message.created_at = at.timestamp();
        true
    }

    /// How many message-list requests arrived so far.
    pub fn lists(&self) -> usize {
        self.shared.lock().lists
    }

    /// Every message-list request so far, in arrival order.
    pub fn list_requests(&self) -> Vec<ListSeen> {
        self.shared.lock().list_log.clone()
    }

    /// The customer writes in the conversation (an incoming message, as the
    /// channel delivers it; no webhook is sent). Returns its id.
    pub fn customer_says(&self, account_id: i64, conversation_id: i64, content: &str) -> i64 {
        self.shared
            .seed(account_id, conversation_id, 0, content, contact())
    }

    /// Chatwoot records an activity message (`Conversation was resolved by …`),
    /// as its own callbacks do; no webhook is sent. Returns its id.
    pub fn activity(&self, account_id: i64, conversation_id: i64, content: &str) -> i64 {
        self.shared
            .seed(account_id, conversation_id, 2, content, Value::Null)
    }

    /// An agent deletes a message (`MessagesController#destroy`): the row
    /// stays, its content becomes [`DELETED_TEXT`] and `content_attributes`
    /// `{"deleted": true}`. `false` when there is no such message.
    pub fn delete_message(&self, message_id: i64) -> bool {
        let mut state = self.shared.lock();
        let Some(message) = state.messages.iter_mut().find(|m| m.id == message_id) else {
            return false;
        };
        message.content = Value::from(DELETED_TEXT);
        message.content_type = "text".into();
        message.content_attributes = json!({"deleted": true});
        message.updated = Utc::now();
        true
    }

    /// Changes a message's channel status without any webhook: the event
    /// was lost, or the channel's report came in another way.
    pub fn set_status_silently(&self, message_id: i64, status: &str, error: Option<&str>) -> bool {
        self.shared
            .update_status(message_id, status, error)
            .is_some()
    }

    /// Changes a message's channel status as `Messages::StatusUpdateService`
    /// does when the customer's channel reports back, and sends
    /// `message_updated` once the event is delivered. `false` when Chatwoot
    /// would refuse it (read → delivered, an unknown status, no message).
    pub async fn set_status(
        &self,
        message_id: i64,
        status: &str,
        external_error: Option<&str>,
    ) -> bool {
        let event = self
            .shared
            .update_status(message_id, status, external_error);
        self.shared.send_now(event).await
    }

    /// An agent presses "retry" on a message (`MessagesController#retry`,
    /// 4.13.0): `update!(status: :sent, content_attributes: {})`, so the
    /// failure, and every attribute the sender stored with it, is gone.
    /// `false` when there is no such message.
    pub async fn agent_retry(&self, message_id: i64) -> bool {
        let event = self.shared.retry(message_id);
        self.shared.send_now(event).await
    }

    /// Stops the server without waiting for open requests.
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

/// A webhook event ready to post: URL, secret and body.
struct Event {
    url: String,
    secret: Option<String>,
    body: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Messages::StatusUpdateService`: only read → delivered is refused;
    /// `external_error` is kept for `failed` and set to nil otherwise.
    fn update_status(&self, id: i64, status: &str, error: Option<&str>) -> Option<Option<Event>> {
        const STATUSES: [&str; 4] = ["sent", "delivered", "read", "failed"];
        let mut state = self.lock();
        let message = state.messages.iter_mut().find(|m| m.id == id)?;
        if !STATUSES.contains(&status) || (message.status == "read" && status == "delivered") {
            return None;
        }
        message.status = status.to_owned();
        let error = error.filter(|_| status == "failed");
        if let Some(attrs) = message.content_attributes.as_object_mut() {
            // A store accessor: writing nil keeps the key, with null.
            attrs.insert("external_error".into(), json!(error));
        }
        message.updated = Utc::now();
        let message = message.clone();
        Some(Self::event(&state, &message, "message_updated"))
    }

    /// Stores a message Chatwoot made without a create request of goldrelay's.
    fn seed(&self, account: i64, conversation: i64, kind: i64, text: &str, sender: Value) -> i64 {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let now = Utc::now();
        state.messages.push(Message {
            id,
            account_id: account,
            content: Value::from(text),
            inbox_id: 1,
            conversation_id: conversation,
            message_type: kind,
            content_type: "text".into(),
            status: "sent".into(),
            content_attributes: json!({}),
            created_at: now.timestamp(),
            private: false,
            source_id: Value::Null,
            sender,
            created: now,
            client_message_id: None,
            updated: now,
            sent_by: Caller::Agent,
        });
        id
    }

    fn retry(&self, id: i64) -> Option<Option<Event>> {
        let mut state = self.lock();
        let message = state.messages.iter_mut().find(|m| m.id == id)?;
        message.status = "sent".into();
        message.content_attributes = json!({});
        message.updated = Utc::now();
        let message = message.clone();
        Some(Self::event(&state, &message, "message_updated"))
    }

    /// Builds the event now, as the listener does at commit, so the
    /// conversation's latest message is the one at this moment.
    fn event(state: &State, message: &Message, event: &str) -> Option<Event> {
        Some(Event {
            url: state.webhook_url.clone()?,
            secret: state.webhook_secret.clone(),
            body: webhook::message_event(state, message, event).to_string(),
        })
    }

    /// Posts a change's event before returning whether the change happened.
    async fn send_now(&self, change: Option<Option<Event>>) -> bool {
        let Some(event) = change else {
            return false;
        };
        if let Some(event) = event {
            self.post(event).await;
        }
        true
    }

    async fn post(&self, event: Event) {
        webhook::deliver(
            &self.webhooks,
            &event.url,
            event.secret.as_deref(),
            event.body,
        )
        .await;
    }

    /// Sends a `message_created` as Sidekiq would, with the echo faults: lost,
    /// late, or twice.
    async fn echo(&self, event: Event) {
        let (drop, twice, delay) = {
            let mut state = self.lock();
            let f = &mut state.faults;
            let drop = f.echo_drop_next > 0;
            f.echo_drop_next = f.echo_drop_next.saturating_sub(1);
            (drop, f.echo_twice, f.echo_delay_ms)
        };
        if drop {
            return;
        }
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if twice {
            let again = Event {
                url: event.url.clone(),
                secret: event.secret.clone(),
                body: event.body.clone(),
            };
            self.post(again).await;
        }
        self.post(event).await;
    }
}

/// The conversation's contact, in its push form.
fn contact() -> Value {
    json!({"additional_attributes": {}, "custom_attributes": {}, "email": "customer@sandbox.invalid",
        "id": 1, "identifier": null, "name": CONTACT_NAME, "phone_number": null, "thumbnail": "",
        "blocked": false, "type": "contact"})
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
    api::routes(cfg);
    cfg.route("/_sandbox/faults", web::post().to(set_faults))
        .route("/_sandbox/messages", web::get().to(all_messages))
        .route("/_sandbox/creates", web::get().to(all_creates))
        .route("/_sandbox/messages/{id}/status", web::post().to(set_status))
        .route("/_sandbox/messages/{id}/retry", web::post().to(agent_retry));
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
    let change = shared.update_status(*path, &body.status, body.external_error.as_deref());
    answer_change(&shared, *path, change).await
}

async fn agent_retry(path: web::Path<i64>, shared: web::Data<Shared>) -> HttpResponse {
    let change = shared.retry(*path);
    answer_change(&shared, *path, change).await
}

/// 200 with the message after a change, 422 when Chatwoot refused it, 404 with no message.
async fn answer_change(shared: &Shared, id: i64, change: Option<Option<Event>>) -> HttpResponse {
    let changed = shared.send_now(change).await;
    let state = shared.lock();
    match state.messages.iter().find(|m| m.id == id) {
        Some(message) if changed => HttpResponse::Ok().json(message),
        Some(_) => api::error(StatusCode::UNPROCESSABLE_ENTITY, "status change refused"),
        None => api::error(StatusCode::NOT_FOUND, "Resource could not be found"),
    }
}
