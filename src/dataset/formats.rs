//! The training formats, each written from one export record line.
//!
//! Field lists as the trainers document them:
//! - `openai-chat`: OpenAI supervised fine-tuning, `{"messages": [{"role", "content"}, …]}`;
//! - `openai-preference`: OpenAI direct preference optimization,
//!   `{"input": {"messages": […]}, "preferred_output": [{"role": "assistant", "content"}],
//!   "non_preferred_output": [{"role": "assistant", "content"}]}`;
//! - `trl-preference`: TRL's conversational preference type, `prompt`, `chosen`, `rejected`;
//! - `trl-kto`: TRL's conversational unpaired preference type, `prompt`, `completion`, `label`.
//!
//! Every line also carries goldrelay's own `verdict`, `edit_distance`,
//! `reply_id`, `split` and `cursor` at the top level.

use super::redact::redact;
use super::split::{split_of, Split};
use super::verdict::{draft_text, judge, Judgement, Verdict};
use super::Options;
use crate::domain::{Action, ReplyId, Status, Turn, TurnRole};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// What the dataset can be exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Today's export lines, unchanged.
    Records,
    OpenAiChat,
    OpenAiPreference,
    TrlPreference,
    TrlKto,
}

impl Format {
    /// Every format, as the query string and the CLI name them.
    pub const ALL: [Format; 5] = [
        Format::Records,
        Format::OpenAiChat,
        Format::OpenAiPreference,
        Format::TrlPreference,
        Format::TrlKto,
    ];

    /// The name used in `format=` and `--format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Records => "records",
            Format::OpenAiChat => "openai-chat",
            Format::OpenAiPreference => "openai-preference",
            Format::TrlPreference => "trl-preference",
            Format::TrlKto => "trl-kto",
        }
    }

    /// The format named `raw`, if there is one.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == raw)
    }
}

/// The part of an export record line the formats read. Read back from the
/// line itself, so every format follows the records export wherever it
/// pages, and a field added to the records (such as `context`) reaches
/// the formats without a second path through the store.
#[derive(Debug, Deserialize)]
pub struct RecordView {
    pub cursor: String,
    pub reply_id: ReplyId,
    pub account_id: i64,
    pub conversation_id: i64,
    pub action: Action,
    pub content: String,
    #[serde(default)]
    pub draft: Option<Value>,
    pub status: Status,
    /// The turns the draft answered; none before they were captured.
    #[serde(default, deserialize_with = "turns")]
    pub context: Vec<Turn>,
}

/// `context` as a list of turns, or as an object holding them in `turns`
/// (a capture with its time); `null` or absent is no turns.
fn turns<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<Turn>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Turns(Vec<Turn>),
        Captured { turns: Vec<Turn> },
    }
    Ok(match Option::<Shape>::deserialize(de)? {
        Some(Shape::Turns(turns) | Shape::Captured { turns }) => turns,
        None => Vec::new(),
    })
}

/// One chat message as both OpenAI and TRL's conversational types write it.
#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Cow<'a, str>,
}

/// goldrelay's own fields on every training line.
#[derive(Serialize)]
struct Meta<'a> {
    verdict: Verdict,
    edit_distance: Option<usize>,
    reply_id: &'a ReplyId,
    split: Split,
    cursor: &'a str,
}

#[derive(Serialize)]
struct Input<'a> {
    messages: Vec<Message<'a>>,
}

/// One line of a training format; the variants' fields are the documented ones.
#[derive(Serialize)]
#[serde(untagged)]
enum Line<'a> {
    OpenAiChat {
        messages: Vec<Message<'a>>,
        #[serde(flatten)]
        meta: Meta<'a>,
    },
    OpenAiPreference {
        input: Input<'a>,
        preferred_output: Vec<Message<'a>>,
        non_preferred_output: Vec<Message<'a>>,
        #[serde(flatten)]
        meta: Meta<'a>,
    },
    TrlPreference {
        prompt: Vec<Message<'a>>,
        chosen: Vec<Message<'a>>,
        rejected: Vec<Message<'a>>,
        #[serde(flatten)]
        meta: Meta<'a>,
    },
    TrlKto {
        prompt: Vec<Message<'a>>,
        completion: Vec<Message<'a>>,
        label: bool,
        #[serde(flatten)]
        meta: Meta<'a>,
    },
}

/// The texts of one reply as a format writes them: redacted unless the
/// operator turned redaction off.
struct Texts<'a> {
    context: Vec<Message<'a>>,
    approved: Cow<'a, str>,
    draft: Option<Cow<'a, str>>,
}

