//! What the process reports about its own parts: the delivery worker sets its
//! phase here and `/hc` reads it, so neither needs the other.

use std::sync::atomic::{AtomicU8, Ordering};

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

/// The worker's current phase, shared between the worker (which writes) and
/// `/hc` (which reads) without a lock.
#[derive(Debug, Default)]
pub struct WorkerState(AtomicU8);

impl WorkerState {
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

    /// What `/hc` says about the worker.
    pub fn describe(&self) -> &'static str {
        self.phase().describe()
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
}
