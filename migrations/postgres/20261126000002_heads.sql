-- Each conversation's oldest job is its head, the only one that may be sent.
-- Keeping that as a flag with a partial index makes claiming independent of
-- how long the queue is. Changes to a conversation's jobs take an advisory
-- lock on the conversation, so two instances never disagree about its head.
ALTER TABLE delivery_jobs ADD COLUMN is_head boolean NOT NULL DEFAULT false;
UPDATE delivery_jobs SET is_head = true
    WHERE seq IN (SELECT DISTINCT ON (account_id, conversation_id) seq FROM delivery_jobs
                  ORDER BY account_id, conversation_id, seq);
CREATE INDEX delivery_jobs_heads ON delivery_jobs (due_at, seq) WHERE is_head;
