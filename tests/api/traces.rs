//! OpenTelemetry traces, read by a real OTLP/HTTP receiver: `tests/otlp_receiver.py`,
//! built on the `opentelemetry-proto` package (pip), decodes what goldrelay
//! exports. One trace per reply: the post (under Support's `traceparent` when
//! it sent one), each delivery attempt with its lookup, send-slot wait and
//! Chatwoot call, and the webhook that confirms it; ids as attributes, and no
//! secret and no reply text anywhere in what was exported.
//!
//! The receiver needs a Python with `opentelemetry-proto`: `GOLDRELAY_OTLP_PYTHON`
//! names it (`.ci/run` makes a venv and sets it), else `/tmp/goldrelay-otlp`'s or
//! `python3`. Where CI or that variable asks for it, a missing package fails
//! the test; elsewhere the test says it was skipped and how to run it.

use crate::helpers::relay::{free_port, read_log, Serve};
use crate::helpers::{database_url, reply, OPERATOR_TOKEN, PATIENCE, TOKEN, WEBHOOK_SECRET};
use goldrelay::sandbox::{self, Faults, SandboxConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const SUPPORT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SUPPORT_SPAN: &str = "00f067aa0ba902b7";
/// Text that is in the replies and must never be in a trace.
const REPLY_TEXT: &str = "Your refund of 42 EUR is on its way";
const DRAFT_TEXT: &str = "draft the customer never saw";

/// The receiver's Python, or `None` (with a line saying so) where the test may be skipped.
fn receiver_python() -> Option<String> {
    let named = std::env::var("GOLDRELAY_OTLP_PYTHON").ok();
    let required = named.is_some() || std::env::var("CI").is_ok_and(|v| !v.is_empty());
    let python = named.unwrap_or_else(|| {
        let venv = "/tmp/goldrelay-otlp/bin/python";
        if Path::new(venv).exists() {
            venv
        } else {
            "python3"
        }
        .to_owned()
    });
    let has_proto = Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_proto {
        return Some(python);
    }
    assert!(
        !required,
        "{python} cannot import opentelemetry.proto: python3 -m venv /tmp/goldrelay-otlp && \
         /tmp/goldrelay-otlp/bin/pip install opentelemetry-proto (.ci/run does)"
    );
    eprintln!(
        "SKIPPED traces test: no Python with opentelemetry-proto (python3 -m venv \
         /tmp/goldrelay-otlp && /tmp/goldrelay-otlp/bin/pip install opentelemetry-proto)"
    );
    None
}

/// The receiver process, killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    async fn start(python: &str, dir: &Path) -> Self {
        let port_file = dir.join("port");
        let out = dir.join("spans.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");
        let child = Command::new(python)
            .args([script.as_ref(), port_file.as_os_str(), out.as_os_str()])
            .stdin(Stdio::null())
            .spawn()
            .expect("the receiver starts");
        let deadline = Instant::now() + PATIENCE;
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "the OTLP receiver never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Self { child, port, out }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }

    /// Waits until the receiver holds the `ingest` span of `reply_id`. Reads
    /// only whole lines: the receiver may be writing the last one.
    async fn wait_for_ingest(&self, reply_id: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            let found = whole.lines().any(|line| {
                let span: Value = serde_json::from_str(line).expect("a JSON line");
                span["name"] == "ingest" && attr(&span, "goldrelay.reply_id") == reply_id
            });
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the ingest span of {reply_id} never reached the receiver"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every byte goldrelay exported, decoded or not.
    fn raw(&self) -> Vec<u8> {
        std::fs::read(self.out.with_extension("jsonl.raw")).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_draft(reply_id: &str, conversation_id: i64) -> Value {
    let mut body = reply(reply_id, conversation_id);
    body["content"] = json!(format!("{REPLY_TEXT} ({reply_id})"));
    body["draft"] = json!({ "text": DRAFT_TEXT });
    body
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn named<'a>(spans: &'a [Value], name: &str, parent: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["name"] == name && s["parent_span_id"] == parent)
        .collect()
}

/// Asserts the shape of one reply's trace and returns its spans.
fn trace_of<'a>(spans: &'a [Value], reply_id: &str) -> (String, Vec<&'a Value>) {
    let ingest: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "ingest" && attr(s, "goldrelay.reply_id") == reply_id)
        .collect();
    assert_eq!(
        ingest.len(),
        1,
        "one ingest span for {reply_id}: {ingest:?}"
    );
    let ingest = ingest[0];
    let trace = ingest["trace_id"].as_str().unwrap().to_owned();
    let request_id = attr(ingest, "goldrelay.request_id").as_str().unwrap_or("");
    assert!(uuid_like(request_id), "request id: {ingest}");
    assert_eq!(attr(ingest, "goldrelay.account_id"), 1, "{ingest}");
    assert_eq!(attr(ingest, "http.response.status_code"), 202, "{ingest}");
    let in_trace: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace).collect();
    for span in spans {
        if attr(span, "goldrelay.reply_id") == reply_id {
            assert_eq!(
                span["trace_id"], trace,
                "{reply_id} in a second trace: {span}"
            );
        }
    }
    (trace, in_trace)
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// The attempt spans under the ingest span, in attempt order, each checked
/// for its Chatwoot call and send-slot wait.
fn attempts<'a>(in_trace: &[&'a Value], reply_id: &str) -> Vec<&'a Value> {
    let spans: Vec<Value> = in_trace.iter().map(|s| (*s).clone()).collect();
    let ingest = in_trace.iter().find(|s| s["name"] == "ingest").unwrap();
    let ingest_id = ingest["span_id"].as_str().unwrap();
    let mut attempts: Vec<&Value> = in_trace
        .iter()
        .copied()
        .filter(|s| s["name"] == "delivery.attempt" && s["parent_span_id"] == ingest_id)
        .collect();
    attempts.sort_by_key(|s| attr(s, "goldrelay.attempt").as_i64());
    assert!(
        !attempts.is_empty(),
        "no attempt under the ingest span of {reply_id}"
    );
    for attempt in &attempts {
        assert_eq!(attr(attempt, "goldrelay.reply_id"), reply_id, "{attempt}");
        assert!(
            attr(attempt, "goldrelay.conversation_id").is_i64(),
            "{attempt}"
        );
        let id = attempt["span_id"].as_str().unwrap();
        assert_eq!(named(&spans, "send_slot.wait", id).len(), 1, "{attempt}");
        let creates = named(&spans, "chatwoot.create_message", id);
        assert_eq!(creates.len(), 1, "{attempt}");
        assert!(
            attr(creates[0], "http.response.status_code").is_i64(),
            "{}",
            creates[0]
        );
    }
    let last = attempts.last().unwrap();
    assert_eq!(attr(last, "goldrelay.outcome"), "delivered", "{last}");
    assert_eq!(attr(last, "http.response.status_code"), 200, "{last}");
    attempts
}

