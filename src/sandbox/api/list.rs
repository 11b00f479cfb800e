//! `GET …/messages`: `MessageFinder`'s pages of a conversation, with the
//! list-only faults.

use super::{authorize, error, injected, throttle};
use crate::sandbox::{Caller, Message, Shared};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// `MessageFinder`'s params; Rails reads them with `.present?` and `.to_i`.
#[derive(Deserialize)]
pub(super) struct ListQuery {
    before: Option<String>,
    after: Option<String>,
    filter_internal_messages: Option<String>,
}

pub(super) async fn list(
    req: HttpRequest,
    path: web::Path<(i64, i64)>,
    query: web::Query<ListQuery>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Some(throttled) = throttle(&shared, &req) {
        return throttled;
    }
    let (account_id, conversation_id) = path.into_inner();
    match authorize(&shared, &req, (account_id, conversation_id)) {
        Ok(Caller::User | Caller::Agent) => {}
        Ok(Caller::Bot) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "Access to this endpoint is not authorized for bots",
            )
        }
        Err(refusal) => return refusal.into_response(),
    }
    let (failure, delay) = list_fault(&shared, &req, conversation_id);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(response) = failure {
        return response;
    }
    if let Some(response) = injected(&shared).await {
        return response;
    }
    let state = shared.lock();
    let internal = present(&query.filter_internal_messages).is_some();
    let all: Vec<&Message> = state
        .messages
        .iter()
        .filter(|m| m.account_id == account_id && m.conversation_id == conversation_id)
        .filter(|m| !internal || !(m.private || m.message_type == 2))
        .collect();
    let page: Vec<Value> = find(all, &query)
        .into_iter()
        .map(Message::rest_json)
        .collect();
    HttpResponse::Ok().json(json!({
        "meta": {
            "labels": [], "additional_attributes": {}, "contact": crate::sandbox::contact(),
            "agent_last_seen_at": null, "assignee_last_seen_at": null,
        },
        "payload": page,
    }))
}

/// Counts and logs a list request; returns a list-only failure to answer
/// instead, if any, and how long to wait first.
fn list_fault(
    shared: &Shared,
    req: &HttpRequest,
    conversation_id: i64,
) -> (Option<HttpResponse>, u64) {
    let mut state = shared.lock();
    state.lists += 1;
    state.list_log.push(crate::sandbox::ListSeen {
        at_ms: Utc::now().timestamp_millis(),
        conversation_id,
        query: req.query_string().to_owned(),
    });
    let f = &mut state.faults;
    let delay = f.list_delay_ms;
    if f.fail_lists_next == 0 {
        return (None, delay);
    }
    f.fail_lists_next -= 1;
    let status = f.fail_status.and_then(|s| StatusCode::from_u16(s).ok());
    let status = status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let page = HttpResponse::build(status)
        .content_type("text/html")
        .body("<html><body>Service Unavailable</body></html>");
    (Some(page), delay)
}

/// `app/finders/message_finder.rb`: filters by id, orders by `created_at`
/// (ties by id), and returns each page ascending. No params: the latest 20
/// by `created_at`; `before`: the latest 20 of `id < before`; `after`: the
/// first 100 by `created_at` of `id > after`; both: the first 1000 of
/// `after <= id < before`.
fn find<'a>(mut all: Vec<&'a Message>, query: &ListQuery) -> Vec<&'a Message> {
    all.sort_by_key(|m| (m.created, m.id));
    let before = present(&query.before).map(to_i);
    let after = present(&query.after).map(to_i);
    match (after, before) {
        (Some(a), Some(b)) => first(all, |m| m.id >= a && m.id < b, 1000),
        (Some(a), None) => first(all, |m| m.id > a, 100),
        (None, Some(b)) => latest(all.into_iter().filter(|m| m.id < b).collect()),
        (None, None) => latest(all),
    }
}

fn first(sorted: Vec<&Message>, keep: impl Fn(&Message) -> bool, limit: usize) -> Vec<&Message> {
    sorted.into_iter().filter(|m| keep(m)).take(limit).collect()
}

fn latest(messages: Vec<&Message>) -> Vec<&Message> {
    let skip = messages.len().saturating_sub(20);
    messages.into_iter().skip(skip).collect()
}

fn present(param: &Option<String>) -> Option<&str> {
    param.as_deref().filter(|p| !p.trim().is_empty())
}

/// Ruby's `String#to_i`: the leading integer, or 0.
fn to_i(text: &str) -> i64 {
    let text = text.trim_start();
    let digits = text
        .char_indices()
        .take_while(|(i, c)| c.is_ascii_digit() || (*i == 0 && (*c == '-' || *c == '+')))
        .count();
    text[..digits].parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::to_i;

    #[test]
    fn params_are_read_like_ruby_to_i() {
        assert_eq!(to_i("42"), 42);
        assert_eq!(to_i(" 7abc"), 7);
        assert_eq!(to_i("abc"), 0);
        assert_eq!(to_i("-3"), -3);
    }
}