impl<'a> Texts<'a> {
    fn of(view: &'a RecordView, draft: Option<&'a str>, redacting: bool) -> Self {
        let clean = |text: &'a str| {
            if redacting {
                redact(text)
            } else {
                Cow::Borrowed(text)
            }
        };
        Texts {
            context: view
                .context
                .iter()
                .map(|turn| Message {
                    role: role_name(turn.role),
                    content: clean(&turn.content),
                })
                .collect(),
            approved: clean(&view.content),
            draft: draft.map(clean),
        }
    }
}

fn role_name(role: TurnRole) -> &'static str {
    match role {
        TurnRole::User => "user",
        TurnRole::Assistant => "assistant",
    }
}

fn assistant(content: Cow<'_, str>) -> Vec<Message<'_>> {
    vec![Message {
        role: "assistant",
        content,
    }]
}

/// Whether the approved text is what the customer got, or will be kept as
/// approved: `approve`, or `approve_send` that Chatwoot confirmed.
fn approved(view: &RecordView) -> bool {
    match view.action {
        Action::Approve => true,
        Action::ApproveSend => view.status == Status::Confirmed,
        Action::Reject => false,
    }
}

/// The line `view` becomes in `options.format`, or `None` when the reply
/// does not belong in it (see the README's table) or falls on the other
/// side of the split. [`Format::Records`] is handled by the caller.
pub fn line(view: &RecordView, options: &Options) -> Option<String> {
    let split = split_of(view.account_id, view.conversation_id, options.eval_share);
    if options.split.is_some_and(|wanted| wanted != split) {
        return None;
    }
    let draft = draft_text(view.draft.as_ref(), &options.draft_field);
    let Judgement {
        verdict,
        edit_distance,
    } = judge(view.action, draft, &view.content);
    let meta = Meta {
        verdict,
        edit_distance,
        reply_id: &view.reply_id,
        split,
        cursor: &view.cursor,
    };
    let texts = Texts::of(view, draft, options.redact);
    let line = match options.format {
        Format::Records => return None,
        Format::OpenAiChat => chat(view, texts, meta)?,
        Format::OpenAiPreference | Format::TrlPreference => {
            preference(view, options.format, texts, meta)?
        }
        Format::TrlKto => kto(view, texts, meta)?,
    };
    // Strings, numbers and booleans always serialize.
    serde_json::to_string(&line).ok()
}

fn chat<'a>(view: &RecordView, texts: Texts<'a>, meta: Meta<'a>) -> Option<Line<'a>> {
    approved(view).then_some(())?;
    let mut messages = texts.context;
    messages.extend(assistant(texts.approved));
    Some(Line::OpenAiChat { messages, meta })
}

/// An edited reply: the person's edit preferred over the draft. A pair
/// that redaction made identical (only a phone number changed) teaches
/// nothing and is left out.
fn preference<'a>(
    view: &RecordView,
    format: Format,
    texts: Texts<'a>,
    meta: Meta<'a>,
) -> Option<Line<'a>> {
    let draft = texts.draft?;
    if !approved(view) || meta.verdict != Verdict::Edited || draft == texts.approved {
        return None;
    }
    Some(match format {
        Format::OpenAiPreference => Line::OpenAiPreference {
            input: Input {
                messages: texts.context,
            },
            preferred_output: assistant(texts.approved),
            non_preferred_output: assistant(draft),
            meta,
        },
        _ => Line::TrlPreference {
            prompt: texts.context,
            chosen: assistant(texts.approved),
            rejected: assistant(draft),
            meta,
        },
    })
}

