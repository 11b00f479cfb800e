-- When an operator put a dead reply back in the queue: its age for
-- GOLDRELAY_MAX_AGE counts from here, not from received_at.
ALTER TABLE gold_replies ADD COLUMN requeued_at INTEGER;
