//! The delivery worker: claims due jobs, sends them to Chatwoot, records the outcome.
//!
//! Order per conversation comes from the store, which only ever hands out a
//! conversation's oldest job. Concurrency across conversations is bounded by
//! `concurrency`, and every Chatwoot request passes one shared rate limiter
//! and one shared pause (set when Chatwoot throttles).
//!
//! Exactly once: an attempt that may have created the message (a timeout, a
//! reset, a 5xx) is "maybe sent"; no lookup runs sooner than `lookup_delay`
//! after the last create left (a crash or a lost outcome included: the claim
//! itself sets the job due no sooner than that), so a create Chatwoot commits
//! late has landed, and the next attempt starts by looking the message up. A
//! 422 is looked up at once, since Chatwoot answered after its transaction. A
//! lookup that cannot conclude never leads to a send. See `docs/delivery.md`.

mod attempt;
mod channel;
mod context;
mod pace;
mod pause;
mod rules;

pub use pause::{Pause, TOKEN_RECHECK};
pub use rules::{
    abandoned, after_failure, backoff, look_after, retry_or_give_up, unsent, Policy, Step,
};
use rules::{elapsed, span};

use crate::chatwoot::{ChatwootClient, SendError};
use crate::domain::{OwnUser, ReplyId};
use crate::health::{WorkerPhase, WorkerState};
use crate::metrics::Metrics;
use crate::store::{Job, Outcome, SharedStore};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The longest the worker sleeps without looking at the queue, so jobs whose
/// lease ran out on another instance are picked up.
const MAX_IDLE: Duration = Duration::from_secs(2);
/// The wait after the store failed, before trying again.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// How often an attempt's outcome is offered to the store before it is left
/// to the job's lease (0.5 + 1 + 2 s of waiting).
const RECORD_TRIES: u32 = 4;
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

/// What the worker shares with the rest of the process: the store wakes it
/// through `wake`, and `/hc` reads `state`.
#[derive(Clone, Default)]
pub struct WorkerLink {
    /// Wakes the worker at once when a new job is committed.
    pub wake: Arc<Notify>,
    /// The worker's phase, for `/hc`.
    pub state: Arc<WorkerState>,
}

