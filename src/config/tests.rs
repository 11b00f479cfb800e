//! The settings' tests: defaults, refusals that name their variable, tokens by role and account, redaction.

use super::*;
use std::collections::HashMap;

fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| map.get(k).cloned())
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn the_lookup_delay_is_a_minute_unless_set() {
    let base = [
        ("GOLDRELAY_TOKENS", TOKEN),
        ("CHATWOOT_BASE_URL", "https://chat.example.com"),
        ("CHATWOOT_API_TOKEN", "x"),
    ];
    let settings = load(&base).unwrap();
    assert_eq!(settings.lookup_delay, Duration::from_secs(60));
    let mut set = base.to_vec();
    set.push(("GOLDRELAY_LOOKUP_DELAY", "3s"));
    assert_eq!(load(&set).unwrap().lookup_delay, Duration::from_secs(3));
}

#[test]
fn a_missing_token_and_chatwoot_url_are_both_named() {
    let err = load(&[("CHATWOOT_API_TOKEN", "x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("GOLDRELAY_TOKENS is required"), "{err}");
    assert!(err.contains("CHATWOOT_BASE_URL is required"), "{err}");
}

#[test]
fn a_short_token_is_refused_without_echoing_it() {
    let err = load(&[
        ("GOLDRELAY_TOKENS", &format!("{TOKEN},short-secret")),
        ("CHATWOOT_BASE_URL", "http://localhost:3000"),
        ("CHATWOOT_API_TOKEN", "x"),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("token #2"), "{err}");
    assert!(!err.contains("short-secret"), "{err}");
}

#[test]
fn a_bad_duration_names_its_variable() {
    let err = load(&[
        ("GOLDRELAY_TOKENS", TOKEN),
        ("CHATWOOT_BASE_URL", "http://localhost:3000"),
        ("CHATWOOT_API_TOKEN", "x"),
        ("GOLDRELAY_RETRY_BASE", "soon"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("GOLDRELAY_RETRY_BASE=\"soon\" is invalid"),
        "{err}"
    );
}

#[test]
fn operator_tokens_are_optional_but_checked_like_support_tokens() {
    let base = [
        ("GOLDRELAY_TOKENS", TOKEN),
        ("CHATWOOT_BASE_URL", "http://localhost:3000"),
        ("CHATWOOT_API_TOKEN", "x"),
    ];
    let settings = load(&base).unwrap();
    assert!(settings.operator_tokens.is_empty());
    assert_eq!(settings.request_timeout, Duration::from_secs(10));
    assert_eq!(settings.token_rate, 0);
    let mut vars = base.to_vec();
    vars.push(("GOLDRELAY_OPERATOR_TOKENS", "too-short-to-guess"));
    let err = load(&vars).unwrap_err().to_string();
    assert!(err.contains("GOLDRELAY_OPERATOR_TOKENS: token #1"), "{err}");
    assert!(!err.contains("too-short-to-guess"), "{err}");
}

#[test]
fn viewer_tokens_are_optional_but_checked_like_support_tokens() {
    let base = [
        ("GOLDRELAY_TOKENS", TOKEN),
        ("CHATWOOT_BASE_URL", "http://localhost:3000"),
        ("CHATWOOT_API_TOKEN", "x"),
    ];
    assert!(load(&base).unwrap().viewer_tokens.is_empty());
    let mut vars = base.to_vec();
    vars.push(("GOLDRELAY_VIEWER_TOKENS", "short-viewer"));
    let err = load(&vars).unwrap_err().to_string();
    assert!(err.contains("GOLDRELAY_VIEWER_TOKENS: token #1"), "{err}");
    assert!(!err.contains("short-viewer"), "{err}");
}

fn with_tokens(extra: &[(&'static str, &'static str)]) -> Result<Settings, ConfigError> {
    let mut vars = vec![
        ("CHATWOOT_BASE_URL", "http://localhost:3000"),
        ("CHATWOOT_API_TOKEN", "x"),
    ];
    vars.extend_from_slice(extra);
    if !extra.iter().any(|(name, _)| *name == "GOLDRELAY_TOKENS") {
        vars.push(("GOLDRELAY_TOKENS", TOKEN));
    }
    load(&vars)
}

const VIEWER: &str = "viewer-0123456789abcdef0123456789ab";

#[test]
fn a_token_written_with_an_account_id_is_bound_to_that_account() {
    let settings = with_tokens(&[
        (
            "GOLDRELAY_VIEWER_TOKENS",
            "7:viewer-0123456789abcdef0123456789ab",
        ),
        ("GOLDRELAY_TOKENS", "12:0123456789abcdef0123456789abcdef"),
    ])
    .unwrap();
    let viewer = &settings.viewer_tokens[0];
    assert_eq!(viewer.account, Some(7));
    assert_eq!(viewer.secret.expose_secret(), VIEWER);
    assert_eq!(settings.tokens[0].account, Some(12));
    let bare = with_tokens(&[("GOLDRELAY_VIEWER_TOKENS", VIEWER)]).unwrap();
    assert_eq!(bare.viewer_tokens[0].account, None);
}

#[test]
fn a_bound_token_is_as_long_as_any_other_and_its_account_a_positive_number() {
    for (raw, problem) in [
        ("7:short-viewer", "token #1 is shorter than 32"),
        (
            "0:viewer-0123456789abcdef0123456789ab",
            "token #1 is bound to an account id",
        ),
        (
            "99999999999999999999:viewer-0123456789abcdef0123456789ab",
            "token #1 is bound",
        ),
    ] {
        let err = with_tokens(&[("GOLDRELAY_VIEWER_TOKENS", raw)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("GOLDRELAY_VIEWER_TOKENS: {problem}")),
            "{err}"
        );
        assert!(
            !err.contains("short-viewer") && !err.contains(VIEWER),
            "{err}"
        );
    }
}

#[test]
fn an_operator_token_cannot_be_bound_to_an_account() {
    let err = with_tokens(&[(
        "GOLDRELAY_OPERATOR_TOKENS",
        "3:operator-0123456789abcdef0123456",
    )])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("GOLDRELAY_OPERATOR_TOKENS: token #1 is bound to an account"),
        "{err}"
    );
    assert!(!err.contains("operator-0123"), "{err}");
}

#[test]
fn a_token_listed_under_two_roles_is_refused_in_one_line_naming_both_variables() {
    // Bound there and not here is two roles all the same.
    let both = format!("5:{TOKEN}");
    let both: &'static str = Box::leak(both.into_boxed_str());
    for vars in [
        vec![("GOLDRELAY_OPERATOR_TOKENS", TOKEN)],
        vec![("GOLDRELAY_VIEWER_TOKENS", both)],
    ] {
        let err = with_tokens(&vars).unwrap_err().to_string();
        let name = vars[0].0;
        let naming: Vec<&str> = err.lines().filter(|l| l.contains(name)).collect();
        assert_eq!(naming.len(), 1, "{err}");
        assert!(
            naming[0].contains(&format!("listed in GOLDRELAY_TOKENS and {name}")),
            "{err}"
        );
        assert!(!err.contains(TOKEN), "{err}");
    }
}

#[test]
fn a_token_bound_to_two_accounts_or_bound_and_not_is_refused_without_echoing_it() {
    for list in [
        format!("1:{VIEWER},2:{VIEWER}"),
        format!("1:{VIEWER},{VIEWER},3:{VIEWER}"),
    ] {
        let list: &'static str = Box::leak(list.into_boxed_str());
        let err = with_tokens(&[("GOLDRELAY_VIEWER_TOKENS", list)])
            .unwrap_err()
            .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("GOLDRELAY_VIEWER_TOKENS binds the same token to two accounts"),
            "{err}"
        );
        assert!(!err.contains(VIEWER), "{err}");
    }
    let twice = with_tokens(&[(
        "GOLDRELAY_VIEWER_TOKENS",
        "1:viewer-0123456789abcdef0123456789ab,1:viewer-0123456789abcdef0123456789ab",
    )]);
    assert!(twice.is_ok(), "the same binding twice means one thing");
}

#[test]
fn context_capture_takes_20_turns_unless_told_and_0_turns_it_off() {
    assert_eq!(with_tokens(&[]).unwrap().capture_context, 20);
    let off = with_tokens(&[("GOLDRELAY_CAPTURE_CONTEXT", "0")]).unwrap();
    assert_eq!(off.capture_context, 0);
    let err = with_tokens(&[("GOLDRELAY_CAPTURE_CONTEXT", "all")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("GOLDRELAY_CAPTURE_CONTEXT=\"all\" is invalid"),
        "{err}"
    );
}

#[test]
fn the_client_ip_header_is_unset_unless_named_and_must_be_a_header_name() {
    assert_eq!(with_tokens(&[]).unwrap().client_ip_header, None);
    let fly = with_tokens(&[("GOLDRELAY_CLIENT_IP_HEADER", "Fly-Client-IP")]).unwrap();
    assert_eq!(fly.client_ip_header.as_deref(), Some("Fly-Client-IP"));
    let err = with_tokens(&[("GOLDRELAY_CLIENT_IP_HEADER", "Fly Client IP:")])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("GOLDRELAY_CLIENT_IP_HEADER=\"Fly Client IP:\" is not a header name"),
        "{err}"
    );
}

#[test]
fn a_database_password_is_redacted_when_displayed() {
    let url = DatabaseUrl::parse("postgres://relay:hunter2@db.example.com:5432/gold").unwrap();
    assert_eq!(
        url.to_string(),
        "postgres://relay:***@db.example.com:5432/gold"
    );
}

#[test]
fn a_password_in_the_query_string_is_redacted_too() {
    let url = DatabaseUrl::parse(
        "postgres://db.example.com/gold?user=relay&password=hunter2&sslmode=require",
    )
    .unwrap();
    let shown = url.to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.ends_with("?user=relay&password=***&sslmode=require"),
        "{shown}"
    );
}

#[test]
fn an_unknown_scheme_is_refused_naming_the_variable_and_never_the_rest() {
    for raw in [
        "mysql://root:hunter2@db/gold",
        "postgress://x:hunter2@h/d",
        "/data/gold.db",
    ] {
        let err = DatabaseUrl::parse(raw).unwrap_err();
        assert!(
            err.starts_with("DATABASE_URL must start with sqlite:"),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains("/data"), "{err}");
    }
}

#[test]
fn on_fly_the_database_url_must_be_set_and_elsewhere_it_defaults_to_a_local_file() {
    let base = [
        ("GOLDRELAY_TOKENS", TOKEN),
        ("CHATWOOT_BASE_URL", "https://chat.example.com"),
        ("CHATWOOT_API_TOKEN", "x"),
    ];
    let here = load(&base).unwrap();
    assert_eq!(here.database_url.expose(), DEFAULT_DATABASE_URL);
    let mut on_fly = base.to_vec();
    on_fly.push(("FLY_APP_NAME", "goldrelay-prod"));
    let err = load(&on_fly).unwrap_err().to_string();
    assert!(
        err.contains("DATABASE_URL is required on Fly.io") && err.contains("temporary disk"),
        "{err}"
    );
    on_fly.push(("DATABASE_URL", "sqlite:///data/goldrelay.db"));
    let set = load(&on_fly).unwrap();
    assert_eq!(set.database_url.expose(), "sqlite:///data/goldrelay.db");
}

#[test]
fn the_readmes_table_names_every_variable_the_settings_read() {
    let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let _ = Settings::from_lookup(|name| {
        read.borrow_mut().insert(name.to_owned());
        None
    });
    let tabled: Vec<String> = reference::variables()
        .iter()
        .flat_map(|v| v.names.split(", ").map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert!(tabled.len() > 30, "{tabled:?}");
    for name in read.borrow().iter().filter(|n| *n != "FLY_APP_NAME") {
        assert!(
            tabled.contains(name),
            "{name} is read but not in the README's table"
        );
    }
    for name in &tabled {
        let elsewhere = name.starts_with("OTEL_")
            || ["GOLDRELAY_PUBLIC_URL", "GOLDRELAY_LOG_FORMAT"].contains(&name.as_str());
        assert!(
            read.borrow().contains(name) || elsewhere,
            "{name} is in the README's table but nothing reads it"
        );
    }
}

#[test]
fn serve_help_is_the_readmes_table_as_plain_text() {
    let help = reference::help();
    for v in reference::variables() {
        for name in v.names.split(", ") {
            assert!(help.contains(name), "{name}: {help}");
        }
    }
    assert!(
        help.contains("\n  GOLDRELAY_SEND_RATE [default: 40]\n"),
        "{help}"
    );
    assert!(help.contains("\n  GOLDRELAY_TOKENS [required]\n"), "{help}");
    assert!(!help.contains("](") && !help.contains('`'), "{help}");
    assert!(help
        .lines()
        .all(|l| l.chars().count() <= 80 || !l.trim().contains(' ')));
    let tokens = reference::variables()
        .into_iter()
        .find(|v| v.names == "GOLDRELAY_TOKENS")
        .unwrap();
    assert_eq!(tokens.default, "required");
    assert!(
        tokens.meaning.contains("bound to that Chatwoot account") && !tokens.meaning.contains('#'),
        "{}",
        tokens.meaning
    );
}
