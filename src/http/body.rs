//! Reading request bodies: media type, size limit, JSON.

use super::problem::ApiError;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use std::time::Duration;

/// Requires `application/json`, with or without parameters such as `charset`.
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let essence = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes or
/// when it has not arrived in full within `timeout` (slow clients hold a
/// worker's memory and a connection; a deadline bounds both).
pub async fn read_limited(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::Bytes, ApiError> {
    tokio::time::timeout(timeout, read_within(req, payload, limit))
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout))?
}

async fn read_within(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    // The buffer grows with what arrives, never with what Content-Length promises.
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadBody(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses JSON; a syntax error is a 400 that says where.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}
