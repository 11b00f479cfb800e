//! What both clients share: an answer read in full, and transport failures
//! described without the URL (it may carry credentials) or any header.

use reqwest::{RequestBuilder, StatusCode, Url};
use serde_json::Value;
use std::error::Error as _;
use std::fmt;
use std::time::Duration;

/// The deadline for one request unless a check asks for less.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a non-JSON body a detail line quotes.
const SNIPPET_CHARS: usize = 120;

/// An HTTP answer, body read.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The body when it is JSON, `Null` otherwise.
    pub json: Value,
    /// The start of the body when it is not JSON.
    pub snippet: String,
}

impl Answer {
    /// The most telling text in an error body: a problem's `detail`,
    /// Chatwoot's `error` or `errors`, or the start of the body.
    pub fn reason(&self) -> String {
        let json = &self.json;
        let text = json["detail"]
            .as_str()
            .or_else(|| json["error"].as_str())
            .or_else(|| json["errors"][0].as_str())
            .map(str::to_owned);
        text.unwrap_or_else(|| self.snippet.clone())
    }

    /// `401: a valid bearer token is required`
    pub fn summary(&self) -> String {
        let reason = self.reason();
        if reason.is_empty() {
            self.status.as_u16().to_string()
        } else {
            format!("{}: {reason}", self.status.as_u16())
        }
    }
}

/// No HTTP answer came back: DNS, connect, TLS or a timeout.
#[derive(Debug, Clone)]
pub struct TransportError(String);

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client with smoke's user agent. Redirects are not followed: one would
/// carry the Chatwoot token (a custom header reqwest does not strip) to
/// wherever it points, and hide a wrong base URL; the 3xx is the answer.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("goldrelay-smoke/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build()
}

/// Sends and reads the whole answer.
pub async fn send(request: RequestBuilder) -> Result<Answer, TransportError> {
    let response = request.send().await.map_err(|e| describe(&e))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| describe(&e))?;
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let snippet = if json.is_null() {
        String::from_utf8_lossy(&bytes)
            .chars()
            .take(SNIPPET_CHARS)
            .collect::<String>()
            .trim()
            .to_owned()
    } else {
        String::new()
    };
    Ok(Answer {
        status,
        json,
        snippet,
    })
}

/// `base` with `path` appended to its own path, so a base behind a path prefix works.
pub fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url.set_query(None);
    url
}

/// The URL with any password replaced by `***`, for reports.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// The cause chain, innermost last, without the URL.
fn describe(error: &reqwest::Error) -> TransportError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut causes: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper's wrapper adds nothing an operator can act on.
        let noise = text.starts_with("client error (");
        if !noise && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        TransportError(kind.to_owned())
    } else {
        TransportError(format!("{kind}: {}", causes.join(": ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_keeps_the_base_path_prefix() {
        let base = Url::parse("https://example.com/relay/").unwrap();
        assert_eq!(
            endpoint(&base, "hc").as_str(),
            "https://example.com/relay/hc"
        );
        let bare = Url::parse("https://example.com").unwrap();
        assert_eq!(endpoint(&bare, "hc").as_str(), "https://example.com/hc");
    }

    #[test]
    fn a_password_in_a_url_is_not_shown() {
        let url = Url::parse("https://ops:hunter2@example.com/").unwrap();
        assert_eq!(redacted(&url), "https://ops:***@example.com/");
    }

    #[test]
    fn the_reason_prefers_a_problem_detail_then_chatwoot_error() {
        let answer = |json: Value| Answer {
            status: StatusCode::NOT_FOUND,
            json,
            snippet: String::new(),
        };
        let problem = answer(serde_json::json!({"detail": "no such reply"}));
        assert_eq!(problem.summary(), "404: no such reply");
        let chatwoot = answer(serde_json::json!({"error": "Resource could not be found"}));
        assert_eq!(chatwoot.reason(), "Resource could not be found");
        let devise = answer(serde_json::json!({"errors": ["You need to sign in"]}));
        assert_eq!(devise.reason(), "You need to sign in");
    }
}
