//! The conversation turns a draft answered: what the customer (and earlier
//! agents) had said before the reply. Posted by Support in `context`, or
//! captured from Chatwoot at delivery; either way stored with the reply, so the
//! dataset stays the same if Chatwoot later deletes messages.

use serde::{Deserialize, Serialize};

/// Who spoke a turn, in the training formats' words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnRole {
    /// The customer (Chatwoot's incoming messages).
    User,
    /// An agent or bot (Chatwoot's public outgoing messages).
    Assistant,
}

/// One turn of the conversation before the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: TurnRole,
    pub content: String,
}
