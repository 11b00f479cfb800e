//! Every SQL statement goldrelay runs sits behind the narrow [`Store`] trait.
//!
//! The HTTP and delivery code see only this trait, so a second backend changes
//! nothing above this module.

pub mod backup;
mod cursor;
mod export;
mod lifecycle;
mod postgres;
mod row;
pub mod schema;
mod sql;
mod sqlite;
pub mod summary;

pub(crate) use sql::{due_heads_sql, stale_channel_statuses_sql, CAPTURE_DUE, REPLY_COLUMNS};

pub use export::{
    export_lines, export_pages, ExportPage, ExportRecord, EXPORT_PAGE_BYTES, EXPORT_SETTLE,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

pub use crate::config::{Backend, DatabaseUrl};
use crate::domain::{Action, ChannelStatus, ChatwootEvent, GoldReply, ReplyId, Status, Turn};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A store shared by the HTTP server and the worker.
pub type SharedStore = Arc<dyn Store>;

/// What went wrong below the store. Callers only need to know that it did.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An error of the embedded store's writer connection.
    #[error("database error: {0}")]
    Embedded(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the database could not commit: {0}")]
    Commit(String),
    #[error("the database writer is unavailable")]
    Unavailable,
    /// More writes wait than the store takes on; the caller should come back later.
    #[error("the database is busy: {0} writes are already waiting")]
    Overloaded(usize),
}

/// The public record of one gold reply: what `GET /api/gold-replies/{id}` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplyRecord {
    pub reply_id: ReplyId,
    pub account_id: i64,
    pub conversation_id: i64,
    pub action: Action,
    pub status: Status,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub chatwoot_message_id: Option<i64>,
    pub received_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub channel_status: Option<ChannelStatus>,
    pub channel_error: Option<String>,
    /// Where the reply's conversation context stands (issue 21).
    pub context: ContextState,
}

/// Where a reply's conversation context stands: posted, captured, or still
/// to capture, and the last failed capture. The turns themselves are in the export.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContextState {
    /// `posted` or `captured`; `None` while neither.
    pub source: Option<String>,
    /// When a captured context was read from Chatwoot.
    pub captured_at: Option<DateTime<Utc>>,
    /// Captures tried so far.
    pub capture_attempts: i64,
    /// The last failed capture's error, until one succeeds.
    pub capture_error: Option<String>,
    /// When the next capture is due (or its lease ends); `None`: none pending.
    pub next_capture_at: Option<DateTime<Utc>>,
}
#[derive(Debug)]
pub enum Ingested {
    /// A new reply, committed with its delivery job.
    Created(ReplyRecord),
    /// The same reply was stored before; nothing changed.
    Existing(ReplyRecord),
    /// The reply id is taken by a reply with other content.
    Conflict(ReplyRecord),
}

/// A delivery job the worker holds under a lease.
#[derive(Debug, Clone)]
pub struct Job {
    pub reply_id: ReplyId,
    pub account_id: i64,
    pub conversation_id: i64,
    pub content: String,
    pub private: bool,
    /// Chatwoot may render Liquid in `content`; otherwise it is sent so that
    /// it reads exactly as approved.
    pub liquid: bool,
    /// This attempt's number, starting at 1.
    pub attempt: i64,
    /// When the reply's attempt budget started: accepted, or retried by an operator.
    pub received_at: DateTime<Utc>,
    /// When the reply was first accepted: a lookup pages back to here, since
    /// any attempt, before an operator's retry too, came after it.
    pub accepted_at: DateTime<Utc>,
    /// An earlier attempt may have created the message: look before sending.
    pub maybe_sent: bool,
    /// The W3C traceparent stored at ingest, which every attempt's span
    /// joins; `None` when traces were off then.
    pub trace_context: Option<String>,
}

/// How one delivery attempt ended, as the store records it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered {
        message_id: i64,
    },
    Retry {
        at: DateTime<Utc>,
        error: String,
        maybe_sent: bool,
    },
    Dead {
        error: String,
        /// This or an earlier attempt may have created the message: an
        /// operator's retry looks for it before sending.
        maybe_sent: bool,
    },
    /// No create left for this attempt (it waited for a send slot, Chatwoot
    /// throttled or refused the token): the job goes back as it was, due at
    /// `at`, and the attempt is not counted.
    Unsent {
        at: DateTime<Utc>,
        /// Whether an earlier attempt may have created the message.
        maybe_sent: bool,
        /// The reply's attempt count before this claim.
        attempts: i64,
        /// Why, for the operator (`last_error`); `None` keeps it.
        why: Option<String>,
    },
}

