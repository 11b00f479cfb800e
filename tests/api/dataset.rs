//! The gold dataset as training data (issue 21 items 2 to 4): every format
//! over real HTTP and from the CLI, checked against the replies posted, the
//! OpenAI formats against their documented fields, the split, redaction,
//! resuming from any cursor, and Hugging Face `datasets` loading each format.

use crate::export::{seeded, VIEWER_TOKEN};
use crate::helpers::relay::free_port;
use crate::helpers::{
    assert_problem, database_url, error_fields, spawn_app_with, TestApp, OPERATOR_TOKEN, PATIENCE,
    WEBHOOK_SECRET,
};
use assert_cmd::Command;
use chrono::{Duration as Age, Utc};
use goldrelay::config::DatabaseUrl;
use goldrelay::domain::GoldReply;
use goldrelay::sandbox::SandboxConfig;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use tempfile::TempDir;

const FORMATS: [&str; 5] = [
    "records",
    "openai-chat",
    "openai-preference",
    "trl-preference",
    "trl-kto",
];

/// The judged replies, one of each kind. Conversation 99 999 does not exist
/// in the sandbox, so a reply sent there dies and is never confirmed.
fn judged() -> Vec<Value> {
    let draft = |text: &str| json!({"text": text, "model": "m-1"});
    let reply = |id: &str, action: &str, conversation: i64, content: &str, draft: Option<Value>| {
        let mut body = json!({
            "reply_id": id, "account_id": 1, "conversation_id": conversation,
            "action": action, "content": content, "approved_by": "priya@example.com",
        });
        if let Some(draft) = draft {
            body["draft"] = draft;
        }
        body
    };
    let mut replies = vec![
        reply(
            "sent-as-drafted",
            "approve_send",
            11,
            "Your order shipped today.",
            Some(draft("Your order shipped today.")),
        ),
        reply(
            "sent-edited",
            "approve_send",
            12,
            "Write to ana.lopez@example.com or call +44 20 7946 0958.",
            Some(draft("Write to us.")),
        ),
        reply(
            "dead-edited",
            "approve_send",
            99_999,
            "Never confirmed, edited.",
            Some(draft("Never confirmed.")),
        ),
        reply(
            "dead-as-drafted",
            "approve_send",
            99_999,
            "Never confirmed.",
            Some(draft("Never confirmed.")),
        ),
        reply(
            "kept-as-drafted",
            "approve",
            13,
            "Refund sent to IBAN DE89 3704 0044 0532 0130 00.",
            Some(draft("Refund sent to IBAN DE89 3704 0044 0532 0130 00.")),
        ),
        reply(
            "kept-edited",
            "approve",
            14,
            "Your card 4111 1111 1111 1111 was refunded.",
            Some(draft("Your card was charged.")),
        ),
        reply(
            "rejected",
            "reject",
            15,
            "Rejected draft.",
            Some(draft("Call 030 12345678 for a bad answer.")),
        ),
        reply(
            "written-by-hand",
            "approve",
            16,
            "Written without a draft.",
            None,
        ),
        reply(
            "nested-draft",
            "approve",
            17,
            "The nested edit.",
            Some(json!({"output": {"text": "The nested draft."}})),
        ),
    ];
    // Posted with the turns they answered, personal data in them too.
    replies[5]["context"] = context();
    replies[6]["context"] = context();
    replies
}

/// The turns two drafts answered, as Support posted them.
fn context() -> Value {
    json!([
        {"role": "user", "content": "Hola, soy Marta: marta.gil@ejemplo.es, móvil +34 612 345 678."},
        {"role": "assistant", "content": "Gracias Marta, lo miro."},
        {"role": "user", "content": "Meine IBAN: DE89 3704 0044 0532 0130 00"},
    ])
}

/// The context turns as every training format must carry them: in order,
/// personal data replaced.
fn redacted_context() -> Value {
    json!([
        {"role": "user", "content": "Hola, soy Marta: [EMAIL], móvil [PHONE]."},
        {"role": "assistant", "content": "Gracias Marta, lo miro."},
        {"role": "user", "content": "Meine IBAN: [IBAN]"},
    ])
}

