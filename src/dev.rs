//! `goldrelay dev`: everything on one machine, nothing to sign up for.

use crate::config::{DatabaseUrl, Settings};
use crate::sandbox::{self, SandboxConfig};
use crate::startup::{shutdown_signal, Application};
use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What `dev` was asked for.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub data_dir: PathBuf,
    pub sandbox_listen: SocketAddr,
}

/// A random token of `len` letters and digits.
pub fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// Runs goldrelay against an embedded sandbox Chatwoot until Ctrl-C.
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.data_dir)?;
    let token = options.token.clone().unwrap_or_else(|| random_token(40));
    anyhow::ensure!(
        token.len() >= crate::config::MIN_TOKEN_CHARS,
        "--token must be at least {} characters",
        crate::config::MIN_TOKEN_CHARS
    );
    let sandbox_config = SandboxConfig::default();
    let chatwoot = sandbox::start(sandbox_config.clone(), options.sandbox_listen)?;
    let db_path = options.data_dir.join("dev.db");
    let settings = Settings {
        listen: options.listen,
        tokens: vec![SecretString::from(token.clone())],
        database_url: DatabaseUrl::new(format!("sqlite://{}", db_path.display())),
        chatwoot_base_url: chatwoot.base_url().parse()?,
        chatwoot_api_token: SecretString::from(sandbox_config.user_token.clone()),
        chatwoot_timeout: Duration::from_secs(10),
        retry_base: Duration::from_millis(500),
        retry_max: Duration::from_secs(30),
        max_attempts: 20,
        max_age: Duration::from_secs(3600),
        max_body_bytes: 256 * 1024,
        send_rate: 40,
        delivery_concurrency: 16,
        shutdown_drain: Duration::from_secs(5),
    };
    let app = Application::build(settings).await?;
    print_banner(&options, &token, app.addr(), &chatwoot.base_url(), &db_path);
    app.run_until(shutdown_signal()).await?;
    chatwoot.stop().await;
    Ok(())
}

fn print_banner(
    options: &DevOptions,
    token: &str,
    addr: SocketAddr,
    chatwoot: &str,
    db: &std::path::Path,
) {
    let base = format!("http://{addr}");
    let shown = if options.token.is_some() {
        "(the one you passed with --token)".to_owned()
    } else {
        token.to_owned()
    };
    println!(
        r#"
goldrelay dev is running. This is a local sandbox: nothing reaches a real Chatwoot.

  goldrelay         {base}
  Support token     {shown}
  database          {db}
  sandbox Chatwoot  {chatwoot}   (account 1, conversations 1-1000)

Post a gold reply:

  curl -i {base}/api/webhooks/gold-replies \
    -H 'Authorization: Bearer {token}' \
    -H 'Content-Type: application/json' \
    -d '{{"reply_id":"demo-1","account_id":1,"conversation_id":1,"action":"approve_send","content":"Hello from goldrelay","approved_by":"you@example.com"}}'

See what became of it:

  curl -s {base}/api/gold-replies/demo-1 -H 'Authorization: Bearer {token}'

See it in the sandbox Chatwoot:

  curl -s {chatwoot}/api/v1/accounts/1/conversations/1/messages -H 'api_access_token: {user}'

Press Ctrl-C to stop.
"#,
        db = db.display(),
        user = SandboxConfig::default().user_token,
    );
}
