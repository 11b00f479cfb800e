//! Exactly once against a harsh Chatwoot: a create that may have happened is
//! looked up, after a wait long enough for a late commit, however far back
//! the lookup must page; a lookup that cannot conclude never sends again.

use crate::helpers::{creates_of, reply, spawn_app_with, wait_for_create, TestApp, PATIENCE};
use goldrelay::sandbox::{Faults, SandboxConfig};
use serde_json::{json, Value};
use std::time::Duration;

/// The record's `last_error`, which must be set.
fn last_error(record: &Value) -> &str {
    record["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_error: {record}"))
}

/// Asserts `reply_id` reached the conversation as exactly one message, from
/// exactly one create, and that the record points at it.
fn assert_sent_once(app: &TestApp, reply_id: &str, conversation_id: i64, record: &Value) {
    let messages = app.chatwoot.messages(1, conversation_id);
    let ours: Vec<_> = messages
        .iter()
        .filter(|m| m.content_attributes["gold_reply_id"] == reply_id)
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "{reply_id} reached Chatwoot {} times",
        ours.len()
    );
    assert_eq!(creates_of(&app.chatwoot, reply_id), 1, "created again");
    assert_eq!(record["chatwoot_message_id"], ours[0].id, "{record}");
}

/// Posts `count` messages to a conversation straight to the sandbox, as agents would.
async fn chatter(app: &TestApp, conversation_id: i64, count: usize) {
    for i in 0..count {
        crate::helpers::agent_says(
            &app.chatwoot,
            conversation_id,
            &format!("agent chatter {i}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_422_after_the_commit_is_looked_up_and_delivered_once_not_given_up_on() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.lookup_delay = Duration::from_millis(500);
    })
    .await;
    // The row commits, then an after_create_commit callback raises (Redis down).
    app.chatwoot.set_faults(Faults {
        error_after_commit_next: 1,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-422-committed", 60)).await;
    let record = app
        .api
        .wait_for_status("gr-422-committed", "delivered", PATIENCE)
        .await;
    assert_sent_once(&app, "gr-422-committed", 60, &record);
    // Chatwoot answered after its transaction: the lookup runs at once, in
    // the same attempt, and finds the message.
    assert_eq!(record["attempts"], 1, "{record}");
}

#[tokio::test]
async fn a_create_committed_after_the_client_gave_up_is_found_rather_than_sent_twice() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_timeout = Duration::from_secs(2);
        s.lookup_delay = Duration::from_secs(3);
    })
    .await;
    // Puma commits 2.6 s after the request arrived, 0.6 s after goldrelay gave up.
    app.chatwoot.set_faults(Faults {
        commit_late_next: 1,
        commit_after_ms: 2600,
        answer_after_ms: None,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-commit-late", 61)).await;
    let record = app
        .api
        .wait_until("gr-commit-late", "retrying", PATIENCE, |r| {
            !r["last_error"].is_null()
        })
        .await;
    assert!(last_error(&record).contains("timed out"), "{record}");
    let record = app
        .api
        .wait_for_status("gr-commit-late", "delivered", PATIENCE)
        .await;
    assert_sent_once(&app, "gr-commit-late", 61, &record);
}

#[tokio::test]
async fn a_lookup_that_keeps_failing_ends_dead_as_uncertain_and_never_sends_again() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_timeout = Duration::from_millis(500);
        s.max_attempts = 3;
    })
    .await;
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 1500,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-unknowable", 62)).await;
    wait_for_create(&app.chatwoot, "gr-unknowable").await;
    // From now on every list (and create) fails: the lookup cannot conclude.
    app.chatwoot.set_faults(Faults {
        fail_next: 1000,
        fail_status: Some(503),
        ..Faults::default()
    });
    let record = app
        .api
        .wait_for_status("gr-unknowable", "dead", PATIENCE)
        .await;
    let error = last_error(&record);
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert!(error.contains("uncertain"), "does not say so: {error}");
    assert!(error.contains("503"), "{error}");
    assert_eq!(creates_of(&app.chatwoot, "gr-unknowable"), 1, "sent again");
    assert_eq!(app.chatwoot.messages(1, 62).len(), 1);
}

