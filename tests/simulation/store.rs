//! The modelled store: goldrelay's delivery state machine (`store/lifecycle.rs`)
//! and its claim rule (`store/sqlite/writer.rs` `claim`, `store/postgres.rs`
//! `claim`), over plain vectors. Every comparison uses the `now` the caller
//! passes, as the SQL does: which clock that is, is the caller's rule.

use crate::model::{Ms, OldRule};
use goldrelay::domain::{ChatwootEvent, Effect, ReplyId, Status};
use goldrelay::store::{Job, Outcome};
use std::collections::BTreeSet;

/// One gold reply as the database holds it.
#[derive(Debug, Clone)]
pub struct Row {
    pub conv: usize,
    pub content: String,
    pub accepted_at: Ms,
    pub status: Status,
    pub attempts: i64,
    pub message_id: Option<i64>,
    pub delivered_at: Option<Ms>,
    pub uncertain: bool,
    pub last_error: Option<String>,
}

/// One delivery job.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub reply: usize,
    pub conv: usize,
    pub seq: u64,
    pub due_at: Ms,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Ms>,
    pub maybe_sent: bool,
}

#[derive(Debug, Default)]
pub struct Store {
    pub replies: Vec<Row>,
    /// Ordered by `seq`: a conversation's head is its first job here.
    pub jobs: Vec<JobRow>,
    next_seq: u64,
    /// `send_pace.next_at`: the next free send slot, pushed forward by a 429.
    pub next_slot: Ms,
    seen_deliveries: BTreeSet<String>,
    seen_keys: BTreeSet<String>,
}

/// What [`Store::reserve_send`] found (`store::SendSlot`).
pub enum Slot {
    Reserved(Ms),
    NotBefore(Ms),
}

pub fn reply_id(idx: usize) -> String {
    format!("gr-{idx}")
}

pub fn reply_idx(id: &str) -> Option<usize> {
    id.strip_prefix("gr-")?.parse().ok()
}

impl Store {
    /// A posted approved reply and its job, due at once.
    pub fn ingest(&mut self, conv: usize, content: String, now: Ms) -> usize {
        let idx = self.replies.len();
        self.replies.push(Row {
            conv,
            content,
            accepted_at: now,
            status: Status::Queued,
            attempts: 0,
            message_id: None,
            delivered_at: None,
            uncertain: false,
            last_error: None,
        });
        self.next_seq += 1;
        self.jobs.push(JobRow {
            reply: idx,
            conv,
            seq: self.next_seq,
            due_at: now,
            lease_owner: None,
            lease_until: None,
            maybe_sent: false,
        });
        idx
    }

    fn is_head(&self, i: usize) -> bool {
        let conv = self.jobs[i].conv;
        self.jobs.iter().position(|j| j.conv == conv) == Some(i)
    }

    fn job_of(&self, reply: usize) -> Option<usize> {
        self.jobs.iter().position(|j| j.reply == reply)
    }

