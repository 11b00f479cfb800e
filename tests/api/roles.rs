//! Every route of `goldrelay::http::ROUTES` tried over HTTP with every kind of
//! caller (no token, Support, viewer, operator, a wrong token), each answer
//! held to the row's roles; and the README's roles table held to the same rows.

use crate::export::VIEWER_TOKEN;
use crate::helpers::{
    assert_problem, database_url, reply, spawn_app_with, TestApp, OPERATOR_TOKEN, TOKEN,
};
use chrono::Utc;
use goldrelay::config::{BearerToken, DatabaseUrl};
use goldrelay::domain::GoldReply;
use goldrelay::http::{Access, Method, Role, ROUTES};
use goldrelay::sandbox::SandboxConfig;
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Who calls, and with which token.
#[derive(Debug, Clone, Copy)]
enum Who {
    Nobody,
    Wrong,
    As(Role),
}

const EVERYONE: [Who; 5] = [
    Who::Nobody,
    Who::Wrong,
    Who::As(Role::Support),
    Who::As(Role::Viewer),
    Who::As(Role::Operator),
];

impl Who {
    fn token(self) -> Option<&'static str> {
        match self {
            Who::Nobody => None,
            Who::Wrong => Some("wrong-token-0123456789abcdefghijklmnopq"),
            Who::As(Role::Support) => Some(TOKEN),
            Who::As(Role::Viewer) => Some(VIEWER_TOKEN),
            Who::As(Role::Operator) => Some(OPERATOR_TOKEN),
        }
    }
}

/// A route's pattern with every `{…}` filled in with something that exists.
fn concrete(path: &str) -> String {
    path.replace("{reply_id}", "roles-seed")
        .replace("{account_id}", "1")
        .replace("{conversation_id}", "3")
        .replace("{asset}", "app.js")
        .replace("{token}", "not-the-path-token-0123456789abcdef")
}

