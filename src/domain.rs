//! Validated gold replies: every rule about what Support may post lives here.
//!
//! Parse, don't validate: a [`GoldReply`] can only be built by [`GoldReply::parse`],
//! which reports every violation at once so Support fixes a request in one go.

mod event;

pub use event::{channel_rank, ChatwootEvent, Effect};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest;
use std::fmt;

/// Chatwoot's own limit on a message's content (`validates :content, length: { maximum: 150_000 }`).
pub const MAX_CONTENT_CHARS: usize = 150_000;
const MAX_REPLY_ID_CHARS: usize = 128;
const MAX_APPROVED_BY_CHARS: usize = 256;
const MAX_TAGS: usize = 32;
const MAX_TAG_CHARS: usize = 64;
const FIELDS: [&str; 10] = [
    "reply_id",
    "account_id",
    "conversation_id",
    "action",
    "content",
    "private",
    "approved_by",
    "draft",
    "tags",
    "metadata",
];

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

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the person decided about the AI draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Store and send to the Chatwoot conversation.
    ApproveSend,
    /// Store only: an approved example for the dataset.
    Approve,
    /// Store only: a rejected example for the dataset.
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ApproveSend => "approve_send",
            Action::Approve => "approve",
            Action::Reject => "reject",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "approve_send" => Some(Action::ApproveSend),
            "approve" => Some(Action::Approve),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }

    /// Whether the reply goes to Chatwoot at all.
    pub fn sends(self) -> bool {
        self == Action::ApproveSend
    }
}

/// A gold reply that passed every rule. Optional fields are normalised, so two
/// requests that mean the same thing compare equal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoldReply {
    pub reply_id: ReplyId,
    pub account_id: i64,
    pub conversation_id: i64,
    pub action: Action,
    pub content: String,
    pub private: bool,
    pub approved_by: Option<String>,
    pub draft: Option<Value>,
    pub tags: Vec<String>,
    pub metadata: Option<Value>,
}

/// One broken rule, named by the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl GoldReply {
    /// Checks a parsed JSON body against every rule and returns all violations.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("", "the body must be a JSON object")]);
        };
        let mut errors: Vec<FieldError> = obj
            .keys()
            .filter(|k| !FIELDS.contains(&k.as_str()))
            .map(|k| FieldError::new(k, "is not a known field"))
            .collect();
        let mut check = Checker {
            obj,
            errors: &mut errors,
        };
        let reply_id = check.required_str("reply_id").and_then(|raw| {
            ReplyId::parse(raw)
                .map_err(|m| check.fail("reply_id", m))
                .ok()
        });
        let account_id = check.positive_int("account_id");
        let conversation_id = check.positive_int("conversation_id");
        let action = check.action();
        let content = check.content();
        let private = check.optional_bool("private").unwrap_or(false);
        let approved_by = check.approved_by(action);
        let draft = check.optional_object("draft");
        let tags = check.tags();
        let metadata = check.optional_object("metadata");
        match (reply_id, account_id, conversation_id, action, content) {
            (
                Some(reply_id),
                Some(account_id),
                Some(conversation_id),
                Some(action),
                Some(content),
            ) if errors.is_empty() => Ok(GoldReply {
                reply_id,
                account_id,
                conversation_id,
                action,
                content,
                private,
                approved_by,
                draft,
                tags,
                metadata,
            }),
            _ => Err(errors),
        }
    }

    /// The SHA-256 (hex) of a canonical JSON form: equal for requests that
    /// mean the same, whatever their key order or spelling of defaults. Used
    /// for idempotency; a digest keeps every stored row small.
    pub fn fingerprint(&self) -> String {
        // Fields serialise in declaration order, and serde_json's Map is
        // ordered by key, so the JSON is canonical.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(canonical))
    }
}

/// Walks one JSON object, collecting every violation instead of stopping at the first.
struct Checker<'a> {
    obj: &'a Map<String, Value>,
    errors: &'a mut Vec<FieldError>,
}

impl<'a> Checker<'a> {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn present(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn required_str(&mut self, field: &str) -> Option<&'a str> {
        match self.present(field) {
            None => self.fail(field, "is required"),
            Some(Value::String(s)) => return Some(s),
            Some(_) => self.fail(field, "must be a string"),
        }
        None
    }