fn confirmation<'a>(in_trace: &[&'a Value], reply_id: &str) -> &'a Value {
    let ingest = in_trace.iter().find(|s| s["name"] == "ingest").unwrap();
    let confirms: Vec<&&Value> = in_trace
        .iter()
        .filter(|s| s["name"] == "webhook.confirm" && s["parent_span_id"] == ingest["span_id"])
        .collect();
    assert!(!confirms.is_empty(), "no webhook span for {reply_id}");
    let confirm = confirms[0];
    assert_eq!(attr(confirm, "goldrelay.reply_id"), reply_id, "{confirm}");
    assert!(
        uuid_like(attr(confirm, "goldrelay.request_id").as_str().unwrap_or("")),
        "{confirm}"
    );
    confirm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reply_is_one_trace_from_its_post_through_its_attempts_to_its_webhook() {
    let Some(python) = receiver_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&python, dir.path()).await;
    let port = free_port();
    let config = SandboxConfig {
        webhook_url: Some(format!("http://127.0.0.1:{port}/api/webhooks/chatwoot")),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        ..SandboxConfig::default()
    };
    let chatwoot = sandbox::start(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    // SQLite, or PostgreSQL where TEST_DATABASE_URL names a server.
    let database = database_url(&dir);
    let serve = Serve::new(&database, &chatwoot)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let relay = serve.start_on("goldrelay", port).await;

    // The first reply's first create fails with a 5xx: a second attempt looks first.
    chatwoot.set_faults(Faults {
        fail_next: 1,
        ..Faults::default()
    });
    relay.api.accept(&with_draft("gr-traced", 61)).await;
    // Only once that 503 is spent may the second reply go: its create could
    // otherwise be the one that takes it.
    relay
        .api
        .wait_until("gr-traced", "a failed attempt", PATIENCE, |r| {
            !r["last_error"].is_null()
        })
        .await;
    let support = format!("00-{SUPPORT_TRACE}-{SUPPORT_SPAN}-01");
    let continued = relay
        .api
        .webhook()
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("traceparent", &support)
        .body(with_draft("gr-from-support", 62).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(continued.status(), 202);
    for id in ["gr-traced", "gr-from-support"] {
        relay
            .api
            .wait_for_status(id, "confirmed", PATIENCE * 2)
            .await;
    }
    // A graceful exit sends what is still buffered.
    assert!(relay.terminate().await.success());

    // The log reads as without traces: no span shows in its lines.
    let log = read_log(&serve.log_of("goldrelay"));
    assert!(log.contains("delivery attempt"), "{log}");
    assert!(
        !log.contains("\"span") && !log.contains("delivery.attempt"),
        "spans in the log:\n{log}"
    );

    let spans = receiver.spans();
    let (first, first_spans) = trace_of(&spans, "gr-traced");
    let (second, second_spans) = trace_of(&spans, "gr-from-support");
    assert_ne!(first, second, "two replies, two traces");
    assert_ne!(first, SUPPORT_TRACE);
    assert_eq!(second, SUPPORT_TRACE, "Support's trace is not continued");
    let support_child = second_spans.iter().find(|s| s["name"] == "ingest").unwrap();
    assert_eq!(support_child["parent_span_id"], SUPPORT_SPAN);

    let retried = attempts(&first_spans, "gr-traced");
    assert_eq!(retried.len(), 2, "{retried:?}");
    assert_eq!(attr(retried[0], "goldrelay.outcome"), "retry");
    assert_eq!(attr(retried[0], "goldrelay.attempt"), 1);
    assert_eq!(attr(retried[1], "goldrelay.attempt"), 2);
    let looked = named(
        &spans,
        "chatwoot.lookup",
        retried[1]["span_id"].as_str().unwrap(),
    );
    assert_eq!(looked.len(), 1, "the second attempt looks first");
    assert_eq!(attr(looked[0], "goldrelay.lookup"), "absent");
    assert_eq!(attempts(&second_spans, "gr-from-support").len(), 1);
    confirmation(&first_spans, "gr-traced");
    confirmation(&second_spans, "gr-from-support");

    let raw = String::from_utf8_lossy(&receiver.raw()).into_owned();
    assert!(
        raw.contains("gr-traced"),
        "the raw export is not what was decoded"
    );
    let user_token = SandboxConfig::default().user_token;
    for secret in [
        TOKEN,
        OPERATOR_TOKEN,
        WEBHOOK_SECRET,
        &user_token,
        REPLY_TEXT,
        DRAFT_TEXT,
        "priya@example.com",
    ] {
        assert!(!raw.contains(secret), "{secret:?} was exported");
    }
}

/// Longer than a killed process's lease (about 8 s with the helpers' Chatwoot
/// timeout), with room for the next process to finish.
const AFTER_LEASE: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_killed_mid_delivery_keeps_its_trace_in_the_process_that_finishes_it() {
    let Some(python) = receiver_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&python, dir.path()).await;
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    // The message is created at once; the answer comes after the kill.
    chatwoot.set_faults(Faults {
        late_next: 1,
        late_ms: 5000,
        ..Faults::default()
    });
    let serve = Serve::new(&database_url(&dir), &chatwoot)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let first = serve.start("first").await;
    first.api.accept(&reply("gr-restarted", 63)).await;
    crate::helpers::wait_for_create(&chatwoot, "gr-restarted").await;
    // The post's span leaves within the batch delay; the attempt's never will.
    receiver.wait_for_ingest("gr-restarted").await;
    first.kill();

    let second = serve.start("second").await;
    second
        .api
        .wait_for_status("gr-restarted", "delivered", AFTER_LEASE)
        .await;
    assert!(second.terminate().await.success());

    let spans = receiver.spans();
    let (_, in_trace) = trace_of(&spans, "gr-restarted");
    let ingest = in_trace.iter().find(|s| s["name"] == "ingest").unwrap();
    let finished = named(
        &spans,
        "delivery.attempt",
        ingest["span_id"].as_str().unwrap(),
    );
    assert_eq!(
        finished.len(),
        1,
        "only the second process's attempt ends: {finished:?}"
    );
    assert_eq!(attr(finished[0], "goldrelay.attempt"), 2);
    assert_eq!(attr(finished[0], "goldrelay.outcome"), "delivered");
    let looked = named(
        &spans,
        "chatwoot.lookup",
        finished[0]["span_id"].as_str().unwrap(),
    );
    assert_eq!(looked.len(), 1, "the second attempt looks first");
    assert_eq!(attr(looked[0], "goldrelay.lookup"), "found", "{looked:?}");
}

