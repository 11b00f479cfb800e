-- Deliveries Chatwoot answered, recorded together: one call and one commit
-- (one WAL flush) for every outcome waiting, where one call per delivery left
-- the drain waiting on WAL flushes (measured: most of the pool in
-- LWLock:WALWrite or IO:WALSync). The rules are lifecycle::finish's Delivered
-- arm (src/store/lifecycle.rs), applied to each reply; a group the server
-- refuses is recorded one by one through that arm. The conversations' locks
-- are taken first, in key order, as an ingest batch takes them, so the two
-- cannot deadlock.
CREATE FUNCTION goldrelay_delivered_many(
    p_reply_ids text[], p_message_ids int8[], p_now timestamptz[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM (
        SELECT DISTINCT hashtextextended('goldrelay:' || account_id || ':' || conversation_id, 0) AS k
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
        last_error = NULL,
        next_attempt_at = NULL
    FROM unnest(p_reply_ids, p_message_ids, p_now) AS u(reply_id, message_id, at)
    WHERE r.reply_id = u.reply_id;
END
$$;
