//! A gold reply as Support posts it, and the rules it must pass.

use super::{ReplyId, Turn, TurnRole};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest;

/// Chatwoot's own limit on a message's content (`validates :content, length: { maximum: 150_000 }`).
pub const MAX_CONTENT_CHARS: usize = 150_000;
const MAX_APPROVED_BY_CHARS: usize = 256;
const MAX_TAGS: usize = 32;
const MAX_TAG_CHARS: usize = 64;
/// The most turns a posted `context` may hold: more than any draft answers.
pub const MAX_CONTEXT_TURNS: usize = 200;
/// The most characters all of a posted context's turns hold together, so
/// one reply's row stays a reasonable size (a turn alone may reach Chatwoot's
/// own limit, [`MAX_CONTENT_CHARS`]).
pub const MAX_CONTEXT_CHARS: usize = 1_000_000;
/// PostgreSQL's `text` and `jsonb` cannot hold U+0000, so no field may carry it.
const NUL_MESSAGE: &str = "must not contain NUL characters (\\u0000)";
/// The largest integer a JSON number written with a fraction (`2372.0`) is
/// exact for; past it, `f64` has already rounded what the client wrote.
const MAX_EXACT_FLOAT_INT: f64 = 9_007_199_254_740_992.0;
const FIELDS: [&str; 12] = [
    "reply_id",
    "account_id",
    "conversation_id",
    "action",
    "content",
    "private",
    "liquid",
    "approved_by",
    "draft",
    "tags",
    "metadata",
    "context",
];

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
    /// Every action Support may take.
    pub const ALL: [Action; 3] = [Action::ApproveSend, Action::Approve, Action::Reject];

    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ApproveSend => "approve_send",
            Action::Approve => "approve",
            Action::Reject => "reject",
        }
    }

    /// The action named `raw`, if there is one.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == raw)
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
    reply_id: ReplyId,
    account_id: i64,
    conversation_id: i64,
    action: Action,
    content: String,
    private: bool,
    /// Let Chatwoot fill Liquid variables such as `{{contact.name}}`. Left
    /// out of the fingerprint when false, so replies stored before this
    /// field existed keep theirs.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    liquid: bool,
    approved_by: Option<String>,
    draft: Option<Value>,
    tags: Vec<String>,
    metadata: Option<Value>,
    /// The turns the draft answered, as Support posted them; `None`: to be
    /// captured from Chatwoot. Left out of the fingerprint when absent, so
    /// replies stored before this field existed keep theirs.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Vec<Turn>>,
}

