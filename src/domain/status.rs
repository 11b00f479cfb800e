//! Where a reply is in its life.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Where a reply is in its life. See the README's status lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// approve/reject: kept for the dataset, nothing to send.
    Recorded,
    /// Waiting for its first or next delivery attempt.
    Queued,
    /// Chatwoot created the message.
    Delivered,
    /// Chatwoot's own webhook showed the message in the conversation.
    Confirmed,
    /// Given up; `last_error` says why.
    Dead,
}

impl Status {
    /// Every status, in lifecycle order: the one list every message and check derives from.
    pub const ALL: [Status; 5] = [
        Status::Recorded,
        Status::Queued,
        Status::Delivered,
        Status::Confirmed,
        Status::Dead,
    ];

    /// The name used in the API, the database and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Recorded => "recorded",
            Status::Queued => "queued",
            Status::Delivered => "delivered",
            Status::Confirmed => "confirmed",
            Status::Dead => "dead",
        }
    }

    /// The status named `raw`, if there is one.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A name that is not a [`Status`]; its message lists the ones that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of {}", Status::ALL.map(Status::as_str).join(", "))]
pub struct UnknownStatus;

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw).ok_or(UnknownStatus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_parses_back_from_its_name() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
    }

    #[test]
    fn an_unknown_status_names_every_known_one() {
        assert_eq!(
            "sent".parse::<Status>().unwrap_err().to_string(),
            "must be one of recorded, queued, delivered, confirmed, dead"
        );
    }
}
