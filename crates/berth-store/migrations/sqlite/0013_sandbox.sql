-- The sandbox provider's accounts and records. They were kept in each
-- process's memory: two API nodes handed out the same ids and each saw
-- only its own writes. Only the sandbox's routes read these tables.
CREATE TABLE sandbox_accounts (
    id TEXT PRIMARY KEY,
    next_id BIGINT NOT NULL,
    rate_limit_per_minute BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE sandbox_records (
    account_id TEXT NOT NULL,
    object TEXT NOT NULL,
    id TEXT NOT NULL,
    -- The id padded to 12 digits: list order is (updated_at, sort_id).
    sort_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT,
    fields TEXT NOT NULL,
    PRIMARY KEY (account_id, object, id)
);
CREATE INDEX sandbox_records_order ON sandbox_records (account_id, object, updated_at, sort_id);
