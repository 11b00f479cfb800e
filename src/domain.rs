//! Validated gold replies: every rule about what Support may post lives here.
//!
//! Parse, don't validate: a [`GoldReply`] can only be built by [`GoldReply::parse`],
//! which reports every violation at once so Support fixes a request in one go.

mod channel_status;
mod context;
mod event;
mod gold_reply;
mod liquid;
mod reply_id;
mod status;

pub use channel_status::ChannelStatus;
pub use context::{Turn, TurnRole};
pub use event::{ChatwootEvent, Effect, EventMessage, Kept, OwnUser};
pub use gold_reply::{
    Action, FieldError, GoldReply, MAX_CONTENT_CHARS, MAX_CONTEXT_CHARS, MAX_CONTEXT_TURNS,
};
pub use liquid::as_sent;
pub use reply_id::ReplyId;
pub use status::{Status, UnknownStatus};
