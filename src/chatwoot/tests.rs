//! Unit tests for the Chatwoot client: error classification, Retry-After, the health probe and the turns a listed message makes.

use super::messages::{turn_of, ListedMessage};
use super::*;
use crate::domain::TurnRole;
use reqwest::header::HeaderValue;

#[test]
fn the_flood_guard_is_transient_but_other_validation_failures_are_permanent() {
    let h = HeaderMap::new();
    let flood = classify(
        StatusCode::UNPROCESSABLE_ENTITY,
        &h,
        r#"{"error":"Validation failed: Too many messages"}"#,
    );
    assert!(matches!(
        flood,
        SendError::Transient {
            maybe_created: false,
            ..
        }
    ));
    let long = classify(
        StatusCode::UNPROCESSABLE_ENTITY,
        &h,
        r#"{"error":"Validation failed: Content is too long (maximum is 150000 characters)"}"#,
    );
    assert!(matches!(long, SendError::Permanent { status: 422, .. }));
}

#[test]
fn a_lookup_that_proves_nothing_was_created_clears_maybe_created_and_keeps_the_rest() {
    let unsure = SendError::Transient {
        status: Some(422),
        retry_after: Some(Duration::from_secs(7)),
        maybe_created: true,
        detail: "Redis::CannotConnectError".into(),
    };
    let SendError::Transient {
        status,
        retry_after,
        maybe_created,
        detail,
    } = unsure.proven_not_created()
    else {
        panic!("a transient error stays transient");
    };
    assert_eq!(status, Some(422));
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(!maybe_created);
    assert_eq!(detail, "Redis::CannotConnectError");
    let refused = SendError::Permanent {
        status: 422,
        detail: "Content is too long".into(),
    };
    assert!(matches!(
        refused.proven_not_created(),
        SendError::Permanent { status: 422, .. }
    ));
}

#[test]
fn a_422_raised_after_the_commit_and_a_5xx_may_have_created_the_message() {
    let h = HeaderMap::new();
    let redis = r#"{"error":"Redis::CannotConnectError: Error connecting to Redis"}"#;
    for (status, body) in [
        (StatusCode::UNPROCESSABLE_ENTITY, redis),
        (StatusCode::BAD_GATEWAY, "<html>Bad Gateway</html>"),
        (StatusCode::INTERNAL_SERVER_ERROR, ""),
    ] {
        let got = classify(status, &h, body);
        assert!(
            matches!(
                got,
                SendError::Transient {
                    maybe_created: true,
                    ..
                }
            ),
            "{status}: {got:?}"
        );
    }
    let throttled = classify(StatusCode::TOO_MANY_REQUESTS, &h, "Retry later\n");
    assert!(matches!(
        throttled,
        SendError::Transient {
            maybe_created: false,
            ..
        }
    ));
}

