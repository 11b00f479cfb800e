//! Periodic upkeep that runs beside the server and the worker, each job until
//! shutdown.

use crate::store::SharedStore;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often old Chatwoot events are looked for: they only matter for
/// deduplication, so an hour's extra keep costs nothing.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes Chatwoot events older than `retention`, hourly, until `stop` fires.
pub async fn prune_events(store: SharedStore, retention: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(age) = chrono::Duration::from_std(retention) else {
            continue;
        };
        match store.prune_events(chrono::Utc::now() - age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned old Chatwoot events"),
            Err(e) => tracing::warn!(error = %e, "could not prune Chatwoot events"),
        }
    }
}
