//! Chatwoot's own endpoints: `/health`, `/api` and the messages API of
//! `app/controllers/api/v1/accounts/conversations/messages_controller.rb`,
//! with rack-attack in front.

mod list;

use super::{liquid, Caller, CreateSeen, Event, Message, Shared, CONTACT_NAME};
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `validates :content, length: { maximum: 150_000 }` (`app/models/message.rb`).
const MAX_CONTENT_CHARS: usize = 150_000;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    let messages = "/api/v1/accounts/{account_id}/conversations/{conversation_id}/messages";
    cfg.route(messages, web::post().to(create))
        .route(messages, web::get().to(list::list))
        .route(
            "/health",
            web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "woot"})) }),
        )
        .route("/api", web::get().to(api_info))
        .route("/api/v1/profile", web::get().to(profile));
}

/// `GET /api/v1/profile` (`app/controllers/api/v1/profiles_controller.rb`):
/// the token's user. Bots are refused, as on every endpoint not open to them.
async fn profile(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(throttled) = throttle(&shared, &req) {
        return throttled;
    }
    match caller(&shared, &req) {
        Ok(Caller::Bot) => error(
            StatusCode::UNAUTHORIZED,
            "Access to this endpoint is not authorized for bots",
        ),
        Ok(user) => {
            let (_, id, name) = user.identity();
            HttpResponse::Ok().json(json!({"id": id, "name": name, "available_name": name,
                "email": "agent@sandbox.invalid", "role": "administrator", "type": "user"}))
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// `app/controllers/api_controller.rb#index`.
async fn api_info(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(throttled) = throttle(&shared, &req) {
        return throttled;
    }
    HttpResponse::Ok().json(json!({
        "version": shared.config.version,
        "timestamp": Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        "queue_services": "ok",
        "data_services": "ok",
    }))
}

/// A refusal in Chatwoot's shape: `{"error": "…"}`.
pub(super) struct Refusal {
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

pub(super) fn error(status: StatusCode, text: &str) -> HttpResponse {
    Refusal::new(status, text).into_response()
}

/// rack-attack's throttled answer (`config/initializers/rack_attack.rb`,
/// rack-attack 6.7 defaults): no JSON, no `Retry-After`.
fn retry_later() -> HttpResponse {
    HttpResponse::TooManyRequests()
        .content_type("text/plain")
        .body("Retry later\n")
}

/// rack-attack's `req/ip` throttle: a fixed one-minute window per client IP,
/// in which refused requests count too.
fn throttle(shared: &Shared, req: &HttpRequest) -> Option<HttpResponse> {
    let limit = shared.config.rack_attack_limit?;
    let ip = req.peer_addr()?.ip();
    let minute = Utc::now().timestamp() / 60;
    let mut state = shared.lock();
    let window = state.throttle.entry(ip).or_insert((minute, 0));
    if window.0 != minute {
        *window = (minute, 0);
    }
    window.1 += 1;
    (window.1 > limit).then(retry_later)
}

/// The token as Rails sees it: `api_access_token` and `Api-Access-Token`
/// both become `HTTP_API_ACCESS_TOKEN`, unless a proxy dropped the first.
fn token<'a>(shared: &Shared, req: &'a HttpRequest) -> Option<&'a str> {
    let headers = req.headers();
    let dropped = shared.lock().faults.drop_underscore_headers;
    headers
        .get("api-access-token")
        .or_else(|| headers.get("api_access_token").filter(|_| !dropped))
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
}

/// Whose token the request carries (`access_token_auth_helper.rb`).
fn caller(shared: &Shared, req: &HttpRequest) -> Result<Caller, Refusal> {
    let revoked = shared.lock().faults.token_revoked;
    match token(shared, req) {
        // devise_token_auth's shape: a list under "errors".
        None => Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"errors": ["You need to sign in or sign up before continuing."]}),
        }),
        Some(t) if t == shared.config.user_token && !revoked => Ok(Caller::User),
        Some(t) if Some(t) == shared.config.bot_token.as_deref() => Ok(Caller::Bot),
        Some(t) if t == shared.config.agent_token => Ok(Caller::Agent),
        Some(_) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "Invalid Access Token",
        )),
    }
}

/// Chatwoot's before-actions, in their order: token, account, conversation
/// (`access_token_auth_helper.rb`, `conversations/base_controller.rb`).
fn authorize(shared: &Shared, req: &HttpRequest, path: (i64, i64)) -> Result<Caller, Refusal> {
    let caller = caller(shared, req)?;
    let (account, conversation) = path;
    let deleted = shared
        .lock()
        .faults
        .deleted_conversations
        .contains(&conversation);
    let exists = shared.config.accounts.contains(&account)
        && (1..=shared.config.conversations).contains(&conversation)
        && !deleted;
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
        retry_later()
    } else {
        HttpResponse::build(status)
            .content_type("text/html")
            .body("<html><body>Service Unavailable</body></html>")
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
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
    client_message_id: Option<String>,
}