/// The conversation's flood guard is raised for this one (Chatwoot's is
/// `CONVERSATION_MESSAGE_PER_MINUTE_LIMIT`), so 220 messages fit in a minute.
#[tokio::test]
async fn the_lookup_pages_back_past_hundreds_of_newer_messages_to_find_the_reply() {
    let sandbox = SandboxConfig {
        flood_limit: 1000,
        ..SandboxConfig::default()
    };
    let app = spawn_app_with(sandbox, |s| {
        // goldrelay gives up, and looks, only once the conversation is busy.
        s.chatwoot_timeout = Duration::from_secs(10);
        s.lookup_delay = Duration::from_secs(1);
    })
    .await;
    app.chatwoot.set_faults(Faults {
        commit_late_next: 1,
        commit_after_ms: 200,
        answer_after_ms: None,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-buried", 63)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.chatwoot.messages(1, 63).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    chatter(&app, 63, 220).await;
    let record = app
        .api
        .wait_for_status("gr-buried", "delivered", Duration::from_secs(30))
        .await;
    assert_eq!(app.chatwoot.messages(1, 63).len(), 221);
    assert_sent_once(&app, "gr-buried", 63, &record);
}

/// Leaves `reply_id` dead with an uncertain history: its create reached
/// Chatwoot (and committed), but no lookup could say so.
async fn dead_but_maybe_sent(app: &TestApp, reply_id: &str, conversation_id: i64) {
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 1500,
        ..Faults::default()
    });
    app.api.accept(&reply(reply_id, conversation_id)).await;
    wait_for_create(&app.chatwoot, reply_id).await;
    app.chatwoot.set_faults(Faults {
        fail_next: 1000,
        fail_status: Some(503),
        ..Faults::default()
    });
    app.api.wait_for_status(reply_id, "dead", PATIENCE).await;
    app.chatwoot.set_faults(Faults::default());
}

async fn operator_retry(app: &TestApp, reply_id: &str, query: &str) -> Value {
    let response = app
        .api
        .client
        .post(format!(
            "{}/api/gold-replies/{reply_id}/retry{query}",
            app.api.address
        ))
        .bearer_auth(crate::helpers::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_operator_retry_after_a_maybe_sent_attempt_looks_first_and_sends_nothing_twice() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_timeout = Duration::from_millis(500);
        s.max_attempts = 3;
    })
    .await;
    dead_but_maybe_sent(&app, "gr-retry-looks", 64).await;
    let answer = operator_retry(&app, "gr-retry-looks", "").await;
    assert_eq!(
        answer["retry"],
        json!({"forced": false, "lookup_first": true}),
        "{answer}"
    );
    let record = app
        .api
        .wait_for_status("gr-retry-looks", "delivered", PATIENCE)
        .await;
    assert_sent_once(&app, "gr-retry-looks", 64, &record);
}

#[tokio::test]
async fn an_operator_retry_right_after_a_reply_died_waits_for_its_last_create_to_commit() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_timeout = Duration::from_millis(500);
        s.max_attempts = 1;
        s.lookup_delay = Duration::from_secs(4);
    })
    .await;
    // The only attempt times out at 0.5 s and the reply dies; Puma commits
    // its message at 2.5 s.
    app.chatwoot.set_faults(Faults {
        commit_late_next: 1,
        commit_after_ms: 2500,
        answer_after_ms: None,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-retry-early", 66)).await;
    app.api
        .wait_for_status("gr-retry-early", "dead", PATIENCE)
        .await;
    assert!(
        app.chatwoot.messages(1, 66).is_empty(),
        "committed before the retry: the test proves nothing"
    );
    let answer = operator_retry(&app, "gr-retry-early", "").await;
    assert_eq!(answer["retry"]["lookup_first"], true, "{answer}");
    assert!(answer["next_attempt_at"].is_string(), "{answer}");
    let record = app
        .api
        .wait_for_status("gr-retry-early", "delivered", PATIENCE)
        .await;
    assert_sent_once(&app, "gr-retry-early", 66, &record);
}

#[tokio::test]
async fn a_forced_operator_retry_sends_without_looking_and_says_so() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.chatwoot_timeout = Duration::from_millis(500);
        s.max_attempts = 3;
    })
    .await;
    dead_but_maybe_sent(&app, "gr-retry-forced", 65).await;
    let answer = operator_retry(&app, "gr-retry-forced", "?force=true").await;
    assert_eq!(
        answer["retry"],
        json!({"forced": true, "lookup_first": false}),
        "{answer}"
    );
    app.api
        .wait_for_status("gr-retry-forced", "delivered", PATIENCE)
        .await;
    // What the operator chose: a second message, which the answer warned of.
    assert_eq!(creates_of(&app.chatwoot, "gr-retry-forced"), 2);
}

