//! The SQL both backends share, with each backend's binds and spellings
//! filled in where they differ.

/// Which replies' context capture is due, in both backends (`{now}` is each
/// backend's bind): none posted or captured yet, due by now, and for
/// `approve_send` only once its delivery ended (the turns before its message
/// are read then, or, if it never went out, those before its acceptance).
pub(crate) const CAPTURE_DUE: &str = "context_due_at <= {now} \
     AND (action <> 'approve_send' OR status IN ('delivered', 'confirmed', 'dead'))";

/// The columns every read of a reply selects, in both backends.
pub(crate) const REPLY_COLUMNS: &str =
    "reply_id, account_id, conversation_id, action, status, attempts, \
     last_error, chatwoot_message_id, received_at, next_attempt_at, delivered_at, confirmed_at, \
     channel_status, channel_error, fingerprint, uncertain, channel_status_stale_at, \
     context_source, context_captured_at, context_attempts, context_error, context_due_at";

/// The due heads of the job lines with their replies, oldest due first, in
/// both backends' SQL: `{head}` is the backend's "is a head" and `{now}`,
/// `{limit}` its binds. [`super::row::job`] reads a row.
pub(crate) fn due_heads_sql(head: &str, now: &str, limit: &str) -> String {
    format!(
        "SELECT j.reply_id, j.account_id, j.conversation_id, j.maybe_sent, \
         r.content, r.private, r.liquid, r.attempts, r.trace_context, \
         COALESCE(r.requeued_at, r.received_at) AS age_from, r.received_at AS accepted_at \
         FROM delivery_jobs j JOIN gold_replies r ON r.reply_id = j.reply_id \
         WHERE {head} AND j.due_at <= {now} AND (j.lease_until IS NULL OR j.lease_until <= {now}) \
         ORDER BY j.due_at, j.seq LIMIT {limit}"
    )
}

/// Replies whose channel status needs reading, longest waiting first; the
/// same SQL on both backends (one bind: the limit).
/// [`super::Store::stale_channel_statuses`]: the marked replies whose read is due,
/// and (with `every`) delivered replies never read whose first check is due.
/// `{due}`, `{horizon}`, `{every}` and `{limit}` are each backend's binds, and
/// `{first_check}` its way to add `every` to `delivered_at`.
pub(crate) fn stale_channel_statuses_sql(
    due: &str,
    horizon: &str,
    every: &str,
    limit: &str,
    first_check: &str,
    first_checks: bool,
) -> String {
    // Without first checks the query is the marked replies alone, which the
    // partial index on `channel_status_stale_at` serves (the other binds are
    // still named, so both backends take the same four).
    let (first_checks, order) = if first_checks {
        (
            format!(
                " OR ({every} > 0 AND channel_status_stale_at IS NULL \
                 AND status IN ('delivered', 'confirmed') \
                 AND (channel_status IS NULL OR channel_status <> 'read') \
                 AND received_at > {horizon} AND {first_check} <= {due})"
            ),
            format!("COALESCE(channel_status_stale_at, {first_check})"),
        )
    } else {
        (
            format!(" AND {horizon} IS NOT NULL AND {every} IS NOT NULL"),
            "channel_status_stale_at".to_owned(),
        )
    };
    format!(
        "SELECT reply_id, account_id, conversation_id, chatwoot_message_id, \
         channel_status_stale_at, received_at, {order} AS due_at FROM gold_replies \
         WHERE chatwoot_message_id IS NOT NULL \
         AND (channel_status_stale_at <= {due}{first_checks}) \
         ORDER BY due_at, reply_id LIMIT {limit}"
    )
}
