//! The outbound Chatwoot client: the two calls goldrelay makes, and what their
//! failures mean (transient or permanent, and whether the message may exist).

mod lookup;
mod messages;
pub mod webhook_policy;

pub use crate::domain::as_sent;
pub use lookup::{Lookup, Search, Wanted, MAX_LOOKUP_PAGES};
pub use messages::{ChannelReport, Listed, LATEST_PAGE};

use crate::domain::ReplyId;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// The header the Chatwoot token is sent in. Chatwoot reads `api_access_token`
/// or `HTTP_API_ACCESS_TOKEN`, which is what Rack makes of `Api-Access-Token`
/// (`app/controllers/concerns/access_token_auth_helper.rb`); nginx drops
/// headers with `_` in their name by default, so the hyphenated one is sent.
pub const TOKEN_HEADER: &str = "Api-Access-Token";
/// The longest `Retry-After` taken as given. Anything longer (up to
/// `99999999999999999999` seconds or a date in year 9999) is cut to this, so
/// adding it to a time cannot overflow; it is far past any sane maximum age.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(366 * 24 * 3600);
/// How Chatwoot words a refused `save!`: nothing was stored
/// (`app/controllers/api/v1/accounts/conversations/messages_controller.rb`).
const VALIDATION_FAILED: &str = "Validation failed:";
/// Chatwoot's per-conversation flood guard (`Message#prevent_message_flooding`): it passes.
const FLOOD_GUARD: &str = "Validation failed: Too many messages";

/// Why a call to Chatwoot did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Worth retrying: the outage, throttle or timeout may pass.
    Transient {
        status: Option<u16>,
        retry_after: Option<Duration>,
        /// The request may have reached Chatwoot and created the message.
        maybe_created: bool,
        detail: String,
    },
    /// Retrying cannot help: unknown conversation, no access to it, invalid message.
    Permanent { status: u16, detail: String },
    /// Chatwoot itself refused goldrelay's API token (`Invalid Access Token`, or
    /// devise's "You need to sign in"): every request fails the same way until
    /// an operator fixes the token, so deliveries pause instead of failing.
    TokenRefused { detail: String },
}

impl SendError {
    pub fn detail(&self) -> &str {
        match self {
            SendError::Transient { detail, .. }
            | SendError::Permanent { detail, .. }
            | SendError::TokenRefused { detail } => detail,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Transient { status, .. } => *status,
            SendError::Permanent { status, .. } => Some(*status),
            SendError::TokenRefused { .. } => Some(401),
        }
    }

    /// The same error once a lookup has proven the request created no
    /// message: a transient one is no longer `maybe_created`.
    #[must_use]
    pub fn proven_not_created(self) -> Self {
        match self {
            SendError::Transient {
                status,
                retry_after,
                detail,
                ..
            } => SendError::Transient {
                status,
                retry_after,
                maybe_created: false,
                detail,
            },
            other => other,
        }
    }
}

/// A client for one Chatwoot installation.
#[derive(Clone)]
pub struct ChatwootClient {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
    /// goldrelay's own Chatwoot user, read once from `GET /api/v1/profile`.
    me: std::sync::Arc<tokio::sync::OnceCell<i64>>,
}

#[derive(Deserialize)]
struct MessageBody {
    id: i64,
}

#[derive(Deserialize)]
struct Profile {
    id: i64,
}

