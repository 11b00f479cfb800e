-- Each conversation's oldest job is its head, the only one that may be sent.
-- Keeping that as a flag with a partial index makes claiming independent of
-- how long the queue is.
ALTER TABLE delivery_jobs ADD COLUMN is_head INTEGER NOT NULL DEFAULT 0;
UPDATE delivery_jobs SET is_head = 1
    WHERE seq IN (SELECT MIN(seq) FROM delivery_jobs GROUP BY account_id, conversation_id);
CREATE INDEX delivery_jobs_heads ON delivery_jobs (due_at, seq) WHERE is_head = 1;
