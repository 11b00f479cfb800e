//! The gold dataset as training data: verdicts, formats, a stable split and
//! redaction of personal data. Pure functions over export records; the HTTP
//! handler and the CLI only choose and stream.

mod verdict;

pub use verdict::{draft_text, edit_distance, judge, DraftField, Judgement, Verdict};