impl ChatwootClient {
    pub fn new(base: Url, token: SecretString, timeout: Duration) -> reqwest::Result<Self> {
        // A redirect would carry the token to wherever it points, and turn a
        // POST into a GET; Chatwoot's API never redirects, so none is followed.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("goldrelay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            token,
            me: std::sync::Arc::default(),
        })
    }

    /// `path` under the base URL, keeping any path prefix Chatwoot is served under.
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        url
    }

    fn messages_url(&self, account_id: i64, conversation_id: i64) -> Url {
        self.url(&format!(
            "/api/v1/accounts/{account_id}/conversations/{conversation_id}/messages"
        ))
    }

    /// Creates an outgoing text message marked with `gold_reply_id`; returns its id.
    ///
    /// The reply id also goes as `client_message_id`, the idempotency key that
    /// chatwoot#15743 / PR #15744 propose (unique per conversation; the same key
    /// and payload answer the original message). Rails ignores a parameter it
    /// does not know, so today's Chatwoot is unaffected.
    pub async fn create_message(
        &self,
        account_id: i64,
        conversation_id: i64,
        reply_id: &ReplyId,
        content: &str,
        private: bool,
    ) -> Result<i64, SendError> {
        let body = json!({
            "content": content,
            "message_type": "outgoing",
            "private": private,
            "content_type": "text",
            "content_attributes": { "gold_reply_id": reply_id.as_str() },
            "client_message_id": reply_id.as_str(),
        });
        let request = self
            .http
            .post(self.messages_url(account_id, conversation_id));
        self.call(
            self.authed(request).json(&body),
            Call::Create,
            |status, text| {
                serde_json::from_str::<MessageBody>(text)
                    .map(|m| m.id)
                    .map_err(|_| format!("Chatwoot answered {status} without a message id"))
            },
        )
        .await
    }

    /// goldrelay's own Chatwoot user id (`GET /api/v1/profile`), read once.
    /// An agent-bot token is refused here, as on the message list.
    pub async fn me(&self) -> Result<i64, SendError> {
        self.me
            .get_or_try_init(|| async {
                let request = self.authed(self.http.get(self.url("/api/v1/profile")));
                self.call(request, Call::Lookup, |_, text| {
                    serde_json::from_str::<Profile>(text)
                        .map(|p| p.id)
                        .map_err(|e| format!("Chatwoot's profile could not be read: {e}"))
                })
                .await
            })
            .await
            .copied()
    }

    /// `GET /health`, falling back to `GET /api` on versions before 4.11.
    pub async fn health(&self) -> Result<String, String> {
        let probe = |path: &str| self.http.get(self.url(path));
        match self
            .call(probe("/health"), Call::Probe, |_, _| Ok(()))
            .await
        {
            Ok(()) => return Ok("/health answered 200".into()),
            // Chatwoot answered, but not with success: older versions have no /health.
            Err(e) if e.status().is_some() => {}
            Err(e) => return Err(e.detail().to_owned()),
        }
        self.call(probe("/api"), Call::Probe, api_services)
            .await
            .map_err(|e| e.detail().to_owned())
    }

    /// One authenticated read: proves the API token is accepted for this conversation.
    pub async fn can_read(&self, account_id: i64, conversation_id: i64) -> Result<(), SendError> {
        self.list_page(self.messages_url(account_id, conversation_id), &[])
            .await
            .map(|_| ())
    }

    fn authed(&self, request: RequestBuilder) -> RequestBuilder {
        request.header(TOKEN_HEADER, self.token.expose_secret())
    }

    /// Every call's one path: send, classify an error answer, then `decode` a
    /// successful one. A success that cannot be decoded is transient, and may
    /// have created the message.
    async fn call<T>(
        &self,
        request: RequestBuilder,
        call: Call,
        decode: impl FnOnce(StatusCode, &str) -> Result<T, String>,
    ) -> Result<T, SendError> {
        let failed = |e: reqwest::Error| call.transport_error(&e);
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(failed)?;
        if !status.is_success() {
            return Err(classify(status, &headers, &text));
        }
        decode(status, &text).map_err(|detail| SendError::Transient {
            status: Some(status.as_u16()),
            retry_after: None,
            maybe_created: true,
            detail,
        })
    }
}

/// What a call does, which decides what its transport failures mean.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// Creates a message: a failure after connecting may have created it.
    Create,
    /// Reads messages to find one an earlier attempt may have created.
    Lookup,
    /// Asks whether Chatwoot is up; the error is read as text.
    Probe,
}

impl Call {
    fn transport_error(self, e: &reqwest::Error) -> SendError {
        let described = describe_transport(e);
        let (maybe_created, detail) = match self {
            // A refused connection never sent the request; anything later might have.
            Call::Create => (!e.is_connect(), format!("Chatwoot {described}")),
            Call::Lookup => (true, format!("Chatwoot lookup {described}")),
            Call::Probe => (false, described),
        };
        SendError::Transient {
            status: None,
            retry_after: None,
            maybe_created,
            detail,
        }
    }
}

/// Reads `GET /api`: up only when both its data and queue services say ok.
fn api_services(status: StatusCode, text: &str) -> Result<String, String> {
    let body: Value = serde_json::from_str(text).unwrap_or_default();
    if body["data_services"] == "ok" && body["queue_services"] == "ok" {
        Ok(format!("/api reports version {}", body["version"]))
    } else {
        Err(format!("/api answered {status}: {body}"))
    }
}

