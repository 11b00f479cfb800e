-- The send pace's one row exists from the start, so a slot is reserved with
-- one conditional UPDATE (taken only if it starts in time: a slot taken and
-- not used would hold every instance back).
INSERT INTO send_pace (id, next_at) VALUES (1, now()) ON CONFLICT (id) DO NOTHING;
