//! Channel statuses that converge on Chatwoot's truth. Chatwoot's message
//! events carry no top-level status, a conversation's payload lists only its
//! latest public message (`app/models/message.rb` `webhook_data`,
//! `app/presenters/conversations/event_data_presenter.rb` `push_messages`),
//! and events come late, out of order, twice or never (`lib/webhooks/trigger.rb`
//! never retries an account webhook). So an event is a hint and the message
//! list is the truth: this loop reads the status of every reply an event
//! marked, and of every delivered reply every `GOLDRELAY_STATUS_RECONCILE`
//! until it is final (`read`) or older than `GOLDRELAY_MAX_AGE`, within the
//! same send rate as deliveries. One failing read backs off alone.

use super::Worker;
use crate::chatwoot::ChannelReport;
use crate::domain::ChannelStatus;
use crate::store::{ChannelRead, DueReads, StaleChannelStatus};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for statuses to read when it found none.
const IDLE: Duration = Duration::from_secs(1);
/// The longest between two looks for delivered replies never read.
const SWEEP_AT_MOST: Duration = Duration::from_secs(30);
/// How many it reads in one go.
const BATCH: usize = 16;
/// The wait after the store failed: statuses can wait.
const AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How long one reply's status waits after its read failed (a deleted
/// conversation answers 404, a token that lost the inbox 401): that reply
/// alone waits, the others go on.
const READ_BACKOFF: Duration = Duration::from_secs(60);
/// Chatwoot's final channel status: `read` never goes back
/// (`app/services/messages/status_update_service.rb`).
const FINAL: ChannelStatus = ChannelStatus::Read;

impl Worker {
    /// Reads the due statuses until `stop`.
    pub(super) async fn read_channel_statuses(self: Arc<Self>, stop: CancellationToken) {
        let mut last_sweep: Option<tokio::time::Instant> = None;
        while !stop.is_cancelled() {
            // Replies an event or a read marked are found through an index
            // every second; looking for delivered replies never read is a
            // scan of the recent ones, so it runs a tenth as often as the
            // reconcile interval (at most every 30 s).
            let every = self.policy.status_reconcile;
            let sweep_every = every.map(|e| (e / 10).min(SWEEP_AT_MOST));
            let sweep =
                sweep_every.is_some_and(|gap| last_sweep.is_none_or(|at| at.elapsed() >= gap));
            if sweep {
                last_sweep = Some(tokio::time::Instant::now());
            }
            let pause = match self.read_some(sweep).await {
                Some(0) => IDLE,
                Some(_) => continue,
                None => AFTER_FAILURE,
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Reads one batch: how many reads it recorded, `None` if the store
    /// failed. `sweep`: also delivered replies never read whose first check is due.
    async fn read_some(&self, sweep: bool) -> Option<usize> {
        let now = self.now();
        let due = DueReads {
            now,
            limit: BATCH,
            every: self.policy.status_reconcile.filter(|_| sweep),
            horizon: now - chrono::Duration::from_std(self.policy.max_age).ok()?,
        };
        let stale = match self.store.stale_channel_statuses(&due).await {
            Ok(stale) => stale,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the channel statuses to read");
                return None;
            }
        };
        let mut recorded = 0;
        for reply in stale {
            self.pace().await;
            let report = self
                .client
                .channel_report(reply.account_id, reply.conversation_id, reply.message_id)
                .await;
            let (report, next) = match report {
                Ok(report) => {
                    let next = self.next_read(&reply, report.as_ref());
                    (report, next)
                }
                Err(e) => {
                    self.note_refusal(&e);
                    tracing::warn!(reply_id = %reply.reply_id, error = %e.detail(),
                        "could not read a channel status from Chatwoot; this reply tries again later");
                    (None, Some(self.now() + span(READ_BACKOFF)))
                }
            };
            let read = ChannelRead {
                status: report.as_ref().map(|r| r.status),
                error: report.as_ref().and_then(|r| r.error.as_deref()),
                since: reply.since,
                next,
            };
            match self
                .store
                .record_channel_status(&reply.reply_id, &read)
                .await
            {
                Ok(()) => recorded += 1,
                Err(e) => {
                    tracing::warn!(reply_id = %reply.reply_id, error = %e, "could not record a channel status");
                    return None;
                }
            }
        }
        Some(recorded)
    }

    /// When to read a status again after reading `report`: never once it is
    /// final, the message is gone, or the reply is past its maximum age;
    /// otherwise after `GOLDRELAY_STATUS_RECONCILE`, if that is on.
    fn next_read(
        &self,
        reply: &StaleChannelStatus,
        report: Option<&ChannelReport>,
    ) -> Option<DateTime<Utc>> {
        let every = self.policy.status_reconcile?;
        let status = report?.status;
        let next = self.now() + span(every);
        let young = next - reply.received_at <= span(self.policy.max_age);
        (status != FINAL && young).then_some(next)
    }
}

fn span(wait: Duration) -> chrono::Duration {
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}
