//! Routes, extractors and the error translation. Handlers never call Chatwoot:
//! they commit and answer, and the delivery worker does the rest.

mod auth;
mod body;
mod console;
mod conversation;
mod export;
mod health;
pub mod problem;
mod replies;
mod routes;
mod summary;
mod webhook;

pub use auth::{Admits, BearerTokens, Caller, Operator, Poster, Reader, Role, Scope};
pub use health::WriteHealth;
pub use routes::{Access, Meter, Method, Route, ROUTES};
pub use webhook::WebhookAuth;

use crate::health::WorkerState;
use crate::metrics::Metrics;
use crate::store::SharedStore;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use problem::ApiError;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

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
    /// How posts' writes and `/hc`'s probe went lately, for `/hc`.
    pub writes: WriteHealth,
    /// How long an operator's retry of a reply that may have been sent waits
    /// before it looks: the worker's lookup delay.
    pub retry_look_after: Duration,
}

/// The console's `Content-Security-Policy`: Chatwoot at `chatwoot_base_url`
/// may frame it as a Dashboard App.
pub fn console_csp(chatwoot_base_url: &reqwest::Url) -> String {
    console::content_security_policy(&console::chatwoot_origin(chatwoot_base_url))
}

/// The reply a request concerned, for its log line.
#[derive(Clone)]
pub struct LoggedReplyId(pub String);

/// The id the request log line carries, for handlers whose trace spans name it too.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub uuid::Uuid);

/// The OpenAPI 3.1 description of this API: `openapi.json` at the top of
/// the repository, where Support's tooling and schemathesis read the contract.
pub const OPENAPI: &str = include_str!("../../openapi.json");

pub(crate) async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// `/metrics` on the main listener: operators only, and only when metrics
/// have no address of their own.
pub(crate) async fn metrics(
    _: MetricsHere,
    _: Operator,
    state: web::Data<AppState>,
) -> HttpResponse {
    metrics_text(&state).await
}

/// Proof that `/metrics` is served on this listener (metrics have no address
/// of their own); a plain 404 otherwise. Taken before [`Operator`], so a
/// listener without metrics says 404 whatever the token.
pub(crate) struct MetricsHere;

impl FromRequest for MetricsHere {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let here = req
            .app_data::<web::Data<AppState>>()
            .is_some_and(|state| state.metrics_here);
        ready(if here {
            Ok(MetricsHere)
        } else {
            Err(routes::no_route(req))
        })
    }
}

/// The Prometheus text exposition.
pub async fn metrics_text(state: &AppState) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(state.store.as_ref()).await)
}

/// How a request of a metered route ended, as its metric counts it: the
/// handler puts it on a successful answer; a refusal's is its problem slug.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome(pub &'static str);

impl Outcome {
    /// `response`, marked with this outcome.
    pub(crate) fn on(self, mut response: HttpResponse) -> HttpResponse {
        response.extensions_mut().insert(self);
        response
    }

    /// What `response` ended with: the handler's mark, else the slug of the
    /// [`ApiError`] a handler or an extractor refused the request with.
    fn of<B>(response: &ServiceResponse<B>) -> &'static str {
        let answer = response.response();
        let marked = answer.extensions().get::<Outcome>().map(|o| o.0);
        let refused = || answer.error()?.as_error::<ApiError>().map(ApiError::slug);
        // Every answer of a metered route carries one or the other; an
        // unknown outcome is counted rather than lost.
        marked.or_else(refused).unwrap_or("unknown")
    }
}

/// The middleware of a metered route (see [`Meter`]): it sees every request
/// of the route, the ones an extractor refused before the handler ran too.
async fn metered<B: MessageBody>(
    meter: Meter,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let span = match meter {
        Meter::Ingest => replies::ingest_span(req.request()),
        Meter::Events => tracing::Span::none(),
    };
    let response = next.call(req).instrument(span.clone()).await?;
    let outcome = Outcome::of(&response);
    let Some(state) = state else {
        return Ok(response);
    };
    match meter {
        Meter::Ingest => {
            state.metrics.ingest(outcome, started.elapsed());
            replies::ingest_answered(&span, outcome, response.status());
        }
        Meter::Events => state.metrics.event(outcome),
    }
    Ok(response)
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
        .configure(routes::register)
        .wrap_fn(|req, srv| {
            let started = Instant::now();
            let method = req.method().clone();
            let request_id = uuid::Uuid::new_v4();
            actix_web::HttpMessage::extensions_mut(&req).insert(RequestId(request_id));
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
