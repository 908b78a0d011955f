//! Record versions: a number per (connection, object) that grows whenever
//! that object's stored records change, so readers can keep rendered pages
//! and know, without a query, whether they still hold.
//!
//! Invariants:
//! - a version moves *after* the transaction that changed the records
//!   commits. A reader that reads the version before reading rows can
//!   therefore never label newer content with an older version as current:
//!   at worst a page is rendered twice;
//! - writes made by this process move the version before the write call
//!   returns (read-your-writes on one node). Writes made by other processes
//!   arrive through [`Store::follow_record_changes`]: PostgreSQL
//!   `LISTEN/NOTIFY` (sent inside the writing transaction, so delivered on
//!   commit), or on SQLite a `record_changes` table polled every
//!   [`SQLITE_POLL`]. Anything that may have missed changes (a dropped
//!   listener, a stalled poller) moves every version at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::{Db, Store};

/// How often a SQLite process looks for record changes made by others.
pub const SQLITE_POLL: Duration = Duration::from_millis(20);
/// `record_changes` rows older than this are deleted by the poller.
const SQLITE_KEEP_MS: i64 = 10 * 60 * 1000;
/// The PostgreSQL notification channel.
pub(crate) const CHANNEL: &str = "berth_record_changes";
/// Stands for every object of a connection (deletion).
const ALL: &str = "*";

#[derive(Debug, Default)]
pub(crate) struct Versions {
    counter: AtomicU64,
    /// Every version is at least this (moved by "something may have been
    /// missed").
    floor: AtomicU64,
    by_conn: RwLock<HashMap<String, HashMap<String, u64>>>,
}

impl Versions {
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn current(&self, connection_id: &str, object: &str) -> u64 {
        let floor = self.floor.load(Ordering::SeqCst);
        let map = self.by_conn.read().unwrap_or_else(|p| p.into_inner());
        let own = map.get(connection_id).map_or(0, |m| {
            m.get(object)
                .copied()
                .unwrap_or(0)
                .max(m.get(ALL).copied().unwrap_or(0))
        });
        own.max(floor)
    }

    pub(crate) fn bump(&self, connection_id: &str, object: &str) {
        let v = self.next();
        let mut map = self.by_conn.write().unwrap_or_else(|p| p.into_inner());
        map.entry(connection_id.to_string())
            .or_default()
            .insert(object.to_string(), v);
    }

    fn bump_all(&self) {
        let v = self.next();
        self.floor.store(v, Ordering::SeqCst);
        // Entries below the floor mean nothing any more.
        self.by_conn
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Store {
    /// The version of an object's stored records for one connection: it
    /// changes whenever they may have changed.
    pub fn record_version(&self, connection_id: &str, object: &str) -> u64 {
        self.versions.current(connection_id, object)
    }

    pub(crate) fn records_changed(&self, connection_id: &str, object: Option<&str>) {
        self.versions.bump(connection_id, object.unwrap_or(ALL));
    }

    /// Follows record changes made by other processes until `stop`
    /// resolves. Run it in every process that serves reads.
    pub async fn follow_record_changes(&self, stop: impl Future<Output = ()>) {
        let versions: Arc<Versions> = self.versions.clone();
        tokio::pin!(stop);
        match &self.db {
            Db::Postgres(pool) => {
                loop {
                    let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot listen for record changes; retrying");
                            tokio::select! {
                                _ = &mut stop => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            }
                        }
                    };
                    if let Err(e) = listener.listen(CHANNEL).await {
                        tracing::warn!(error = %e, "cannot listen for record changes; retrying");
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                    // Changes before the LISTEN took effect are unknown.
                    versions.bump_all();
                    loop {
                        let n = tokio::select! {
                            _ = &mut stop => return,
                            n = listener.try_recv() => n,
                        };
                        match n {
                            Ok(Some(n)) => match n.payload().split_once(' ') {
                                Some((conn, object)) => versions.bump(conn, object),
                                None => versions.bump_all(),
                            },
                            // The connection dropped (it reconnects on the
                            // next call): notifications may have been lost.
                            Ok(None) => versions.bump_all(),
                            Err(e) => {
                                tracing::warn!(error = %e, "record-change listener failed; reconnecting");
                                versions.bump_all();
                                break;
                            }
                        }
                    }
                }
            }
            Db::Sqlite(pool) => {
                let mut last: i64 = match sqlx::query_as::<_, (Option<i64>,)>(
                    "SELECT MAX(seq) FROM record_changes",
                )
                .fetch_one(pool)
                .await
                {
                    Ok((m,)) => m.unwrap_or(0),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read record changes");
                        0
                    }
                };
                versions.bump_all();
                let mut last_ok = std::time::Instant::now();
                let mut polls: u64 = 0;
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(SQLITE_POLL) => {}
                    }
                    polls += 1;
                    let rows = sqlx::query_as::<_, (i64, String, String)>(
                        "SELECT seq, connection_id, object FROM record_changes WHERE seq > $1 \
                         ORDER BY seq LIMIT 1000",
                    )
                    .bind(last)
                    .fetch_all(pool)
                    .await;
                    match rows {
                        Ok(rows) => {
                            // A poller that stalled longer than rows are
                            // kept may have missed some.
                            if last_ok.elapsed() > Duration::from_millis(SQLITE_KEEP_MS as u64 / 2)
                            {
                                versions.bump_all();
                            }
                            last_ok = std::time::Instant::now();
                            for (seq, conn, object) in rows {
                                versions.bump(&conn, &object);
                                last = seq;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "record-change poll failed"),
                    }
                    if polls.is_multiple_of(3000) {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i64);
                        let cutoff = now - SQLITE_KEEP_MS;
                        let _ = sqlx::query("DELETE FROM record_changes WHERE at < $1")
                            .bind(cutoff)
                            .execute(pool)
                            .await;
                    }
                }
            }
        }
    }
}

/// Notes, inside a writing transaction, that an object's records (or with
/// `None` all of a connection's) change, for the other processes; this one
/// moves its own version after commit.
pub(crate) trait NoteChange {
    async fn note(
        &mut self,
        connection_id: &str,
        object: Option<&str>,
        now: i64,
    ) -> Result<(), sqlx::Error>;
}

impl NoteChange for sqlx::SqliteConnection {
    async fn note(
        &mut self,
        connection_id: &str,
        object: Option<&str>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO record_changes (connection_id, object, at) VALUES ($1, $2, $3)")
            .bind(connection_id)
            .bind(object.unwrap_or(ALL))
            .bind(now)
            .execute(self)
            .await
            .map(|_| ())
    }
}

impl NoteChange for sqlx::PgConnection {
    async fn note(
        &mut self,
        connection_id: &str,
        object: Option<&str>,
        _now: i64,
    ) -> Result<(), sqlx::Error> {
        let payload = format!("{connection_id} {}", object.unwrap_or(ALL));
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(self)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_move_per_object_per_connection_and_all_at_once() {
        let v = Versions::default();
        let a0 = v.current("c1", "contacts");
        v.bump("c1", "contacts");
        let a1 = v.current("c1", "contacts");
        assert!(a1 > a0);
        assert_eq!(v.current("c1", "deals"), 0, "other objects stay");
        assert_eq!(v.current("c2", "contacts"), 0, "other connections stay");
        v.bump("c1", ALL);
        assert!(
            v.current("c1", "deals") > 0,
            "a connection-wide change moves every object"
        );
        assert!(v.current("c1", "contacts") > a1);
        let before = v.current("c2", "contacts");
        v.bump_all();
        assert!(v.current("c2", "contacts") > before);
    }
}
