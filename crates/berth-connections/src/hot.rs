//! The hot-path cache: what every proxied call needs (the API token's
//! environment, the access token's connection, the opened credential and
//! the provider target built from it) kept in memory for a second, so a
//! passthrough costs no store round trip and no decryption.
//!
//! Consistency, stated plainly:
//! - in this process, deleting a connection, re-authenticating it, marking
//!   it `needs_reauth` and refreshing its token drop its entries on every
//!   thread before that thread's next lookup;
//! - changes made by another Berth process (or the `berth api-token` CLI)
//!   are seen within [`TTL`];
//! - a credential close to expiry is never served from here: the refresh
//!   path reads the store.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The `Host` header of every call (the joined URL's authority is the
    /// base's).
    pub host: Option<http::HeaderValue>,
}

impl Base {
    pub fn parse(base: &str) -> Option<Base> {
        let mut url = url::Url::parse(base).ok()?;
        url.set_query(None);
        url.set_fragment(None);
        let prefix = url.as_str().trim_end_matches('/').to_string();
        let parsed: http::Uri = url.as_str().parse().ok()?;
        Some(Base {
            host: berth_outbound::host_header(&parsed),
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
type Map<K, V> = HashMap<K, Timed<V>, foldhash::fast::RandomState>;

fn get<K, Q, V>(m: &Map<K, V>, k: &Q, now: Instant) -> Option<V>
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Clone,
{
    m.get(k)
        .filter(|t| now.duration_since(t.at) < TTL)
        .map(|t| t.value.clone())
}

fn put<K: std::hash::Hash + Eq, V>(m: &mut Map<K, V>, k: K, value: V) {
    if m.len() >= MAX {
        m.clear();
    }
    m.insert(
        k,
        Timed {
            value,
            at: Instant::now(),
        },
    );
}

/// One thread's entries.
#[derive(Default)]
struct Local {
    /// The [`HotCache`] these entries belong to (tests run several
    /// platforms on one thread).
    owner: u64,
    /// The owner's epoch these entries were valid at.
    epoch: u64,
    /// API-token digest -> environment.
    envs: Map<Digest, Arc<Environment>>,
    /// Access-token digest -> connection (checked against the caller's
    /// environment on every hit).
    conns: Map<Digest, Arc<Connection>>,
    /// Connection id -> opened credential and target.
    creds: Map<String, Arc<Credential>>,
}

impl Local {
    fn clear(&mut self) {
        self.envs.clear();
        self.conns.clear();
        self.creds.clear();
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// Decision: one cache per thread rather than one shared map. With a
/// shared map every proxied call took its lock and cloned its `Arc`s, and
/// those atomic writes to lines both serving threads use cost more than
/// the rest of the lookup (the lock instructions were 93% of a lookup's
/// cycles). Each thread now fills its own entries from the store (one
/// more store read per thread and entry per [`TTL`]), and the `Arc`s a
/// thread hands out are its own.
///
/// What is forgotten goes into a short log under a new epoch; a thread
/// that sees a newer epoch drops the logged entries (all of its entries if
/// the log no longer reaches back to its epoch) before its next lookup.
pub(crate) struct HotCache {
    id: u64,
    epoch: AtomicU64,
    forgotten: Mutex<VecDeque<Forgotten>>,
}

struct Forgotten {
    epoch: u64,
    connection_id: String,
    /// Only the credential (a refresh) or everything about the connection.
    credential_only: bool,
}

/// Epochs the log keeps; a thread further behind drops all its entries.
const LOG: usize = 4096;

/// The epoch a lookup that missed started at: its result is cached only if
/// nothing was forgotten while it read the store.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(u64);

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HotCache")
    }
}

impl Default for HotCache {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        HotCache {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
            forgotten: Mutex::default(),
        }
    }
}

impl HotCache {
    /// Runs `f` on this thread's entries, brought up to the current epoch
    /// first.
    fn local<R>(&self, f: impl FnOnce(&mut Local) -> R) -> R {
        let epoch = self.epoch.load(Ordering::Acquire);
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.owner != self.id {
                l.clear();
                l.owner = self.id;
                l.epoch = epoch;
            } else if l.epoch != epoch {
                self.catch_up(&mut l);
            }
            f(&mut l)
        })
    }

    fn catch_up(&self, l: &mut Local) {
        let log = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock: every epoch up to this one is in the log or
        // was dropped from its front.
        let epoch = self.epoch.load(Ordering::Acquire);
        if log.front().is_none_or(|f| f.epoch > l.epoch + 1) {
            l.clear();
        } else {
            for f in log.iter().filter(|f| f.epoch > l.epoch) {
                l.creds.remove(&f.connection_id);
                if !f.credential_only {
                    l.conns.retain(|_, c| c.value.id != f.connection_id);
                }
            }
        }
        l.epoch = epoch;
    }

    fn forget(&self, connection_id: &str, credential_only: bool) {
        let mut log = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        if log.len() >= LOG {
            log.pop_front();
        }
        log.push_back(Forgotten {
            epoch,
            connection_id: connection_id.to_string(),
            credential_only,
        });
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Taken before a store read whose result is to be cached.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.epoch.load(Ordering::Acquire))
    }

    /// Runs `f` (an insert) unless something was forgotten since `ticket`.
    fn put_local(&self, ticket: Ticket, f: impl FnOnce(&mut Local)) {
        if self.epoch.load(Ordering::Acquire) == ticket.0 {
            self.local(f);
        }
    }

