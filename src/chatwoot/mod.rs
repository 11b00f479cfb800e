//! The outbound Chatwoot client: the two calls goldrelay makes, and what their
//! failures mean (transient or permanent, and whether the message may exist).

mod liquid;

pub use liquid::as_sent;

use crate::domain::{Turn, TurnRole};

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
/// The most list requests one lookup makes. Each pair reads at least 100
/// messages (see [`ChatwootClient::find_reply`]), so this covers some 25,000
/// messages after the lookup's floor; a busier conversation leaves the lookup
/// uncertain rather than reading without end.
pub const MAX_LOOKUP_PAGES: usize = 500;
/// `after=<id>` alone answers at most this many messages (`messages_after`,
/// `app/finders/message_finder.rb`); fewer means every id above was read.
const AFTER_PAGE: usize = 100;
/// No `after` answers at most this many: the latest, or the latest before
/// `before` (`app/finders/message_finder.rb`).
pub const LATEST_PAGE: usize = 20;
/// `after` and `before` together answer at most this many (`messages_between`).
const RANGE_PAGE: usize = 1000;
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

/// What a lookup of an earlier attempt's message concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The message exists: this is its id.
    Found(i64),
    /// Every message above the lookup's floor was read; none is it.
    Absent,
    /// The lookup could not read every message above its floor; the message may exist.
    Uncertain(String),
}

/// What a lookup searches for: a message only goldrelay can have written.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// `content_attributes.gold_reply_id` of the message.
    pub reply_id: &'a str,
    /// The content Chatwoot stores for it, when known exactly (a reply that is
    /// not rendered as Liquid reads as approved); `None` skips the check.
    pub content: Option<&'a str>,
    /// An id every message of this reply is above: the id of a message that
    /// existed before the reply's first create left (0 when none is known).
    /// Chatwoot's ids come from one sequence, taken at insert.
    pub floor: i64,
}

/// A lookup's conclusion, and the messages that carried the reply's marker
/// without being goldrelay's (another user's, or other content).
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub lookup: Lookup,
    pub impostors: Vec<i64>,
}

#[derive(Deserialize)]
struct ListBody {
    payload: Vec<ListedMessage>,
}

#[derive(Deserialize)]
struct ListedMessage {
    id: i64,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    message_type: Option<i64>,
    #[serde(default)]
    content_attributes: Value,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    sender: Value,
    #[serde(default)]
    private: Option<bool>,
    /// Unix seconds in the REST API (`_message.json.jbuilder`).
    #[serde(default)]
    created_at: Option<i64>,
}

/// One message of a conversation as a context capture reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: i64,
    /// `created_at`, Unix seconds; Chatwoot orders a conversation by it.
    pub created_at: i64,
    /// The turn it makes, or `None` when it is left out (see [`turn_of`]).
    pub turn: Option<Turn>,
}

#[derive(Deserialize)]
struct Profile {
    id: i64,
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
            "client_message_id": reply_id,
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

