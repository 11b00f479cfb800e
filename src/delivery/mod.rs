//! The delivery worker: claims due jobs, sends them to Chatwoot, records the outcome.
//!
//! Order per conversation comes from the store, which only ever hands out a
//! conversation's oldest job. Concurrency across conversations is bounded by
//! `concurrency`, and every Chatwoot request passes one shared rate limiter
//! and one shared pause (set when Chatwoot throttles).
//!
//! Exactly once: an attempt that may have created the message (a timeout, a
//! reset, a 5xx, a 422 after the commit) is "maybe sent"; the next attempt
//! waits `lookup_delay`, so a create Chatwoot commits late has landed, and
//! starts by looking the message up. A lookup that cannot conclude never
//! leads to a send. See `docs/delivery.md`.

mod channel;

use crate::chatwoot::{ChatwootClient, Lookup, SendError};
use crate::health::{WorkerPhase, WorkerState};
use crate::metrics::Metrics;
use crate::store::{Job, Outcome, SharedStore};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::future::Future;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest the worker sleeps without looking at the queue, so jobs whose
/// lease ran out on another instance are picked up.
const MAX_IDLE: Duration = Duration::from_secs(2);
/// How much sooner than its lease an attempt is cut off, so the outcome is
/// recorded while the job is still ours.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// The wait after the store failed, before trying again.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// How often an attempt's outcome is offered to the store before it is left
/// to the job's lease (0.5 + 1 + 2 s of waiting).
const RECORD_TRIES: u32 = 4;

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

/// A pause every Chatwoot request of the worker waits out, set when Chatwoot
/// throttles: rack-attack counts every request from this IP
/// (`config/initializers/rack_attack.rb`), so slowing down one reply alone
/// would not help.
#[derive(Debug, Default)]
pub struct Pause {
    state: Mutex<PauseState>,
}

#[derive(Debug, Default)]
struct PauseState {
    until: Option<Instant>,
    /// Throttled answers in a row; the pause doubles with each.
    strikes: u32,
}

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a throttled answer and returns the pause it set: `retry_after`
    /// when Chatwoot (or its proxy) named one, else a backoff from `base` that
    /// doubles with each throttle in a row (rack-attack names none); never
    /// more than `max`.
    pub fn throttled(
        &self,
        retry_after: Option<Duration>,
        base: Duration,
        max: Duration,
    ) -> Duration {
        let mut state = self.lock();
        state.strikes = state.strikes.saturating_add(1);
        let wait = retry_after
            .unwrap_or_else(|| backoff(state.strikes, base, max, 1.0))
            .min(max);
        let now = Instant::now();
        let until = now.checked_add(wait).unwrap_or(now);
        state.until = Some(state.until.map_or(until, |u| u.max(until)));
        wait
    }

    /// A request went through: the next throttle starts from `base` again.
    pub fn cleared(&self) {
        self.lock().strikes = 0;
    }

    /// How long requests must still wait, if at all.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.lock().until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// Runs `future`, turning a panic inside it into the panic's message.
pub async fn caught<T>(future: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned())
        })
}

/// Added to every give-up that may leave a message behind: the operator must look.
const UNSURE: &str = "; delivery uncertain: an attempt may have created the message and no \
     lookup confirmed it either way, so it was not sent again: look in the conversation and \
     retry the reply if it is missing";

/// Which step of an attempt failed, which decides how unsure its end is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// The create (or the whole attempt): if it may have created the message,
    /// the next attempt waits `lookup_delay` and looks it up first.
    Create,
    /// The lookup of an earlier attempt's message: it stays maybe sent.
    Lookup,
}

/// What the worker shares with the rest of the process: the store wakes it
/// through `wake`, and `/hc` reads `state`.
#[derive(Clone, Default)]
pub struct WorkerLink {
    /// Wakes the worker at once when a new job is committed.
    pub wake: Arc<Notify>,
    /// The worker's phase, for `/hc`.
    pub state: Arc<WorkerState>,
}

/// The delivery worker: see the module's documentation.
pub struct Worker {
    store: SharedStore,
    client: ChatwootClient,
    policy: Policy,
    link: WorkerLink,
    owner: String,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    pause: Pause,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// A worker under a fresh owner name, so its leases are told apart from other instances'.
    pub fn new(
        store: SharedStore,
        client: ChatwootClient,
        policy: Policy,
        link: WorkerLink,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limiter = NonZeroU32::new(policy.send_rate)
            .map(|rate| Arc::new(RateLimiter::direct(Quota::per_second(rate))));
        Self {
            store,
            client,
            policy,
            link,
            owner: format!("goldrelay-{}", uuid::Uuid::new_v4()),
            limiter,
            pause: Pause::default(),
            metrics,
        }
    }

