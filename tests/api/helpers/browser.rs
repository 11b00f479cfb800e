//! What the console's browser tests share besides the DevTools client
//! (`console/cdp.rs`, which finds, starts and drives Chromium): a goldrelay
//! with the viewer token, the console's address, a stand-in Chatwoot origin
//! that frames the console, and where screenshots go.

use super::{spawn_app_with, TestApp};
use crate::export::VIEWER_TOKEN;
use goldrelay::config::Settings;
use goldrelay::sandbox::SandboxConfig;
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A goldrelay that lets `VIEWER_TOKEN` read, as the console does.
pub async fn spawn_console(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(SandboxConfig::default(), |s| {
        s.viewer_tokens = vec![VIEWER_TOKEN.into()];
        tweak(s);
    })
    .await
}

/// The console served at `origin` (goldrelay's, or a proxy's in front of it),
/// opened with `fragment` (token, account, conversation, view…).
pub fn console_url(origin: &str, fragment: &str) -> String {
    format!("{origin}/console/#{fragment}")
}

/// A decision that is stored but not sent (unless `action` is `approve_send`).
pub fn decision(reply_id: &str, conversation_id: i64, action: &str, content: &str) -> Value {
    json!({
        "reply_id": reply_id, "account_id": 1, "conversation_id": conversation_id,
        "action": action, "content": content, "approved_by": "priya@example.com",
    })
}

/// `docs/<name>` with `GOLDRELAY_SCREENSHOTS=1` (to refresh the README's);
/// otherwise a scratch file of this run's own, so that concurrent runs on one
/// machine do not write over each other.
pub fn screenshot_path(name: &str) -> PathBuf {
    if std::env::var("GOLDRELAY_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        let path = docs.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        return path;
    }
    let scratch = format!(
        "goldrelay-{}-{}",
        std::process::id(),
        name.replace('/', "-")
    );
    std::env::temp_dir().join(scratch)
}

/// A stand-in for Chatwoot's web app: an origin of its own (which goldrelay
/// must be told, as frame-ancestors names it) serving one page that frames
/// the console. Bound before goldrelay starts, served once the page, which
/// names the console's address, can be written.
pub struct ChatwootOrigin {
    listener: TcpListener,
    /// `http://127.0.0.1:<port>`, for `chatwoot_base_url` and the tab.
    pub origin: String,
}

impl ChatwootOrigin {
    pub async fn bind() -> ChatwootOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        ChatwootOrigin { listener, origin }
    }

    /// Answers every request with `page`, for as long as the test runs.
    pub fn serve(self, page: String) {
        tokio::spawn(serve_page(self.listener, page));
    }
}

async fn serve_page(listener: TcpListener, page: String) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let page = page.clone();
        tokio::spawn(async move {
            let mut head = vec![0u8; 4096];
            let _ = socket.read(&mut head).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        });
    }
}

/// A page like Chatwoot's conversation screen: it frames the console and
/// answers `chatwoot-dashboard-app:fetch-info` with the conversation shown
/// (11 at first), counting in `window.asked` how often it was asked;
/// `switchTo(id)` shows another conversation, as an agent's click does.
pub fn chatwoot_page(console: &str) -> String {
    format!(
        r#"<!doctype html><html><body style="margin:0;display:flex">
<div style="flex:1;padding:16px;font:14px sans-serif">Chatwoot conversation</div>
<iframe id="app" src="{console}" style="width:400px;height:860px;border:0;border-left:1px solid #ccc"></iframe>
<script>
window.asked = 0;
var current = 11;
function context(id) {{
  return JSON.stringify({{ event: 'appContext', data: {{
    conversation: {{ id: id, account_id: 1, inbox_id: 1, status: 'open' }},
    contact: {{ id: 5, name: 'Ann' }}, currentAgent: {{ id: 1, name: 'Priya' }} }} }});
}}
window.addEventListener('message', function (e) {{
  if (e.data === 'chatwoot-dashboard-app:fetch-info') {{ window.asked += 1; e.source.postMessage(context(current), '*'); }}
}});
window.switchTo = function (id) {{ current = id; document.getElementById('app').contentWindow.postMessage(context(id), '*'); return true; }};
</script></body></html>"#
    )
}
