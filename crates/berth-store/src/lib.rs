//! Berth's store: every durable row, on SQLite (embedded default) or
//! PostgreSQL (selected by a `postgres://` URL).
//!
//! One [`Store`] type serves both backends. Queries are written once, with
//! `$N` placeholders that both drivers understand, and the `with_db!` macro
//! expands each method body once per backend, so there is a single interface
//! and no `AnyPool` type erasure. Compile-time query checking is given up for
//! that; the conformance suite in `tests/conformance.rs`, run against both
//! backends in CI, takes its place.
//!
//! Architecture invariants kept here:
//! - every query on tenant data is scoped by `environment_id`;
//! - a state change and the event it causes commit in one transaction;
//! - every write transaction starts with a write, so on SQLite it takes the
//!   write lock up front instead of failing to upgrade a stale read snapshot.
#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod rows;
pub use rows::*;

/// The id of the project created on first start.
pub const DEFAULT_PROJECT_ID: &str = "v_project_default";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A packed column (request-log blocks) did not decode.
    #[error("stored data does not decode: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("unsupported database URL (use sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// A sync run's checkpoint moved on without it (another worker took
    /// the run over); nothing was written.
    #[error("the sync run was taken over by another worker")]
    RunFenced,
    /// The job's lease was lost (another worker may run it); nothing was
    /// written.
    #[error("the job's lease was lost")]
    LeaseLost,
}

impl StoreError {
    /// The store could not be reached or dropped the connection (a
    /// PostgreSQL restart, a network cut, a full pool): not the caller's
    /// fault and not a bug, so an answer is 503 with `Retry-After`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // Class 08: connection exception; 57P01-03: admin shutdown,
                // crash shutdown, cannot connect now; 53300: too many
                // connections.
                sqlx::Error::Database(d) => d
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
                _ => false,
            },
            _ => false,
        }
    }

    /// A pooled connection died under the query (the server restarted):
    /// a fresh connection may well succeed. A pool timeout is not this:
    /// the pool has already waited for one.
    fn is_connection_lost(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Io(_)) => true,
            StoreError::Database(sqlx::Error::Database(d)) => d
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }

    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(d)) if d.is_unique_violation())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool this store has.
