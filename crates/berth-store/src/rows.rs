//! Row types read from and written to the store. They are storage shapes,
//! not API shapes: the HTTP layer maps them to each API family's wire format.

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Environment {
    pub id: String,
    pub project_id: String,
    /// `development` or `production`.
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiToken {
    pub id: String,
    pub environment_id: String,
    pub environment: String,
    pub name: String,
    /// The first characters of the token, safe to show.
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub struct NewApiToken<'a> {
    pub id: &'a str,
    pub environment_id: &'a str,
    pub name: &'a str,
    pub prefix: &'a str,
    pub token_hash: &'a str,
    pub created_at: i64,
}

/// A connect session: a v2 session token or a v1 link token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthSession {
    pub id: String,
    pub environment_id: String,
    /// `session` (v2) or `link` (v1).
    pub kind: String,
    pub integration_id: Option<String>,
    pub external_user_id: Option<String>,
    /// JSON object, as given by the customer.
    pub metadata: Option<String>,
    /// JSON array of origins.
    pub allowed_origins: String,
    /// `created`, `completed` or `exchanged`.
    pub state: String,
    pub connection_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub completed_at: Option<i64>,
    pub exchanged_at: Option<i64>,
    /// Set when the session re-authenticates this existing connection.
    pub reauth_connection_id: Option<String>,
    /// The last failure of the flow (provider denied, invalid credentials...).
    pub last_error: Option<String>,
}

pub struct NewSession<'a> {
    pub id: &'a str,
    pub environment_id: &'a str,
    pub kind: &'a str,
    pub token_hash: &'a str,
    pub integration_id: Option<&'a str>,
    pub external_user_id: Option<&'a str>,
    pub metadata: Option<&'a str>,
    pub allowed_origins: &'a str,
    pub reauth_connection_id: Option<&'a str>,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Connection {
    pub id: String,
    pub environment_id: String,
    pub integration_id: String,
    pub auth_type: String,
    /// `NEW_CONNECTION`, `INITIAL_SYNCED` or `READY`.
    pub status: String,
    /// `ok` or `needs_reauth`.
    pub auth_state: String,
    pub auth_error: Option<String>,
    pub external_user_id: Option<String>,
    pub metadata: Option<String>,
    /// JSON object of the non-secret connect-form answers.
    pub answers: String,
    pub native_org_id: Option<String>,
    pub native_user_id: Option<String>,
    pub native_org_url: Option<String>,
    /// JSON object: token-response metadata (instance URL, api domain...).
    pub provider_metadata: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_activity_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

pub struct NewConnection<'a> {
    pub id: &'a str,
    pub environment_id: &'a str,
    pub integration_id: &'a str,
    pub auth_type: &'a str,
    pub status: &'a str,
    pub external_user_id: Option<&'a str>,
    pub metadata: Option<&'a str>,
    pub answers: &'a str,
    pub native_org_id: Option<&'a str>,
    pub native_user_id: Option<&'a str>,
    pub native_org_url: Option<&'a str>,
    pub provider_metadata: &'a str,
}

pub struct CreateConnection<'a> {
    pub session_id: &'a str,
    pub connection: &'a NewConnection<'a>,
    pub sealed_credential: &'a str,
    /// v1 link sessions get a public token at completion.
    pub public_token_hash: Option<&'a str>,
    pub live_connection_limit: Option<i64>,
    pub event: NewEvent<'a>,
    pub now: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credential {
    pub connection_id: String,
    pub environment_id: String,
    pub version: i64,
    /// Vault-sealed JSON.
    pub sealed: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    pub seq: i64,
    pub id: String,
    pub environment_id: String,
    pub connection_id: Option<String>,
    pub event_type: String,
    /// JSON.
    pub payload: String,
    pub created_at: i64,
}

pub struct NewEvent<'a> {
    pub id: &'a str,
    pub environment_id: &'a str,
    pub connection_id: Option<&'a str>,
    pub event_type: &'a str,
    pub payload: &'a str,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthApp {
    pub id: String,
    pub environment_id: String,
    pub integration_id: String,
    pub client_id: String,
    pub sealed_secret: String,
    /// JSON array of scopes; empty means the catalog's defaults.
    pub scopes: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthFlow {
    pub id: String,
    pub session_id: String,
    pub environment_id: String,
    pub sealed: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What replaces a connection's credential when it is re-authenticated.
pub struct Reauthorize<'a> {
    pub session_id: &'a str,
    pub environment_id: &'a str,
    pub connection_id: &'a str,
    pub sealed_credential: &'a str,
    pub answers: &'a str,
    pub provider_metadata: &'a str,
    pub public_token_hash: Option<&'a str>,
    pub event: NewEvent<'a>,
    pub now: i64,
}

/// One row of the request log (see migration 0003).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestLog {
    /// Assigned by the store; grows with time.
    pub id: i64,
    pub environment_id: String,
    pub connection_id: Option<String>,
    pub integration_id: String,
    pub created_at: i64,
    pub method: String,
    pub path: String,
    pub status: i32,
    pub latency_ms: i64,
    pub request_bytes: Option<i64>,
    pub response_bytes: Option<i64>,
    pub retries: i32,
    pub layer: String,
    pub error: Option<String>,
}

/// Filters of a request-log page; empty strings and open bounds match all.
#[derive(Debug, Clone)]
pub struct RequestLogFilter<'a> {
    pub connection_id: Option<&'a str>,
    /// Half-open status range, e.g. 400..500.
    pub status: (i32, i32),
    pub layer: Option<&'a str>,
    /// Half-open time range in ms.
    pub time: (i64, i64),
    /// Newest first: rows with a smaller id than this.
    pub before: Option<i64>,
    pub limit: i64,
}
