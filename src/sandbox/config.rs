//! How a sandbox is set up: its tokens, accounts and conversations, and the
//! Chatwoot behaviours that differ between installations or releases.

use super::{liquid, AGENT_TOKEN};

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// A user token: may create and list messages.
    pub user_token: String,
    /// An agent-bot token: may create messages but not list them, like the real one.
    pub bot_token: Option<String>,
    /// Accounts that exist.
    pub accounts: Vec<i64>,
    /// Conversations 1..=this exist in every account.
    pub conversations: i64,
    /// Where to send signed webhook events, as an account webhook would.
    pub webhook_url: Option<String>,
    /// The webhook secret; without it events go unsigned, like Chatwoot before 4.12.
    pub webhook_secret: Option<String>,
    /// rack-attack's `req/ip` throttle (`RACK_ATTACK_LIMIT` requests per
    /// client IP per minute; 3000 in production). `None` is off, as in
    /// Rails' development and test environments. Unlike production, loopback
    /// is not safelisted, since every test client is on loopback.
    pub rack_attack_limit: Option<u32>,
    /// Chatwoot's per-conversation flood guard: a create past this many
    /// messages in a conversation in the last minute is refused with 422
    /// `Validation failed: Too many messages` (`Message#prevent_message_flooding`,
    /// `CONVERSATION_MESSAGE_PER_MINUTE_LIMIT` in `lib/limits.rb`, 200 by default).
    pub flood_limit: usize,
    /// Another agent's user token: may create and list messages as a user
    /// who is not goldrelay's, and set any `content_attributes` doing so.
    pub agent_token: String,
    /// How far a new message's `created_at` may lie before the moment its id
    /// is taken (drawn at random, in seconds): `created_at` is set before the
    /// INSERT takes its id, and some channels store the provider's time
    /// (`app/services/tiktok/message_service.rb`), so ids and `created_at`
    /// disagree; `MessageFinder` filters by id but orders by `created_at`.
    pub created_at_disorder_secs: u64,
    /// Honours `client_message_id` as chatwoot#15743 / PR #15744 propose:
    /// unique per conversation; the same key and payload answer the original
    /// message (200), a different payload 409. Off, like every release so far.
    pub idempotency_keys: bool,
    /// How Liquid cuts outgoing content: Chatwoot does not pin `liquid`, so
    /// either tokenizer may be running (see [`liquid::LiquidTokenizer`]).
    pub liquid_tokenizer: liquid::LiquidTokenizer,
    /// The version `GET /api` reports (`config/app.yml`); only `check-config`
    /// and `smoke` read it, to warn about behaviour that changed with a release.
    pub version: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            user_token: "sandbox-user-token".into(),
            bot_token: Some("sandbox-bot-token".into()),
            accounts: vec![1],
            conversations: 1000,
            webhook_url: None,
            webhook_secret: None,
            rack_attack_limit: None,
            flood_limit: 200,
            agent_token: AGENT_TOKEN.into(),
            created_at_disorder_secs: 0,
            idempotency_keys: false,
            liquid_tokenizer: liquid::LiquidTokenizer::default(),
            version: "4.13.0".into(),
        }
    }
}
