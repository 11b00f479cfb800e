//! `goldrelay dev`: everything on one machine, nothing to sign up for.

use crate::config::Settings;
use crate::sandbox::{self, SandboxConfig};
use crate::startup::{shutdown_signal, Application};
use rand::distr::{Alphanumeric, SampleString};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

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
    let webhook_secret = random_token(24);
    let operator = random_token(40);
    let vars: HashMap<&str, String> = [
        ("GOLDRELAY_LISTEN", options.listen.to_string()),
        ("GOLDRELAY_TOKENS", token.clone()),
        ("GOLDRELAY_OPERATOR_TOKENS", operator.clone()),
        ("DATABASE_URL", format!("sqlite://{}", db_path.display())),
        ("CHATWOOT_BASE_URL", chatwoot.base_url()),
        ("CHATWOOT_API_TOKEN", sandbox_config.user_token.clone()),
        ("GOLDRELAY_RETRY_MAX", "30s".into()),
        ("GOLDRELAY_SHUTDOWN_DRAIN", "5s".into()),
        ("CHATWOOT_WEBHOOK_SECRETS", webhook_secret.clone()),
    ]
    .into_iter()
    .collect();
    let settings = Settings::from_lookup(|name| vars.get(name).cloned())?;
    let app = Application::build(settings).await?;
    chatwoot.set_webhook(
        format!("http://{}/api/webhooks/chatwoot", app.addr()),
        Some(webhook_secret),
    );
    let tokens = Tokens {
        support: &token,
        operator: &operator,
    };
    print_banner(
        &options,
        &tokens,
        app.addr(),
        &chatwoot.base_url(),
        &db_path,
    );
    app.run_until(shutdown_signal()).await?;
    chatwoot.stop().await;
    Ok(())
}

/// The tokens `dev` runs with.
struct Tokens<'a> {
    support: &'a str,
    operator: &'a str,
}

fn print_banner(
    options: &DevOptions,
    tokens: &Tokens<'_>,
    addr: SocketAddr,
    chatwoot: &str,
    db: &std::path::Path,
) {
    let base = format!("http://{addr}");
    let token = tokens.support;
    let operator = tokens.operator;
    // A token the user chose is not printed: the commands read it from $TOKEN.
    let (shown, token, post) = if options.token.is_some() {
        (
            "(the one you passed with --token or GOLDRELAY_DEV_TOKEN)",
            "$TOKEN",
            "Set TOKEN to that Support token, then post a gold reply:",
        )
    } else {
        (token, token, "Post a gold reply:")
    };
    println!(
        r#"
goldrelay dev is running. This is a local sandbox: nothing reaches a real Chatwoot.

  goldrelay         {base}
  Support token     {shown}
  operator token    {operator}   (list, retry, /metrics, the console)
  database          {db}
  sandbox Chatwoot  {chatwoot}   (account 1, conversations 1-1000)

{post}

  curl -i {base}/api/webhooks/gold-replies \
    -H "Authorization: Bearer {token}" \
    -H 'Content-Type: application/json' \
    -d '{{"reply_id":"demo-1","account_id":1,"conversation_id":1,"action":"approve_send","content":"Hello from goldrelay","approved_by":"you@example.com"}}'

See what became of it:

  curl -s {base}/api/gold-replies/demo-1 -H "Authorization: Bearer {token}"

See it in the sandbox Chatwoot:

  curl -s {chatwoot}/api/v1/accounts/1/conversations/1/messages -H 'Api-Access-Token: {user}'

Open the console:

  {base}/console/#token={operator}

Press Ctrl-C to stop.
"#,
        db = db.display(),
        user = SandboxConfig::default().user_token,
    );
}
