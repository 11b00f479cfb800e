//! `GET /api/gold-replies/export`: the gold dataset as JSON Lines, streamed
//! page by page from the store (viewers and operators), and the streamed
//! body it shares with the conversation view.

use super::auth::{Operator, Reader};
use super::problem::ApiError;
use super::AppState;
use crate::dataset;
use crate::store::{export_lines, Cursor, StoreError};
use actix_web::web::{self, Bytes};
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use futures_util::{stream, Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The most bytes handed to the server at a time: it copies each piece into
/// its write buffer, so a page handed whole would be held twice.
const SLICE_BYTES: usize = 16 * 1024;

/// The export's query string.
#[derive(Deserialize)]
struct ExportQuery {
    since: Option<String>,
    /// The training formats' choices, read by [`dataset::Options::parse`].
    format: Option<String>,
    split: Option<String>,
    eval_share: Option<String>,
    redact: Option<String>,
    draft_field: Option<String>,
}

/// Streams every decision after `since`. The first page is read before the
/// answer starts, so a store that is down is a 503 rather than an empty 200;
/// a failure later cuts the stream, and the client resumes from its last line.
/// A bound token exports its own account only. `format`, `split` and the
/// rest choose a training format (`dataset`); only an operator may turn
/// redaction off.
pub async fn export(
    Reader(scope): Reader,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ExportQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::MalformedQuery(e.to_string()))?
        .into_inner();
    let options = dataset::Options::parse(&dataset::Asked {
        format: query.format.as_deref(),
        split: query.split.as_deref(),
        eval_share: query.eval_share.as_deref(),
        redact: query.redact.as_deref(),
        draft_field: query.draft_field.as_deref(),
    })
    .map_err(ApiError::InvalidQuery)?;
    if options.unredacted() {
        Operator::extract(&req).await?;
    }
    let after = match query.since.filter(|s| !s.is_empty()) {
        Some(raw) => Some(Cursor::decode(&raw).ok_or(ApiError::InvalidCursor)?),
        None => None,
    };
    let now = state.store.now();
    let records = export_lines(state.store.clone(), after, scope.account(), now);
    let mut lines = Box::pin(dataset::converted(records, options, |e| {
        StoreError::Database(sqlx::Error::Decode(e.into()))
    }));
    let first = lines.next().await.transpose()?;
    let chunks = stream::iter(first.map(Ok)).chain(lines);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(streamed(chunks, "export", state.request_timeout)))
}

/// A response body read page by page from the store: each page is handed
/// out in slices as the client reads, so a request holds about one page. A
/// store failure after the answer started cuts the body short.
///
/// A client that stops reading is cut off by the kernel (`TCP_USER_TIMEOUT`,
/// set on every connection in `startup`) after `timeout`; the body then
/// goes, and says so once.
pub(super) fn streamed(
    chunks: impl Stream<Item = Result<String, StoreError>> + 'static,
    what: &'static str,
    timeout: Duration,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let slices = chunks
        .map_ok(|chunk| stream::iter(slices(Bytes::from(chunk)).map(Ok::<_, StoreError>)))
        .try_flatten()
        .map_err(move |e| {
            tracing::warn!(error = %e, what, "a streamed answer was cut short by the store");
            actix_web::error::ErrorServiceUnavailable("store unavailable")
        });
    Watched {
        inner: Box::pin(slices),
        what,
        timeout,
        handed: Instant::now(),
        waiting: false,
        finished: false,
    }
}

fn slices(chunk: Bytes) -> impl Iterator<Item = Bytes> {
    let len = chunk.len();
    (0..len)
        .step_by(SLICE_BYTES)
        .map(move |at| chunk.slice(at..len.min(at + SLICE_BYTES)))
}

/// A body that notes when it last handed out a piece, so that its drop
/// before the end can tell a stalled client from one that just left.
struct Watched<S> {
    inner: Pin<Box<S>>,
    what: &'static str,
    timeout: Duration,
    handed: Instant,
    /// Waiting for the store, not for the client.
    waiting: bool,
    finished: bool,
}

impl<S: Stream> Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        self.waiting = polled.is_pending();
        match &polled {
            Poll::Ready(Some(_)) => self.handed = Instant::now(),
            Poll::Ready(None) => self.finished = true,
            Poll::Pending => {}
        }
        polled
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        let stalled = self.handed.elapsed();
        if !self.finished && !self.waiting && stalled >= self.timeout {
            tracing::info!(
                what = self.what,
                stalled_secs = stalled.as_secs(),
                "a client stopped reading a streamed answer and was cut off"
            );
        }
    }
}
