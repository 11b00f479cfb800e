//! `NOTIFY`/`LISTEN` on `goldrelay_jobs`: telling every instance that new
//! jobs were committed, and waking this one's worker when another did.

use sqlx::postgres::{PgListener, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const CHANNEL: &str = "goldrelay_jobs";

/// Sends `NOTIFY goldrelay_jobs` after new jobs were committed, at most once
/// per `COALESCE` period. NOTIFY takes a database-wide lock at commit, so it is
/// kept out of the ingest transaction, where it would serialise every commit.
pub(super) async fn announce_new_jobs(pool: PgPool, announce: Arc<Notify>) {
    const COALESCE: Duration = Duration::from_millis(10);
    loop {
        announce.notified().await;
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "could not NOTIFY other instances; they will poll");
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// Wakes the worker for every notification until the connection fails.
async fn listen(pool: &PgPool, wake: &Notify) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Anything committed while we were not listening is found by this wake-up.
    wake.notify_one();
    loop {
        listener.recv().await?;
        wake.notify_one();
    }
}

/// Wakes `wake` for every notification, listening again a second after the
/// connection fails (the worker polls meanwhile).
pub(super) fn wake_on_new_jobs(pool: PgPool, wake: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = listen(&pool, &wake).await {
                tracing::warn!(error = %e, "LISTEN for new jobs failed; polling until it is back");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