/// A create on its way to the database.
struct Draft {
    caller: Caller,
    account_id: i64,
    conversation_id: i64,
    body: CreateBody,
}

/// What the faults make of the next create.
enum Outcome {
    Normal,
    AnswerLate(u64),
    CommitLate {
        commit_ms: u64,
        answer_ms: Option<u64>,
    },
    ErrorAfterCommit {
        text: String,
        echo: bool,
        status: Option<u16>,
    },
}

fn next_outcome(shared: &Shared) -> Outcome {
    let mut state = shared.lock();
    let f = &mut state.faults;
    if f.commit_late_next > 0 {
        f.commit_late_next -= 1;
        return Outcome::CommitLate {
            commit_ms: f.commit_after_ms,
            answer_ms: f.answer_after_ms,
        };
    }
    if f.error_after_commit_next > 0 {
        f.error_after_commit_next -= 1;
        let text = f.error_after_commit_text.clone();
        return Outcome::ErrorAfterCommit {
            text: text.unwrap_or_else(|| super::REDIS_DOWN.to_owned()),
            echo: f.error_after_commit_echo,
            status: f.error_after_commit_status,
        };
    }
    if f.late_next > 0 {
        f.late_next -= 1;
        return Outcome::AnswerLate(f.late_ms);
    }
    Outcome::Normal
}

async fn create(
    req: HttpRequest,
    path: web::Path<(i64, i64)>,
    body: web::Json<CreateBody>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let arrived = Instant::now();
    let shared = shared.into_inner();
    let (account_id, conversation_id) = path.into_inner();
    record_create(&shared, &body);
    if let Some(throttled) = throttle(&shared, &req) {
        return throttled;
    }
    let caller = match authorize(&shared, &req, (account_id, conversation_id)) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(response) = injected(&shared).await {
        return response;
    }
    let draft = Draft {
        caller,
        account_id,
        conversation_id,
        body: body.into_inner(),
    };
    match next_outcome(&shared) {
        Outcome::Normal => created(commit(&shared, draft, true)),
        Outcome::AnswerLate(ms) => {
            let result = commit(&shared, draft, true);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            created(result)
        }
        Outcome::CommitLate {
            commit_ms,
            answer_ms,
        } => commit_late(shared, draft, arrived, commit_ms, answer_ms).await,
        Outcome::ErrorAfterCommit { text, echo, status } => {
            let result = commit(&shared, draft, echo);
            match (result, status.and_then(|s| StatusCode::from_u16(s).ok())) {
                (Ok(_), None) => error(StatusCode::UNPROCESSABLE_ENTITY, &text),
                // A proxy's own page: Rails committed, the proxy gave up on it.
                (Ok(_), Some(status)) => HttpResponse::build(status)
                    .content_type("text/html")
                    .body(format!("<html><body><h1>{status}</h1></body></html>")),
                (Err(refusal), _) => refusal.into_response(),
            }
        }
    }
}

fn record_create(shared: &Shared, body: &CreateBody) {
    let gold_reply_id = body
        .content_attributes
        .get("gold_reply_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    shared.lock().creates.push(CreateSeen {
        gold_reply_id,
        at_ms: Utc::now().timestamp_millis(),
    });
}

/// Puma does not abort a request whose client hung up, so the commit runs
/// apart from the connection: dropping this handler does not cancel it.
async fn commit_late(
    shared: Arc<Shared>,
    draft: Draft,
    arrived: Instant,
    commit_after: u64,
    answer_after: Option<u64>,
) -> HttpResponse {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let worker = shared.clone();
    tokio::spawn(async move {
        let at = arrived + Duration::from_millis(commit_after);
        tokio::time::sleep_until(at.into()).await;
        let _ = sender.send(commit(&worker, draft, true));
    });
    let result = receiver.await;
    let Some(answer_after) = answer_after else {
        return std::future::pending().await;
    };
    let at = arrived + Duration::from_millis(answer_after);
    tokio::time::sleep_until(at.into()).await;
    match result {
        Ok(result) => created(result),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the commit was lost"),
    }
}

/// The 200 answer of `create.json.jbuilder`, or the refusal.
fn created(result: Result<Message, Refusal>) -> HttpResponse {
    match result {
        Ok(message) => HttpResponse::Ok().json(message.rest_json()),
        Err(refusal) => refusal.into_response(),
    }
}

/// Validates, renders and stores the message, then sends `message_created`
/// (when `echo`) in the background, as Sidekiq would.
fn commit(shared: &Arc<Shared>, draft: Draft, echo: bool) -> Result<Message, Refusal> {
    let (message, event) = store(shared, draft)?;
    if let (true, Some(event)) = (echo, event) {
        let sender = shared.clone();
        tokio::spawn(async move { sender.echo(event).await });
    }
    Ok(message)
}

