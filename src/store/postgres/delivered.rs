//! Grouped delivered outcomes: the deliveries Chatwoot answered, recorded
//! together in one function call and one commit.

use super::tx::PgTx;
use super::MAX_BATCH;
use crate::domain::ReplyId;
use crate::store::lifecycle;
use crate::store::{Outcome, StoreError};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

/// A delivery Chatwoot answered, on its way to the recorder, and where the
/// recorder says whether it was committed.
pub(super) struct PendingDelivered {
    pub(super) reply_id: ReplyId,
    pub(super) message_id: i64,
    pub(super) now: DateTime<Utc>,
    pub(super) answer: oneshot::Sender<Result<(), StoreError>>,
}

/// Records every delivery Chatwoot answered that is waiting, in one call of
/// `goldrelay_delivered_many` (migration `20261129000009_delivered_together.sql`)
/// and one commit, and answers each. If that call fails, nothing of it was
/// stored, and each is recorded alone, so one bad outcome fails only itself.
pub(super) async fn record_delivereds(
    pool: PgPool,
    mut waiting: mpsc::Receiver<PendingDelivered>,
    fast: bool,
) {
    let mut group = Vec::with_capacity(MAX_BATCH);
    loop {
        if waiting.recv_many(&mut group, MAX_BATCH).await == 0 {
            return;
        }
        if !fast {
            for p in group.drain(..) {
                let alone = delivered(&pool, &p.reply_id, p.message_id, p.now).await;
                let _ = p.answer.send(alone);
            }
            continue;
        }
        let together = sqlx::query("SELECT goldrelay_delivered_many($1, $2, $3)")
            .bind(
                group
                    .iter()
                    .map(|p| p.reply_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(group.iter().map(|p| p.message_id).collect::<Vec<_>>())
            .bind(group.iter().map(|p| p.now).collect::<Vec<_>>())
            .execute(&pool)
            .await;
        match together {
            Ok(_) => answer_all(&mut group, || Ok(())),
            // A statement the server refused: one outcome may be at fault.
            Err(sqlx::Error::Database(_)) => {
                for p in group.drain(..) {
                    let alone = delivered(&pool, &p.reply_id, p.message_id, p.now).await;
                    let _ = p.answer.send(alone);
                }
            }
            // No answer from the server: trying each alone would only wait longer.
            Err(e) => answer_all(&mut group, || Err(StoreError::Commit(e.to_string()))),
        }
    }
}

fn answer_all(group: &mut Vec<PendingDelivered>, answer: impl Fn() -> Result<(), StoreError>) {
    for p in group.drain(..) {
        let _ = p.answer.send(answer());
    }
}

/// Records one delivery Chatwoot answered through the state machine, in a
/// transaction of its own: the path a group takes when the server refused it.
async fn delivered(
    pool: &PgPool,
    reply_id: &ReplyId,
    message_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let outcome = Outcome::Delivered { message_id };
    // Recorded whoever holds the lease, so the owner does not matter here.
    lifecycle::finish(&mut PgTx(&mut tx), reply_id, "", outcome, now).await?;
    tx.commit().await?;
    Ok(())
}