/// Which replies each format holds, by the rules in the README: chat takes
/// approved replies (an `approve_send` once Chatwoot confirmed it), the
/// preference formats edited drafts, KTO drafts kept as they were and
/// rejected ones.
fn expected(format: &str, draft_field: &str) -> BTreeSet<&'static str> {
    let ids: &[&str] = match (format, draft_field) {
        ("records", _) => &[
            "sent-as-drafted",
            "sent-edited",
            "dead-edited",
            "dead-as-drafted",
            "kept-as-drafted",
            "kept-edited",
            "rejected",
            "written-by-hand",
            "nested-draft",
        ],
        ("openai-chat", _) => &[
            "sent-as-drafted",
            "sent-edited",
            "kept-as-drafted",
            "kept-edited",
            "written-by-hand",
            "nested-draft",
        ],
        ("openai-preference" | "trl-preference", "text") => &["sent-edited", "kept-edited"],
        ("openai-preference" | "trl-preference", "output.text") => &["nested-draft"],
        ("trl-kto", "text") => &["sent-as-drafted", "kept-as-drafted", "rejected"],
        // Rejected without a draft text at the field: the posted content is the completion.
        ("trl-kto", "output.text") => &["rejected"],
        _ => unreachable!("{format} {draft_field}"),
    };
    ids.iter().copied().collect()
}

/// A goldrelay holding [`judged`], received an hour ago (past the export's
/// settling time), with the sends confirmed by Chatwoot's webhook or dead.
struct Judged {
    app: TestApp,
    db_url: String,
    _dir: TempDir,
}

async fn judged_app() -> Judged {
    let dir = tempfile::tempdir().unwrap();
    let db_url = database_url(&dir);
    let url = DatabaseUrl::parse(&db_url).unwrap();
    let store = goldrelay::store::open(&url).await.unwrap();
    let start = Utc::now() - Age::hours(1);
    for (i, body) in judged().iter().enumerate() {
        let reply = GoldReply::parse(body).unwrap();
        store
            .ingest(&reply, start + Age::milliseconds(i as i64))
            .await
            .unwrap();
    }
    drop(store);
    // The webhook's address is known before the worker starts sending, so
    // no confirmation is lost to a race with `set_webhook`.
    let port = free_port();
    let sandbox = SandboxConfig {
        webhook_url: Some(format!("http://127.0.0.1:{port}/api/webhooks/chatwoot")),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        ..SandboxConfig::default()
    };
    let app = spawn_app_with(sandbox, |s| {
        s.database_url = url;
        s.listen = format!("127.0.0.1:{port}").parse().unwrap();
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
    })
    .await;
    for id in ["sent-as-drafted", "sent-edited"] {
        app.api.wait_for_status(id, "confirmed", PATIENCE).await;
    }
    for id in ["dead-edited", "dead-as-drafted"] {
        app.api.wait_for_status(id, "dead", PATIENCE).await;
    }
    Judged {
        app,
        db_url,
        _dir: dir,
    }
}

async fn get(app: &TestApp, query: &[(&str, &str)], token: &str) -> reqwest::Response {
    app.api
        .client
        .get(format!("{}/api/gold-replies/export", app.api.address))
        .query(query)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The whole export as its lines, parsed.
async fn lines(app: &TestApp, query: &[(&str, &str)], token: &str) -> Vec<Value> {
    let response = get(app, query, token).await;
    assert_eq!(response.status(), 200, "{query:?}");
    parse(&response.text().await.unwrap())
}

fn parse(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["reply_id"].as_str().unwrap().to_owned())
        .collect()
}

fn id_set(lines: &[Value]) -> BTreeSet<String> {
    ids(lines).into_iter().collect()
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
    items.iter().copied().collect()
}

/// goldrelay's own fields on every training line (README, "Training formats").
const OWN_FIELDS: [&str; 5] = ["verdict", "edit_distance", "reply_id", "split", "cursor"];

