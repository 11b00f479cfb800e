//! Pacing every Chatwoot request: the shared pause, the send rate, and the pauses a refusal starts.

use super::{span, Worker, TOKEN_RECHECK};
use crate::chatwoot::SendError;
use crate::store::SendSlot;
use chrono::{DateTime, Utc};
use governor::DefaultDirectRateLimiter;
use std::time::Duration;
use tokio::time::Instant;

impl Worker {
    /// Waits out the shared pause, then the send rate: before every request.
    pub(super) async fn pace(&self) {
        let _ = self.pace_until(None).await;
    }

    /// [`Worker::pace`], giving up when no slot starts by `latest`: then the
    /// time the slot would have come, by the store's clock. Where the store
    /// serves several instances (PostgreSQL), the rate and any pause are the
    /// whole deployment's; otherwise this process's own.
    pub(super) async fn pace_until(&self, latest: Option<Instant>) -> Result<(), DateTime<Utc>> {
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
    pub(super) fn went_through(&self) {
        if let Some(reason) = self.pause.cleared() {
            self.metrics.paused(reason, false);
            self.link.state.set_paused(None);
            tracing::info!(?reason, "Chatwoot answers again; deliveries resume");
        }
    }

    /// A 429 or a refused token pauses every request of the worker, not just
    /// this reply's.
    pub(super) fn note_refusal(&self, error: &SendError) {
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
}