/// Fails a statement that gives a stored reply a trace context it was stored
/// without: the context must be written in the statement that stores the
/// reply, or a worker that claims the reply in between traces its attempt
/// apart from its post.
const NO_LATE_TRACE_CONTEXT: [&str; 2] = [
    "CREATE FUNCTION no_late_trace_context() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN \
         IF OLD.trace_context IS NULL AND NEW.trace_context IS NOT NULL THEN \
             RAISE EXCEPTION 'trace context of % written after the reply', OLD.reply_id; \
         END IF; \
         RETURN NEW; \
     END $$",
    "CREATE TRIGGER no_late_trace_context BEFORE UPDATE ON gold_replies \
     FOR EACH ROW EXECUTE FUNCTION no_late_trace_context()",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and run with --include-ignored"]
async fn postgres_a_reply_is_stored_with_its_trace_context_in_one_statement() {
    use sqlx::{Connection, Executor};
    let database = crate::helpers::postgres::fresh_database();
    let Some(python) = receiver_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&python, dir.path()).await;
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let serve = Serve::new(&database, &chatwoot)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let relay = serve.start("goldrelay").await;
    // goldrelay has migrated the schema; from now on a late write fails.
    let mut conn = sqlx::PgConnection::connect(&database).await.unwrap();
    for statement in NO_LATE_TRACE_CONTEXT {
        conn.execute(statement).await.unwrap();
    }

    relay.api.accept(&reply("gr-one-statement", 64)).await;
    relay
        .api
        .wait_for_status("gr-one-statement", "delivered", PATIENCE)
        .await;
    assert!(relay.terminate().await.success());

    let spans = receiver.spans();
    let (_, in_trace) = trace_of(&spans, "gr-one-statement");
    let ingest = in_trace.iter().find(|s| s["name"] == "ingest").unwrap();
    let attempts = named(
        &spans,
        "delivery.attempt",
        ingest["span_id"].as_str().unwrap(),
    );
    assert_eq!(attempts.len(), 1, "the attempt is not in the post's trace");
}