/// Enterprise Chatwoot saves the message, then `conversation.open!` raises
/// `RecordInvalid`, and `create` answers 422 "Validation failed: …"
/// (`enterprise/app/models/enterprise/message.rb`): even that is looked up at
/// once, and the message found, never taken for a refusal nor sent again.
#[tokio::test]
async fn a_validation_failure_raised_after_the_commit_is_found_not_taken_for_a_refusal() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.lookup_delay = Duration::from_secs(30);
    })
    .await;
    app.chatwoot.set_faults(Faults {
        error_after_commit_next: 1,
        error_after_commit_text: Some("Validation failed: Status is invalid".into()),
        error_after_commit_echo: false,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-enterprise", 66)).await;
    let record = app
        .api
        .wait_for_status("gr-enterprise", "delivered", PATIENCE)
        .await;
    assert_sent_once(&app, "gr-enterprise", 66, &record);
    assert_eq!(record["attempts"], 1, "{record}");
}

/// A proxy answers 504 after Rails committed (rack-timeout lets a request run
/// about 15 s: `config/initializers/rack_timeout.rb`): maybe sent, looked up
/// after the lookup delay, found.
#[tokio::test]
async fn a_proxy_error_after_the_commit_is_found_by_the_lookup() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.lookup_delay = Duration::from_millis(500);
    })
    .await;
    app.chatwoot.set_faults(Faults {
        error_after_commit_next: 1,
        error_after_commit_status: Some(504),
        error_after_commit_echo: false,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-504", 67)).await;
    let record = app
        .api
        .wait_for_status("gr-504", "delivered", PATIENCE)
        .await;
    assert_sent_once(&app, "gr-504", 67, &record);
}

/// Any user token may set `content_attributes`: another agent's message
/// carrying the reply's marker (and even its text) while the reply waits is
/// neither taken for it by the webhook echo nor by the lookup. The reply is
/// sent, and the impostor counted.
#[tokio::test]
async fn a_marker_on_another_agents_message_is_not_taken_for_the_reply() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.lookup_delay = Duration::from_millis(300);
    })
    .await;
    // The first create fails as if it might have landed: the next attempt looks.
    app.chatwoot.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(503),
        retry_after: Some(2),
        ..Faults::default()
    });
    let posted = reply("gr-impostor", 68);
    app.api.accept(&posted).await;
    wait_for_create(&app.chatwoot, "gr-impostor").await;
    let impostor = crate::helpers::other_agent_posts(
        &app.chatwoot,
        68,
        &json!({
            "content": posted["content"],
            "message_type": "outgoing",
            "content_attributes": { "gold_reply_id": "gr-impostor" },
        }),
    )
    .await;
    let sent = |r: &Value| r["status"] == "delivered" || r["status"] == "confirmed";
    let record = app
        .api
        .wait_until("gr-impostor", "sent", PATIENCE, sent)
        .await;
    assert_ne!(record["chatwoot_message_id"], impostor["id"], "{record}");
    // The impostor's own create carried the marker too: goldrelay's two, and its one.
    assert_eq!(creates_of(&app.chatwoot, "gr-impostor"), 3, "never sent");
    let ours: Vec<_> = app
        .chatwoot
        .messages(1, 68)
        .into_iter()
        .filter(|m| m.sender["id"] == 1 && m.content_attributes["gold_reply_id"] == "gr-impostor")
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(record["chatwoot_message_id"], ours[0].id);
    let metrics = app.metrics().await;
    let mismatches = metrics
        .lines()
        .find_map(|l| l.strip_prefix("goldrelay_webhook_mismatches_total "))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(
        mismatches >= 1.0,
        "the impostor was not counted:\n{metrics}"
    );
}

