-- Gold replies: every decision Support made, the dataset the AI learns from.
-- See docs/schema.md for every column.
CREATE TABLE gold_replies (
    reply_id            text PRIMARY KEY,
    account_id          bigint NOT NULL,
    conversation_id     bigint NOT NULL,
    action              text NOT NULL,          -- approve_send | approve | reject
    content             text NOT NULL,
    private             boolean NOT NULL,
    approved_by         text,
    draft               jsonb,                  -- the AI draft as posted
    tags                jsonb NOT NULL,         -- array of strings
    metadata            jsonb,
    fingerprint         text NOT NULL,          -- canonical request JSON, for idempotency
    status              text NOT NULL,          -- recorded | queued | delivered | confirmed | dead
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    chatwoot_message_id bigint,
    received_at         timestamptz NOT NULL,
    next_attempt_at     timestamptz,
    delivered_at        timestamptz,
    confirmed_at        timestamptz,
    channel_status      text,                   -- sent | delivered | read | failed
    channel_error       text,
    requeued_at         timestamptz
);
CREATE INDEX gold_replies_by_status ON gold_replies (status, received_at);
CREATE INDEX gold_replies_by_conversation ON gold_replies (account_id, conversation_id, received_at);

-- The outbox: one row per reply still to be sent; seq is the acceptance order.
CREATE TABLE delivery_jobs (
    seq             bigserial PRIMARY KEY,
    reply_id        text NOT NULL UNIQUE REFERENCES gold_replies (reply_id),
    account_id      bigint NOT NULL,
    conversation_id bigint NOT NULL,
    due_at          timestamptz NOT NULL,
    lease_owner     text,
    lease_until     timestamptz,
    maybe_sent      boolean NOT NULL DEFAULT false
);
CREATE INDEX delivery_jobs_by_conversation ON delivery_jobs (account_id, conversation_id, seq);

-- Every verified Chatwoot webhook event, kept for GOLDRELAY_EVENT_RETENTION.
CREATE TABLE chatwoot_events (
    id          bigserial PRIMARY KEY,
    delivery_id text UNIQUE,
    dedupe_key  text NOT NULL UNIQUE,
    event       text NOT NULL,
    message_id  bigint,
    reply_id    text,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL
);
CREATE INDEX chatwoot_events_by_time ON chatwoot_events (received_at);
