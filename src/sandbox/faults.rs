//! The faults a test injects into a running sandbox: failures, delays, late
//! commits, lost or doubled events, and what a proxy in front does.

use serde::{Deserialize, Serialize};

/// Faults to inject, set through `POST /_sandbox/faults` or [`SandboxHandle::set_faults`](super::SandboxHandle::set_faults).
/// Setting faults replaces all of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fail this many of the next message requests (create or list) with `fail_status`.
    pub fail_next: u32,
    /// 503 by default; 429 answers like rack-attack (`text/plain`, `Retry later\n`).
    pub fail_status: Option<u16>,
    /// Sent as `Retry-After` (seconds) with the failures. rack-attack never
    /// sends one; this is a proxy or load balancer in front of Chatwoot.
    pub retry_after: Option<u64>,
    /// Delay every message request by this many milliseconds before answering.
    pub delay_ms: u64,
    /// For this many of the next creates: create the message, then wait
    /// `late_ms` before answering (longer than the client's timeout).
    pub late_next: u32,
    /// How long a `late_next` create waits before answering.
    pub late_ms: u64,
    /// For this many of the next creates: Puma keeps working after the
    /// client hung up, so the row commits only `commit_after_ms` after the
    /// request arrived (`messages_controller.rb`). A lookup right after a
    /// client timeout misses it; a later one finds it.
    pub commit_late_next: u32,
    /// When a `commit_late_next` create commits, counted from its arrival.
    pub commit_after_ms: u64,
    /// When a `commit_late_next` create answers, counted from its arrival;
    /// `None` never answers (the client must give up).
    pub answer_after_ms: Option<u64>,
    /// For this many of the next creates: the row commits, then an
    /// `after_create_commit` callback raises and `create` rescues it into 422
    /// `{"error": e.message}` (`messages_controller.rb`, `message.rb`).
    pub error_after_commit_next: u32,
    /// The 422's text; a `Redis::CannotConnectError` by default.
    pub error_after_commit_text: Option<String>,
    /// Whether `message_created` still goes out. With Redis down it does
    /// not: the event dispatch is the callback that raised.
    pub error_after_commit_echo: bool,
    /// nginx's default `underscores_in_headers off`: a header with `_` in
    /// its name (`api_access_token`) never reaches Chatwoot; only
    /// `Api-Access-Token` does.
    pub drop_underscore_headers: bool,
    /// The user token was revoked or rotated: Chatwoot answers its own 401
    /// `{"error":"Invalid Access Token"}` to it (`access_token_auth_helper.rb`).
    pub token_revoked: bool,
    /// With `error_after_commit_next`: answer this status instead of 422, as
    /// a proxy does (HTML) when Rails outlived its timeout, e.g. 502 or 504.
    pub error_after_commit_status: Option<u16>,
    /// Lose this many of the next `message_created` events (Chatwoot never
    /// retries an account webhook: `lib/webhooks/trigger.rb`).
    pub echo_drop_next: u32,
    /// Conversations deleted meanwhile: Chatwoot answers 404 for them
    /// (`conversations/base_controller.rb`, `find_by!`).
    pub deleted_conversations: Vec<i64>,
    /// Send each `message_created` event twice (chatwoot#11901).
    pub echo_twice: bool,
    /// Hold each event this long before sending it (two Sidekiq hops:
    /// `event_dispatcher_job.rb`, `webhook_job.rb`), so events overtake each other.
    pub echo_delay_ms: u64,
    /// Fail this many of the next message-list requests (creates unaffected)
    /// with `fail_status`, e.g. a read replica or a proxy route failing alone.
    pub fail_lists_next: u32,
    /// Delay every message-list request (creates unaffected) by this many milliseconds.
    pub list_delay_ms: u64,
}

/// What `error_after_commit_next` answers unless told otherwise.
pub const REDIS_DOWN: &str =
    "Redis::CannotConnectError: Error connecting to Redis on redis:6379 (Errno::ECONNREFUSED)";
