-- One deployment-wide send pace: every instance reserves the next free slot
-- here before sending to Chatwoot, so GOLDRELAY_SEND_RATE caps all instances
-- together (Chatwoot's rack-attack counts requests per client IP, and several
-- instances usually share one egress address). A 429 from Chatwoot pushes
-- `next_at` forward for everyone.
CREATE TABLE send_pace (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_at TIMESTAMPTZ NOT NULL
);
ALTER TABLE send_pace ENABLE ROW LEVEL SECURITY;