    fn positive_int(&mut self, field: &str) -> Option<i64> {
        match self.present(field) {
            None => self.fail(field, "is required"),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => return Some(n),
                _ => self.fail(field, "must be an integer of at least 1"),
            },
        }
        None
    }

    fn action(&mut self) -> Option<Action> {
        let raw = self.required_str("action")?;
        let action = Action::parse(raw);
        if action.is_none() {
            self.fail(
                "action",
                "must be one of \"approve_send\", \"approve\", \"reject\"",
            );
        }
        action
    }

    fn content(&mut self) -> Option<String> {
        let raw = self.required_str("content")?;
        if raw.trim().is_empty() {
            self.fail("content", "must not be blank");
            return None;
        }
        if raw.chars().count() > MAX_CONTENT_CHARS {
            self.fail(
                "content",
                format!("must be at most {MAX_CONTENT_CHARS} characters"),
            );
            return None;
        }
        Some(raw.to_owned())
    }

    fn optional_bool(&mut self, field: &str) -> Option<bool> {
        match self.present(field) {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.fail(field, "must be a boolean");
                None
            }
        }
    }

    fn approved_by(&mut self, action: Option<Action>) -> Option<String> {
        let needed = matches!(action, Some(Action::ApproveSend | Action::Approve));
        let value = match self.present("approved_by") {
            None if needed => {
                self.fail("approved_by", "is required when action approves the reply");
                return None;
            }
            None => return None,
            Some(Value::String(s)) => s,
            Some(_) => {
                self.fail("approved_by", "must be a string");
                return None;
            }
        };
        let len = value.chars().count();
        if len == 0 || len > MAX_APPROVED_BY_CHARS {
            self.fail(
                "approved_by",
                format!("must be 1 to {MAX_APPROVED_BY_CHARS} characters"),
            );
            return None;
        }
        Some(value.clone())
    }

    fn optional_object(&mut self, field: &str) -> Option<Value> {
        match self.present(field) {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                self.fail(field, "must be a JSON object");
                None
            }
        }
    }

    fn tags(&mut self) -> Vec<String> {
        let Some(value) = self.present("tags") else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            self.fail("tags", "must be an array of strings");
            return Vec::new();
        };
        if items.len() > MAX_TAGS {
            self.fail("tags", format!("may hold at most {MAX_TAGS} tags"));
        }
        let mut tags = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(t) if (1..=MAX_TAG_CHARS).contains(&t.chars().count()) => {
                    tags.push(t.to_owned())
                }
                _ => self.fail(
                    &format!("tags[{i}]"),
                    format!("must be a string of 1 to {MAX_TAG_CHARS} characters"),
                ),
            }
        }
        tags
    }
}

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
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Recorded => "recorded",
            Status::Queued => "queued",
            Status::Delivered => "delivered",
            Status::Confirmed => "confirmed",
            Status::Dead => "dead",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Status::Recorded,
            Status::Queued,
            Status::Delivered,
            Status::Confirmed,
            Status::Dead,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "reply_id": "gr_1", "account_id": 1, "conversation_id": 7,
            "action": "approve_send", "content": "Hello", "approved_by": "priya"
        })
    }

    #[test]
    fn a_valid_body_parses_with_defaults_filled_in() {
        let reply = GoldReply::parse(&valid()).expect("valid");
        assert!(!reply.private);
        assert!(reply.tags.is_empty());
        assert_eq!(reply.action, Action::ApproveSend);
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let body = json!({"reply_id": "a b", "account_id": 0, "action": "send", "extra": 1});
        let errors = GoldReply::parse(&body).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "extra",
            "reply_id",
            "account_id",
            "conversation_id",
            "action",
            "content",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn explicit_defaults_and_key_order_do_not_change_the_fingerprint() {
        let a = GoldReply::parse(&valid()).unwrap();
        let mut b = valid();
        b["private"] = json!(false);
        b["tags"] = json!([]);
        assert_eq!(a.fingerprint(), GoldReply::parse(&b).unwrap().fingerprint());
    }

    #[test]
    fn reject_needs_no_approver_but_approve_does() {
        let mut body = valid();
        body.as_object_mut().unwrap().remove("approved_by");
        body["action"] = json!("reject");
        assert!(GoldReply::parse(&body).is_ok());
        body["action"] = json!("approve");
        assert_eq!(GoldReply::parse(&body).unwrap_err()[0].field, "approved_by");
    }
}