async fn call(app: &TestApp, method: Method, path: &str, who: Who, n: usize) -> reqwest::Response {
    let url = format!("{}{path}", app.api.address);
    let mut request = match method {
        Method::Get => app.api.client.get(url),
        // A fresh reply each time, so an admitted post is accepted, not a conflict.
        Method::Post => app
            .api
            .client
            .post(url)
            .json(&reply(&format!("roles-{n}"), 3)),
    };
    if let Some(token) = who.token() {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request sent")
}

async fn roles_app() -> TestApp {
    spawn_app_with(SandboxConfig::default(), |s| {
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
    })
    .await
}

#[tokio::test]
async fn every_route_answers_every_role_as_its_row_says() {
    let app = roles_app().await;
    app.api.accept(&reply("roles-seed", 3)).await;
    let mut n = 0;
    for route in ROUTES {
        let path = concrete(route.path);
        for who in EVERYONE {
            n += 1;
            let response = call(&app, route.method, &path, who, n).await;
            let name = format!("{:?} {path} as {who:?}", route.method);
            expect(route.access, who, response, &name).await;
        }
    }
}

/// What `who` must be answered on a route of `access`.
async fn expect(access: Access, who: Who, response: reqwest::Response, name: &str) {
    let status = response.status().as_u16();
    match (access, who) {
        (Access::Anyone, _) => assert!(status < 400, "{name}: {status}"),
        (Access::Chatwoot, _) => assert_eq!(status, 401, "{name}"),
        (Access::Bearer(_), Who::Nobody | Who::Wrong) => {
            assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer", "{name}");
            assert_problem(response, 401).await;
        }
        (Access::Bearer(roles), Who::As(role)) if roles.contains(&role) => {
            assert!(
                status < 400 || matches!(status, 404 | 409),
                "{name}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
        (Access::Bearer(roles), Who::As(_)) => {
            let problem = assert_problem(response, 403).await;
            assert_eq!(
                problem["type"], "urn:goldrelay:problem:role-required",
                "{name}"
            );
            let required = problem["required_role"].as_str().unwrap_or_default();
            let named: Vec<&str> = required.split(" or ").collect();
            assert!(
                named.iter().all(|n| roles.iter().any(|r| r.name() == *n)),
                "{name}: required_role {required:?} names a role the row does not admit"
            );
        }
    }
}

/// A refused post leaves nothing behind: the reply id stays free.
#[tokio::test]
async fn a_post_refused_for_its_role_stores_nothing() {
    let app = roles_app().await;
    let post = ROUTES
        .iter()
        .find(|r| r.path == "/api/webhooks/gold-replies")
        .expect("the post has a row");
    let Access::Bearer(roles) = post.access else {
        panic!("posting needs a bearer token");
    };
    assert!(!roles.contains(&Role::Viewer), "viewers must not post");
    let refused = call(&app, post.method, post.path, Who::As(Role::Viewer), 0).await;
    assert_problem(refused, 403).await;
    assert_problem(app.api.get_reply("roles-0").await, 404).await;
}

/// The README's "Roles" table: one row per bearer route, a ✓ per role it admits.
fn readme_roles() -> Vec<(String, Vec<String>)> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### Roles")
        .nth(1)
        .expect("the README has a Roles section");
    let mut lines = section.lines().skip_while(|l| !l.starts_with('|'));
    let header: Vec<String> = cells(lines.next().expect("a table"));
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let row = cells(line);
            let admitted = header
                .iter()
                .zip(&row)
                .skip(1)
                .filter(|(_, mark)| mark.as_str() == "✓")
                .map(|(role, _)| role.to_lowercase())
                .collect();
            (row[0].trim_matches('`').to_owned(), admitted)
        })
        .collect()
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

#[test]
fn the_readme_roles_table_is_the_route_table() {
    let documented = readme_roles();
    let bearer: Vec<(String, Vec<String>)> = ROUTES
        .iter()
        .filter_map(|route| match route.access {
            Access::Bearer(roles) => {
                let method = route.method.openapi_key().to_uppercase();
                let mut names: Vec<String> = roles.iter().map(|r| r.name().to_owned()).collect();
                names.sort();
                Some((format!("{method} {}", route.path), names))
            }
            Access::Anyone | Access::Chatwoot => None,
        })
        .collect();
    let mut documented: Vec<(String, Vec<String>)> = documented
        .into_iter()
        .map(|(route, mut roles)| {
            roles.sort();
            (route, roles)
        })
        .collect();
    documented.sort();
    let mut expected = bearer;
    expected.sort();
    assert_eq!(documented, expected, "README's roles table vs ROUTES");
}

// ------------------------------------------------ tokens bound to an account

/// A viewer token bound to account 1 (`1:<token>` in `GOLDRELAY_VIEWER_TOKENS`),
/// the kind the Dashboard App of account 1 carries.
const BOUND_VIEWER: &str = "bound-viewer-0123456789abcdefghijklm";
/// A Support token bound to account 1.
const BOUND_SUPPORT: &str = "bound-support-0123456789abcdefghijkl";

/// A goldrelay holding decisions of accounts 1 and 2 (received an hour ago,
/// so the export has them), with bound and unbound tokens.
async fn two_accounts() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::parse(&database_url(&dir)).unwrap();
    let store = goldrelay::store::open(&url).await.unwrap();
    let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
    for (i, (id, account, conversation)) in SEEDED.into_iter().enumerate() {
        let body = json!({
            "reply_id": id, "account_id": account, "conversation_id": conversation,
            "action": "approve", "content": format!("Reply {id}"),
            "approved_by": "priya@example.com",
        });
        let reply = GoldReply::parse(&body).unwrap();
        let at = an_hour_ago + chrono::Duration::milliseconds(i as i64);
        store.ingest(&reply, at).await.unwrap();
    }
    drop(store);
    let app = spawn_app_with(SandboxConfig::default(), |s| {
        s.database_url = url;
        s.viewer_tokens = vec![VIEWER_TOKEN.into(), BearerToken::bound(1, BOUND_VIEWER)];
        s.tokens.push(BearerToken::bound(1, BOUND_SUPPORT));
    })
    .await;
    (app, dir)
}

