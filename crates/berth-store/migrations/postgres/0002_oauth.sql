-- OAuth2: per-environment OAuth apps, in-flight authorization-code flows,
-- provider metadata on connections, re-authentication, and the refresh lease
-- that makes token refresh single-flight across processes.
CREATE TABLE oauth_apps (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    integration_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    -- Vault-sealed client secret, bound to the environment and app id.
    sealed_secret TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX oauth_apps_env ON oauth_apps (environment_id, integration_id, created_at);

CREATE TABLE oauth_flows (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES auth_sessions(id) ON DELETE CASCADE,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    -- Vault-sealed JSON: PKCE verifier, app, answers, redirect URI.
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX oauth_flows_expiry ON oauth_flows (expires_at);

-- Token-response metadata needed to call the provider (instance_url,
-- api_domain, portal id...). Never secrets.
ALTER TABLE connections ADD COLUMN provider_metadata TEXT NOT NULL DEFAULT '{}';

-- A session may re-authenticate an existing connection in place.
ALTER TABLE auth_sessions ADD COLUMN reauth_connection_id TEXT;
-- The last failure of the connect flow, shown by the modal.
ALTER TABLE auth_sessions ADD COLUMN last_error TEXT;

-- Refresh lease: the holder (until the deadline) is the only process that
-- may call the provider's token endpoint for this connection.
ALTER TABLE credentials ADD COLUMN lease_owner TEXT;
ALTER TABLE credentials ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