    /// The claim rule: each conversation's head only, due and not leased;
    /// leased until `now + lease`, marked maybe sent, and due again no sooner
    /// than `now + lease + look_after`; the job comes back with the
    /// maybe-sent it had.
    pub fn claim(
        &mut self,
        owner: &str,
        now: Ms,
        lease: Ms,
        look_after: Ms,
        limit: usize,
        old: Option<OldRule>,
    ) -> Vec<(usize, Job)> {
        let mut due: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| {
                let j = &self.jobs[i];
                self.is_head(i) && j.due_at <= now && j.lease_until.is_none_or(|l| l <= now)
            })
            .collect();
        due.sort_by_key(|&i| (self.jobs[i].due_at, self.jobs[i].seq));
        due.truncate(limit);
        let mut claimed = Vec::new();
        for i in due {
            let was_maybe_sent = self.jobs[i].maybe_sent;
            let job = &mut self.jobs[i];
            job.lease_owner = Some(owner.to_owned());
            job.lease_until = Some(now + lease);
            job.maybe_sent = true;
            if old != Some(OldRule::ClaimWithoutLookupDelay) {
                job.due_at = now + lease + look_after;
            }
            let reply = job.reply;
            let row = &mut self.replies[reply];
            row.attempts += 1;
            let accepted = crate::model::at(row.accepted_at);
            claimed.push((
                reply,
                Job {
                    reply_id: ReplyId::parse(&reply_id(reply)).expect("a valid reply id"),
                    account_id: 1,
                    conversation_id: row.conv as i64 + 1,
                    content: row.content.clone(),
                    private: false,
                    liquid: false,
                    attempt: row.attempts,
                    received_at: accepted,
                    accepted_at: accepted,
                    maybe_sent: was_maybe_sent,
                    trace_context: None,
                },
            ));
        }
        claimed
    }

    /// When the next head is due or its lease runs out.
    pub fn next_due(&self) -> Option<Ms> {
        (0..self.jobs.len())
            .filter(|&i| self.is_head(i))
            .map(|i| {
                self.jobs[i]
                    .due_at
                    .max(self.jobs[i].lease_until.unwrap_or(0))
            })
            .min()
    }

    fn remove_job(&mut self, reply: usize, owner: Option<&str>) -> bool {
        let Some(i) = self.job_of(reply) else {
            return false;
        };
        if owner.is_some_and(|o| self.jobs[i].lease_owner.as_deref() != Some(o)) {
            return false;
        }
        self.jobs.remove(i);
        true
    }

    fn reschedule(&mut self, reply: usize, owner: &str, at: Ms, maybe_sent: bool) -> bool {
        let Some(i) = self.job_of(reply) else {
            return false;
        };
        let job = &mut self.jobs[i];
        if job.lease_owner.as_deref() != Some(owner) {
            return false;
        }
        job.due_at = at;
        job.lease_owner = None;
        job.lease_until = None;
        job.maybe_sent = maybe_sent;
        true
    }

    /// `lifecycle::finish`; whether the outcome changed anything.
    pub fn finish(&mut self, reply: usize, owner: &str, outcome: Outcome, now: Ms) -> bool {
        match outcome {
            Outcome::Delivered { message_id } => {
                self.remove_job(reply, None);
                let row = &mut self.replies[reply];
                if row.status != Status::Confirmed {
                    row.status = Status::Delivered;
                }
                row.message_id = Some(message_id);
                row.delivered_at = Some(row.delivered_at.unwrap_or(now));
                row.last_error = None;
                true
            }
            Outcome::Retry {
                at,
                error,
                maybe_sent,
            } => {
                if !self.reschedule(reply, owner, crate::model::ms(at), maybe_sent) {
                    return false;
                }
                self.replies[reply].last_error = Some(error);
                true
            }
            Outcome::Unsent {
                at,
                maybe_sent,
                attempts,
                why,
            } => {
                if !self.reschedule(reply, owner, crate::model::ms(at), maybe_sent) {
                    return false;
                }
                let row = &mut self.replies[reply];
                if let Some(why) = why {
                    row.last_error = Some(why);
                }
                row.attempts = attempts;
                true
            }
            Outcome::Dead { error, maybe_sent } => {
                if !self.remove_job(reply, Some(owner)) {
                    return false;
                }
                let row = &mut self.replies[reply];
                if row.status == Status::Queued {
                    row.status = Status::Dead;
                    row.last_error = Some(error);
                    row.uncertain |= maybe_sent;
                }
                true
            }
        }
    }

    /// The drain of the old code (`release_all`): every job this owner holds
    /// is free again, due as it was (in the past), still maybe sent.
    pub fn release_all(&mut self, owner: &str, now: Ms) {
        for job in &mut self.jobs {
            if job.lease_owner.as_deref() == Some(owner) {
                job.lease_owner = None;
                job.lease_until = None;
                job.due_at = job.due_at.min(now);
            }
        }
    }

    /// `lifecycle::record_event` for a `message_created` echo, after the
    /// webhook handler's `keep_only_ours`.
    pub fn record_event(&mut self, event: &ChatwootEvent, now: Ms) {
        let new_delivery = event
            .delivery_id()
            .is_none_or(|d| !self.seen_deliveries.contains(d));
        if !new_delivery || self.seen_keys.contains(event.dedupe_key()) {
            return;
        }
        if let Some(d) = event.delivery_id() {
            self.seen_deliveries.insert(d.to_owned());
        }
        self.seen_keys.insert(event.dedupe_key().to_owned());
        let Some(Effect::Confirm { reply_id, message }) = event.effect() else {
            return;
        };
        let Some(reply) = reply_idx(reply_id.as_str()).filter(|&r| r < self.replies.len()) else {
            return;
        };
        let row = &self.replies[reply];
        let mismatch = message.account_id != Some(1)
            || message.conversation_id != Some(row.conv as i64 + 1)
            || !message.outgoing
            || row.message_id.is_some_and(|id| id != message.id);
        if !mismatch {
            self.confirm(reply, message.id, now);
        }
    }

    /// `lifecycle::confirm`.
    fn confirm(&mut self, reply: usize, message_id: i64, now: Ms) {
        self.remove_job(reply, None);
        let row = &mut self.replies[reply];
        let other = row.message_id.is_some_and(|id| id != message_id);
        if other
            || !matches!(
                row.status,
                Status::Queued | Status::Delivered | Status::Dead
            )
        {
            return;
        }
        row.status = Status::Confirmed;
        row.message_id = Some(row.message_id.unwrap_or(message_id));
        row.delivered_at = Some(row.delivered_at.unwrap_or(now));
        row.last_error = None;
    }

    /// `Store::message_floor`: the highest message id of a reply of this
    /// conversation delivered before `before`.
    pub fn message_floor(&self, conv: usize, before: Ms) -> i64 {
        self.replies
            .iter()
            .filter(|r| r.conv == conv && r.delivered_at.is_some_and(|d| d < before))
            .filter_map(|r| r.message_id)
            .max()
            .unwrap_or(0)
    }

    /// `Store::reserve_send` on PostgreSQL: one row shared by every instance.
    pub fn reserve_send(&mut self, rate: u32, now: Ms, latest: Option<Ms>) -> Slot {
        let start = self.next_slot.max(now);
        if latest.is_some_and(|l| start > l) {
            return Slot::NotBefore(start);
        }
        self.next_slot = start + 1000 / Ms::from(rate.max(1));
        Slot::Reserved(start)
    }

    /// `Store::pause_sends`: a 429 holds every instance's sends back.
    pub fn pause_sends(&mut self, until: Ms) {
        self.next_slot = self.next_slot.max(until);
    }
}
