-- Webhook endpoints, the messages the outbox fans out to them, and every
-- delivery attempt. Messages double as the delivery queue: `next_attempt_at`
-- is when a dispatcher may next claim the row (NULL once delivered or
-- dead), and a claim pushes it forward by the lease, so a node that dies
-- mid-delivery leaves a row that is claimed again when the lease runs out.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    -- berth (seed /webhooks) | v2 (/webhooks/create) | v1 (/connection/webhook)
    flavor TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    -- The event filters as given, JSON array (matching uses webhook_endpoint_filters).
    filters TEXT NOT NULL,
    -- 1 when only the connections in webhook_endpoint_connections count.
    connection_scoped INTEGER NOT NULL DEFAULT 0,
    -- The scoped connection ids as given, JSON array, for display.
    connection_ids TEXT,
    -- The Standard Webhooks key (whsec_...), sealed by the vault.
    secret_sealed TEXT NOT NULL,
    previous_secret_sealed TEXT,
    previous_secret_until BIGINT,
    -- The Vessel signing key (v1: the connection's access token, v2: the
    -- API token), sealed; NULL for berth endpoints.
    vessel_key_sealed TEXT,
    disabled_at BIGINT,
    disabled_reason TEXT,
    -- Start of the current run of failed attempts; NULL after a success.
    failing_since BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX webhook_endpoints_env ON webhook_endpoints (environment_id, created_at, id);

-- One row per filter: `pattern` is the filter as written; `prefix` is what a
-- matching event type starts with for `*` ('') and `x.y.*` ('x.y.'), NULL
-- for an exact type.
CREATE TABLE webhook_endpoint_filters (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id),
    pattern TEXT NOT NULL,
    prefix TEXT,
    PRIMARY KEY (endpoint_id, pattern)
);

CREATE TABLE webhook_endpoint_connections (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id),
    connection_id TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, connection_id)
);

CREATE TABLE webhook_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    environment_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- pending | delivering | retry | delivered | dead
    state TEXT NOT NULL,
    -- Attempts in the current schedule (a replay starts a new one).
    attempts INTEGER NOT NULL DEFAULT 0,
    -- 1 while a replay asked for is not yet attempted.
    replay INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_status INTEGER,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    delivered_at BIGINT,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhook_messages_env ON webhook_messages (environment_id, seq);

CREATE TABLE webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    environment_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    message_seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    attempted_at BIGINT NOT NULL,
    -- scheduled | replay
    trigger TEXT NOT NULL,
    -- success | failed
    outcome TEXT NOT NULL,
    status_code INTEGER,
    latency_ms BIGINT NOT NULL,
    error TEXT,
    response_excerpt TEXT
);
CREATE INDEX webhook_attempts_env ON webhook_attempts (environment_id, id);
CREATE INDEX webhook_attempts_msg ON webhook_attempts (message_seq, id);

-- The outbox fan-out: every event becomes one message per matching endpoint
-- in the transaction that writes the event, whichever code path writes it.
CREATE TRIGGER events_fan_out AFTER INSERT ON events BEGIN
    INSERT INTO webhook_messages (environment_id, endpoint_id, event_id, state, attempts,
                                  next_attempt_at, created_at, updated_at)
    SELECT e.environment_id, e.id, NEW.id, 'pending', 0, NEW.created_at, NEW.created_at, NEW.created_at
    FROM webhook_endpoints e
    WHERE e.environment_id = NEW.environment_id AND e.deleted_at IS NULL AND e.disabled_at IS NULL
      AND EXISTS (SELECT 1 FROM webhook_endpoint_filters f WHERE f.endpoint_id = e.id
                  AND (f.pattern = NEW.event_type
                       OR (f.prefix IS NOT NULL AND substr(NEW.event_type, 1, length(f.prefix)) = f.prefix)))
      AND (e.connection_scoped = 0
           OR EXISTS (SELECT 1 FROM webhook_endpoint_connections c
                      WHERE c.endpoint_id = e.id AND c.connection_id = NEW.connection_id));
END;