/// Sorts an HTTP error answer into transient or permanent, and says whether
/// the message may exist despite it. Who answered matters as much as the status.
///
/// `create` rescues every error into 422 `{"error": e.message}`
/// (`app/controllers/api/v1/accounts/conversations/messages_controller.rb`):
/// `Validation failed: …` comes from `save!`, before anything is stored, and
/// is permanent, except the flood guard, which passes. Any other 422 text
/// (an `after_create_commit` callback raising, e.g. Redis down, after the row was committed) and a 5xx (a proxy may
/// answer after Rails committed) are maybe-sent. rack-attack's 429 and a 408
/// never reached Rails.
///
/// Chatwoot answers its own 401, 403 and 404 with JSON
/// (`request_exception_handler.rb`, `access_token_auth_helper.rb`). The same
/// status without Chatwoot's JSON is a proxy, a WAF or a rollout in front of
/// it, which passes: transient. Chatwoot's own 401 for the token itself is
/// [`SendError::TokenRefused`]; its other 401s concern one account or
/// conversation and are permanent for that reply.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> SendError {
    let text = error_text(body);
    let detail = format!("Chatwoot answered {}: {text}", status.as_u16());
    let from_chatwoot = chatwoot_json(body);
    let gatekeeper = matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    );
    if status == StatusCode::UNAUTHORIZED
        && from_chatwoot
        && TOKEN_REFUSALS.contains(&text.as_str())
    {
        return SendError::TokenRefused { detail };
    }
    let unprocessable = status == StatusCode::UNPROCESSABLE_ENTITY;
    let after_commit = unprocessable && !text.starts_with(VALIDATION_FAILED);
    let maybe_created = status.is_server_error() || after_commit;
    let transient = maybe_created
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        )
        || (unprocessable && text == FLOOD_GUARD)
        || (gatekeeper && !from_chatwoot);
    if transient {
        let detail = if gatekeeper {
            format!("{detail} (not Chatwoot's own answer: a proxy, a firewall or a rollout in front of it)")
        } else {
            detail
        };
        SendError::Transient {
            status: Some(status.as_u16()),
            retry_after: retry_after(headers, Utc::now()),
            maybe_created,
            detail,
        }
    } else {
        SendError::Permanent {
            status: status.as_u16(),
            detail,
        }
    }
}

/// Chatwoot's 401 texts that mean the token itself is refused: no token
/// found (`access_token_auth_helper.rb`), or none sent that Rails could read
/// (devise_token_auth's `render_authenticate_error`).
const TOKEN_REFUSALS: [&str; 2] = [
    "Invalid Access Token",
    "You need to sign in or sign up before continuing.",
];

/// Whether `body` is the JSON Chatwoot answers its own 401, 403 and 404
/// with: `{"error": …}` (`request_exception_handler.rb`) or devise's
/// `{"errors": […]}`. Its `{"message": …}` body is a 422's
/// (`render_record_invalid`); a 401/403/404 carrying one is a gateway's
/// (Kong's `{"message":"no Route matched …"}`, AWS's `{"message":"Forbidden"}`).
fn chatwoot_json(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .is_ok_and(|v| v.get("error").is_some() || v.get("errors").is_some())
}

/// The text of Chatwoot's error body: `{"error": …}`, devise's `{"errors": […]}`, or the raw text.
fn error_text(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        v.get("error")
            .and_then(Value::as_str)
            .or_else(|| v.pointer("/errors/0").and_then(Value::as_str))
            .or_else(|| v.get("message").and_then(Value::as_str))
            .map(str::to_owned)
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_owned());
    let mut short: String = text.chars().take(300).collect();
    if short.is_empty() {
        short = "(empty body)".into();
    }
    short
}

/// `Retry-After` as seconds or as an HTTP date, at most [`RETRY_AFTER_CAP`].
/// A number too large for any integer type is the cap, not an error; a date
/// in the past is no wait.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        let secs = raw.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP));
    }
    // Compared as SystemTime: no conversion of a far-off date can overflow.
    let at = httpdate::parse_http_date(raw).ok()?;
    let wait = at
        .duration_since(std::time::SystemTime::from(now))
        .unwrap_or_default();
    Some(wait.min(RETRY_AFTER_CAP))
}

fn describe_transport(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    // reqwest puts the URL in its own Display; the URL holds no secret, but
    // the chain above is enough and keeps lines short.
    text
}

#[cfg(test)]
mod tests;
