//! `POST /api/webhooks/chatwoot`: Chatwoot's signed events.
//!
//! Chatwoot waits 5 s and never retries account webhooks, so the handler only
//! stores and answers; the event's effect is applied in the same transaction
//! that stores it. Proof that the event is Chatwoot's is an extractor
//! ([`SignedEvent`], [`PathTokenEvent`]): the handler never sees one without it.

use super::body::{parse_json, read_limited};
use super::problem::ApiError;
use super::{AppState, Outcome, RequestId};
use crate::domain::{ChatwootEvent, Kept, ReplyId};
use crate::store::EventOutcome;
use crate::telemetry::{self, TARGET};
use actix_web::dev::Payload;
use actix_web::http::header::HeaderMap;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::field::Empty;
use tracing::Instrument;

const SIGNATURE: &str = "x-chatwoot-signature";
const TIMESTAMP: &str = "x-chatwoot-timestamp";
const DELIVERY: &str = "x-chatwoot-delivery";
const MAX_DELIVERY_ID_CHARS: usize = 128;

/// How webhook requests prove they come from Chatwoot.
pub struct WebhookAuth {
    secrets: Vec<SecretString>,
    tolerance: Duration,
    path_token: Option<[u8; 32]>,
}

impl WebhookAuth {
    pub fn new(
        secrets: Vec<SecretString>,
        tolerance: Duration,
        path_token: Option<&SecretString>,
    ) -> Self {
        Self {
            secrets,
            tolerance,
            path_token: path_token.map(|t| Sha256::digest(t.expose_secret().as_bytes()).into()),
        }
    }

    /// What `/hc` says about the webhook endpoint.
    pub fn describe(&self) -> &'static str {
        match (self.secrets.is_empty(), self.path_token.is_some()) {
            (false, false) => "signed",
            (false, true) => "signed; unsigned path token also accepted",
            (true, true) => "unsigned path token only; signed endpoint refuses all (no CHATWOOT_WEBHOOK_SECRETS)",
            (true, false) => "refusing all events: no CHATWOOT_WEBHOOK_SECRETS configured",
        }
    }

    /// Checks `X-Chatwoot-Signature` over `"<timestamp>.<body>"` against every
    /// secret, then that the timestamp is fresh.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        if self.secrets.is_empty() {
            return Err(ApiError::Disabled("no CHATWOOT_WEBHOOK_SECRETS configured"));
        }
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let bad_signature = ApiError::BadSignature("signature");
        let timestamp = header(TIMESTAMP).ok_or(ApiError::BadSignature("signature"))?;
        let signature = header(SIGNATURE)
            .and_then(|s| s.strip_prefix("sha256="))
            .and_then(|hex_sig| hex::decode(hex_sig).ok())
            .ok_or(ApiError::BadSignature("signature"))?;
        let matched = self
            .secrets
            .iter()
            .fold(subtle::Choice::from(0), |acc, secret| {
                acc | expected(secret, timestamp, body).ct_eq(signature.as_slice())
            });
        if !bool::from(matched) {
            return Err(bad_signature);
        }
        let sent = timestamp
            .parse::<i64>()
            .map_err(|_| ApiError::BadSignature("timestamp"))?;
        // abs_diff: a signed but absurd timestamp must not overflow.
        let skew = now.timestamp().abs_diff(sent);
        if skew > self.tolerance.as_secs() {
            return Err(ApiError::BadSignature("timestamp"));
        }
        Ok(())
    }

    /// The opt-in for unsigned Chatwoot: the token in the path must match.
    pub fn check_path_token(&self, presented: &str) -> Result<(), ApiError> {
        let Some(known) = &self.path_token else {
            return Err(ApiError::Disabled(
                "no GOLDRELAY_WEBHOOK_PATH_TOKEN configured",
            ));
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(known.ct_eq(&presented)) {
            Ok(())
        } else {
            Err(ApiError::BadSignature("path token"))
        }
    }
}

fn expected(secret: &SecretString, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// A Chatwoot event's body, read within `GOLDRELAY_MAX_BODY` and the request
/// timeout, whose `X-Chatwoot-Signature` over its timestamp and body matched a
/// configured secret (in constant time) and whose timestamp is fresh. A
/// handler that takes one cannot run for an unsigned or forged event.
pub struct SignedEvent(web::Bytes);

impl FromRequest for SignedEvent {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let state = app_state(&req)?;
            // Said before reading: no body could be accepted anyway.
            if state.webhooks.secrets.is_empty() {
                return Err(ApiError::Disabled("no CHATWOOT_WEBHOOK_SECRETS configured"));
            }
            let body = body(&req, payload, &state).await?;
            state.webhooks.verify(req.headers(), &body, Utc::now())?;
            Ok(SignedEvent(body))
        })
    }
}

/// A Chatwoot event's body, read within limits, sent to the path that holds
/// `GOLDRELAY_WEBHOOK_PATH_TOKEN` (the opt-in for Chatwoot before 4.12,
/// which signs nothing); the token is checked before the body is read.
pub struct PathTokenEvent(web::Bytes);

impl FromRequest for PathTokenEvent {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let state = app_state(&req)?;
            let token = web::Path::<String>::extract(&req)
                .await
                .map_err(|_| ApiError::BadSignature("path token"))?;
            state.webhooks.check_path_token(&token)?;
            Ok(PathTokenEvent(body(&req, payload, &state).await?))
        })
    }
}

/// The app's state; an app built without it verifies no one.
fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or(ApiError::Disabled("no webhook verification configured"))
}

async fn body(
    req: &HttpRequest,
    mut payload: Payload,
    state: &AppState,
) -> Result<web::Bytes, ApiError> {
    let payload = web::Payload::from_request(req, &mut payload)
        .await
        .map_err(|e| ApiError::BadBody(e.to_string()))?;
    read_limited(req, payload, state.max_body_bytes, state.request_timeout).await
}