/// `MessageFinder` filters by id but orders by `created_at`
/// (`app/finders/message_finder.rb`); a message whose `created_at` is newer
/// than its id says (a provider's timestamp) sits on the first page with a
/// small id. Paging "before the smallest id seen" then skips everything in
/// between; id ranges do not.
#[tokio::test]
async fn the_lookup_reads_every_id_even_when_ids_and_created_at_disagree() {
    use goldrelay::chatwoot::{ChatwootClient, Lookup, Wanted};
    let chatwoot = goldrelay::sandbox::start(
        SandboxConfig {
            flood_limit: 1000,
            ..SandboxConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let client = ChatwootClient::new(
        chatwoot.base_url().parse().unwrap(),
        SandboxConfig::default().user_token.into(),
        Duration::from_secs(5),
    )
    .unwrap();
    let early =
        crate::helpers::other_agent_posts(&chatwoot, 69, &json!({"content": "early"})).await;
    let text = "The approved text";
    let disorder = goldrelay::domain::ReplyId::parse("gr-disorder").unwrap();
    // Another agent copies the marker and the text before goldrelay sends.
    let impostor = crate::helpers::other_agent_posts(
        &chatwoot,
        69,
        &json!({"content": text, "content_attributes": {"gold_reply_id": "gr-disorder"}}),
    )
    .await;
    let ours = client
        .create_message(1, 69, &disorder, text, false)
        .await
        .unwrap();
    for i in 0..250 {
        crate::helpers::agent_says(&chatwoot, 69, &format!("chatter {i}")).await;
    }
    // The earliest message takes the newest time, the rest run backwards.
    let now = chrono::Utc::now();
    chatwoot.set_created_at(
        early["id"].as_i64().unwrap(),
        now + chrono::Duration::hours(1),
    );
    for (i, m) in chatwoot.messages(1, 69).iter().enumerate().skip(1) {
        chatwoot.set_created_at(m.id, now - chrono::Duration::seconds(i as i64));
    }
    // Read before ours, so the lookup must pass it over.
    chatwoot.set_created_at(
        impostor["id"].as_i64().unwrap(),
        now - chrono::Duration::hours(9),
    );
    let wanted = Wanted {
        reply_id: &disorder,
        content: Some(text),
        floor: 0,
    };
    let lists_before = chatwoot.lists();
    let search = client
        .find_reply(1, 69, &wanted, || async {})
        .await
        .unwrap();
    assert_eq!(search.lookup, Lookup::Found(ours));
    assert_eq!(search.impostors.len(), 1, "{search:?}");
    // A floor above our message proves it is not there: absent, not a miss.
    let above = Wanted {
        floor: ours,
        ..wanted
    };
    let search = client.find_reply(1, 69, &above, || async {}).await.unwrap();
    assert_eq!(search.lookup, Lookup::Absent);
    assert!(
        chatwoot.lists() - lists_before <= 8,
        "{} requests",
        chatwoot.lists() - lists_before
    );
}

/// With Chatwoot honouring `client_message_id` (chatwoot#15743, a setting on
/// both sides), an attempt that may have landed is simply sent again at once:
/// Chatwoot answers the original message, so nothing is looked up or doubled.
#[tokio::test]
async fn with_idempotency_keys_an_ambiguous_create_is_resent_at_once_and_lands_once() {
    let sandbox = SandboxConfig {
        idempotency_keys: true,
        ..SandboxConfig::default()
    };
    let app = spawn_app_with(sandbox, |s| {
        s.lookup_delay = Duration::from_secs(60);
        s.chatwoot_idempotent = true;
    })
    .await;
    app.chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 3000,
        ..Faults::default()
    });
    app.api.accept(&reply("gr-keyed", 70)).await;
    let record = app
        .api
        .wait_for_status("gr-keyed", "delivered", PATIENCE)
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    assert_eq!(creates_of(&app.chatwoot, "gr-keyed"), 2);
    assert_eq!(
        app.chatwoot.lists(),
        0,
        "looked up although the resend was safe"
    );
    let messages = app.chatwoot.messages(1, 70);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(record["chatwoot_message_id"], messages[0].id);
}