    pub fn env(&self, token_digest: &Digest) -> Option<Arc<Environment>> {
        self.local(|l| get(&l.envs, token_digest, Instant::now()))
    }

    pub fn put_env(
        &self,
        ticket: Ticket,
        token_digest: Digest,
        env: Environment,
    ) -> Arc<Environment> {
        let env = Arc::new(env);
        self.put_local(ticket, |l| put(&mut l.envs, token_digest, env.clone()));
        env
    }

    pub fn conn(&self, env_id: &str, token_digest: &Digest) -> Option<Arc<Connection>> {
        self.local(|l| get(&l.conns, token_digest, Instant::now()))
            .filter(|c| c.environment_id == env_id)
    }

    pub fn put_conn(
        &self,
        ticket: Ticket,
        token_digest: Digest,
        conn: Connection,
    ) -> Arc<Connection> {
        let conn = Arc::new(conn);
        self.put_local(ticket, |l| put(&mut l.conns, token_digest, conn.clone()));
        conn
    }

    pub fn credential(&self, connection_id: &str) -> Option<Arc<Credential>> {
        self.local(|l| get(&l.creds, connection_id, Instant::now()))
    }

    pub fn put_credential(
        &self,
        ticket: Ticket,
        connection_id: &str,
        c: Credential,
    ) -> Arc<Credential> {
        let c = Arc::new(c);
        self.put_local(ticket, |l| {
            put(&mut l.creds, connection_id.to_string(), c.clone())
        });
        c
    }

    /// Drops everything cached about one connection, on every thread.
    pub fn forget_connection(&self, connection_id: &str) {
        self.forget(connection_id, false);
    }

    /// Drops a connection's credential on every thread (it was refreshed:
    /// the others would send the old token).
    pub fn forget_credential(&self, connection_id: &str) {
        self.forget(connection_id, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str) -> Connection {
        Connection {
            id: id.into(),
            environment_id: "env".into(),
            integration_id: "fake".into(),
            auth_type: "apiKey".into(),
            status: "READY".into(),
            auth_state: "ok".into(),
            auth_error: None,
            external_user_id: None,
            metadata: None,
            answers: "{}".into(),
            native_org_id: None,
            native_user_id: None,
            native_org_url: None,
            provider_metadata: "{}".into(),
            created_at: 0,
            updated_at: 0,
            last_activity_at: None,
            deleted_at: None,
        }
    }

    fn cred() -> Credential {
        Credential {
            cred: CredentialData::default(),
            version: 1,
            target: ProviderTarget {
                base_url: "http://127.0.0.1:1".into(),
                headers: Vec::new(),
                query: Vec::new(),
            },
            base: None,
            headers: None,
            context: Arc::default(),
        }
    }

    /// Fills `cache` on another thread, lets `between` run, then reports
    /// what that thread still sees of connections `a` and `b`.
    fn seen_after(cache: &Arc<HotCache>, between: impl FnOnce()) -> [bool; 4] {
        let (to_thread, rx) = std::sync::mpsc::channel::<()>();
        let (tx, from_thread) = std::sync::mpsc::channel::<[bool; 4]>();
        let c = cache.clone();
        let t = std::thread::spawn(move || {
            for (i, id) in ["a", "b"].into_iter().enumerate() {
                let t = c.ticket();
                c.put_conn(t, [i as u8; 32], conn(id));
                c.put_credential(t, id, cred());
            }
            tx.send([true; 4]).unwrap();
            rx.recv().unwrap();
            tx.send([
                c.conn("env", &[0; 32]).is_some(),
                c.credential("a").is_some(),
                c.conn("env", &[1; 32]).is_some(),
                c.credential("b").is_some(),
            ])
            .unwrap();
        });
        from_thread.recv().unwrap();
        between();
        to_thread.send(()).unwrap();
        let seen = from_thread.recv().unwrap();
        t.join().unwrap();
        seen
    }

    #[test]
    fn forgetting_reaches_other_threads_entries_and_only_those_named() {
        let cache = Arc::new(HotCache::default());
        // Nothing forgotten: everything stays.
        assert_eq!(seen_after(&cache, || {}), [true; 4]);
        // A refresh drops the credential only; a deletion everything.
        let c = cache.clone();
        let seen = seen_after(&cache, move || {
            c.forget_credential("a");
            c.forget_connection("b");
        });
        assert_eq!(seen, [true, false, false, false]);
    }

    #[test]
    fn a_thread_behind_the_whole_log_drops_everything() {
        let cache = Arc::new(HotCache::default());
        let c = cache.clone();
        let seen = seen_after(&cache, move || {
            for i in 0..=LOG {
                c.forget_credential(&format!("other-{i}"));
            }
        });
        assert_eq!(seen, [false; 4]);
    }

    #[test]
    fn a_lookup_that_raced_a_forget_is_not_cached() {
        let cache = HotCache::default();
        let t = cache.ticket();
        cache.forget_connection("a");
        cache.put_conn(t, [0; 32], conn("a"));
        assert!(cache.conn("env", &[0; 32]).is_none());
        let t = cache.ticket();
        cache.put_conn(t, [0; 32], conn("a"));
        assert!(cache.conn("env", &[0; 32]).is_some());
        // Another environment's caller never gets it.
        assert!(cache.conn("other-env", &[0; 32]).is_none());
    }
}
