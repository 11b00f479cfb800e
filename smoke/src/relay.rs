//! goldrelay's API, as any client sees it. Remembers whether goldrelay ever
//! answered, because "could not be reached at all" has its own exit code.

use crate::http::{self, Answer, TransportError};
use rand::Rng;
use reqwest::{RequestBuilder, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::time::Duration;

/// Which bearer token a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    None,
    /// A random token goldrelay cannot know.
    Wrong,
    /// The operator's `--token`.
    Real,
}

/// A goldrelay client.
pub struct Relay {
    http: reqwest::Client,
    base: Url,
    token: Option<SecretString>,
    wrong_token: String,
    answered: bool,
    failed_transport: bool,
}

impl Relay {
    /// A client for the goldrelay at `base`, with the operator's token if any.
    pub fn new(base: Url, token: Option<SecretString>) -> reqwest::Result<Self> {
        Ok(Self {
            http: http::client()?,
            base,
            token,
            wrong_token: format!("smoke-wrong-{:032x}", rand::rng().random::<u128>()),
            answered: false,
            failed_transport: false,
        })
    }

    /// `GET /hc`
    pub async fn health(&mut self, timeout: Duration) -> Result<Answer, TransportError> {
        let request = self.http.get(http::endpoint(&self.base, "hc"));
        self.send(request.timeout(timeout)).await
    }

    /// `POST /api/webhooks/gold-replies`
    pub async fn post_reply(
        &mut self,
        body: &Value,
        credential: Credential,
    ) -> Result<Answer, TransportError> {
        let url = http::endpoint(&self.base, "api/webhooks/gold-replies");
        let request = self.authorized(self.http.post(url), credential);
        self.send(request.json(body)).await
    }

    /// `POST /api/webhooks/gold-replies` under a W3C `traceparent`.
    pub async fn post_traced(
        &mut self,
        body: &Value,
        traceparent: &str,
    ) -> Result<Answer, TransportError> {
        let url = http::endpoint(&self.base, "api/webhooks/gold-replies");
        let request = self.authorized(self.http.post(url), Credential::Real);
        self.send(request.header("traceparent", traceparent).json(body))
            .await
    }

    /// `GET /api/gold-replies/{reply_id}`
    pub async fn reply(
        &mut self,
        reply_id: &str,
        timeout: Duration,
    ) -> Result<Answer, TransportError> {
        let url = http::endpoint(&self.base, &format!("api/gold-replies/{reply_id}"));
        let request = self.authorized(self.http.get(url), Credential::Real);
        self.send(request.timeout(timeout)).await
    }

    /// True when every request so far failed before an HTTP answer.
    pub fn never_answered(&self) -> bool {
        self.failed_transport && !self.answered
    }

    fn authorized(&self, request: RequestBuilder, credential: Credential) -> RequestBuilder {
        match (credential, &self.token) {
            (Credential::Real, Some(token)) => request.bearer_auth(token.expose_secret()),
            (Credential::Wrong, _) => request.bearer_auth(&self.wrong_token),
            _ => request,
        }
    }

    async fn send(&mut self, request: RequestBuilder) -> Result<Answer, TransportError> {
        let result = http::send(request).await;
        match &result {
            Ok(_) => self.answered = true,
            Err(_) => self.failed_transport = true,
        }
        result
    }
}
