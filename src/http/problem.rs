//! The one place where an error becomes an HTTP status and an RFC 9457 body.

use crate::domain::FieldError;
use crate::store::StoreError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use std::time::Duration;

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
    #[error("{}", store_detail(.0))]
    StoreUnavailable(#[from] StoreError),
    #[error("this endpoint is turned off: {0}")]
    Disabled(&'static str),
    #[error("only a dead reply can be retried; this one is {0}")]
    NotDead(&'static str),
    #[error("this endpoint needs a token with the {0} role; yours does not have it")]
    RoleRequired(&'static str),
    #[error("this token is bound to account {bound}; account {account} is out of its reach")]
    AccountForbidden { bound: i64, account: i64 },
    #[error("operator endpoints are off: no GOLDRELAY_OPERATOR_TOKENS configured")]
    NoOperators,
    /// `per_client`: the budget is the token's from one client address (a
    /// viewer's), so the detail says so rather than blaming the token alone.
    #[error("{}", rate_detail(*per_client))]
    TooManyRequests { wait: Duration, per_client: bool },
    #[error("the request did not arrive in full within {} s; the connection is closed", .0.as_secs_f64())]
    RequestTimeout(Duration),
    #[error("the query string could not be read: {0}")]
    MalformedQuery(String),
    #[error("the query string breaks {} rule(s)", .0.len())]
    InvalidQuery(Vec<FieldError>),
    #[error("cursor is not a cursor this API gave out")]
    InvalidCursor,
    #[error("{0} is not allowed here; see the Allow header")]
    MethodNotAllowed(String, &'static str),
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
            ApiError::StoreUnavailable(StoreError::Overloaded(_)) => "store-overloaded",
            ApiError::StoreUnavailable(_) => "store-unavailable",
            ApiError::Disabled(_) => "disabled",
            ApiError::NotDead(_) => "not-dead",
            ApiError::RoleRequired(_) => "role-required",
            ApiError::AccountForbidden { .. } => "account-forbidden",
            ApiError::NoOperators => "operators-not-configured",
            ApiError::TooManyRequests { .. } => "rate-limited",
            ApiError::RequestTimeout(_) => "request-timeout",
            ApiError::MalformedQuery(_) => "malformed-query",
            ApiError::InvalidQuery(_) => "invalid-query",
            ApiError::InvalidCursor => "invalid-cursor",
            ApiError::MethodNotAllowed(..) => "method-not-allowed",
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
            ApiError::BadJson(_) | ApiError::BadBody(_) | ApiError::MalformedQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Invalid(_) | ApiError::InvalidQuery(_) | ApiError::InvalidCursor => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::RoleRequired(_)
            | ApiError::AccountForbidden { .. }
            | ApiError::NoOperators => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::NotDead(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            // Expected under load and answered with Retry-After: not an error to page on.
            ApiError::StoreUnavailable(e @ StoreError::Overloaded(_)) => {
                tracing::warn!(error = %e, "store overloaded");
            }
            ApiError::StoreUnavailable(e) => tracing::error!(error = %e, "store unavailable"),
            _ => {}
        }
        let mut body = problem(self.status_code(), self.slug(), &self.to_string());
        if let ApiError::Invalid(errors) | ApiError::InvalidQuery(errors) = self {
            body["errors"] = json!(errors);
        }
        if let ApiError::RoleRequired(role) = self {
            body["required_role"] = json!(role);
        }
        let mut response = problem_response(self.status_code(), body);
        self.add_headers(&mut response);
        response
    }
}

impl ApiError {
    /// The headers that tell a client what to do next.
    fn add_headers(&self, response: &mut HttpResponse) {
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // A store that refuses now (overloaded or down) is worth asking again soon.
            ApiError::StoreUnavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::TooManyRequests { wait, .. } => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            ApiError::RequestTimeout(_) => {
                // What is left of the request cannot be told from the next one.
                response
                    .head_mut()
                    .set_connection_type(actix_web::http::ConnectionType::Close);
            }
            ApiError::MethodNotAllowed(_, allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
    }
}

/// What a client is told when the store refused: nothing was done either way.
fn rate_detail(per_client: bool) -> &'static str {
    if per_client {
        "this token made more requests from your address than its rate allows; \
         retry after the Retry-After delay"
    } else {
        "this token made more requests than its rate allows; retry after the Retry-After delay"
    }
}

fn store_detail(error: &StoreError) -> &'static str {
    match error {
        StoreError::Overloaded(_) => {
            "the database is busy; nothing was done, try again after the Retry-After delay"
        }
        _ => "the reply could not be stored; nothing was accepted, try again",
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

/// An HTTP response carrying the problem document `body`.
pub fn problem_response(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(PROBLEM_JSON)
        .body(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overloaded_store_is_a_503_to_retry_after_a_second() {
        for error in [StoreError::Overloaded(2049), StoreError::Unavailable] {
            let response = ApiError::StoreUnavailable(error).error_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
        }
    }

    #[test]
    fn a_rate_limited_token_waits_whole_seconds() {
        let response = ApiError::TooManyRequests {
            wait: Duration::from_millis(1500),
            per_client: false,
        }
        .error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }
}
