//! The delivery rules: how an attempt's failure becomes the job's next state
//! (retry, unsent, dead), the backoff, and what a drain records for an attempt
//! it abandons. Pure functions of the job, the error, the policy and the time,
//! so the decision table below and the simulation test them without a worker.

use crate::chatwoot::SendError;
use crate::store::{Job, Outcome};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// How much sooner than its lease an attempt is cut off, so the outcome is
/// recorded while the job is still ours.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How the worker retries and gives up.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The first retry's delay, doubled for each later one.
    pub retry_base: Duration,
    /// The longest delay between two attempts.
    pub retry_max: Duration,
    /// Attempts before a reply goes dead.
    pub max_attempts: u32,
    /// After an attempt that may have created the message, the least wait
    /// before the next one, which looks the message up first.
    pub lookup_delay: Duration,
    /// How old a reply may get before it goes dead instead of being retried.
    pub max_age: Duration,
    /// Deliveries in flight at once, across conversations.
    pub concurrency: usize,
    /// Chatwoot requests per second; 0 lifts the cap.
    pub send_rate: u32,
    /// How long a claimed job stays ours.
    pub lease: Duration,
    /// How long shutdown waits for attempts in flight.
    pub drain: Duration,
    /// Chatwoot honours `client_message_id` (chatwoot#15743): a resend with the
    /// same key answers the original message, so a maybe-sent attempt is
    /// simply sent again, with no wait and no lookup.
    pub idempotent_creates: bool,
    /// How often a delivered reply's channel status is read back from
    /// Chatwoot until it is final; `None`: only when an event marks it.
    pub status_reconcile: Option<Duration>,
}

/// The least wait between a create that may have landed and the lookup that
/// follows it: `lookup_delay`, or none where creates are idempotent.
pub fn look_after(lookup_delay: Duration, idempotent_creates: bool) -> Duration {
    if idempotent_creates {
        Duration::ZERO
    } else {
        lookup_delay
    }
}

impl Policy {
    /// The least wait between a create that may have landed and the lookup
    /// that follows it: none where the resend itself is safe.
    pub fn look_after(&self) -> Duration {
        look_after(self.lookup_delay, self.idempotent_creates)
    }

    /// How long an attempt may run before it is cut off: never past its
    /// lease, after which another instance may claim the job.
    pub(super) fn deadline(&self) -> Duration {
        self.lease.saturating_sub(LEASE_MARGIN)
    }
}

/// The exponential backoff before attempt `attempt + 1`, with jitter.
///
/// `jitter` in `[0, 1)` spreads the delay over its upper half, so replies held
/// up by one outage do not all return at the same instant.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let full = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    // A jitter that is not a number gives the full step; float rounding never
    // takes the wait past the step, nor past what a Duration can hold.
    let jitter = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    Duration::try_from_secs_f64(full.as_secs_f64() * (0.5 + 0.5 * jitter))
        .map_or(full, |wait| wait.min(full))
}

/// Added to every give-up that may leave a message behind: the operator must look.
const UNSURE: &str = "; delivery uncertain: an attempt may have created the message and no \
     lookup confirmed it either way, so it was not sent again: look in the conversation and \
     retry the reply if it is missing";

/// Which step of an attempt failed, which decides how unsure its end is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// The create (or the whole attempt): if it may have created the message,
    /// the next attempt waits `lookup_delay` and looks it up first.
    Create,
    /// The lookup of an earlier attempt's message: it stays maybe sent.
    Lookup,
}

