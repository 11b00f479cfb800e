//! `GET /api/gold-replies/export`: the gold dataset as JSON Lines, streamed
//! page by page from the store (viewers and operators).

use super::auth::Reader;
use super::problem::ApiError;
use super::AppState;
use crate::store::{export_lines, parse_cursor};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;
use futures_util::{stream, StreamExt};
use serde::Deserialize;

/// The export's query string.
#[derive(Deserialize)]
struct ExportQuery {
    since: Option<String>,
}

/// Streams every decision after `since`. The first page is read before the
/// answer starts, so a store that is down is a 503 rather than an empty 200;
/// a failure later cuts the stream, and the client resumes from its last line.
/// A bound token exports its own account only.
pub async fn export(
    Reader(scope): Reader,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ExportQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::MalformedQuery(e.to_string()))?;
    let after = match query.into_inner().since.filter(|s| !s.is_empty()) {
        Some(raw) => Some(parse_cursor(&raw).ok_or(ApiError::InvalidCursor)?),
        None => None,
    };
    let mut lines = Box::pin(export_lines(
        state.store.clone(),
        after,
        scope.account(),
        Utc::now(),
    ));
    let first = lines
        .next()
        .await
        .transpose()
        .map_err(ApiError::StoreUnavailable)?;
    let body = stream::iter(first.map(Ok)).chain(lines).map(|chunk| {
        chunk.map(Bytes::from).map_err(|e| {
            tracing::warn!(error = %e, "export cut short by the store; the client resumes from its last line");
            actix_web::error::ErrorServiceUnavailable("store unavailable")
        })
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(body))
}
