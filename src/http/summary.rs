//! `GET /api/gold-replies/summary`: the console's summary view of the
//! judgement over a period (viewers and operators).

use super::auth::Reader;
use super::problem::ApiError;
use super::AppState;
use crate::dataset::DraftField;
use crate::domain::FieldError;
use crate::store::summary::{summarise, SummaryPeriod, MAX_SUMMARY_DAYS};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{Days, NaiveDate};
use serde::Deserialize;

/// How many days a period without `from` covers, up to `to`.
const DEFAULT_DAYS: u64 = 30;

/// The summary's query string.
#[derive(Deserialize)]
struct SummaryQuery {
    account_id: Option<i64>,
    from: Option<String>,
    to: Option<String>,
    draft_field: Option<String>,
}

/// Tallies the decisions accepted from `from` to `to` (UTC days, both
/// included; by default the 30 days up to today), each draft's text read at
/// `draft_field` (`text` by default), as the export reads it. A longer period keeps its
/// last 366 days; one whose `from` is after its `to` is empty. The answer
/// names the period it covers. A bound token summarises its own account,
/// and is refused another.
pub async fn summary(
    Reader(scope): Reader,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<SummaryQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::MalformedQuery(e.to_string()))?
        .into_inner();
    // By the store's clock, which stamped the decisions it counts.
    let now = state.store.now();
    let mut period = period(query, now.date_naive())?;
    period.account = scope.narrow(period.account)?;
    let summary = summarise(state.store.clone(), &period, now).await?;
    Ok(HttpResponse::Ok().json(summary))
}

/// The period the query asks for, every rule broken named at once.
fn period(query: SummaryQuery, today: NaiveDate) -> Result<SummaryPeriod, ApiError> {
    let mut errors = Vec::new();
    if query.account_id.is_some_and(|id| id < 1) {
        errors.push(FieldError::new(
            "account_id",
            "must be an integer of at least 1",
        ));
    }
    let to = day(&mut errors, "to", query.to.as_deref()).unwrap_or(today);
    // No earlier than year 0: a day is written with four digits.
    let year_zero = NaiveDate::from_ymd_opt(0, 1, 1).unwrap_or(NaiveDate::MIN);
    let earliest = to
        .checked_sub_days(Days::new(MAX_SUMMARY_DAYS - 1))
        .map_or(year_zero, |d| d.max(year_zero));
    let from = match day(&mut errors, "from", query.from.as_deref()) {
        Some(from) => from.max(earliest),
        None => to
            .checked_sub_days(Days::new(DEFAULT_DAYS - 1))
            .map_or(earliest, |d| d.max(earliest)),
    };
    let draft_field = match query.draft_field.as_deref().map(DraftField::parse) {
        None => DraftField::default(),
        Some(Ok(field)) => field,
        Some(Err(rule)) => {
            errors.push(FieldError::new("draft_field", rule));
            DraftField::default()
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::InvalidQuery(errors));
    }
    Ok(SummaryPeriod {
        account: query.account_id,
        from,
        to,
        draft_field,
    })
}

/// A `YYYY-MM-DD` calendar day, or the rule it broke in `errors`.
fn day(errors: &mut Vec<FieldError>, field: &str, raw: Option<&str>) -> Option<NaiveDate> {
    let raw = raw?;
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    let parsed = shaped
        .then(|| NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok())
        .flatten();
    if parsed.is_none() {
        errors.push(FieldError::new(
            field,
            "must be a calendar day written YYYY-MM-DD",
        ));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: Option<&str>, to: Option<&str>) -> SummaryQuery {
        SummaryQuery {
            account_id: None,
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            draft_field: None,
        }
    }

    fn date(raw: &str) -> NaiveDate {
        raw.parse().unwrap()
    }

    fn fields(result: Result<SummaryPeriod, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::InvalidQuery(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid-query, got {other:?}"),
        }
    }

    #[test]
    fn without_from_and_to_the_period_is_the_thirty_days_up_to_today() {
        let p = period(query(None, None), date("2026-12-06")).unwrap();
        assert_eq!((p.from, p.to), (date("2026-11-07"), date("2026-12-06")));
    }

    #[test]
    fn a_period_of_one_day_and_one_of_366_days_are_taken_whole() {
        let today = date("2026-12-06");
        let p = period(query(Some("2026-12-06"), Some("2026-12-06")), today).unwrap();
        assert_eq!((p.from, p.to), (today, today));
        let p = period(query(Some("2024-01-01"), Some("2024-12-31")), today).unwrap();
        assert_eq!(p.from, date("2024-01-01"), "2024 has 366 days");
    }

    #[test]
    fn a_longer_period_keeps_its_last_366_days_and_a_reversed_one_stays_empty() {
        let today = date("2026-12-06");
        let p = period(query(Some("0000-01-01"), Some("2025-01-01")), today).unwrap();
        assert_eq!((p.from, p.to), (date("2024-01-02"), date("2025-01-01")));
        let p = period(query(Some("2026-12-07"), None), today).unwrap();
        assert!(p.from > p.to, "{p:?}");
    }

    #[test]
    fn a_day_that_is_not_a_calendar_day_is_refused_with_its_field() {
        let today = date("2026-12-06");
        let refused = |from, to| fields(period(query(from, to), today));
        assert_eq!(refused(Some("2026-1-6"), Some("")), ["to", "from"]);
        assert_eq!(refused(Some("2026-02-30"), None), ["from"]);
        assert_eq!(refused(Some("+2026-12-0"), None), ["from"]);
        assert_eq!(refused(None, Some("2026-12-06T00:00:00Z")), ["to"]);
    }
}
