//! Routes, extractors and the error translation. Handlers never call Chatwoot:
//! they commit and answer, and the delivery worker does the rest.

mod auth;
mod body;
mod console;
mod export;
mod health;
pub mod problem;
mod replies;
mod webhook;

pub use auth::{BearerTokens, Caller, Operator, Reader, Role};
pub use webhook::WebhookAuth;

use crate::health::WorkerState;
use crate::metrics::Metrics;
use crate::store::SharedStore;
use actix_web::dev::{ResourceDef, Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{guard, web, HttpRequest, HttpResponse, ResponseError};
use problem::ApiError;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What every handler shares.
pub struct AppState {
    /// Where replies and events are committed.
    pub store: SharedStore,
    /// Who may call the bearer-authenticated endpoints, read by [`Caller`].
    pub tokens: BearerTokens,
    /// The largest request body read.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive in full.
    pub request_timeout: Duration,
    /// The delivery worker's phase, for `/hc`; the worker itself is out of reach.
    pub worker: Arc<WorkerState>,
    /// How Chatwoot's webhook requests are verified.
    pub webhooks: WebhookAuth,
    /// The counters requests update and `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// Whether `/metrics` is served with the API (no separate metrics address).
    pub metrics_here: bool,
    /// The console's `Content-Security-Policy`, from [`console_csp`].
    pub console_csp: String,
}

/// The console's `Content-Security-Policy`: Chatwoot at `chatwoot_base_url`
/// may frame it as a Dashboard App.
pub fn console_csp(chatwoot_base_url: &reqwest::Url) -> String {
    console::content_security_policy(&console::chatwoot_origin(chatwoot_base_url))
}

/// The reply a request concerned, for its log line.
#[derive(Clone)]
pub struct LoggedReplyId(pub String);

/// Every path the API serves and the methods it answers there, for `405`'s
/// `Allow`; held to the routes by a test over every documented path.
const ALLOWED: [(&str, &str); 14] = [
    ("/hc", "GET, HEAD"),
    ("/api/gold-replies/export", "GET, HEAD"),
    ("/console", "GET, HEAD"),
    ("/console/", "GET, HEAD"),
    ("/console/{asset}", "GET, HEAD"),
    (
        "/api/accounts/{account_id}/conversations/{conversation_id}/gold-replies",
        "GET, HEAD",
    ),
    ("/metrics", "GET, HEAD"),
    ("/openapi.json", "GET, HEAD"),
    ("/api/gold-replies", "GET, HEAD"),
    ("/api/gold-replies/{reply_id}/retry", "POST"),
    ("/api/webhooks/gold-replies", "POST"),
    ("/api/gold-replies/{reply_id}", "GET, HEAD"),
    ("/api/webhooks/chatwoot", "POST"),
    ("/api/webhooks/chatwoot/{token}", "POST"),
];

/// [`ALLOWED`] with its patterns compiled once: compiling them for every
/// unmatched request would let a flood of 404s cost far more than it should.
fn allowed() -> &'static [(ResourceDef, &'static str)] {
    static COMPILED: OnceLock<Vec<(ResourceDef, &'static str)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        ALLOWED
            .iter()
            .map(|(pattern, allow)| (ResourceDef::new(*pattern), *allow))
            .collect()
    })
}

/// A route for `GET` that answers `HEAD` too, as HTTP clients expect
/// (the server sends the headers without the body).
fn read() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// Registers every route of the API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/hc", read().to(health::health))
        .route("/metrics", read().to(metrics))
        .route("/openapi.json", read().to(openapi))
        .route("/api/gold-replies", read().to(replies::list_replies))
        .route("/api/gold-replies/export", read().to(export::export))
        .route(
            "/api/accounts/{account_id}/conversations/{conversation_id}/gold-replies",
            read().to(console::conversation),
        )
        .configure(console::routes)
        .route(
            "/api/gold-replies/{reply_id}/retry",
            web::post().to(replies::retry_reply),
        )
        .route(
            "/api/webhooks/gold-replies",
            web::post().to(replies::post_reply),
        )
        .route(
            "/api/gold-replies/{reply_id}",
            read().to(replies::get_reply),
        )
        .route("/api/webhooks/chatwoot", web::post().to(webhook::signed))
        .route(
            "/api/webhooks/chatwoot/{token}",
            web::post().to(webhook::path_token),
        )
        .default_service(web::to(not_found));
}

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// `/metrics` on the main listener: operators only, and only when metrics
/// have no address of their own.
async fn metrics(
    req: HttpRequest,
    caller: Result<Operator, ApiError>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.metrics_here {
        return no_route(&req);
    }
    match caller {
        Ok(_) => metrics_text(&state).await,
        Err(refused) => refused.error_response(),
    }
}

/// The Prometheus text exposition.
pub async fn metrics_text(state: &AppState) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(state.store.as_ref()).await)
}

/// What no route answered: 405 with `Allow` on a known path, 404 otherwise.
async fn not_found(req: HttpRequest) -> HttpResponse {
    let known = allowed()
        .iter()
        .find(|(pattern, _)| pattern.is_match(req.path()));
    if let Some((_, allow)) = known {
        return ApiError::MethodNotAllowed(req.method().to_string(), allow).error_response();
    }
    no_route(&req)
}

fn no_route(req: &HttpRequest) -> HttpResponse {
    let detail = format!("no route for {} {}", req.method(), req.path());
    problem::problem_response(
        StatusCode::NOT_FOUND,
        problem::problem(StatusCode::NOT_FOUND, "not-found", &detail),
    )
}

/// Builds the actix app with its logging.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<actix_web::body::BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .app_data(state)
        .configure(routes)
        .wrap_fn(|req, srv| {
            let started = Instant::now();
            let method = req.method().clone();
            let request_id = uuid::Uuid::new_v4();
            let call = srv.call(req);
            async move {
                let response = call.await?;
                let request = response.request();
                let route = request
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".into());
                let reply_id = response
                    .response()
                    .extensions()
                    .get::<LoggedReplyId>()
                    .map(|r| r.0.clone())
                    .or_else(|| request.match_info().get("reply_id").map(str::to_owned));
                tracing::info!(
                    %request_id,
                    method = %method,
                    route,
                    status = response.status().as_u16(),
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    reply_id,
                    "request"
                );
                Ok(response)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::OPENAPI;
    use crate::domain::Status;
    use serde_json::Value;

    #[test]
    fn the_openapi_status_enum_lists_exactly_the_domain_statuses() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let documented = &doc["components"]["schemas"]["Status"]["enum"];
        let known: Vec<&str> = Status::ALL.map(Status::as_str).to_vec();
        assert_eq!(documented, &serde_json::json!(known));
    }
}
