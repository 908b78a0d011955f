//! The hot-path cache: what every proxied call needs (the API token's
//! environment, the access token's connection, the opened credential and
//! the provider target built from it) kept in memory for a second, so a
//! passthrough costs no store round trip and no decryption.
//!
//! Consistency, stated plainly:
//! - in this process, deleting a connection, re-authenticating it, marking
//!   it `needs_reauth` and refreshing its token update or drop the entries
//!   at once;
//! - changes made by another Berth process (or the `berth api-token` CLI)
//!   are seen within [`TTL`];
//! - a credential close to expiry is never served from here: the refresh
//!   path reads the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use berth_store::{Connection, Environment};

use crate::credential::{CredentialData, ProviderTarget};

pub const TTL: Duration = Duration::from_secs(1);
/// Entries per map before it is emptied (a crude bound; entries are cheap
/// to rebuild).
const MAX: usize = 100_000;

pub(crate) struct Credential {
    pub cred: CredentialData,
    pub version: i64,
    pub target: ProviderTarget,
    /// `target.base_url`, parsed once.
    pub base: Option<Base>,
    /// `target.headers` as the client sends them, parsed once.
    pub headers: Option<http::HeaderMap>,
    /// Budgets, metric labels and log fields of the connection's calls.
    pub context: Arc<berth_outbound::CallContext>,
}

/// A provider base URL, parsed once for every call that joins a path to it.
pub(crate) struct Base {
    pub url: url::Url,
    /// Scheme, authority and path, without a trailing slash, query or
    /// fragment: what a call's path is appended to.
    pub prefix: String,
    /// What the joined URL's authority must be.
    pub authority: String,
    /// What the joined URL's path must start with.
    pub path: String,
}

impl Base {
    pub fn parse(base: &str) -> Option<Base> {
        let mut url = url::Url::parse(base).ok()?;
        url.set_query(None);
        url.set_fragment(None);
        let prefix = url.as_str().trim_end_matches('/').to_string();
        let parsed: http::Uri = url.as_str().parse().ok()?;
        Some(Base {
            authority: parsed.authority()?.as_str().to_string(),
            path: url.path().trim_end_matches('/').to_string(),
            prefix,
            url,
        })
    }
}

impl Credential {
    pub fn base(&self) -> crate::Result<&Base> {
        self.base.as_ref().ok_or_else(|| {
            crate::PlatformError::bad_request(
                "CONNECTION_MISCONFIGURED",
                "the connection's provider base URL is invalid",
            )
        })
    }

    pub fn headers(&self) -> crate::Result<&http::HeaderMap> {
        self.headers.as_ref().ok_or_else(|| {
            crate::PlatformError::bad_request(
                "CONNECTION_MISCONFIGURED",
                "the connection's credential does not make a valid HTTP header",
            )
        })
    }
}

struct Timed<T> {
    value: T,
    at: Instant,
}

/// A token's SHA-256 digest.
type Digest = [u8; 32];

/// Decision: foldhash rather than std's SipHash. Keys are SHA-256 digests
/// and ids Berth made, and only entries the store vouched for are
/// inserted, so a caller cannot flood a bucket; SipHash was a visible cost
/// of every proxied call.
struct Map<K, V>(RwLock<HashMap<K, Timed<V>, foldhash::fast::RandomState>>);

impl<K: std::hash::Hash + Eq, V: Clone> Map<K, V> {
    fn new() -> Self {
        Map(RwLock::new(HashMap::default()))
    }

    fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let m = self.0.read().unwrap_or_else(|p| p.into_inner());
        m.get(k)
            .filter(|t| t.at.elapsed() < TTL)
            .map(|t| t.value.clone())
    }

    fn put(&self, k: K, v: V) {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX {
            m.clear();
        }
        m.insert(
            k,
            Timed {
                value: v,
                at: Instant::now(),
            },
        );
    }

    fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, t| keep(k, &t.value));
    }
}

pub(crate) struct HotCache {
    /// API-token digest -> environment.
    envs: Map<Digest, Arc<Environment>>,
    /// Access-token digest -> connection (checked against the caller's
    /// environment on every hit).
    conns: Map<Digest, Arc<Connection>>,
    /// Connection id -> opened credential and target.
    creds: Map<String, Arc<Credential>>,
}

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HotCache")
    }
}

impl Default for HotCache {
    fn default() -> Self {
        HotCache {
            envs: Map::new(),
            conns: Map::new(),
            creds: Map::new(),
        }
    }
}

impl HotCache {
    pub fn env(&self, token_digest: &Digest) -> Option<Arc<Environment>> {
        self.envs.get(token_digest)
    }

    pub fn put_env(&self, token_digest: Digest, env: Environment) -> Arc<Environment> {
        let env = Arc::new(env);
        self.envs.put(token_digest, env.clone());
        env
    }

    pub fn conn(&self, env_id: &str, token_digest: &Digest) -> Option<Arc<Connection>> {
        self.conns
            .get(token_digest)
            .filter(|c| c.environment_id == env_id)
    }

    pub fn put_conn(&self, token_digest: Digest, conn: Connection) -> Arc<Connection> {
        let conn = Arc::new(conn);
        self.conns.put(token_digest, conn.clone());
        conn
    }

    pub fn credential(&self, connection_id: &str) -> Option<Arc<Credential>> {
        self.creds.get(connection_id)
    }

    pub fn put_credential(&self, connection_id: &str, c: Credential) -> Arc<Credential> {
        let c = Arc::new(c);
        self.creds.put(connection_id.to_string(), c.clone());
        c
    }

    /// Drops everything cached about one connection.
    pub fn forget_connection(&self, connection_id: &str) {
        self.conns.retain(|_, c| c.id != connection_id);
        self.creds.retain(|k, _| k != connection_id);
    }
}
