//! The one place where an error becomes an HTTP status and an RFC 9457 body.

use crate::domain::FieldError;
use crate::store::StoreError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything a request can fail with, as the caller sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("the webhook {0} is missing or wrong")]
    BadSignature(&'static str),
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    #[error("the body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the body is not valid JSON: {0}")]
    BadJson(String),
    #[error("the body could not be read: {0}")]
    BadBody(String),
    #[error("the gold reply breaks {} rule(s)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error("reply_id {0:?} was already used for a different reply")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the reply could not be stored; nothing was accepted, try again")]
    StoreUnavailable(#[source] StoreError),
    #[error("this endpoint is turned off: {0}")]
    Disabled(&'static str),
    #[error("only a dead reply can be retried; this one is {0}")]
    NotDead(&'static str),
}

impl ApiError {
    /// A short stable name: the problem type's last part and the metrics label.
    pub fn slug(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadSignature(_) => "bad-signature",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::BadJson(_) => "malformed-json",
            ApiError::BadBody(_) => "unreadable-body",
            ApiError::Invalid(_) => "invalid-gold-reply",
            ApiError::Conflict(_) => "reply-id-conflict",
            ApiError::NotFound(_) => "not-found",
            ApiError::StoreUnavailable(_) => "store-unavailable",
            ApiError::Disabled(_) => "disabled",
            ApiError::NotDead(_) => "not-dead",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::BadSignature(_) | ApiError::Disabled(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadJson(_) | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) | ApiError::NotDead(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::StoreUnavailable(e) = self {
            tracing::error!(error = %e, "store unavailable");
        }
        let mut body = problem(self.status_code(), self.slug(), &self.to_string());
        if let ApiError::Invalid(errors) = self {
            body["errors"] = json!(errors);
        }
        let mut response = problem_response(self.status_code(), body);
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A problem document for `status`.
pub fn problem(status: StatusCode, slug: &str, detail: &str) -> serde_json::Value {
    json!({
        "type": format!("urn:goldrelay:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    })
}

pub fn problem_response(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(PROBLEM_JSON)
        .body(body.to_string())
}
