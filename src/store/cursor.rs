//! The one cursor format, for the list and the export alike:
//! `<received_at in microseconds>.<reply_id>` — opaque to clients, exact on
//! both backends (SQLite keeps milliseconds, so its cursors end in `000`),
//! readable in logs. The list used to write milliseconds; those cursors are
//! still read: a time of 15 digits or fewer is milliseconds (goldrelay never
//! accepted a reply before 2001, when microseconds reached 16 digits).

use super::{Cursor, ReplyRecord};
use crate::domain::ReplyId;
use chrono::DateTime;

/// The most digits an old (milliseconds) cursor has: up to year 33658.
const MILLIS_DIGITS: usize = 15;
/// The most digits a cursor's microseconds have: up to year 5138, which
/// every backend can compare.
const MICROS_DIGITS: usize = 17;

impl Cursor {
    /// The cursor's text, as answers and export lines carry it.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.received_at.timestamp_micros(), self.reply_id)
    }

    /// The position `raw` names, if it is a cursor [`Cursor::encode`] (or an
    /// older list) could have written; `None` for anything else.
    pub fn decode(raw: &str) -> Option<Cursor> {
        let (time, reply_id) = raw.split_once('.')?;
        if !(1..=MICROS_DIGITS).contains(&time.len()) || !time.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number: i64 = time.parse().ok()?;
        let received_at = if time.len() <= MILLIS_DIGITS {
            DateTime::from_timestamp_millis(number)?
        } else {
            DateTime::from_timestamp_micros(number)?
        };
        Some(Cursor {
            received_at,
            reply_id: ReplyId::parse(reply_id).ok()?,
        })
    }
}

impl ReplyRecord {
    /// The position just after this reply.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            received_at: self.received_at,
            reply_id: self.reply_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_micros(micros: i64, reply_id: &str) -> Cursor {
        Cursor {
            received_at: DateTime::from_timestamp_micros(micros).unwrap(),
            reply_id: ReplyId::parse(reply_id).unwrap(),
        }
    }

    #[test]
    fn a_cursor_reads_back_as_the_position_it_was_made_from() {
        let cursor = at_micros(1_764_000_000_123_456, "gr.2026:11-29_x");
        assert_eq!(cursor.encode(), "1764000000123456.gr.2026:11-29_x");
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn an_old_list_cursor_in_milliseconds_is_still_read() {
        assert_eq!(
            Cursor::decode("1764000000123.gr-1"),
            Some(at_micros(1_764_000_000_123_000, "gr-1"))
        );
    }

    #[test]
    fn anything_else_is_not_a_cursor() {
        for raw in [
            "",
            "12",
            "x.reply",
            "12.",
            "12.bad id",
            "-12.a",
            "+12.a",
            "999999999999999999.a",
            "99999999999999999999.a",
        ] {
            assert_eq!(Cursor::decode(raw), None, "{raw:?}");
        }
    }
}
