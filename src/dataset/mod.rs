//! The gold dataset as training data: verdicts, formats, a stable split and
//! redaction of personal data. Pure functions over export record lines: the
//! HTTP handler and the CLI stream the records export and pass each page
//! through [`convert`], so every format pages, resumes and stays within
//! memory exactly as the records do.

mod formats;
mod redact;
mod split;
mod verdict;

pub use formats::{line, Format, RecordView};
pub use redact::{redact, CARD, EMAIL, IBAN, PHONE};
pub use split::{split_of, EvalShare, Split};
pub use verdict::{draft_text, edit_distance, judge, DraftField, Judgement, Verdict};

use crate::domain::FieldError;
use futures_util::{Stream, StreamExt};

/// How the dataset is asked for, as the query string or the CLI spells it;
/// `None` is the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct Asked<'a> {
    pub format: Option<&'a str>,
    pub split: Option<&'a str>,
    pub eval_share: Option<&'a str>,
    pub redact: Option<&'a str>,
    pub draft_field: Option<&'a str>,
}

/// How the dataset is exported: which format, which side of the split, and
/// whether personal data is redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    /// Only this side; `None`: both, each line saying its side.
    pub split: Option<Split>,
    pub eval_share: EvalShare,
    /// Redact personal data in the training formats (default); the records
    /// format is never redacted.
    pub redact: bool,
    /// Where in a draft object its text is read (`text` by default).
    pub draft_field: DraftField,
}

impl Default for Options {
    /// Today's records export, untouched.
    fn default() -> Self {
        Self {
            format: Format::Records,
            split: None,
            eval_share: EvalShare::default(),
            redact: true,
            draft_field: DraftField::default(),
        }
    }
}

impl Options {
    /// Checks every value at once; each error names its parameter.
    pub fn parse(asked: &Asked<'_>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut options = Options::default();
        let mut fail = |field: &str, message: String| errors.push(FieldError::new(field, message));
        if let Some(raw) = asked.format {
            match Format::parse(raw) {
                Some(format) => options.format = format,
                None => fail(
                    "format",
                    format!(
                        "must be one of {}",
                        Format::ALL.map(Format::as_str).join(", ")
                    ),
                ),
            }
        }
        if let Some(raw) = asked.split {
            match Split::parse(raw) {
                Some(split) => options.split = Some(split),
                None => fail("split", "must be train or eval".to_owned()),
            }
        }
        if let Some(raw) = asked.eval_share {
            match EvalShare::parse(raw) {
                Ok(share) => options.eval_share = share,
                Err(message) => fail("eval_share", message.to_owned()),
            }
        }
        match asked.redact {
            None | Some("true") => {}
            Some("false") => options.redact = false,
            Some(_) => fail("redact", "must be true or false".to_owned()),
        }
        if let Some(raw) = asked.draft_field {
            match DraftField::parse(raw) {
                Ok(field) => options.draft_field = field,
                Err(message) => fail("draft_field", message.to_owned()),
            }
        }
        if errors.is_empty() {
            Ok(options)
        } else {
            Err(errors)
        }
    }

    /// Whether these options show personal data a default export hides:
    /// only operators may ask for that.
    pub fn unredacted(&self) -> bool {
        !self.redact && self.format != Format::Records
    }

    /// Whether the records export passes through untouched.
    fn passthrough(&self) -> bool {
        self.format == Format::Records && self.split.is_none()
    }
}

