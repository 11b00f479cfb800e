//! The batched ingest writer: posted replies taken together by a few writer
//! tasks, stored in one call of `goldrelay_ingest` (its columns bound by
//! name), and answered; each reply alone when the batch fails.

use super::tx::PgTx;
use super::MAX_BATCH;
use crate::store::lifecycle::{self, NewReply, Stored};
use crate::store::{row, Ingested, ReplyRecord, StoreError, REPLY_COLUMNS};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

/// One posted reply on its way to a writer, and where its answer goes.
pub(super) struct PendingIngest {
    pub(super) new: NewReply,
    pub(super) now: DateTime<Utc>,
    pub(super) answer: oneshot::Sender<Result<Ingested, StoreError>>,
}

/// Takes every posted reply waiting (up to [`MAX_BATCH`]), commits them in
/// one transaction and answers each. Writers take turns at the queue, so
/// while one commits the next gathers.
pub(super) async fn run_ingest_writer(
    pool: PgPool,
    waiting: Arc<Mutex<mpsc::Receiver<PendingIngest>>>,
    announce: Arc<Notify>,
    fast: bool,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if waiting.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let (items, answers): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|p| ((p.new, lifecycle::stored_time(p.now)), p.answer))
            .unzip();
        let results = if fast {
            ingest_batch(&pool, &items).await
        } else {
            ingest_each(&pool, &items).await
        };
        // Told after the commit, in a transaction of the announcer's own
        // (migration 10 says why not inside the batch's).
        let queued = items.iter().zip(&results).any(|((new, _), result)| {
            new.reply.action().sends() && matches!(result, Ok(Ingested::Created(_)))
        });
        if queued {
            announce.notify_one();
        }
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }
}

/// Stores a batch of posted replies, answering in the order of `items`. The
/// whole batch is one call of `goldrelay_ingest` in autocommit: one round trip,
/// committed (synchronously) when it returns. If it fails, nothing of it was
/// stored, and each reply is stored alone (in a savepoint of its own), so one
/// bad reply fails only itself.
async fn ingest_batch(
    pool: &PgPool,
    items: &[(NewReply, DateTime<Utc>)],
) -> Vec<Result<Ingested, StoreError>> {
    // A reply id posted twice in one batch: the first is the one inserted.
    let mut seen = HashSet::new();
    let firsts: Vec<&(NewReply, DateTime<Utc>)> = items
        .iter()
        .filter(|(new, _)| seen.insert(new.reply.reply_id().as_str()))
        .collect();
    match batch_insert(&firsts).fetch_all(pool).await {
        Ok(inserted) => answer_batch(pool, items, inserted.into_iter().collect()).await,
        Err(e) => {
            tracing::warn!(error = %e, "a batch of posted replies failed; storing each alone");
            ingest_each(pool, items).await
        }
    }
}

/// Commits a batch's transaction; every answer fails if the commit does.
async fn commit_all(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    results: Vec<Result<Ingested, StoreError>>,
) -> Vec<Result<Ingested, StoreError>> {
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => failed_all(results.len(), &e.into()),
    }
}

fn failed_all(n: usize, e: &StoreError) -> Vec<Result<Ingested, StoreError>> {
    (0..n)
        .map(|_| Err(StoreError::Commit(e.to_string())))
        .collect()
}

/// The fallback: each reply through the state machine in a savepoint of its
/// own, inside one transaction that took every conversation lock up front,
/// in the same order as a batch takes them.
async fn ingest_each(
    pool: &PgPool,
    items: &[(NewReply, DateTime<Utc>)],
) -> Vec<Result<Ingested, StoreError>> {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return failed_all(items.len(), &e.into()),
    };
    if let Err(e) = lock_conversations(&mut tx, items).await {
        return failed_all(items.len(), &e);
    }
    let mut results = Vec::with_capacity(items.len());
    for (new, now) in items {
        results.push(ingest_alone(&mut tx, new, *now).await);
    }
    commit_all(tx, results).await
}

async fn ingest_alone(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewReply,
    now: DateTime<Utc>,
) -> Result<Ingested, StoreError> {
    let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
    match lifecycle::ingest(&mut PgTx(&mut savepoint), new, now).await {
        Ok(ingested) => {
            savepoint.commit().await?;
            Ok(ingested)
        }
        Err(e) => {
            savepoint.rollback().await?;
            Err(e)
        }
    }
}

