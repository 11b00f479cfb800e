//! The checks. Each returns `Ok(detail)` or `Err(detail)`; the runner times
//! them and turns the result into a verdict.

mod chatwoot;
mod relay;

use crate::chatwoot::Chatwoot;
use crate::cli::{CheckName, Cli};
use crate::progress::Progress;
use crate::relay::Relay;
use chrono::Utc;
use rand::Rng;
use serde_json::{json, Value};
use std::time::Duration;

/// A check's result before timing: the detail line either way.
pub type Outcome = Result<String, String>;

/// The smoke reply: tagged, unique, private unless `--public`.
pub struct SmokeReply {
    pub id: String,
    pub account_id: i64,
    pub conversation_id: i64,
    pub private: bool,
    pub body: Value,
    /// The W3C trace id the reply is posted under (`traceparent`): a
    /// goldrelay that exports traces continues it, so the report's id finds
    /// the reply's whole way in the tracing backend.
    pub trace_id: String,
}

impl SmokeReply {
    fn new(account_id: i64, conversation_id: i64, private: bool) -> Self {
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let id = format!("smoke-{stamp}-{:08x}", rand::rng().random::<u32>());
        let body = json!({
            "reply_id": id,
            "account_id": account_id,
            "conversation_id": conversation_id,
            "action": "approve_send",
            "content": format!(
                "goldrelay smoke test {id}: an automatic post-deploy check, please ignore."
            ),
            "private": private,
            "approved_by": "smoke",
            "tags": ["smoke"],
            "metadata": {"smoke": true, "smoke_version": env!("CARGO_PKG_VERSION")},
        });
        Self {
            id,
            account_id,
            conversation_id,
            private,
            body,
            // Never all zeros: W3C calls that id invalid.
            trace_id: format!("{:032x}", rand::rng().random::<u128>() | 1),
        }
    }

    /// The `traceparent` header: this trace, a fresh parent span, sampled.
    pub fn traceparent(&self) -> String {
        let span = rand::rng().random::<u64>() | 1;
        format!("00-{}-{span:016x}-01", self.trace_id)
    }
}

/// What the checks share: clients, limits, and what earlier checks found.
pub struct Run {
    pub relay: Relay,
    pub chatwoot: Option<Chatwoot>,
    pub wait: Duration,
    pub timeout: Duration,
    pub expect_confirmation: bool,
    pub smoke: Option<SmokeReply>,
    /// goldrelay answered 202 to the smoke reply.
    pub accepted: bool,
    /// The Chatwoot message goldrelay recorded for the smoke reply.
    pub message_id: Option<i64>,
    /// When goldrelay received the smoke reply (Unix seconds, its clock).
    pub received_at: Option<i64>,
    /// Why relay.delivery failed, for the checks that build on it.
    pub delivery_failure: Option<String>,
}

impl Run {
    /// Clients and limits from the command line; the smoke reply needs both ids.
    pub fn new(cli: &Cli) -> reqwest::Result<Self> {
        let chatwoot = cli
            .chatwoot_url
            .clone()
            .map(|url| Chatwoot::new(url, cli.chatwoot_token.clone()))
            .transpose()?;
        let smoke = cli
            .account_id
            .zip(cli.conversation_id)
            .map(|(a, c)| SmokeReply::new(a, c, !cli.public));
        Ok(Self {
            relay: Relay::new(cli.url.clone(), cli.token.clone())?,
            chatwoot,
            wait: cli.wait,
            timeout: cli.timeout,
            expect_confirmation: cli.expect_confirmation,
            smoke,
            accepted: false,
            message_id: None,
            received_at: None,
            delivery_failure: None,
        })
    }

    /// Runs one check.
    pub async fn check(&mut self, name: CheckName, progress: &Progress) -> Outcome {
        match name {
            CheckName::RelayHealth => relay::health(self, progress).await,
            CheckName::RelayAuth => relay::auth(self).await,
            CheckName::RelayValidation => relay::validation(self).await,
            CheckName::RelayDelivery => {
                let outcome = relay::delivery(self, progress).await;
                self.delivery_failure = outcome.as_ref().err().cloned();
                outcome
            }
            CheckName::RelayIdempotency => relay::idempotency(self).await,
            CheckName::ChatwootHealth => chatwoot::health(self).await,
            CheckName::ChatwootMessage => chatwoot::message(self, progress).await,
        }
    }

    /// The reason a dependent check cannot prove anything.
    fn delivery_failure(&self) -> &str {
        self.delivery_failure
            .as_deref()
            .unwrap_or("relay.delivery did not run")
    }
}

/// `1.50s`
fn secs(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}
