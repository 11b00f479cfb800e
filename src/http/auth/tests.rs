//! Unit tests for bearer tokens: roles, account binding, the per-token and per-client-address rate budgets.

use super::*;
use actix_web::test::TestRequest;

fn tokens() -> BearerTokens {
    BearerTokens::new(&["s3cret".into()])
}

#[test]
fn a_configured_token_is_a_support_caller() {
    let req = TestRequest::default()
        .insert_header((AUTHORIZATION, "Bearer s3cret"))
        .to_http_request();
    assert_eq!(tokens().caller(&req).unwrap().role, Role::Support);
}

#[test]
fn an_operator_token_is_an_operator_caller() {
    let tokens = tokens().grant(Role::Operator, &["0p3rator".into()]);
    let req = TestRequest::default()
        .insert_header((AUTHORIZATION, "Bearer 0p3rator"))
        .to_http_request();
    assert_eq!(tokens.caller(&req).unwrap().role, Role::Operator);
    assert!(tokens.has(Role::Operator) && !self::tokens().has(Role::Operator));
}

#[test]
fn a_viewer_token_is_a_viewer_caller() {
    let tokens = tokens().grant(Role::Viewer, &["v1ewer".into()]);
    let req = TestRequest::default()
        .insert_header((AUTHORIZATION, "Bearer v1ewer"))
        .to_http_request();
    assert_eq!(tokens.caller(&req).unwrap().role, Role::Viewer);
    assert!(tokens.has(Role::Viewer) && !tokens.has(Role::Operator));
}

#[test]
fn a_bound_token_reaches_its_account_only_and_an_unbound_one_every_account() {
    let tokens = tokens().grant(
        Role::Viewer,
        &[BearerToken::bound(7, "v1ewer"), "v2ewer".into()],
    );
    let caller = |token: &str| {
        let req = TestRequest::default()
            .insert_header((AUTHORIZATION, format!("Bearer {token}")))
            .to_http_request();
        tokens.caller(&req).unwrap()
    };
    let bound = caller("v1ewer");
    assert_eq!((bound.role, bound.scope), (Role::Viewer, Scope::bound(7)));
    assert!(bound.scope.sees(7) && !bound.scope.sees(8));
    assert!(bound.scope.require(8).is_err());
    assert_eq!(bound.scope.narrow(None).unwrap(), Some(7));
    assert!(bound.scope.narrow(Some(8)).is_err());
    let unbound = caller("v2ewer").scope;
    assert!(unbound.sees(8) && unbound.require(8).is_ok());
    assert_eq!(unbound.narrow(None).unwrap(), None);
    assert_eq!(caller("s3cret").scope, Scope::default());
}

#[test]
fn a_token_past_its_rate_is_told_when_to_come_back() {
    let tokens = tokens().limit_rate(1);
    let req = TestRequest::default()
        .insert_header((AUTHORIZATION, "Bearer s3cret"))
        .to_http_request();
    assert!(tokens.caller(&req).is_ok());
    let refused = tokens.caller(&req);
    assert!(
        matches!(refused, Err(ApiError::TooManyRequests { wait, .. }) if wait >= Duration::from_secs(1)),
        "{refused:?}"
    );
}

const VIEWER: &str = "v1ewer";

/// A request with `token`, from the TCP peer `peer`, with a
/// `Fly-Client-IP` header when `told` is given.
fn from(token: &str, peer: &str, told: Option<&str>) -> HttpRequest {
    let mut req = TestRequest::default()
        .insert_header((AUTHORIZATION, format!("Bearer {token}")))
        .peer_addr(peer.parse().unwrap());
    if let Some(told) = told {
        req = req.insert_header(("Fly-Client-IP", told));
    }
    req.to_http_request()
}

fn limited(header: Option<&str>) -> BearerTokens {
    tokens()
        .grant(Role::Viewer, &[VIEWER.into()])
        .limit_rate(1)
        .client_address_header(header)
}

