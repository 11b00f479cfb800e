//! Chatwoot's API, read-only: its health and one conversation's messages.

use crate::http::{self, Answer, TransportError};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

/// The header the access token goes in: Rack makes `HTTP_API_ACCESS_TOKEN` of
/// it, which Chatwoot reads (`app/controllers/concerns/access_token_auth_helper.rb`),
/// and unlike `api_access_token` nginx does not drop it by default.
const TOKEN_HEADER: &str = "Api-Access-Token";

/// The spelling Rails also accepts, which nginx drops by default.
const UNDERSCORE_TOKEN_HEADER: &str = "api_access_token";

/// What Chatwoot made of a token sent in one header (`GET /api/v1/profile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A user's token, accepted.
    User,
    /// An agent-bot token: refused on every endpoint not open to bots.
    Bot,
    /// Chatwoot answered as if no token were sent: the header never arrived.
    NoToken,
    /// Anything else: an unknown token, an error page, no answer.
    Other,
}

/// A Chatwoot client.
pub struct Chatwoot {
    http: reqwest::Client,
    base: Url,
    token: Option<SecretString>,
}

impl Chatwoot {
    /// A client for the Chatwoot at `base`; `token` is needed only to list messages.
    pub fn new(base: Url, token: Option<SecretString>) -> reqwest::Result<Self> {
        Ok(Self {
            http: http::client()?,
            base,
            token,
        })
    }

    /// `GET /health` (Chatwoot 3.x and later). Not `/hc`: that is the Help Center.
    pub async fn health(&self) -> Result<Answer, TransportError> {
        http::send(self.http.get(http::endpoint(&self.base, "health"))).await
    }

    /// `GET /api`: version and service status, on every version.
    pub async fn api_info(&self) -> Result<Answer, TransportError> {
        http::send(self.http.get(http::endpoint(&self.base, "api"))).await
    }

    /// Whether a token was given.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `GET /api/v1/profile` with the token in `Api-Access-Token`, or in
    /// `api_access_token` when `underscore`, and nowhere else.
    pub async fn profile(&self, underscore: bool) -> Seen {
        let Some(token) = &self.token else {
            return Seen::Other;
        };
        let header = if underscore {
            UNDERSCORE_TOKEN_HEADER
        } else {
            TOKEN_HEADER
        };
        let request = self.http.get(http::endpoint(&self.base, "api/v1/profile"));
        let Ok(answer) = http::send(request.header(header, token.expose_secret())).await else {
            return Seen::Other;
        };
        match answer.status.as_u16() {
            200 => Seen::User,
            401 if answer.reason().contains("not authorized for bots") => Seen::Bot,
            401 if answer.json["errors"].is_array() => Seen::NoToken,
            _ => Seen::Other,
        }
    }

    /// One page of a conversation: the latest 20 messages, or the 20 before `before`.
    pub async fn messages(
        &self,
        account_id: i64,
        conversation_id: i64,
        before: Option<i64>,
    ) -> Result<Answer, TransportError> {
        let path = format!("api/v1/accounts/{account_id}/conversations/{conversation_id}/messages");
        let mut request = self.http.get(http::endpoint(&self.base, &path));
        if let Some(id) = before {
            request = request.query(&[("before", id)]);
        }
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token.expose_secret());
        }
        http::send(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::TOKEN_HEADER;

    #[test]
    fn the_token_header_survives_a_proxy_that_drops_underscores() {
        assert!(!TOKEN_HEADER.contains('_'));
        assert!(TOKEN_HEADER.eq_ignore_ascii_case("api-access-token"));
    }
}
