//! The gold dataset as JSON Lines: every decision, oldest first, each line
//! carrying the cursor that resumes the export right after it.

use super::{Cursor, SharedStore, StoreError};
use crate::domain::{Action, ChannelStatus, ReplyId, Status, Turn};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, Stream, TryStreamExt};
use serde::Serialize;
use std::time::Duration;

/// Rows read per query at most.
const EXPORT_PAGE_ROWS: usize = 500;

/// Bytes of content, drafts, metadata and context read per query at most (past the
/// first reply, which is read whatever its size): rows alone bound nothing
/// when each is a quarter of a megabyte. A request holds about one page,
/// read and serialized, so this is what a reader of the dataset costs.
pub const EXPORT_PAGE_BYTES: usize = 256 * 1024;

/// How far behind the present an export stops. A reply's `received_at` is
/// taken before its transaction commits, so a reply stamped a moment ago may
/// still appear behind a cursor already handed out; none takes this long.
pub const EXPORT_SETTLE: Duration = Duration::from_secs(60);

/// Which page of the gold dataset [`Store::export`] reads.
#[derive(Debug, Clone)]
pub struct ExportPage {
    /// Continue after this reply (the previous page's last one).
    pub after: Option<Cursor>,
    /// Only replies received at or before this time: later ones may still be
    /// committing, and one committed behind the cursor would be skipped forever.
    pub until: DateTime<Utc>,
    /// Only this `(account_id, conversation_id)`, for the console.
    pub conversation: Option<(i64, i64)>,
    /// Only this account, for a token bound to it.
    pub account: Option<i64>,
    pub limit: usize,
}

/// One decision as the data team receives it: what was drafted, what was
/// decided, by whom, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportRecord {
    pub reply_id: ReplyId,
    pub account_id: i64,
    pub conversation_id: i64,
    pub action: Action,
    pub content: String,
    pub private: bool,
    pub draft: Option<serde_json::Value>,
    pub approved_by: Option<String>,
    pub tags: serde_json::Value,
    pub metadata: Option<serde_json::Value>,
    pub received_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub status: Status,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub chatwoot_message_id: Option<i64>,
    pub channel_status: Option<ChannelStatus>,
    pub channel_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// An attempt may have created the message; a retry looks for it first.
    pub uncertain: bool,
    /// The conversation turns the reply answered, oldest first: posted with
    /// it or captured from Chatwoot; `None` while neither happened.
    pub context: Option<Vec<Turn>>,
    /// `posted` or `captured`; `None` while there is no context.
    pub context_source: Option<String>,
    /// When a captured context was read from Chatwoot.
    pub context_captured_at: Option<DateTime<Utc>>,
}

/// The columns an export selects, in both backends.
const EXPORT_COLUMNS: &str = "reply_id, account_id, conversation_id, action, content, private, \
     draft, approved_by, tags, metadata, received_at, delivered_at, confirmed_at, status, \
     attempts, last_error, chatwoot_message_id, channel_status, channel_error, next_attempt_at, \
     uncertain, context, context_source, context_captured_at";

/// One line of the export: the record, and where to resume after it.
#[derive(Serialize)]
struct ExportLine<'a> {
    cursor: String,
    #[serde(flatten)]
    record: &'a ExportRecord,
}

/// A page cut by bytes: `sized` selects `reply_id, received_at, size` of
/// the page's rows (at most its limit, in order), and the page keeps each
/// row while the bytes before it stay under the bind `budget`, so the first
/// row always. Only sizes are read past the cut; the kept rows are read whole.
pub(super) fn capped_page_sql(sized: &str, budget: &str) -> String {
    format!(
        "WITH sized AS ({sized}), \
         kept AS (SELECT reply_id FROM (SELECT reply_id, SUM(size) OVER \
         (ORDER BY received_at, reply_id ROWS UNBOUNDED PRECEDING) - size AS before \
         FROM sized) AS running WHERE before < {budget}) \
         SELECT {EXPORT_COLUMNS} FROM gold_replies \
         WHERE reply_id IN (SELECT reply_id FROM kept) ORDER BY received_at, reply_id"
    )
}

impl ExportPage {
    /// The `AND …` that narrows the page to its account and conversation,
    /// written out (integers only, no `? IS NULL OR …`) so each backend's
    /// planner can use the conversation's index.
    pub(super) fn narrowing(&self) -> String {
        let mut sql = String::new();
        if let Some((account, conversation)) = self.conversation {
            sql += &format!(" AND account_id = {account} AND conversation_id = {conversation}");
        }
        if let Some(account) = self.account {
            sql += &format!(" AND account_id = {account}");
        }
        sql
    }
}

impl ExportRecord {
    fn cursor(&self) -> Cursor {
        Cursor {
            received_at: self.received_at,
            reply_id: self.reply_id.clone(),
        }
    }
}

/// The export after `after` (of one account only, if `account`), one chunk
/// of lines per page read from the store. It ends at the first error:
/// whatever was written resumes from its last line.
pub fn export_lines(
    store: SharedStore,
    after: Option<Cursor>,
    account: Option<i64>,
    now: DateTime<Utc>,
) -> impl Stream<Item = Result<String, StoreError>> {
    let first = ExportPage {
        after,
        until: now - EXPORT_SETTLE,
        conversation: None,
        account,
        limit: EXPORT_PAGE_ROWS,
    };
    export_pages(store, first).map_ok(render)
}

/// `first` and the pages after it, each at most `first.limit` rows and
/// about [`EXPORT_PAGE_BYTES`], until one comes back empty: a page cut by its
/// bytes is short without being the last. Each page is read only when the
/// previous one has been taken, so a reader holds one page at a time.
pub fn export_pages(
    store: SharedStore,
    first: ExportPage,
) -> impl Stream<Item = Result<Vec<ExportRecord>, StoreError>> {
    stream::try_unfold(Some(first), move |page| {
        let store = store.clone();
        async move {
            let Some(page) = page else {
                return Ok(None);
            };
            let records = store.export_capped(&page, EXPORT_PAGE_BYTES).await?;
            let Some(last) = records.last().map(ExportRecord::cursor) else {
                return Ok(None);
            };
            let next = ExportPage {
                after: Some(last),
                ..page
            };
            Ok(Some((records, Some(next))))
        }
    })
}

/// A page's lines; each record goes once written, so the page is not
/// held twice.
fn render(records: Vec<ExportRecord>) -> String {
    let mut chunk = String::new();
    for record in records {
        let line = ExportLine {
            cursor: record.cursor().encode(),
            record: &record,
        };
        // A record of strings, numbers and parsed JSON always serializes.
        chunk.push_str(&serde_json::to_string(&line).unwrap_or_default());
        chunk.push('\n');
    }
    chunk
}