#[test]
fn a_gatekeepers_json_is_not_taken_for_chatwoots_own_refusal() {
    let h = HeaderMap::new();
    for (status, body) in [
        (
            StatusCode::NOT_FOUND,
            r#"{"message":"no Route matched with those values"}"#,
        ),
        (StatusCode::FORBIDDEN, r#"{"message":"Forbidden"}"#),
        (StatusCode::UNAUTHORIZED, r#"{"message":"Unauthorized"}"#),
    ] {
        assert!(
            matches!(classify(status, &h, body), SendError::Transient { .. }),
            "{status} {body}"
        );
    }
    for (status, body) in [
        (
            StatusCode::NOT_FOUND,
            r#"{"error":"Resource could not be found"}"#,
        ),
        (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"You are not authorized to do this action"}"#,
        ),
    ] {
        assert!(
            matches!(classify(status, &h, body), SendError::Permanent { .. }),
            "{status} {body}"
        );
    }
}

#[test]
fn devise_and_plain_text_errors_are_both_readable() {
    let h = HeaderMap::new();
    let devise = classify(
        StatusCode::UNAUTHORIZED,
        &h,
        r#"{"errors":["You need to sign in or sign up before continuing."]}"#,
    );
    assert_eq!(
        devise.detail(),
        "Chatwoot answered 401: You need to sign in or sign up before continuing."
    );
    let throttled = classify(StatusCode::TOO_MANY_REQUESTS, &h, "Retry later\n");
    assert_eq!(throttled.detail(), "Chatwoot answered 429: Retry later");
}

#[test]
fn a_path_prefix_in_the_base_url_is_kept() {
    let base = Url::parse("https://example.com/chatwoot/").unwrap();
    let client =
        ChatwootClient::new(base, SecretString::from("t"), Duration::from_secs(1)).unwrap();
    assert_eq!(
        client.url("/health").as_str(),
        "https://example.com/chatwoot/health"
    );
    assert_eq!(
        client.messages_url(1, 2).as_str(),
        "https://example.com/chatwoot/api/v1/accounts/1/conversations/2/messages"
    );
}

#[test]
fn api_is_up_only_when_data_and_queue_services_are_ok() {
    let ok = r#"{"version":"4.13.0","queue_services":"ok","data_services":"ok"}"#;
    assert_eq!(
        api_services(StatusCode::OK, ok),
        Ok("/api reports version \"4.13.0\"".into())
    );
    let degraded = r#"{"version":"4.13.0","queue_services":"failing","data_services":"ok"}"#;
    let refused = api_services(StatusCode::OK, degraded).unwrap_err();
    assert!(refused.starts_with("/api answered 200 OK: "), "{refused}");
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    let now = Utc::now();
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
    let later = now + chrono::Duration::seconds(30);
    let date = httpdate::fmt_http_date(later.into());
    h.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
    let got = retry_after(&h, now).unwrap().as_secs();
    assert!((29..=30).contains(&got), "{got}");
}

#[test]
fn an_absurd_retry_after_is_cut_to_the_cap_and_a_past_date_is_no_wait() {
    let now = Utc::now();
    let mut h = HeaderMap::new();
    for huge in [
        "99999999999999999999",
        "18446744073709551615",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        h.insert(RETRY_AFTER, HeaderValue::from_static(huge));
        assert_eq!(retry_after(&h, now), Some(RETRY_AFTER_CAP), "{huge}");
    }
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
    assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
    for junk in ["-5", "soon", ""] {
        h.insert(RETRY_AFTER, HeaderValue::from_static(junk));
        assert_eq!(retry_after(&h, now), None, "{junk:?}");
    }
}

#[test]
fn only_what_the_customer_saw_becomes_a_turn_and_each_in_its_role() {
    let listed = |message_type: i64, private: bool, content: Value, attrs: Value| {
        let m: ListedMessage = serde_json::from_value(json!({"id": 1,
            "message_type": message_type, "private": private, "content": content,
            "content_attributes": attrs, "created_at": 1_700_000_000}))
        .unwrap();
        turn_of(&m).map(|t| (t.role, t.content))
    };
    let text = || json!("Where is my parcel?");
    let said = |role| Some((role, "Where is my parcel?".to_owned()));
    assert_eq!(listed(0, false, text(), json!({})), said(TurnRole::User));
    assert_eq!(
        listed(1, false, text(), json!({})),
        said(TurnRole::Assistant)
    );
    assert_eq!(
        listed(3, false, text(), json!({})),
        said(TurnRole::Assistant)
    );
    assert_eq!(listed(1, true, text(), json!({})), None, "a private note");
    assert_eq!(
        listed(2, false, text(), json!({})),
        None,
        "an activity message"
    );
    let deleted = json!({"deleted": true});
    assert_eq!(listed(0, false, text(), deleted), None, "a deleted message");
    assert_eq!(
        listed(0, false, Value::Null, json!({})),
        None,
        "attachments alone"
    );
    assert_eq!(listed(0, false, json!("  "), json!({})), None);
    assert_eq!(listed(9, false, text(), json!({})), None, "an unknown type");
}

#[test]
fn the_token_header_has_no_underscore_for_proxies_to_drop() {
    assert!(!TOKEN_HEADER.contains('_'));
    assert!(TOKEN_HEADER.eq_ignore_ascii_case("api-access-token"));
}