    /// Looks for the message of `wanted` among every message of the
    /// conversation above `wanted.floor`. `MessageFinder` filters by id but
    /// orders by `created_at` (`app/finders/message_finder.rb`), and the two
    /// can disagree (concurrent inserts, channels that store the provider's
    /// time), so pages are id ranges, never "before the oldest seen":
    /// `after=lo` answers the 100 earliest-created above `lo`; fewer than 100
    /// means every id above `lo` was read. Otherwise the range up to the
    /// highest id seen is read whole with `after`+`before` (up to 1000,
    /// halved while full), and the walk goes on above it. `pace` runs before
    /// every request.
    ///
    /// A message is ours only if it carries the marker, is outgoing, was sent
    /// by goldrelay's own user (any user token may set `content_attributes`),
    /// and holds the expected content when that is known. Others carrying the
    /// marker are impostors: reported, never taken for ours.
    pub async fn find_reply<F, Fut>(
        &self,
        account_id: i64,
        conversation_id: i64,
        wanted: &Wanted<'_>,
        pace: F,
    ) -> Result<Search, SendError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        pace().await;
        let me = self.me().await?;
        let url = self.messages_url(account_id, conversation_id);
        let mut search = Search {
            lookup: Lookup::Absent,
            impostors: Vec::new(),
        };
        let mut lo = wanted.floor;
        let mut requests = 1;
        while requests < MAX_LOOKUP_PAGES {
            pace().await;
            requests += 1;
            let page = self.list_page(url.clone(), &[("after", lo)]).await?;
            if let Some(found) = search.sift(&page, wanted, me) {
                search.lookup = Lookup::Found(found);
                return Ok(search);
            }
            let Some(top) = page.iter().map(|m| m.id).max() else {
                return Ok(search);
            };
            if page.len() < AFTER_PAGE {
                return Ok(search);
            }
            let mut hi = top.saturating_add(1);
            loop {
                if requests >= MAX_LOOKUP_PAGES {
                    break;
                }
                pace().await;
                requests += 1;
                let range = [("after", lo.saturating_add(1)), ("before", hi)];
                let range = self.list_page(url.clone(), &range).await?;
                if range.len() < RANGE_PAGE {
                    if let Some(found) = search.sift(&range, wanted, me) {
                        search.lookup = Lookup::Found(found);
                        return Ok(search);
                    }
                    lo = hi.saturating_sub(1);
                    break;
                }
                // More than 1000 messages in (lo, hi): read half the range.
                let half = lo.saturating_add(1).saturating_add((hi - lo - 1) / 2);
                if half <= lo.saturating_add(1) {
                    return Ok(search.uncertain("1000 messages share one id".into()));
                }
                hi = half;
            }
        }
        Ok(search.uncertain(format!(
            "the lookup made {MAX_LOOKUP_PAGES} requests without reading every message \
             since the reply's first attempt"
        )))
    }

    /// One page of a conversation for a context capture: the latest
    /// [`LATEST_PAGE`] messages, or the latest before `before`, oldest first.
    /// Private notes and activity messages are filtered by Chatwoot
    /// (`filter_internal_messages`, `app/finders/message_finder.rb`) and
    /// again here, for versions that do not know the parameter.
    pub async fn turns_page(
        &self,
        account_id: i64,
        conversation_id: i64,
        before: Option<i64>,
    ) -> Result<Vec<Listed>, SendError> {
        let mut url = self.messages_url(account_id, conversation_id);
        url.query_pairs_mut()
            .append_pair("filter_internal_messages", "true");
        let before: Vec<(&str, i64)> = before.map(|id| ("before", id)).into_iter().collect();
        let page = self.list_page(url, &before).await?;
        Ok(page
            .iter()
            .map(|m| Listed {
                id: m.id,
                created_at: m.created_at.unwrap_or_default(),
                turn: turn_of(m),
            })
            .collect())
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
            .list_page(url, &[("after", message_id.saturating_sub(1))])
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
        params: &[(&str, i64)],
    ) -> Result<Vec<ListedMessage>, SendError> {
        for (param, id) in params {
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

impl Search {
    /// The id of our message in `page`, noting every impostor on the way.
    fn sift(&mut self, page: &[ListedMessage], wanted: &Wanted<'_>, me: i64) -> Option<i64> {
        let marked = page.iter().filter(|m| {
            m.content_attributes
                .get("gold_reply_id")
                .and_then(Value::as_str)
                == Some(wanted.reply_id)
        });
        for message in marked {
            if is_ours(message, wanted, me) {
                return Some(message.id);
            }
            if !self.impostors.contains(&message.id) {
                self.impostors.push(message.id);
            }
        }
        None
    }

    fn uncertain(mut self, why: String) -> Self {
        self.lookup = Lookup::Uncertain(why);
        self
    }
}

/// The turn a listed message makes in a conversation's context: incoming
/// (`message_type` 0) is the customer's; outgoing (1, an agent's or a bot's)
/// and template (3, what Chatwoot itself showed the customer: a CSAT survey,
/// an e-mail prompt, a WhatsApp template) are the assistant's. Left out:
/// private notes and activity messages (2), which the customer never saw; a
/// deleted message (`content_attributes.deleted`, its text replaced,
/// `messages_controller.rb#destroy`); and one without text (attachments alone).
fn turn_of(message: &ListedMessage) -> Option<Turn> {
    let role = match message.message_type? {
        0 => TurnRole::User,
        1 | 3 => TurnRole::Assistant,
        _ => return None,
    };
    let deleted = message.content_attributes["deleted"] == Value::Bool(true);
    if message.private == Some(true) || deleted {
        return None;
    }
    let content = message
        .content
        .as_deref()
        .filter(|c| !c.trim().is_empty())?;
    Some(Turn {
        role,
        content: content.to_owned(),
    })
}

/// Outgoing (`message_type` 1), from goldrelay's own user, with the content
/// expected when it is known.
fn is_ours(message: &ListedMessage, wanted: &Wanted<'_>, me: i64) -> bool {
    let from_me = message.sender["type"] == "user" && message.sender["id"].as_i64() == Some(me);
    let content = wanted
        .content
        .is_none_or(|expected| message.content.as_deref() == Some(expected));
    message.message_type == Some(1) && from_me && content
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

/// Whether `body` is one of Chatwoot's JSON error bodies: an object with
/// `error`, `errors` or `message`.
fn chatwoot_json(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|v| {
        v.get("error").is_some() || v.get("errors").is_some() || v.get("message").is_some()
    })
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
    fn only_what_the_customer_saw_becomes_a_turn_and_each_in_its_role() {
        let listed = |message_type: i64, private: bool, content: Value, attrs: Value| {
            let m: ListedMessage = serde_json::from_value(json!({"id": 1,
                "message_type": message_type, "private": private, "content": content,
                "content_attributes": attrs, "created_at": 1_700_000_000}))
            .unwrap();
            turn_of(&m).map(|t| (t.role, t.content))
        };
        let text = || json!("Where is my parcel?");
        let said = |role| Some((role, "Where is my parcel?".to_owned()));
        assert_eq!(listed(0, false, text(), json!({})), said(TurnRole::User));
        assert_eq!(
            listed(1, false, text(), json!({})),
            said(TurnRole::Assistant)
        );
        assert_eq!(
            listed(3, false, text(), json!({})),
            said(TurnRole::Assistant)
        );
        assert_eq!(listed(1, true, text(), json!({})), None, "a private note");
        assert_eq!(
            listed(2, false, text(), json!({})),
            None,
            "an activity message"
        );
        let deleted = json!({"deleted": true});
        assert_eq!(listed(0, false, text(), deleted), None, "a deleted message");
        assert_eq!(
            listed(0, false, Value::Null, json!({})),
            None,
            "attachments alone"
        );
        assert_eq!(listed(0, false, json!("  "), json!({})), None);
        assert_eq!(listed(9, false, text(), json!({})), None, "an unknown type");
    }

    #[test]
    fn the_token_header_has_no_underscore_for_proxies_to_drop() {
        assert!(!TOKEN_HEADER.contains('_'));
        assert!(TOKEN_HEADER.eq_ignore_ascii_case("api-access-token"));
    }
}
