//! Context capture: the conversation turns a reply answered, read once from
//! Chatwoot's message list and kept with the reply, for replies Support
//! posted without `context` (`GOLDRELAY_CAPTURE_CONTEXT` turns; 0 is off).
//!
//! Which turns: for a delivered `approve_send`, the messages before its own
//! message (by id, `before=<message id>`); for `approve`, `reject`, and an
//! `approve_send` that never went out, the messages Chatwoot shows that were
//! created no later than the reply's acceptance (the conversation the person
//! judged). Chatwoot pages them 20 at a time, newest page first
//! (`app/finders/message_finder.rb`); private notes, activity messages and
//! deleted messages are left out ([`crate::chatwoot::ChatwootClient::turns_page`]).
//!
//! Behind creates in priority: a capture runs apart from deliveries and
//! reads a page only while no delivery of this instance is in flight, no
//! job is due (on a shared store: no instance's job), no pause holds
//! requests back, and a send slot is free at once; otherwise it hands the
//! reply back uncounted and waits. So a capture never holds up a create for
//! longer than the one slot it may have taken just before the create came due.
//! A failed capture is retried with backoff, alone, and shows on the reply.

use super::{backoff, span, Worker};
use crate::domain::Turn;
use crate::store::{Capture, DueCapture};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for captures when it found none.
const IDLE: Duration = Duration::from_secs(1);
/// The wait after the store failed: captures can wait.
const AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How many replies it claims in one go.
const BATCH: usize = 8;
/// How long a claimed capture is not handed out again unless recorded.
const LEASE: Duration = Duration::from_secs(120);
/// How long a capture waits for a send slot: only one free at once is taken.
const FREE_NOW: Duration = Duration::from_millis(20);
/// Captures of one reply before it is given up on (the error stays on it).
pub const MAX_CAPTURE_ATTEMPTS: i64 = 10;
/// Pages read beyond the ones the turns need, for pages of newer messages
/// (after an `approve` was accepted) and of messages left out.
const EXTRA_PAGES: usize = 10;

/// Why a capture stopped before it read its turns.
enum Stopped {
    /// Deliveries need the send rate: back at `at`, uncounted.
    Yielded(DateTime<Utc>),
    /// Chatwoot failed; `permanent`: retrying cannot help.
    Failed { error: String, permanent: bool },
}

impl Worker {
    /// Capture up to `turns` turns for each reply posted without context; 0 is off.
    pub fn capturing_context(mut self, turns: usize) -> Self {
        self.capture_turns = turns;
        self
    }

