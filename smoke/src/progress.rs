//! The live spinner while a check waits. Only on a terminal: CI logs and
//! pipes get plain result lines with no control characters.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TICK: Duration = Duration::from_millis(100);
/// Short enough that the line never wraps, which would defeat `\r`.
const MAX_STATUS_CHARS: usize = 50;
const CLEAR_LINE: &str = "\r\x1b[2K";

/// What a running check is waiting for; a no-op when there is no terminal.
pub struct Progress {
    live: Option<Live>,
}

struct Live {
    state: Arc<Mutex<State>>,
    ticker: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    status: String,
    stopped: bool,
}

impl Progress {
    /// A spinner for `name` when `enabled`.
    pub fn start(name: &'static str, enabled: bool) -> Self {
        if !enabled {
            return Self { live: None };
        }
        let state = Arc::new(Mutex::new(State::default()));
        let ticker = tokio::spawn(tick(name, state.clone()));
        Self {
            live: Some(Live { state, ticker }),
        }
    }

    /// Replaces the status shown after the check's name.
    pub fn set(&self, status: impl Into<String>) {
        if let Some(live) = &self.live {
            lock(&live.state).status = status.into();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Under the lock, so a tick in flight cannot redraw after the clear.
        let mut state = lock(&self.state);
        state.stopped = true;
        self.ticker.abort();
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{CLEAR_LINE}");
        let _ = out.flush();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn tick(name: &'static str, state: Arc<Mutex<State>>) {
    let started = Instant::now();
    let mut interval = tokio::time::interval(TICK);
    for frame in FRAMES.iter().cycle() {
        interval.tick().await;
        let state = lock(&state);
        if state.stopped {
            return;
        }
        let status: String = state.status.chars().take(MAX_STATUS_CHARS).collect();
        let elapsed = started.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "{CLEAR_LINE}{frame} {name:<18} {elapsed:>5.1}s  {status}"
        );
        let _ = out.flush();
    }
}