/// A draft approved as it was (desirable), or rejected (undesirable: the
/// draft's text, or the posted content when the draft has none).
fn kto<'a>(view: &RecordView, texts: Texts<'a>, meta: Meta<'a>) -> Option<Line<'a>> {
    let (completion, label) = match meta.verdict {
        Verdict::AsDrafted if approved(view) => (texts.approved, true),
        Verdict::Rejected => (texts.draft.unwrap_or(texts.approved), false),
        _ => return None,
    };
    Some(Line::TrlKto {
        prompt: texts.context,
        completion: assistant(completion),
        label,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Asked, Options};
    use serde_json::json;

    /// A records line as the export writes it, with the fields the formats read.
    fn view(action: &str, status: &str, content: &str, draft: Option<&str>) -> RecordView {
        serde_json::from_value(json!({
            "cursor": "1764000000000000.r1", "reply_id": "r1",
            "account_id": 1, "conversation_id": 187, "action": action,
            "content": content, "draft": draft.map(|text| json!({"text": text, "model": "m"})),
            "status": status,
            "context": [
                {"role": "user", "content": "Where is my order? Call +44 20 7946 0958"},
                {"role": "assistant", "content": "Let me check."},
            ],
        }))
        .unwrap()
    }

    fn render(format: &str, view: &RecordView) -> Option<Value> {
        let options = Options::parse(&Asked {
            format: Some(format),
            ..Asked::default()
        })
        .unwrap();
        line(view, &options).map(|l| serde_json::from_str(&l).unwrap())
    }

    #[test]
    fn openai_chat_is_the_context_then_the_approved_reply() {
        let v = view(
            "approve_send",
            "confirmed",
            "Shipped today.",
            Some("Shipped."),
        );
        let line = render("openai-chat", &v).unwrap();
        assert_eq!(
            line["messages"],
            json!([
                {"role": "user", "content": "Where is my order? Call [PHONE]"},
                {"role": "assistant", "content": "Let me check."},
                {"role": "assistant", "content": "Shipped today."},
            ])
        );
        assert_eq!(line["verdict"], "edited");
        assert_eq!(line["edit_distance"], 2);
        assert_eq!(line["split"], "train");
    }

    #[test]
    fn openai_chat_leaves_out_replies_not_yet_confirmed_and_rejections() {
        for (action, status) in [
            ("approve_send", "delivered"),
            ("approve_send", "queued"),
            ("approve_send", "dead"),
            ("reject", "recorded"),
        ] {
            let v = view(action, status, "Hi", Some("Hi"));
            assert!(render("openai-chat", &v).is_none(), "{action} {status}");
        }
        assert!(render("openai-chat", &view("approve", "recorded", "Hi", None)).is_some());
    }

    #[test]
    fn the_preference_formats_prefer_the_edit_over_the_draft() {
        let v = view(
            "approve",
            "recorded",
            "Your parcel left today.",
            Some("Order shipped."),
        );
        let openai = render("openai-preference", &v).unwrap();
        assert_eq!(openai["input"]["messages"][1]["content"], "Let me check.");
        assert_eq!(
            openai["preferred_output"],
            json!([{"role": "assistant", "content": "Your parcel left today."}])
        );
        assert_eq!(
            openai["non_preferred_output"],
            json!([{"role": "assistant", "content": "Order shipped."}])
        );
        let trl = render("trl-preference", &v).unwrap();
        assert_eq!(trl["prompt"], openai["input"]["messages"]);
        assert_eq!(trl["chosen"], openai["preferred_output"]);
        assert_eq!(trl["rejected"], openai["non_preferred_output"]);
    }

    #[test]
    fn the_preference_formats_need_an_edit_of_a_draft_that_stayed_visible() {
        let as_drafted = view("approve", "recorded", "Same.", Some("Same."));
        let no_draft = view("approve", "recorded", "Written by hand.", None);
        let phone_only = view(
            "approve",
            "recorded",
            "Call 030 12345678",
            Some("Call 030 12345679"),
        );
        let rejected = view("reject", "recorded", "No.", Some("Nope."));
        for v in [as_drafted, no_draft, phone_only, rejected] {
            assert!(render("trl-preference", &v).is_none(), "{v:?}");
            assert!(render("openai-preference", &v).is_none(), "{v:?}");
        }
    }

    #[test]
    fn kto_labels_drafts_approved_as_is_true_and_rejected_ones_false() {
        let kept = render(
            "trl-kto",
            &view("approve", "recorded", "Same.", Some("Same.")),
        )
        .unwrap();
        assert_eq!(
            (kept["label"].clone(), kept["verdict"].clone()),
            (json!(true), json!("as_drafted"))
        );
        assert_eq!(
            kept["completion"],
            json!([{"role": "assistant", "content": "Same."}])
        );
        let refused = render(
            "trl-kto",
            &view("reject", "recorded", "n/a", Some("Bad draft.")),
        )
        .unwrap();
        assert_eq!(refused["label"], false);
        assert_eq!(refused["completion"][0]["content"], "Bad draft.");
        assert_eq!(refused["edit_distance"], Value::Null);
        let edited = view("approve", "recorded", "Changed.", Some("Draft."));
        assert!(render("trl-kto", &edited).is_none());
    }

    #[test]
    fn a_context_held_in_a_capture_object_is_read_too() {
        let v: RecordView = serde_json::from_value(json!({
            "cursor": "1.r", "reply_id": "r", "account_id": 1, "conversation_id": 2,
            "action": "approve", "content": "x", "status": "recorded",
            "context": {"turns": [{"role": "user", "content": "hi"}], "captured_at": "2026-12-06T10:00:00Z"},
        }))
        .unwrap();
        assert_eq!(v.context.len(), 1);
        let none: RecordView = serde_json::from_value(json!({
            "cursor": "1.r", "reply_id": "r", "account_id": 1, "conversation_id": 2,
            "action": "approve", "content": "x", "status": "recorded", "context": null,
        }))
        .unwrap();
        assert!(none.context.is_empty());
    }
}