    /// Captures due contexts until `stop`.
    pub(super) async fn capture_contexts(self: Arc<Self>, stop: CancellationToken) {
        if self.capture_turns == 0 {
            return;
        }
        while !stop.is_cancelled() {
            let pause = match self.capture_some().await {
                Ok(0) => IDLE,
                Ok(_) => continue,
                Err(wait) => wait,
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Captures one batch: how many were recorded, or how long to wait.
    async fn capture_some(&self) -> Result<usize, Duration> {
        if self.creates_waiting().await {
            return Err(IDLE);
        }
        let claimed = self.store.claim_captures(self.now(), LEASE, BATCH).await;
        let due = claimed.map_err(|e| {
            tracing::warn!(error = %e, "could not list the contexts to capture");
            AFTER_FAILURE
        })?;
        let mut recorded = 0;
        let mut yielded = false;
        for reply in due {
            // Once deliveries need the rate, the rest of the batch waits too.
            let result = if yielded {
                Err(Stopped::Yielded(self.now()))
            } else {
                self.read_turns(&reply).await
            };
            yielded = matches!(result, Err(Stopped::Yielded(_)));
            self.record(&reply, result)
                .await
                .map_err(|()| AFTER_FAILURE)?;
            recorded += usize::from(!yielded);
        }
        if yielded {
            return Err(IDLE.min(FREE_NOW * 10));
        }
        Ok(recorded)
    }

    /// Whether a create of this instance is in flight, a job is due, or
    /// requests are paused: then captures leave the send rate alone.
    async fn creates_waiting(&self) -> bool {
        if !self.flights().is_empty() || self.pause.remaining().is_some() {
            return true;
        }
        match self.store.next_due().await {
            Ok(Some(at)) => at <= self.now(),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Reads the reply's turns, a page at a time, each page behind creates.
    async fn read_turns(&self, reply: &DueCapture) -> Result<Vec<Turn>, Stopped> {
        let want = self.capture_turns;
        // Without its own message, the turns up to the reply's acceptance
        // (Chatwoot's `created_at` is in whole seconds).
        let upto = reply
            .message_id
            .is_none()
            .then(|| reply.accepted_at.timestamp());
        let mut before = reply.message_id;
        let mut kept: Vec<(i64, i64, Turn)> = Vec::new();
        let mut seen = HashSet::new();
        let pages = want.div_ceil(crate::chatwoot::LATEST_PAGE) + EXTRA_PAGES;
        for _ in 0..pages {
            self.behind_creates().await?;
            let page = self
                .client
                .turns_page(reply.account_id, reply.conversation_id, before)
                .await
                .map_err(|e| self.capture_failed(&e))?;
            self.went_through();
            let full = page.len() >= crate::chatwoot::LATEST_PAGE;
            before = page.iter().map(|m| m.id).min();
            for message in page {
                let in_time = upto.is_none_or(|u| message.created_at <= u);
                if let (true, Some(turn)) = (in_time, message.turn) {
                    if seen.insert(message.id) {
                        kept.push((message.created_at, message.id, turn));
                    }
                }
            }
            if kept.len() >= want || !full || before.is_none() {
                break;
            }
        }
        // Chatwoot's own order: by `created_at`, ties by id.
        kept.sort_by_key(|(at, id, _)| (*at, *id));
        let skip = kept.len().saturating_sub(want);
        Ok(kept.into_iter().skip(skip).map(|(_, _, t)| t).collect())
    }

    /// Waits for nothing: goes on only if no create waits and a send slot is
    /// free at once.
    async fn behind_creates(&self) -> Result<(), Stopped> {
        if self.creates_waiting().await {
            return Err(Stopped::Yielded(self.now()));
        }
        let latest = Instant::now() + FREE_NOW;
        self.pace_until(Some(latest))
            .await
            .map_err(Stopped::Yielded)
    }

    fn capture_failed(&self, error: &crate::chatwoot::SendError) -> Stopped {
        // A 429 or a refused token pauses every request, captures included.
        self.note_refusal(error);
        Stopped::Failed {
            error: error.detail().to_owned(),
            permanent: matches!(error, crate::chatwoot::SendError::Permanent { .. }),
        }
    }

    /// Records a capture's end; `Err` when the store failed.
    async fn record(
        &self,
        reply: &DueCapture,
        result: Result<Vec<Turn>, Stopped>,
    ) -> Result<(), ()> {
        let now = self.now();
        let attempt = reply.attempts.saturating_add(1);
        let (capture, outcome) = match &result {
            Ok(turns) => (Capture::Turns { turns, at: now }, "captured"),
            Err(Stopped::Yielded(at)) => (Capture::Later { at: *at }, ""),
            Err(Stopped::Failed { error, permanent }) => {
                let retry_at = (!permanent && attempt < MAX_CAPTURE_ATTEMPTS)
                    .then(|| now + span(self.capture_backoff(attempt)));
                let outcome = if retry_at.is_some() {
                    "retry"
                } else {
                    "failed"
                };
                tracing::warn!(reply_id = %reply.reply_id, attempt, error = %error,
                    retry_at = ?retry_at.map(|t| t.to_rfc3339()),
                    "could not capture a reply's context from Chatwoot");
                (Capture::Failed { error, retry_at }, outcome)
            }
        };
        if let Err(e) = self.store.record_capture(&reply.reply_id, &capture).await {
            tracing::warn!(reply_id = %reply.reply_id, error = %e,
                "could not record a context capture; it is tried again after its lease");
            return Err(());
        }
        if !outcome.is_empty() {
            self.metrics.capture(outcome);
        }
        Ok(())
    }

    /// The wait before capture `attempt + 1`: the delivery backoff, never
    /// less than a second (the capture is not urgent).
    fn capture_backoff(&self, attempt: i64) -> Duration {
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        let base = self.policy.retry_base.max(Duration::from_secs(1));
        let max = self.policy.retry_max.max(base);
        backoff(attempt, base, max, rand::random())
    }
}
