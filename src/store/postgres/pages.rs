//! The pages read in order: the list of replies (newest first) and the
//! export's pages (oldest first, cut by size).

use crate::store::export::capped_page_sql;
use crate::store::{row, Cursor, ExportPage, ExportRecord, ReplyFilter, ReplyRecord};
use crate::store::{StoreError, REPLY_COLUMNS};
use sqlx::postgres::PgPool;
use sqlx::QueryBuilder;

/// A page of the list, newest first, after `filter.after`.
pub(super) async fn list_page(
    pool: &PgPool,
    filter: &ReplyFilter,
) -> Result<Vec<ReplyRecord>, StoreError> {
    let mut query = QueryBuilder::new(format!(
        "SELECT {REPLY_COLUMNS} FROM gold_replies WHERE true"
    ));
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(account) = filter.account_id {
        query.push(" AND account_id = ").push_bind(account);
    }
    if let Some(conversation) = filter.conversation_id {
        query
            .push(" AND conversation_id = ")
            .push_bind(conversation);
    }
    if let Some(Cursor {
        received_at,
        reply_id,
    }) = &filter.after
    {
        query
            .push(" AND (received_at < ")
            .push_bind(*received_at)
            .push(" OR (received_at = ")
            .push_bind(*received_at)
            .push(" AND reply_id > ")
            .push_bind(reply_id.to_string())
            .push("))");
    }
    query
        .push(" ORDER BY received_at DESC, reply_id ASC LIMIT ")
        .push_bind(filter.limit as i64);
    let rows = query.build().fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(row::reply_record)
        .collect::<Result<_, _>>()?)
}

/// The gold dataset, one page at a time, in `(received_at, reply_id)` order,
/// cut after `max_bytes`. `octet_length` of a text reads its stored length,
/// not the value; JSON is measured as the text it is sent as.
pub(super) async fn export_page(
    pool: &PgPool,
    page: &ExportPage,
    max_bytes: usize,
) -> Result<Vec<ExportRecord>, StoreError> {
    let after_at = page.after.as_ref().map(|cursor| cursor.received_at);
    let after_id = page
        .after
        .as_ref()
        .map(|cursor| cursor.reply_id.to_string());
    let narrowing = page.narrowing();
    let sql = capped_page_sql(
        &format!(
            "SELECT reply_id, received_at, octet_length(content) \
             + COALESCE(octet_length(draft::text), 0) \
             + COALESCE(octet_length(metadata::text), 0) \
             + COALESCE(octet_length(context::text), 0) AS size \
             FROM gold_replies \
             WHERE ($1::timestamptz IS NULL OR (received_at, reply_id) > ($1, $2)) \
             AND received_at <= $3 {narrowing} \
             ORDER BY received_at, reply_id LIMIT $4"
        ),
        "$5",
    );
    use futures_util::TryStreamExt;
    sqlx::query(&sql)
        .bind(after_at)
        .bind(after_id)
        .bind(page.until)
        .bind(page.limit as i64)
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch(pool)
        // Each row is decoded as it arrives: a page is never held twice.
        .map_err(StoreError::from)
        .and_then(|row| {
            futures_util::future::ready(row::export_record(&row).map_err(StoreError::from))
        })
        .try_collect()
        .await
}