/// One broken rule, named by the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    /// `field` broke a rule; `message` says which, without echoing the value.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
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
            .map(|k| FieldError::new(&k.replace('\0', "\\u0000"), "is not a known field"))
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
        let liquid = check.optional_bool("liquid").unwrap_or(false);
        if let (Some(text), Some(true)) = (&content, action.map(Action::sends)) {
            check.sent_length(text, liquid);
        }
        let approved_by = check.approved_by(action);
        let draft = check.optional_object("draft");
        let tags = check.tags();
        let metadata = check.optional_object("metadata");
        let context = check.context();
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
                liquid,
                approved_by,
                draft,
                tags,
                metadata,
                context,
            }),
            _ => Err(errors),
        }
    }

    /// Support's id for this reply.
    pub fn reply_id(&self) -> &ReplyId {
        &self.reply_id
    }

    /// The Chatwoot account the conversation belongs to.
    pub fn account_id(&self) -> i64 {
        self.account_id
    }

    /// The conversation's display id in Chatwoot.
    pub fn conversation_id(&self) -> i64 {
        self.conversation_id
    }

    /// What the person decided about the draft.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The approved text.
    pub fn content(&self) -> &str {
        &self.content
    }

    /// Whether Chatwoot may render Liquid in it (`{{contact.name}}`);
    /// otherwise the customer reads exactly the approved characters.
    pub fn liquid(&self) -> bool {
        self.liquid
    }

    /// Whether it goes to Chatwoot as a private note.
    pub fn private(&self) -> bool {
        self.private
    }

    /// Who approved it; absent only for a rejection.
    pub fn approved_by(&self) -> Option<&str> {
        self.approved_by.as_deref()
    }

    /// The AI draft the person judged, as Support sent it.
    pub fn draft(&self) -> Option<&Value> {
        self.draft.as_ref()
    }

    /// Support's labels for the dataset.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Anything else Support keeps with the reply.
    pub fn metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
    }

    /// The conversation turns the draft answered, when Support posted them
    /// (`Some(&[])`: there were none); `None`: goldrelay captures them.
    pub fn context(&self) -> Option<&[Turn]> {
        self.context.as_deref()
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
            Some(Value::String(s)) if s.contains('\0') => self.fail(field, NUL_MESSAGE),
            Some(Value::String(s)) => return Some(s),
            Some(_) => self.fail(field, "must be a string"),
        }
        None
    }

    fn positive_int(&mut self, field: &str) -> Option<i64> {
        match self.present(field) {
            None => self.fail(field, "is required"),
            Some(v) => match integral(v) {
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
            let names = Action::ALL.map(|a| format!("{:?}", a.as_str())).join(", ");
            self.fail("action", format!("must be one of {names}"));
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

    /// Chatwoot holds what it receives to the limit, after goldrelay escaped
    /// the Liquid openers in it (`validates :content` runs before
    /// `liquidable.rb`'s rendering): a reply that passes here but not there
    /// would be refused on every attempt.
    fn sent_length(&mut self, content: &str, liquid: bool) {
        let sent = super::as_sent(content, liquid).chars().count();
        if sent > MAX_CONTENT_CHARS {
            self.fail(
                "content",
                format!(
                    "must be at most {MAX_CONTENT_CHARS} characters as Chatwoot receives it: \
                     escaping its Liquid openers ({{{{ and {{%) makes it {sent}"
                ),
            );
        }
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
            Some(Value::String(s)) if s.contains('\0') => {
                self.fail("approved_by", NUL_MESSAGE);
                return None;
            }
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
            Some(v @ Value::Object(_)) if holds_nul(v) => {
                self.fail(field, format!("{NUL_MESSAGE} in any key or value"));
                None
            }
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
                Some(t) if t.contains('\0') => self.fail(&format!("tags[{i}]"), NUL_MESSAGE),
                Some(t) if (1..=MAX_TAG_CHARS).contains(&t.chars().count()) => {
                    tags.push(t.to_owned());
                }
                _ => self.fail(
                    &format!("tags[{i}]"),
                    format!("must be a string of 1 to {MAX_TAG_CHARS} characters"),
                ),
            }
        }
        tags
    }

    /// `context`: a list of `{role, content}` turns, oldest first. Chatwoot
    /// message ids are not taken: goldrelay captures the turns itself when
    /// `context` is absent.
    fn context(&mut self) -> Option<Vec<Turn>> {
        let value = self.present("context")?;
        let Some(items) = value.as_array() else {
            self.fail(
                "context",
                "must be an array of {\"role\", \"content\"} objects",
            );
            return None;
        };
        if items.len() > MAX_CONTEXT_TURNS {
            self.fail(
                "context",
                format!("may hold at most {MAX_CONTEXT_TURNS} turns"),
            );
            return None;
        }
        let before = self.errors.len();
        let turns: Vec<Turn> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.turn(i, item))
            .collect();
        let chars: usize = turns.iter().map(|t| t.content.chars().count()).sum();
        if chars > MAX_CONTEXT_CHARS {
            self.fail(
                "context",
                format!("may hold at most {MAX_CONTEXT_CHARS} characters in all"),
            );
        }
        (self.errors.len() == before).then_some(turns)
    }

    /// One turn of `context`, every problem named by its index.
    fn turn(&mut self, i: usize, item: &Value) -> Option<Turn> {
        let field = format!("context[{i}]");
        let Some(turn) = item.as_object() else {
            self.fail(&field, "must be an object with \"role\" and \"content\"");
            return None;
        };
        for key in turn
            .keys()
            .filter(|k| !matches!(k.as_str(), "role" | "content"))
        {
            let key = key.replace('\0', "\\u0000");
            self.fail(&format!("{field}.{key}"), "is not a known field");
        }
        let role = match turn.get("role").and_then(Value::as_str) {
            Some("user") => Some(TurnRole::User),
            Some("assistant") => Some(TurnRole::Assistant),
            _ => {
                self.fail(
                    &format!("{field}.role"),
                    "must be \"user\" or \"assistant\"",
                );
                None
            }
        };
        let content = match turn.get("content") {
            Some(Value::String(s)) if s.contains('\0') => {
                self.fail(&format!("{field}.content"), NUL_MESSAGE);
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.fail(&format!("{field}.content"), "must not be blank");
                None
            }
            Some(Value::String(s)) if s.chars().count() > MAX_CONTENT_CHARS => {
                let message = format!("must be at most {MAX_CONTENT_CHARS} characters");
                self.fail(&format!("{field}.content"), message);
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            _ => {
                self.fail(&format!("{field}.content"), "must be a string");
                None
            }
        };
        Some(Turn {
            role: role?,
            content: content?,
        })
    }
}

/// A JSON integer, or a number written with a zero fraction (`2372.0`): JSON
/// Schema's `integer` is about the value, not the spelling.
fn integral(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    // In range, the cast is exact: the fraction is zero and |f| <= 2^53.
    (f.fract() == 0.0 && f.abs() <= MAX_EXACT_FLOAT_INT).then_some(f as i64)
}

/// Whether a NUL hides anywhere in `value`: a string, a key, at any depth.
/// Iterative, so a deeply nested body cannot exhaust the stack.
fn holds_nul(value: &Value) -> bool {
    let mut pending = vec![value];
    while let Some(v) = pending.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                pending.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
