//! `goldrelay dev`: the banner's commands work as printed, and a Support
//! token the user chose is never printed.

use crate::helpers::relay::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `goldrelay dev`, killed when dropped.
struct Dev {
    child: Child,
    banner: String,
    base: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `goldrelay dev` with `args` and reads its banner.
fn start(dir: &tempfile::TempDir, args: &[&str]) -> Dev {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_goldrelay"))
        .env_clear()
        .arg("dev")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--sandbox-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    let mut dev = Dev {
        child,
        banner: String::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
                if line.contains("Press Ctrl-C") {
                    break;
                }
            }
            Err(e) => panic!("no whole banner ({e}): {banner}"),
        }
    }
    dev.banner = banner;
    dev
}

/// The value printed after `label` on its banner line.
fn shown<'a>(banner: &'a str, label: &str) -> &'a str {
    let Some(value) = banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
    else {
        panic!("no {label:?} line: {banner}");
    };
    value.trim()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_banners_token_posts_a_reply_that_reaches_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start(&dir, &[]);
    let token = shown(&dev.banner, "Support token").to_owned();
    assert!(
        dev.banner
            .contains(&format!("-H \"Authorization: Bearer {token}\"")),
        "{}",
        dev.banner
    );
    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{}/api/webhooks/gold-replies", dev.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "reply_id": "demo-1", "account_id": 1, "conversation_id": 1,
            "action": "approve_send", "content": "Hello from goldrelay",
            "approved_by": "you@example.com"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let mut status = String::new();
    for _ in 0..250 {
        let record: serde_json::Value = client
            .get(format!("{}/api/gold-replies/demo-1", dev.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = record["status"].as_str().unwrap_or_default().to_owned();
        if status == "confirmed" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    panic!("demo-1 is {status}, not confirmed");
}

#[test]
fn a_token_the_user_chose_is_not_printed_and_the_commands_read_it_from_the_shell() {
    const CHOSEN: &str = "my-own-dev-token-0123456789abcdefghij";
    let dir = tempfile::tempdir().unwrap();
    let dev = start(&dir, &["--token", CHOSEN]);
    assert!(!dev.banner.contains(CHOSEN), "{}", dev.banner);
    assert!(
        dev.banner.contains("-H \"Authorization: Bearer $TOKEN\""),
        "{}",
        dev.banner
    );
    assert!(dev.banner.contains("Set TOKEN to that Support token"));
}
