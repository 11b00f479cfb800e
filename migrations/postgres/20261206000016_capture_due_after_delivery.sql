-- A reply to be sent has no context capture due until its delivery ends
-- (lifecycle.rs: NewReply::capture_due and capture_due): the capture reads the
-- turns before its message, so it could not run sooner, and a backlog of queued
-- replies kept the partial index on context_due_at full of rows every claim of
-- captures had to step over. Migration 15's goldrelay_ingest sets the due time
-- only for replies that are only kept; migration 14's goldrelay_delivered_many
-- makes the capture due when the delivery is recorded, as lifecycle.rs's
-- `delivered` does (conformance::postgres_fast_paths_agree compares the rows).
-- Same signatures: an instance on the old code calls these too during a deploy.

CREATE OR REPLACE FUNCTION goldrelay_ingest(
    p_reply_ids text[], p_account_ids int8[], p_conversation_ids int8[], p_actions text[],
    p_contents text[], p_privates bool[], p_approvers text[], p_drafts text[],
    p_tags text[], p_metadata text[], p_fingerprints text[], p_statuses text[],
    p_received timestamptz[], p_sends bool[], p_liquids bool[], p_contexts text[],
    p_trace_contexts text[], p_channel text)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM (
        SELECT DISTINCT goldrelay_line_lock(a, c) AS k
        FROM unnest(p_account_ids, p_conversation_ids, p_sends) AS t(a, c, s) WHERE s) AS keys
    ORDER BY k;
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_reply_ids, p_account_ids, p_conversation_ids, p_actions,
            p_contents, p_privates, p_approvers, p_drafts, p_tags, p_metadata,
            p_fingerprints, p_statuses, p_received, p_sends, p_liquids, p_contexts,
            p_trace_contexts)
            WITH ORDINALITY AS t(reply_id, account_id, conversation_id, action, content,
            private, approved_by, draft, tags, metadata, fingerprint, status, received_at,
            sends, liquid, context, trace_context, ord)),
    inserted AS (
        INSERT INTO gold_replies (reply_id, account_id, conversation_id, action, content,
            private, approved_by, draft, tags, metadata, fingerprint, status, received_at,
            next_attempt_at, liquid, context, context_source, context_due_at, trace_context)
        SELECT i.reply_id, i.account_id, i.conversation_id, i.action, i.content, i.private,
            i.approved_by, i.draft::jsonb, i.tags::jsonb, i.metadata::jsonb, i.fingerprint,
            i.status, i.received_at, CASE WHEN i.sends THEN i.received_at END, i.liquid,
            i.context::jsonb, CASE WHEN i.context IS NOT NULL THEN 'posted' END,
            CASE WHEN i.context IS NULL AND NOT i.sends THEN i.received_at END,
            i.trace_context
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

-- Migration 14's goldrelay_delivered_many, the capture made due.
CREATE OR REPLACE FUNCTION goldrelay_delivered_many(
    p_reply_ids text[], p_message_ids int8[], p_now timestamptz[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM (
        SELECT DISTINCT goldrelay_line_lock(account_id, conversation_id) AS k
        FROM delivery_jobs WHERE reply_id = ANY(p_reply_ids)) AS keys
    ORDER BY k;
    -- The statement still sees the removed rows, so they are left out by seq.
    WITH gone AS (
        DELETE FROM delivery_jobs WHERE reply_id = ANY(p_reply_ids)
        RETURNING seq, account_id, conversation_id),
    lines AS (SELECT DISTINCT account_id, conversation_id FROM gone)
    UPDATE delivery_jobs SET is_head = true WHERE seq IN (
        SELECT (SELECT MIN(d.seq) FROM delivery_jobs d
                WHERE d.account_id = l.account_id AND d.conversation_id = l.conversation_id
                AND d.seq NOT IN (SELECT seq FROM gone))
        FROM lines l);
    UPDATE gold_replies r SET
        status = CASE WHEN r.status = 'confirmed' THEN r.status ELSE 'delivered' END,
        chatwoot_message_id = u.message_id,
        delivered_at = COALESCE(r.delivered_at, u.at),
        context_due_at = CASE WHEN r.context_source IS NULL AND r.context_attempts = 0
            AND r.context_due_at IS NULL THEN u.at ELSE r.context_due_at END,
        last_error = NULL,
        next_attempt_at = NULL
    FROM unnest(p_reply_ids, p_message_ids, p_now) AS u(reply_id, message_id, at)
    WHERE r.reply_id = u.reply_id;
END
$$;