/// Which replies `list` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct ReplyFilter {
    pub status: Option<Status>,
    pub account_id: Option<i64>,
    pub conversation_id: Option<i64>,
    /// Continue after this position (from the previous page's last record).
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// A position in the newest-first listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub received_at: DateTime<Utc>,
    pub reply_id: ReplyId,
}

/// What putting a reply back in the queue did.
#[derive(Debug)]
pub enum Requeued {
    /// Queued again with a fresh attempt budget. `lookup_first`: an earlier
    /// attempt may have created the message, so the next one looks before
    /// it sends (unless the retry was forced).
    Queued {
        record: ReplyRecord,
        lookup_first: bool,
    },
    /// Only a `dead` reply can be retried; this is its record.
    NotDead(ReplyRecord),
    NotFound,
}

/// Whether a webhook event was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Stored and acted on.
    Processed,
    /// Seen before (same delivery id or same event): nothing done.
    Duplicate,
    /// Stored, but it names a reply whose message it is not (another
    /// account, conversation, direction or message id): nothing done.
    Mismatch,
}

/// A reply whose channel status is due for reading from Chatwoot's message
/// list: an event said it changed without showing it, or it is time to check
/// that what goldrelay holds is still what Chatwoot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleChannelStatus {
    pub reply_id: ReplyId,
    pub account_id: i64,
    pub conversation_id: i64,
    /// The Chatwoot message to read (`GET …/messages?after=<message_id - 1>`).
    pub message_id: i64,
    /// When the read was due (an event's mark, or the last read's schedule);
    /// `None` for a first check. Handed back to [`Store::record_channel_status`]
    /// so a mark made during the read is not forgotten.
    pub since: Option<DateTime<Utc>>,
    /// When the reply was accepted: past `GOLDRELAY_MAX_AGE` it is no longer checked.
    pub received_at: DateTime<Utc>,
}

/// What [`Store::reserve_send`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendSlot {
    /// This slot is ours: send when it starts.
    Reserved(DateTime<Utc>),
    /// No slot starts by the latest time asked; the next free one starts here.
    NotBefore(DateTime<Utc>),
}

/// Which channel statuses [`Store::stale_channel_statuses`] hands out.
#[derive(Debug, Clone, Copy)]
pub struct DueReads {
    pub now: DateTime<Utc>,
    pub limit: usize,
    /// Every delivered reply's status is first checked this long after its
    /// delivery (`GOLDRELAY_STATUS_RECONCILE`); `None`: only replies an event
    /// or an earlier read marked.
    pub every: Option<Duration>,
    /// Replies accepted before this are not checked unless marked.
    pub horizon: DateTime<Utc>,
}

/// What one read of a channel status found, and when to read it again.
#[derive(Debug, Clone, Copy)]
pub struct ChannelRead<'a> {
    /// The status Chatwoot holds; `None` when the read failed or Chatwoot no
    /// longer has the message, or holds a status Chatwoot does not name (the
    /// status stays as it was).
    pub status: Option<ChannelStatus>,
    /// `content_attributes.external_error`, kept only while `failed`.
    pub error: Option<&'a str>,
    /// [`StaleChannelStatus::since`] of the listing this read came from.
    pub since: Option<DateTime<Utc>>,
    /// When to read it again; `None`: not again unless an event marks it.
    pub next: Option<DateTime<Utc>>,
}

/// Counts for `/hc` and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    pub queued: i64,
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

