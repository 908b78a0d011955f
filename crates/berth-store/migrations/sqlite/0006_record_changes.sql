-- Which (connection, object) had its records changed, for the other
-- processes sharing this database file: each polls the rows after the last
-- one it saw and drops the rendered pages they make stale. SQLite commits
-- one writer at a time, so `seq` grows in commit order and a poller that
-- reads past a sequence never misses a change behind it. Rows are kept ten
-- minutes. (PostgreSQL uses LISTEN/NOTIFY instead and needs no table.)
CREATE TABLE record_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id TEXT NOT NULL,
    object TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX record_changes_at ON record_changes (at);