/// `POST /api/webhooks/chatwoot`: counted by the route's
/// [`Meter::Events`](super::Meter::Events), refusals included.
pub async fn signed(
    event: SignedEvent,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    accept(&req, &event.0, &state).await
}

/// `POST /api/webhooks/chatwoot/{token}`: unsigned, for Chatwoot before 4.12.
pub async fn path_token(
    event: PathTokenEvent,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    accept(&req, &event.0, &state).await
}

async fn accept(
    req: &HttpRequest,
    body: &[u8],
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let value = parse_json(body)?;
    let delivery_id = req
        .headers()
        .get(DELIVERY)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .chars()
                .take(MAX_DELIVERY_ID_CHARS)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty());
    let digest = hex::encode(Sha256::digest(body));
    let mut event = ChatwootEvent::parse(delivery_id, &value, &digest);
    let kept = event.keep_only_ours(state.worker.chatwoot_user());
    let foreign = kept == Kept::Foreign;
    // The body parsed as JSON, so it is UTF-8.
    let raw = String::from_utf8_lossy(body);
    let span = confirmation_span(req, &event, state).await;
    let outcome = state
        .store
        .record_event(&event, &raw, state.store.now())
        .instrument(span.clone())
        .await?;
    let status = match outcome {
        EventOutcome::Processed if foreign => "mismatch",
        EventOutcome::Processed => "processed",
        EventOutcome::Duplicate => "duplicate",
        EventOutcome::Mismatch => "mismatch",
    };
    span.record("goldrelay.outcome", status);
    tracing::info!(event = %event.kind(), delivery_id = event.delivery_id(), reply_id = event.reply_id().map(ReplyId::as_str), outcome = status, "chatwoot event");
    let answer = HttpResponse::Ok().json(json!({ "status": status, "event": event.kind() }));
    Ok(Outcome(status).on(answer))
}

/// While traces are exported, an event naming a reply is stored in a span
/// of that reply's trace (read back from the store), so the trace ends with
/// the webhook that confirms the message. Ids only: never the event's body.
async fn confirmation_span(
    req: &HttpRequest,
    event: &ChatwootEvent,
    state: &AppState,
) -> tracing::Span {
    let Some(reply_id) = event.reply_id().filter(|_| telemetry::exporting()) else {
        return tracing::Span::none();
    };
    let context = state.store.trace_context(reply_id).await.ok().flatten();
    let span = tracing::info_span!(
        target: TARGET,
        "webhook.confirm",
        otel.kind = "server",
        goldrelay.request_id = req.extensions().get::<RequestId>().map(|id| id.0.to_string()),
        goldrelay.reply_id = reply_id.as_str(),
        goldrelay.event = event.kind(),
        goldrelay.chatwoot_message_id = event.message_id(),
        goldrelay.outcome = Empty,
    );
    telemetry::join(&span, context.as_deref());
    span
}

#[cfg(test)]
mod properties {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    const SECRET: &str = "q3Zx7PkT9mWcR2vLhN8sYdFb";

    fn auth() -> WebhookAuth {
        WebhookAuth::new(
            vec![SecretString::from(SECRET)],
            Duration::from_secs(300),
            None,
        )
    }

    /// A header value a client could send: any bytes HTTP allows there.
    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            "sha256=[0-9a-fA-F]{0,70}".prop_map(String::into_bytes),
            "-?[0-9]{1,25}".prop_map(String::into_bytes),
        ]
    }

    fn headers(signature: Option<Vec<u8>>, timestamp: Option<Vec<u8>>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [(SIGNATURE, signature), (TIMESTAMP, timestamp)] {
            let value = value.and_then(|v| HeaderValue::from_bytes(&v).ok());
            if let Some(value) = value {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        headers
    }

    proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_are_refused_without_panicking(
            signature in prop::option::of(header_value()),
            timestamp in prop::option::of(header_value()),
            body in prop::collection::vec(any::<u8>(), 0..512),
            now in any::<i64>().prop_filter_map("a representable instant", |s| {
                DateTime::from_timestamp(s % 100_000_000_000, 0)
            }),
        ) {
            let refused = auth().verify(&headers(signature, timestamp), &body, now);
            prop_assert!(matches!(refused, Err(ApiError::BadSignature(_))), "{refused:?}");
        }

        #[test]
        fn a_signed_body_with_any_timestamp_is_judged_without_panicking(
            sent in prop_oneof![any::<i64>(), i64::MIN..i64::MIN + 10, i64::MAX - 10..=i64::MAX],
            now in 0i64..4_000_000_000,
        ) {
            let timestamp = sent.to_string();
            let signature = format!("sha256={}", hex::encode(expected(&SecretString::from(SECRET), &timestamp, b"{}")));
            let headers = headers(Some(signature.into_bytes()), Some(timestamp.into_bytes()));
            let at = DateTime::from_timestamp(now, 0).expect("in range");
            let fresh = now.abs_diff(sent) <= 300;
            prop_assert_eq!(auth().verify(&headers, b"{}", at).is_ok(), fresh);
        }

        #[test]
        fn a_body_signed_with_the_secret_just_now_is_accepted(
            body in prop::collection::vec(any::<u8>(), 0..512),
            now in 0i64..4_000_000_000,
        ) {
            let timestamp = now.to_string();
            let signature = format!("sha256={}", hex::encode(expected(&SecretString::from(SECRET), &timestamp, &body)));
            let headers = headers(Some(signature.into_bytes()), Some(timestamp.into_bytes()));
            let at = DateTime::from_timestamp(now, 0).expect("in range");
            prop_assert!(auth().verify(&headers, &body, at).is_ok());
        }
    }
}
