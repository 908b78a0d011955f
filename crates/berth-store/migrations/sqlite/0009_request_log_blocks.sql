-- The request log, stored in blocks: one row per run of consecutive
-- calls of one connection (at most 1024) that the writer flushed
-- together, the calls packed as a JSON array. A row per call cost more
-- than the proxied call itself: SQLite bound, copied and indexed three
-- text ids per call. A call's id is `block id * 4096 + its index`, so
-- ids still grow with time and cursors stay plain integers.
--
-- Decision: the per-call table is dropped, not converted. The log is
-- observability data kept for days, and no release has shipped.
DROP TABLE request_logs;

CREATE TABLE request_log_blocks (
    id INTEGER PRIMARY KEY,
    environment_id TEXT NOT NULL,
    connection_id TEXT,
    integration_id TEXT NOT NULL,
    min_created_at BIGINT NOT NULL,
    max_created_at BIGINT NOT NULL,
    -- Bit n set: some call in the block got status n*100..n*100+99.
    status_classes INTEGER NOT NULL,
    -- Bits 0, 1, 2: some call was answered by the provider, berth, network.
    layers INTEGER NOT NULL,
    -- Calls still in the block (retention blanks calls out of a block it
    -- cuts through, keeping the others' indexes).
    entry_count INTEGER NOT NULL,
    -- [[created_at, method, path, status, latency_ms, request_bytes,
    --   response_bytes, retries, layer, error] | null, ...]
    entries TEXT NOT NULL
);
CREATE INDEX request_log_blocks_env ON request_log_blocks (environment_id, id);
CREATE INDEX request_log_blocks_conn ON request_log_blocks (connection_id, id);
-- Retention: whole blocks by their newest call, then the few blocks the
-- cut-off goes through by their oldest.
CREATE INDEX request_log_blocks_age ON request_log_blocks (max_created_at);
CREATE INDEX request_log_blocks_start ON request_log_blocks (min_created_at);
