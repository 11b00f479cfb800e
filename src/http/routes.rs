//! Every route of the API, written once: its path, its method, who may call
//! it and its handler. The router, `405`'s `Allow` and the route × role test
//! (`tests/api/roles.rs`) all read [`ROUTES`], and a test holds the `security`
//! of each operation in `openapi.json` to it, so none of them can drift.
//!
//! A handler still states its role in its signature (a [`Poster`], a
//! [`Reader`]…); the row names the same extractor's [`Admits::ROLES`], and the
//! route × role test proves over HTTP that the two agree. What a route's
//! requests are counted in is the row's [`Meter`], so a handler takes a typed
//! caller and its refusals are counted all the same.

use super::auth::{Admits, Caller, Operator, Poster, Reader, Role};
use super::problem::ApiError;
use super::{console, conversation, export, health, replies, summary, webhook};
use actix_web::dev::ResourceDef;
use actix_web::middleware::from_fn;
use actix_web::{guard, web, HttpRequest, HttpResponse, ResponseError};
use std::sync::OnceLock;

/// The methods a row answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`, and `HEAD` with it, as HTTP clients expect (the server sends the
    /// headers without the body).
    Get,
    Post,
}

impl Method {
    /// The method as `openapi.json` keys an operation.
    pub fn openapi_key(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }

    /// What the row adds to `Allow`.
    fn allow(self) -> &'static str {
        match self {
            Method::Get => "GET, HEAD",
            Method::Post => "POST",
        }
    }

    fn guard(self) -> guard::AnyGuard {
        match self {
            Method::Get => guard::Any(guard::Get()).or(guard::Head()),
            Method::Post => guard::Any(guard::Post()),
        }
    }
}

/// What a route's requests are counted in, by a middleware around the route:
/// every request of the row's method, the ones an extractor refused (no
/// token, a bad signature…) included, by the outcome its answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    /// Gold-reply posts: `goldrelay_ingest_requests_total` and
    /// `goldrelay_ingest_duration_seconds`, each post in an `ingest` span.
    Ingest,
    /// Chatwoot's webhook requests: `goldrelay_chatwoot_events_total`.
    Events,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: no token is read.
    Anyone,
    /// A bearer token of one of these roles; any other role is refused 403
    /// with `required_role`, no token or an unknown one 401.
    Bearer(&'static [Role]),
    /// Chatwoot, proven by a signature or the path token; a bearer token
    /// neither helps nor hurts.
    Chatwoot,
}

/// One row of [`ROUTES`].
pub struct Route {
    /// The path pattern, as actix and `openapi.json` write it.
    pub path: &'static str,
    pub method: Method,
    pub access: Access,
    /// Described in `openapi.json`; the console's page and assets are not API.
    pub documented: bool,
    /// What its requests are counted in, if anything.
    pub meter: Option<Meter>,
    handler: fn(actix_web::Route) -> actix_web::Route,
}

