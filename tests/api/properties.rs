//! Generated input for the policies a hostile or broken peer can reach: how a
//! `Retry-After` is read, how Chatwoot's answers are classified, and the
//! backoff. Never a panic; every answer within its documented bounds.

use chrono::{TimeZone, Utc};
use goldrelay::chatwoot::{classify, retry_after, SendError, RETRY_AFTER_CAP};
use goldrelay::delivery::backoff;
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use std::time::Duration;

fn with_retry_after(raw: &str) -> Option<HeaderMap> {
    let value = HeaderValue::from_str(raw).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, value);
    Some(headers)
}

proptest! {
    #[test]
    fn any_retry_after_is_read_without_panic_and_never_past_the_cap(
        raw in "\\PC{0,40}",
        now_secs in 0i64..=253_402_300_799,
    ) {
        let now = Utc.timestamp_opt(now_secs, 0).unwrap();
        if let Some(headers) = with_retry_after(&raw) {
            if let Some(wait) = retry_after(&headers, now) {
                prop_assert!(wait <= RETRY_AFTER_CAP);
            }
        }
    }

    #[test]
    fn a_number_of_seconds_is_that_many_seconds_up_to_the_cap(digits in "[0-9]{1,40}") {
        let headers = with_retry_after(&digits).unwrap();
        let wait = retry_after(&headers, Utc::now()).expect("digits are a Retry-After");
        let expected = digits
            .parse::<u64>()
            .map_or(RETRY_AFTER_CAP, |s| Duration::from_secs(s).min(RETRY_AFTER_CAP));
        prop_assert_eq!(wait, expected);
    }

    #[test]
    fn every_answer_is_classified_and_only_validation_failures_are_final_among_422s(
        status in 400u16..600,
        body in "\\PC{0,200}",
        retry in proptest::option::of("\\PC{0,20}"),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let headers = retry.and_then(|r| with_retry_after(&r)).unwrap_or_default();
        let answer = classify(status, &headers, &body);
        if status.is_server_error() {
            let is_maybe_created_retry = matches!(answer, SendError::Transient { maybe_created: true, .. });
            prop_assert!(is_maybe_created_retry, "{answer:?}");
        }
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            let error = serde_json::json!({ "error": body }).to_string();
            let answer = classify(status, &headers, &error);
            let final_ = matches!(answer, SendError::Permanent { .. });
            let validation = body.starts_with("Validation failed: ")
                && body != "Validation failed: Too many messages";
            prop_assert_eq!(final_, validation, "{:?} for {:?}", answer, body);
        }
    }

    #[test]
    fn backoff_never_panics_and_stays_between_half_the_step_and_the_cap(
        attempt in any::<u32>(),
        base_ms in 0u64..=u64::MAX / 2,
        max_ms in 0u64..=u64::MAX / 2,
        jitter in any::<f64>(),
    ) {
        let (base, max) = (Duration::from_millis(base_ms), Duration::from_millis(max_ms));
        let wait = backoff(attempt, base, max, jitter);
        prop_assert!(wait <= max.max(base.min(max)));
        let step = base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(32)))
            .min(max);
        // Half the step, less the rounding of a float multiplication.
        prop_assert!(wait.as_secs_f64() >= step.as_secs_f64() * 0.5 * (1.0 - 1e-9));
    }
}

#[test]
fn a_jitter_that_is_not_a_number_still_gives_a_backoff() {
    for jitter in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let wait = backoff(3, Duration::from_secs(1), Duration::from_secs(60), jitter);
        assert!(
            (Duration::from_secs(2)..=Duration::from_secs(4)).contains(&wait),
            "{wait:?}"
        );
    }
}