macro_rules! with_db {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

macro_rules! connection_cols {
    () => {
        "id, environment_id, integration_id, auth_type, status, auth_state, auth_error, \
         external_user_id, metadata, answers, native_org_id, native_user_id, native_org_url, \
         provider_metadata, created_at, updated_at, last_activity_at, deleted_at"
    };
}

macro_rules! session_cols {
    () => {
        "id, environment_id, kind, integration_id, external_user_id, metadata, allowed_origins, \
         state, connection_id, created_at, expires_at, completed_at, exchanged_at, \
         reauth_connection_id, last_error"
    };
}

macro_rules! oauth_app_cols {
    () => {
        "id, environment_id, integration_id, client_id, sealed_secret, scopes, created_at"
    };
}

mod changes;
mod request_log;
pub use request_log::{LogBlock, LoggedCall};
mod sandbox;
mod sync;
mod webhooks;
pub use changes::SQLITE_POLL;
pub use sandbox::*;
pub use sync::*;
pub use webhooks::*;

/// The handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// Woken after a transaction that wrote events commits, so the webhook
    /// dispatcher in this process does not wait for its next poll.
    outbox: std::sync::Arc<tokio::sync::Notify>,
    /// Versions of stored records, for readers that keep rendered pages.
    versions: std::sync::Arc<changes::Versions>,
    /// Rows written since this process last reset SQLite's WAL.
    wal_rows: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// SQLite: rows written between two WAL resets. Its own checkpoints run
/// after commits but cannot start the log over while any reader holds a
/// snapshot, and with a sync writing and callers reading all the time
/// the log grew to gigabytes at a million records, every write slower
/// than the last. A RESTART checkpoint waits for those readers instead.
const WAL_RESET_ROWS: u64 = 20_000;

/// Why a connection could not be created for a session.
#[derive(Debug, thiserror::Error)]
pub enum CreateConnectionError {
    #[error("the environment's connection limit of {0} is reached")]
    LimitReached(i64),
    #[error("the session is expired or was already used")]
    SessionNotPending,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CreateConnectionError {
    fn from(e: sqlx::Error) -> Self {
        CreateConnectionError::Store(e.into())
    }
}

impl Store {
    fn new(db: Db) -> Self {
        Self {
            db,
            outbox: Default::default(),
            versions: Default::default(),
            wal_rows: Default::default(),
        }
    }

    /// Runs a read, and once more when the first attempt found its pooled
    /// connection dead (PostgreSQL restarted under it): reads repeat
    /// safely, and the retry gets a fresh connection or fails fast.
    async fn read<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match f().await {
            Err(e) if e.is_connection_lost() && matches!(self.db, Db::Postgres(_)) => f().await,
            r => r,
        }
    }

    /// Notified whenever events were committed by this process.
    pub fn outbox_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.outbox.clone()
    }

    /// Counts rows committed; past [`WAL_RESET_ROWS`] on SQLite, copies
    /// the WAL into the database and starts it over.
    pub(crate) async fn wrote_rows(&self, rows: usize) {
        use std::sync::atomic::Ordering;
        let Db::Sqlite(pool) = &self.db else { return };
        let n = self.wal_rows.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        if n < WAL_RESET_ROWS {
            return;
        }
        self.wal_rows.store(0, Ordering::Relaxed);
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .execute(pool)
            .await
        {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
        }
    }

    fn events_committed(&self) {
        self.outbox.notify_one();
    }

    /// Opens (creating if needed) the database at `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // While PostgreSQL is unreachable a request fails within this
            // time (a 503 with Retry-After) instead of queueing for long.
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await?;
            Ok(Self::new(Db::Postgres(pool)))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(15))
                .foreign_keys(true)
                // Reads through a shared memory map instead of copying
                // pages into each connection's cache, and a larger cache
                // for the indexes that sync pages insert into at random
                // places (uids): fewer page reads per write.
                .pragma("mmap_size", "268435456")
                .pragma("cache_size", "-16384");
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(15))
                .connect_with(opts)
                .await?;
            Ok(Self::new(Db::Sqlite(pool)))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await?,
            Db::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        with_db!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn close(&self) {
        with_db!(self, p => p.close().await)
    }

    // ---- tenancy ---------------------------------------------------------

    /// Creates the default project with its `development` and `production`
    /// environments if the store has none. Returns the environments when it
    /// created them, `None` when they already existed.
    pub async fn bootstrap(&self, now: i64) -> Result<Option<Vec<Environment>>> {
        let created = with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "INSERT INTO projects (id, name, created_at) VALUES ($1, 'Default project', $2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(DEFAULT_PROJECT_ID)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                for name in ["development", "production"] {
                    sqlx::query(
                        "INSERT INTO environments (id, project_id, name, created_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(format!("v_env_{name}"))
                    .bind(DEFAULT_PROJECT_ID)
                    .bind(name)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            r.rows_affected() == 1
        });
        if created {
            Ok(Some(self.environments().await?))
        } else {
            Ok(None)
        }
    }

    /// Creates a project with its `development` and `production`
    /// environments (ids `v_env_<name>_<suffix>`), in one transaction.
    pub async fn create_project(
        &self,
        id: &str,
        suffix: &str,
        name: &str,
        now: i64,
    ) -> Result<Vec<Environment>> {
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("INSERT INTO projects (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(id).bind(name).bind(now).execute(&mut *tx).await?;
            for env in ["development", "production"] {
                sqlx::query(
                    "INSERT INTO environments (id, project_id, name, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(format!("v_env_{env}_{suffix}")).bind(id).bind(env).bind(now)
                .execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(self
            .environments()
            .await?
            .into_iter()
            .filter(|e| e.project_id == id)
            .collect())
    }

    pub async fn projects(&self) -> Result<Vec<Project>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Project>(
            "SELECT id, name, created_at FROM projects ORDER BY created_at, id"
        ).fetch_all(p).await)?)
    }

    /// The environment `name` of `project_id`.
    pub async fn environment_in(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<Option<Environment>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Environment>(
            "SELECT id, project_id, name, created_at FROM environments WHERE project_id = $1 AND name = $2"
        ).bind(project_id).bind(name).fetch_optional(p).await)?)
    }

    pub async fn environments(&self) -> Result<Vec<Environment>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Environment>(
            "SELECT id, project_id, name, created_at FROM environments ORDER BY created_at, name"
        ).fetch_all(p).await)?)
    }

    pub async fn environment(&self, id: &str) -> Result<Option<Environment>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Environment>(
            "SELECT id, project_id, name, created_at FROM environments WHERE id = $1"
        ).bind(id).fetch_optional(p).await)?)
    }

    pub async fn environment_by_name(&self, name: &str) -> Result<Option<Environment>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Environment>(
            "SELECT id, project_id, name, created_at FROM environments WHERE project_id = $1 AND name = $2"
        ).bind(DEFAULT_PROJECT_ID).bind(name).fetch_optional(p).await)?)
    }

    // ---- API tokens ------------------------------------------------------

    pub async fn insert_api_token(&self, t: &NewApiToken<'_>) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "INSERT INTO api_tokens (id, environment_id, name, prefix, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(t.id).bind(t.environment_id).bind(t.name).bind(t.prefix).bind(t.token_hash).bind(t.created_at)
        .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The environment of a live (not revoked) API token.
    pub async fn environment_by_api_token_hash(&self, hash: &str) -> Result<Option<Environment>> {
        self.read(|| self.environment_by_api_token_hash_once(hash))
            .await
    }

    async fn environment_by_api_token_hash_once(&self, hash: &str) -> Result<Option<Environment>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Environment>(
            "SELECT e.id, e.project_id, e.name, e.created_at FROM api_tokens t \
             JOIN environments e ON e.id = t.environment_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL"
        ).bind(hash).fetch_optional(p).await)?)
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, ApiToken>(
            "SELECT t.id, t.environment_id, e.name AS environment, t.name, t.prefix, t.created_at, t.revoked_at \
             FROM api_tokens t JOIN environments e ON e.id = t.environment_id ORDER BY t.created_at, t.id"
        ).fetch_all(p).await)?)
    }

    /// Revokes the token with this id or prefix; returns how many were revoked.
    pub async fn revoke_api_token(&self, id_or_prefix: &str, now: i64) -> Result<u64> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE (id = $1 OR prefix = $1) AND revoked_at IS NULL"
        ).bind(id_or_prefix).bind(now).execute(p).await.map(|r| r.rows_affected()))?)
    }

    // ---- connect sessions -------------------------------------------------

    pub async fn insert_session(&self, s: &NewSession<'_>) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "INSERT INTO auth_sessions (id, environment_id, kind, token_hash, integration_id, external_user_id, \
             metadata, allowed_origins, state, created_at, expires_at, reauth_connection_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'created', $9, $10, $11)"
        )
        .bind(s.id).bind(s.environment_id).bind(s.kind).bind(s.token_hash).bind(s.integration_id)
        .bind(s.external_user_id).bind(s.metadata).bind(s.allowed_origins).bind(s.created_at).bind(s.expires_at)
        .bind(s.reauth_connection_id)
        .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn session_by_token_hash(&self, hash: &str) -> Result<Option<AuthSession>> {
        self.read(|| self.session_by_token_hash_once(hash)).await
    }

    async fn session_by_token_hash_once(&self, hash: &str) -> Result<Option<AuthSession>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, AuthSession>(
            concat!("SELECT ", session_cols!(), " FROM auth_sessions WHERE token_hash = $1")
        ).bind(hash).fetch_optional(p).await)?)
    }

    pub async fn session_by_public_token_hash(&self, hash: &str) -> Result<Option<AuthSession>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, AuthSession>(
            concat!("SELECT ", session_cols!(), " FROM auth_sessions WHERE public_token_hash = $1")
        ).bind(hash).fetch_optional(p).await)?)
    }

    /// Completes a pending session by creating its connection, credential and
    /// `connection.created` event, all in one transaction, enforcing the
    /// environment's live-connection limit.
    pub async fn create_connection_for_session(
        &self,
        req: &CreateConnection<'_>,
    ) -> Result<(), CreateConnectionError> {
        let c = req.connection;
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            // First statement is a write: it serialises concurrent creations
            // in one environment (row lock on PostgreSQL, write lock on SQLite).
            sqlx::query("UPDATE environments SET connection_seq = connection_seq + 1 WHERE id = $1")
                .bind(c.environment_id).execute(&mut *tx).await?;
            if let Some(limit) = req.live_connection_limit {
                let (live,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM connections WHERE environment_id = $1 AND deleted_at IS NULL"
                ).bind(c.environment_id).fetch_one(&mut *tx).await?;
                if live >= limit {
                    return Err(CreateConnectionError::LimitReached(limit));
                }
            }
            sqlx::query(
                "INSERT INTO connections (id, environment_id, integration_id, auth_type, status, auth_state, \
                 external_user_id, metadata, answers, native_org_id, native_user_id, native_org_url, \
                 provider_metadata, created_at, updated_at, last_activity_at) \
                 VALUES ($1, $2, $3, $4, $5, 'ok', $6, $7, $8, $9, $10, $11, $13, $12, $12, $12)"
            )
            .bind(c.id).bind(c.environment_id).bind(c.integration_id).bind(c.auth_type).bind(c.status)
            .bind(c.external_user_id).bind(c.metadata).bind(c.answers).bind(c.native_org_id)
            .bind(c.native_user_id).bind(c.native_org_url).bind(req.now).bind(c.provider_metadata)
            .execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO credentials (connection_id, environment_id, version, sealed, updated_at) \
                 VALUES ($1, $2, 1, $3, $4)"
            ).bind(c.id).bind(c.environment_id).bind(req.sealed_credential).bind(req.now)
            .execute(&mut *tx).await?;
            let done = sqlx::query(
                "UPDATE auth_sessions SET state = 'completed', connection_id = $2, completed_at = $3, \
                 public_token_hash = $4 WHERE id = $1 AND state = 'created' AND expires_at > $3"
            ).bind(req.session_id).bind(c.id).bind(req.now).bind(req.public_token_hash)
            .execute(&mut *tx).await?;
            if done.rows_affected() != 1 {
                return Err(CreateConnectionError::SessionNotPending);
            }
            insert_event(&mut *tx, &req.event).await?;
            // The initial sync is owed from the moment the connection
            // exists (outbox: queued in the same transaction).
            let job_id = format!("job_{}_initial", c.id);
            let dedup = format!("sync:{}", c.id);
            sync::insert_job_tx(&mut *tx, &job_id, c.environment_id, c.id, &dedup, req.now).await?;
            tx.commit().await?;
            self.events_committed();
        });
        Ok(())
    }

    /// Marks a completed session exchanged and gives its connection the
    /// access token. `None` when the session is not completed, already
    /// exchanged, expired, or its connection was deleted meanwhile.
    pub async fn exchange_session(
        &self,
        session_id: &str,
        access_token_hash: &str,
        now: i64,
    ) -> Result<Option<Connection>> {
        Ok(with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "UPDATE auth_sessions SET state = 'exchanged', exchanged_at = $2 \
                 WHERE id = $1 AND state = 'completed' AND expires_at > $2"
            ).bind(session_id).bind(now).execute(&mut *tx).await?;
            if r.rows_affected() != 1 {
                return Ok(None);
            }
            let conn = sqlx::query_as::<_, Connection>(concat!(
                "UPDATE connections SET replaced_access_token_hash = access_token_hash, \
                 access_token_hash = $2, updated_at = $3 \
                 WHERE id = (SELECT connection_id FROM auth_sessions WHERE id = $1) AND deleted_at IS NULL \
                 RETURNING ", connection_cols!()
            )).bind(session_id).bind(access_token_hash).bind(now).fetch_optional(&mut *tx).await?;
            if conn.is_some() {
                tx.commit().await?;
            }
            conn
        }))
    }

    // ---- connections ------------------------------------------------------

    /// Live connections of an environment in creation order, after `after`
    /// (keyset: `(created_at, id)`).
    pub async fn list_connections(
        &self,
        environment_id: &str,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<Connection>> {
        let (t, id) = after.unwrap_or((i64::MIN, ""));
        Ok(with_db!(self, p => sqlx::query_as::<_, Connection>(concat!(
            "SELECT ", connection_cols!(), " FROM connections \
             WHERE environment_id = $1 AND deleted_at IS NULL AND (created_at > $2 OR (created_at = $2 AND id > $3)) \
             ORDER BY created_at, id LIMIT $4"
        )).bind(environment_id).bind(t).bind(id).bind(limit).fetch_all(p).await)?)
    }

    pub async fn get_connection(
        &self,
        environment_id: &str,
        id: &str,
    ) -> Result<Option<Connection>> {
        self.read(|| self.get_connection_once(environment_id, id))
            .await
    }

    async fn get_connection_once(
        &self,
        environment_id: &str,
        id: &str,
    ) -> Result<Option<Connection>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Connection>(concat!(
            "SELECT ", connection_cols!(), " FROM connections \
             WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
        )).bind(environment_id).bind(id).fetch_optional(p).await)?)
    }

    /// The live connection holding this access token, in the given environment.
    pub async fn connection_by_access_token_hash(
        &self,
        environment_id: &str,
        hash: &str,
    ) -> Result<Option<Connection>> {
        self.read(|| self.connection_by_access_token_hash_once(environment_id, hash))
            .await
    }

    async fn connection_by_access_token_hash_once(
        &self,
        environment_id: &str,
        hash: &str,
    ) -> Result<Option<Connection>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Connection>(concat!(
            "SELECT ", connection_cols!(), " FROM connections \
             WHERE environment_id = $1 AND access_token_hash = $2 AND deleted_at IS NULL"
        )).bind(environment_id).bind(hash).fetch_optional(p).await)?)
    }

    /// Whether `hash` is the access token a live connection of the
    /// environment had before its last re-authentication.
    pub async fn access_token_was_replaced(
        &self,
        environment_id: &str,
        hash: &str,
    ) -> Result<bool> {
        let row: Option<(String,)> = with_db!(self, p => sqlx::query_as(
            "SELECT id FROM connections \
             WHERE environment_id = $1 AND replaced_access_token_hash = $2 AND deleted_at IS NULL"
        ).bind(environment_id).bind(hash).fetch_optional(p).await)?;
        Ok(row.is_some())
    }

    /// Deletes a connection: revokes its access token, erases its credential
    /// and records `event`, atomically. `false` if there was no such live
    /// connection.
    pub async fn delete_connection(
        &self,
        environment_id: &str,
        id: &str,
        event: &NewEvent<'_>,
        now: i64,
    ) -> Result<bool> {
        Ok(with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "UPDATE connections SET deleted_at = $3, updated_at = $3, access_token_hash = NULL, answers = '{}' \
                 WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
            ).bind(environment_id).bind(id).bind(now).execute(&mut *tx).await?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            sqlx::query("DELETE FROM credentials WHERE connection_id = $1 AND environment_id = $2")
                .bind(id).bind(environment_id).execute(&mut *tx).await?;
            // Deletion erases the connection's synced data (DOMAIN: deletion
            // erases credentials and records) and its queued work.
            sqlx::query("DELETE FROM record_keys WHERE seq IN (SELECT seq FROM records WHERE connection_id = $1)")
                .bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM records WHERE connection_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM record_links WHERE connection_id = $1").bind(id).execute(&mut *tx).await?;
            changes::NoteChange::note(&mut *tx, id, None, now).await?;
            sqlx::query("DELETE FROM sync_states WHERE connection_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM jobs WHERE connection_id = $1 AND state = 'queued'").bind(id).execute(&mut *tx).await?;
            insert_event(&mut *tx, event).await?;
            tx.commit().await?;
            self.records_changed(id, None);
            self.events_committed();
            true
        }))
    }

    // ---- credentials --------------------------------------------------------

    pub async fn get_credential(
        &self,
        environment_id: &str,
        connection_id: &str,
    ) -> Result<Option<Credential>> {
        self.read(|| self.get_credential_once(environment_id, connection_id))
            .await
    }

    async fn get_credential_once(
        &self,
        environment_id: &str,
        connection_id: &str,
    ) -> Result<Option<Credential>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Credential>(
            "SELECT connection_id, environment_id, version, sealed, updated_at FROM credentials \
             WHERE environment_id = $1 AND connection_id = $2"
        ).bind(environment_id).bind(connection_id).fetch_optional(p).await)?)
    }

    /// All credentials, across environments, in connection-id order after
    /// `after`: for key rotation, which is an operator task above tenancy.
    pub async fn credentials_page(&self, after: &str, limit: i64) -> Result<Vec<Credential>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Credential>(
            "SELECT connection_id, environment_id, version, sealed, updated_at FROM credentials \
             WHERE connection_id > $1 ORDER BY connection_id LIMIT $2"
        ).bind(after).bind(limit).fetch_all(p).await)?)
    }

    /// Compare-and-swap on the credential version: writes `sealed` only if
    /// the stored version is still `expected_version` and no refresh holds
    /// the lease (a refresher's write must never be the one that loses).
    pub async fn replace_credential(
        &self,
        connection_id: &str,
        expected_version: i64,
        sealed: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE credentials SET sealed = $3, version = version + 1, updated_at = $4 \
             WHERE connection_id = $1 AND version = $2 AND lease_until < $4"
        ).bind(connection_id).bind(expected_version).bind(sealed).bind(now).execute(p).await
        .map(|r| r.rows_affected()))?
            == 1)
    }

    // ---- token lifecycle ------------------------------------------------------------

    /// Takes the refresh lease of a connection's credential if nobody holds
    /// a live one. Only the holder calls the provider's token endpoint.
    /// `owner` is unique per attempt; the lease is released by storing the
    /// refreshed credential or by `release_refresh_lease`.
    pub async fn try_acquire_refresh_lease(
        &self,
        connection_id: &str,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE credentials SET lease_owner = $2, lease_until = $3 \
             WHERE connection_id = $1 AND lease_until < $4"
        ).bind(connection_id).bind(owner).bind(until).bind(now).execute(p).await
        .map(|r| r.rows_affected()))?
            == 1)
    }

    /// Gives up a refresh lease without changing the credential.
    pub async fn release_refresh_lease(&self, connection_id: &str, owner: &str) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE credentials SET lease_owner = NULL, lease_until = 0 \
             WHERE connection_id = $1 AND lease_owner = $2"
        ).bind(connection_id).bind(owner).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Stores a refreshed credential (new access token together with a
    /// rotated refresh token) and releases the lease, in one statement, only
    /// if the version is still `expected_version`.
    pub async fn store_refreshed_credential(
        &self,
        connection_id: &str,
        expected_version: i64,
        sealed: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE credentials SET sealed = $3, version = version + 1, updated_at = $4, \
             lease_owner = NULL, lease_until = 0 \
             WHERE connection_id = $1 AND version = $2"
        ).bind(connection_id).bind(expected_version).bind(sealed).bind(now).execute(p).await
        .map(|r| r.rows_affected()))?
            == 1)
    }

    /// Marks a connection as needing re-authentication (its refresh token
    /// was refused) and records the event, atomically.
    pub async fn mark_needs_reauth(
        &self,
        environment_id: &str,
        connection_id: &str,
        reason: &str,
        event: &NewEvent<'_>,
        now: i64,
    ) -> Result<bool> {
        Ok(with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "UPDATE connections SET auth_state = 'needs_reauth', auth_error = $3, updated_at = $4 \
                 WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL AND auth_state <> 'needs_reauth'"
            ).bind(environment_id).bind(connection_id).bind(reason).bind(now).execute(&mut *tx).await?;
            if r.rows_affected() == 1 {
                insert_event(&mut *tx, event).await?;
            }
            // The version moves too, so refreshers waiting in other
            // processes wake up, and re-read the auth state instead of
            // sending the dead refresh token again.
            sqlx::query("UPDATE credentials SET lease_owner = NULL, lease_until = 0, version = version + 1 WHERE connection_id = $1")
                .bind(connection_id).execute(&mut *tx).await?;
            tx.commit().await?;
            self.events_committed();
            r.rows_affected() == 1
        }))
    }

    /// A live connection's `needs_reauth` reason, if it is marked so
    /// (`None` too when it is gone).
    pub async fn needs_reauth_reason(
        &self,
        environment_id: &str,
        connection_id: &str,
    ) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> = with_db!(self, p => sqlx::query_as(
            "SELECT auth_error FROM connections \
             WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL AND auth_state = 'needs_reauth'"
        ).bind(environment_id).bind(connection_id).fetch_optional(p).await)?;
        Ok(row.map(|(r,)| r.unwrap_or_default()))
    }

    /// Completes a re-authentication session: the existing connection gets
    /// the new credential, its auth state is cleared, and the session is
    /// completed, in one transaction.
    pub async fn reauthorize_connection(
        &self,
        r: &Reauthorize<'_>,
    ) -> Result<(), CreateConnectionError> {
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "UPDATE auth_sessions SET state = 'completed', connection_id = $2, completed_at = $3, \
                 public_token_hash = $4, last_error = NULL \
                 WHERE id = $1 AND state = 'created' AND expires_at > $3"
            ).bind(r.session_id).bind(r.connection_id).bind(r.now).bind(r.public_token_hash)
            .execute(&mut *tx).await?;
            if done.rows_affected() != 1 {
                return Err(CreateConnectionError::SessionNotPending);
            }
            let c = sqlx::query(
                "UPDATE connections SET auth_state = 'ok', auth_error = NULL, answers = $3, \
                 provider_metadata = $4, updated_at = $5 \
                 WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
            ).bind(r.environment_id).bind(r.connection_id).bind(r.answers).bind(r.provider_metadata)
            .bind(r.now).execute(&mut *tx).await?;
            if c.rows_affected() != 1 {
                return Err(CreateConnectionError::SessionNotPending);
            }
            sqlx::query(
                "UPDATE credentials SET sealed = $3, version = version + 1, updated_at = $4, \
                 lease_owner = NULL, lease_until = 0 WHERE connection_id = $1 AND environment_id = $2"
            ).bind(r.connection_id).bind(r.environment_id).bind(r.sealed_credential).bind(r.now)
            .execute(&mut *tx).await?;
            insert_event(&mut *tx, &r.event).await?;
            tx.commit().await?;
            self.events_committed();
        });
        Ok(())
    }

    /// Records why the connect flow of a session failed (shown by the modal).
    pub async fn set_session_error(&self, session_id: &str, message: &str) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE auth_sessions SET last_error = $2 WHERE id = $1 AND state = 'created'"
        ).bind(session_id).bind(message).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn session_by_id(&self, id: &str) -> Result<Option<AuthSession>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, AuthSession>(
            concat!("SELECT ", session_cols!(), " FROM auth_sessions WHERE id = $1")
        ).bind(id).fetch_optional(p).await)?)
    }

    // ---- OAuth apps and flows ------------------------------------------------------

    pub async fn insert_oauth_app(&self, a: &OAuthApp) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "INSERT INTO oauth_apps (id, environment_id, integration_id, client_id, sealed_secret, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ).bind(&a.id).bind(&a.environment_id).bind(&a.integration_id).bind(&a.client_id)
        .bind(&a.sealed_secret).bind(&a.scopes).bind(a.created_at)
        .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn list_oauth_apps(&self, environment_id: &str) -> Result<Vec<OAuthApp>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, OAuthApp>(
            concat!("SELECT ", oauth_app_cols!(), " FROM oauth_apps \
             WHERE environment_id = $1 AND deleted_at IS NULL ORDER BY created_at, id")
        ).bind(environment_id).fetch_all(p).await)?)
    }

    pub async fn get_oauth_app(&self, environment_id: &str, id: &str) -> Result<Option<OAuthApp>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, OAuthApp>(
            concat!("SELECT ", oauth_app_cols!(), " FROM oauth_apps \
             WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL")
        ).bind(environment_id).bind(id).fetch_optional(p).await)?)
    }

    /// The newest live app for an integration in an environment.
    pub async fn latest_oauth_app(
        &self,
        environment_id: &str,
        integration_id: &str,
    ) -> Result<Option<OAuthApp>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, OAuthApp>(
            concat!("SELECT ", oauth_app_cols!(), " FROM oauth_apps \
             WHERE environment_id = $1 AND integration_id = $2 AND deleted_at IS NULL \
             ORDER BY created_at DESC, id DESC LIMIT 1")
        ).bind(environment_id).bind(integration_id).fetch_optional(p).await)?)
    }

    /// Soft-deletes an app and erases its secret.
    pub async fn delete_oauth_app(&self, environment_id: &str, id: &str, now: i64) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE oauth_apps SET deleted_at = $3, sealed_secret = '' \
             WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
        ).bind(environment_id).bind(id).bind(now).execute(p).await
        .map(|r| r.rows_affected()))?
            == 1)
    }

    /// Live OAuth apps of every environment, by id, after `after` (key
    /// rotation walks them).
    pub async fn oauth_apps_page(&self, after: &str, limit: i64) -> Result<Vec<OAuthApp>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, OAuthApp>(
            concat!("SELECT ", oauth_app_cols!(), " FROM oauth_apps \
             WHERE id > $1 AND deleted_at IS NULL ORDER BY id LIMIT $2")
        ).bind(after).bind(limit).fetch_all(p).await)?)
    }

    /// Replaces a live app's sealed secret if it is still `old` (a delete
    /// meanwhile wins).
    pub async fn reseal_oauth_app(&self, id: &str, old: &str, new: &str) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE oauth_apps SET sealed_secret = $3 \
             WHERE id = $1 AND sealed_secret = $2 AND deleted_at IS NULL"
        ).bind(id).bind(old).bind(new).execute(p).await.map(|r| r.rows_affected()))?
            == 1)
    }

    /// Connect flows still waiting for their provider's redirect, by id,
    /// after `after`.
    pub async fn open_oauth_flows_page(
        &self,
        after: &str,
        now: i64,
        limit: i64,
    ) -> Result<Vec<OAuthFlow>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, OAuthFlow>(
            "SELECT id, session_id, environment_id, sealed, created_at, expires_at FROM oauth_flows \
             WHERE id > $1 AND used_at IS NULL AND expires_at > $2 ORDER BY id LIMIT $3"
        ).bind(after).bind(now).bind(limit).fetch_all(p).await)?)
    }

    /// Replaces an unused flow's sealed data if it is still `old`.
    pub async fn reseal_oauth_flow(&self, id: &str, old: &str, new: &str) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE oauth_flows SET sealed = $3 WHERE id = $1 AND sealed = $2 AND used_at IS NULL"
        ).bind(id).bind(old).bind(new).execute(p).await.map(|r| r.rows_affected()))?
            == 1)
    }

    pub async fn insert_oauth_flow(&self, f: &OAuthFlow) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "INSERT INTO oauth_flows (id, session_id, environment_id, sealed, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        ).bind(&f.id).bind(&f.session_id).bind(&f.environment_id).bind(&f.sealed)
        .bind(f.created_at).bind(f.expires_at).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Marks a flow used and returns it, once: a replayed `state` gets `None`,
    /// as does an expired one.
    pub async fn consume_oauth_flow(&self, id: &str, now: i64) -> Result<Option<OAuthFlow>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, OAuthFlow>(
            "UPDATE oauth_flows SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING id, session_id, environment_id, sealed, created_at, expires_at"
        ).bind(id).bind(now).fetch_optional(p).await)?)
    }

    // ---- events ----------------------------------------------------------------

    pub async fn list_events(
        &self,
        environment_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Event>(
            "SELECT seq, id, environment_id, connection_id, event_type, payload, created_at FROM events \
             WHERE environment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ).bind(environment_id).bind(after_seq).bind(limit).fetch_all(p).await)?)
    }

    // ---- housekeeping -------------------------------------------------------------

    /// Deletes sessions that expired before `before` and were never exchanged
    /// (exchanged ones are kept as the record of who connected what).
    pub async fn delete_expired_sessions(&self, before: i64) -> Result<u64> {
        Ok(with_db!(self, p => {
            sqlx::query("DELETE FROM oauth_flows WHERE expires_at < $1")
                .bind(before).execute(p).await?;
            sqlx::query(
                "DELETE FROM auth_sessions WHERE expires_at < $1 AND state <> 'exchanged'"
            ).bind(before).execute(p).await.map(|r| r.rows_affected())
        })?)
    }
}

