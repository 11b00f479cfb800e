//! The operator's surface: metrics, list and retry, the CLI, check-config,
//! log redaction and the OpenAPI document.

use crate::export::VIEWER_TOKEN;
use crate::helpers::relay::{read_log, Serve};
use crate::helpers::{
    self, reply, spawn_app, spawn_app_with, TestApp, OPERATOR_TOKEN, PATIENCE, TOKEN,
    WEBHOOK_SECRET,
};
use assert_cmd::Command;
use goldrelay::sandbox::{self, Faults, SandboxConfig};
use predicates::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

async fn metrics(app: &TestApp) -> String {
    app.metrics().await
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A dead reply: conversation 99999 does not exist in the sandbox.
async fn dead_reply(app: &TestApp, reply_id: &str) -> Value {
    app.api.accept(&reply(reply_id, 99_999)).await;
    app.api.wait_for_status(reply_id, "dead", PATIENCE).await
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_requests() {
    let app = spawn_app().await;
    app.api.accept(&reply("m-1", 1)).await;
    app.api.accept(&reply("m-2", 2)).await;
    assert_eq!(app.api.post_reply(&reply("m-1", 1)).await.status(), 200);
    assert_eq!(
        app.api
            .post_reply(&json!({"reply_id": "m-3"}))
            .await
            .status(),
        422
    );
    let anonymous = app
        .api
        .webhook()
        .json(&reply("m-4", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    app.api.wait_for_status("m-1", "delivered", PATIENCE).await;
    app.api.wait_for_status("m-2", "delivered", PATIENCE).await;
    let text = metrics(&app).await;
    let expect = [
        (
            r#"goldrelay_ingest_requests_total{outcome="accepted"}"#,
            2.0,
        ),
        (
            r#"goldrelay_ingest_requests_total{outcome="duplicate"}"#,
            1.0,
        ),
        (
            r#"goldrelay_ingest_requests_total{outcome="invalid-gold-reply"}"#,
            1.0,
        ),
        (
            r#"goldrelay_ingest_requests_total{outcome="unauthorized"}"#,
            1.0,
        ),
        ("goldrelay_ingest_duration_seconds_count", 5.0),
        (
            r#"goldrelay_delivery_attempts_total{outcome="delivered"}"#,
            2.0,
        ),
        ("goldrelay_delivery_latency_seconds_count", 2.0),
        (r#"goldrelay_replies{status="delivered"}"#, 2.0),
        ("goldrelay_oldest_queued_age_seconds", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
}

/// What the answer to a post or an event says its outcome was: the status
/// word for a success, the problem type's slug for a refusal.
async fn outcome_of(response: reqwest::Response) -> String {
    match response.status().as_u16() {
        202 => "accepted".into(),
        200 => "duplicate".into(),
        _ => {
            let problem: Value = response.json().await.unwrap();
            let kind = problem["type"].as_str().unwrap();
            kind.trim_start_matches("urn:goldrelay:problem:").to_owned()
        }
    }
}

/// Asserts that `metric` counts exactly what the client saw.
fn assert_counted(text: &str, metric: &str, seen: &BTreeMap<String, f64>) {
    for (outcome, n) in seen {
        let series = format!(r#"{metric}{{outcome="{outcome}"}}"#);
        assert_eq!(sample(text, &series), Some(*n), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn refused_posts_are_counted_in_the_ingest_metric_by_their_outcome() {
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
        s.token_rate = 1;
    })
    .await;
    let mut seen = BTreeMap::<String, f64>::new();
    // Support's token thrice in a row: its rate refuses what passes the budget.
    let callers = [
        None,
        Some(VIEWER_TOKEN),
        Some(TOKEN),
        Some(TOKEN),
        Some(TOKEN),
    ];
    for (n, token) in callers.into_iter().enumerate() {
        let mut post = app.api.webhook().json(&reply(&format!("counted-{n}"), 1));
        if let Some(token) = token {
            post = post.bearer_auth(token);
        }
        let outcome = outcome_of(post.send().await.unwrap()).await;
        *seen.entry(outcome).or_default() += 1.0;
    }
    assert_eq!(seen.get("unauthorized"), Some(&1.0), "{seen:?}");
    assert_eq!(seen.get("role-required"), Some(&1.0), "{seen:?}");
    let text = metrics(&app).await;
    assert_counted(&text, "goldrelay_ingest_requests_total", &seen);
    let timed = sample(&text, "goldrelay_ingest_duration_seconds_count");
    assert_eq!(timed, Some(5.0), "{text}");
}

#[tokio::test]
async fn refused_chatwoot_events_are_counted_by_their_outcome() {
    let app = spawn_app().await;
    let body = json!({"event": "conversation_created", "id": 1}).to_string();
    let at = chrono::Utc::now().timestamp().to_string();
    let signed = |secret: &str| {
        app.api
            .client
            .post(format!("{}/api/webhooks/chatwoot", app.api.address))
            .header("X-Chatwoot-Timestamp", &at)
            .header(
                "X-Chatwoot-Signature",
                sandbox::sign(secret, &at, body.as_bytes()),
            )
            .body(body.clone())
    };
    let unsigned = app
        .api
        .client
        .post(format!("{}/api/webhooks/chatwoot", app.api.address))
        .body(body.clone());
    // No path token is configured: that endpoint refuses everything.
    let by_path = app
        .api
        .client
        .post(format!(
            "{}/api/webhooks/chatwoot/some-token",
            app.api.address
        ))
        .body(body.clone());
    let mut seen = BTreeMap::<String, f64>::new();
    for request in [
        signed(WEBHOOK_SECRET),
        signed("not-the-secret"),
        unsigned,
        by_path,
    ] {
        let response = request.send().await.unwrap();
        let outcome = match response.status().as_u16() {
            200 => response.json::<Value>().await.unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned(),
            _ => outcome_of(response).await,
        };
        *seen.entry(outcome).or_default() += 1.0;
    }
    assert_eq!(seen.get("bad-signature"), Some(&2.0), "{seen:?}");
    assert_eq!(seen.get("disabled"), Some(&1.0), "{seen:?}");
    let text = metrics(&app).await;
    assert_counted(&text, "goldrelay_chatwoot_events_total", &seen);
}

#[tokio::test]
async fn metrics_can_move_to_a_private_address() {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = helpers::test_settings(&chatwoot, &dir);
    settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let app = goldrelay::startup::Application::build(settings)
        .await
        .unwrap();
    let (public, private) = (app.addr(), app.metrics_addr().unwrap());
    tokio::spawn(app.run_until(std::future::pending()));
    let on_public = reqwest::get(format!("http://{public}/metrics"))
        .await
        .unwrap();
    assert_eq!(on_public.status(), 404);
    let on_private = reqwest::get(format!("http://{private}/metrics"))
        .await
        .unwrap();
    assert_eq!(on_private.status(), 200);
    assert!(on_private
        .text()
        .await
        .unwrap()
        .contains("goldrelay_oldest_queued_age_seconds"));
}

#[tokio::test]
async fn dead_replies_are_listed_by_conversation_a_page_at_a_time() {
    let app = spawn_app().await;
    for id in ["d-1", "d-2", "d-3"] {
        dead_reply(&app, id).await;
    }
    app.api.accept(&reply("alive", 1)).await;
    let page = |query: String| {
        let client = app.api.client.clone();
        let url = format!("{}/api/gold-replies?{query}", app.api.address);
        async move {
            client
                .get(url)
                .bearer_auth(OPERATOR_TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let first = page("status=dead&conversation_id=99999&limit=2".into()).await;
    let ids = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reply_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&first), ["d-3", "d-2"]);
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = page(format!(
        "status=dead&conversation_id=99999&limit=2&cursor={cursor}"
    ))
    .await;
    assert_eq!(ids(&second), ["d-1"]);
    assert_eq!(second["next_cursor"], Value::Null);
}

#[tokio::test]
async fn listing_needs_the_bearer_token_and_a_known_status() {
    let app = spawn_app().await;
    let url = format!("{}/api/gold-replies", app.api.address);
    assert_eq!(app.api.client.get(&url).send().await.unwrap().status(), 401);
    let bad = app
        .api
        .client
        .get(format!("{url}?status=lost"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    helpers::assert_problem(bad, 422).await;
}

#[tokio::test]
async fn a_dead_reply_is_retried_with_a_fresh_budget_and_delivered() {
    let app = spawn_app_with(SandboxConfig::default(), |s| s.max_attempts = 2).await;
    app.chatwoot.set_faults(Faults {
        fail_next: 2,
        fail_status: Some(503),
        ..Faults::default()
    });
    app.api.accept(&reply("r-1", 4)).await;
    let dead = app.api.wait_for_status("r-1", "dead", PATIENCE).await;
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{dead}"
    );
    let retry = |id: &str| {
        app.api
            .client
            .post(format!("{}/api/gold-replies/{id}/retry", app.api.address))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
    };
    let response = retry("r-1").await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["attempts"], 0);
    let delivered = app.api.wait_for_status("r-1", "delivered", PATIENCE).await;
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(app.chatwoot.messages(1, 4).len(), 1);
    helpers::assert_problem(retry("r-1").await.unwrap(), 409).await;
    helpers::assert_problem(retry("never-posted").await.unwrap(), 404).await;
}

/// A goldrelay whose database the test can also open from the command line.
struct WithDatabase {
    api: helpers::Api,
    chatwoot: goldrelay::sandbox::SandboxHandle,
    db_url: String,
    _dir: tempfile::TempDir,
}

async fn spawn_with_database(max_attempts: u32) -> WithDatabase {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = helpers::test_settings(&chatwoot, &dir);
    settings.max_attempts = max_attempts;
    let db_url = settings.database_url.expose().to_owned();
    let app = goldrelay::startup::Application::build(settings)
        .await
        .unwrap();
    let api = helpers::Api::new(format!("http://{}", app.addr()));
    tokio::spawn(app.run_until(std::future::pending()));
    WithDatabase {
        api,
        chatwoot,
        db_url,
        _dir: dir,
    }
}

fn goldrelay(app: &WithDatabase) -> Command {
    let mut cmd = Command::cargo_bin("goldrelay").unwrap();
    cmd.env_clear().env("DATABASE_URL", &app.db_url);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replies_commands_list_show_and_retry_against_the_database() {
    let app = spawn_with_database(1).await;
    app.chatwoot.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(503),
        ..Faults::default()
    });
    app.api.accept(&reply("cli-1", 6)).await;
    app.api.wait_for_status("cli-1", "dead", PATIENCE).await;
    let (list, show, retry) = {
        // The CLI reads the lookup delay as serve does: a retry of a reply
        // that may have been sent looks only that long after it is queued.
        let run = |args: &[&str]| {
            goldrelay(&app)
                .env("GOLDRELAY_LOOKUP_DELAY", "1s")
                .args(args)
                .assert()
                .success()
                .get_output()
                .stdout
                .clone()
        };
        (
            run(&["replies", "list", "--status", "dead"]),
            run(&["replies", "show", "cli-1"]),
            run(&["replies", "retry", "cli-1"]),
        )
    };
    let list = String::from_utf8(list).unwrap();
    assert!(list.contains("cli-1") && list.contains("dead"), "{list}");
    let shown: Value = serde_json::from_slice(&show).unwrap();
    assert_eq!(shown["status"], "dead");
    let retry = String::from_utf8(retry).unwrap();
    assert!(
        retry.contains("queued again")
            && retry.contains("looks in the conversation before it sends"),
        "{retry}"
    );
    // The running goldrelay picks the job up from the shared database.
    app.api
        .wait_for_status("cli-1", "delivered", PATIENCE)
        .await;
    goldrelay(&app)
        .args(["replies", "retry", "cli-1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("only a dead reply can be retried"));
}

#[test]
fn an_impossible_reply_id_is_refused_before_any_database_is_opened() {
    for command in ["show", "retry"] {
        let mut cmd = Command::cargo_bin("goldrelay").unwrap();
        cmd.env_clear()
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .args(["replies", command, "not an id!"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "not a reply_id: it may contain only A-Z a-z 0-9 . _ : -",
            ))
            .stderr(predicate::str::contains("database").not());
    }
}

/// The subcommands `goldrelay [PATH] --help` lists, each as its path.
fn subcommands(path: &[&str]) -> Vec<Vec<String>> {
    let out = Command::cargo_bin("goldrelay")
        .unwrap()
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let listed = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or("");
    let mut paths = Vec::new();
    // A name is indented two spaces; a wrapped description, further.
    let names = listed
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next());
    for name in names {
        if name == "help" {
            continue;
        }
        let mut sub: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
        sub.push(name.to_owned());
        let nested: Vec<&str> = sub.iter().map(String::as_str).collect();
        paths.extend(subcommands(&nested));
        paths.push(sub);
    }
    paths
}

#[test]
fn no_help_screen_shows_a_secret_set_in_the_environment() {
    const MARK: &str = "help-secret-0123456789abcdefghijklmnopq";
    let secrets = [
        ("GOLDRELAY_TOKENS", MARK.to_owned()),
        ("GOLDRELAY_OPERATOR_TOKENS", MARK.to_owned()),
        ("GOLDRELAY_VIEWER_TOKENS", MARK.to_owned()),
        ("GOLDRELAY_WEBHOOK_PATH_TOKEN", MARK.to_owned()),
        ("GOLDRELAY_DEV_TOKEN", MARK.to_owned()),
        ("CHATWOOT_API_TOKEN", MARK.to_owned()),
        ("CHATWOOT_WEBHOOK_SECRETS", MARK.to_owned()),
        ("SANDBOX_WEBHOOK_SECRET", MARK.to_owned()),
        (
            "DATABASE_URL",
            format!("postgres://goldrelay:{MARK}@db/goldrelay"),
        ),
    ];
    let mut paths = subcommands(&[]);
    let names: Vec<String> = paths.iter().map(|p| p.join(" ")).collect();
    for expected in ["dev", "sandbox", "serve", "replies retry"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    paths.push(Vec::new());
    let mut shown = String::new();
    for path in &paths {
        let out = Command::cargo_bin("goldrelay")
            .unwrap()
            .env_clear()
            .envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{path:?}");
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!help.contains(MARK), "goldrelay {path:?} --help:\n{help}");
        shown.push_str(&help);
    }
    assert!(
        shown.contains("Exit codes: 0"),
        "the exit codes are not explained"
    );
    // The screens that read a secret from the environment still name it.
    for named in ["GOLDRELAY_DEV_TOKEN", "SANDBOX_WEBHOOK_SECRET"] {
        assert!(shown.contains(named), "no help names {named}");
    }
}

fn check_config(chatwoot_url: &str, dir: &tempfile::TempDir) -> Command {
    let mut cmd = Command::cargo_bin("goldrelay").unwrap();
    cmd.env_clear()
        .env("GOLDRELAY_TOKENS", TOKEN)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/check.db", dir.path().display()),
        )
        .env("CHATWOOT_BASE_URL", chatwoot_url)
        .env("CHATWOOT_API_TOKEN", SandboxConfig::default().user_token)
        .env("CHATWOOT_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .arg("check-config");
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_passes_against_a_reachable_chatwoot() {
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = chatwoot.base_url();
    let output = tokio::task::spawn_blocking(move || check_config(&url, &dir).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok   chatwoot:") && stdout.contains("can read account 1"),
        "{stdout}"
    );
    assert!(stdout.contains("ok   database:"), "{stdout}");
}

#[test]
fn check_config_fails_naming_an_unreachable_chatwoot() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    check_config(&format!("http://127.0.0.1:{port}"), &dir)
        .assert()
        .failure()
        .stdout(
            predicate::str::contains("FAIL chatwoot:")
                .and(predicate::str::contains("not reachable")),
        );
}

#[test]
fn check_config_names_every_missing_variable() {
    Command::cargo_bin("goldrelay")
        .unwrap()
        .env_clear()
        .arg("check-config")
        .assert()
        .failure()
        .stdout(
            predicate::str::contains("FAIL GOLDRELAY_TOKENS is required")
                .and(predicate::str::contains(
                    "FAIL CHATWOOT_BASE_URL is required",
                ))
                .and(predicate::str::contains(
                    "FAIL CHATWOOT_API_TOKEN is required",
                )),
        );
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_routes_the_server_has() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", app.api.address))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path
                .replace("{reply_id}", "no-such-reply")
                .replace("{token}", "t");
            let url = format!("{}{concrete}", app.api.address);
            let request = app
                .api
                .client
                .request(method.to_uppercase().parse().unwrap(), url);
            let response = request.send().await.unwrap();
            let body = response.text().await.unwrap();
            assert!(
                !body.contains("no route for"),
                "{method} {path} is documented but not served"
            );
        }
    }
    // Every API route the router is built from is documented (the console's
    // page and assets are the rows marked undocumented).
    let registered: BTreeSet<&str> = goldrelay::http::ROUTES
        .iter()
        .filter(|route| route.documented)
        .map(|route| route.path)
        .collect();
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    assert!(!registered.is_empty());
    assert_eq!(registered, documented);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_log_line_even_on_errors() {
    const CHATWOOT_TOKEN: &str = "chatwoot-api-token-that-is-wrong-XYZ";
    const PATH_TOKEN: &str = "webhook-path-token-0123456789abcdefgh";
    let chatwoot =
        sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/x.db", dir.path().display());
    let serve = Serve::new(&database, &chatwoot)
        .env("CHATWOOT_API_TOKEN", CHATWOOT_TOKEN)
        .env("GOLDRELAY_WEBHOOK_PATH_TOKEN", PATH_TOKEN);
    let relay = serve.start("goldrelay").await;
    let api = &relay.api;
    // A wrong bearer token that looks like a real one, a good post that Chatwoot
    // refuses (wrong Chatwoot token), and a forged webhook.
    let forged = api
        .webhook()
        .bearer_auth(format!("{TOKEN}-almost"))
        .json(&reply("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    api.accept(&reply("logged-1", 2)).await;
    let refused = |r: &Value| r["last_error"].as_str().is_some_and(|e| e.contains("401"));
    api.wait_until("logged-1", "refused by Chatwoot", PATIENCE, refused)
        .await;
    let webhook = api
        .client
        .post(format!("{}/api/webhooks/chatwoot", api.address))
        .header("X-Chatwoot-Timestamp", "1")
        .header(
            "X-Chatwoot-Signature",
            goldrelay::sandbox::sign(WEBHOOK_SECRET, "2", b"{}"),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 401);
    // The unsigned path-token route: its log line names the route template.
    for token in [PATH_TOKEN, "webhook-path-token-0123456789abcdefgX"] {
        api.client
            .post(format!("{}/api/webhooks/chatwoot/{token}", api.address))
            .json(&serde_json::json!({"event": "conversation_updated", "id": 1}))
            .send()
            .await
            .unwrap();
    }
    relay.kill();
    let text = read_log(&serve.log_of("goldrelay"));
    assert!(
        text.contains("/api/webhooks/chatwoot/{token}"),
        "no request line for the path-token route:\n{text}"
    );
    for secret in [
        TOKEN,
        CHATWOOT_TOKEN,
        WEBHOOK_SECRET,
        PATH_TOKEN,
        "0123456789abcdefgX",
    ] {
        assert!(!text.contains(secret), "a secret reached the log:\n{text}");
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["reply_id"] == "logged-1")
        .expect("a request line carries the reply id");
    for field in ["request_id", "route", "status", "latency_ms"] {
        assert!(!request[field].is_null(), "{field} missing from {request}");
    }
    let attempt = lines
        .iter()
        .find(|l| l["message"] == "delivery attempt sent nothing" && l["outcome"] == "unsent")
        .expect("a delivery attempt line");
    assert_eq!(attempt["chatwoot_status"], 401);
}
