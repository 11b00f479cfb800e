//! The outbound Chatwoot client: the two calls goldrelay makes, and what their
//! failures mean (transient or permanent, and whether the message may exist).

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// The header Chatwoot reads its API token from.
pub const TOKEN_HEADER: &str = "api_access_token";
/// How far back a lookup pages through a conversation, at 20 messages a page.
const MAX_LOOKUP_PAGES: usize = 10;
/// Slack for clocks: messages this much older than the reply are still searched.
const LOOKUP_SLACK_SECS: i64 = 300;

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
    /// Retrying cannot help: wrong token, unknown conversation, invalid message.
    Permanent { status: u16, detail: String },
}

impl SendError {
    pub fn detail(&self) -> &str {
        match self {
            SendError::Transient { detail, .. } | SendError::Permanent { detail, .. } => detail,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Transient { status, .. } => *status,
            SendError::Permanent { status, .. } => Some(*status),
        }
    }
}

/// A client for one Chatwoot installation.
#[derive(Clone)]
pub struct ChatwootClient {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
}

#[derive(Deserialize)]
struct MessageBody {
    id: i64,
}

#[derive(Deserialize)]
struct ListBody {
    payload: Vec<ListedMessage>,
}

#[derive(Deserialize)]
struct ListedMessage {
    id: i64,
    #[serde(default)]
    created_at: i64,
    #[serde(default)]
    content_attributes: Value,
}

impl ChatwootClient {
    pub fn new(base: Url, token: SecretString, timeout: Duration) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("goldrelay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base, token })
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
    pub async fn create_message(
        &self,
        account_id: i64,
        conversation_id: i64,
        reply_id: &str,
        content: &str,
        private: bool,
    ) -> Result<i64, SendError> {
        let body = json!({
            "content": content,
            "message_type": "outgoing",
            "private": private,
            "content_type": "text",
            "content_attributes": { "gold_reply_id": reply_id },
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

    /// Looks through the conversation's recent messages for one carrying
    /// `gold_reply_id`, paging back to shortly before `since`.
    pub async fn find_reply(
        &self,
        account_id: i64,
        conversation_id: i64,
        reply_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<i64>, SendError> {
        let url = self.messages_url(account_id, conversation_id);
        let mut before: Option<i64> = None;
        for _ in 0..MAX_LOOKUP_PAGES {
            let page = self.list_page(url.clone(), before).await?;
            if let Some(found) = page.iter().find(|m| carries(m, reply_id)) {
                return Ok(Some(found.id));
            }
            let Some(oldest) = page.first() else {
                return Ok(None);
            };
            if page.len() < 20 || oldest.created_at < since.timestamp() - LOOKUP_SLACK_SECS {
                return Ok(None);
            }
            before = Some(oldest.id);
        }
        Ok(None)
    }

    async fn list_page(
        &self,
        mut url: Url,
        before: Option<i64>,
    ) -> Result<Vec<ListedMessage>, SendError> {
        if let Some(id) = before {
            url.query_pairs_mut().append_pair("before", &id.to_string());
        }
        self.call(self.authed(self.http.get(url)), Call::Lookup, |_, text| {
            serde_json::from_str::<ListBody>(text)
                .map(|b| b.payload)
                .map_err(|e| format!("Chatwoot's message list could not be read: {e}"))
        })
        .await
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
        self.list_page(self.messages_url(account_id, conversation_id), None)
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

fn carries(message: &ListedMessage, reply_id: &str) -> bool {
    message
        .content_attributes
        .get("gold_reply_id")
        .and_then(Value::as_str)
        == Some(reply_id)
}

/// Sorts an HTTP error answer into transient or permanent.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> SendError {
    let detail = format!(
        "Chatwoot answered {}: {}",
        status.as_u16(),
        error_text(body)
    );
    let flood_guard =
        status == StatusCode::UNPROCESSABLE_ENTITY && body.contains("Too many messages");
    let transient = status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        )
        || flood_guard;
    if transient {
        SendError::Transient {
            status: Some(status.as_u16()),
            retry_after: retry_after(headers, Utc::now()),
            // A 5xx may come from a proxy after Rails created the message.
            maybe_created: status.is_server_error(),
            detail,
        }
    } else {
        SendError::Permanent {
            status: status.as_u16(),
            detail,
        }
    }
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

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    let at: DateTime<Utc> = at.into();
    (at - now).to_std().ok()
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
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_flood_guard_is_transient_but_other_422s_are_permanent() {
        let h = HeaderMap::new();
        let flood = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            &h,
            r#"{"error":"Validation failed: Too many messages"}"#,
        );
        assert!(matches!(
            flood,
            SendError::Transient {
                maybe_created: false,
                ..
            }
        ));
        let long = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            &h,
            r#"{"error":"Validation failed: Content is too long (maximum is 150000 characters)"}"#,
        );
        assert!(matches!(long, SendError::Permanent { status: 422, .. }));
    }

    #[test]
    fn devise_and_plain_text_errors_are_both_readable() {
        let h = HeaderMap::new();
        let devise = classify(
            StatusCode::UNAUTHORIZED,
            &h,
            r#"{"errors":["You need to sign in or sign up before continuing."]}"#,
        );
        assert_eq!(
            devise.detail(),
            "Chatwoot answered 401: You need to sign in or sign up before continuing."
        );
        let throttled = classify(StatusCode::TOO_MANY_REQUESTS, &h, "Retry later\n");
        assert_eq!(throttled.detail(), "Chatwoot answered 429: Retry later");
    }

    #[test]
    fn a_path_prefix_in_the_base_url_is_kept() {
        let base = Url::parse("https://example.com/chatwoot/").unwrap();
        let client =
            ChatwootClient::new(base, SecretString::from("t"), Duration::from_secs(1)).unwrap();
        assert_eq!(
            client.url("/health").as_str(),
            "https://example.com/chatwoot/health"
        );
        assert_eq!(
            client.messages_url(1, 2).as_str(),
            "https://example.com/chatwoot/api/v1/accounts/1/conversations/2/messages"
        );
    }

    #[test]
    fn api_is_up_only_when_data_and_queue_services_are_ok() {
        let ok = r#"{"version":"4.13.0","queue_services":"ok","data_services":"ok"}"#;
        assert_eq!(
            api_services(StatusCode::OK, ok),
            Ok("/api reports version \"4.13.0\"".into())
        );
        let degraded = r#"{"version":"4.13.0","queue_services":"failing","data_services":"ok"}"#;
        let refused = api_services(StatusCode::OK, degraded).unwrap_err();
        assert!(refused.starts_with("/api answered 200 OK: "), "{refused}");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = Utc::now();
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = now + chrono::Duration::seconds(30);
        let date = httpdate::fmt_http_date(later.into());
        h.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let got = retry_after(&h, now).unwrap().as_secs();
        assert!((29..=30).contains(&got), "{got}");
    }
}
