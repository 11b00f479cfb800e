//! Support's endpoints: post a gold reply, read its status.

use super::body::{parse_json, read_limited, require_json};
use super::problem::ApiError;
use super::AppState;
use crate::domain::{GoldReply, ReplyId};
use crate::store::{Ingested, ReplyRecord};
use actix_web::http::header::LOCATION;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;

/// `POST /api/webhooks/gold-replies`
pub async fn post_reply(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req)?;
    require_json(&req)?;
    let body = read_limited(&req, payload, state.max_body_bytes).await?;
    let reply = GoldReply::parse(&parse_json(&body)?).map_err(ApiError::Invalid)?;
    let ingested = state
        .store
        .ingest(&reply, Utc::now())
        .await
        .map_err(ApiError::StoreUnavailable)?;
    match ingested {
        Ingested::Created(record) => {
            if reply.action.sends() {
                state.worker.wake.notify_one();
            }
            Ok(HttpResponse::Accepted()
                .insert_header((LOCATION, location(&record)))
                .json(record))
        }
        Ingested::Existing(record) => Ok(HttpResponse::Ok()
            .insert_header((LOCATION, location(&record)))
            .json(record)),
        Ingested::Conflict(record) => Err(ApiError::Conflict(record.reply_id)),
    }
}

/// `GET /api/gold-replies/{reply_id}`
pub async fn get_reply(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req)?;
    let not_found =
        || ApiError::NotFound(format!("no gold reply has reply_id {:?}", path.as_str()));
    let reply_id = ReplyId::parse(&path).map_err(|_| not_found())?;
    let record = state
        .store
        .reply(reply_id.as_str())
        .await
        .map_err(ApiError::StoreUnavailable)?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(record))
}

fn location(record: &ReplyRecord) -> String {
    format!("/api/gold-replies/{}", record.reply_id)
}
