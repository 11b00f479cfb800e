//! Which conversations go to training and which to evaluation.
//!
//! Decided by SHA-256 of the account and conversation, never by Rust's
//! `DefaultHasher` (whose output may change between Rust releases): a
//! conversation lands on the same side in every export, on every machine, as
//! the dataset grows, and all of its replies land together. Anyone can
//! recompute it; in Python:
//!
//! ```text
//! h = int.from_bytes(hashlib.sha256(f"{account_id}:{conversation_id}".encode()).digest()[:8], "big")
//! side = "eval" if h % 10000 < round(eval_share * 10000) else "train"
//! ```

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The two sides of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    /// The side named `raw` (`train` or `eval`).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "train" => Some(Split::Train),
            "eval" => Some(Split::Eval),
            _ => None,
        }
    }

    /// The name used in the query string and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

/// The share of conversations held out for evaluation, in basis points
/// (1/10 000), so it compares exactly with the hash's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalShare(u32);

impl Default for EvalShare {
    /// 10 % of conversations.
    fn default() -> Self {
        Self(1_000)
    }
}

impl EvalShare {
    const BUCKETS: u64 = 10_000;

    /// A fraction from 0 to 1 (`0.1` is 10 %), to four decimal places.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        const RULE: &str = "must be a number from 0 to 1, such as 0.1 for 10 %";
        let share: f64 = raw.trim().parse().map_err(|_| RULE)?;
        if !(0.0..=1.0).contains(&share) {
            return Err(RULE);
        }
        Ok(Self((share * Self::BUCKETS as f64).round() as u32))
    }

    /// The share as a fraction, for the README and error messages.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / Self::BUCKETS as f64
    }
}

/// The side of the split conversation `conversation_id` of account
/// `account_id` falls on. Raising the share only moves conversations from
/// train to eval, never back.
pub fn split_of(account_id: i64, conversation_id: i64, eval_share: EvalShare) -> Split {
    let digest = Sha256::digest(format!("{account_id}:{conversation_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    if u64::from_be_bytes(first) % EvalShare::BUCKETS < u64::from(eval_share.0) {
        Split::Eval
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_the_documented_sha256_bucket() {
        // sha256("1:187") begins 3455218edf1303e5; that as a big-endian u64
        // modulo 10 000 is 6421 (computed with Python's hashlib).
        assert_eq!(split_of(1, 187, EvalShare(6421)), Split::Train);
        assert_eq!(split_of(1, 187, EvalShare(6422)), Split::Eval);
    }

    #[test]
    fn about_the_eval_share_of_conversations_is_held_out() {
        let share = EvalShare::default();
        let held = (1..=20_000)
            .filter(|c| split_of(7, *c, share) == Split::Eval)
            .count();
        assert!((1_800..=2_200).contains(&held), "{held} of 20 000");
    }

    #[test]
    fn raising_the_share_only_moves_conversations_to_eval() {
        let small = EvalShare::parse("0.1").unwrap();
        let large = EvalShare::parse("0.3").unwrap();
        for c in 1..=5_000 {
            if split_of(3, c, small) == Split::Eval {
                assert_eq!(split_of(3, c, large), Split::Eval, "conversation {c}");
            }
        }
    }

    #[test]
    fn the_same_conversation_number_in_two_accounts_is_split_independently() {
        let share = EvalShare::parse("0.5").unwrap();
        let differ = (1..=200)
            .filter(|c| split_of(1, *c, share) != split_of(2, *c, share))
            .count();
        assert!(differ > 50, "{differ}");
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        for raw in ["-0.1", "1.5", "ten", "", "NaN"] {
            assert!(EvalShare::parse(raw).is_err(), "{raw:?}");
        }
        assert_eq!(EvalShare::parse("0").unwrap(), EvalShare(0));
        assert_eq!(EvalShare::parse("1").unwrap(), EvalShare(10_000));
        assert_eq!(EvalShare::parse("0.25").unwrap().fraction(), 0.25);
    }

    #[test]
    fn a_share_of_zero_or_one_puts_everything_on_one_side() {
        for c in 1..=500 {
            assert_eq!(split_of(1, c, EvalShare(0)), Split::Train);
            assert_eq!(split_of(1, c, EvalShare(10_000)), Split::Eval);
        }
    }
}