/// An attempt in progress: its job, and when its create request left, if it did.
struct Flight {
    job: Job,
    sent_at: Option<DateTime<Utc>>,
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
    /// Every attempt in progress, so a drain that abandons one knows whether
    /// its create left, and when.
    flights: Mutex<HashMap<ReplyId, Flight>>,
    /// Turns captured per reply posted without context; 0 is off (`context`).
    capture_turns: usize,
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
            flights: Mutex::default(),
            capture_turns: 0,
        }
    }

    /// Reads goldrelay's own Chatwoot user once, so webhook echoes are taken
    /// for ours only when that user sent them. A token that cannot read its
    /// profile (an agent bot) leaves echoes judged by their marker alone.
    /// `asked` hears once, after the first answer (or failure).
    async fn learn_who_we_are(
        self: Arc<Self>,
        stop: CancellationToken,
        asked: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut asked = Some(asked);
        while !stop.is_cancelled() {
            let answer = self.client.me().await;
            match answer {
                Ok(id) => self.link.state.set_chatwoot_user(OwnUser::Is(id)),
                Err(ref e @ SendError::Permanent { .. }) => {
                    tracing::warn!(error = %e.detail(), "could not read goldrelay's Chatwoot profile; webhook echoes are matched by their marker alone");
                    self.link.state.set_chatwoot_user(OwnUser::Unknowable);
                }
                Err(_) => {}
            }
            if let Some(asked) = asked.take() {
                let _ = asked.send(());
            }
            if !matches!(
                answer,
                Err(SendError::Transient { .. } | SendError::TokenRefused { .. })
            ) {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The time by the store's clock, which every instance shares.
    fn now(&self) -> DateTime<Utc> {
        self.store.now()
    }

    /// Runs until `shutdown` fires, then lets in-flight attempts finish within
    /// the drain period and hands back whatever is still leased.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.policy.concurrency));
        let mut tasks = JoinSet::new();
        // Who goldrelay is in Chatwoot is asked once before the first create,
        // so the echo of that create can already be told from an impostor's;
        // if Chatwoot does not answer, delivery starts anyway (an echo is then
        // unverified, never taken on its marker alone).
        let (asked, first_answer) = tokio::sync::oneshot::channel();
        tokio::spawn(this.clone().learn_who_we_are(shutdown.clone(), asked));
        let _ = tokio::time::timeout(this.policy.deadline(), first_answer).await;
        this.link.state.set(WorkerPhase::Running);
        tokio::spawn(this.clone().read_channel_statuses(shutdown.clone()));
        tokio::spawn(this.clone().capture_contexts(shutdown.clone()));
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let wait = this.claim_and_spawn(&slots, &mut tasks).await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = this.link.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = tokio::time::sleep(wait) => {}
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
        if let Some(paused) = self.pause.remaining() {
            // Nothing could be sent before the pause ends anyway.
            return paused.min(MAX_IDLE);
        }
        let p = &self.policy;
        let claimed = self
            .store
            .claim(&self.owner, self.now(), p.lease, p.look_after(), free)
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
            // Known from the claim on, so a drain can hand it back even if
            // its task never ran.
            let flight = Flight {
                job: job.clone(),
                sent_at: None,
            };
            self.flights().insert(job.reply_id.clone(), flight);
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
            Ok(Some(at)) => (at - self.now())
                .to_std()
                .unwrap_or(Duration::from_millis(5))
                .clamp(Duration::from_millis(5), MAX_IDLE),
            Ok(None) => MAX_IDLE,
            Err(_) => STORE_RETRY,
        }
    }

    /// Waits out the drain period, then records what it knows of every
    /// attempt it abandons (the leases then end by themselves): one whose create left is due again only
    /// `lookup_delay` after that create (and looks first); one that sent
    /// nothing goes back as it was. Rails finishes a create after the client
    /// hung up, so the next process must not look sooner.
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
        let abandoned: Vec<Flight> = self.flights().drain().map(|(_, f)| f).collect();
        for flight in abandoned {
            let outcome = abandoned_outcome(&flight, &self.policy, self.now());
            if let Err(e) = self
                .store
                .finish(&flight.job.reply_id, &self.owner, outcome, self.now())
                .await
            {
                tracing::warn!(reply_id = %flight.job.reply_id, error = %e,
                    "could not record an abandoned attempt; its job waits out its claim");
            }
        }
        self.link.state.set(WorkerPhase::Stopped);
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<ReplyId, Flight>> {
        self.flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes, before the request leaves, that this attempt's create is going out.
    fn create_leaves(&self, job: &Job) {
        let now = self.now();
        if let Some(flight) = self.flights().get_mut(&job.reply_id) {
            flight.sent_at = Some(now);
        }
    }

    fn sent_at(&self, job: &Job) -> Option<DateTime<Utc>> {
        self.flights().get(&job.reply_id).and_then(|f| f.sent_at)
    }

    /// What a failed step makes of the job ([`after_failure`]), once any
    /// pause it calls for is in force.
    fn failed(&self, job: &Job, error: SendError, step: Step) -> Outcome {
        self.note_refusal(&error);
        let paused = self.pause.remaining();
        after_failure(
            job,
            error,
            step,
            paused,
            &self.policy,
            self.now(),
            rand::random(),
        )
    }

    /// One log line and the metrics for one attempt.
    fn observe(&self, job: &Job, outcome: &Outcome, chatwoot_status: Option<u16>) {
        let (reply_id, conversation_id, attempt) =
            (job.reply_id.as_str(), job.conversation_id, job.attempt);
        match outcome {
            Outcome::Delivered { message_id } => {
                self.metrics.attempt("delivered");
                self.metrics
                    .delivered_after(elapsed(job.received_at, self.now()));
                tracing::info!(
                    reply_id,
                    conversation_id,
                    attempt,
                    outcome = "delivered",
                    chatwoot_status,
                    chatwoot_message_id = message_id,
                    "delivery attempt"
                );
            }
            Outcome::Retry { at, error, .. } => {
                self.metrics.attempt("retry");
                tracing::warn!(
                    reply_id, conversation_id, attempt, outcome = "retry", chatwoot_status,
                    next_attempt_at = %at.to_rfc3339(), error = %error, "delivery attempt"
                );
            }
            Outcome::Unsent { at, why, .. } => {
                self.metrics.attempt("unsent");
                tracing::info!(
                    reply_id, conversation_id, outcome = "unsent", chatwoot_status,
                    next_attempt_at = %at.to_rfc3339(), why = why.as_deref().unwrap_or(""),
                    "delivery attempt sent nothing"
                );
            }
            Outcome::Dead { error, .. } => {
                self.metrics.attempt("dead");
                tracing::error!(
                    reply_id, conversation_id, attempt, outcome = "dead", chatwoot_status,
                    error = %error, "delivery attempt"
                );
            }
        }
    }
}

/// What a drain records for an attempt it abandons.
fn abandoned_outcome(flight: &Flight, policy: &Policy, now: DateTime<Utc>) -> Outcome {
    abandoned(&flight.job, flight.sent_at, policy, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_caught_with_its_message() {
        let ok = caught(async { 7 }).await;
        assert_eq!(ok, Ok(7));
        let boom = caught(async { panic!("boom {}", 1) }).await;
        assert_eq!(boom, Err::<(), _>("boom 1".to_owned()));
    }
}
