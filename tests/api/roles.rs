//! Every route of `goldrelay::http::ROUTES` tried over HTTP with every kind of
//! caller (no token, Support, viewer, operator, a wrong token), each answer
//! held to the row's roles; and the README's roles table held to the same rows.

use crate::export::VIEWER_TOKEN;
use crate::helpers::{assert_problem, reply, spawn_app_with, TestApp, OPERATOR_TOKEN, TOKEN};
use goldrelay::http::{Access, Method, Role, ROUTES};
use goldrelay::sandbox::SandboxConfig;
use reqwest::header::WWW_AUTHENTICATE;

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