/// The top-level fields of a training line: the format's documented ones and goldrelay's own.
fn fields_of(documented: &[&'static str]) -> BTreeSet<&'static str> {
    documented
        .iter()
        .chain(OWN_FIELDS.iter())
        .copied()
        .collect()
}

/// Each message is exactly `{"role", "content"}` with a role the format allows
/// and string content.
fn assert_messages(messages: &Value, roles: &[&str], line: &Value) {
    let messages = messages.as_array().unwrap_or_else(|| panic!("{line}"));
    for message in messages {
        assert_eq!(keys(message), set(&["role", "content"]), "{line}");
        assert!(roles.contains(&message["role"].as_str().unwrap()), "{line}");
        assert!(message["content"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_format_holds_exactly_the_replies_its_rules_admit() {
    let judged = judged_app().await;
    for draft_field in ["text", "output.text"] {
        for format in FORMATS {
            let query = [("format", format), ("draft_field", draft_field)];
            let got = lines(&judged.app, &query, VIEWER_TOKEN).await;
            let want: BTreeSet<String> = expected(format, draft_field)
                .into_iter()
                .map(str::to_owned)
                .collect();
            assert_eq!(id_set(&got), want, "{format} reading {draft_field}");
            assert_eq!(got.len(), want.len(), "{format}: a reply came twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_training_line_says_its_verdict_and_edit_distance() {
    let judged = judged_app().await;
    let chat = lines(&judged.app, &[("format", "openai-chat")], VIEWER_TOKEN).await;
    let by_id: HashMap<String, &Value> = chat
        .iter()
        .map(|l| (l["reply_id"].as_str().unwrap().to_owned(), l))
        .collect();
    let judged_as = |id: &str| {
        (
            by_id[id]["verdict"].clone(),
            by_id[id]["edit_distance"].clone(),
        )
    };
    assert_eq!(
        judged_as("sent-as-drafted"),
        (json!("as_drafted"), json!(0))
    );
    // "Write to us." -> "Write to <address> or call +44 20 7946 0958.": 1 replaced, 6 added,
    // counted on the text as approved, before redaction.
    assert_eq!(judged_as("sent-edited"), (json!("edited"), json!(7)));
    // No draft: every word was written by a person.
    assert_eq!(judged_as("written-by-hand"), (json!("edited"), json!(4)));
    let kto = lines(&judged.app, &[("format", "trl-kto")], VIEWER_TOKEN).await;
    let rejected = kto.iter().find(|l| l["reply_id"] == "rejected").unwrap();
    assert_eq!(rejected["verdict"], "rejected");
    assert_eq!(rejected["edit_distance"], Value::Null);
    assert_eq!(rejected["label"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_context_turns_lead_every_training_line_in_order_and_redacted() {
    let judged = judged_app().await;
    let app = &judged.app;
    let line = |lines: Vec<Value>, id: &str| {
        lines
            .into_iter()
            .find(|l| l["reply_id"] == id)
            .unwrap_or_else(|| panic!("no {id}"))
    };
    let chat = line(
        lines(app, &[("format", "openai-chat")], VIEWER_TOKEN).await,
        "kept-edited",
    );
    let mut messages = redacted_context().as_array().unwrap().clone();
    messages.push(json!({"role": "assistant", "content": "Your card [CARD] was refunded."}));
    assert_eq!(chat["messages"], Value::Array(messages));
    let dpo = line(
        lines(app, &[("format", "openai-preference")], VIEWER_TOKEN).await,
        "kept-edited",
    );
    assert_eq!(dpo["input"]["messages"], redacted_context());
    let trl = line(
        lines(app, &[("format", "trl-preference")], VIEWER_TOKEN).await,
        "kept-edited",
    );
    assert_eq!(trl["prompt"], redacted_context());
    let kto = line(
        lines(app, &[("format", "trl-kto")], VIEWER_TOKEN).await,
        "rejected",
    );
    assert_eq!(kto["prompt"], redacted_context());
    // A reply posted without context has an empty prompt until one is captured.
    let bare = line(
        lines(app, &[("format", "trl-kto")], VIEWER_TOKEN).await,
        "kept-as-drafted",
    );
    assert_eq!(bare["prompt"], json!([]));
    let raw = line(
        lines(
            app,
            &[("format", "trl-kto"), ("redact", "false")],
            OPERATOR_TOKEN,
        )
        .await,
        "rejected",
    );
    assert_eq!(raw["prompt"], context());
}

/// The OpenAI formats, line by line, against the fields their documentation lists:
/// - supervised fine-tuning, "Preparing your dataset" / chat format
///   (platform.openai.com/docs/guides/supervised-fine-tuning): each line
///   `{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}`;
/// - direct preference optimization, "Data format"
///   (platform.openai.com/docs/guides/direct-preference-optimization): each line
///   `{"input": {"messages": [{"role", "content"}, …]}, "preferred_output":
///   [{"role": "assistant", "content"}], "non_preferred_output": [{"role": "assistant", "content"}]}`.
///
/// goldrelay adds only its own top-level fields ([`OWN_FIELDS`]).
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_formats_carry_exactly_the_documented_fields_on_every_line() {
    const CHAT: [&str; 1] = ["messages"];
    const PREFERENCE: [&str; 3] = ["input", "preferred_output", "non_preferred_output"];
    const PREFERENCE_INPUT: [&str; 1] = ["messages"];
    let judged = judged_app().await;
    let chat = lines(&judged.app, &[("format", "openai-chat")], VIEWER_TOKEN).await;
    assert!(!chat.is_empty());
    for line in &chat {
        assert_eq!(keys(line), fields_of(&CHAT), "{line}");
        assert_messages(&line["messages"], &["system", "user", "assistant"], line);
        let last = line["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(
            last["role"], "assistant",
            "the approved reply ends the conversation: {line}"
        );
    }
    let preference = lines(
        &judged.app,
        &[("format", "openai-preference")],
        VIEWER_TOKEN,
    )
    .await;
    assert!(!preference.is_empty());
    for line in &preference {
        assert_eq!(keys(line), fields_of(&PREFERENCE), "{line}");
        assert_eq!(keys(&line["input"]), set(&PREFERENCE_INPUT), "{line}");
        assert_messages(
            &line["input"]["messages"],
            &["system", "user", "assistant"],
            line,
        );
        for output in ["preferred_output", "non_preferred_output"] {
            assert_messages(&line[output], &["assistant"], line);
            assert_eq!(line[output].as_array().unwrap().len(), 1, "{line}");
        }
        assert_ne!(
            line["preferred_output"], line["non_preferred_output"],
            "{line}"
        );
    }
}

/// TRL's dataset formats (huggingface.co/docs/trl/dataset_formats), the
/// conversational types: preference `prompt`, `chosen`, `rejected`; unpaired
/// preference (KTO, huggingface.co/docs/trl/kto_trainer) `prompt`,
/// `completion`, `label`.
#[tokio::test(flavor = "multi_thread")]
async fn the_trl_formats_carry_exactly_the_documented_columns() {
    let judged = judged_app().await;
    let preference = lines(&judged.app, &[("format", "trl-preference")], VIEWER_TOKEN).await;
    for line in &preference {
        assert_eq!(
            keys(line),
            fields_of(&["prompt", "chosen", "rejected"]),
            "{line}"
        );
        assert_messages(&line["prompt"], &["user", "assistant"], line);
        assert_messages(&line["chosen"], &["assistant"], line);
        assert_messages(&line["rejected"], &["assistant"], line);
    }
    let kto = lines(&judged.app, &[("format", "trl-kto")], VIEWER_TOKEN).await;
    for line in &kto {
        assert_eq!(
            keys(line),
            fields_of(&["prompt", "completion", "label"]),
            "{line}"
        );
        assert_messages(&line["completion"], &["assistant"], line);
        assert!(line["label"].is_boolean(), "{line}");
    }
    let labels: BTreeSet<(String, bool)> = kto
        .iter()
        .map(|l| {
            (
                l["reply_id"].as_str().unwrap().to_owned(),
                l["label"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: BTreeSet<(String, bool)> = [
        ("sent-as-drafted", true),
        ("kept-as-drafted", true),
        ("rejected", false),
    ]
    .into_iter()
    .map(|(id, label)| (id.to_owned(), label))
    .collect();
    assert_eq!(labels, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn personal_data_is_redacted_in_the_training_formats_and_only_there() {
    let judged = judged_app().await;
    let app = &judged.app;
    let secrets = [
        "ana.lopez@example.com",
        "+44 20 7946 0958",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "030 12345678",
    ];
    let mut placeholders = BTreeSet::new();
    for format in &FORMATS[1..] {
        let text = get(app, &[("format", format)], VIEWER_TOKEN)
            .await
            .text()
            .await
            .unwrap();
        for secret in secrets {
            assert!(!text.contains(secret), "{format} shows {secret}");
        }
        for placeholder in ["[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"] {
            if text.contains(placeholder) {
                placeholders.insert(placeholder);
            }
        }
    }
    assert_eq!(placeholders.len(), 4, "{placeholders:?}");
    let records = get(app, &[("format", "records")], VIEWER_TOKEN)
        .await
        .text()
        .await
        .unwrap();
    for secret in secrets {
        assert!(records.contains(secret), "the records lost {secret}");
    }
    let raw = get(
        app,
        &[("format", "openai-chat"), ("redact", "false")],
        OPERATOR_TOKEN,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(raw.contains("ana.lopez@example.com") && !raw.contains("[EMAIL]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_operator_may_turn_redaction_off() {
    let judged = judged_app().await;
    let app = &judged.app;
    let refused = get(
        app,
        &[("format", "trl-kto"), ("redact", "false")],
        VIEWER_TOKEN,
    )
    .await;
    let problem = assert_problem(refused, 403).await;
    assert_eq!(problem["required_role"], "operator");
    // The records are never redacted, so asking for them unredacted asks nothing more.
    let records = get(
        app,
        &[("format", "records"), ("redact", "false")],
        VIEWER_TOKEN,
    )
    .await;
    assert_eq!(records.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_parameter_is_refused_at_once_with_422() {
    let judged = judged_app().await;
    let query = [
        ("format", "csv"),
        ("split", "test"),
        ("eval_share", "1.5"),
        ("redact", "maybe"),
        ("draft_field", "a..b"),
    ];
    let problem = assert_problem(get(&judged.app, &query, VIEWER_TOKEN).await, 422).await;
    assert_eq!(
        error_fields(&problem),
        ["format", "split", "eval_share", "redact", "draft_field"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_writes_the_same_lines_as_the_api_in_every_format() {
    let judged = judged_app().await;
    let dir = tempfile::tempdir().unwrap();
    for format in FORMATS {
        let over_http = lines(&judged.app, &[("format", format)], VIEWER_TOKEN).await;
        let file = dir.path().join(format!("{format}.jsonl"));
        Command::cargo_bin("goldrelay")
            .unwrap()
            .env_clear()
            .env("DATABASE_URL", &judged.db_url)
            .args(["replies", "export", "--format", format, "--output"])
            .arg(&file)
            .assert()
            .success();
        let written = parse(&std::fs::read_to_string(&file).unwrap());
        assert_eq!(written, over_http, "{format}");
    }
    Command::cargo_bin("goldrelay")
        .unwrap()
        .env_clear()
        .env("DATABASE_URL", &judged.db_url)
        .args(["replies", "export", "--format", "csv", "--eval-share", "2"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("--format must be one of"))
        .stderr(predicates::str::contains("--eval-share must be a number"));
}

/// The whole export in `format`, read again from `cut` cursors taken from
/// every kind of line (records lines included: a cursor need not be one of
/// this format's own), each resumed read matching the whole from there on.
#[tokio::test(flavor = "multi_thread")]
async fn a_10_000_reply_export_in_each_format_resumes_from_any_cursor() {
    const COUNT: usize = 10_000;
    let seeded = seeded(COUNT).await;
    let app = &seeded.app;
    // The seeded drafts hold their text in `content`.
    let records = lines(app, &[("draft_field", "content")], VIEWER_TOKEN).await;
    assert_eq!(records.len(), COUNT);
    let position: HashMap<String, usize> = ids(&records)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    for format in &FORMATS[1..] {
        let query = [("format", *format), ("draft_field", "content")];
        let whole = lines(app, &query, VIEWER_TOKEN).await;
        // Half the seeded replies are approvals, half rejections.
        assert_eq!(whole.len(), COUNT / 2, "{format}");
        assert_eq!(
            id_set(&whole).len(),
            whole.len(),
            "{format}: a reply came twice"
        );
        for cut in [0, 1, 4_999, 5_000, 9_998, 9_999] {
            let cursor = records[cut]["cursor"].as_str().unwrap();
            let resumed = lines(app, &[query[0], query[1], ("since", cursor)], VIEWER_TOKEN).await;
            let rest: Vec<&Value> = whole
                .iter()
                .filter(|l| position[l["reply_id"].as_str().unwrap()] > cut)
                .collect();
            assert_eq!(
                resumed.iter().collect::<Vec<_>>(),
                rest,
                "{format} after line {cut}"
            );
        }
        // Cut after a line of its own: the two parts are the whole, once each.
        let half = &whole[whole.len() / 2]["cursor"];
        let second = lines(
            app,
            &[query[0], query[1], ("since", half.as_str().unwrap())],
            VIEWER_TOKEN,
        )
        .await;
        assert_eq!(whole[whole.len() / 2 + 1..], second[..], "{format}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_split_keeps_each_conversation_on_one_side_and_the_sides_add_up() {
    let seeded = seeded(3_000).await;
    let app = &seeded.app;
    for format in ["records", "trl-kto"] {
        let all = lines(
            app,
            &[("format", format), ("draft_field", "content")],
            VIEWER_TOKEN,
        )
        .await;
        let side = |split: &'static str| {
            let query = [
                ("format", format),
                ("draft_field", "content"),
                ("split", split),
                ("eval_share", "0.2"),
            ];
            async move { lines(app, &query, VIEWER_TOKEN).await }
        };
        let (train, eval) = (side("train").await, side("eval").await);
        assert_eq!(train.len() + eval.len(), all.len(), "{format}");
        assert!(id_set(&train).is_disjoint(&id_set(&eval)), "{format}");
        let conversations = |lines: &[Value]| -> HashSet<(i64, i64)> {
            lines
                .iter()
                .map(|l| {
                    let id = l["reply_id"].as_str().unwrap();
                    let i: i64 = id.trim_start_matches("gr-").parse().unwrap();
                    (1 + i % 3, 1 + i % 97)
                })
                .collect()
        };
        assert!(
            conversations(&train).is_disjoint(&conversations(&eval)),
            "{format}: a conversation straddles the split"
        );
        // 291 conversations at 20 %: far from none and far from all.
        let held = conversations(&eval).len();
        assert!(
            (20..=110).contains(&held),
            "{format}: {held} conversations held out"
        );
    }
}

/// The Python that has Hugging Face `datasets`: `GOLDRELAY_DATASETS_PYTHON`,
/// else the virtual environment .ci/run makes, else `python3`. Missing, the
/// test fails, unless `GOLDRELAY_SKIP_DATASETS=1` says to skip it.
fn datasets_python() -> Option<String> {
    let python = std::env::var("GOLDRELAY_DATASETS_PYTHON").unwrap_or_else(|_| {
        let venv = "/tmp/goldrelay-datasets/bin/python";
        if Path::new(venv).exists() {
            venv
        } else {
            "python3"
        }
        .to_owned()
    });
    let has_datasets = std::process::Command::new(&python)
        .args(["-c", "import datasets"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_datasets {
        return Some(python);
    }
    let skip = std::env::var("GOLDRELAY_SKIP_DATASETS").is_ok_and(|v| v == "1");
    assert!(
        skip,
        "{python} cannot import datasets: python3 -m venv /tmp/goldrelay-datasets && \
         /tmp/goldrelay-datasets/bin/pip install datasets (or GOLDRELAY_SKIP_DATASETS=1 to skip)"
    );
    eprintln!("skipped: no Hugging Face datasets ({python}), GOLDRELAY_SKIP_DATASETS=1");
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_loads_with_hugging_face_datasets_with_its_columns_and_rows() {
    let Some(python) = datasets_python() else {
        return;
    };
    let judged = judged_app().await;
    let dir = tempfile::tempdir().unwrap();
    let columns = |documented: &[&str]| -> Vec<String> {
        documented
            .iter()
            .chain(OWN_FIELDS.iter())
            .map(std::string::ToString::to_string)
            .collect()
    };
    let mut expectations = serde_json::Map::new();
    for format in &FORMATS[1..] {
        let text = get(&judged.app, &[("format", format)], VIEWER_TOKEN)
            .await
            .text()
            .await
            .unwrap();
        std::fs::write(dir.path().join(format!("{format}.jsonl")), text).unwrap();
        let documented: &[&str] = match *format {
            "openai-chat" => &["messages"],
            "openai-preference" => &["input", "preferred_output", "non_preferred_output"],
            "trl-preference" => &["prompt", "chosen", "rejected"],
            _ => &["prompt", "completion", "label"],
        };
        expectations.insert(
            format.to_string(),
            json!({"rows": expected(format, "text").len(), "columns": columns(documented)}),
        );
    }
    let records = get(&judged.app, &[], VIEWER_TOKEN)
        .await
        .text()
        .await
        .unwrap();
    std::fs::write(dir.path().join("records.jsonl"), &records).unwrap();
    let record_columns: Vec<String> = keys(&parse(&records)[0])
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    expectations.insert(
        "records".into(),
        json!({"rows": expected("records", "text").len(), "columns": record_columns}),
    );
    std::fs::write(
        dir.path().join("expected.json"),
        Value::Object(expectations).to_string(),
    )
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/datasets_load.py");
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(dir.path())
        .env("HF_DATASETS_CACHE", dir.path().join("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert_eq!(said.matches("loaded ").count(), FORMATS.len(), "{said}");
}
