-- One row that /hc rewrites to prove the database still takes writes (a
-- read-only replica after a failover, or a full disk, fails this where a
-- read would still succeed). Row level security as on every goldrelay table.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at TIMESTAMPTZ NOT NULL
);
ALTER TABLE write_probe ENABLE ROW LEVEL SECURITY;