/// `(reply_id, account_id, conversation_id)` of the seeded decisions.
const SEEDED: [(&str, i64, i64); 5] = [
    ("a1-one", 1, 7),
    ("a2-one", 2, 7),
    ("a1-two", 1, 8),
    ("a2-two", 2, 8),
    ("a1-three", 1, 7),
];

fn seeded_of(account: i64) -> BTreeSet<String> {
    SEEDED
        .iter()
        .filter(|(_, a, _)| *a == account)
        .map(|(id, _, _)| id.to_string())
        .collect()
}

async fn get(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    let url = format!("{}{path}", app.api.address);
    let response = app.api.client.get(url).bearer_auth(token).send().await;
    response.expect("request sent")
}

/// The reply ids of a list or conversation answer, and its accounts.
async fn items(response: reqwest::Response) -> (BTreeSet<String>, BTreeSet<i64>) {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let items = body["items"].as_array().expect("items").clone();
    let ids = items
        .iter()
        .map(|r| r["reply_id"].as_str().unwrap().to_owned());
    let accounts = items.iter().map(|r| r["account_id"].as_i64().unwrap());
    (ids.collect(), accounts.collect())
}

async fn assert_account_forbidden(response: reqwest::Response) {
    let problem = assert_problem(response, 403).await;
    assert_eq!(problem["type"], "urn:goldrelay:problem:account-forbidden");
}