/// The message a `client_message_id` already names in this conversation:
/// `Ok(Some)` for the same payload, a 409 for another (chatwoot PR #15744).
fn keyed(state: &super::State, draft: &Draft) -> Result<Option<Message>, Refusal> {
    let Some(key) = draft.body.client_message_id.as_deref() else {
        return Ok(None);
    };
    let Some(original) = state.messages.iter().find(|m| {
        m.account_id == draft.account_id
            && m.conversation_id == draft.conversation_id
            && m.client_message_id.as_deref() == Some(key)
    }) else {
        return Ok(None);
    };
    let same = original.private == draft.body.private
        && original.content_attributes == attributes(draft.body.content_attributes.clone());
    if same {
        Ok(Some(original.clone()))
    } else {
        Err(Refusal::new(
            StatusCode::CONFLICT,
            "client_message_id has already been used with a different payload",
        ))
    }
}

fn message_type(body: &CreateBody) -> Result<i64, Refusal> {
    match body.message_type.as_deref().unwrap_or("outgoing") {
        "outgoing" => Ok(1),
        "incoming" => Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Incoming messages are only allowed in Api inboxes",
        )),
        other => Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("'{other}' is not a valid message_type"),
        )),
    }
}

fn store(shared: &Shared, draft: Draft) -> Result<(Message, Option<Event>), Refusal> {
    let message_type = message_type(&draft.body)?;
    let too_long = draft.body.content.as_str().map_or(0, |c| c.chars().count()) > MAX_CONTENT_CHARS;
    if too_long {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Content is too long (maximum is 150000 characters)",
        ));
    }
    let mut state = shared.lock();
    if shared.config.idempotency_keys {
        if let Some(original) = keyed(&state, &draft)? {
            return Ok((original, None));
        }
    }
    let recent = state
        .recent
        .entry((draft.account_id, draft.conversation_id))
        .or_default();
    recent.retain(|t| t.elapsed() < Duration::from_secs(60));
    if recent.len() >= shared.config.flood_limit {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Too many messages",
        ));
    }
    recent.push(Instant::now());
    let id = state.next_id;
    state.next_id += 1;
    let keep_key = shared.config.idempotency_keys;
    let disorder = shared.config.created_at_disorder_secs;
    let mut message = build(
        id,
        message_type,
        draft,
        keep_key,
        shared.config.liquid_tokenizer,
    );
    if disorder > 0 {
        let back = chrono::Duration::seconds(rand::random_range(0..=disorder as i64));
        message.created -= back;
        message.created_at = message.created.timestamp();
    }
    state.messages.push(message.clone());
    let event = Shared::event(&state, &message, "message_created");
    Ok((message, event))
}

fn build(
    id: i64,
    message_type: i64,
    draft: Draft,
    keep_key: bool,
    tokenizer: liquid::LiquidTokenizer,
) -> Message {
    let Draft {
        caller,
        account_id,
        conversation_id,
        body,
    } = draft;
    let now = Utc::now();
    let content = match (&body.content, message_type) {
        (Value::String(text), 1) if !text.trim().is_empty() => Value::from(
            liquid::render_outgoing(text, &drops(caller, conversation_id), tokenizer),
        ),
        (other, _) => other.clone(),
    };
    Message {
        id,
        account_id,
        content,
        inbox_id: 1,
        conversation_id,
        message_type,
        content_type: body.content_type.unwrap_or_else(|| "text".into()),
        status: "sent".into(),
        content_attributes: attributes(body.content_attributes),
        created_at: now.timestamp(),
        private: body.private,
        source_id: body.source_id.map_or(Value::Null, Value::from),
        sender: sender_push_data(caller),
        created: now,
        client_message_id: body.client_message_id.filter(|_| keep_key),
        updated: now,
        sent_by: caller,
    }
}

/// `content_attributes`: an object, or a JSON string holding one.
fn attributes(value: Value) -> Value {
    let parsed = match value {
        Value::String(text) => serde_json::from_str(&text).unwrap_or_default(),
        other => other,
    };
    match parsed {
        Value::Object(map) => Value::Object(map),
        _ => json!({}),
    }
}

fn sender_push_data(caller: Caller) -> Value {
    match caller.identity() {
        ("User", id, name) => json!({"id": id, "name": name, "available_name": name,
            "avatar_url": "", "type": "user", "availability_status": "online", "thumbnail": ""}),
        (_, id, name) => json!({"id": id, "name": name, "avatar_url": "", "type": "agent_bot"}),
    }
}

/// `Liquidable#message_drops`: contact, agent (the sender, user or bot),
/// conversation and inbox, with the fields of `app/drops/*_drop.rb`.
fn drops(caller: Caller, conversation_id: i64) -> Value {
    let (_, agent_id, agent_name) = caller.identity();
    let mut names = CONTACT_NAME.split_whitespace();
    json!({
        "contact": {"id": 1, "name": CONTACT_NAME, "email": "customer@sandbox.invalid",
            "phone_number": null, "first_name": names.next(), "last_name": names.last()},
        "agent": {"id": agent_id, "name": agent_name},
        "conversation": {"id": conversation_id, "display_id": conversation_id,
            "contact_name": CONTACT_NAME},
        "inbox": {"id": 1, "name": super::INBOX_NAME},
    })
}
