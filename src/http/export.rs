//! `GET /api/gold-replies/export`: the gold dataset as JSON Lines, streamed
//! page by page from the store (viewers and operators).

use super::auth::{Operator, Reader};
use super::problem::ApiError;
use super::AppState;
use crate::dataset;
use crate::store::{export_lines, parse_cursor, StoreError};
use actix_web::web::{self, Bytes};
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use chrono::Utc;
use futures_util::{stream, StreamExt};
use serde::Deserialize;

/// The export's query string.
#[derive(Deserialize)]
struct ExportQuery {
    since: Option<String>,
    /// The training formats' choices, read by [`dataset::Options::parse`].
    format: Option<String>,
    split: Option<String>,
    eval_share: Option<String>,
    redact: Option<String>,
    draft_field: Option<String>,
}

/// Streams every decision after `since`. The first page is read before the
/// answer starts, so a store that is down is a 503 rather than an empty 200;
/// a failure later cuts the stream, and the client resumes from its last line.
/// A bound token exports its own account only. `format`, `split` and the
/// rest choose a training format (`dataset`); only an operator may turn
/// redaction off.
pub async fn export(
    Reader(scope): Reader,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ExportQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::MalformedQuery(e.to_string()))?
        .into_inner();
    let options = dataset::Options::parse(&dataset::Asked {
        format: query.format.as_deref(),
        split: query.split.as_deref(),
        eval_share: query.eval_share.as_deref(),
        redact: query.redact.as_deref(),
        draft_field: query.draft_field.as_deref(),
    })
    .map_err(ApiError::InvalidQuery)?;
    if options.unredacted() {
        Operator::extract(&req).await?;
    }
    let after = match query.since.filter(|s| !s.is_empty()) {
        Some(raw) => Some(
            cursor_shaped(&raw)
                .then(|| parse_cursor(&raw))
                .flatten()
                .ok_or(ApiError::InvalidCursor)?,
        ),
        None => None,
    };
    let records = export_lines(state.store.clone(), after, scope.account(), Utc::now());
    let mut lines = Box::pin(dataset::converted(records, options, |e| {
        StoreError::Database(sqlx::Error::Decode(e.into()))
    }));
    let first = lines.next().await.transpose()?;
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

/// Whether `raw` starts as the export's cursors do: 1 to 18 digits (years 1970
/// to 33658, which every backend can compare; a negative or larger time would
/// reach the database and fail there) before the first `.`.
fn cursor_shaped(raw: &str) -> bool {
    raw.split_once('.').is_some_and(|(micros, _)| {
        (1..=18).contains(&micros.len()) && micros.bytes().all(|b| b.is_ascii_digit())
    })
}
