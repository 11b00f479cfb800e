-- Gold replies: every decision Support made, the dataset the AI learns from.
-- Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE gold_replies (
    reply_id            TEXT PRIMARY KEY NOT NULL,
    account_id          INTEGER NOT NULL,
    conversation_id     INTEGER NOT NULL,
    action              TEXT NOT NULL,      -- approve_send | approve | reject
    content             TEXT NOT NULL,
    private             INTEGER NOT NULL,   -- 0 | 1
    approved_by         TEXT,
    draft               TEXT,               -- JSON object as posted, or NULL
    tags                TEXT NOT NULL,      -- JSON array of strings
    metadata            TEXT,               -- JSON object as posted, or NULL
    fingerprint         TEXT NOT NULL,      -- canonical JSON of the request, for idempotency
    status              TEXT NOT NULL,      -- recorded | queued | delivered | confirmed | dead
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    chatwoot_message_id INTEGER,
    received_at         INTEGER NOT NULL,
    next_attempt_at     INTEGER,
    delivered_at        INTEGER,
    confirmed_at        INTEGER,
    channel_status      TEXT,               -- sent | delivered | read | failed, from Chatwoot's webhook
    channel_error       TEXT
);
CREATE INDEX gold_replies_by_status ON gold_replies (status, received_at);
CREATE INDEX gold_replies_by_conversation ON gold_replies (account_id, conversation_id, received_at);

-- The outbox: one row per reply still to be sent. seq is the acceptance order.
CREATE TABLE delivery_jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    reply_id        TEXT NOT NULL UNIQUE REFERENCES gold_replies (reply_id),
    account_id      INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    due_at          INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    maybe_sent      INTEGER NOT NULL DEFAULT 0  -- an attempt may have created the message
);
CREATE INDEX delivery_jobs_by_conversation ON delivery_jobs (account_id, conversation_id, seq);
