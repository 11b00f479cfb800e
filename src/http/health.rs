//! `GET /hc`: cheap, unauthenticated, honest about what works.

use super::AppState;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::time::Duration;

/// 200 when replies can be accepted and stored, 503 otherwise; same body shape.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let ping = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let store_ok = matches!(ping, Ok(Ok(())));
    let body = json!({
        "status": if store_ok { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "store": { "status": if store_ok { "ok" } else { "unreachable" } },
        "worker": { "status": state.worker.describe() },
        "webhooks": { "status": state.webhooks.describe() },
    });
    if store_ok {
        HttpResponse::Ok().json(body)
    } else {
        // Like every store-caused 503: worth asking again shortly.
        HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .json(body)
    }
}