async fn insert_event<'c, DB, E>(exec: E, e: &NewEvent<'_>) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO events (id, environment_id, connection_id, event_type, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.id)
    .bind(e.environment_id)
    .bind(e.connection_id)
    .bind(e.event_type)
    .bind(e.payload)
    .bind(e.created_at)
    .execute(exec)
    .await?;
    Ok(())
}

/// Helpers for tests that need a fresh database.
pub mod testing {
    use super::*;

    /// Whether this store's PostgreSQL session is encrypted (`false` on
    /// SQLite).
    pub async fn postgres_ssl_in_use(store: &Store) -> Result<bool> {
        match &store.db {
            Db::Sqlite(_) => Ok(false),
            Db::Postgres(p) => {
                let (ssl,): (bool,) =
                    sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                        .fetch_one(p)
                        .await?;
                Ok(ssl)
            }
        }
    }

    /// Drops every filter index entry, leaving the objects marked current
    /// (an index that lost its entries: shows whether reads use it).
    pub async fn forget_record_keys(store: &Store) -> Result<()> {
        with_db!(store, p => sqlx::query("DELETE FROM record_keys").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Marks every object's filter index entries out of date, as a
    /// migration that changes what is indexed does.
    pub async fn mark_record_keys_stale(store: &Store) -> Result<()> {
        with_db!(store, p => sqlx::query("UPDATE sync_states SET keys_version = 0").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Creates a new, empty PostgreSQL database next to the one `admin_url`
    /// names and returns its URL.
    pub async fn fresh_postgres_database(admin_url: &str) -> Result<String> {
        let name = format!(
            "berth_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let (base, _) = admin_url
            .rsplit_once('/')
            .ok_or(StoreError::UnsupportedUrl)?;
        Ok(format!("{base}/{name}"))
    }
}
