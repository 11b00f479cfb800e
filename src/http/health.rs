//! `GET /hc`: cheap, unauthenticated, honest about what works.
//!
//! Two things say whether replies can be stored: the posts themselves (the
//! ingest path records each write's outcome here) and `/hc`'s own write
//! probe. The probe runs at most once a second whatever the traffic, so an
//! anonymous flood of `/hc` never competes with Support for the writer.

use super::AppState;
use crate::config::Backend;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one probe's verdict stands.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long the probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed post keeps `/hc` failing unless a post succeeds first.
/// It lapses so an instance taken out of rotation (and so sent no posts)
/// is tried again rather than kept out for good.
const POST_FAILURE_COUNTS: Duration = Duration::from_secs(30);

/// What the store's writes did lately, shared by the ingest path and `/hc`.
pub struct WriteHealth {
    backend: Backend,
    /// When the last post's write failed, unless a later one succeeded.
    post_failed_at: Mutex<Option<Instant>>,
    /// The last probe: when it ran and whether it wrote. Held across the probe
    /// so concurrent `/hc` requests wait for one probe instead of each running one.
    probe: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl WriteHealth {
    /// For a store of `backend`, which `/hc` names.
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            post_failed_at: Mutex::new(None),
            probe: tokio::sync::Mutex::new(None),
        }
    }

    /// Records how a post's write went: a failure makes `/hc` fail until a
    /// later post's write succeeds, the probe recovers from a failure of its
    /// own (the whole database was down), or [`POST_FAILURE_COUNTS`] passes.
    pub fn post_written(&self, ok: bool) {
        let mut failed = self
            .post_failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *failed = (!ok).then(Instant::now);
    }

    fn posts_failing(&self) -> bool {
        let failed = *self
            .post_failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failed.is_some_and(|at| at.elapsed() < POST_FAILURE_COUNTS)
    }

    /// The probe's verdict, run again only when the last one is a second old.
    async fn probe(&self, state: &AppState) -> bool {
        let mut last = self.probe.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < PROBE_EVERY {
                return ok;
            }
        }
        let ping = tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await;
        let ok = matches!(ping, Ok(Ok(())));
        // The database was down and is back: the posts that failed meanwhile
        // failed with it, and need no post of their own to be forgiven.
        if ok && last.is_some_and(|(_, was_ok)| !was_ok) {
            self.post_written(true);
        }
        *last = Some((Instant::now(), ok));
        ok
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// 200 when replies can be accepted and stored, 503 otherwise; same body shape.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let writes = &state.writes;
    let probe_ok = writes.probe(&state).await;
    let posts_failing = writes.posts_failing();
    let store_status = match (probe_ok, posts_failing) {
        (true, false) => "ok",
        (false, _) => "unreachable: a test write failed",
        (true, true) => "failing: the last posted reply could not be stored",
    };
    let store_ok = probe_ok && !posts_failing;
    let body = json!({
        "status": if store_ok { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "store": { "status": store_status, "backend": writes.backend_name() },
        "worker": { "status": state.worker.describe() },
        "webhooks": { "status": state.webhooks.describe() },
    });
    if store_ok {
        HttpResponse::Ok().json(body)
    } else {
        // Like every store-caused 503: worth asking again shortly.
        HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_post_counts_until_a_good_one() {
        let writes = WriteHealth::new(Backend::Sqlite);
        assert!(!writes.posts_failing());
        writes.post_written(false);
        assert!(writes.posts_failing());
        writes.post_written(true);
        assert!(!writes.posts_failing());
    }
}
