//! The platform's domain services: tenancy and API tokens, connect sessions
//! (v2 session tokens and v1 link tokens), the connect step that validates
//! and vaults credentials, and the connection lifecycle.
//!
//! This crate knows nothing about HTTP wire shapes; `berth-api` maps its
//! results and [`PlatformError`] onto each API family.
#![forbid(unsafe_code)]

mod connect;
pub mod credential;
pub mod cursor;
mod hot;
pub mod oauth;
pub mod request_log;
pub mod secrets;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use berth_catalog::Catalog;
use berth_outbound::Outbound;
use berth_store::{Connection, Environment, NewEvent, Store, StoreError};
use berth_vault::Vault;

pub use berth_store::{AuthSession, Environment as Env};
pub use connect::{StartAuth, StartOutcome};
pub use cursor::{CursorCodec, InvalidCursor};
pub use oauth::{CallbackOutcome, CallbackParams, ConfiguredApp, NewOAuthApp, OAuthAppView};
pub use request_log::LogQuery;
pub use tokens::{ProviderCall, StreamCall};

/// Connection statuses of seed 001.
pub mod status {
    pub const NEW_CONNECTION: &str = "NEW_CONNECTION";
    pub const INITIAL_SYNCED: &str = "INITIAL_SYNCED";
    pub const READY: &str = "READY";
}

/// Session kinds.
pub mod session_kind {
    pub const SESSION: &str = "session";
    pub const LINK: &str = "link";
}

/// Errors every API family maps to its own wire shape.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The provider refused the credentials; the message carries its reason.
    #[error("{0}")]
    InvalidCredentials(String),
    #[error("{0}")]
    ProviderUnavailable(String),
    /// The provider did not answer in time.
    #[error("{0}")]
    ProviderTimeout(String),
    /// A rate-limit budget is spent; Berth did not send the call.
    #[error("{message}")]
    RateLimited {
        retry_after_secs: u64,
        message: String,
    },
    /// The store is unreachable or dropped the connection (a restart):
    /// answered 503 with `Retry-After`.
    #[error("the store is unavailable for a moment; retry shortly")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl PlatformError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        PlatformError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        PlatformError::Unauthorized {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for PlatformError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            PlatformError::StoreUnavailable(Box::new(e))
        } else {
            PlatformError::Internal(Box::new(e))
        }
    }
}

impl From<InvalidCursor> for PlatformError {
    fn from(e: InvalidCursor) -> Self {
        PlatformError::bad_request("INVALID_CURSOR", e.to_string())
    }
}

pub type Result<T, E = PlatformError> = std::result::Result<T, E>;

/// Runtime settings of the platform services.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Where Berth is reachable, without a trailing slash.
    pub public_url: String,
    pub session_ttl: Duration,
    /// Live connections allowed in a `development` environment.
    pub dev_connection_limit: i64,
    /// Access tokens are refreshed when they expire within this margin.
    pub refresh_margin: Duration,
    /// Default OAuth apps from the server config, by integration id.
    pub oauth_apps: std::collections::BTreeMap<String, ConfiguredApp>,
    /// Request-log rows older than this are deleted.
    pub request_log_retention: Duration,
}

/// The services behind every API family. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Platform {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    vault: Vault,
    catalog: Arc<Catalog>,
    outbound: Outbound,
    cursors: CursorCodec,
    config: PlatformConfig,
    /// Identifies this process as a refresh-lease holder.
    node_id: String,
    refresh_locks: tokens::LocalLocks,
    log_writer: tokio::sync::mpsc::Sender<request_log::Msg>,
    hot: hot::HotCache,
}

/// What a successful token exchange hands to the customer's backend.
#[derive(Debug)]
pub struct Exchanged {
    /// Shown once; only its hash is stored.
    pub access_token: String,
    pub connection: Connection,
}

/// A request to create a v2 session token or a v1 link token.
#[derive(Debug, Default)]
pub struct NewSessionRequest {
    pub integration_id: Option<String>,
    pub external_user_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub allowed_origins: Vec<String>,
    /// Re-authenticate this existing connection instead of creating one.
    pub connection_id: Option<String>,
}

