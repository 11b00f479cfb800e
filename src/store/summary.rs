//! The console's summary of the judgement over a period: decisions per day by
//! verdict, the shares of each verdict, how much people edit, and how long a
//! reply takes from acceptance to Chatwoot.
//!
//! Read page by page as the export reads ([`export_pages`]) and tallied as
//! it goes: memory holds one page, one counter per day, and two histograms,
//! however many replies the period has.

use super::{export_pages, Cursor, ExportPage, ExportRecord, SharedStore, StoreError};
use crate::dataset::{draft_text, judge, DraftField, Verdict};
use crate::domain::ReplyId;
use chrono::{DateTime, Days, NaiveDate, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use std::collections::BTreeMap;

/// Rows read per page.
const SUMMARY_PAGE_ROWS: usize = 500;

/// The longest period one summary covers, in days: a bound on its answer.
pub const MAX_SUMMARY_DAYS: u64 = 366;

/// Which decisions a summary covers: those accepted on the UTC days `from`
/// to `to` (both included; none when `from` is after `to`), of one account
/// or of all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryPeriod {
    pub account: Option<i64>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Where each draft's text is read, as the training formats read it.
    pub draft_field: DraftField,
}

/// Decisions of one kind, by verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerdictCounts {
    pub as_drafted: u64,
    pub edited: u64,
    pub rejected: u64,
}

impl VerdictCounts {
    fn add(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::AsDrafted => self.as_drafted += 1,
            Verdict::Edited => self.edited += 1,
            Verdict::Rejected => self.rejected += 1,
        }
    }

    fn total(&self) -> u64 {
        self.as_drafted + self.edited + self.rejected
    }
}

/// One UTC day's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayCounts {
    pub day: NaiveDate,
    #[serde(flatten)]
    pub counts: VerdictCounts,
}

/// Each verdict's share of the period's decisions, from 0 to 1; `None` when
/// there were none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shares {
    pub as_drafted: Option<f64>,
    pub edited: Option<f64>,
    pub rejected: Option<f64>,
}

/// Time from acceptance to delivery to Chatwoot, over the replies of the
/// period that were delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryTimes {
    pub delivered: u64,
    pub median_ms: Option<u64>,
    pub p95_ms: Option<u64>,
}

/// What `GET /api/gold-replies/summary` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub account_id: Option<i64>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Every day of the period, oldest first, days without decisions too.
    pub days: Vec<DayCounts>,
    pub totals: VerdictCounts,
    pub shares: Shares,
    /// Median word edit distance among edited replies (as-drafted ones are 0
    /// by definition and their share is given); `None` without any.
    pub median_edit_distance: Option<u64>,
    pub delivery: DeliveryTimes,
}

