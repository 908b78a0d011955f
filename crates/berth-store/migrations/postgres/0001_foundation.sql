-- Foundation schema. Timestamps are unix milliseconds (BIGINT) on both backends
-- so that the same queries and row types work everywhere.
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE environments (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    -- Bumped by every connection creation: the first write of that transaction,
    -- so it takes the write lock before the connection-limit count is read.
    connection_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE connections (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    integration_id TEXT NOT NULL,
    auth_type TEXT NOT NULL,
    status TEXT NOT NULL,
    auth_state TEXT NOT NULL DEFAULT 'ok',
    auth_error TEXT,
    access_token_hash TEXT UNIQUE,
    external_user_id TEXT,
    metadata TEXT,
    answers TEXT NOT NULL DEFAULT '{}',
    native_org_id TEXT,
    native_user_id TEXT,
    native_org_url TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_activity_at BIGINT,
    deleted_at BIGINT
);
CREATE INDEX connections_env_live ON connections (environment_id, created_at, id) WHERE deleted_at IS NULL;

CREATE TABLE auth_sessions (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    kind TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    public_token_hash TEXT UNIQUE,
    integration_id TEXT,
    external_user_id TEXT,
    metadata TEXT,
    allowed_origins TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL,
    connection_id TEXT REFERENCES connections(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    completed_at BIGINT,
    exchanged_at BIGINT
);
CREATE INDEX auth_sessions_expiry ON auth_sessions (expires_at);

CREATE TABLE credentials (
    connection_id TEXT PRIMARY KEY REFERENCES connections(id),
    environment_id TEXT NOT NULL REFERENCES environments(id),
    version BIGINT NOT NULL,
    sealed TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    connection_id TEXT,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_env ON events (environment_id, seq);
