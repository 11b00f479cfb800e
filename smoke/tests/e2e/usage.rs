//! Usage and configuration errors exit 2 before any request is sent. Each
//! points at a closed port: had smoke sent anything, it would exit 3.

use crate::helpers::{closed_port_url, smoke, stderr, stdout};

#[test]
fn a_missing_url_is_a_usage_error() {
    smoke().assert().code(2);
}

#[test]
fn a_url_that_is_not_http_is_a_usage_error() {
    let assert = smoke().args(["--url", "ftp://relay.test"]).assert().code(2);
    assert!(stderr(&assert).contains("http:// or https://"));
}

#[test]
fn a_check_named_in_only_without_its_inputs_exits_2() {
    let assert = smoke()
        .args([
            "--url",
            &closed_port_url(),
            "--only",
            "relay.health,relay.delivery",
        ])
        .assert()
        .code(2);
    let err = stderr(&assert);
    assert!(
        err.contains("relay.delivery cannot run: needs --token"),
        "{err}"
    );
}

#[test]
fn an_unknown_check_name_exits_2() {
    smoke()
        .args(["--url", &closed_port_url(), "--skip", "relay.everything"])
        .assert()
        .code(2);
}

#[test]
fn an_empty_token_variable_is_an_error_not_a_silent_skip() {
    let assert = smoke()
        .args(["--url", &closed_port_url()])
        .env("SMOKE_TOKEN", "")
        .assert()
        .code(2);
    assert!(stderr(&assert).contains("the token is empty"));
}

#[test]
fn an_unwritable_report_file_exits_2_before_any_check() {
    let assert = smoke()
        .args([
            "--url",
            &closed_port_url(),
            "--output",
            "/nonexistent/dir/smoke.xml",
        ])
        .assert()
        .code(2);
    assert!(stderr(&assert).contains("cannot write the report"));
    assert!(stdout(&assert).is_empty());
}

#[test]
fn help_documents_the_exit_codes() {
    let assert = smoke().arg("--help").assert().success();
    let help = stdout(&assert);
    for line in [
        "0  every check that ran passed",
        "1  a check failed",
        "2  usage or configuration error",
        "3  goldrelay could not be reached at all",
    ] {
        assert!(help.contains(line), "{help}");
    }
}
