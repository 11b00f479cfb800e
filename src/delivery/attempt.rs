//! One delivery attempt: the lookup an earlier create calls for, the create, and the record of its outcome.

use super::{caught, retry_or_give_up, unsent, Step, Worker, RECORD_TRIES, STORE_RETRY};
use crate::chatwoot::{Lookup, SendError, Wanted};
use crate::store::{Job, Outcome};
use crate::telemetry::{self, TARGET};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;

impl Worker {
    /// One attempt, in a span of the reply's trace, through the commit of its outcome.
    pub(super) async fn deliver(&self, job: Job) {
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
                &job.reply_id,
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
                let refused = error.proven_not_created();
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
            reply_id: &job.reply_id,
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