/// Every route, in matching order (`/api/gold-replies/export` and `…/summary` before
/// `/api/gold-replies/{reply_id}`). A route is served only through a row here.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/hc",
        method: Method::Get,
        access: Access::Anyone,
        documented: true,
        meter: None,
        handler: |r| r.to(health::health),
    },
    Route {
        path: "/metrics",
        method: Method::Get,
        access: Access::Bearer(Operator::ROLES),
        documented: true,
        meter: None,
        handler: |r| r.to(super::metrics),
    },
    Route {
        path: "/openapi.json",
        method: Method::Get,
        access: Access::Anyone,
        documented: true,
        meter: None,
        handler: |r| r.to(super::openapi),
    },
    Route {
        path: "/api/gold-replies",
        method: Method::Get,
        access: Access::Bearer(Reader::ROLES),
        documented: true,
        meter: None,
        handler: |r| r.to(replies::list_replies),
    },
    Route {
        path: "/api/gold-replies/export",
        method: Method::Get,
        access: Access::Bearer(Reader::ROLES),
        documented: true,
        meter: None,
        handler: |r| r.to(export::export),
    },
    Route {
        path: "/api/gold-replies/summary",
        method: Method::Get,
        access: Access::Bearer(Reader::ROLES),
        documented: true,
        meter: None,
        handler: |r| r.to(summary::summary),
    },
    Route {
        path: "/api/accounts/{account_id}/conversations/{conversation_id}/gold-replies",
        method: Method::Get,
        access: Access::Bearer(Reader::ROLES),
        documented: true,
        meter: None,
        handler: |r| r.to(conversation::conversation),
    },
    Route {
        path: "/console",
        method: Method::Get,
        access: Access::Anyone,
        documented: false,
        meter: None,
        handler: |r| r.to(console::to_index),
    },
    Route {
        path: "/console/",
        method: Method::Get,
        access: Access::Anyone,
        documented: false,
        meter: None,
        handler: |r| r.to(console::index),
    },
    Route {
        path: "/console/{asset}",
        method: Method::Get,
        access: Access::Anyone,
        documented: false,
        meter: None,
        handler: |r| r.to(console::asset),
    },
    Route {
        path: "/api/gold-replies/{reply_id}/retry",
        method: Method::Post,
        access: Access::Bearer(Operator::ROLES),
        documented: true,
        meter: None,
        handler: |r| r.to(replies::retry_reply),
    },
    Route {
        path: "/api/webhooks/gold-replies",
        method: Method::Post,
        access: Access::Bearer(Poster::ROLES),
        documented: true,
        meter: Some(Meter::Ingest),
        handler: |r| r.to(replies::post_reply),
    },
    Route {
        path: "/api/gold-replies/{reply_id}",
        method: Method::Get,
        access: Access::Bearer(Caller::ROLES),
        documented: true,
        meter: None,
        handler: |r| r.to(replies::get_reply),
    },
    Route {
        path: "/api/webhooks/chatwoot",
        method: Method::Post,
        access: Access::Chatwoot,
        documented: true,
        meter: Some(Meter::Events),
        handler: |r| r.to(webhook::signed),
    },
    Route {
        path: "/api/webhooks/chatwoot/{token}",
        method: Method::Post,
        access: Access::Chatwoot,
        documented: true,
        meter: Some(Meter::Events),
        handler: |r| r.to(webhook::path_token),
    },
];

/// Registers every row of [`ROUTES`], each metered by its [`Meter`], and
/// 404/405 for everything else.
pub fn register(cfg: &mut web::ServiceConfig) {
    for route in ROUTES {
        // The method guards the resource, not the route: another method falls
        // through to `not_found` (405), unmetered.
        let resource = web::resource(route.path)
            .guard(route.method.guard())
            .route((route.handler)(web::route()));
        match route.meter {
            Some(meter) => cfg
                .service(resource.wrap(from_fn(move |req, next| super::metered(meter, req, next)))),
            None => cfg.service(resource),
        };
    }
    cfg.default_service(web::to(not_found));
}

/// Each path of [`ROUTES`] compiled once with its `Allow`: compiling them for
/// every unmatched request would let a flood of 404s cost far more than it should.
fn allowed() -> &'static [(ResourceDef, String)] {
    static COMPILED: OnceLock<Vec<(ResourceDef, String)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut paths: Vec<(&str, Vec<&str>)> = Vec::new();
        for route in ROUTES {
            match paths.iter_mut().find(|(path, _)| *path == route.path) {
                Some((_, methods)) => methods.push(route.method.allow()),
                None => paths.push((route.path, vec![route.method.allow()])),
            }
        }
        paths
            .into_iter()
            .map(|(path, methods)| (ResourceDef::new(path), methods.join(", ")))
            .collect()
    })
}

/// What no route answered: 405 with `Allow` on a known path, 404 otherwise.
async fn not_found(req: HttpRequest) -> HttpResponse {
    let known = allowed()
        .iter()
        .find(|(pattern, _)| pattern.is_match(req.path()));
    if let Some((_, allow)) = known {
        return ApiError::MethodNotAllowed(req.method().to_string(), allow).error_response();
    }
    no_route(&req).error_response()
}

