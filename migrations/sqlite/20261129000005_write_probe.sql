-- One row that /hc rewrites to prove the database still takes writes (a full
-- disk or a broken writer fails this, where a read would still succeed).
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