    /// Runs until `shutdown` fires, then lets in-flight attempts finish within
    /// the drain period and hands back whatever is still leased.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.policy.concurrency));
        let mut tasks = JoinSet::new();
        this.link.state.set(WorkerPhase::Running);
        tokio::spawn(this.clone().read_channel_statuses(shutdown.clone()));
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let wait = this.claim_and_spawn(&slots, &mut tasks).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = this.link.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        this.drain(tasks).await;
    }

    /// Claims as many due jobs as there are free slots; returns how long to wait.
    async fn claim_and_spawn(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
    ) -> Duration {
        let free = slots.available_permits();
        // With deliveries in flight, claim only once a quarter of the slots
        // are free: a claim is a write (on PostgreSQL one round trip and one
        // WAL flush), so one claim then serves several deliveries instead of
        // each finished delivery paying for the next one's claim. With nothing
        // in flight every free slot is claimed at once, so an idle queue's
        // latency is unchanged.
        let group = self.policy.concurrency.div_ceil(4);
        if free == 0 || (free < group && !tasks.is_empty()) {
            return MAX_IDLE;
        }
        let claimed = self
            .store
            .claim(&self.owner, Utc::now(), self.policy.lease, free)
            .await;
        let jobs = match claimed {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "could not claim delivery jobs; pausing");
                self.link.state.set(WorkerPhase::StoreFailing);
                return STORE_RETRY;
            }
        };
        self.link.state.set(WorkerPhase::Running);
        let full = jobs.len() == free;
        for job in jobs {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let this = self.clone();
            tasks.spawn(async move {
                this.deliver(job).await;
                drop(permit);
            });
        }
        if full {
            return MAX_IDLE;
        }
        self.idle_wait().await
    }

    async fn idle_wait(&self) -> Duration {
        match self.store.next_due().await {
            Ok(Some(at)) => (at - Utc::now())
                .to_std()
                .unwrap_or(Duration::from_millis(5))
                .clamp(Duration::from_millis(5), MAX_IDLE),
            Ok(None) => MAX_IDLE,
            Err(_) => STORE_RETRY,
        }
    }

    async fn drain(&self, mut tasks: JoinSet<()>) {
        let finished = tokio::time::timeout(self.policy.drain, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                in_flight = tasks.len(),
                "drain period over; abandoning in-flight attempts"
            );
            tasks.shutdown().await;
        }
        if let Err(e) = self.store.release_all(&self.owner).await {
            tracing::warn!(error = %e, "could not release leases; they expire on their own");
        }
        self.link.state.set(WorkerPhase::Stopped);
    }

    async fn deliver(&self, job: Job) {
        let (outcome, chatwoot_status) = self.outcome_of(&job).await;
        self.observe(&job, &outcome, chatwoot_status);
        let now = Utc::now();
        // A few quiet tries, then one log line: an outcome that cannot be
        // recorded must not hold a delivery slot or fill the log. Losing it is
        // safe: the job was marked maybe-sent when claimed, so once its lease
        // runs out the next claim looks in the conversation before sending.
        let mut delay = STORE_RETRY;
        for tries_left in (0..RECORD_TRIES).rev() {
            let recorded = self
                .store
                .finish(&job.reply_id, &self.owner, outcome.clone(), now)
                .await;
            match recorded {
                Ok(()) => return,
                Err(e) if tries_left == 0 => {
                    tracing::error!(reply_id = %job.reply_id, error = %e,
                        "could not record a delivery outcome; the job is left to its lease and looked up before any resend");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// One attempt within its deadline. A panic inside it becomes a retry
    /// (maybe sent), so the job is released and its conversation moves on.
    async fn outcome_of(&self, job: &Job) -> (Outcome, Option<u16>) {
        // An attempt never outlives its lease: past it, another instance may
        // claim the job, and two senders could both create the message.
        let deadline = self.policy.lease.saturating_sub(LEASE_MARGIN);
        let failed = |detail: String| SendError::Transient {
            status: None,
            retry_after: None,
            maybe_created: true,
            detail,
        };
        match caught(tokio::time::timeout(deadline, self.attempt(job))).await {
            Ok(Ok(attempted)) => attempted,
            Ok(Err(_)) => {
                let overran = failed(format!(
                    "the attempt took longer than {} (its lease); it is looked up before any resend",
                    humantime::format_duration(deadline)
                ));
                (self.retry_or_give_up(job, overran, Step::Create), None)
            }
            Err(panic) => {
                tracing::error!(reply_id = %job.reply_id, panic = %panic,
                    "a delivery attempt panicked; its job is released for a later attempt");
                let error = failed(format!("the delivery attempt failed unexpectedly: {panic}"));
                (self.retry_or_give_up(job, error, Step::Create), None)
            }
        }
    }

    /// One attempt, and the HTTP status Chatwoot answered with, if it answered.
    async fn attempt(&self, job: &Job) -> (Outcome, Option<u16>) {
        if job.maybe_sent {
            if let Some(ended) = self.check_earlier(job).await {
                return ended;
            }
        }
        self.pace().await;
        let sent = self
            .client
            .create_message(
                job.account_id,
                job.conversation_id,
                job.reply_id.as_str(),
                &crate::chatwoot::as_sent(&job.content, job.liquid),
                job.private,
            )
            .await;
        match sent {
            Ok(message_id) => {
                self.pause.cleared();
                (Outcome::Delivered { message_id }, Some(200))
            }
            Err(e @ SendError::Permanent { .. }) => {
                let status = e.status();
                (
                    // Refused for good, and any earlier attempt was looked
                    // up and found absent: nothing was sent.
                    Outcome::Dead {
                        error: e.detail().to_owned(),
                        maybe_sent: false,
                    },
                    status,
                )
            }
            Err(transient) => {
                self.note_throttle(&transient);
                let status = transient.status();
                (self.retry_or_give_up(job, transient, Step::Create), status)
            }
        }
    }

    /// Looks for the message an earlier attempt may have created; `None`
    /// when it surely does not exist, so this attempt may send it.
    async fn check_earlier(&self, job: &Job) -> Option<(Outcome, Option<u16>)> {
        match self.look_up(job).await {
            Ok(Lookup::Found(message_id)) => Some((Outcome::Delivered { message_id }, Some(200))),
            Ok(Lookup::Absent) => None,
            Ok(Lookup::Uncertain(detail)) => {
                let unsure = SendError::Transient {
                    status: None,
                    retry_after: None,
                    maybe_created: true,
                    detail,
                };
                Some((self.retry_or_give_up(job, unsure, Step::Lookup), Some(200)))
            }
            Err(e @ SendError::Permanent { .. }) => {
                let error = format!(
                    "delivery uncertain: an earlier attempt may have created the message, and checking failed ({}); \
                     not sent again to avoid a duplicate: look in the conversation and retry the reply if it is missing",
                    e.detail()
                );
                let outcome = Outcome::Dead {
                    error,
                    maybe_sent: true,
                };
                Some((outcome, e.status()))
            }
            Err(transient) => {
                self.note_throttle(&transient);
                let status = transient.status();
                Some((self.retry_or_give_up(job, transient, Step::Lookup), status))
            }
        }
    }

    async fn look_up(&self, job: &Job) -> Result<Lookup, SendError> {
        self.client
            .find_reply(
                job.account_id,
                job.conversation_id,
                job.reply_id.as_str(),
                job.accepted_at,
                || self.pace(),
            )
            .await
    }

    /// Waits out the shared pause, then the send rate: before every request.
    /// Where the store serves several instances (PostgreSQL), the rate and
    /// any pause are the whole deployment's; otherwise this process's own.
    async fn pace(&self) {
        while let Some(wait) = self.pause.remaining() {
            tokio::time::sleep(wait).await;
        }
        let Some(limiter) = &self.limiter else {
            return;
        };
        match self
            .store
            .reserve_send(self.policy.send_rate, Utc::now())
            .await
        {
            Ok(Some(slot)) => {
                if let Ok(wait) = (slot - Utc::now()).to_std() {
                    tokio::time::sleep(wait).await;
                }
            }
            Ok(None) => limiter.until_ready().await,
            Err(e) => {
                tracing::warn!(error = %e, "could not reserve a shared send slot; pacing this instance alone");
                limiter.until_ready().await;
            }
        }
    }

    /// A 429 pauses every request of the worker, not just this reply's.
    fn note_throttle(&self, error: &SendError) {
        if let SendError::Transient {
            status: Some(429),
            retry_after,
            ..
        } = error
        {
            let p = &self.policy;
            let wait = self
                .pause
                .throttled(*retry_after, p.retry_base, p.retry_max);
            tracing::warn!(pause = %humantime::format_duration(wait), "Chatwoot throttles; every request waits");
            // rack-attack counts per client IP, which instances usually share.
            let until = chrono::Duration::from_std(wait)
                .ok()
                .and_then(|wait| Utc::now().checked_add_signed(wait));
            if let Some(until) = until {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.pause_sends(until).await {
                        tracing::warn!(error = %e, "could not pause the other instances' sends");
                    }
                });
            }
        }
    }

    /// Retries a transient failure, or gives up on it: at the attempt limit,
    /// or when the wait would take the reply past its maximum age.
    fn retry_or_give_up(&self, job: &Job, error: SendError, step: Step) -> Outcome {
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
        let p = &self.policy;
        let attempt = u32::try_from(job.attempt).unwrap_or(u32::MAX);
        if attempt >= p.max_attempts {
            return Outcome::Dead {
                error: format!("gave up after {attempt} attempts: {detail}{unsure}"),
                maybe_sent: dead_maybe_sent,
            };
        }
        // A create Chatwoot may still be committing gets time to land before the lookup.
        let floor = if maybe_created && step == Step::Create {
            p.lookup_delay
        } else {
            Duration::ZERO
        };
        let asked = retry_after.unwrap_or_default();
        let delay = backoff(attempt, p.retry_base, p.retry_max, rand::random())
            .max(asked)
            .max(floor);
        let Some(at) = self.due_at(job, delay) else {
            let why = if asked >= delay {
                format!(
                    " (Chatwoot asked to wait {} with Retry-After)",
                    humantime::format_duration(asked)
                )
            } else {
                String::new()
            };
            let max_age = humantime::format_duration(p.max_age);
            return Outcome::Dead {
                error: format!(
                    "gave up: the reply would be older than {max_age} at its next attempt{why}: {detail}{unsure}"
                ),
                maybe_sent: dead_maybe_sent,
            };
        };
        Outcome::Retry {
            at,
            error: detail,
            maybe_sent,
        }
    }

    /// When the next attempt is due after `delay`, unless that is past the
    /// reply's maximum age (or past any representable time).
    fn due_at(&self, job: &Job, delay: Duration) -> Option<DateTime<Utc>> {
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))?;
        (elapsed(job.received_at, at) <= self.policy.max_age).then_some(at)
    }

    /// One log line and the metrics for one attempt.
    fn observe(&self, job: &Job, outcome: &Outcome, chatwoot_status: Option<u16>) {
        let (reply_id, conversation_id, attempt) =
            (job.reply_id.as_str(), job.conversation_id, job.attempt);
        match outcome {
            Outcome::Delivered { message_id } => {
                self.metrics.attempt("delivered");
                self.metrics
                    .delivered_after(elapsed(job.received_at, Utc::now()));
                tracing::info!(
                    reply_id,
                    conversation_id,
                    attempt,
                    outcome = "delivered",
                    chatwoot_status,
                    chatwoot_message_id = message_id,
                    "delivery attempt"
                )
            }
            Outcome::Retry { at, error, .. } => {
                self.metrics.attempt("retry");
                tracing::warn!(
                    reply_id, conversation_id, attempt, outcome = "retry", chatwoot_status,
                    next_attempt_at = %at.to_rfc3339(), error = %error, "delivery attempt"
                )
            }
            Outcome::Dead { error, .. } => {
                self.metrics.attempt("dead");
                tracing::error!(
                    reply_id, conversation_id, attempt, outcome = "dead", chatwoot_status,
                    error = %error, "delivery attempt"
                )
            }
        }
    }
}

fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn a_panic_is_caught_with_its_message() {
        let ok = caught(async { 7 }).await;
        assert_eq!(ok, Ok(7));
        let boom = caught(async { panic!("boom {}", 1) }).await;
        assert_eq!(boom, Err::<(), _>("boom 1".to_owned()));
    }

    #[test]
    fn throttles_in_a_row_double_the_pause_until_a_request_goes_through() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let pause = Pause::default();
        assert_eq!(pause.remaining(), None);
        assert_eq!(pause.throttled(None, base, max), base);
        assert_eq!(pause.throttled(None, base, max), base * 2);
        assert_eq!(pause.throttled(None, base, max), base * 4);
        assert!(pause.remaining().is_some_and(|left| left > base * 3));
        pause.cleared();
        assert_eq!(pause.throttled(None, base, max), base);
    }

    #[test]
    fn a_named_wait_sets_the_pause_but_never_beyond_the_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let pause = Pause::default();
        let asked = Some(Duration::from_millis(300));
        assert_eq!(
            pause.throttled(asked, base, max),
            Duration::from_millis(300)
        );
        let huge = Some(crate::chatwoot::RETRY_AFTER_CAP);
        assert_eq!(pause.throttled(huge, base, max), max);
        assert!(pause.remaining().is_some_and(|left| left <= max));
    }
}
