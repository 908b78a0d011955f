-- The sync engine: a durable job queue, the synced records of every
-- connection, and each (connection, object) pair's sync checkpoint.

-- Jobs: typed background work with priorities, a de-duplication key (at
-- most one queued or running job per key), leases renewed by heartbeats,
-- jittered retries and a dead state that keeps the last error.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    environment_id TEXT,
    connection_id TEXT,
    dedup_key TEXT,
    payload TEXT NOT NULL DEFAULT '{}',
    priority INTEGER NOT NULL DEFAULT 0,
    -- queued | running | done | dead
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 10,
    run_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX jobs_dedup ON jobs (dedup_key) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_due ON jobs (state, run_at);
CREATE INDEX jobs_connection ON jobs (connection_id, created_at);

-- When each connection syncs next; NULL interval = the configured default.
ALTER TABLE connections ADD COLUMN sync_interval_secs BIGINT;
ALTER TABLE connections ADD COLUMN next_sync_at BIGINT;

-- Per (connection, object): where the current run is, and what it saw.
-- The checkpoint (cursor, high_water) is written in the transaction that
-- writes the records of the page it covers.
CREATE TABLE sync_states (
    connection_id TEXT NOT NULL,
    object TEXT NOT NULL,
    environment_id TEXT NOT NULL,
    -- initial | backfill | incremental
    phase TEXT NOT NULL,
    -- run: idle | running | done
    run_state TEXT NOT NULL DEFAULT 'idle',
    run_id TEXT,
    run_since BIGINT,
    cursor TEXT,
    high_water BIGINT,
    records_synced BIGINT NOT NULL DEFAULT 0,
    pages BIGINT NOT NULL DEFAULT 0,
    total BIGINT,
    last_error TEXT,
    last_synced_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (connection_id, object)
);

-- One row per provider record of a connection. `seq` is assigned on first
-- insert and never changes: listing in seq order never skips or repeats a
-- record inserted while a client pages.
CREATE TABLE records (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment_id TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    object TEXT NOT NULL,
    native_id TEXT NOT NULL,
    -- 32 hex digits; the v1 id is `v.<type>.<uid>`.
    uid TEXT NOT NULL,
    hash TEXT NOT NULL,
    data TEXT NOT NULL,
    native TEXT NOT NULL,
    created_time BIGINT,
    modified_time BIGINT,
    deleted_at BIGINT,
    -- The sync run that last saw it (mark and sweep).
    seen_run TEXT,
    synced_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX records_native ON records (connection_id, object, native_id);
CREATE UNIQUE INDEX records_uid ON records (connection_id, object, uid);
CREATE INDEX records_list ON records (connection_id, object, seq);
