//! The outbound Chatwoot client: the two calls goldrelay makes, and what their
//! failures mean (transient or permanent, and whether the message may exist).

mod liquid;

pub use liquid::as_sent;

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
/// The most pages a lookup reads (20 messages each, `app/finders/message_finder.rb`):
/// 10,000 messages. A conversation that busy since the reply was accepted leaves
/// the lookup uncertain rather than reading without end.
pub const MAX_LOOKUP_PAGES: usize = 500;
/// Messages in one list page (`MessageFinder`); a shorter page is the conversation's start.
const PAGE_SIZE: usize = 20;
/// Slack for clocks: messages this much older than the reply are still searched.
const LOOKUP_SLACK_SECS: i64 = 300;
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

/// What a lookup of an earlier attempt's message concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The message exists: this is its id.
    Found(i64),
    /// Every message since shortly before the reply was accepted was read; none is it.
    Absent,
    /// The lookup stopped before reaching the reply's time; the message may exist.
    Uncertain(String),
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
    #[serde(default)]
    status: Option<String>,
}

/// What Chatwoot holds about a message's fate in the customer's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelReport {
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    /// `content_attributes.external_error`, kept only while `failed`.
    pub error: Option<String>,
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

    /// Looks through the conversation for a message carrying `gold_reply_id`,
    /// paging back (`before=<oldest id seen>`) until the messages are older
    /// than `since` less a clock slack, or the conversation's start. `pace`
    /// runs before every page, so lookups keep to the worker's rate. Past
    /// [`MAX_LOOKUP_PAGES`] the answer is [`Lookup::Uncertain`]; an error
    /// answer or a failed request is the error.
    pub async fn find_reply<F, Fut>(
        &self,
        account_id: i64,
        conversation_id: i64,
        reply_id: &str,
        since: DateTime<Utc>,
        pace: F,
    ) -> Result<Lookup, SendError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let url = self.messages_url(account_id, conversation_id);
        let horizon = since.timestamp().saturating_sub(LOOKUP_SLACK_SECS);
        let mut before: Option<i64> = None;
        for _ in 0..MAX_LOOKUP_PAGES {
            pace().await;
            let page = self
                .list_page(url.clone(), before.map(|id| ("before", id)))
                .await?;
            if let Some(found) = page.iter().find(|m| carries(m, reply_id)) {
                return Ok(Lookup::Found(found.id));
            }
            let Some(oldest) = page.iter().min_by_key(|m| m.id) else {
                return Ok(Lookup::Absent);
            };
            if page.len() < PAGE_SIZE || oldest.created_at < horizon {
                return Ok(Lookup::Absent);
            }
            before = Some(oldest.id);
        }
        Ok(Lookup::Uncertain(format!(
            "the lookup read {MAX_LOOKUP_PAGES} pages of the conversation without reaching \
             the reply's time"
        )))
    }

    /// The channel status Chatwoot holds for `message_id`, read from the
    /// message list with `after=<message_id - 1>`, which starts at that message
    /// (`app/finders/message_finder.rb`). `None`: no such message (deleted).
    pub async fn channel_report(
        &self,
        account_id: i64,
        conversation_id: i64,
        message_id: i64,
    ) -> Result<Option<ChannelReport>, SendError> {
        let url = self.messages_url(account_id, conversation_id);
        let page = self
            .list_page(url, Some(("after", message_id.saturating_sub(1))))
            .await?;
        Ok(page.into_iter().find(|m| m.id == message_id).and_then(|m| {
            let error = m.content_attributes["external_error"]
                .as_str()
                .map(str::to_owned);
            let status = m.status?;
            Some(ChannelReport { status, error })
        }))
    }

    async fn list_page(
        &self,
        mut url: Url,
        from: Option<(&str, i64)>,
    ) -> Result<Vec<ListedMessage>, SendError> {
        if let Some((param, id)) = from {
            url.query_pairs_mut().append_pair(param, &id.to_string());
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

/// Sorts an HTTP error answer into transient or permanent, and says whether
/// the message may exist despite it.
///
/// `create` rescues every error into 422 `{"error": e.message}`
/// (`app/controllers/api/v1/accounts/conversations/messages_controller.rb`):
/// `Validation failed: …` comes from `save!`, before anything is stored, and
/// is permanent, except the flood guard, which passes. Any other 422 text
/// (an `after_create_commit` callback raising, e.g. Redis down) comes after
/// the row was committed, and a 5xx may come from a proxy after Rails
/// committed: both are maybe-sent. rack-attack's 429 and a 408 never reached Rails.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> SendError {
    let text = error_text(body);
    let detail = format!("Chatwoot answered {}: {text}", status.as_u16());
    let unprocessable = status == StatusCode::UNPROCESSABLE_ENTITY;
    let after_commit = unprocessable && !text.starts_with(VALIDATION_FAILED);
    let maybe_created = status.is_server_error() || after_commit;
    let transient = maybe_created
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        )
        || (unprocessable && text == FLOOD_GUARD);
    if transient {
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
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_flood_guard_is_transient_but_other_validation_failures_are_permanent() {
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
    fn a_422_raised_after_the_commit_and_a_5xx_may_have_created_the_message() {
        let h = HeaderMap::new();
        let redis = r#"{"error":"Redis::CannotConnectError: Error connecting to Redis"}"#;
        for (status, body) in [
            (StatusCode::UNPROCESSABLE_ENTITY, redis),
            (StatusCode::BAD_GATEWAY, "<html>Bad Gateway</html>"),
            (StatusCode::INTERNAL_SERVER_ERROR, ""),
        ] {
            let got = classify(status, &h, body);
            assert!(
                matches!(
                    got,
                    SendError::Transient {
                        maybe_created: true,
                        ..
                    }
                ),
                "{status}: {got:?}"
            );
        }
        let throttled = classify(StatusCode::TOO_MANY_REQUESTS, &h, "Retry later\n");
        assert!(matches!(
            throttled,
            SendError::Transient {
                maybe_created: false,
                ..
            }
        ));
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

    #[test]
    fn an_absurd_retry_after_is_cut_to_the_cap_and_a_past_date_is_no_wait() {
        let now = Utc::now();
        let mut h = HeaderMap::new();
        for huge in [
            "99999999999999999999",
            "18446744073709551615",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            h.insert(RETRY_AFTER, HeaderValue::from_static(huge));
            assert_eq!(retry_after(&h, now), Some(RETRY_AFTER_CAP), "{huge}");
        }
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        for junk in ["-5", "soon", ""] {
            h.insert(RETRY_AFTER, HeaderValue::from_static(junk));
            assert_eq!(retry_after(&h, now), None, "{junk:?}");
        }
    }

    #[test]
    fn the_token_header_has_no_underscore_for_proxies_to_drop() {
        assert!(!TOKEN_HEADER.contains('_'));
        assert!(TOKEN_HEADER.eq_ignore_ascii_case("api-access-token"));
    }
}