pub(super) fn span(wait: Duration) -> chrono::Duration {
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

/// What a drain records for an attempt on `job` it abandons, whose create
/// left at `sent_at` (if it did): sent, it is due only a lookup delay after
/// the create left, and looks first; unsent, it goes back as it was. Pure.
pub fn abandoned(
    job: &Job,
    sent_at: Option<DateTime<Utc>>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Outcome {
    match sent_at {
        None => unsent(job, now, "stopped before anything was sent".into(), policy),
        Some(sent) => Outcome::Retry {
            at: (sent + span(policy.look_after())).max(now),
            error: "the process stopped while Chatwoot was answering; the message is looked up \
                    before any resend"
                .into(),
            maybe_sent: true,
        },
    }
}

/// The job goes back as it was, due at `at`, its attempt not counted; past
/// the reply's maximum age it goes `dead` instead.
pub fn unsent(job: &Job, at: DateTime<Utc>, why: String, policy: &Policy) -> Outcome {
    if elapsed(job.received_at, at) > policy.max_age {
        let max_age = humantime::format_duration(policy.max_age);
        let unsure = if job.maybe_sent { UNSURE } else { "" };
        return Outcome::Dead {
            error: format!("gave up: the reply would be older than {max_age} at its next attempt: {why}{unsure}"),
            maybe_sent: job.maybe_sent,
        };
    }
    Outcome::Unsent {
        at,
        maybe_sent: job.maybe_sent,
        attempts: job.attempt.saturating_sub(1),
        why: Some(why),
    }
}

/// What a failed step makes of the job. A pause (429, refused token) gives
/// it back unsent, due when the pause (or Chatwoot's own `Retry-After`, however
/// long) ends, its attempt not counted; a lookup that was stopped so leaves the
/// reply maybe sent, since what went before it may have landed (found by the
/// simulation, seeds 171, 356, 708: a 429 on the lookup after a 422). Anything
/// else goes by [`retry_or_give_up`]. `paused` is how long every request must
/// still wait. Pure.
pub fn after_failure(
    job: &Job,
    error: SendError,
    step: Step,
    paused: Option<Duration>,
    p: &Policy,
    now: DateTime<Utc>,
    jitter: f64,
) -> Outcome {
    let pausing = matches!(
        error,
        SendError::TokenRefused { .. }
            | SendError::Transient {
                status: Some(429),
                ..
            }
    );
    if !pausing {
        return retry_or_give_up(job, error, step, p, now, jitter);
    }
    let paused = paused.unwrap_or_default();
    let wait = match error {
        SendError::Transient {
            retry_after: Some(asked),
            ..
        } => asked.max(paused),
        _ => paused,
    };
    let why = error.detail().to_owned();
    let why = if wait > paused {
        format!(
            "{why} (Chatwoot asked to wait {} with Retry-After)",
            humantime::format_duration(wait)
        )
    } else {
        why
    };
    let job = Job {
        maybe_sent: job.maybe_sent || step == Step::Lookup,
        ..job.clone()
    };
    unsent(&job, now + span(wait), why, p)
}

/// Retries a transient failure, or gives up on it: at the attempt limit,
/// or when the wait would take the reply past its maximum age. Pure: `now`
/// and `jitter` (in `[0, 1)`) come from the caller.
pub fn retry_or_give_up(
    job: &Job,
    error: SendError,
    step: Step,
    p: &Policy,
    now: DateTime<Utc>,
    jitter: f64,
) -> Outcome {
    let SendError::Transient {
        retry_after,
        maybe_created,
        detail,
        ..
    } = error
    else {
        return Outcome::Dead {
            error: error.detail().to_owned(),
            maybe_sent: job.maybe_sent,
        };
    };
    let maybe_sent = maybe_created || step == Step::Lookup;
    // A reply given up on remembers any attempt that may have created it.
    let dead_maybe_sent = job.maybe_sent || maybe_sent;
    let unsure = if maybe_sent { UNSURE } else { "" };
    let attempt = u32::try_from(job.attempt).unwrap_or(u32::MAX);
    if attempt >= p.max_attempts {
        return Outcome::Dead {
            error: format!("gave up after {attempt} attempts: {detail}{unsure}"),
            maybe_sent: dead_maybe_sent,
        };
    }
    // A create Chatwoot may still be committing gets time to land before the lookup.
    let floor = if maybe_created && step == Step::Create {
        p.look_after()
    } else {
        Duration::ZERO
    };
    let asked = retry_after.unwrap_or_default();
    let delay = backoff(attempt, p.retry_base, p.retry_max, jitter)
        .max(asked)
        .max(floor);
    let at = now.checked_add_signed(span(delay));
    let Some(at) = at.filter(|at| elapsed(job.received_at, *at) <= p.max_age) else {
        return Outcome::Dead {
            error: too_old(p.max_age, asked, delay, &detail, unsure),
            maybe_sent: dead_maybe_sent,
        };
    };
    Outcome::Retry {
        at,
        error: detail,
        maybe_sent,
    }
}

/// Why a retry would take the reply past its maximum age, naming a
/// Retry-After that set the wait.
fn too_old(
    max_age: Duration,
    asked: Duration,
    delay: Duration,
    detail: &str,
    unsure: &str,
) -> String {
    let why = if asked >= delay {
        format!(
            " (Chatwoot asked to wait {} with Retry-After)",
            humantime::format_duration(asked)
        )
    } else {
        String::new()
    };
    let max_age = humantime::format_duration(max_age);
    format!(
        "gave up: the reply would be older than {max_age} at its next attempt{why}: {detail}{unsure}"
    )
}

pub(super) fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReplyId;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let (base, max) = (Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(40, base, max, 1.0), max);
    }

    #[test]
    fn jitter_keeps_the_delay_within_its_upper_half() {
        let (base, max) = (Duration::from_secs(8), Duration::from_secs(60));
        assert_eq!(backoff(1, base, max, 0.0), Duration::from_secs(4));
        assert!(backoff(1, base, max, 0.99) < Duration::from_secs(8));
    }

    fn policy() -> Policy {
        Policy {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_attempts: 5,
            lookup_delay: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            concurrency: 4,
            send_rate: 0,
            lease: Duration::from_secs(35),
            drain: Duration::from_secs(5),
            idempotent_creates: false,
            status_reconcile: None,
        }
    }

    fn job(attempt: i64, maybe_sent: bool, age_secs: i64, now: DateTime<Utc>) -> Job {
        Job {
            reply_id: ReplyId::parse("gr-1").unwrap(),
            account_id: 1,
            conversation_id: 1,
            content: "hi".into(),
            private: false,
            liquid: false,
            attempt,
            received_at: now - chrono::Duration::seconds(age_secs),
            accepted_at: now - chrono::Duration::seconds(age_secs),
            maybe_sent,
            trace_context: None,
        }
    }

    fn transient(maybe_created: bool, retry_after: Option<u64>) -> SendError {
        SendError::Transient {
            status: Some(503),
            retry_after: retry_after.map(Duration::from_secs),
            maybe_created,
            detail: "Chatwoot answered 503".into(),
        }
    }

    /// What [`retry_or_give_up`] decides, as (kind, seconds until due, maybe sent).
    fn decided(outcome: Outcome, now: DateTime<Utc>) -> (&'static str, i64, bool) {
        match outcome {
            Outcome::Retry { at, maybe_sent, .. } => {
                ("retry", (at - now).num_seconds(), maybe_sent)
            }
            Outcome::Dead { maybe_sent, .. } => ("dead", 0, maybe_sent),
            Outcome::Unsent { at, maybe_sent, .. } => {
                ("unsent", (at - now).num_seconds(), maybe_sent)
            }
            Outcome::Delivered { .. } => ("delivered", 0, false),
        }
    }

    /// One row of a decision table: (case, job, error, step, policy, expected).
    type Case<'a> = (
        &'a str,
        Job,
        SendError,
        Step,
        &'a Policy,
        (&'a str, i64, bool),
    );

    /// Runs every row through [`retry_or_give_up`] at `now`, jitter at its top.
    fn check(cases: Vec<Case>, now: DateTime<Utc>) {
        for (case, job, error, step, policy, expected) in cases {
            let got = decided(retry_or_give_up(&job, error, step, policy, now, 1.0), now);
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn the_decision_table_of_retries() {
        let now = Utc::now();
        let p = policy();
        let idempotent = Policy {
            idempotent_creates: true,
            ..policy()
        };
        let cases: Vec<Case> = vec![
            (
                "a failure that created nothing retries with backoff",
                job(1, false, 0, now),
                transient(false, None),
                Step::Create,
                &p,
                ("retry", 1, false),
            ),
            (
                "a create that may have landed waits the lookup delay",
                job(1, false, 0, now),
                transient(true, None),
                Step::Create,
                &p,
                ("retry", 60, true),
            ),
            (
                "with idempotency keys the resend needs no wait",
                job(1, false, 0, now),
                transient(true, None),
                Step::Create,
                &idempotent,
                ("retry", 1, true),
            ),
            (
                "Retry-After longer than the backoff wins",
                job(1, false, 0, now),
                transient(false, Some(30)),
                Step::Create,
                &p,
                ("retry", 30, false),
            ),
            (
                "a failed lookup stays maybe sent, without a second wait",
                job(2, true, 0, now),
                transient(false, None),
                Step::Lookup,
                &p,
                ("retry", 2, true),
            ),
        ];
        check(cases, now);
    }

    #[test]
    fn the_decision_table_of_giving_up() {
        let now = Utc::now();
        let p = policy();
        let cases: Vec<Case> = vec![
            (
                "the attempt limit ends it, remembering an earlier maybe-sent",
                job(5, true, 0, now),
                transient(false, None),
                Step::Create,
                &p,
                ("dead", 0, true),
            ),
            (
                "a wait past the maximum age ends it",
                job(1, false, 3590, now),
                transient(true, None),
                Step::Create,
                &p,
                ("dead", 0, true),
            ),
            (
                "a permanent refusal is dead at once",
                job(1, false, 0, now),
                SendError::Permanent {
                    status: 404,
                    detail: "gone".into(),
                },
                Step::Create,
                &p,
                ("dead", 0, false),
            ),
        ];
        check(cases, now);
    }

    #[test]
    fn a_pause_during_a_lookup_leaves_the_reply_maybe_sent() {
        let now = Utc::now();
        let p = policy();
        let throttled = SendError::Transient {
            status: Some(429),
            retry_after: None,
            maybe_created: false,
            detail: "Chatwoot answered 429: Retry later".into(),
        };
        let paused = Some(Duration::from_secs(20));
        // After a 422 the lookup was throttled: the 422 may have followed a commit.
        let first = job(1, false, 0, now);
        let lookup = after_failure(
            &first,
            throttled.clone(),
            Step::Lookup,
            paused,
            &p,
            now,
            1.0,
        );
        assert_eq!(decided(lookup, now), ("unsent", 20, true));
        // A throttled create sent nothing: the job goes back as it was.
        let create = after_failure(&first, throttled, Step::Create, paused, &p, now, 1.0);
        assert_eq!(decided(create, now), ("unsent", 20, false));
        let refused = SendError::TokenRefused {
            detail: "Invalid Access Token".into(),
        };
        let token = after_failure(&first, refused, Step::Create, paused, &p, now, 1.0);
        assert_eq!(decided(token, now), ("unsent", 20, false));
    }

    #[test]
    fn an_attempt_that_sent_nothing_goes_back_as_it_was_unless_too_old() {
        let now = Utc::now();
        let p = policy();
        let later = now + chrono::Duration::seconds(40);
        match unsent(&job(3, true, 0, now), later, "no slot".into(), &p) {
            Outcome::Unsent {
                at,
                maybe_sent,
                attempts,
                ..
            } => {
                assert_eq!((at, maybe_sent, attempts), (later, true, 2));
            }
            other => panic!("{other:?}"),
        }
        let old = job(3, false, 3590, now);
        assert!(matches!(
            unsent(&old, later, "x".into(), &p),
            Outcome::Dead {
                maybe_sent: false,
                ..
            }
        ));
    }

    #[test]
    fn an_abandoned_create_is_due_only_a_lookup_delay_after_it_left() {
        let now = Utc::now();
        let p = policy();
        let sent = now - chrono::Duration::seconds(10);
        match abandoned(&job(1, false, 0, now), Some(sent), &p, now) {
            Outcome::Retry { at, maybe_sent, .. } => {
                assert_eq!(at, sent + chrono::Duration::seconds(60));
                assert!(maybe_sent);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            abandoned(&job(1, false, 0, now), None, &p, now),
            Outcome::Unsent {
                maybe_sent: false,
                attempts: 0,
                ..
            }
        ));
    }
}
