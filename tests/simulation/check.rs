//! The invariants: what must hold after every step, and when a run ends.

use crate::chatwoot::{Msg, Sender};
use crate::model::World;
use goldrelay::domain::Status;

/// goldrelay's messages for `reply`: from its own user, carrying the marker
/// and the approved text.
fn sent(w: &World, reply: usize) -> Vec<&Msg> {
    let row = &w.store.replies[reply];
    w.chatwoot
        .msgs
        .iter()
        .filter(|m| {
            m.sender == Sender::Relay
                && m.conv == row.conv
                && m.marker == Some(reply)
                && m.content == row.content
        })
        .collect()
}

/// After every step: at most once, in order, every recorded message id the
/// reply's real message, and "uncertain" only where something was unknowable.
pub fn always(w: &World) -> Result<(), String> {
    for reply in 0..w.store.replies.len() {
        let copies = sent(w, reply);
        if copies.len() > 1 {
            let ids: Vec<i64> = copies.iter().map(|m| m.id).collect();
            return Err(format!(
                "reply {reply} is in its conversation {} times: {ids:?}",
                ids.len()
            ));
        }
        let row = &w.store.replies[reply];
        if let Some(id) = row.message_id {
            if copies.first().map(|m| m.id) != Some(id) {
                return Err(format!(
                    "reply {reply} is recorded as message {id}, which is not its message ({:?})",
                    copies.first().map(|m| m.id)
                ));
            }
        }
        let doubt = &w.doubts[reply];
        if row.status == Status::Dead && row.uncertain && !doubt.create_left && !doubt.outcome_lost
        {
            return Err(format!(
                "reply {reply} is dead as uncertain although no create of it ever left and \
                 every outcome was recorded: {:?}",
                row.last_error
            ));
        }
    }
    in_order(w)
}

/// goldrelay's messages appear in each conversation in the order their
/// replies were accepted; a reply that went dead may land out of order.
fn in_order(w: &World) -> Result<(), String> {
    let mut last: Vec<Option<(usize, i64)>> = vec![None; 64];
    for m in &w.chatwoot.msgs {
        let Some(reply) = m.marker else { continue };
        if m.sender != Sender::Relay || w.ever_dead.contains(&reply) {
            continue;
        }
        if let Some((before, id)) = last[m.conv] {
            if before > reply {
                return Err(format!(
                    "conversation {}: reply {reply} (message {}) landed after reply {before} \
                     (message {id}), which was accepted later",
                    m.conv, m.id
                ));
            }
        }
        last[m.conv] = Some((reply, m.id));
    }
    Ok(())
}

/// When the run is over: every reply is in Chatwoot exactly once, or dead
/// with a reason (and then absent, or dead as uncertain).
pub fn at_end(w: &World) -> Result<(), String> {
    always(w)?;
    for (reply, row) in w.store.replies.iter().enumerate() {
        let copies = sent(w, reply).len();
        let why = row.last_error.as_deref().unwrap_or("");
        match row.status {
            Status::Delivered | Status::Confirmed if copies == 1 => {}
            Status::Delivered | Status::Confirmed => {
                return Err(format!(
                    "reply {reply} is {} but Chatwoot holds it {copies} times",
                    row.status.as_str()
                ))
            }
            Status::Dead if why.is_empty() => {
                return Err(format!("reply {reply} is dead without a reason"))
            }
            Status::Dead if copies == 0 || row.uncertain => {}
            Status::Dead => {
                return Err(format!(
                    "reply {reply} is dead, not as uncertain ({why}), but Chatwoot holds it"
                ))
            }
            other => {
                return Err(format!(
                    "reply {reply} is still {} when the run ends",
                    other.as_str()
                ))
            }
        }
    }
    Ok(())
}