/// What the connect modal needs to know about its session.
#[derive(Debug)]
pub struct SessionStatus {
    pub session: AuthSession,
    /// The v1 public token, once a link session completed.
    pub public_token: Option<String>,
    /// The integration of the connection being re-authenticated.
    pub reauth_integration_id: Option<String>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Platform {
    pub fn new(
        store: Store,
        vault: Vault,
        catalog: Arc<Catalog>,
        outbound: Outbound,
        config: PlatformConfig,
    ) -> Self {
        let cursors = CursorCodec::new(*vault.derive_subkey("cursor"));
        let entries = outbound.take_log_receiver().unwrap_or_else(|| {
            // The outbound layer is shared with another platform that
            // writes its log already.
            tokio::sync::mpsc::channel(1).1
        });
        let log_writer = request_log::spawn_writer(store.clone(), entries);
        Self {
            inner: Arc::new(Inner {
                store,
                vault,
                catalog,
                outbound,
                cursors,
                config,
                node_id: secrets::new_id("node"),
                refresh_locks: Default::default(),
                log_writer,
                hot: Default::default(),
            }),
        }
    }

    /// Drops a connection from the hot cache after an out-of-band change
    /// (its status moved), so this process sees it at once.
    pub fn forget_connection(&self, id: &str) {
        self.inner.hot.forget_connection(id);
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn vault(&self) -> &Vault {
        &self.inner.vault
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn config(&self) -> &PlatformConfig {
        &self.inner.config
    }

    pub fn cursors(&self) -> &CursorCodec {
        &self.inner.cursors
    }

    // ---- tenancy and API tokens -------------------------------------------

    /// Creates the default project on an empty store and returns a fresh
    /// development API token for it; `None` when the store was not empty.
    pub async fn bootstrap(&self) -> Result<Option<String>> {
        match self.inner.store.bootstrap(now_ms()).await? {
            Some(_) => Ok(Some(
                self.create_api_token("development", "initial token")
                    .await?,
            )),
            None => Ok(None),
        }
    }

    pub async fn create_api_token(&self, environment: &str, name: &str) -> Result<String> {
        self.create_api_token_in(berth_store::DEFAULT_PROJECT_ID, environment, name)
            .await
    }

    /// A new project with its two environments.
    pub async fn create_project(&self, name: &str) -> Result<Vec<berth_store::Environment>> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(PlatformError::bad_request(
                "INVALID_NAME",
                "a project name is 1 to 200 characters",
            ));
        }
        let suffix = secrets::random_hex(8);
        Ok(self
            .inner
            .store
            .create_project(
                &format!("v_project_{suffix}"),
                &suffix,
                name.trim(),
                now_ms(),
            )
            .await?)
    }

    /// An API token of environment `environment` of project `project_id`.
    pub async fn create_api_token_in(
        &self,
        project_id: &str,
        environment: &str,
        name: &str,
    ) -> Result<String> {
        let env = self
            .inner
            .store
            .environment_in(project_id, environment)
            .await?
            .ok_or_else(|| {
                PlatformError::bad_request(
                    "UNKNOWN_ENVIRONMENT",
                    format!(
                        "no environment named `{environment}` in project `{project_id}` (development or production)"
                    ),
                )
            })?;
        let prefix = if env.name == "production" {
            secrets::API_TOKEN_PROD_PREFIX
        } else {
            secrets::API_TOKEN_DEV_PREFIX
        };
        let token = secrets::new_token(prefix);
        self.inner
            .store
            .insert_api_token(&berth_store::NewApiToken {
                id: &secrets::new_id("tok"),
                environment_id: &env.id,
                name,
                prefix: &secrets::display_prefix(&token),
                token_hash: &secrets::hash_token(&token),
                created_at: now_ms(),
            })
            .await?;
        Ok(token)
    }

    /// The environment an API token belongs to.
    pub async fn authenticate_api_token(&self, token: &str) -> Result<Environment> {
        Ok((*self.authenticate_api_token_shared(token).await?).clone())
    }

    /// [`Self::authenticate_api_token`] without copying the environment
    /// (the proxy's hot path).
    pub async fn authenticate_api_token_shared(&self, token: &str) -> Result<Arc<Environment>> {
        let digest = secrets::token_digest(token.trim());
        if let Some(env) = self.inner.hot.env(&digest) {
            return Ok(env);
        }
        let ticket = self.inner.hot.ticket();
        let env = self
            .inner
            .store
            .environment_by_api_token_hash(&secrets::hex_lower(&digest))
            .await?
            .ok_or_else(|| {
                PlatformError::unauthorized("INVALID_API_TOKEN", "invalid or revoked API token")
            })?;
        Ok(self.inner.hot.put_env(ticket, digest, env))
    }

    // ---- sessions -----------------------------------------------------------

    /// Creates a v2 session token (`kind = session`) or v1 link token
    /// (`kind = link`) for one end user's connect flow.
    pub async fn create_session(
        &self,
        env: &Environment,
        kind: &str,
        req: NewSessionRequest,
    ) -> Result<String> {
        if let Some(id) = &req.integration_id
            && self.catalog().get(id).is_none()
        {
            return Err(unknown_integration(id));
        }
        let mut integration_id = req.integration_id.clone();
        if let Some(cid) = req.connection_id.as_deref().filter(|s| !s.is_empty()) {
            let conn = self.get_connection(env, cid).await?;
            if integration_id
                .as_deref()
                .is_some_and(|i| i != conn.integration_id)
            {
                return Err(PlatformError::bad_request(
                    "INTEGRATION_MISMATCH",
                    format!(
                        "connection `{cid}` is a `{}` connection",
                        conn.integration_id
                    ),
                ));
            }
            integration_id = Some(conn.integration_id);
        }
        if let Some(u) = &req.external_user_id
            && (u.is_empty() || u.len() > 256)
        {
            return Err(PlatformError::bad_request(
                "INVALID_BODY",
                "externalUserId must be 1 to 256 characters",
            ));
        }
        let metadata = match &req.metadata {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => {
                let s = v.to_string();
                if s.len() > 16 * 1024 {
                    return Err(PlatformError::bad_request(
                        "INVALID_BODY",
                        "metadata must be at most 16 KiB of JSON",
                    ));
                }
                Some(s)
            }
            Some(_) => {
                return Err(PlatformError::bad_request(
                    "INVALID_BODY",
                    "metadata must be a JSON object",
                ));
            }
        };
        let mut origins = Vec::new();
        for o in &req.allowed_origins {
            origins.push(normalize_origin(o).ok_or_else(|| {
                PlatformError::bad_request(
                    "INVALID_BODY",
                    format!("allowedOrigins: `{o}` is not an origin like https://app.example.com"),
                )
            })?);
        }
        let prefix = if kind == session_kind::LINK {
            secrets::LINK_TOKEN_PREFIX
        } else {
            secrets::SESSION_TOKEN_PREFIX
        };
        let token = secrets::new_token(prefix);
        let now = now_ms();
        self.inner
            .store
            .insert_session(&berth_store::NewSession {
                id: &secrets::new_id("ses"),
                environment_id: &env.id,
                kind,
                token_hash: &secrets::hash_token(&token),
                integration_id: integration_id.as_deref(),
                reauth_connection_id: req.connection_id.as_deref().filter(|s| !s.is_empty()),
                external_user_id: req.external_user_id.as_deref(),
                metadata: metadata.as_deref(),
                allowed_origins: &serde_json::to_string(&origins).expect("strings serialize"),
                created_at: now,
                expires_at: now + self.inner.config.session_ttl.as_millis() as i64,
            })
            .await?;
        Ok(token)
    }

    /// A session (or link) token that is still within its lifetime.
    pub async fn session(&self, token: &str) -> Result<AuthSession> {
        let s = self
            .inner
            .store
            .session_by_token_hash(&secrets::hash_token(token.trim()))
            .await?
            .ok_or_else(|| {
                PlatformError::unauthorized("INVALID_SESSION_TOKEN", "invalid session token")
            })?;
        if s.expires_at <= now_ms() {
            return Err(PlatformError::unauthorized(
                "SESSION_EXPIRED",
                "the session token expired; create a new one",
            ));
        }
        Ok(s)
    }

    /// The state of a connect session, for the modal (authenticated by the
    /// session token itself).
    pub async fn session_status(&self, token: &str) -> Result<SessionStatus> {
        let session = self.session(token).await?;
        let public_token = (session.state != "created")
            .then(|| self.public_token_for(&session))
            .flatten();
        let reauth_integration_id = match &session.reauth_connection_id {
            Some(id) => self
                .store()
                .get_connection(&session.environment_id, id)
                .await?
                .map(|c| c.integration_id),
            None => None,
        };
        Ok(SessionStatus {
            session,
            public_token,
            reauth_integration_id,
        })
    }

    /// Exchanges a completed v2 session for the connection's access token.
    pub async fn exchange_session_token(
        &self,
        env: &Environment,
        token: &str,
    ) -> Result<Exchanged> {
        let s = self
            .inner
            .store
            .session_by_token_hash(&secrets::hash_token(token.trim()))
            .await?
            .filter(|s| s.environment_id == env.id && s.kind == session_kind::SESSION)
            .ok_or_else(|| {
                PlatformError::bad_request(
                    "INVALID_SESSION_TOKEN",
                    "invalid session token for this environment",
                )
            })?;
        self.exchange(s).await
    }

    /// Exchanges a v1 public token for the connection's access token.
    pub async fn exchange_public_token(&self, env: &Environment, token: &str) -> Result<Exchanged> {
        let s = self
            .inner
            .store
            .session_by_public_token_hash(&secrets::hash_token(token.trim()))
            .await?
            .filter(|s| s.environment_id == env.id)
            .ok_or_else(|| {
                PlatformError::bad_request("INVALID_PUBLIC_TOKEN", "invalid public token")
            })?;
        self.exchange(s).await
    }

    async fn exchange(&self, s: AuthSession) -> Result<Exchanged> {
        match s.state.as_str() {
            "exchanged" => {
                return Err(PlatformError::bad_request(
                    "TOKEN_ALREADY_EXCHANGED",
                    "this token was already exchanged; each session is single-use",
                ));
            }
            "created" => {
                return Err(PlatformError::bad_request(
                    "SESSION_NOT_COMPLETED",
                    "the end user has not finished connecting with this session yet",
                ));
            }
            _ => {}
        }
        let now = now_ms();
        if s.expires_at <= now {
            return Err(PlatformError::bad_request(
                "TOKEN_EXPIRED",
                "the token expired before it was exchanged; start a new connect flow",
            ));
        }
        let access_token = secrets::new_token(secrets::ACCESS_TOKEN_PREFIX);
        let connection = self
            .inner
            .store
            .exchange_session(&s.id, &secrets::hash_token(&access_token), now)
            .await?
            .ok_or_else(|| {
                PlatformError::bad_request(
                    "TOKEN_ALREADY_EXCHANGED",
                    "this token was already exchanged, or its connection was deleted",
                )
            })?;
        Ok(Exchanged {
            access_token,
            connection,
        })
    }

    // ---- connections --------------------------------------------------------

    /// One page of live connections; the cursor is opaque and scoped.
    pub async fn list_connections(
        &self,
        env: &Environment,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<Connection>, Option<String>)> {
        let scope = format!("{}/connections", env.id);
        let after: Option<(i64, String)> = match cursor.filter(|c| !c.is_empty()) {
            Some(c) => Some(self.inner.cursors.decode(&scope, c)?),
            None => None,
        };
        let limit = limit.clamp(1, 500);
        let mut rows = self
            .inner
            .store
            .list_connections(
                &env.id,
                after.as_ref().map(|(t, id)| (*t, id.as_str())),
                limit + 1,
            )
            .await?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|c| self.inner.cursors.encode(&scope, &(c.created_at, &c.id)))
        } else {
            None
        };
        Ok((rows, next))
    }

    pub async fn get_connection(&self, env: &Environment, id: &str) -> Result<Connection> {
        self.inner
            .store
            .get_connection(&env.id, id)
            .await?
            .ok_or_else(|| connection_not_found(id))
    }

    /// The connection an access token belongs to, within `env`.
    pub async fn connection_for_access_token(
        &self,
        env: &Environment,
        token: &str,
    ) -> Result<Connection> {
        Ok((*self.connection_for_access_token_shared(env, token).await?).clone())
    }

    /// [`Self::connection_for_access_token`] without copying the
    /// connection (the proxy's hot path).
    pub async fn connection_for_access_token_shared(
        &self,
        env: &Environment,
        token: &str,
    ) -> Result<Arc<Connection>> {
        let digest = secrets::token_digest(token.trim());
        if let Some(c) = self.inner.hot.conn(&env.id, &digest) {
            return Ok(c);
        }
        let ticket = self.inner.hot.ticket();
        let hash = secrets::hex_lower(&digest);
        let Some(conn) = self
            .inner
            .store
            .connection_by_access_token_hash(&env.id, &hash)
            .await?
        else {
            // Only on the refusal path: a caller still holding the token
            // a re-authentication replaced is told so.
            if self
                .inner
                .store
                .access_token_was_replaced(&env.id, &hash)
                .await?
            {
                return Err(PlatformError::unauthorized(
                    "ACCESS_TOKEN_REPLACED",
                    "this access token was replaced when the end user re-authenticated the connection: use the access token of the latest /auth/access-token exchange for it",
                ));
            }
            return Err(PlatformError::unauthorized(
                "INVALID_ACCESS_TOKEN",
                "invalid access token (the connection may have been deleted)",
            ));
        };
        Ok(self.inner.hot.put_conn(ticket, digest, conn))
    }

    /// Deletes a connection: revokes its access token, erases its
    /// credentials, and records a `connection.deleted` event.
    pub async fn delete_connection(&self, env: &Environment, id: &str) -> Result<()> {
        let now = now_ms();
        let conn = self.get_connection(env, id).await?;
        let payload = serde_json::json!({
            "connectionId": conn.id,
            "integrationId": conn.integration_id,
            "externalUserId": conn.external_user_id,
        })
        .to_string();
        let deleted = self
            .inner
            .store
            .delete_connection(
                &env.id,
                id,
                &NewEvent {
                    id: &secrets::new_id("evt"),
                    environment_id: &env.id,
                    connection_id: Some(id),
                    event_type: "connection.deleted",
                    payload: &payload,
                    created_at: now,
                },
                now,
            )
            .await?;
        self.inner.hot.forget_connection(id);
        if deleted {
            Ok(())
        } else {
            Err(connection_not_found(id))
        }
    }

    /// Opens a connection's vaulted credential. Plaintext lives only in the
    /// returned value, which is zeroed on drop.
    pub async fn load_credential(
        &self,
        env: &Environment,
        connection_id: &str,
    ) -> Result<credential::CredentialData> {
        let row = self
            .inner
            .store
            .get_credential(&env.id, connection_id)
            .await?
            .ok_or_else(|| connection_not_found(connection_id))?;
        let aad = credential_aad(&env.id, connection_id);
        let plain = self
            .inner
            .vault
            .open(&row.sealed, aad.as_bytes())
            .map_err(|e| PlatformError::Internal(Box::new(e)))?;
        serde_json::from_slice(&plain).map_err(|e| PlatformError::Internal(Box::new(e)))
    }

    // ---- vault maintenance ------------------------------------------------------

    /// Re-seals every credential not sealed under the active key. Safe to run
    /// while servers write: each row is swapped with a version check, and a
    /// row that changed meanwhile was already sealed with the active key.
    pub async fn reseal_credentials(&self) -> Result<u64> {
        let mut after = String::new();
        let mut count = 0;
        loop {
            let page = self.inner.store.credentials_page(&after, 200).await?;
            let Some(last) = page.last() else { break };
            after = last.connection_id.clone();
            for c in page {
                if self.reseal_one(c).await? {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Re-seals one credential under the active key. A row being refreshed
    /// (leased) or changed meanwhile is re-read and retried, so no row is
    /// left under an old key that `--prune` would then drop.
    async fn reseal_one(&self, mut c: berth_store::Credential) -> Result<bool> {
        let aad = credential_aad(&c.environment_id, &c.connection_id);
        for _ in 0..1000 {
            if !self.inner.vault.needs_reseal(&c.sealed) {
                return Ok(false);
            }
            let plain = self
                .inner
                .vault
                .open(&c.sealed, aad.as_bytes())
                .map_err(|e| PlatformError::Internal(Box::new(e)))?;
            let sealed = self.inner.vault.seal(&plain, aad.as_bytes());
            if self
                .inner
                .store
                .replace_credential(&c.connection_id, c.version, &sealed, now_ms())
                .await?
            {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            match self
                .inner
                .store
                .get_credential(&c.environment_id, &c.connection_id)
                .await?
            {
                Some(fresh) => c = fresh,
                None => return Ok(false), // deleted meanwhile
            }
        }
        Err(PlatformError::ProviderUnavailable(format!(
            "credential of {} stayed locked by a token refresh; run the rotation again",
            c.connection_id
        )))
    }
}

/// The associated data a credential is sealed with: moving a ciphertext to
/// another connection or environment makes it fail to open.
pub fn credential_aad(environment_id: &str, connection_id: &str) -> String {
    format!("credential/{environment_id}/{connection_id}")
}

pub(crate) fn unknown_integration(id: &str) -> PlatformError {
    PlatformError::bad_request(
        "UNKNOWN_INTEGRATION",
        format!("unknown integration `{id}`; POST /integrations/list shows the valid ids"),
    )
}

fn connection_not_found(id: &str) -> PlatformError {
    PlatformError::NotFound(format!("no connection with id `{id}` in this environment"))
}

/// `https://App.example.com:443/` -> `https://app.example.com`.
fn normalize_origin(o: &str) -> Option<String> {
    let u = url::Url::parse(o.trim()).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return None;
    }
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
        return None;
    }
    Some(u.origin().ascii_serialization())
}
