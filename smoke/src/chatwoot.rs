//! Chatwoot's API, read-only: its health and one conversation's messages.

use crate::http::{self, Answer, TransportError};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

/// The header Chatwoot reads a user's access token from.
const TOKEN_HEADER: &str = "api_access_token";

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