/// Takes the advisory lock of every conversation a batch adds jobs to, in
/// ascending key order, so two batches (of this or another instance) that
/// share conversations cannot deadlock.
async fn lock_conversations(
    conn: &mut PgConnection,
    items: &[(NewReply, DateTime<Utc>)],
) -> Result<(), StoreError> {
    let (accounts, conversations): (Vec<i64>, Vec<i64>) = items
        .iter()
        .filter(|(new, _)| new.reply.action().sends())
        .map(|(new, _)| (new.reply.account_id(), new.reply.conversation_id()))
        .unzip();
    if accounts.is_empty() {
        return Ok(());
    }
    // Since PostgreSQL 9.6 a volatile output expression is evaluated after
    // the ORDER BY sort, so the locks are taken in key order.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
           (SELECT DISTINCT goldrelay_line_lock(a, c) AS k \
            FROM unnest($1::int8[], $2::int8[]) AS t(a, c)) AS keys \
         ORDER BY k",
    )
    .bind(accounts)
    .bind(conversations)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The answers to a committed batch: `Created` for each id it `inserted` (a
/// later copy of it in the batch is answered as a repeat of the first), and
/// for each id taken before, its stored row, read now (the row was committed
/// before the batch, since `ON CONFLICT` waits for an insert in flight). The
/// batch is committed whatever happens here, so it is never stored again.
async fn answer_batch(
    pool: &PgPool,
    items: &[(NewReply, DateTime<Utc>)],
    inserted: HashSet<String>,
) -> Vec<Result<Ingested, StoreError>> {
    let taken: Vec<String> = items
        .iter()
        .map(|(new, _)| new.reply.reply_id().to_string())
        .filter(|id| !inserted.contains(id))
        .collect();
    let stored = fetch_many(pool, &taken).await;
    let mut created: HashMap<&str, Stored> = HashMap::new();
    let mut results = Vec::with_capacity(items.len());
    for (new, now) in items {
        let id = new.reply.reply_id().as_str();
        if let Some(first) = created.get(id) {
            results.push(Ok(lifecycle::existing(first.clone(), new)));
        } else if inserted.contains(id) {
            let record = lifecycle::created_record(new, *now);
            created.insert(id, just_stored(&record, new));
            results.push(Ok(Ingested::Created(record)));
        } else {
            results.push(match &stored {
                Ok(rows) => rows
                    .get(id)
                    .map(|row| lifecycle::existing(row.clone(), new))
                    .ok_or(StoreError::Unavailable),
                Err(e) => Err(StoreError::Commit(e.to_string())),
            });
        }
    }
    results
}

/// A reply as the batch just stored it, to answer a repeat of it in the batch.
fn just_stored(record: &ReplyRecord, new: &NewReply) -> Stored {
    Stored {
        record: record.clone(),
        fingerprint: new.fingerprint.clone(),
        uncertain: false,
        stale_since: None,
    }
}

/// The batch insert's statement: `goldrelay_ingest` (migrations 8, 10, 13, 14
/// and 15) takes the conversations' locks and inserts the replies and their jobs.
/// Every argument is passed by its parameter's name; each is one column of
/// the batch as an array, bound in this order by [`batch_insert`].
const BATCH_INSERT: &str = "SELECT goldrelay_ingest(\
    p_reply_ids => $1, p_account_ids => $2, p_conversation_ids => $3, p_actions => $4, \
    p_contents => $5, p_privates => $6, p_approvers => $7, p_drafts => $8, p_tags => $9, \
    p_metadata => $10, p_fingerprints => $11, p_statuses => $12, p_received => $13, \
    p_sends => $14, p_liquids => $15, p_contexts => $16, p_trace_contexts => $17, \
    p_channel => $18)";

/// One column of a batch: `value` of every item, in order.
fn column<'q, T>(
    items: &[&'q (NewReply, DateTime<Utc>)],
    value: impl Fn(&'q NewReply, DateTime<Utc>) -> T,
) -> Vec<T> {
    items.iter().map(|&item| value(&item.0, item.1)).collect()
}

/// The batch insert ([`BATCH_INSERT`]) with every column bound as one array,
/// each bind beside its parameter's name; the writer announces the new jobs
/// after it returns.
fn batch_insert<'q>(
    items: &[&'q (NewReply, DateTime<Utc>)],
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments> {
    sqlx::query_scalar(BATCH_INSERT)
        .bind(column(items, |n, _| n.reply.reply_id().to_string())) // p_reply_ids
        .bind(column(items, |n, _| n.reply.account_id())) // p_account_ids
        .bind(column(items, |n, _| n.reply.conversation_id())) // p_conversation_ids
        .bind(column(items, |n, _| n.reply.action().as_str().to_owned())) // p_actions
        .bind(column(items, |n, _| n.reply.content().to_owned())) // p_contents
        .bind(column(items, |n, _| n.reply.private())) // p_privates
        .bind(column(items, |n, _| n.reply.approved_by())) // p_approvers
        .bind(column(items, |n, _| n.draft.as_deref())) // p_drafts
        .bind(column(items, |n, _| n.tags.as_str())) // p_tags
        .bind(column(items, |n, _| n.metadata.as_deref())) // p_metadata
        .bind(column(items, |n, _| n.fingerprint.as_str())) // p_fingerprints
        .bind(column(items, |n, _| n.initial_status().as_str().to_owned())) // p_statuses
        .bind(column(items, |_, now| now)) // p_received
        .bind(column(items, |n, _| n.reply.action().sends())) // p_sends
        .bind(column(items, |n, _| n.reply.liquid())) // p_liquids
        .bind(column(items, |n, _| n.context.as_deref())) // p_contexts
        .bind(column(items, |n, _| n.trace_context.as_deref())) // p_trace_contexts
        // p_channel: none, so the function does not NOTIFY; the writer announces instead.
        .bind(None::<&str>)
}

/// The stored rows of `reply_ids`, by id.
async fn fetch_many(
    pool: &PgPool,
    reply_ids: &[String],
) -> Result<HashMap<String, Stored>, StoreError> {
    if reply_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!("SELECT {REPLY_COLUMNS} FROM gold_replies WHERE reply_id = ANY($1)");
    let rows = sqlx::query(&sql).bind(reply_ids).fetch_all(pool).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("reply_id")?, row::stored(row)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}