fn admitted(tokens: &BearerTokens, req: &HttpRequest) -> bool {
    match tokens.caller(req) {
        Ok(_) => true,
        Err(ApiError::TooManyRequests { .. }) => false,
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn a_viewer_token_has_a_budget_per_client_address_and_a_support_token_one_everywhere() {
    let tokens = limited(None);
    let (here, there) = ("192.0.2.1:4000", "198.51.100.7:4000");
    assert!(admitted(&tokens, &from(VIEWER, here, None)));
    assert!(!admitted(&tokens, &from(VIEWER, "192.0.2.1:4001", None)));
    assert!(admitted(&tokens, &from(VIEWER, there, None)));
    assert!(admitted(&tokens, &from("s3cret", here, None)));
    assert!(!admitted(&tokens, &from("s3cret", there, None)));
}

#[test]
fn the_client_address_header_is_believed_only_when_configured_and_well_formed() {
    let peer = "10.0.0.1:443";
    let ignored = limited(None);
    assert!(admitted(&ignored, &from(VIEWER, peer, Some("192.0.2.1"))));
    assert!(!admitted(&ignored, &from(VIEWER, peer, Some("192.0.2.2"))));

    let trusted = limited(Some("fly-client-ip"));
    assert!(admitted(&trusted, &from(VIEWER, peer, Some("192.0.2.1"))));
    assert!(!admitted(&trusted, &from(VIEWER, peer, Some("192.0.2.1"))));
    assert!(admitted(&trusted, &from(VIEWER, peer, Some("192.0.2.2"))));
    // A list's last entry is the proxy's; the rest is the client's to forge.
    assert!(!admitted(
        &trusted,
        &from(VIEWER, peer, Some("203.0.113.9, 192.0.2.2"))
    ));
    // Garbled or missing: the peer it is, one budget for all of them.
    assert!(admitted(
        &trusted,
        &from(VIEWER, peer, Some("not an address"))
    ));
    assert!(!admitted(&trusted, &from(VIEWER, peer, None)));
}

#[test]
fn an_ipv6_slash_64_is_one_client_and_a_mapped_ipv4_address_is_that_address() {
    let tokens = limited(None);
    assert!(admitted(
        &tokens,
        &from(VIEWER, "[2001:db8:1:2::1]:4000", None)
    ));
    assert!(!admitted(
        &tokens,
        &from(VIEWER, "[2001:db8:1:2:ffff::9]:4000", None)
    ));
    assert!(admitted(
        &tokens,
        &from(VIEWER, "[2001:db8:1:3::1]:4000", None)
    ));
    assert!(admitted(&tokens, &from(VIEWER, "192.0.2.1:4000", None)));
    assert!(!admitted(
        &tokens,
        &from(VIEWER, "[::ffff:192.0.2.1]:4000", None)
    ));
}

#[test]
fn budgets_of_idle_client_addresses_are_pruned() {
    // At 1000 a second, a budget spent once has refilled within 2 ms.
    let tokens = tokens()
        .grant(Role::Viewer, &[VIEWER.into()])
        .limit_rate(1000);
    let keys = || tokens.rate.as_ref().unwrap().limiter.len();
    let from_address = |n: u32| {
        let peer = SocketAddr::from((std::net::Ipv4Addr::from(n), 4000));
        assert!(admitted(&tokens, &from(VIEWER, &peer.to_string(), None)));
    };
    let first = 1 << 24;
    (first..first + PRUNE_EVERY - 1).for_each(from_address);
    assert_eq!(keys(), PRUNE_EVERY as usize - 1, "one budget per address");
    std::thread::sleep(Duration::from_millis(20));
    from_address(2 << 24);
    assert_eq!(keys(), 1, "the idle budgets were kept");
}

#[test]
fn no_token_or_an_unknown_one_is_unauthorized() {
    for header in [None, Some("Bearer s3cre"), Some("Basic s3cret")] {
        let mut req = TestRequest::default();
        if let Some(value) = header {
            req = req.insert_header((AUTHORIZATION, value));
        }
        let refused = tokens().caller(&req.to_http_request());
        assert!(matches!(refused, Err(ApiError::Unauthorized)), "{header:?}");
    }
}
