//! `GET /api/accounts/{a}/conversations/{c}/gold-replies`: the console's
//! conversation view, every reply of one conversation oldest first, streamed a
//! page at a time.

use super::auth::Reader;
use super::export::streamed;
use super::problem::ApiError;
use super::AppState;
use crate::store::{export_pages, ExportPage, ExportRecord, StoreError};
use actix_web::{web, HttpResponse};
use futures_util::{stream, Stream, StreamExt, TryStreamExt};

/// The most replies the conversation view shows: far more than one
/// conversation gets, and a bound on one answer's rows (its bytes are
/// bounded by streaming it a page at a time).
const CONVERSATION_LIMIT: usize = 500;

/// `GET /api/accounts/{a}/conversations/{c}/gold-replies` (viewers and
/// operators): the conversation view's data, oldest first, with each reply's
/// content and approver, which the status record leaves out. A bound token
/// is refused another account's conversations.
pub async fn conversation(
    Reader(scope): Reader,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (account, conversation) = path.into_inner();
    let ids = account
        .parse::<i64>()
        .ok()
        .zip(conversation.parse::<i64>().ok());
    let Some(ids) = ids else {
        let detail =
            format!("account {account:?} and conversation {conversation:?} must be numbers");
        return Err(ApiError::NotFound(detail));
    };
    scope.require(ids.0)?;
    let page = ExportPage {
        after: None,
        until: state.store.now(),
        conversation: Some(ids),
        account: None,
        limit: CONVERSATION_LIMIT + 1,
    };
    let mut pages = Box::pin(export_pages(state.store.clone(), page));
    // The first page before the answer starts: a store that is down is a 503.
    let first = pages.try_next().await?;
    let pages = stream::iter(first.map(Ok)).chain(pages);
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(streamed(
            view_chunks(pages),
            "conversation view",
            state.request_timeout,
        )))
}

/// `{"items":[…],"truncated":…}` written a page at a time: the first
/// [`CONVERSATION_LIMIT`] replies, and whether more were left out.
fn view_chunks(
    pages: impl Stream<Item = Result<Vec<ExportRecord>, StoreError>> + Unpin + 'static,
) -> impl Stream<Item = Result<String, StoreError>> {
    let opening = stream::once(async { Ok(String::from("{\"items\":[")) });
    let items = stream::try_unfold(Some((pages, 0)), |state| async move {
        let Some((mut pages, shown)) = state else {
            return Ok(None);
        };
        let Some(records) = pages.try_next().await? else {
            return Ok(Some((closing(false), None)));
        };
        let room = CONVERSATION_LIMIT - shown;
        let (count, more) = (records.len(), records.len() > room);
        let mut chunk = items_json(records.into_iter().take(room), shown);
        if more {
            chunk += &closing(true);
            return Ok(Some((chunk, None)));
        }
        Ok(Some((chunk, Some((pages, shown + count)))))
    });
    opening.chain(items)
}

/// Records as items of the view's array, after `shown` items already
/// written; each record goes once written, so the page is not held twice.
fn items_json(records: impl Iterator<Item = ExportRecord>, shown: usize) -> String {
    let mut chunk = String::new();
    for (i, record) in records.enumerate() {
        if shown + i > 0 {
            chunk.push(',');
        }
        // A record of strings, numbers and parsed JSON always serializes.
        chunk.push_str(&serde_json::to_string(&record).unwrap_or_default());
    }
    chunk
}

fn closing(truncated: bool) -> String {
    format!("],\"truncated\":{truncated}}}")
}