/// The narrow interface between goldrelay and its database.
#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a reply and, when it is to be sent, its delivery job, in one transaction.
    async fn ingest(&self, reply: &GoldReply, now: DateTime<Utc>) -> Result<Ingested, StoreError>;

    /// One reply's record.
    async fn reply(&self, reply_id: &ReplyId) -> Result<Option<ReplyRecord>, StoreError>;

    /// The W3C traceparent stored with a reply at ingest, if traces were on.
    /// Asked only while traces are exported.
    async fn trace_context(&self, _reply_id: &ReplyId) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Leases up to `limit` due jobs, at most one per conversation and always that
    /// conversation's oldest, so replies reach each conversation in order.
    ///
    /// Each job is due again no sooner than `lease + look_after` from `now`
    /// unless its outcome is recorded: a create can leave until the lease
    /// ends, so after a crash or a lost outcome the next attempt, which looks
    /// the message up first, comes at least `look_after` (the lookup delay)
    /// after it.
    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        look_after: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// Records how an attempt on a job leased by `owner` ended.
    async fn finish(
        &self,
        reply_id: &ReplyId,
        owner: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Replies matching `filter`, newest first, at most `filter.limit`.
    async fn list(&self, filter: &ReplyFilter) -> Result<Vec<ReplyRecord>, StoreError>;

    /// Puts a `dead` reply back in the queue with a fresh attempt budget. A
    /// reply that may have been sent is looked up before it is sent again,
    /// unless `force`, and no sooner than `look_after` from `now`: its last
    /// create may have left moments before it died.
    async fn requeue(
        &self,
        reply_id: &ReplyId,
        force: bool,
        now: DateTime<Utc>,
        look_after: Duration,
    ) -> Result<Requeued, StoreError>;

    /// How many replies are in each status.
    async fn count_by_status(&self) -> Result<Vec<(Status, i64)>, StoreError>;

    /// Stores a verified Chatwoot event and applies its effect in one
    /// transaction, unless the same delivery or event was stored before.
    async fn record_event(
        &self,
        event: &ChatwootEvent,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError>;

    /// Replies whose channel status is due for reading from Chatwoot, longest
    /// due first (see [`DueReads`]).
    async fn stale_channel_statuses(
        &self,
        due: &DueReads,
    ) -> Result<Vec<StaleChannelStatus>, StoreError>;

    /// Records a read of the channel status of a reply listed by
    /// [`Store::stale_channel_statuses`], and when to read it next. If an
    /// event marked it after `read.since`, it stays marked, since that change
    /// may postdate the read.
    async fn record_channel_status(
        &self,
        reply_id: &ReplyId,
        read: &ChannelRead<'_>,
    ) -> Result<(), StoreError>;

    /// Deletes events received before `before`; returns how many.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The highest Chatwoot message id of a reply in this conversation that
    /// was delivered before `before`: its message existed before any attempt
    /// of a reply accepted at `before`, so a lookup for that reply may start
    /// above it. 0 when there is none.
    async fn message_floor(
        &self,
        account_id: i64,
        conversation_id: i64,
        before: DateTime<Utc>,
    ) -> Result<i64, StoreError>;

    /// The time by the store's clock. Where several instances share the store
    /// (PostgreSQL), leases and due times compare against one clock, the
    /// database's, however far the instances' own clocks drift.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// When the next job becomes due (or its lease runs out), if any job waits.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Queue depth and age.
    async fn queue_stats(&self) -> Result<QueueStats, StoreError>;

    /// Proves the database takes writes: one tiny row written and committed
    /// the way a posted reply is, so a full disk or a broken writer shows.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Reserves the next send slot shared by every instance on this database,
    /// `1 / rate` seconds after the previous one, if it starts no later than
    /// `latest`: a slot taken and then not used would hold every instance back.
    /// `None`: this store serves one process, whose own limiter paces it.
    async fn reserve_send(
        &self,
        _rate: u32,
        _now: DateTime<Utc>,
        _latest: Option<DateTime<Utc>>,
    ) -> Result<Option<SendSlot>, StoreError> {
        Ok(None)
    }

    /// Holds every instance's sends back until `until` (Chatwoot said 429).
    /// A single-process store has nothing to share.
    async fn pause_sends(&self, _until: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(())
    }

    /// One page of the gold dataset, oldest first by `(received_at, reply_id)`:
    /// the replies after `page.after`, received no later than `page.until`.
    async fn export(&self, page: &ExportPage) -> Result<Vec<ExportRecord>, StoreError> {
        self.export_capped(page, usize::MAX).await
    }

    /// [`Store::export`]'s page, ended once its content, drafts, metadata and context
    /// pass `max_bytes` (the first reply is read whatever its size): a short
    /// page is not necessarily the last.
    async fn export_capped(
        &self,
        page: &ExportPage,
        max_bytes: usize,
    ) -> Result<Vec<ExportRecord>, StoreError>;

    /// Wakes `wake` whenever a new job is committed (by any instance, where
    /// several share the store), so the worker need not poll for it.
    fn wake_on_new_jobs(&self, wake: Arc<tokio::sync::Notify>);

    /// Leases up to `limit` replies whose context capture is due (see
    /// [`DueCapture`]), each not handed out again for `lease` unless its
    /// capture is recorded. A store without capture hands out none.
    async fn claim_captures(
        &self,
        _now: DateTime<Utc>,
        _lease: Duration,
        _limit: usize,
    ) -> Result<Vec<DueCapture>, StoreError> {
        Ok(Vec::new())
    }

    /// Records how a capture of a reply's context ended. A posted or
    /// captured context is never replaced.
    async fn record_capture(
        &self,
        _reply_id: &ReplyId,
        _capture: &Capture<'_>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A reply whose conversation context is due for capture: it has none
/// posted, and for `approve_send` its delivery has ended (delivered or dead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCapture {
    pub reply_id: ReplyId,
    pub account_id: i64,
    pub conversation_id: i64,
    /// The reply's own Chatwoot message, once delivered: the turns before it
    /// are read. `None`: the turns Chatwoot held when the reply was accepted.
    pub message_id: Option<i64>,
    /// When the reply was first accepted.
    pub accepted_at: DateTime<Utc>,
    /// Captures tried before this one.
    pub attempts: i64,
}

/// How one capture of a reply's context ended.
#[derive(Debug, Clone, Copy)]
pub enum Capture<'a> {
    /// Read: these turns, oldest first, kept as `captured` at `at`.
    Turns {
        turns: &'a [Turn],
        at: DateTime<Utc>,
    },
    /// Failed (counted, `error` shown on the reply): tried again at `retry_at`,
    /// or never again when `None`.
    Failed {
        error: &'a str,
        retry_at: Option<DateTime<Utc>>,
    },
    /// Not tried (deliveries needed the send rate): due again at `at`, uncounted.
    Later { at: DateTime<Utc> },
}

/// Reads a stored `status`; an unknown one is a decode error, not a panic.
pub(crate) fn status_column(raw: &str) -> Result<Status, sqlx::Error> {
    Status::parse(raw).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "status".into(),
        source: format!("unknown status {raw:?}").into(),
    })
}

