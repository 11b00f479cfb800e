//! The checks against goldrelay.

use super::{secs, Outcome, Run, SmokeReply};
use crate::http::{Answer, REQUEST_TIMEOUT};
use crate::progress::Progress;
use crate::relay::Credential;
use chrono::DateTime;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Between health attempts while a deploy comes up.
const HEALTH_PAUSE: Duration = Duration::from_millis(500);
/// Between status reads while the worker delivers.
const POLL_PAUSE: Duration = Duration::from_millis(100);

/// `relay.health`: `GET /hc` answers 200 with `status: "ok"`, retried until `--wait` runs out.
pub async fn health(run: &mut Run, progress: &Progress) -> Outcome {
    let deadline = Instant::now() + run.wait;
    loop {
        let problem = match run.relay.health(attempt_timeout(deadline)).await {
            Ok(answer) if answer.status == StatusCode::OK && answer.json["status"] == "ok" => {
                return Ok(healthy(&answer.json));
            }
            Ok(answer) => format!("/hc answered {}", unhealthy(&answer)),
            Err(e) => format!("could not reach goldrelay: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(format!("{problem} (gave up after {})", secs(run.wait)));
        }
        progress.set(problem);
        pause(HEALTH_PAUSE, deadline).await;
    }
}

/// `relay.auth`: posts without a token and with a wrong one are both refused with 401.
/// The body is invalid on purpose: if authentication were off, nothing gets stored.
pub async fn auth(run: &mut Run) -> Outcome {
    for (credential, how) in [
        (Credential::None, "without a token"),
        (Credential::Wrong, "with a wrong token"),
    ] {
        let answer = run
            .relay
            .post_reply(&json!({}), credential)
            .await
            .map_err(|e| format!("a post {how} got no answer: {e}"))?;
        if answer.status != StatusCode::UNAUTHORIZED {
            let verdict = if answer.status == StatusCode::UNPROCESSABLE_ENTITY {
                ": goldrelay is not checking tokens"
            } else {
                ""
            };
            return Err(format!(
                "a post {how} answered {} instead of 401{verdict}",
                answer.summary()
            ));
        }
    }
    Ok("posts without a token and with a wrong token were both refused with 401".into())
}

/// `relay.validation`: an invalid gold reply is refused with 422.
pub async fn validation(run: &mut Run) -> Outcome {
    let invalid = json!({
        "reply_id": "smoke invalid id!",
        "account_id": 0,
        "conversation_id": 0,
        "action": "smoke",
        "content": "",
    });
    let answer = run
        .relay
        .post_reply(&invalid, Credential::Real)
        .await
        .map_err(|e| format!("the invalid reply got no answer: {e}"))?;
    match answer.status {
        StatusCode::UNPROCESSABLE_ENTITY => Ok(format!(
            "an invalid reply was refused with 422 naming {}",
            fields(&answer.json)
        )),
        StatusCode::UNAUTHORIZED => Err(token_refused(&answer)),
        _ => Err(format!(
            "an invalid reply answered {} instead of 422",
            answer.summary()
        )),
    }
}

/// `relay.delivery`: the smoke reply is accepted with 202, then delivered
/// (or confirmed) within `--timeout`; `dead` fails with goldrelay's reason.
pub async fn delivery(run: &mut Run, progress: &Progress) -> Outcome {
    let Some(smoke) = &run.smoke else {
        return Err("needs --account-id and --conversation-id".into());
    };
    let answer = run
        .relay
        .post_traced(&smoke.body, &smoke.traceparent())
        .await
        .map_err(|e| format!("the smoke reply got no answer: {e}"))?;
    match answer.status {
        StatusCode::ACCEPTED => run.accepted = true,
        StatusCode::UNAUTHORIZED => return Err(token_refused(&answer)),
        StatusCode::OK => {
            return Err(
                "goldrelay already knew this reply_id (200): the smoke reply was not new".into(),
            )
        }
        _ => {
            return Err(format!(
                "the smoke reply answered {} instead of 202",
                answer.summary()
            ))
        }
    }
    await_delivery(run, progress).await
}

/// `relay.idempotency`: the same reply again answers 200 with the stored record.
pub async fn idempotency(run: &mut Run) -> Outcome {
    let Some(smoke) = run.smoke.as_ref().filter(|_| run.accepted) else {
        return Err(format!(
            "not proven: the smoke reply was never accepted ({})",
            run.delivery_failure()
        ));
    };
    let answer = run
        .relay
        .post_reply(&smoke.body, Credential::Real)
        .await
        .map_err(|e| format!("the repeated reply got no answer: {e}"))?;
    match answer.status {
        StatusCode::OK => same_record(&answer.json, smoke, run.message_id),
        StatusCode::ACCEPTED => {
            Err("the repeat was stored as a new reply (202): it would be delivered twice".into())
        }
        StatusCode::UNAUTHORIZED => Err(token_refused(&answer)),
        _ => Err(format!(
            "the repeated reply answered {} instead of 200",
            answer.summary()
        )),
    }
}

/// The repeat's record must be the first one, with nothing queued again.
fn same_record(record: &Value, smoke: &SmokeReply, message_id: Option<i64>) -> Outcome {
    let status = record["status"].as_str().unwrap_or("unknown");
    let recorded_message = record["chatwoot_message_id"].as_i64();
    if record["reply_id"] != smoke.id.as_str() {
        return Err(format!(
            "the repeat answered 200 with another reply's record: {}",
            record["reply_id"]
        ));
    }
    if message_id.is_some() && (recorded_message != message_id || status == "queued") {
        return Err(format!(
            "the repeat changed the delivered record: now {status}, Chatwoot message {}",
            show(recorded_message)
        ));
    }
    Ok(format!(
        "the same reply again answered 200 with the stored record ({status}, Chatwoot message {}); nothing new was queued",
        show(recorded_message)
    ))
}

/// Polls the status record until the goal, `dead`, or the deadline.
async fn await_delivery(run: &mut Run, progress: &Progress) -> Outcome {
    let goal = if run.expect_confirmation {
        "confirmed"
    } else {
        "delivered"
    };
    let (id, private) = match &run.smoke {
        Some(smoke) => (smoke.id.clone(), smoke.private),
        None => return Err("no smoke reply to follow".into()),
    };
    let deadline = Instant::now() + run.timeout;
    loop {
        let last = match run.relay.reply(&id, attempt_timeout(deadline)).await {
            Ok(answer) if answer.status == StatusCode::OK => {
                note(run, &answer.json);
                if let Some(outcome) = settled(&answer.json, goal, private) {
                    return outcome;
                }
                pending(&answer.json)
            }
            Ok(answer) => format!("reading its status answered {}", answer.summary()),
            Err(e) => format!("reading its status failed: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(format!("not {goal} within {}: {last}", secs(run.timeout)));
        }
        progress.set(last);
        pause(POLL_PAUSE, deadline).await;
    }
}

/// Keeps what later checks need from a status record.
fn note(run: &mut Run, record: &Value) {
    run.message_id = record["chatwoot_message_id"].as_i64().or(run.message_id);
    run.received_at = timestamp(record, "received_at").or(run.received_at);
}

/// `Some` once the record will not change in a way that matters.
fn settled(record: &Value, goal: &str, private: bool) -> Option<Outcome> {
    let status = record["status"].as_str().unwrap_or("unknown");
    let reached = status == goal || (goal == "delivered" && status == "confirmed");
    if reached {
        return Some(Ok(arrived(record, goal, private)));
    }
    match status {
        "dead" => Some(Err(format!(
            "the reply went dead after {}: {}",
            attempts(record),
            record["last_error"]
                .as_str()
                .unwrap_or("goldrelay gave no reason")
        ))),
        "recorded" => Some(Err(
            "goldrelay recorded the reply without sending it (status recorded)".into(),
        )),
        _ => None,
    }
}

/// `delivered as Chatwoot message 42 (private note) 0.31s after the 202, 1 attempt`
fn arrived(record: &Value, goal: &str, private: bool) -> String {
    let kind = if private {
        "private note"
    } else {
        "public message"
    };
    let message = show(record["chatwoot_message_id"].as_i64());
    let from = timestamp_ms(record, "received_at");
    let to = timestamp_ms(record, &format!("{goal}_at"));
    let lag = match from.zip(to) {
        Some((from, to)) => format!(" {:.2}s after the 202,", (to - from) as f64 / 1000.0),
        None => ",".into(),
    };
    format!(
        "{goal} as Chatwoot message {message} ({kind}){lag} {}",
        attempts(record)
    )
}

/// What the reply is waiting for, for the spinner and the timeout message.
fn pending(record: &Value) -> String {
    let status = record["status"].as_str().unwrap_or("unknown");
    let mut line = format!("still {status} after {}", attempts(record));
    if status == "delivered" {
        line.push_str(" (no confirmation from Chatwoot's webhook yet)");
    }
    if let Some(error) = record["last_error"].as_str() {
        line.push_str(&format!("; last error: {error}"));
    }
    line
}

fn attempts(record: &Value) -> String {
    match record["attempts"].as_i64().unwrap_or(0) {
        1 => "1 attempt".into(),
        n => format!("{n} attempts"),
    }
}

fn healthy(body: &Value) -> String {
    format!(
        "ok: goldrelay {}, store {}, worker {}",
        body["version"].as_str().unwrap_or("(no version)"),
        body["store"]["status"].as_str().unwrap_or("?"),
        body["worker"]["status"].as_str().unwrap_or("?"),
    )
}

fn unhealthy(answer: &Answer) -> String {
    if answer.json["status"].is_string() {
        format!(
            "{} with status {}, store {}, worker {}",
            answer.status.as_u16(),
            answer.json["status"].as_str().unwrap_or("?"),
            answer.json["store"]["status"].as_str().unwrap_or("?"),
            answer.json["worker"]["status"].as_str().unwrap_or("?"),
        )
    } else {
        answer.summary()
    }
}

/// The fields a 422 names: `reply_id, account_id, …`.
fn fields(problem: &Value) -> String {
    let names: Vec<&str> = problem["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "no fields".into()
    } else {
        names.join(", ")
    }
}

fn token_refused(answer: &Answer) -> String {
    format!(
        "goldrelay refused the token with 401 ({}): check --token / SMOKE_TOKEN",
        answer.reason()
    )
}

fn show(id: Option<i64>) -> String {
    id.map_or_else(|| "(none)".into(), |id| id.to_string())
}

/// Sleeps `pause`, but wakes for one last attempt at the deadline.
async fn pause(pause: Duration, deadline: Instant) {
    sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
}

/// Each attempt gets what is left of the deadline, within sane bounds.
fn attempt_timeout(deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    left.clamp(Duration::from_secs(1), REQUEST_TIMEOUT)
}

fn timestamp_ms(record: &Value, field: &str) -> Option<i64> {
    let raw = record[field].as_str()?;
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn timestamp(record: &Value, field: &str) -> Option<i64> {
    timestamp_ms(record, field).map(|ms| ms / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_reply_settles_as_a_failure_with_goldrelays_reason() {
        let record =
            json!({"status": "dead", "attempts": 1, "last_error": "Chatwoot answered 404"});
        let outcome = settled(&record, "delivered", true).expect("settled");
        assert_eq!(
            outcome,
            Err("the reply went dead after 1 attempt: Chatwoot answered 404".into())
        );
    }

    #[test]
    fn a_delivered_reply_does_not_settle_while_confirmation_is_expected() {
        let record = json!({"status": "delivered", "attempts": 1});
        assert!(settled(&record, "confirmed", true).is_none());
        assert!(settled(&record, "delivered", true).is_some());
    }

    #[test]
    fn the_delivery_detail_names_the_message_and_the_lag() {
        let record = json!({
            "status": "delivered", "attempts": 1, "chatwoot_message_id": 42,
            "received_at": "2025-01-01T00:00:00.000Z", "delivered_at": "2025-01-01T00:00:00.250Z",
        });
        assert_eq!(
            arrived(&record, "delivered", true),
            "delivered as Chatwoot message 42 (private note) 0.25s after the 202, 1 attempt"
        );
    }
}
