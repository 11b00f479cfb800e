-- goldrelay_ingest with each reply's trace context (migration 12's column)
-- stored in the same statement as the reply. Before, the writer stored the
-- contexts in a second statement after the batch committed, and a worker that
-- claimed a reply in between traced its attempt without its post's trace.
--
-- Migration 14's goldrelay_ingest (without p_trace_contexts) is left in place
-- so an instance still on the old code keeps its batch path during a rolling
-- deploy; a call names its arguments, so each code calls its own overload.
CREATE FUNCTION goldrelay_ingest(
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
            CASE WHEN i.context IS NULL THEN i.received_at END, i.trace_context
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
