//! Support's and operators' endpoints: post a gold reply, read, list and retry.

use super::auth::{Caller, Operator, Poster, Reader};
use super::body::{parse_json, read_limited, require_json};
use super::problem::ApiError;
use super::{AppState, LoggedReplyId, Outcome, RequestId};
use crate::domain::{FieldError, GoldReply, ReplyId, Status};
use crate::store::{Cursor, Ingested, ReplyFilter, ReplyRecord, Requeued, StoreError};
use crate::telemetry::{self, TARGET};
use actix_web::http::header::LOCATION;
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tracing::field::Empty;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// `POST /api/webhooks/gold-replies`: counted and traced by the route's
/// [`Meter::Ingest`](super::Meter::Ingest), refused posts included, in the
/// [`ingest_span`] the middleware runs it in.
pub async fn post_reply(
    Poster(scope): Poster,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let body = read_limited(&req, payload, state.max_body_bytes, state.request_timeout).await?;
    let reply = GoldReply::parse(&parse_json(&body)?).map_err(ApiError::Invalid)?;
    let span = tracing::Span::current();
    span.record("goldrelay.reply_id", reply.reply_id().as_str());
    span.record("goldrelay.account_id", reply.account_id());
    span.record("goldrelay.conversation_id", reply.conversation_id());
    scope.require(reply.account_id())?;
    // By the store's clock, as every time the worker compares it with: on
    // PostgreSQL the database's, whatever this instance's own clock says.
    let ingested = state.store.ingest(&reply, state.store.now()).await;
    match &ingested {
        // A full write queue is load, not a broken store: /hc stays up.
        Err(StoreError::Overloaded(_)) => {}
        outcome => state.writes.post_written(outcome.is_ok()),
    }
    let (outcome, mut response) = match ingested? {
        Ingested::Created(record) => ("accepted", located(HttpResponse::Accepted(), &record)),
        Ingested::Existing(record) => ("duplicate", located(HttpResponse::Ok(), &record)),
        Ingested::Conflict(record) => return Err(ApiError::Conflict(record.reply_id.to_string())),
    };
    response
        .extensions_mut()
        .insert(LoggedReplyId(reply.reply_id().to_string()));
    Ok(Outcome(outcome).on(response))
}

/// The span a reply's trace starts with (or continues, under Support's
/// `traceparent`); its context is stored with the reply. Nothing of the
/// body is an attribute but the ids.
pub(super) fn ingest_span(req: &HttpRequest) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "ingest",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/api/webhooks/gold-replies",
        goldrelay.request_id = req.extensions().get::<RequestId>().map(|id| id.0.to_string()),
        goldrelay.reply_id = Empty,
        goldrelay.account_id = Empty,
        goldrelay.conversation_id = Empty,
        goldrelay.outcome = Empty,
        http.response.status_code = Empty,
    );
    let incoming = req.headers().get("traceparent");
    telemetry::join(&span, incoming.and_then(|v| v.to_str().ok()));
    span
}

/// Closes [`ingest_span`]'s account of a post with how it was answered.
pub(super) fn ingest_answered(span: &tracing::Span, outcome: &str, status: StatusCode) {
    span.record("goldrelay.outcome", outcome);
    // As i64: OpenTelemetry has no unsigned integers, and a u64 is sent as text.
    span.record("http.response.status_code", i64::from(status.as_u16()));
}

fn located(mut builder: actix_web::HttpResponseBuilder, record: &ReplyRecord) -> HttpResponse {
    builder
        .insert_header((LOCATION, format!("/api/gold-replies/{}", record.reply_id)))
        .json(record)
}

fn reply_id(raw: &str) -> Result<ReplyId, ApiError> {
    ReplyId::parse(raw).map_err(|_| not_found(raw))
}

fn not_found(raw: &str) -> ApiError {
    ApiError::NotFound(format!("no gold reply has reply_id {raw:?}"))
}

/// `GET /api/gold-replies/{reply_id}`: a reply of an account out of the
/// token's reach is absent, so a bound token learns nothing of other accounts.
pub async fn get_reply(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = reply_id(&path)?;
    let record = state
        .store
        .reply(&id)
        .await?
        .filter(|record| caller.scope.sees(record.account_id))
        .ok_or_else(|| not_found(&path))?;
    Ok(HttpResponse::Ok().json(record))
}

/// `POST /api/gold-replies/{reply_id}/retry` (operators only)
pub async fn retry_reply(
    _: Operator,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<RetryQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::MalformedQuery(e.to_string()))?;
    let force = query.force.unwrap_or(false);
    let id = reply_id(&path)?;
    let requeued = state
        .store
        .requeue(&id, force, state.store.now(), state.retry_look_after)
        .await?;
    match requeued {
        Requeued::Queued {
            record,
            lookup_first,
        } => {
            let mut body = serde_json::to_value(&record).unwrap_or_default();
            body["retry"] = json!({ "forced": force, "lookup_first": lookup_first });
            Ok(HttpResponse::Accepted()
                .insert_header((LOCATION, format!("/api/gold-replies/{}", record.reply_id)))
                .json(body))
        }
        Requeued::NotDead(record) => Err(ApiError::NotDead(record.status.as_str())),
        Requeued::NotFound => Err(not_found(&path)),
    }
}

/// The retry endpoint's query string.
#[derive(Deserialize)]
pub struct RetryQuery {
    /// Send without looking in the conversation first.
    force: Option<bool>,
}

/// The list endpoint's query string.
#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    account_id: Option<i64>,
    conversation_id: Option<i64>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/gold-replies?status=&conversation_id=&limit=&cursor=` (viewers and operators)
///
/// The query string is read here, after authentication, so that an anonymous
/// caller learns nothing from how a query is refused. A bound token lists its
/// own account, and is refused another.
pub async fn list_replies(
    Reader(scope): Reader,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::MalformedQuery(e.to_string()))?;
    let mut filter = filter(query.into_inner())?;
    filter.account_id = scope.narrow(filter.account_id)?;
    let limit = filter.limit;
    let items = state.store.list(&filter).await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|last| last.cursor().encode()))
        .flatten();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

fn filter(query: ListQuery) -> Result<ReplyFilter, ApiError> {
    let invalid =
        |field: &str, message: &str| ApiError::InvalidQuery(vec![FieldError::new(field, message)]);
    let status = query
        .status
        .map(|s| {
            s.parse::<Status>()
                .map_err(|e| invalid("status", &e.to_string()))
        })
        .transpose()?;
    for (field, id) in [
        ("account_id", query.account_id),
        ("conversation_id", query.conversation_id),
    ] {
        if id.is_some_and(|id| id < 1) {
            return Err(invalid(field, "must be an integer of at least 1"));
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid("limit", "must be between 1 and 500"));
    }
    let after = query
        .cursor
        .map(|c| Cursor::decode(&c).ok_or(ApiError::InvalidCursor))
        .transpose()?;
    Ok(ReplyFilter {
        status,
        account_id: query.account_id,
        conversation_id: query.conversation_id,
        after,
        limit,
    })
}
