//! Support's id for a reply.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

const MAX_REPLY_ID_CHARS: usize = 128;

/// Support's own id for a reply, and the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ReplyId(String);

impl ReplyId {
    /// 1 to 128 characters of `A-Z a-z 0-9 . _ : -`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.chars().count() > MAX_REPLY_ID_CHARS {
            return Err(format!("must be 1 to {MAX_REPLY_ID_CHARS} characters"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if !raw.chars().all(allowed) {
            return Err("may contain only A-Z a-z 0-9 . _ : -".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as Support sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ReplyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ReplyId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ReplyId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Read back only if it is a reply id: an export line, a CLI argument.
impl<'de> Deserialize<'de> for ReplyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(|rule| {
            serde::de::Error::custom(format!("{raw:?} is not a reply_id: it {rule}"))
        })
    }
}

impl fmt::Display for ReplyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