#[tokio::test]
async fn a_bound_viewer_token_reads_lists_and_exports_only_its_account() {
    let (app, _dir) = two_accounts().await;
    // One reply: another account's is absent, exactly like one that never was.
    assert_eq!(
        get(&app, "/api/gold-replies/a1-one", BOUND_VIEWER)
            .await
            .status(),
        200
    );
    let hidden = assert_problem(
        get(&app, "/api/gold-replies/a2-one", BOUND_VIEWER).await,
        404,
    )
    .await;
    let absent = assert_problem(
        get(&app, "/api/gold-replies/a9-none", BOUND_VIEWER).await,
        404,
    )
    .await;
    assert_eq!(hidden["type"], absent["type"]);
    assert_eq!(
        hidden["detail"].as_str().unwrap().replace("a2-one", "?"),
        absent["detail"].as_str().unwrap().replace("a9-none", "?")
    );
    // The list: its own account unasked, its own account asked, another refused.
    for query in ["limit=500", "account_id=1&limit=500"] {
        let listed =
            items(get(&app, &format!("/api/gold-replies?{query}"), BOUND_VIEWER).await).await;
        assert_eq!(listed, (seeded_of(1), BTreeSet::from([1])), "{query}");
    }
    let other = get(&app, "/api/gold-replies?account_id=2", BOUND_VIEWER).await;
    assert_account_forbidden(other).await;
    // The export holds its own account only.
    let export = get(&app, "/api/gold-replies/export", BOUND_VIEWER).await;
    assert_eq!(export.status(), 200);
    let lines: Vec<Value> = export
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exported: BTreeSet<String> = lines
        .iter()
        .map(|l| l["reply_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exported, seeded_of(1));
    // An unbound viewer token keeps today's reach.
    let everything = items(get(&app, "/api/gold-replies?limit=500", VIEWER_TOKEN).await).await;
    assert_eq!(everything.1, BTreeSet::from([1, 2]));
    assert_eq!(
        get(&app, "/api/gold-replies/a2-one", VIEWER_TOKEN)
            .await
            .status(),
        200
    );
}

/// What the console asks for (`src/http/console/app.js`), asked with a
/// Dashboard App's bound token: its own account's conversation view and
/// operator list work, another account's conversation is refused by name.
#[tokio::test]
async fn the_consoles_requests_work_with_a_bound_token_and_stop_at_its_account() {
    let (app, _dir) = two_accounts().await;
    let page = reqwest::get(format!("{}/console/", app.api.address))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let conversation = "/api/accounts/1/conversations/7/gold-replies";
    let (ids, _) = items(get(&app, conversation, BOUND_VIEWER).await).await;
    assert_eq!(ids, BTreeSet::from(["a1-one".into(), "a1-three".into()]));
    let operator_view = "/api/gold-replies?limit=25&status=recorded";
    let (ids, accounts) = items(get(&app, operator_view, BOUND_VIEWER).await).await;
    assert_eq!((ids, accounts), (seeded_of(1), BTreeSet::from([1])));
    let elsewhere = get(
        &app,
        "/api/accounts/2/conversations/7/gold-replies",
        BOUND_VIEWER,
    )
    .await;
    assert_account_forbidden(elsewhere).await;
    let retry = app
        .api
        .client
        .post(format!("{}/api/gold-replies/a1-one/retry", app.api.address))
        .bearer_auth(BOUND_VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(retry, 403).await["required_role"],
        "operator"
    );
}

#[tokio::test]
async fn a_bound_support_token_posts_and_reads_only_its_account_and_a_refused_post_stores_nothing()
{
    let (app, _dir) = two_accounts().await;
    let post = |account: i64, id: &str| {
        let mut body = reply(id, 7);
        body["account_id"] = json!(account);
        app.api
            .webhook()
            .bearer_auth(BOUND_SUPPORT)
            .json(&body)
            .send()
    };
    assert_account_forbidden(post(2, "bound-elsewhere").await.unwrap()).await;
    let stored = get(&app, "/api/gold-replies/bound-elsewhere", OPERATOR_TOKEN).await;
    assert_problem(stored, 404).await;
    assert_eq!(post(1, "bound-here").await.unwrap().status(), 202);
    assert_eq!(
        get(&app, "/api/gold-replies/bound-here", BOUND_SUPPORT)
            .await
            .status(),
        200
    );
    assert_problem(
        get(&app, "/api/gold-replies/a2-one", BOUND_SUPPORT).await,
        404,
    )
    .await;
    // The reply id refused for account 2 is still free for an unbound token.
    let mut body = reply("bound-elsewhere", 7);
    body["account_id"] = json!(2);
    let unbound = app
        .api
        .webhook()
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(unbound.status(), 202);
}

/// A token under two roles would silently get the last one granted: `serve`
/// and `check-config` refuse it in one line naming the variables, not the token.
#[test]
fn a_token_listed_under_two_roles_stops_serve_and_check_config_in_one_line() {
    for command in ["serve", "check-config"] {
        let output = assert_cmd::Command::cargo_bin("goldrelay")
            .unwrap()
            .arg(command)
            .env_clear()
            .env("DATABASE_URL", "sqlite::memory:")
            .env("GOLDRELAY_TOKENS", OPERATOR_TOKEN)
            .env("GOLDRELAY_OPERATOR_TOKENS", OPERATOR_TOKEN)
            .env("CHATWOOT_BASE_URL", "http://127.0.0.1:9")
            .env("CHATWOOT_API_TOKEN", "x")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{command} started");
        let text = String::from_utf8_lossy(&output.stderr).to_string()
            + &String::from_utf8_lossy(&output.stdout);
        let naming: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("GOLDRELAY_OPERATOR_TOKENS"))
            .collect();
        assert_eq!(naming.len(), 1, "{command}: {text}");
        assert!(
            naming[0].contains("listed in GOLDRELAY_TOKENS and GOLDRELAY_OPERATOR_TOKENS"),
            "{command}: {text}"
        );
        assert!(
            !text.contains(OPERATOR_TOKEN),
            "{command} showed the token: {text}"
        );
    }
}
