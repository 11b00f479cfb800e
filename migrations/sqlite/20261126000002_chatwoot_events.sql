-- Every verified Chatwoot webhook event, kept for GOLDRELAY_EVENT_RETENTION.
CREATE TABLE chatwoot_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT UNIQUE,            -- X-Chatwoot-Delivery; NULL before Chatwoot 4.12
    dedupe_key  TEXT NOT NULL UNIQUE,   -- the same event sent twice has the same key
    event       TEXT NOT NULL,          -- message_created, message_updated, ...
    message_id  INTEGER,
    reply_id    TEXT,                   -- the gold reply it concerns, if any
    payload     TEXT NOT NULL,          -- the body as received
    received_at INTEGER NOT NULL        -- ms since the Unix epoch
);
CREATE INDEX chatwoot_events_by_time ON chatwoot_events (received_at);
