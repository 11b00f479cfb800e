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

mod channel;
mod context;
mod pause;
mod rules;

pub use pause::{Pause, TOKEN_RECHECK};
pub use rules::{abandoned, after_failure, backoff, retry_or_give_up, unsent, Policy, Step};
use rules::{elapsed, span};

use crate::chatwoot::{ChatwootClient, Lookup, SendError, Wanted};
use crate::domain::{OwnUser, ReplyId};
use crate::health::{WorkerPhase, WorkerState};
use crate::metrics::Metrics;
use crate::store::{Job, Outcome, SendSlot, SharedStore};
use crate::telemetry::{self, TARGET};
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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

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
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
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
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
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

    /// One attempt, in a span of the reply's trace, through the commit of its outcome.
    async fn deliver(&self, job: Job) {
        let span = attempt_span(&job);
        self.attempt_and_record(job).instrument(span).await;
    }

    async fn attempt_and_record(&self, job: Job) {
        let (outcome, chatwoot_status) = self.outcome_of(&job).await;
        self.observe(&job, &outcome, chatwoot_status);
        traced_outcome(&outcome, chatwoot_status);
        let now = self.now();
        // A few quiet tries, then one log line: an outcome that cannot be
        // recorded must not hold a delivery slot or fill the log. Losing it is
        // safe: the claim marked the job maybe-sent and due again only after
        // the lease and the lookup delay, so the next claim looks in the
        // conversation, late enough, before sending.
        let mut delay = STORE_RETRY;
        for tries_left in (0..RECORD_TRIES).rev() {
            let recorded = self
                .store
                .finish(&job.reply_id, &self.owner, outcome.clone(), now)
                .await;
            match recorded {
                Ok(()) => break,
                Err(e) if tries_left == 0 => {
                    tracing::error!(reply_id = %job.reply_id, error = %e,
                        "could not record a delivery outcome; the job is left to its claim and looked up before any resend");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        self.flights().remove(&job.reply_id);
    }

    /// One attempt within its deadline. A panic inside it becomes a retry
    /// (maybe sent, if its create had left), so the job is released and its
    /// conversation moves on.
    async fn outcome_of(&self, job: &Job) -> (Outcome, Option<u16>) {
        // An attempt never outlives its lease: past it, another instance may
        // claim the job, and two senders could both create the message.
        let deadline = self.policy.deadline();
        let cut_off = |detail: String| -> Outcome {
            let now = self.now();
            match self.sent_at(job) {
                // Waiting for a send slot or a lookup is not a create: the job
                // goes back as it was.
                None => unsent(job, now, detail, &self.policy),
                Some(_) => {
                    let failed = SendError::Transient {
                        status: None,
                        retry_after: None,
                        maybe_created: true,
                        detail,
                    };
                    retry_or_give_up(job, failed, Step::Create, &self.policy, now, rand::random())
                }
            }
        };
        match caught(tokio::time::timeout(deadline, self.attempt(job))).await {
            Ok(Ok(attempted)) => attempted,
            Ok(Err(_)) => {
                let detail = format!(
                    "the attempt took longer than {} (its lease); it is looked up before any resend",
                    humantime::format_duration(deadline)
                );
                (cut_off(detail), None)
            }
            Err(panic) => {
                tracing::error!(reply_id = %job.reply_id, panic = %panic,
                    "a delivery attempt panicked; its job is released for a later attempt");
                (
                    cut_off(format!("the delivery attempt failed unexpectedly: {panic}")),
                    None,
                )
            }
        }
    }

    /// One attempt, and the HTTP status Chatwoot answered with, if it answered.
    async fn attempt(&self, job: &Job) -> (Outcome, Option<u16>) {
        if job.maybe_sent && !self.policy.idempotent_creates {
            if let Some(ended) = self.check_earlier(job).await {
                return ended;
            }
        }
        // A create starts only while a third of the deadline is left for it.
        let latest = Instant::now() + self.policy.deadline() * 2 / 3;
        let waited = self
            .pace_until(Some(latest))
            .instrument(tracing::info_span!(target: TARGET, "send_slot.wait"))
            .await;
        if let Err(slot) = waited {
            let why = "no send slot was free in time; nothing was sent".to_owned();
            return (unsent(job, slot, why, &self.policy), None);
        }
        self.create_leaves(job);
        let create = tracing::info_span!(
            target: TARGET,
            "chatwoot.create_message",
            otel.kind = "client",
            http.request.method = "POST",
            http.response.status_code = Empty,
        );
        let sent = self
            .client
            .create_message(
                job.account_id,
                job.conversation_id,
                job.reply_id.as_str(),
                &crate::chatwoot::as_sent(&job.content, job.liquid),
                job.private,
            )
            .instrument(create.clone())
            .await;
        create.record(
            "http.response.status_code",
            sent.as_ref()
                .map_or_else(SendError::status, |_| Some(200))
                .map(i64::from),
        );
        match sent {
            Ok(message_id) => {
                self.went_through();
                (Outcome::Delivered { message_id }, Some(200))
            }
            Err(e) if e.status() == Some(422) && !is_flood_guard(&e) => {
                (self.after_unprocessable(job, e).await, Some(422))
            }
            Err(e) => {
                let status = e.status();
                (self.failed(job, e, Step::Create), status)
            }
        }
    }

    /// A 422 came after Chatwoot's transaction (`create` rescues into it, and
    /// Enterprise's `conversation.open!` can raise `RecordInvalid` after the
    /// message was saved: `enterprise/app/models/enterprise/message.rb`), so
    /// the message is looked up at once before anything else is decided.
    async fn after_unprocessable(&self, job: &Job, error: SendError) -> Outcome {
        match self.look_up(job).await {
            Ok(Lookup::Found(message_id)) => {
                tracing::warn!(reply_id = %job.reply_id, message_id, error = %error.detail(),
                    "Chatwoot answered 422 but the message exists; recorded as delivered");
                Outcome::Delivered { message_id }
            }
            Ok(Lookup::Absent) => {
                let refused = match error {
                    SendError::Transient {
                        status,
                        retry_after,
                        detail,
                        ..
                    } => SendError::Transient {
                        status,
                        retry_after,
                        maybe_created: false,
                        detail,
                    },
                    other => other,
                };
                // Proven absent: whatever was refused sent nothing.
                let job = Job {
                    maybe_sent: false,
                    ..job.clone()
                };
                self.failed(&job, refused, Step::Create)
            }
            Ok(Lookup::Uncertain(detail)) => {
                let unsure = SendError::Transient {
                    status: Some(422),
                    retry_after: None,
                    maybe_created: true,
                    detail: format!("{}; then {detail}", error.detail()),
                };
                self.failed(job, unsure, Step::Lookup)
            }
            Err(e) => self.failed(job, e, Step::Lookup),
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
                Some((self.failed(job, unsure, Step::Lookup), Some(200)))
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
            Err(e) => {
                let status = e.status();
                Some((self.failed(job, e, Step::Lookup), status))
            }
        }
    }

    /// Searches the conversation above the highest message id goldrelay knew
    /// there before the reply was accepted; counts and logs any message that
    /// carries the reply's marker without being goldrelay's.
    async fn look_up(&self, job: &Job) -> Result<Lookup, SendError> {
        let span = tracing::info_span!(
            target: TARGET,
            "chatwoot.lookup",
            otel.kind = "client",
            goldrelay.lookup = Empty,
        );
        let found = self.search(job).instrument(span.clone()).await;
        let said = match &found {
            Ok(Lookup::Found(_)) => "found",
            Ok(Lookup::Absent) => "absent",
            Ok(Lookup::Uncertain(_)) => "uncertain",
            Err(_) => "failed",
        };
        span.record("goldrelay.lookup", said);
        found
    }

    async fn search(&self, job: &Job) -> Result<Lookup, SendError> {
        let floor = self
            .store
            .message_floor(job.account_id, job.conversation_id, job.accepted_at)
            .await
            .unwrap_or(0);
        let wanted = Wanted {
            reply_id: job.reply_id.as_str(),
            content: (!job.liquid).then_some(job.content.as_str()),
            floor,
        };
        let search = self
            .client
            .find_reply(job.account_id, job.conversation_id, &wanted, || self.pace())
            .await
            .inspect_err(|e| self.note_refusal(e))?;
        self.went_through();
        for message_id in &search.impostors {
            self.metrics.mismatch();
            tracing::warn!(reply_id = %job.reply_id, message_id,
                "a message carries this reply's marker but is not goldrelay's (another sender or other content); ignored");
        }
        Ok(search.lookup)
    }

    /// Waits out the shared pause, then the send rate: before every request.
    pub(super) async fn pace(&self) {
        let _ = self.pace_until(None).await;
    }

    /// [`Worker::pace`], giving up when no slot starts by `latest`: then the
    /// time the slot would have come, by the store's clock. Where the store
    /// serves several instances (PostgreSQL), the rate and any pause are the
    /// whole deployment's; otherwise this process's own.
    async fn pace_until(&self, latest: Option<Instant>) -> Result<(), DateTime<Utc>> {
        let too_late = |wait: Duration| {
            let at = Instant::now() + wait;
            latest.filter(|l| at > *l).map(|_| self.now() + span(wait))
        };
        while let Some(wait) = self.pause.remaining() {
            if let Some(at) = too_late(wait) {
                return Err(at);
            }
            tokio::time::sleep(wait).await;
        }
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let latest_at =
            latest.map(|l| self.now() + span(l.saturating_duration_since(Instant::now())));
        let reserved = self
            .store
            .reserve_send(self.policy.send_rate, self.now(), latest_at)
            .await;
        match reserved {
            Ok(Some(SendSlot::Reserved(slot))) => {
                let wait = (slot - self.now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Ok(Some(SendSlot::NotBefore(slot))) => Err(slot),
            Ok(None) => self.local_slot(limiter, latest).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not reserve a shared send slot; pacing this instance alone");
                self.local_slot(limiter, latest).await
            }
        }
    }

    async fn local_slot(
        &self,
        limiter: &DefaultDirectRateLimiter,
        latest: Option<Instant>,
    ) -> Result<(), DateTime<Utc>> {
        let Some(latest) = latest else {
            limiter.until_ready().await;
            return Ok(());
        };
        let left = latest.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, limiter.until_ready())
            .await
            .map_err(|_| self.now())
    }

    /// A request went through: any pause is over.
    fn went_through(&self) {
        if let Some(reason) = self.pause.cleared() {
            self.metrics.paused(reason, false);
            self.link.state.set_paused(None);
            tracing::info!(?reason, "Chatwoot answers again; deliveries resume");
        }
    }

    /// A 429 or a refused token pauses every request of the worker, not just
    /// this reply's.
    fn note_refusal(&self, error: &SendError) {
        let wait = match error {
            SendError::Transient {
                status: Some(429),
                retry_after,
                ..
            } => {
                let unix = u64::try_from(self.now().timestamp()).unwrap_or_default();
                let wait = self
                    .pause
                    .throttled(*retry_after, unix, self.policy.retry_max);
                tracing::warn!(pause = %humantime::format_duration(wait), "Chatwoot throttles; every request waits");
                self.share_pause(wait);
                wait
            }
            SendError::TokenRefused { detail } => {
                let wait = self
                    .pause
                    .token_refused(TOKEN_RECHECK.min(self.policy.retry_max));
                tracing::error!(error = %detail, retry_in = %humantime::format_duration(wait),
                    "Chatwoot refuses goldrelay's API token; deliveries are paused until it is accepted again");
                wait
            }
            _ => return,
        };
        if let Some(reason) = self.pause.reason() {
            self.metrics.paused(reason, true);
            self.link.state.set_paused(Some(reason));
        }
        let _ = wait;
    }

    /// rack-attack counts per client IP, which instances usually share.
    fn share_pause(&self, wait: Duration) {
        let until = self.now().checked_add_signed(span(wait));
        if let Some(until) = until {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.pause_sends(until).await {
                    tracing::warn!(error = %e, "could not pause the other instances' sends");
                }
            });
        }
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
                )
            }
            Outcome::Retry { at, error, .. } => {
                self.metrics.attempt("retry");
                tracing::warn!(
                    reply_id, conversation_id, attempt, outcome = "retry", chatwoot_status,
                    next_attempt_at = %at.to_rfc3339(), error = %error, "delivery attempt"
                )
            }
            Outcome::Unsent { at, why, .. } => {
                self.metrics.attempt("unsent");
                tracing::info!(
                    reply_id, conversation_id, outcome = "unsent", chatwoot_status,
                    next_attempt_at = %at.to_rfc3339(), why = why.as_deref().unwrap_or(""),
                    "delivery attempt sent nothing"
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

/// An attempt's span, in the trace stored with its reply: ids and counts only.
fn attempt_span(job: &Job) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "delivery.attempt",
        goldrelay.reply_id = job.reply_id.as_str(),
        goldrelay.account_id = job.account_id,
        goldrelay.conversation_id = job.conversation_id,
        goldrelay.attempt = job.attempt,
        goldrelay.maybe_sent = job.maybe_sent,
        goldrelay.outcome = Empty,
        goldrelay.chatwoot_message_id = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    telemetry::join(&span, job.trace_context.as_deref());
    span
}

/// Marks the current attempt span with how it ended (never the error's text,
/// which may quote Chatwoot's answer).
fn traced_outcome(outcome: &Outcome, chatwoot_status: Option<u16>) {
    let span = tracing::Span::current();
    let (name, failed) = match outcome {
        Outcome::Delivered { message_id } => {
            span.record("goldrelay.chatwoot_message_id", message_id);
            ("delivered", false)
        }
        Outcome::Retry { .. } => ("retry", true),
        Outcome::Unsent { .. } => ("unsent", false),
        Outcome::Dead { .. } => ("dead", true),
    };
    span.record("goldrelay.outcome", name);
    // As i64: OpenTelemetry has no unsigned integers, and a u64 is sent as text.
    span.record("http.response.status_code", chatwoot_status.map(i64::from));
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

/// Chatwoot's flood guard refuses before anything is stored: no lookup needed.
fn is_flood_guard(error: &SendError) -> bool {
    matches!(
        error,
        SendError::Transient {
            status: Some(422),
            maybe_created: false,
            ..
        }
    )
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
