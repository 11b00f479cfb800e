//! What the process reports about its own parts: the delivery worker sets its
//! phase here and `/hc` reads it, so neither needs the other.

use crate::domain::OwnUser;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

/// Where the delivery worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPhase {
    /// Built, not yet looking at the queue.
    Starting,
    /// Claiming and delivering jobs.
    Running,
    /// Claiming failed; the worker waits and tries again.
    StoreFailing,
    /// Drained and gone.
    Stopped,
}

impl WorkerPhase {
    /// In the order of their stored codes.
    const ALL: [WorkerPhase; 4] = [
        WorkerPhase::Starting,
        WorkerPhase::Running,
        WorkerPhase::StoreFailing,
        WorkerPhase::Stopped,
    ];

    /// What `/hc` says for this phase.
    pub fn describe(self) -> &'static str {
        match self {
            WorkerPhase::Starting => "starting",
            WorkerPhase::Running => "running",
            WorkerPhase::StoreFailing => "paused: the store is failing",
            WorkerPhase::Stopped => "stopped",
        }
    }
}

/// Why the worker holds every Chatwoot request back, while it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Chatwoot answered 429: rack-attack's window must pass.
    RateLimited,
    /// Chatwoot refused goldrelay's API token (its own 401).
    TokenRefused,
}

impl PauseReason {
    /// In the order of their stored codes (0 is "not paused").
    const ALL: [PauseReason; 2] = [PauseReason::RateLimited, PauseReason::TokenRefused];
    /// Every `reason` label, so each series exists before its first pause.
    pub const ALL_LABELS: [&'static str; 2] = ["rate_limited", "token_refused"];

    /// The `reason` label of `goldrelay_delivery_paused`.
    pub fn label(self) -> &'static str {
        match self {
            PauseReason::RateLimited => "rate_limited",
            PauseReason::TokenRefused => "token_refused",
        }
    }

    /// What `/hc` says while deliveries are paused for this reason.
    pub fn describe(self) -> &'static str {
        match self {
            PauseReason::RateLimited => "paused: Chatwoot is rate limiting (429); sends resume when its window ends",
            PauseReason::TokenRefused => {
                "paused: Chatwoot refuses goldrelay's API token (401); fix CHATWOOT_API_TOKEN, deliveries resume by themselves"
            }
        }
    }
}

/// The worker's current phase, shared between the worker (which writes) and
/// `/hc` (which reads) without a lock, and why it pauses, if it does.
#[derive(Debug, Default)]
pub struct WorkerState(AtomicU8, AtomicU8, AtomicI64);

impl WorkerState {
    /// Records goldrelay's own Chatwoot user, once the worker has read it
    /// (or found that its token cannot read it).
    pub fn set_chatwoot_user(&self, user: OwnUser) {
        let code = match user {
            OwnUser::NotYetKnown => 0,
            OwnUser::Unknowable => -1,
            OwnUser::Is(id) => id.max(1),
        };
        self.2.store(code, Ordering::Relaxed);
    }

    /// goldrelay's own Chatwoot user: the webhook handler takes only that
    /// user's messages for goldrelay's.
    pub fn chatwoot_user(&self) -> OwnUser {
        match self.2.load(Ordering::Relaxed) {
            0 => OwnUser::NotYetKnown,
            id if id < 0 => OwnUser::Unknowable,
            id => OwnUser::Is(id),
        }
    }

    /// Records why deliveries are paused, or that they are not.
    pub fn set_paused(&self, reason: Option<PauseReason>) {
        let code = reason.map_or(0, |r| r as u8 + 1);
        self.1.store(code, Ordering::Relaxed);
    }

    /// Why deliveries are paused, if they are.
    pub fn paused(&self) -> Option<PauseReason> {
        let code = usize::from(self.1.load(Ordering::Relaxed));
        code.checked_sub(1)
            .and_then(|i| PauseReason::ALL.get(i).copied())
    }

    /// Records the phase the worker just entered.
    pub fn set(&self, phase: WorkerPhase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    /// The phase last recorded; `Starting` until the worker runs.
    pub fn phase(&self) -> WorkerPhase {
        let code = usize::from(self.0.load(Ordering::Relaxed));
        WorkerPhase::ALL
            .get(code)
            .copied()
            .unwrap_or(WorkerPhase::Stopped)
    }

    /// What `/hc` says about the worker: a pause while running, else the phase.
    pub fn describe(&self) -> &'static str {
        match (self.phase(), self.paused()) {
            (WorkerPhase::Running, Some(reason)) => reason.describe(),
            (phase, _) => phase.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_worker_state_says_starting_and_then_what_was_set() {
        let state = WorkerState::default();
        assert_eq!(state.describe(), "starting");
        for phase in WorkerPhase::ALL {
            state.set(phase);
            assert_eq!(state.phase(), phase);
        }
    }

    #[test]
    fn a_running_worker_says_why_it_pauses_until_the_pause_is_over() {
        let state = WorkerState::default();
        state.set(WorkerPhase::Running);
        for reason in PauseReason::ALL {
            state.set_paused(Some(reason));
            assert_eq!(state.paused(), Some(reason));
            assert_eq!(state.describe(), reason.describe());
        }
        state.set_paused(None);
        assert_eq!(state.describe(), "running");
    }
}
