//! Reading a conversation's message list: one page of it, the turns a context
//! capture keeps, and the channel status Chatwoot holds for a message.

use super::{Call, ChatwootClient, SendError};
use crate::domain::{ChannelStatus, Turn, TurnRole};

use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

/// No `after` answers at most this many: the latest, or the latest before
/// `before` (`app/finders/message_finder.rb`).
pub const LATEST_PAGE: usize = 20;

#[derive(Deserialize)]
struct ListBody {
    payload: Vec<ListedMessage>,
}

#[derive(Deserialize)]
pub(super) struct ListedMessage {
    pub(super) id: i64,
    #[serde(default)]
    pub(super) content: Option<String>,
    #[serde(default)]
    pub(super) message_type: Option<i64>,
    #[serde(default)]
    pub(super) content_attributes: Value,
    #[serde(default)]
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) sender: Value,
    #[serde(default)]
    pub(super) private: Option<bool>,
    /// Unix seconds in the REST API (`_message.json.jbuilder`).
    #[serde(default)]
    pub(super) created_at: Option<i64>,
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

/// What Chatwoot holds about a message's fate in the customer's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelReport {
    pub status: ChannelStatus,
    /// `content_attributes.external_error`, kept only while `failed`.
    pub error: Option<String>,
}

impl ChatwootClient {
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
    /// (`app/finders/message_finder.rb`). `None`: no such message (deleted), or
    /// a status Chatwoot's own enum does not name.
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
            let status = ChannelStatus::parse(&m.status?)?;
            Some(ChannelReport { status, error })
        }))
    }

    pub(super) async fn list_page(
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
}

/// The turn a listed message makes in a conversation's context: incoming
/// (`message_type` 0) is the customer's; outgoing (1, an agent's or a bot's)
/// and template (3, what Chatwoot itself showed the customer: a CSAT survey,
/// an e-mail prompt, a WhatsApp template) are the assistant's. Left out:
/// private notes and activity messages (2), which the customer never saw; a
/// deleted message (`content_attributes.deleted`, its text replaced,
/// `messages_controller.rb#destroy`); and one without text (attachments alone).
pub(super) fn turn_of(message: &ListedMessage) -> Option<Turn> {
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
