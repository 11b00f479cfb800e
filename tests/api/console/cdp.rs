//! A small Chrome DevTools Protocol client for the console's browser tests.
//!
//! Why this and not a crate: Chromium's `--remote-debugging-pipe` speaks CDP
//! as NUL-separated JSON over file descriptors 3 and 4, so two named pipes and
//! `serde_json` are all it takes. No websocket client, no browser fetcher
//! (chromiumoxide and headless_chrome download Chromium unless told not to),
//! and nothing more to compile on every run.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Where the tests look for Chromium: Debian's package puts it on the PATH.
pub fn chromium() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|candidate| candidate.is_file())
}

/// A headless Chromium driven over its DevTools pipe; killed when dropped.
pub struct Browser {
    _child: Child,
    to_browser: Mutex<Option<pipe::Sender>>,
    pending: Pending,
    /// Every event received, for assertions such as "no dialog opened".
    pub events: Arc<Mutex<Vec<Value>>>,
    next_id: std::sync::atomic::AtomicU64,
    _dir: TempDir,
}

/// One tab, attached with its own CDP session.
pub struct Tab<'b> {
    browser: &'b Browser,
    session: String,
}

impl Browser {
    /// Starts Chromium, or panics saying how to install it.
    pub async fn launch() -> Browser {
        let binary = chromium().expect(
            "the console's browser tests need Chromium: apt-get install -y chromium \
             (looked for `chromium` on PATH and /usr/bin/chromium)",
        );
        let dir = tempfile::tempdir().unwrap();
        let (commands, replies) = (dir.path().join("in"), dir.path().join("out"));
        for fifo in [&commands, &replies] {
            let made = std::process::Command::new("mkfifo").arg(fifo).status();
            assert!(made.unwrap().success(), "mkfifo {}", fifo.display());
        }
        // Both ends opened by us first, so neither open blocks.
        let from_browser = pipe::OpenOptions::new().open_receiver(&replies).unwrap();
        let to_browser = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&commands)
            .unwrap();
        let child = spawn(&binary, dir.path(), &commands, &replies);
        let pending: Pending = Arc::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(read_messages(from_browser, pending.clone(), events.clone()));
        Browser {
            _child: child,
            to_browser: Mutex::new(Some(to_browser)),
            pending,
            events,
            next_id: 1.into(),
            _dir: dir,
        }
    }

    /// Sends one command and waits for its result; panics on a CDP error.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        let mut sender = self.to_browser.lock().unwrap().take().unwrap();
        sender.write_all(&bytes).await.unwrap();
        *self.to_browser.lock().unwrap() = Some(sender);
        let answer = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .unwrap_or_else(|_| panic!("Chromium never answered {method}"))
            .unwrap();
        assert!(answer.get("error").is_none(), "{method} failed: {answer}");
        answer["result"].clone()
    }

    /// Opens a tab at `url`, with its page events (dialogs among them) on.
    pub async fn open(&self, url: &str, width: u32, height: u32) -> Tab<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let tab = Tab {
            browser: self,
            session: attached["sessionId"].as_str().unwrap().to_owned(),
        };
        tab.call("Page.enable", json!({})).await;
        let metrics =
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        tab.call("Emulation.setDeviceMetricsOverride", metrics)
            .await;
        tab.call("Page.navigate", json!({ "url": url })).await;
        tab.wait_for("location.href !== 'about:blank' && document.readyState === 'complete'")
            .await;
        tab
    }

    /// Whether any page tried to open an alert, confirm or prompt dialog.
    pub fn dialogs(&self) -> Vec<Value> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["method"] == "Page.javascriptDialogOpening")
            .cloned()
            .collect()
    }
}

impl Tab<'_> {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Evaluates `expression` in the page (or in `frame`, through an isolated
    /// world, which sees the frame's DOM and none of its scripts' variables).
    pub async fn eval_in(&self, frame: Option<&str>, expression: &str) -> Value {
        let mut params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        if let Some(frame) = frame {
            let world = self
                .call(
                    "Page.createIsolatedWorld",
                    json!({ "frameId": frame, "worldName": "probe" }),
                )
                .await;
            params["contextId"] = world["executionContextId"].clone();
        }
        let result = self.call("Runtime.evaluate", params).await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    pub async fn eval(&self, expression: &str) -> Value {
        self.eval_in(None, expression).await
    }

    /// Polls `expression` until it is truthy and returns its value; panics
    /// after `PATIENCE`, showing `describe`'s value then.
    pub async fn wait_for_in(&self, frame: Option<&str>, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
        loop {
            let value = self.eval_in(frame, expression).await;
            let truthy = !matches!(value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self
                    .eval_in(frame, "document.body && document.body.innerText")
                    .await;
                panic!("never true: {expression}\npage text: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_for(&self, expression: &str) -> Value {
        self.wait_for_in(None, expression).await
    }

    /// The id of the page's first child frame, once it exists.
    pub async fn child_frame(&self) -> String {
        let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
        loop {
            let tree = self.call("Page.getFrameTree", json!({})).await;
            if let Some(id) = tree["frameTree"]["childFrames"][0]["frame"]["id"].as_str() {
                return id.to_owned();
            }
            assert!(tokio::time::Instant::now() < deadline, "no iframe: {tree}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of what the tab shows.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = decode_base64(shot["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

fn spawn(binary: &Path, dir: &Path, commands: &Path, replies: &Path) -> Child {
    // The shell gives Chromium the pipes as fds 3 and 4, as
    // --remote-debugging-pipe expects, then becomes Chromium.
    Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@" 3<"$CDP_IN" 4>"$CDP_OUT""#)
        .arg(binary)
        .args([
            "--headless",
            "--remote-debugging-pipe",
            // Tests run as root in containers, where the sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            // Keeps the test's iframe in its parent's process, where an
            // isolated world can read it.
            "--disable-site-isolation-trials",
            "--disable-features=IsolateOrigins,site-per-process",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .env("CDP_IN", commands)
        .env("CDP_OUT", replies)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("Chromium starts")
}

async fn read_messages(from: pipe::Receiver, pending: Pending, events: Arc<Mutex<Vec<Value>>>) {
    let mut reader = BufReader::new(from);
    let mut buffer = Vec::new();
    while reader.read_until(0, &mut buffer).await.unwrap_or(0) > 0 {
        if buffer.last() == Some(&0) {
            buffer.pop();
        }
        if let Ok(message) = serde_json::from_slice::<Value>(&buffer) {
            let waiting = message["id"]
                .as_u64()
                .and_then(|id| pending.lock().unwrap().remove(&id));
            match waiting {
                Some(answer) => {
                    let _ = answer.send(message);
                }
                None => events.lock().unwrap().push(message),
            }
        }
        buffer.clear();
    }
}

/// Standard base64, as CDP sends screenshots; small enough not to need a crate.
fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte).unwrap() as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}
