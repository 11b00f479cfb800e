//! What became of a delivered message in the customer's channel, as Chatwoot
//! tracks it: the `status` enum of `app/models/message.rb`
//! (`sent: 0, delivered: 1, read: 2, failed: 3`).

use serde::{Deserialize, Serialize};

/// A message's status in the customer's channel (WhatsApp, SMS, e-mail, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelStatus {
    /// Chatwoot handed the message to the channel.
    Sent,
    /// The channel delivered it to the customer's device.
    Delivered,
    /// The customer read it.
    Read,
    /// The channel refused it; `channel_error` says why. Not final: an
    /// agent's retry makes the message `sent` again.
    Failed,
}

impl ChannelStatus {
    /// Every status Chatwoot knows.
    pub const ALL: [ChannelStatus; 4] = [
        ChannelStatus::Sent,
        ChannelStatus::Delivered,
        ChannelStatus::Read,
        ChannelStatus::Failed,
    ];

    /// The name Chatwoot, the API and the database use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelStatus::Sent => "sent",
            ChannelStatus::Delivered => "delivered",
            ChannelStatus::Read => "read",
            ChannelStatus::Failed => "failed",
        }
    }

    /// The status named `raw`; `None` for a name Chatwoot does not use,
    /// which goldrelay treats as a status it was not shown.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether a message's status may go from `from` to `self`, by Chatwoot's
    /// own rule (`app/services/messages/status_update_service.rb`): a `read`
    /// message never goes back to `delivered` (nor, here, to `sent`: a late
    /// `sent` after `read` is an event out of order). Everything else
    /// applies; `failed` is not final.
    pub fn may_follow(self, from: Option<ChannelStatus>) -> bool {
        !(from == Some(ChannelStatus::Read)
            && matches!(self, ChannelStatus::Delivered | ChannelStatus::Sent))
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelStatus::{self, Delivered, Failed, Read, Sent};

    #[test]
    fn failed_is_not_final_and_read_never_goes_back() {
        for (from, to, allowed) in [
            (Some(Failed), Sent, true),
            (Some(Failed), Read, true),
            (Some(Read), Failed, true),
            (Some(Delivered), Read, true),
            (None, Sent, true),
            (Some(Read), Read, true),
            (Some(Read), Delivered, false),
            (Some(Read), Sent, false),
        ] {
            assert_eq!(to.may_follow(from), allowed, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn names_read_back_and_unknown_names_are_none() {
        for status in ChannelStatus::ALL {
            assert_eq!(ChannelStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
        }
        assert_eq!(ChannelStatus::parse("bogus"), None);
        assert_eq!(ChannelStatus::parse("Read"), None);
    }
}
