//! The console at `/console/`: one static page, compiled into the binary, that
//! reads the JSON API with the bearer token it was given. It runs as a
//! Chatwoot Dashboard App too, so Chatwoot's origin may frame it.

use super::problem::ApiError;
use super::AppState;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse, ResponseError};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const JUDGEMENT: &str = include_str!("console/judgement.js");
const SUMMARY: &str = include_str!("console/summary.js");
const STYLE: &str = include_str!("console/app.css");

/// The `Content-Security-Policy` of every console response: scripts and
/// styles from goldrelay only, nothing inline, and framing by goldrelay
/// itself or Chatwoot (`chatwoot_origin`).
pub fn content_security_policy(chatwoot_origin: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'self' {chatwoot_origin}"
    )
}

/// The origin of `CHATWOOT_BASE_URL`, as `frame-ancestors` names it.
pub fn chatwoot_origin(base_url: &reqwest::Url) -> String {
    base_url.origin().ascii_serialization()
}

/// `/console` without its slash: relative asset paths need the slash. The
/// fragment (and the token in it) stays in the browser across the redirect.
pub(super) async fn to_index() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/console/"))
        .finish()
}

pub(super) async fn index(state: web::Data<AppState>) -> HttpResponse {
    page(&state, "text/html; charset=utf-8", INDEX)
}

pub(super) async fn asset(path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    match path.as_str() {
        "app.js" => page(&state, "text/javascript; charset=utf-8", SCRIPT),
        "judgement.js" => page(&state, "text/javascript; charset=utf-8", JUDGEMENT),
        "summary.js" => page(&state, "text/javascript; charset=utf-8", SUMMARY),
        "app.css" => page(&state, "text/css; charset=utf-8", STYLE),
        other => ApiError::NotFound(format!("the console has no {other:?}")).error_response(),
    }
}

fn page(state: &AppState, content_type: &str, body: &'static str) -> HttpResponse {
    let csp = HeaderValue::from_str(&state.console_csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, csp))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}