/// A plain 404 for a path no route serves.
pub fn no_route(req: &HttpRequest) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn openapi() -> Value {
        serde_json::from_str(super::super::OPENAPI).expect("openapi.json is JSON")
    }

    /// The security schemes an operation names, as a set of role names.
    fn documented_roles(operation: &Value) -> BTreeSet<String> {
        let requirements = operation["security"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        requirements
            .iter()
            .flat_map(|r| r.as_object().into_iter().flat_map(|o| o.keys().cloned()))
            .collect()
    }

    #[test]
    fn every_documented_route_has_its_openapi_operation_with_the_same_roles() {
        let doc = openapi();
        for route in ROUTES.iter().filter(|r| r.documented) {
            let operation = &doc["paths"][route.path][route.method.openapi_key()];
            let name = format!("{} {}", route.method.openapi_key(), route.path);
            assert!(operation.is_object(), "{name} is not in openapi.json");
            let expected: BTreeSet<String> = match route.access {
                Access::Bearer(roles) => roles.iter().map(|r| r.name().to_owned()).collect(),
                Access::Anyone | Access::Chatwoot => BTreeSet::new(),
            };
            assert_eq!(documented_roles(operation), expected, "security of {name}");
            let responses = &operation["responses"];
            if let Access::Bearer(roles) = route.access {
                assert!(responses["401"].is_object(), "{name} documents no 401");
                // A role left out, or a token bound to another account, is refused 403.
                let all_roles = roles.len() == 3;
                let scoped = route.path != "/api/gold-replies/{reply_id}";
                if !all_roles || scoped {
                    assert!(responses["403"].is_object(), "{name} documents no 403");
                }
            }
        }
    }

    #[test]
    fn every_openapi_operation_is_a_documented_route() {
        let doc = openapi();
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            for method in operations.as_object().expect("operations").keys() {
                let row = ROUTES
                    .iter()
                    .find(|r| r.documented && r.path == path && r.method.openapi_key() == method);
                assert!(row.is_some(), "{method} {path} has no row in ROUTES");
            }
        }
    }

    #[test]
    fn allow_names_every_method_of_a_path() {
        let allow = |path: &str| {
            let found = allowed().iter().find(|(def, _)| def.is_match(path));
            found.map(|(_, allow)| allow.as_str())
        };
        assert_eq!(allow("/api/webhooks/gold-replies"), Some("POST"));
        assert_eq!(allow("/api/gold-replies/export"), Some("GET, HEAD"));
        assert_eq!(allow("/nowhere"), None);
    }

    /// A handler that took `Result<Poster, _>` (or another role's) would
    /// run for a refused caller, and `docs/architecture.md` says none can.
    #[test]
    fn no_handler_takes_the_result_of_a_bearer_check() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
        for entry in std::fs::read_dir(&dir).expect("src/http") {
            let path = entry.expect("a directory entry").path();
            let Ok(source) = std::fs::read_to_string(&path) else {
                continue;
            };
            for role in ["Caller", "Poster", "Reader", "Operator"] {
                assert!(
                    !source.contains(&format!(": Result<{role}")),
                    "{} takes Result<{role}, _>: take {role} and count refusals in a Meter",
                    path.display()
                );
            }
        }
    }

    /// The router is built from [`ROUTES`] alone: a route registered anywhere
    /// else in `src/http` would be served without a row, so this refuses it.
    #[test]
    fn no_file_of_the_http_module_registers_a_route_outside_the_table() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
        for entry in std::fs::read_dir(&dir).expect("src/http") {
            let path = entry.expect("a directory entry").path();
            let is_rust = path.extension().is_some_and(|e| e == "rs");
            if !is_rust || path.ends_with("routes.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("readable source");
            for call in [".route(", ".service(", "web::resource(", "web::scope("] {
                assert!(
                    !source.contains(call),
                    "{} registers a route with {call}: add a row to ROUTES instead",
                    path.display()
                );
            }
        }
    }
}