/// Reads the period's decisions page by page ([`export_pages`]: one page of
/// at most [`super::EXPORT_PAGE_BYTES`] held at a time) and tallies them.
pub async fn summarise(
    store: SharedStore,
    period: &SummaryPeriod,
    now: DateTime<Utc>,
) -> Result<Summary, StoreError> {
    let start = day_start(period.from);
    let end = day_start(
        period
            .to
            .checked_add_days(Days::new(1))
            .unwrap_or(period.to),
    );
    let mut tally = Tally::new(period);
    if period.from > period.to {
        return Ok(tally.finish());
    }
    let first = ExportPage {
        after: just_before(start),
        until: end.min(now),
        conversation: None,
        account: period.account,
        limit: SUMMARY_PAGE_ROWS,
    };
    let mut pages = std::pin::pin!(export_pages(store, first));
    while let Some(records) = pages.try_next().await? {
        let within = records
            .iter()
            .filter(|r| (start..end).contains(&r.received_at));
        within.for_each(|record| tally.add(record));
    }
    Ok(tally.finish())
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// A cursor a moment before `start`: the export reads after a cursor, so the
/// replies of that last second before the period are read too, and left out
/// by the period's own test.
/// (`None` only if `0` stopped being a valid id: then the read starts at the
/// beginning, slower but the same.)
fn just_before(start: DateTime<Utc>) -> Option<Cursor> {
    let reply_id = ReplyId::parse("0").ok()?;
    let received_at = start - chrono::Duration::seconds(1);
    Some(Cursor {
        received_at,
        reply_id,
    })
}

/// The running counts of one summary.
struct Tally {
    period: SummaryPeriod,
    days: Vec<VerdictCounts>,
    edits: Histogram,
    delivery: Histogram,
}

impl Tally {
    fn new(period: &SummaryPeriod) -> Self {
        let days = ((period.to - period.from).num_days() + 1).max(0) as usize;
        Self {
            period: period.clone(),
            days: vec![VerdictCounts::default(); days],
            edits: Histogram::default(),
            delivery: Histogram::default(),
        }
    }

    fn add(&mut self, record: &ExportRecord) {
        let draft = draft_text(record.draft.as_ref(), &self.period.draft_field);
        let judgement = judge(record.action, draft, &record.content);
        let day = (record.received_at.date_naive() - self.period.from).num_days();
        if let Some(counts) = usize::try_from(day).ok().and_then(|d| self.days.get_mut(d)) {
            counts.add(judgement.verdict);
        }
        if let (Verdict::Edited, Some(distance)) = (judgement.verdict, judgement.edit_distance) {
            self.edits.add(distance as u64);
        }
        if let Some(delivered) = record.delivered_at {
            let ms = (delivered - record.received_at).num_milliseconds().max(0) as u64;
            self.delivery.add(three_digits(ms));
        }
    }

    fn finish(self) -> Summary {
        let mut totals = VerdictCounts::default();
        let mut days = Vec::with_capacity(self.days.len());
        for (offset, counts) in self.days.into_iter().enumerate() {
            totals.as_drafted += counts.as_drafted;
            totals.edited += counts.edited;
            totals.rejected += counts.rejected;
            let day = self.period.from + Days::new(offset as u64);
            days.push(DayCounts { day, counts });
        }
        let share = |n: u64| (totals.total() > 0).then(|| n as f64 / totals.total() as f64);
        Summary {
            account_id: self.period.account,
            from: self.period.from,
            to: self.period.to,
            days,
            shares: Shares {
                as_drafted: share(totals.as_drafted),
                edited: share(totals.edited),
                rejected: share(totals.rejected),
            },
            totals,
            median_edit_distance: self.edits.quantile(0.5),
            delivery: DeliveryTimes {
                delivered: self.delivery.count,
                median_ms: self.delivery.quantile(0.5),
                p95_ms: self.delivery.quantile(0.95),
            },
        }
    }
}

/// Counts per value: exact quantiles in as much memory as there are distinct
/// values (word distances are few; times are kept to [`three_digits`]).
#[derive(Default)]
struct Histogram {
    counts: BTreeMap<u64, u64>,
    count: u64,
}

impl Histogram {
    fn add(&mut self, value: u64) {
        *self.counts.entry(value).or_default() += 1;
        self.count += 1;
    }

    /// The nearest-rank quantile: the smallest value with at least `q` of
    /// the values at or below it.
    fn quantile(&self, q: f64) -> Option<u64> {
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (value, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return Some(*value);
            }
        }
        None
    }
}

/// `ms` to three significant digits, rounded down (1 234 567 ms counts as
/// 1 230 000): a time read back is within 1 % of the real one, and a year
/// of times takes a few thousand distinct values at most.
fn three_digits(ms: u64) -> u64 {
    let (mut value, mut scale) = (ms, 1);
    while value >= 1000 {
        value /= 10;
        scale *= 10;
    }
    value * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_rank_quantile_takes_the_smallest_value_reaching_the_rank() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in [5, 1, 3, 3, 9] {
            h.add(v);
        }
        assert_eq!(h.quantile(0.5), Some(3));
        assert_eq!(h.quantile(0.95), Some(9));
        assert_eq!(h.quantile(0.0), Some(1));
    }

    #[test]
    fn a_time_kept_to_three_digits_is_within_one_percent() {
        for ms in [0, 1, 999, 1_000, 1_999, 10_000, 12_345, 3_599_999, u64::MAX] {
            let kept = three_digits(ms);
            let error = (ms - kept) as f64 / ms.max(1) as f64;
            assert!(kept <= ms && error < 0.01, "{ms} ms kept as {kept}");
        }
        assert_eq!(three_digits(12_345), 12_300);
        assert_eq!(three_digits(10_000), 10_000);
    }
}
