//! Finding an earlier attempt's message: what is wanted, the walk over the
//! conversation's message list by id ranges, and which marked messages are impostors.

use super::messages::ListedMessage;
use super::{ChatwootClient, SendError};
use crate::domain::ReplyId;

use serde_json::Value;

/// The most list requests one lookup makes. Each pair reads at least 100
/// messages (see [`ChatwootClient::find_reply`]), so this covers some 25,000
/// messages after the lookup's floor; a busier conversation leaves the lookup
/// uncertain rather than reading without end.
pub const MAX_LOOKUP_PAGES: usize = 500;
/// `after=<id>` alone answers at most this many messages (`messages_after`,
/// `app/finders/message_finder.rb`); fewer means every id above was read.
const AFTER_PAGE: usize = 100;
/// `after` and `before` together answer at most this many (`messages_between`).
const RANGE_PAGE: usize = 1000;

/// What a lookup of an earlier attempt's message concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The message exists: this is its id.
    Found(i64),
    /// Every message above the lookup's floor was read; none is it.
    Absent,
    /// The lookup could not read every message above its floor; the message may exist.
    Uncertain(String),
}

/// What a lookup searches for: a message only goldrelay can have written.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// `content_attributes.gold_reply_id` of the message.
    pub reply_id: &'a ReplyId,
    /// The content Chatwoot stores for it, when known exactly (a reply that is
    /// not rendered as Liquid reads as approved); `None` skips the check.
    pub content: Option<&'a str>,
    /// An id every message of this reply is above: the id of a message that
    /// existed before the reply's first create left (0 when none is known).
    /// Chatwoot's ids come from one sequence, taken at insert.
    pub floor: i64,
}

/// A lookup's conclusion, and the messages that carried the reply's marker
/// without being goldrelay's (another user's, or other content).
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub lookup: Lookup,
    pub impostors: Vec<i64>,
}

impl ChatwootClient {
    /// Looks for the message of `wanted` among every message of the
    /// conversation above `wanted.floor`. `MessageFinder` filters by id but
    /// orders by `created_at` (`app/finders/message_finder.rb`), and the two
    /// can disagree (concurrent inserts, channels that store the provider's
    /// time), so pages are id ranges, never "before the oldest seen":
    /// `after=lo` answers the 100 earliest-created above `lo`; fewer than 100
    /// means every id above `lo` was read. Otherwise the range up to the
    /// highest id seen is read whole with `after`+`before` (up to 1000,
    /// halved while full), and the walk goes on above it. `pace` runs before
    /// every request.
    ///
    /// A message is ours only if it carries the marker, is outgoing, was sent
    /// by goldrelay's own user (any user token may set `content_attributes`),
    /// and holds the expected content when that is known. Others carrying the
    /// marker are impostors: reported, never taken for ours.
    pub async fn find_reply<F, Fut>(
        &self,
        account_id: i64,
        conversation_id: i64,
        wanted: &Wanted<'_>,
        pace: F,
    ) -> Result<Search, SendError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        pace().await;
        let me = self.me().await?;
        let url = self.messages_url(account_id, conversation_id);
        let mut search = Search::absent();
        let mut lo = wanted.floor;
        let mut requests = 1;
        while requests < MAX_LOOKUP_PAGES {
            pace().await;
            requests += 1;
            let page = self.list_page(url.clone(), &[("after", lo)]).await?;
            if let Some(found) = search.sift(&page, wanted, me) {
                return Ok(search.found(found));
            }
            let Some(top) = page.iter().map(|m| m.id).max() else {
                return Ok(search);
            };
            if page.len() < AFTER_PAGE {
                return Ok(search);
            }
            let mut hi = top.saturating_add(1);
            loop {
                if requests >= MAX_LOOKUP_PAGES {
                    break;
                }
                pace().await;
                requests += 1;
                let range = [("after", lo.saturating_add(1)), ("before", hi)];
                let range = self.list_page(url.clone(), &range).await?;
                if range.len() < RANGE_PAGE {
                    if let Some(found) = search.sift(&range, wanted, me) {
                        return Ok(search.found(found));
                    }
                    lo = hi.saturating_sub(1);
                    break;
                }
                // More than 1000 messages in (lo, hi): read half the range.
                let half = lo.saturating_add(1).saturating_add((hi - lo - 1) / 2);
                if half <= lo.saturating_add(1) {
                    return Ok(search.uncertain("1000 messages share one id".into()));
                }
                hi = half;
            }
        }
        Ok(search.out_of_requests())
    }
}

impl Search {
    /// The id of our message in `page`, noting every impostor on the way.
    fn sift(&mut self, page: &[ListedMessage], wanted: &Wanted<'_>, me: i64) -> Option<i64> {
        let marked = page.iter().filter(|m| {
            m.content_attributes
                .get("gold_reply_id")
                .and_then(Value::as_str)
                == Some(wanted.reply_id.as_str())
        });
        for message in marked {
            if is_ours(message, wanted, me) {
                return Some(message.id);
            }
            if !self.impostors.contains(&message.id) {
                self.impostors.push(message.id);
            }
        }
        None
    }

    fn uncertain(mut self, why: String) -> Self {
        self.lookup = Lookup::Uncertain(why);
        self
    }

    /// Nothing read yet: absent until a page says otherwise.
    fn absent() -> Self {
        Search {
            lookup: Lookup::Absent,
            impostors: Vec::new(),
        }
    }

    fn found(mut self, id: i64) -> Self {
        self.lookup = Lookup::Found(id);
        self
    }

    /// [`MAX_LOOKUP_PAGES`] requests made without reading every message.
    fn out_of_requests(self) -> Self {
        self.uncertain(format!(
            "the lookup made {MAX_LOOKUP_PAGES} requests without reading every message \
             since the reply's first attempt"
        ))
    }
}

/// Outgoing (`message_type` 1), from goldrelay's own user, with the content
/// expected when it is known.
fn is_ours(message: &ListedMessage, wanted: &Wanted<'_>, me: i64) -> bool {
    let from_me = message.sender["type"] == "user" && message.sender["id"].as_i64() == Some(me);
    let content = wanted
        .content
        .is_none_or(|expected| message.content.as_deref() == Some(expected));
    message.message_type == Some(1) && from_me && content
}
