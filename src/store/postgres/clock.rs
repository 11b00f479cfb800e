//! The database's clock: read at start and every few seconds, so
//! [`PostgresStore::now`](super::PostgresStore) agrees across instances.

use crate::store::StoreError;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the database's clock is read again.
const CLOCK_READ_EVERY: Duration = Duration::from_secs(10);

/// Reads the database's clock and stores how far it is ahead of ours, taking
/// the middle of the round trip as the moment it was read.
pub(super) async fn read_clock(pool: &PgPool, offset: &AtomicI64) -> Result<(), StoreError> {
    let sent = Utc::now();
    let theirs: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?;
    let back = Utc::now();
    let ours = sent + (back - sent) / 2;
    offset.store((theirs - ours).num_milliseconds(), Ordering::Relaxed);
    Ok(())
}

/// Keeps [`PostgresStore::now`] on the database's clock.
pub(super) async fn follow_clock(pool: PgPool, offset: Arc<AtomicI64>) {
    loop {
        tokio::time::sleep(CLOCK_READ_EVERY).await;
        if let Err(e) = read_clock(&pool, &offset).await {
            tracing::debug!(error = %e, "could not read the database's clock; keeping the last offset");
        }
    }
}

/// Now on the database's clock, given how far it is ahead of ours.
pub(super) fn now(offset: &AtomicI64) -> DateTime<Utc> {
    let offset = offset.load(Ordering::Relaxed);
    Utc::now() + chrono::Duration::milliseconds(offset)
}
