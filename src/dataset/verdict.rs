//! What a person did to an AI draft, and how much they changed it.
//!
//! The distance is counted in words (Levenshtein over whitespace-separated
//! words): a reviewer reads "changed three words", not "changed fourteen
//! characters", and a word-level table is far smaller than a character-level
//! one for Chatwoot's 150 000-character messages.

use crate::domain::Action;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The judgement a gold reply records on its draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Approved with the draft's text unchanged (ends' whitespace aside).
    AsDrafted,
    /// Approved after a person changed the text, or written without a draft.
    Edited,
    /// The draft was rejected.
    Rejected,
}

impl Verdict {
    /// Every verdict, in the order the console and the README list them.
    pub const ALL: [Verdict; 3] = [Verdict::AsDrafted, Verdict::Edited, Verdict::Rejected];

    /// The name used in the training formats and the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::AsDrafted => "as_drafted",
            Verdict::Edited => "edited",
            Verdict::Rejected => "rejected",
        }
    }

    /// The verdict of `action` on a draft whose text is `draft`, approved as
    /// `approved`. A reply without a draft text is judged against an empty
    /// draft: a person wrote it all, so it counts as edited.
    pub fn of(action: Action, draft: Option<&str>, approved: &str) -> Verdict {
        match action {
            Action::Reject => Verdict::Rejected,
            Action::Approve | Action::ApproveSend => {
                if draft.map(str::trim) == Some(approved.trim()) {
                    Verdict::AsDrafted
                } else {
                    Verdict::Edited
                }
            }
        }
    }
}

/// A verdict and, for an approved reply, how many words the person changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Word-level edit distance from the draft text to the approved content;
    /// `None` for a rejected draft, which has no approved text.
    pub edit_distance: Option<usize>,
}

/// Judges one reply: `draft` is the draft's text (see [`draft_text`]),
/// `content` what the person approved.
pub fn judge(action: Action, draft: Option<&str>, content: &str) -> Judgement {
    let verdict = Verdict::of(action, draft, content);
    let edit_distance = match verdict {
        Verdict::Rejected => None,
        Verdict::AsDrafted => Some(0),
        Verdict::Edited => Some(edit_distance(draft.unwrap_or(""), content)),
    };
    Judgement {
        verdict,
        edit_distance,
    }
}

/// Words inserted, deleted or replaced to turn `draft` into `approved`
/// (Levenshtein over whitespace-separated words; punctuation stays part of its
/// word, so "shipped." for "shipped" is one replacement). The shared start and
/// end are skipped first, so a small edit in a long reply costs little; a full
/// rewrite costs draft words × approved words steps and one row of memory.
pub fn edit_distance(draft: &str, approved: &str) -> usize {
    let a: Vec<&str> = draft.split_whitespace().collect();
    let b: Vec<&str> = approved.split_whitespace().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[..a.len() - suffix], &b[..b.len() - suffix]);
    levenshtein(a, b)
}

/// The classic two-row Levenshtein table, kept to one row of the shorter side.
fn levenshtein(a: &[&str], b: &[&str]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row: Vec<usize> = (0..=short.len()).collect();
    for (i, x) in long.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, y) in short.iter().enumerate() {
            let replace = diagonal + usize::from(x != y);
            diagonal = row[j + 1];
            row[j + 1] = replace.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[short.len()]
}

/// Where in a draft object its text is read: a dot-separated path of keys,
/// `text` by default (`{"text": "…", "model": "…"}`), `output.text` for
/// `{"output": {"text": "…"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftField(Vec<String>);

impl Default for DraftField {
    fn default() -> Self {
        Self(vec!["text".to_owned()])
    }
}

impl DraftField {
    /// The longest path accepted, in characters.
    pub const MAX_CHARS: usize = 256;

    /// A path of non-empty keys separated by dots.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.chars().count() > Self::MAX_CHARS {
            return Err("must be 1 to 256 characters");
        }
        let keys: Vec<String> = raw.split('.').map(str::to_owned).collect();
        if keys.iter().any(String::is_empty) {
            return Err("must be keys separated by single dots, such as text or output.text");
        }
        Ok(Self(keys))
    }
}

impl std::fmt::Display for DraftField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// The draft's text at `field`, if the draft has a string there.
pub fn draft_text<'a>(draft: Option<&'a Value>, field: &DraftField) -> Option<&'a str> {
    let mut value = draft?;
    for key in &field.0 {
        value = value.get(key)?;
    }
    value.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rejected_draft_is_rejected_whatever_its_text() {
        let j = judge(Action::Reject, Some("Hi"), "Hi");
        assert_eq!(j.verdict, Verdict::Rejected);
        assert_eq!(j.edit_distance, None);
    }

    #[test]
    fn an_approved_draft_left_unchanged_but_for_trailing_space_is_as_drafted() {
        let j = judge(
            Action::ApproveSend,
            Some("Your order shipped.\n"),
            "Your order shipped.",
        );
        assert_eq!(j.verdict, Verdict::AsDrafted);
        assert_eq!(j.edit_distance, Some(0));
    }

    #[test]
    fn an_approved_draft_with_one_word_changed_is_edited_at_distance_one() {
        let j = judge(
            Action::Approve,
            Some("Your order shipped today."),
            "Your parcel shipped today.",
        );
        assert_eq!(j.verdict, Verdict::Edited);
        assert_eq!(j.edit_distance, Some(1));
    }

    #[test]
    fn a_reply_without_a_draft_is_edited_at_its_word_count() {
        let j = judge(Action::ApproveSend, None, "Hello there, Maria");
        assert_eq!(j.verdict, Verdict::Edited);
        assert_eq!(j.edit_distance, Some(3));
    }

    #[test]
    fn edit_distance_counts_inserted_deleted_and_replaced_words() {
        assert_eq!(edit_distance("a b c d", "a x c d e"), 2);
        assert_eq!(edit_distance("a b c", "c"), 2);
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("one  two", "one two"), 0);
    }

    #[test]
    fn edit_distance_is_symmetric_on_a_long_reply_with_a_small_edit() {
        let long = "word ".repeat(20_000);
        let edited = format!("{long} extra {long}");
        let doubled = format!("{long} {long}");
        assert_eq!(edit_distance(&doubled, &edited), 1);
        assert_eq!(edit_distance(&edited, &doubled), 1);
    }

    #[test]
    fn the_draft_text_is_read_at_the_named_path() {
        let draft = json!({"text": "top", "output": {"text": "nested"}, "n": 3});
        assert_eq!(
            draft_text(Some(&draft), &DraftField::default()),
            Some("top")
        );
        let nested = DraftField::parse("output.text").unwrap();
        assert_eq!(draft_text(Some(&draft), &nested), Some("nested"));
        assert_eq!(
            draft_text(Some(&draft), &DraftField::parse("n").unwrap()),
            None
        );
        assert_eq!(
            draft_text(Some(&draft), &DraftField::parse("missing").unwrap()),
            None
        );
        assert_eq!(draft_text(None, &DraftField::default()), None);
    }

    #[test]
    fn a_draft_field_with_an_empty_key_is_refused() {
        assert!(DraftField::parse("").is_err());
        assert!(DraftField::parse("output..text").is_err());
        assert!(DraftField::parse(".text").is_err());
        assert_eq!(
            DraftField::parse("output.text").unwrap().to_string(),
            "output.text"
        );
    }
}
