-- The request log: one row per provider call (or per call Berth refused
-- before it reached the provider). Query values are redacted before they
-- get here. Rows older than the configured retention are deleted.
--
-- Written at proxy speed, so it is kept lean: an integer key that grows
-- with time (newest first = highest id; also what retention deletes by)
-- and two indexes, one per way the log is read.
CREATE TABLE request_logs (
    id INTEGER PRIMARY KEY,
    environment_id TEXT NOT NULL,
    connection_id TEXT,
    integration_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    -- The status the caller got (Berth's own for refusals and failures).
    status INTEGER NOT NULL,
    latency_ms BIGINT NOT NULL,
    request_bytes BIGINT,
    response_bytes BIGINT,
    retries INTEGER NOT NULL,
    -- provider | berth | network
    layer TEXT NOT NULL,
    error TEXT
);
CREATE INDEX request_logs_env ON request_logs (environment_id, id);
CREATE INDEX request_logs_conn ON request_logs (connection_id, id);
