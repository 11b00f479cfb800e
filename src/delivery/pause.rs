//! The pause every Chatwoot request of the worker waits out when Chatwoot
//! throttles (rack-attack) or refuses the API token.

use crate::health::PauseReason;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// rack-attack counts in fixed windows of this length, aligned on the epoch
/// (`config/initializers/rack_attack.rb`, `Rack::Attack::Cache#key_and_expiry`).
const RACK_ATTACK_WINDOW: u64 = 60;

/// How long deliveries pause after Chatwoot refused the API token before one
/// request tries it again (`GOLDRELAY_RETRY_MAX` when that is shorter).
pub const TOKEN_RECHECK: Duration = Duration::from_secs(30);

/// A pause every Chatwoot request of the worker waits out, set when Chatwoot
/// throttles or refuses the API token: rack-attack counts every request from
/// this IP (`config/initializers/rack_attack.rb`) and a refused token fails
/// every request alike, so slowing down one reply alone would not help.
#[derive(Debug, Default)]
pub struct Pause {
    state: Mutex<PauseState>,
}

#[derive(Debug, Default)]
struct PauseState {
    until: Option<Instant>,
    reason: Option<PauseReason>,
}

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a throttled answer and returns the pause it set: `retry_after`
    /// when Chatwoot (or its proxy) named one, else until rack-attack's
    /// current one-minute window ends (`unix_secs` is the time now), so at
    /// most a minute. Throttles in a row do not stack: the window, not the
    /// count, decides when requests pass again. Never more than `max`
    /// (`GOLDRELAY_RETRY_MAX`), however long a proxy's `Retry-After`.
    pub fn throttled(
        &self,
        retry_after: Option<Duration>,
        unix_secs: u64,
        max: Duration,
    ) -> Duration {
        let window_left = RACK_ATTACK_WINDOW - unix_secs % RACK_ATTACK_WINDOW;
        let wait = retry_after
            .unwrap_or(Duration::from_secs(window_left))
            .min(max);
        self.extend(wait, PauseReason::RateLimited);
        wait
    }

    /// Chatwoot refused the API token: every request waits `wait`, then one
    /// tries again.
    pub fn token_refused(&self, wait: Duration) -> Duration {
        self.extend(wait, PauseReason::TokenRefused);
        wait
    }

    fn extend(&self, wait: Duration, reason: PauseReason) {
        let mut state = self.lock();
        let now = Instant::now();
        let until = now.checked_add(wait).unwrap_or(now);
        state.until = Some(state.until.map_or(until, |u| u.max(until)));
        state.reason = Some(reason);
    }

    /// A request went through: whatever paused requests is over.
    pub fn cleared(&self) -> Option<PauseReason> {
        let mut state = self.lock();
        state.until = None;
        state.reason.take()
    }

    /// How long requests must still wait, if at all.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.lock().until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Why requests were last paused, until a request goes through.
    pub fn reason(&self) -> Option<PauseReason> {
        self.lock().reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_in_a_row_pause_until_rack_attacks_window_ends_and_never_stack() {
        let max = Duration::from_secs(300);
        let pause = Pause::default();
        assert_eq!(pause.remaining(), None);
        // 16 attempts throttled at once, 20 s into a minute: 40 s each, not 16 strikes.
        for _ in 0..16 {
            assert_eq!(
                pause.throttled(None, 60 * 1000 + 20, max),
                Duration::from_secs(40)
            );
        }
        assert!(pause
            .remaining()
            .is_some_and(|left| left <= Duration::from_secs(40)));
        assert_eq!(pause.reason(), Some(PauseReason::RateLimited));
        assert_eq!(pause.cleared(), Some(PauseReason::RateLimited));
        assert_eq!(pause.remaining(), None);
        // At the very start of a window the wait is the whole minute, no more.
        assert_eq!(pause.throttled(None, 120, max), Duration::from_secs(60));
    }

    #[test]
    fn a_named_wait_sets_the_pause_but_never_beyond_the_cap() {
        let max = Duration::from_secs(1);
        let pause = Pause::default();
        let asked = Some(Duration::from_millis(300));
        assert_eq!(pause.throttled(asked, 0, max), Duration::from_millis(300));
        let huge = Some(crate::chatwoot::RETRY_AFTER_CAP);
        assert_eq!(pause.throttled(huge, 0, max), max);
        assert!(pause.remaining().is_some_and(|left| left <= max));
    }

    #[test]
    fn a_refused_token_pauses_everything_until_a_request_goes_through() {
        let pause = Pause::default();
        assert_eq!(pause.token_refused(TOKEN_RECHECK), TOKEN_RECHECK);
        assert_eq!(pause.reason(), Some(PauseReason::TokenRefused));
        assert!(pause.remaining().is_some());
        assert_eq!(pause.cleared(), Some(PauseReason::TokenRefused));
        assert_eq!(pause.cleared(), None);
    }
}
