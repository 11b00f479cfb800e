//! The claim's fast path: `lifecycle::claim`'s rule in one statement, so one
//! round trip and no explicit transaction. `tests/api/conformance.rs` runs
//! every case with and without it and compares the rows each leaves.

use crate::store::{row, Job, StoreError};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use std::time::Duration;

/// Picks the due heads, leases them and counts their attempts, as
/// `lifecycle::claim` does through `Tx`.
pub(super) async fn in_one_statement(
    pool: &PgPool,
    owner: &str,
    now: DateTime<Utc>,
    (lease, look_after): (Duration, Duration),
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let (until, due_again) = crate::store::lifecycle::lease_times(now, lease, look_after);
    let sql = "WITH picked AS ( \
           SELECT j.seq, j.maybe_sent AS was_maybe_sent FROM delivery_jobs j \
           WHERE j.is_head AND j.due_at <= $1 \
           AND (j.lease_until IS NULL OR j.lease_until <= $1) \
           ORDER BY j.due_at, j.seq LIMIT $2 FOR UPDATE OF j SKIP LOCKED), \
         leased AS ( \
           UPDATE delivery_jobs j SET lease_owner = $3, lease_until = $4, maybe_sent = true, \
             due_at = $5 \
           FROM picked WHERE j.seq = picked.seq \
           RETURNING j.seq, j.due_at, j.reply_id, j.account_id, j.conversation_id, \
             picked.was_maybe_sent), \
         counted AS ( \
           UPDATE gold_replies r SET attempts = r.attempts + 1 FROM leased \
           WHERE r.reply_id = leased.reply_id \
           RETURNING r.reply_id, r.content, r.private, r.liquid, r.attempts, r.trace_context, \
             COALESCE(r.requeued_at, r.received_at) AS age_from, \
             r.received_at AS accepted_at) \
         SELECT l.reply_id, l.account_id, l.conversation_id, l.was_maybe_sent AS maybe_sent, \
           c.content, c.private, c.liquid, c.attempts, c.age_from, c.accepted_at, \
           c.trace_context \
         FROM leased l JOIN counted c USING (reply_id) ORDER BY l.due_at, l.seq";
    let leased = sqlx::query(sql)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(owner)
        .bind(until)
        .bind(due_again)
        .fetch_all(pool)
        .await?;
    Ok(leased.iter().map(row::job).collect::<Result<_, _>>()?)
}
