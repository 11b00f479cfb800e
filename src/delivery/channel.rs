//! Channel statuses no webhook showed. Chatwoot's message events carry no
//! top-level status, and a conversation's payload lists only its latest public
//! message (`app/models/message.rb` `webhook_data`,
//! `app/presenters/conversations/event_data_presenter.rb` `push_messages`): once
//! the customer has answered, an update about our message does not say what
//! became of it. The store marks such replies; this loop reads their status
//! from Chatwoot's message list, within the same send rate as deliveries.

use super::Worker;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for statuses to read when it found none.
const IDLE: Duration = Duration::from_secs(1);
/// How many it reads in one go.
const BATCH: usize = 16;
/// The wait after Chatwoot or the store failed: statuses can wait, and a
/// token that may not read messages must not fill the log.
const AFTER_FAILURE: Duration = Duration::from_secs(30);

impl Worker {
    /// Reads the marked statuses until `stop`.
    pub(super) async fn read_channel_statuses(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let pause = match self.read_some().await {
                Some(0) => IDLE,
                Some(_) => continue,
                None => AFTER_FAILURE,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Reads one batch: how many statuses it settled, `None` if it failed.
    async fn read_some(&self) -> Option<usize> {
        let stale = match self.store.stale_channel_statuses(BATCH).await {
            Ok(stale) => stale,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the channel statuses to read");
                return None;
            }
        };
        let mut settled = 0;
        for reply in stale {
            self.pace().await;
            let report = self
                .client
                .channel_report(reply.account_id, reply.conversation_id, reply.message_id)
                .await;
            let report = match report {
                Ok(report) => report,
                Err(e) => {
                    self.note_refusal(&e);
                    tracing::warn!(reply_id = %reply.reply_id, error = %e.detail(),
                        "could not read a channel status from Chatwoot; trying again later");
                    return None;
                }
            };
            let recorded = self
                .store
                .record_channel_status(
                    &reply.reply_id,
                    report.as_ref().map(|r| r.status.as_str()),
                    report.as_ref().and_then(|r| r.error.as_deref()),
                    reply.since,
                )
                .await;
            match recorded {
                Ok(()) => settled += 1,
                Err(e) => {
                    tracing::warn!(reply_id = %reply.reply_id, error = %e, "could not record a channel status");
                    return None;
                }
            }
        }
        Some(settled)
    }
}
