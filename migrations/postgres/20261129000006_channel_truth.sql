-- Channel status that stays true, and operator retries that look first.
-- channel_status_stale_at: when an event said the message's channel status
-- changed without showing it (Chatwoot's message events carry no status); the
-- worker reads it from Chatwoot's message list and clears this. NULL: current.
ALTER TABLE gold_replies ADD COLUMN channel_status_stale_at timestamptz;
-- uncertain: an attempt that may have created the message went before the
-- reply died, so an operator's retry looks for it before sending.
ALTER TABLE gold_replies ADD COLUMN uncertain boolean NOT NULL DEFAULT false;
-- Events about a message without goldrelay's marker (an agent's retry empties
-- content_attributes) find their reply by its Chatwoot message id.
CREATE INDEX gold_replies_by_message ON gold_replies (chatwoot_message_id)
    WHERE chatwoot_message_id IS NOT NULL;
CREATE INDEX gold_replies_stale_channel ON gold_replies (channel_status_stale_at)
    WHERE channel_status_stale_at IS NOT NULL;
