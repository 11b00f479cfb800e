//! The modelled Chatwoot: one message id sequence taken at commit, and the
//! message list as `app/finders/message_finder.rb` answers it (filtered by
//! id, ordered by `created_at`), with page sizes scaled down so that small
//! conversations span several pages.

use crate::model::Ms;

/// goldrelay's own Chatwoot user (`GET /api/v1/profile`).
pub const RELAY_USER: i64 = 7;
/// Another agent of the account: a user token that may set `content_attributes`.
pub const AGENT_USER: i64 = 8;
/// `before=` (and no parameter) answers this many (20 in Chatwoot).
pub const BEFORE_PAGE: usize = 3;
/// `after=` alone answers this many (100 in Chatwoot, `AFTER_PAGE` in goldrelay).
pub const AFTER_PAGE: usize = 4;
/// `after` and `before` together answer this many (1000 in Chatwoot, `RANGE_PAGE`).
pub const RANGE_PAGE: usize = 6;
/// The most requests one lookup makes (`MAX_LOOKUP_PAGES`, 500 in goldrelay).
pub const MAX_LOOKUP_PAGES: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Relay,
    Agent,
    Contact,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub id: i64,
    pub conv: usize,
    /// Unix seconds, as the list shows it; set before the insert takes its
    /// id, or the provider's time: it can disagree with the id order.
    pub created_at: i64,
    pub sender: Sender,
    pub content: String,
    /// `content_attributes.gold_reply_id`: the reply index it names.
    pub marker: Option<usize>,
}

impl Msg {
    pub fn outgoing(&self) -> bool {
        self.sender != Sender::Contact
    }

    /// `sender.type` and `sender.id` as Chatwoot shows them.
    pub fn sender_json(&self) -> serde_json::Value {
        match self.sender {
            Sender::Relay => serde_json::json!({"type": "user", "id": RELAY_USER}),
            Sender::Agent => serde_json::json!({"type": "user", "id": AGENT_USER}),
            Sender::Contact => serde_json::json!({"type": "contact", "id": 3}),
        }
    }

    pub fn sender_id(&self) -> Option<i64> {
        match self.sender {
            Sender::Relay => Some(RELAY_USER),
            Sender::Agent => Some(AGENT_USER),
            Sender::Contact => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Chatwoot {
    /// Every message, in commit order.
    pub msgs: Vec<Msg>,
    next_id: i64,
}

impl Chatwoot {
    pub fn new(first_id: i64) -> Self {
        Self {
            msgs: Vec::new(),
            next_id: first_id,
        }
    }

    /// Commits a message: its id is the sequence's next.
    pub fn commit(
        &mut self,
        conv: usize,
        created_at: i64,
        sender: Sender,
        content: String,
        marker: Option<usize>,
    ) -> i64 {
        // Other inserts (other conversations, other accounts) take ids too.
        self.next_id += 1 + (self.msgs.len() as i64 % 3);
        let id = self.next_id;
        self.msgs.push(Msg {
            id,
            conv,
            created_at,
            sender,
            content,
            marker,
        });
        id
    }

    pub fn msg(&self, id: i64) -> Option<&Msg> {
        self.msgs.iter().find(|m| m.id == id)
    }

    /// `GET …/messages` with `after` and/or `before`, as `MessageFinder` answers.
    pub fn list(&self, conv: usize, after: Option<i64>, before: Option<i64>) -> Vec<Msg> {
        let mut picked: Vec<Msg> = self
            .msgs
            .iter()
            .filter(|m| m.conv == conv)
            .filter(|m| match (after, before) {
                (Some(a), Some(b)) => m.id >= a && m.id < b,
                (Some(a), None) => m.id > a,
                (None, Some(b)) => m.id < b,
                (None, None) => true,
            })
            .cloned()
            .collect();
        picked.sort_by_key(|m| (m.created_at, m.id));
        match (after, before) {
            (Some(_), Some(_)) => picked.truncate(RANGE_PAGE),
            (Some(_), None) => picked.truncate(AFTER_PAGE),
            // The latest by created_at, shown ascending.
            _ => {
                let skip = picked.len().saturating_sub(BEFORE_PAGE);
                picked.drain(..skip);
            }
        }
        picked
    }
}

/// Ms to unix-like seconds of the virtual clock.
pub fn secs(t: Ms) -> i64 {
    t.div_euclid(1000)
}
