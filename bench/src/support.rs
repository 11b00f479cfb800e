//! Support's side: posting gold replies the way `post.lua` does, from Rust,
//! where a measurement needs to know when each one was accepted.

use anyhow::{bail, Context};
use futures_util::{stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;

/// Every benchmark body is this long, like `post.lua`'s.
pub const BODY_BYTES: usize = 1024;
const FILLER: &str = "Thanks for waiting. Your refund was approved and is on its way. ";

/// An `approve_send` gold reply padded to [`BODY_BYTES`].
pub fn body(reply_id: &str, conversation_id: u32) -> String {
    let head = format!(
        r#"{{"reply_id":"{reply_id}","account_id":1,"conversation_id":{conversation_id},"action":"approve_send","approved_by":"bench@example.com","content":""#
    );
    let tail = r#""}"#;
    let pad = BODY_BYTES.saturating_sub(head.len() + tail.len());
    let content: String = FILLER.chars().cycle().take(pad).collect();
    format!("{head}{content}{tail}")
}

pub struct Support {
    http: reqwest::Client,
    endpoint: String,
    token: String,
}

impl Support {
    pub fn new(http: reqwest::Client, base_url: &str, token: &str) -> Self {
        Self {
            http,
            endpoint: format!("{base_url}/api/webhooks/gold-replies"),
            token: token.to_owned(),
        }
    }

    /// Posts one reply and insists on 202: anything else means the
    /// measurement would count something other than accepted replies.
    pub async fn post(&self, reply_id: &str, conversation_id: u32) -> anyhow::Result<()> {
        let response = self
            .http
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header("Content-Type", "application/json")
            .body(body(reply_id, conversation_id))
            .send()
            .await
            .with_context(|| format!("could not post {reply_id}"))?;
        let status = response.status();
        // Read to the end, so the connection goes back to the pool.
        let text = response.text().await.unwrap_or_default();
        if status != StatusCode::ACCEPTED {
            bail!("posting {reply_id} was answered {status}, not 202: {text}");
        }
        Ok(())
    }

    /// Posts every `(reply_id, conversation_id)` with `concurrency` requests in flight.
    pub async fn post_all(
        &self,
        replies: impl IntoIterator<Item = (String, u32)>,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        stream::iter(replies)
            .map(|(id, conversation)| async move { self.post(&id, conversation).await })
            .buffer_unordered(concurrency)
            .try_collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_one_kib_of_valid_json() {
        let text = body("run-1-42", 17);
        assert_eq!(text.len(), BODY_BYTES);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["reply_id"], "run-1-42");
        assert_eq!(value["conversation_id"], 17);
    }
}