/// One page of the records export (whole lines) as `options` asks for it.
/// A reply left out leaves no line; the export's paging has already moved
/// past it, so a resumed export neither repeats nor loses one.
pub fn convert(page: String, options: &Options) -> Result<String, serde_json::Error> {
    if options.passthrough() {
        return Ok(page);
    }
    let mut out = String::with_capacity(page.len());
    for record in page.lines() {
        let view: RecordView = serde_json::from_str(record)?;
        if options.format == Format::Records {
            let side = split_of(view.account_id, view.conversation_id, options.eval_share);
            if options.split == Some(side) {
                out.push_str(record);
                out.push('\n');
            }
        } else if let Some(line) = line(&view, options) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The records export's pages, each passed through [`convert`]. `unreadable`
/// turns a records line this module cannot read (a bug, never data) into
/// the stream's error, so the export stops rather than leave a gap.
pub fn converted<E>(
    pages: impl Stream<Item = Result<String, E>>,
    options: Options,
    unreadable: fn(serde_json::Error) -> E,
) -> impl Stream<Item = Result<String, E>> {
    pages.map(move |page| page.and_then(|page| convert(page, &options).map_err(unreadable)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn record(i: u32, account: i64, conversation: i64) -> String {
        json!({
            "cursor": format!("1764000000000000.r{i}"), "reply_id": format!("r{i}"),
            "account_id": account, "conversation_id": conversation, "action": "approve",
            "content": "Write to ana@example.com", "private": false,
            "draft": {"text": "Write to ana@example.com"}, "approved_by": "p",
            "tags": [], "metadata": null, "received_at": "2026-12-06T10:00:00Z",
            "status": "recorded", "attempts": 0,
        })
        .to_string()
    }

    fn page(n: u32) -> String {
        (0..n).map(|i| record(i, 1, i64::from(i)) + "\n").collect()
    }

    fn parse(asked: Asked<'_>) -> Options {
        Options::parse(&asked).unwrap()
    }

    #[test]
    fn the_records_format_without_a_split_passes_through_untouched() {
        let page = page(3);
        assert_eq!(convert(page.clone(), &Options::default()).unwrap(), page);
    }

    #[test]
    fn the_two_sides_of_the_split_add_up_to_the_whole_without_overlap() {
        let page = page(200);
        for format in ["records", "trl-kto"] {
            let side = |split| {
                let options = parse(Asked {
                    format: Some(format),
                    split: Some(split),
                    ..Asked::default()
                });
                convert(page.clone(), &options).unwrap()
            };
            let (train, eval) = (side("train"), side("eval"));
            assert_eq!(
                train.lines().count() + eval.lines().count(),
                200,
                "{format}"
            );
            assert!(
                eval.lines().count() > 5 && eval.lines().count() < 50,
                "{format}"
            );
            for line in eval.lines() {
                assert!(!train.contains(line), "{format}");
            }
        }
    }

    #[test]
    fn the_records_format_is_never_redacted_and_the_others_are_by_default() {
        let records = parse(Asked {
            split: Some("train"),
            ..Asked::default()
        });
        let kto = parse(Asked {
            format: Some("trl-kto"),
            ..Asked::default()
        });
        let raw = parse(Asked {
            format: Some("trl-kto"),
            redact: Some("false"),
            ..Asked::default()
        });
        assert!(convert(page(20), &records)
            .unwrap()
            .contains("ana@example.com"));
        let redacted = convert(page(1), &kto).unwrap();
        assert!(!redacted.contains("ana@example.com") && redacted.contains("[EMAIL]"));
        assert!(convert(page(1), &raw).unwrap().contains("ana@example.com"));
        assert!(raw.unredacted() && !kto.unredacted());
    }

    #[test]
    fn every_line_carries_the_cursor_of_its_record() {
        let kto = parse(Asked {
            format: Some("trl-kto"),
            ..Asked::default()
        });
        let out = convert(page(5), &kto).unwrap();
        let cursors: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["cursor"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let expected: Vec<String> = (0..5).map(|i| format!("1764000000000000.r{i}")).collect();
        assert_eq!(cursors, expected);
    }

    #[test]
    fn every_bad_value_is_reported_at_once_by_name() {
        let errors = Options::parse(&Asked {
            format: Some("csv"),
            split: Some("test"),
            eval_share: Some("2"),
            redact: Some("no"),
            draft_field: Some("a..b"),
        })
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["format", "split", "eval_share", "redact", "draft_field"]
        );
        assert!(errors[0].message.contains("openai-preference"));
    }

    #[test]
    fn a_line_that_is_not_a_record_is_an_error_not_a_silent_gap() {
        let kto = parse(Asked {
            format: Some("trl-kto"),
            ..Asked::default()
        });
        assert!(convert("{\"cursor\": 1}\n".to_owned(), &kto).is_err());
    }
}