/// Reads a stored `reply_id`; one that is not a valid id is a decode error.
pub(crate) fn reply_id_column(raw: &str) -> Result<ReplyId, sqlx::Error> {
    ReplyId::parse(raw).map_err(|problem| sqlx::Error::ColumnDecode {
        index: "reply_id".into(),
        source: format!("stored reply_id {raw:?} {problem}").into(),
    })
}

/// `(status, count)` rows, skipping statuses this build does not know.
pub(crate) fn status_counts(rows: Vec<(String, i64)>) -> Vec<(Status, i64)> {
    rows.into_iter()
        .filter_map(|(s, n)| Status::parse(&s).map(|s| (s, n)))
        .collect()
}

/// Opens the store `url` names and applies its migrations. Refuses a database
/// whose schema is newer than this build knows (sqlx reports the unknown migration).
pub async fn open(url: &DatabaseUrl) -> Result<SharedStore, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// [`open`], tuned.
pub async fn open_with(
    url: &DatabaseUrl,
    options: &StoreOptions,
) -> Result<SharedStore, StoreError> {
    match url.backend() {
        Backend::Postgres => Ok(Arc::new(PostgresStore::open(url.expose(), options).await?)),
        Backend::Sqlite => Ok(Arc::new(SqliteStore::open(url.expose(), options).await?)),
    }
}

/// How a store is run.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The most writes that may wait for the database. Past this a new
    /// write is refused at once ([`StoreError::Overloaded`]: a post gets 503
    /// with Retry-After) rather than queued behind seconds of backlog.
    pub max_waiting_writes: usize,
    /// PostgreSQL's server-side fast paths: a batch of posted replies as one
    /// call of `goldrelay_ingest`, delivered outcomes grouped into one call of
    /// `goldrelay_delivered_many`, a claim as one statement. Off, each write goes through the rules of
    /// `lifecycle.rs` instead, as the fast paths' own fallbacks do; the
    /// conformance suite runs every case both ways and compares the rows.
    /// SQLite has none.
    pub fast_paths: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_waiting_writes: 2048,
            fast_paths: true,
        }
    }
}
