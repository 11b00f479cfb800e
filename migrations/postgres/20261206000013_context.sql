-- The conversation turns a reply answered (issue 21): posted with the reply,
-- or captured once from Chatwoot's message list and kept, so the dataset stays
-- the same if Chatwoot later deletes messages. Replies stored before this
-- migration have no capture due: nothing is read back for them.
ALTER TABLE gold_replies ADD COLUMN context jsonb;                -- array of {role, content}, or NULL
ALTER TABLE gold_replies ADD COLUMN context_source text;          -- posted | captured, NULL while none
ALTER TABLE gold_replies ADD COLUMN context_captured_at timestamptz;
-- A capture is due at this time (or leased until it); NULL: none pending.
ALTER TABLE gold_replies ADD COLUMN context_due_at timestamptz;
ALTER TABLE gold_replies ADD COLUMN context_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE gold_replies ADD COLUMN context_error text;
CREATE INDEX gold_replies_context_due ON gold_replies (context_due_at)
    WHERE context_due_at IS NOT NULL;

-- Migration 10's goldrelay_ingest with one more array, p_contexts: a posted
-- context is stored as posted; a reply without one has its capture due at
-- once (for approve_send the capture also waits for the delivery's end).
CREATE OR REPLACE FUNCTION goldrelay_ingest(
    p_reply_ids text[], p_account_ids int8[], p_conversation_ids int8[], p_actions text[],
    p_contents text[], p_privates bool[], p_approvers text[], p_drafts text[],
    p_tags text[], p_metadata text[], p_fingerprints text[], p_statuses text[],
    p_received timestamptz[], p_sends bool[], p_liquids bool[], p_contexts text[],
    p_channel text)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM (
        SELECT DISTINCT hashtextextended('goldrelay:' || a || ':' || c, 0) AS k
        FROM unnest(p_account_ids, p_conversation_ids, p_sends) AS t(a, c, s) WHERE s) AS keys
    ORDER BY k;
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_reply_ids, p_account_ids, p_conversation_ids, p_actions,
            p_contents, p_privates, p_approvers, p_drafts, p_tags, p_metadata,
            p_fingerprints, p_statuses, p_received, p_sends, p_liquids, p_contexts)
            WITH ORDINALITY AS t(reply_id, account_id, conversation_id, action, content,
            private, approved_by, draft, tags, metadata, fingerprint, status, received_at,
            sends, liquid, context, ord)),
    inserted AS (
        INSERT INTO gold_replies (reply_id, account_id, conversation_id, action, content,
            private, approved_by, draft, tags, metadata, fingerprint, status, received_at,
            next_attempt_at, liquid, context, context_source, context_due_at)
        SELECT i.reply_id, i.account_id, i.conversation_id, i.action, i.content, i.private,
            i.approved_by, i.draft::jsonb, i.tags::jsonb, i.metadata::jsonb, i.fingerprint,
            i.status, i.received_at, CASE WHEN i.sends THEN i.received_at END, i.liquid,
            i.context::jsonb, CASE WHEN i.context IS NOT NULL THEN 'posted' END,
            CASE WHEN i.context IS NULL THEN i.received_at END
        FROM input i ORDER BY i.ord
        ON CONFLICT (reply_id) DO NOTHING RETURNING gold_replies.reply_id),
    queued AS (
        SELECT i.*, row_number() OVER (PARTITION BY i.account_id, i.conversation_id
            ORDER BY i.ord) AS nth
        FROM input i JOIN inserted USING (reply_id) WHERE i.sends),
    jobs AS (
        INSERT INTO delivery_jobs (reply_id, account_id, conversation_id, due_at, is_head)
        SELECT q.reply_id, q.account_id, q.conversation_id, q.received_at, q.nth = 1 AND
            NOT EXISTS (SELECT 1 FROM delivery_jobs d
                WHERE d.account_id = q.account_id AND d.conversation_id = q.conversation_id)
        FROM queued q ORDER BY q.ord)
    SELECT inserted.reply_id FROM inserted;
    IF p_channel IS NOT NULL AND true = ANY(p_sends) THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
END
$$;
