//! The checks against Chatwoot itself.

use super::{Outcome, Run, SmokeReply};
use crate::chatwoot::Chatwoot;
use crate::http::Answer;
use crate::progress::Progress;
use reqwest::StatusCode;
use serde_json::Value;

/// Chatwoot's page size when listing messages.
const PAGE: usize = 20;
/// How far back `chatwoot.message` pages: 200 messages is plenty for a smoke conversation.
const MAX_PAGES: usize = 10;
/// Slack for the two servers' clocks when deciding that older pages cannot hold a copy.
const CLOCK_SLACK_SECS: i64 = 300;

/// `chatwoot.health`: `/health` answers `woot`; on versions without it, `/api`
/// must report its data and queue services `ok` (it answers 200 either way).
pub async fn health(run: &mut Run) -> Outcome {
    let chatwoot = client(run)?;
    let answer = chatwoot
        .health()
        .await
        .map_err(|e| format!("could not reach Chatwoot: {e}"))?;
    match answer.status {
        StatusCode::OK if answer.json["status"] == "woot" => Ok("/health answered woot".into()),
        StatusCode::NOT_FOUND => {
            let info = chatwoot
                .api_info()
                .await
                .map_err(|e| format!("could not reach Chatwoot's /api: {e}"))?;
            services(&info)
        }
        _ => Err(format!(
            "/health answered {} instead of 200 woot",
            answer.summary()
        )),
    }
}

/// `chatwoot.message`: the conversation holds exactly one message carrying the
/// smoke reply's id, and it is the one goldrelay recorded.
pub async fn message(run: &mut Run, progress: &Progress) -> Outcome {
    let (Some(smoke), Some(message_id)) = (&run.smoke, run.message_id) else {
        return Err(format!(
            "not proven: the smoke reply never reached Chatwoot ({})",
            run.delivery_failure()
        ));
    };
    progress.set("reading the conversation");
    let (copies, scanned) = copies(client(run)?, smoke, run.received_at).await?;
    let conversation = smoke.conversation_id;
    match copies.as_slice() {
        [] => Err(format!(
            "none of the latest {scanned} messages of conversation {conversation} carries gold_reply_id {}",
            smoke.id
        )),
        [copy] if copy.id != message_id => Err(format!(
            "the message carrying gold_reply_id is {}, but goldrelay recorded {message_id}",
            copy.id
        )),
        [copy] if smoke.private && !copy.private => Err(format!(
            "message {message_id} is public although the smoke reply asked for a private note"
        )),
        [_] => Ok(format!(
            "conversation {conversation} holds exactly one message with gold_reply_id {}: message {message_id}",
            smoke.id
        )),
        many => Err(format!(
            "{} messages carry gold_reply_id {} (ids {}): delivered more than once",
            many.len(),
            smoke.id,
            many.iter().map(|c| c.id.to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// One message that carries the smoke reply's id.
struct Found {
    id: i64,
    private: bool,
}

/// Pages back through the conversation until no older message can be a copy.
async fn copies(
    chatwoot: &Chatwoot,
    smoke: &SmokeReply,
    received_at: Option<i64>,
) -> Result<(Vec<Found>, usize), String> {
    let oldest_possible = received_at.map(|t| t - CLOCK_SLACK_SECS);
    let (mut found, mut scanned, mut before) = (Vec::new(), 0, None);
    for _ in 0..MAX_PAGES {
        let page = page(chatwoot, smoke, before).await?;
        scanned += page.len();
        found.extend(page.iter().filter_map(|m| copy(m, &smoke.id)));
        let oldest = page.first();
        let older_cannot_match = oldest
            .and_then(|m| m["created_at"].as_i64())
            .zip(oldest_possible)
            .is_some_and(|(created, limit)| created < limit);
        before = oldest.and_then(|m| m["id"].as_i64());
        if page.len() < PAGE || older_cannot_match || before.is_none() {
            break;
        }
    }
    Ok((found, scanned))
}

async fn page(
    chatwoot: &Chatwoot,
    smoke: &SmokeReply,
    before: Option<i64>,
) -> Result<Vec<Value>, String> {
    let answer = chatwoot
        .messages(smoke.account_id, smoke.conversation_id, before)
        .await
        .map_err(|e| format!("could not reach Chatwoot: {e}"))?;
    if answer.status != StatusCode::OK {
        return Err(refused(&answer));
    }
    match answer.json["payload"].as_array() {
        Some(messages) => Ok(messages.clone()),
        None => Err("Chatwoot's message list has no payload".into()),
    }
}

fn copy(message: &Value, reply_id: &str) -> Option<Found> {
    (message["content_attributes"]["gold_reply_id"] == reply_id).then(|| Found {
        id: message["id"].as_i64().unwrap_or(0),
        private: message["private"] == true,
    })
}

/// Judges `/api`, which answers 200 even when its services are failing.
fn services(info: &Answer) -> Outcome {
    if info.status != StatusCode::OK {
        return Err(format!(
            "/health is missing and /api answered {}",
            info.summary()
        ));
    }
    let data = info.json["data_services"].as_str().unwrap_or("missing");
    let queue = info.json["queue_services"].as_str().unwrap_or("missing");
    let version = info.json["version"]
        .as_str()
        .unwrap_or("of unknown version");
    if data == "ok" && queue == "ok" {
        Ok(format!(
            "Chatwoot {version} (no /health): /api reports data and queue services ok"
        ))
    } else {
        Err(format!(
            "Chatwoot {version}: /api reports data_services {data}, queue_services {queue}"
        ))
    }
}

/// Chatwoot's refusal, with the likely fix.
fn refused(answer: &Answer) -> String {
    let hint = match answer.status {
        StatusCode::UNAUTHORIZED => {
            ": check --chatwoot-token (a user access token; agent-bot tokens cannot list messages)"
        }
        StatusCode::NOT_FOUND => ": check --account-id and --conversation-id",
        _ => "",
    };
    format!(
        "listing the conversation's messages answered {}{hint}",
        answer.summary()
    )
}

fn client(run: &Run) -> Result<&Chatwoot, String> {
    run.chatwoot
        .as_ref()
        .ok_or_else(|| "needs --chatwoot-url".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(json: Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            json,
            snippet: String::new(),
        }
    }

    #[test]
    fn an_older_chatwoot_passes_when_api_reports_both_services_ok() {
        let info = api(json!({"version": "3.9.0", "data_services": "ok", "queue_services": "ok"}));
        assert!(services(&info).is_ok());
    }

    #[test]
    fn a_200_from_api_with_a_failing_service_fails() {
        let info =
            api(json!({"version": "3.9.0", "data_services": "failing", "queue_services": "ok"}));
        assert_eq!(
            services(&info),
            Err("Chatwoot 3.9.0: /api reports data_services failing, queue_services ok".into())
        );
    }
}
