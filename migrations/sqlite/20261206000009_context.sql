-- The conversation turns a reply answered (issue 21): posted with the reply,
-- or captured once from Chatwoot's message list and kept, so the dataset stays
-- the same if Chatwoot later deletes messages. Replies stored before this
-- migration have no capture due: nothing is read back for them.
ALTER TABLE gold_replies ADD COLUMN context TEXT;                 -- JSON array of {role, content}, or NULL
ALTER TABLE gold_replies ADD COLUMN context_source TEXT;          -- posted | captured, NULL while none
ALTER TABLE gold_replies ADD COLUMN context_captured_at INTEGER;  -- when the capture read Chatwoot
-- A capture is due at this time (or leased until it); NULL: none pending.
ALTER TABLE gold_replies ADD COLUMN context_due_at INTEGER;
ALTER TABLE gold_replies ADD COLUMN context_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE gold_replies ADD COLUMN context_error TEXT;           -- the last failed capture, for the operator
CREATE INDEX gold_replies_context_due ON gold_replies (context_due_at)
    WHERE context_due_at IS NOT NULL;
