//! The sync engine's tables: the job queue, per-object sync checkpoints and
//! the synced records.
//!
//! A page of records and the checkpoint that covers it are written in one
//! transaction (`apply_page`), together with the events their changes
//! cause, so a crash anywhere re-runs at most one page and a re-run changes
//! nothing (records are keyed by native id; unchanged content hashes emit
//! no events).

use super::*;

macro_rules! job_cols {
    () => {
        "id, kind, environment_id, connection_id, dedup_key, payload, priority, state, attempts, \
         max_attempts, run_at, lease_owner, lease_until, last_error, created_at, updated_at"
    };
}

/// Inserts filter index entries `(scope, seq, value)` in the open
/// transaction `$tx` (a macro: the two backends' connection types differ).
macro_rules! insert_keys {
    ($tx:ident, $keys:expr) => {
        for part in $keys.chunks(300) {
            let mut qb = sqlx::QueryBuilder::new("INSERT INTO record_keys (scope, seq, value) ");
            qb.push_values(part, |mut b, (scope, seq, v): &(i64, i64, String)| {
                b.push_bind(*scope).push_bind(*seq).push_bind(v.clone());
            });
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build().execute(&mut *$tx).await?;
        }
    };
}

macro_rules! record_cols {
    () => {
        "seq, environment_id, connection_id, object, native_id, uid, hash, data, native, \
         created_time, modified_time, deleted_at, synced_at"
    };
}

macro_rules! state_cols {
    () => {
        "connection_id, object, environment_id, phase, run_state, run_id, run_since, cursor, \
         high_water, records_synced, pages, total, last_error, last_synced_at, updated_at, full_at"
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub environment_id: Option<String>,
    pub connection_id: Option<String>,
    pub dedup_key: Option<String>,
    pub payload: String,
    pub priority: i32,
    /// `queued`, `running`, `done` or `dead`.
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub environment_id: Option<&'a str>,
    pub connection_id: Option<&'a str>,
    /// At most one queued or running job per key.
    pub dedup_key: Option<&'a str>,
    pub payload: &'a str,
    pub priority: i32,
    pub max_attempts: i32,
    pub run_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncState {
    pub connection_id: String,
    pub object: String,
    pub environment_id: String,
    /// `initial`, `backfill` or `incremental`.
    pub phase: String,
    /// `idle`, `running` or `done`.
    pub run_state: String,
    pub run_id: Option<String>,
    pub run_since: Option<i64>,
    pub cursor: Option<String>,
    pub high_water: Option<i64>,
    pub records_synced: i64,
    pub pages: i64,
    pub total: Option<i64>,
    pub last_error: Option<String>,
    pub last_synced_at: Option<i64>,
    pub updated_at: i64,
    /// When the object last finished a full listing (backfill or re-sync).
    pub full_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRecord {
    pub seq: i64,
    pub environment_id: String,
    pub connection_id: String,
    pub object: String,
    pub native_id: String,
    pub uid: String,
    pub hash: String,
    /// JSON: the unified fields.
    pub data: String,
    /// JSON: the provider's record as it came.
    pub native: String,
    pub created_time: Option<i64>,
    pub modified_time: Option<i64>,
    pub deleted_at: Option<i64>,
    pub synced_at: i64,
}

/// One record of a page, with what to emit if its content changed.
#[derive(Debug, Clone)]
pub struct RecordWrite {
    pub native_id: String,
    pub uid: String,
    pub hash: String,
    pub data: String,
    pub native: String,
    pub created_time: Option<i64>,
    pub modified_time: Option<i64>,
    /// The provider says it is deleted (a tombstone).
    pub deleted: bool,
    /// Used when the write causes an event.
    pub event_id: String,
    /// The event payload (`{id, nativeId, v1Id, record}`).
    pub event_payload: String,
    /// The links this record implies on other records (its reverse
    /// associations), replacing those it implied before.
    pub links: Vec<RecordLink>,
    /// Its entries in the filter index (key, normalised value), replacing
    /// those it had.
    pub keys: Vec<(&'static str, String)>,
}

/// "Record `native_id` of `object` lists `from_native_id` under `key`"
/// (from the record being written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLink {
    pub object: &'static str,
    pub native_id: String,
    pub key: &'static str,
}

/// A page of one sync run and the checkpoint after it.
#[derive(Debug)]
pub struct PageWrite<'a> {
    pub environment_id: &'a str,
    pub connection_id: &'a str,
    pub object: &'a str,
    /// The run whose checkpoint moves; `None` for a write made through the
    /// API (records and events only).
    pub run_id: Option<&'a str>,
    pub records: &'a [RecordWrite],
    /// `object.<vertical>.<plural>`: events are `<prefix>.created` etc.;
    /// `None` writes no events (initial sync and backfill).
    pub event_prefix: Option<&'a str>,
    /// The provider cursor for the next page; `None` when the run is over.
    pub next_cursor: Option<&'a str>,
    pub high_water: Option<i64>,
    pub total: Option<i64>,
    pub now: i64,
    /// The job lease to renew with the page, in the same transaction:
    /// (job id, owner, lease until). A lost lease writes nothing
    /// ([`StoreError::LeaseLost`]).
    pub lease: Option<(&'a str, &'a str, i64)>,
    /// Rewrite the links of unchanged records too (full listings, so links
    /// of records stored before they were derived appear).
    pub refresh_links: bool,
    /// Write no filter index entries; mark the object's index out of date
    /// instead ([`Store::build_record_keys`] rebuilds it in key order).
    pub defer_keys: bool,
}

/// What a page changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageOutcome {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

/// Filters of a store read.
#[derive(Debug, Clone, Default)]
pub struct RecordPage<'a> {
    pub environment_id: &'a str,
    pub connection_id: &'a str,
    pub object: &'a str,
    pub after_seq: i64,
    pub limit: i64,
    pub include_deleted: bool,
}

/// The version of the filter index's entries that the code writes. An
/// object's entries serve reads only once its `keys_version` is this one;
/// a migration that changes what is indexed sets it lower, and
/// [`Store::backfill_record_keys`] brings it back.
pub const KEYS_VERSION: i64 = 1;

/// Which records a filter condition can match, as the filter index sees
/// it: a superset of the matches.
#[derive(Debug, Clone)]
pub enum KeyProbe<'a> {
    /// Index entries of `key` equal to one of `values`; and, for an
    /// association key other records fill by linking (a note lists a
    /// contact), the records of `object` that records `ids` of
    /// `from_object` link to under `key`.
    Values {
        key: &'a str,
        values: &'a [String],
        linked_from: Option<(&'a str, &'a [String])>,
    },
    /// Index entries of `key` in `[lo, hi)`.
    Range {
        key: &'a str,
        lo: &'a str,
        hi: &'a str,
    },
    /// `created_time` (`modified: false`) or `modified_time` within the
    /// inclusive bounds.
    Time {
        modified: bool,
        lo: Option<i64>,
        hi: Option<i64>,
    },
}

impl Store {
    // ---- filter index ------------------------------------------------------

    /// Whether the filter index holds every live record of the object.
    pub async fn keys_ready(&self, connection_id: &str, object: &str) -> Result<bool> {
        let v: Option<(i64,)> = with_db!(self, p => sqlx::query_as(
            "SELECT CAST(keys_version AS BIGINT) FROM sync_states WHERE connection_id = $1 AND object = $2"
        ).bind(connection_id).bind(object).fetch_optional(p).await)?;
        Ok(v.is_some_and(|(v,)| v >= KEYS_VERSION))
    }

    /// The store sequences after `after_seq` that `probe` admits, in
    /// order; `None` when there are more than `cap` (the condition is not
    /// selective enough for the index to pay).
    pub async fn probe_keys(
        &self,
        connection_id: &str,
        object: &str,
        probe: &KeyProbe<'_>,
        after_seq: i64,
        cap: usize,
    ) -> Result<Option<Vec<i64>>> {
        let limit = cap as i64 + 1;
        let mut seqs: Vec<i64> = with_db!(self, p => {
            let mut qb = sqlx::QueryBuilder::new("");
            let time_range;
            let probe = match probe {
                KeyProbe::Time { modified, lo, hi } => {
                    time_range = (
                        lo.map(time_value).unwrap_or_default(),
                        // Inclusive: up to the next millisecond.
                        hi.map_or_else(|| "~".to_string(), |h| time_value(h.saturating_add(1))),
                    );
                    &KeyProbe::Range {
                        key: if *modified { "modifiedTime" } else { "createdTime" },
                        lo: &time_range.0,
                        hi: &time_range.1,
                    }
                }
                p => p,
            };
            match probe {
                KeyProbe::Values { key, values, linked_from } => {
                    qb.push("SELECT seq FROM record_keys WHERE scope = ")
                        .push_bind(key_scope(connection_id, object, key))
                        .push(" AND seq > ").push_bind(after_seq).push(" AND value IN (");
                    let mut sep = qb.separated(", ");
                    for v in values.iter() {
                        sep.push_bind(v.clone());
                    }
                    qb.push(")");
                    if let Some((from_object, ids)) = linked_from.filter(|(_, ids)| !ids.is_empty()) {
                        qb.push(" UNION SELECT r.seq FROM record_links l JOIN records r \
                                 ON r.connection_id = l.connection_id AND r.object = l.object \
                                 AND r.native_id = l.native_id WHERE l.connection_id = ")
                            .push_bind(connection_id).push(" AND l.from_object = ").push_bind(from_object)
                            .push(" AND l.object = ").push_bind(object).push(" AND l.key = ").push_bind(*key)
                            .push(" AND r.seq > ").push_bind(after_seq).push(" AND l.from_native_id IN (");
                        let mut sep = qb.separated(", ");
                        for v in ids.iter() {
                            sep.push_bind(v.clone());
                        }
                        qb.push(")");
                    }
                }
                KeyProbe::Range { key, lo, hi } => {
                    qb.push("SELECT seq FROM record_keys WHERE scope = ")
                        .push_bind(key_scope(connection_id, object, key))
                        .push(" AND value >= ").push_bind(*lo).push(" AND value < ").push_bind(*hi)
                        .push(" AND seq > ").push_bind(after_seq);
                }
                KeyProbe::Time { .. } => unreachable!("a time probe is a range of its key"),
            }
            qb.push(" LIMIT ").push_bind(limit);
            qb.build_query_scalar::<i64>().fetch_all(p).await?
        });
        if seqs.len() as i64 > cap as i64 {
            return Ok(None);
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(Some(seqs))
    }

    /// Live records of an object by store sequence, in that order.
    pub async fn records_by_seqs(
        &self,
        environment_id: &str,
        connection_id: &str,
        object: &str,
        seqs: &[i64],
    ) -> Result<Vec<StoredRecord>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(with_db!(self, p => {
            let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", record_cols!(), " FROM records WHERE environment_id = "));
            qb.push_bind(environment_id).push(" AND connection_id = ").push_bind(connection_id)
                .push(" AND object = ").push_bind(object).push(" AND deleted_at IS NULL AND seq IN (");
            let mut sep = qb.separated(", ");
            for s in seqs {
                sep.push_bind(*s);
            }
            qb.push(") ORDER BY seq");
            qb.build_query_as::<StoredRecord>().fetch_all(p).await?
        }))
    }

    /// Objects whose index entries are older than [`KEYS_VERSION`].
    pub async fn objects_missing_keys(&self) -> Result<Vec<(String, String)>> {
        Ok(with_db!(self, p => sqlx::query_as(
            "SELECT connection_id, object FROM sync_states WHERE keys_version < $1 ORDER BY connection_id, object"
        ).bind(KEYS_VERSION).fetch_all(p).await)?)
    }

    /// Rebuilds the filter index entries of an object and marks them
    /// current: drops its entries, stages those of its live records
    /// (`derive` gives a record's keys from all but its raw `native`) in
    /// batches, then copies them into the index in key order, one key per
    /// transaction, so the index's pages are written in order rather than
    /// at random places. A write landing meanwhile writes its own
    /// entries; at worst a staged entry of an older version stays, which
    /// only adds a candidate. Two builders of one object agree (entries
    /// are idempotent).
    pub async fn build_record_keys(
        &self,
        connection_id: &str,
        object: &str,
        derive: &(dyn Fn(&StoredRecord) -> Vec<(&'static str, String)> + Sync),
    ) -> Result<()> {
        const BATCH: i64 = 2000;
        with_db!(self, p => {
            // -1: being built. A deferred write meanwhile sets it to 0, and
            // then this build does not mark the object current.
            sqlx::query("UPDATE sync_states SET keys_version = -1 WHERE connection_id = $1 AND object = $2")
                .bind(connection_id).bind(object).execute(p).await?;
            sqlx::query("DELETE FROM record_keys WHERE seq IN \
                         (SELECT seq FROM records WHERE connection_id = $1 AND object = $2)")
                .bind(connection_id).bind(object).execute(p).await?;
            // The staging table is a temporary one on one connection: not
            // written to the log, gone with the session.
            let mut c = p.acquire().await?;
            sqlx::query("DROP TABLE IF EXISTS keys_build").execute(&mut *c).await?;
            sqlx::query("CREATE TEMPORARY TABLE keys_build (scope BIGINT NOT NULL, value TEXT NOT NULL, seq BIGINT NOT NULL)")
                .execute(&mut *c).await?;
            let mut after = 0i64;
            let mut scopes: Vec<i64> = Vec::new();
            loop {
                // Not the raw record: the larger half of a row, and no key
                // comes from it.
                let rows: Vec<StoredRecord> = sqlx::query_as(
                    "SELECT seq, environment_id, connection_id, object, native_id, uid, hash, data, \
                     '' AS native, created_time, modified_time, deleted_at, synced_at FROM records \
                     WHERE connection_id = $1 AND object = $2 AND seq > $3 AND deleted_at IS NULL \
                     ORDER BY seq LIMIT $4"
                ).bind(connection_id).bind(object).bind(after).bind(BATCH).fetch_all(&mut *c).await?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                let keys: Vec<(i64, i64, String)> = rows.iter()
                    .flat_map(|r| entries(connection_id, object, r.seq, derive(r).into_iter(),
                        r.created_time, r.modified_time))
                    .collect();
                for (scope, _, _) in &keys {
                    if !scopes.contains(scope) {
                        scopes.push(*scope);
                    }
                }
                let mut tx = sqlx::Connection::begin(&mut *c).await?;
                for part in keys.chunks(300) {
                    let mut qb = sqlx::QueryBuilder::new("INSERT INTO keys_build (scope, seq, value) ");
                    qb.push_values(part, |mut b, (scope, seq, v)| {
                        b.push_bind(*scope).push_bind(*seq).push_bind(v.clone());
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                if (rows.len() as i64) < BATCH {
                    break;
                }
            }
            sqlx::query("CREATE INDEX keys_build_order ON keys_build (scope, value, seq)")
                .execute(&mut *c).await?;
            // One key per transaction, in key order: the index's pages are
            // filled in order, and no writer waits long.
            for scope in scopes {
                sqlx::query(
                    "INSERT INTO record_keys (scope, value, seq) SELECT scope, value, seq FROM keys_build \
                     WHERE scope = $1 ORDER BY value, seq ON CONFLICT DO NOTHING"
                ).bind(scope).execute(&mut *c).await?;
            }
            sqlx::query("DROP TABLE keys_build").execute(&mut *c).await?;
            sqlx::query("UPDATE sync_states SET keys_version = $3 WHERE connection_id = $1 AND object = $2 \
                         AND keys_version = -1")
                .bind(connection_id).bind(object).bind(KEYS_VERSION).execute(&mut *c).await?;
        });
        Ok(())
    }

    // ---- jobs --------------------------------------------------------------

    /// Queues a job; `false` when a job with the same de-duplication key is
    /// already queued or running.
    pub async fn enqueue_job(&self, j: &NewJob<'_>, now: i64) -> Result<bool> {
        Ok(with_db!(self, p => insert_job(p, j, now).await)?)
    }

    /// Leases up to `limit` due jobs of the given kinds (queued and due, or
    /// running with an expired lease) to `owner`.
    pub async fn claim_jobs(
        &self,
        kinds: &[&str],
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Job>> {
        fn build<DB: sqlx::Database>(
            kinds: &[&str],
            owner: &str,
            now: i64,
            lease_ms: i64,
            limit: i64,
            lock: &str,
        ) -> sqlx::QueryBuilder<DB>
        where
            i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
            String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        {
            let mut qb = sqlx::QueryBuilder::new(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ",
            );
            qb.push_bind(owner.to_string())
                .push(", lease_until = ")
                .push_bind(now + lease_ms)
                .push(", updated_at = ")
                .push_bind(now)
                .push(" WHERE id IN (SELECT id FROM jobs WHERE ((state = 'queued' AND run_at <= ")
                .push_bind(now)
                .push(") OR (state = 'running' AND lease_until < ")
                .push_bind(now)
                .push(")) AND kind IN (");
            let mut sep = qb.separated(", ");
            for k in kinds {
                sep.push_bind(k.to_string());
            }
            qb.push(") ORDER BY priority DESC, run_at LIMIT ")
                .push_bind(limit)
                .push(lock)
                .push(concat!(") RETURNING ", job_cols!()));
            qb
        }
        Ok(match &self.db {
            Db::Sqlite(p) => {
                build::<sqlx::Sqlite>(kinds, owner, now, lease_ms, limit, "")
                    .build_query_as::<Job>()
                    .fetch_all(p)
                    .await?
            }
            Db::Postgres(p) => {
                build::<sqlx::Postgres>(
                    kinds,
                    owner,
                    now,
                    lease_ms,
                    limit,
                    " FOR UPDATE SKIP LOCKED",
                )
                .build_query_as::<Job>()
                .fetch_all(p)
                .await?
            }
        })
    }

    /// Extends a held lease; `false` when the lease was lost (the job was
    /// claimed by someone else after it expired).
    pub async fn heartbeat_job(&self, id: &str, owner: &str, until: i64) -> Result<bool> {
        let r = with_db!(self, p => sqlx::query(
            "UPDATE jobs SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
        ).bind(id).bind(owner).bind(until).execute(p).await?.rows_affected());
        Ok(r == 1)
    }

    pub async fn complete_job(&self, id: &str, owner: &str, now: i64) -> Result<bool> {
        let r = with_db!(self, p => sqlx::query(
            "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $3 \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
        ).bind(id).bind(owner).bind(now).execute(p).await?.rows_affected());
        Ok(r == 1)
    }

    /// Puts a failed job back in the queue at `run_at`, or marks it dead
    /// when `run_at` is `None`.
    pub async fn fail_job(
        &self,
        id: &str,
        owner: &str,
        error: &str,
        run_at: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        let (state, at) = match run_at {
            Some(t) => ("queued", t),
            None => ("dead", now),
        };
        let r = with_db!(self, p => sqlx::query(
            "UPDATE jobs SET state = $3, run_at = $4, last_error = $5, lease_owner = NULL, \
             lease_until = NULL, updated_at = $6 WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
        ).bind(id).bind(owner).bind(state).bind(at).bind(error).bind(now)
        .execute(p).await?.rows_affected());
        Ok(r == 1)
    }

    /// Asks the running job with this key to be run again when it ends;
    /// `false` when no job with the key is running.
    pub async fn request_rerun(&self, dedup_key: &str) -> Result<bool> {
        let r = with_db!(self, p => sqlx::query(
            "UPDATE jobs SET payload = '{\"rerun\":true}' WHERE dedup_key = $1 AND state = 'running'"
        ).bind(dedup_key).execute(p).await?.rows_affected());
        Ok(r == 1)
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<Job>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Job>(
            concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1")
        ).bind(id).fetch_optional(p).await)?)
    }

    /// A connection's most recent jobs, newest first.
    pub async fn jobs_of_connection(&self, connection_id: &str, limit: i64) -> Result<Vec<Job>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, Job>(
            concat!("SELECT ", job_cols!(), " FROM jobs WHERE connection_id = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2")
        ).bind(connection_id).bind(limit).fetch_all(p).await)?)
    }

    /// Deletes finished jobs last updated before `before`.
    pub async fn purge_jobs(&self, before: i64) -> Result<u64> {
        Ok(with_db!(self, p => sqlx::query(
            "DELETE FROM jobs WHERE state IN ('done', 'dead') AND updated_at < $1"
        ).bind(before).execute(p).await?.rows_affected()))
    }

    // ---- scheduling --------------------------------------------------------

    /// Queues a sync for every live connection whose next sync is due and
    /// moves its next sync time forward, in one transaction per batch.
    /// `interval_of` gives the interval (s) of a connection that has none of
    /// its own (per integration); `job` builds the job of a connection.
    /// Returns how many were queued.
    pub async fn schedule_due_syncs(
        &self,
        now: i64,
        default_interval_secs: i64,
        limit: i64,
        interval_of: impl Fn(&Connection) -> i64,
        job: impl Fn(&Connection) -> (String, String),
    ) -> Result<u64> {
        let mut queued = 0;
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            // Write first (invariant 4): claim the due rows by moving them.
            let due: Vec<Connection> = sqlx::query_as::<_, Connection>(concat!(
                "UPDATE connections SET next_sync_at = $1 + 1000 * COALESCE(sync_interval_secs, $2) \
                 WHERE id IN (SELECT id FROM connections WHERE deleted_at IS NULL \
                 AND next_sync_at IS NOT NULL AND next_sync_at <= $1 ORDER BY next_sync_at LIMIT $3) \
                 RETURNING ", connection_cols!()
            )).bind(now).bind(default_interval_secs).bind(limit).fetch_all(&mut *tx).await?;
            for c in &due {
                let own = interval_of(c);
                if own != default_interval_secs {
                    sqlx::query(
                        "UPDATE connections SET next_sync_at = $2 + 1000 * $3 \
                         WHERE id = $1 AND sync_interval_secs IS NULL"
                    ).bind(&c.id).bind(now).bind(own).execute(&mut *tx).await?;
                }
                let (id, dedup) = job(c);
                let j = NewJob {
                    id: &id,
                    kind: "sync",
                    environment_id: Some(&c.environment_id),
                    connection_id: Some(&c.id),
                    dedup_key: Some(&dedup),
                    payload: "{}",
                    priority: 0,
                    max_attempts: 10,
                    run_at: now,
                };
                if insert_job(&mut *tx, &j, now).await? {
                    queued += 1;
                }
            }
            tx.commit().await?;
        });
        Ok(queued)
    }

    /// Sets a connection's sync interval (`None`: the default) and when it
    /// syncs next.
    pub async fn set_sync_schedule(
        &self,
        environment_id: &str,
        connection_id: &str,
        interval_secs: Option<i64>,
        next_sync_at: i64,
    ) -> Result<bool> {
        let r = with_db!(self, p => sqlx::query(
            "UPDATE connections SET sync_interval_secs = $3, next_sync_at = $4 \
             WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
        ).bind(environment_id).bind(connection_id).bind(interval_secs).bind(next_sync_at)
        .execute(p).await?.rows_affected());
        Ok(r == 1)
    }

    /// Puts a connection on the schedule if it is not on it yet.
    pub async fn init_next_sync(&self, connection_id: &str, at: i64) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE connections SET next_sync_at = $2 WHERE id = $1 AND next_sync_at IS NULL"
        ).bind(connection_id).bind(at).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// `(sync_interval_secs, next_sync_at)` of a connection.
    pub async fn sync_schedule(&self, connection_id: &str) -> Result<(Option<i64>, Option<i64>)> {
        Ok(
            with_db!(self, p => sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
            "SELECT sync_interval_secs, next_sync_at FROM connections WHERE id = $1"
        ).bind(connection_id).fetch_optional(p).await)?
            .unwrap_or((None, None)),
        )
    }

    // ---- connection status --------------------------------------------------

    /// Moves a live connection from `from` to `to` and writes `events`, in
    /// one transaction; `false` when it was not in `from`.
    pub async fn set_connection_status(
        &self,
        connection_id: &str,
        from: &str,
        to: &str,
        events: &[NewEvent<'_>],
        now: i64,
    ) -> Result<bool> {
        let changed = with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "UPDATE connections SET status = $3, updated_at = $4 \
                 WHERE id = $1 AND status = $2 AND deleted_at IS NULL"
            ).bind(connection_id).bind(from).bind(to).bind(now).execute(&mut *tx).await?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            for e in events {
                insert_event(&mut *tx, e).await?;
            }
            tx.commit().await?;
            true
        });
        if changed {
            self.events_committed();
        }
        Ok(changed)
    }

    // ---- sync states ---------------------------------------------------------

    pub async fn sync_states(&self, connection_id: &str) -> Result<Vec<SyncState>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, SyncState>(
            concat!("SELECT ", state_cols!(), " FROM sync_states WHERE connection_id = $1 ORDER BY object")
        ).bind(connection_id).fetch_all(p).await)?)
    }

    /// The sync states of several connections (one query per 500).
    pub async fn sync_states_of(&self, connection_ids: &[&str]) -> Result<Vec<SyncState>> {
        let mut out = Vec::new();
        for chunk in connection_ids.chunks(500) {
            let part: Vec<SyncState> = with_db!(self, p => {
                let mut qb = sqlx::QueryBuilder::new(concat!(
                    "SELECT ", state_cols!(), " FROM sync_states WHERE connection_id IN ("
                ));
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                qb.push(") ORDER BY connection_id, object");
                qb.build_query_as().fetch_all(p).await
            })?;
            out.extend(part);
        }
        Ok(out)
    }

    /// (connection id, sync interval, next sync) of several connections.
    pub async fn sync_schedules_of(
        &self,
        connection_ids: &[&str],
    ) -> Result<Vec<(String, Option<i64>, Option<i64>)>> {
        let mut out = Vec::new();
        for chunk in connection_ids.chunks(500) {
            let part: Vec<(String, Option<i64>, Option<i64>)> = with_db!(self, p => {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT id, sync_interval_secs, next_sync_at FROM connections WHERE id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                qb.push(")");
                qb.build_query_as().fetch_all(p).await
            })?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Creates the state of each object in phase `initial` if missing.
    pub async fn ensure_sync_states(
        &self,
        environment_id: &str,
        connection_id: &str,
        objects: &[&str],
        now: i64,
    ) -> Result<()> {
        with_db!(self, p => {
            for o in objects {
                sqlx::query(
                    "INSERT INTO sync_states (connection_id, object, environment_id, phase, updated_at) \
                     VALUES ($1, $2, $3, 'initial', $4) ON CONFLICT (connection_id, object) DO NOTHING"
                ).bind(connection_id).bind(*o).bind(environment_id).bind(now).execute(p).await?;
            }
        });
        Ok(())
    }

    /// Starts a run of an idle or finished object: a new run id, the
    /// provider's `since`, and no cursor. A running state is left as is, so
    /// a resumed job continues from its checkpoint.
    pub async fn start_sync_run(
        &self,
        connection_id: &str,
        object: &str,
        run_id: &str,
        since: Option<i64>,
        now: i64,
    ) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE sync_states SET run_state = 'running', run_id = $3, run_since = $4, cursor = NULL, \
             last_error = NULL, updated_at = $5 \
             WHERE connection_id = $1 AND object = $2 AND run_state <> 'running'"
        ).bind(connection_id).bind(object).bind(run_id).bind(since).bind(now).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Ends the run of an object and moves it to `next_phase`; `full`
    /// says the run listed everything (its `full_at` becomes `now`).
    pub async fn finish_sync_run(
        &self,
        connection_id: &str,
        object: &str,
        next_phase: &str,
        full: bool,
        now: i64,
    ) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE sync_states SET run_state = 'done', phase = $3, cursor = NULL, last_synced_at = $4, \
             updated_at = $4, full_at = CASE WHEN $5 THEN $4 ELSE full_at END \
             WHERE connection_id = $1 AND object = $2"
        ).bind(connection_id).bind(object).bind(next_phase).bind(now).bind(full).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Sets an object aside: the provider refused it for good. It leaves
    /// the passes (`incremental`, so the connection's status can advance)
    /// with `run_state = 'unavailable'` and the reason in `last_error`;
    /// `updated_at` says since when.
    pub async fn mark_object_unavailable(
        &self,
        connection_id: &str,
        object: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE sync_states SET run_state = 'unavailable', phase = 'incremental', run_id = NULL, \
             cursor = NULL, last_error = $3, updated_at = $4 WHERE connection_id = $1 AND object = $2"
        ).bind(connection_id).bind(object).bind(reason).bind(now).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn set_sync_error(
        &self,
        connection_id: &str,
        object: &str,
        error: &str,
        now: i64,
    ) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE sync_states SET last_error = $3, updated_at = $4 WHERE connection_id = $1 AND object = $2"
        ).bind(connection_id).bind(object).bind(error).bind(now).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Writes one page: its records (insert, update when the hash changed,
    /// or mark seen), the events of what changed, and the checkpoint, in
    /// one transaction.
    pub async fn apply_page(&self, w: &PageWrite<'_>) -> Result<PageOutcome> {
        let mut out = PageOutcome::default();
        let mut wrote_events = false;
        let mut linked_targets: Vec<String> = Vec::new();
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            // Write first (invariant 4); also fences a stale run: a job
            // that lost its lease to a newer run writes nothing.
            if let Some(run_id) = w.run_id {
                let r = sqlx::query(
                    "UPDATE sync_states SET cursor = $4, high_water = CASE WHEN $5 > COALESCE(high_water, 0) \
                     THEN $5 ELSE high_water END, records_synced = records_synced + $6, pages = pages + 1, \
                     total = COALESCE($7, total), last_error = NULL, updated_at = $8 \
                     WHERE connection_id = $1 AND object = $2 AND run_id = $3 AND run_state = 'running'"
                ).bind(w.connection_id).bind(w.object).bind(run_id).bind(w.next_cursor)
                .bind(w.high_water.unwrap_or(0)).bind(w.records.len() as i64).bind(w.total).bind(w.now)
                .execute(&mut *tx).await?;
                if r.rows_affected() != 1 {
                    return Err(StoreError::RunFenced);
                }
                if let Some((job, owner, until)) = w.lease {
                    let r = sqlx::query(
                        "UPDATE jobs SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
                    ).bind(job).bind(owner).bind(until).execute(&mut *tx).await?;
                    if r.rows_affected() != 1 {
                        return Err(StoreError::LeaseLost);
                    }
                }
            } else {
                // Still write first: the lock serialises this with a sync
                // run's page of the same object.
                sqlx::query("UPDATE connections SET updated_at = updated_at WHERE id = $1")
                    .bind(w.connection_id).execute(&mut *tx).await?;
            }
            let mut existing: std::collections::HashMap<String, (String, Option<i64>)> =
                Default::default();
            let mut stored_modified: std::collections::HashMap<String, i64> = Default::default();
            for chunk in w.records.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT native_id, hash, deleted_at, modified_time FROM records WHERE connection_id = ",
                );
                qb.push_bind(w.connection_id).push(" AND object = ").push_bind(w.object)
                    .push(" AND native_id IN (");
                let mut sep = qb.separated(", ");
                for r in chunk {
                    sep.push_bind(r.native_id.clone());
                }
                qb.push(")");
                let rows: Vec<(String, String, Option<i64>, Option<i64>)> =
                    qb.build_query_as().fetch_all(&mut *tx).await?;
                for (n, h, d, m) in rows {
                    if let Some(m) = m {
                        stored_modified.insert(n.clone(), m);
                    }
                    existing.insert(n, (h, d));
                }
            }
            let mut changed: Vec<(&RecordWrite, &'static str)> = Vec::new();
            let mut seen: Vec<&str> = Vec::new();
            for r in w.records {
                // A sync page read before an API write but committed after
                // it must not put the older version back: the store keeps
                // whichever the provider modified last. API writes (no run)
                // are the provider's newest answer and always land.
                let older = w.run_id.is_some()
                    && matches!(
                        (r.modified_time, stored_modified.get(&r.native_id)),
                        (Some(new), Some(old)) if new < *old
                    );
                if older {
                    out.unchanged += 1;
                    seen.push(&r.native_id);
                    continue;
                }
                let action = match existing.get(&r.native_id) {
                    None if r.deleted => { out.unchanged += 1; continue; }
                    None => "created",
                    Some((_, Some(_))) if r.deleted => { out.unchanged += 1; seen.push(&r.native_id); continue; }
                    Some(_) if r.deleted => "deleted",
                    Some((_, Some(_))) => "created",
                    Some((h, None)) if *h == r.hash => { out.unchanged += 1; seen.push(&r.native_id); continue; }
                    Some(_) => "updated",
                };
                match action {
                    "created" => out.created += 1,
                    "updated" => out.updated += 1,
                    _ => out.deleted += 1,
                }
                changed.push((r, action));
            }
            for chunk in changed.chunks(200) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO records (environment_id, connection_id, object, native_id, uid, hash, \
                     data, native, created_time, modified_time, deleted_at, seen_run, synced_at) ",
                );
                qb.push_values(chunk, |mut b, (r, _)| {
                    b.push_bind(w.environment_id).push_bind(w.connection_id).push_bind(w.object)
                        .push_bind(r.native_id.clone()).push_bind(r.uid.clone())
                        .push_bind(r.hash.clone()).push_bind(r.data.clone())
                        .push_bind(r.native.clone()).push_bind(r.created_time)
                        .push_bind(r.modified_time)
                        .push_bind(if r.deleted { Some(w.now) } else { None })
                        .push_bind(w.run_id).push_bind(w.now);
                });
                qb.push(
                    " ON CONFLICT (connection_id, object, native_id) DO UPDATE SET hash = excluded.hash, \
                     data = excluded.data, native = excluded.native, created_time = excluded.created_time, \
                     modified_time = excluded.modified_time, deleted_at = excluded.deleted_at, \
                     seen_run = excluded.seen_run, synced_at = excluded.synced_at RETURNING seq, native_id",
                );
                let seqs: Vec<(i64, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                // The filter index, in the same transaction (invariant 4).
                let by_native: std::collections::HashMap<&str, &RecordWrite> =
                    chunk.iter().map(|(r, _)| (r.native_id.as_str(), *r)).collect();
                let had: Vec<i64> = seqs.iter()
                    .filter(|(_, n)| existing.contains_key(n)).map(|(s, _)| *s).collect();
                if !had.is_empty() {
                    let mut qb = sqlx::QueryBuilder::new("DELETE FROM record_keys WHERE seq IN (");
                    let mut sep = qb.separated(", ");
                    for s in &had {
                        sep.push_bind(*s);
                    }
                    qb.push(")");
                    qb.build().execute(&mut *tx).await?;
                }
                let keys: Vec<(i64, i64, String)> = seqs.iter()
                    .filter(|_| !w.defer_keys)
                    .filter_map(|(s, n)| by_native.get(n.as_str()).map(|r| (*s, *r)))
                    .filter(|(_, r)| !r.deleted)
                    .flat_map(|(s, r)| entries(w.connection_id, w.object, s, r.keys.iter().cloned(),
                        r.created_time, r.modified_time))
                    .collect();
                insert_keys!(tx, keys);
            }
            for chunk in seen.chunks(500).filter(|_| w.run_id.is_some()) {
                let mut qb = sqlx::QueryBuilder::new("UPDATE records SET seen_run = ");
                qb.push_bind(w.run_id.unwrap_or("")).push(" WHERE connection_id = ").push_bind(w.connection_id)
                    .push(" AND object = ").push_bind(w.object).push(" AND native_id IN (");
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n.to_string());
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            // Links: replaced for every record written (and every record
            // seen, on a refresh); only records that existed can have old
            // ones, and a deleted record implies none.
            let mut relinked: Vec<&RecordWrite> = changed.iter().map(|(r, _)| *r).collect();
            if w.refresh_links {
                let seen_set: std::collections::HashSet<&str> = seen.iter().copied().collect();
                relinked.extend(w.records.iter().filter(|r| seen_set.contains(r.native_id.as_str())));
            }
            let stale: Vec<&str> = relinked.iter().map(|r| r.native_id.as_str())
                .filter(|n| existing.contains_key(*n)).collect();
            for chunk in stale.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new("DELETE FROM record_links WHERE connection_id = ");
                qb.push_bind(w.connection_id).push(" AND from_object = ").push_bind(w.object)
                    .push(" AND from_native_id IN (");
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n.to_string());
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            let links: Vec<(&RecordWrite, &RecordLink)> = relinked.iter()
                .filter(|r| !r.deleted)
                .flat_map(|r| r.links.iter().map(move |l| (*r, l)))
                .collect();
            for chunk in links.chunks(200) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO record_links (connection_id, object, native_id, key, from_object, from_native_id) ",
                );
                qb.push_values(chunk, |mut b, (r, l)| {
                    b.push_bind(w.connection_id).push_bind(l.object).push_bind(l.native_id.clone())
                        .push_bind(l.key).push_bind(w.object).push_bind(r.native_id.clone());
                });
                qb.push(" ON CONFLICT DO NOTHING");
                qb.build().execute(&mut *tx).await?;
            }
            if !links.is_empty() || !stale.is_empty() {
                // The targets render differently now.
                let mut targets: Vec<&str> = links.iter().map(|(_, l)| l.object).collect();
                targets.sort_unstable();
                targets.dedup();
                for t in &targets {
                    crate::changes::NoteChange::note(&mut *tx, w.connection_id, Some(t), w.now).await?;
                }
                linked_targets = targets.into_iter().map(str::to_string).collect();
            }
            if !changed.is_empty() {
                crate::changes::NoteChange::note(&mut *tx, w.connection_id, Some(w.object), w.now).await?;
                if w.defer_keys {
                    sqlx::query("UPDATE sync_states SET keys_version = 0 WHERE connection_id = $1 AND object = $2 AND keys_version <> 0")
                        .bind(w.connection_id).bind(w.object).execute(&mut *tx).await?;
                }
            }
            if let Some(prefix) = w.event_prefix {
                for (r, action) in &changed {
                    let event_type = format!("{prefix}.{action}");
                    insert_event(&mut *tx, &NewEvent {
                        id: &r.event_id,
                        environment_id: w.environment_id,
                        connection_id: Some(w.connection_id),
                        event_type: &event_type,
                        payload: &r.event_payload,
                        created_at: w.now,
                    }).await?;
                    wrote_events = true;
                }
            }
            tx.commit().await?;
            if !changed.is_empty() {
                self.records_changed(w.connection_id, Some(w.object));
            }
            for t in &linked_targets {
                self.records_changed(w.connection_id, Some(t));
            }
        });
        if wrote_events {
            self.events_committed();
        }
        self.wrote_rows(w.records.len()).await;
        Ok(out)
    }

    /// The links other live records imply on records `native_ids` of
    /// `object`: (native id, key, source native id), in source store
    /// order.
    pub async fn reverse_links(
        &self,
        connection_id: &str,
        object: &str,
        native_ids: &[&str],
    ) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for chunk in native_ids.chunks(500) {
            let part: Vec<(String, String, String)> = with_db!(self, p => {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT l.native_id, l.key, l.from_native_id FROM record_links l JOIN records r \
                     ON r.connection_id = l.connection_id AND r.object = l.from_object \
                     AND r.native_id = l.from_native_id WHERE r.deleted_at IS NULL AND l.connection_id = ",
                );
                qb.push_bind(connection_id).push(" AND l.object = ").push_bind(object)
                    .push(" AND l.native_id IN (");
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n.to_string());
                }
                qb.push(") ORDER BY r.seq");
                qb.build_query_as().fetch_all(p).await
            })?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Mark and sweep after a full run: live records of the object that the
    /// run `run_id` did not see. Returns them without deleting (the engine
    /// applies the mass-delete guard first).
    pub async fn unseen_records(
        &self,
        connection_id: &str,
        object: &str,
        run_id: &str,
        synced_before: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>> {
        Ok(
            with_db!(self, p => sqlx::query_as::<_, StoredRecord>(concat!(
            "SELECT ", record_cols!(), " FROM records WHERE connection_id = $1 AND object = $2 \
             AND deleted_at IS NULL AND (seen_run IS NULL OR seen_run <> $3) AND synced_at < $4 \
             ORDER BY seq LIMIT $5"
        )).bind(connection_id).bind(object).bind(run_id).bind(synced_before).bind(limit).fetch_all(p).await)?,
        )
    }

    /// Live records of an object.
    pub async fn count_records(&self, connection_id: &str, object: &str) -> Result<i64> {
        Ok(with_db!(self, p => sqlx::query_as::<_, (i64,)>(
            "SELECT COUNT(*) FROM records WHERE connection_id = $1 AND object = $2 AND deleted_at IS NULL"
        ).bind(connection_id).bind(object).fetch_one(p).await)?.0)
    }

    /// Marks records deleted and writes their events, in one transaction.
    pub async fn mark_records_deleted(
        &self,
        connection_id: &str,
        object: &str,
        native_ids: &[String],
        events: &[NewEvent<'_>],
        now: i64,
    ) -> Result<()> {
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in native_ids.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new("UPDATE records SET deleted_at = ");
                qb.push_bind(now).push(", synced_at = ").push_bind(now)
                    .push(" WHERE deleted_at IS NULL AND connection_id = ").push_bind(connection_id)
                    .push(" AND object = ").push_bind(object).push(" AND native_id IN (");
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n.clone());
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
                let mut qb = sqlx::QueryBuilder::new(
                    "DELETE FROM record_keys WHERE seq IN (SELECT seq FROM records WHERE connection_id = ",
                );
                qb.push_bind(connection_id).push(" AND object = ").push_bind(object)
                    .push(" AND native_id IN (");
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n.clone());
                }
                qb.push("))");
                qb.build().execute(&mut *tx).await?;
            }
            for e in events {
                insert_event(&mut *tx, e).await?;
            }
            if !native_ids.is_empty() {
                crate::changes::NoteChange::note(&mut *tx, connection_id, Some(object), now).await?;
            }
            tx.commit().await?;
            if !native_ids.is_empty() {
                self.records_changed(connection_id, Some(object));
            }
        });
        if !events.is_empty() {
            self.events_committed();
        }
        Ok(())
    }

    // ---- record reads ----------------------------------------------------------

    /// Records of one object in `seq` order after `after_seq`.
    pub async fn list_records(&self, q: &RecordPage<'_>) -> Result<Vec<StoredRecord>> {
        Ok(
            with_db!(self, p => sqlx::query_as::<_, StoredRecord>(concat!(
            "SELECT ", record_cols!(), " FROM records WHERE connection_id = $1 AND object = $2 \
             AND environment_id = $3 AND seq > $4 AND ($5 = 1 OR deleted_at IS NULL) \
             ORDER BY seq LIMIT $6"
        )).bind(q.connection_id).bind(q.object).bind(q.environment_id).bind(q.after_seq)
        .bind(i64::from(q.include_deleted)).bind(q.limit).fetch_all(p).await)?,
        )
    }

    /// Live records by uid or native id (whichever `by_native` says).
    pub async fn records_by_ids(
        &self,
        environment_id: &str,
        connection_id: &str,
        object: &str,
        ids: &[String],
        by_native: bool,
    ) -> Result<Vec<StoredRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(with_db!(self, p => {
            let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", record_cols!(), " FROM records WHERE environment_id = "));
            qb.push_bind(environment_id).push(" AND connection_id = ").push_bind(connection_id)
                .push(" AND object = ").push_bind(object).push(" AND deleted_at IS NULL AND ")
                .push(if by_native { "native_id" } else { "uid" }).push(" IN (");
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id.clone());
            }
            qb.push(")");
            qb.build_query_as::<StoredRecord>().fetch_all(p).await?
        }))
    }
}

async fn insert_job<'c, DB, E>(exec: E, j: &NewJob<'_>, now: i64) -> Result<bool, sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let r: Option<(String,)> = sqlx::query_as::<DB, (String,)>(
        "INSERT INTO jobs (id, kind, environment_id, connection_id, dedup_key, payload, priority, \
         state, attempts, max_attempts, run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9, $10, $10) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(j.id)
    .bind(j.kind)
    .bind(j.environment_id)
    .bind(j.connection_id)
    .bind(j.dedup_key)
    .bind(j.payload)
    .bind(j.priority)
    .bind(j.max_attempts)
    .bind(j.run_at)
    .bind(now)
    .fetch_optional(exec)
    .await?;
    Ok(r.is_some())
}

/// The initial sync job of a new connection, inside its creation transaction.
pub(crate) async fn insert_job_tx<'c, DB, E>(
    exec: E,
    id: &str,
    environment_id: &str,
    connection_id: &str,
    dedup: &str,
    now: i64,
) -> Result<bool, sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    insert_job(
        exec,
        &NewJob {
            id,
            kind: "sync",
            environment_id: Some(environment_id),
            connection_id: Some(connection_id),
            dedup_key: Some(dedup),
            payload: "{}",
            priority: 10,
            max_attempts: 10,
            run_at: now,
        },
        now,
    )
    .await
}

/// The `scope` of filter index entries: FNV-1a (64 bits) of connection,
/// object and key. Hand-written because it is persisted: it must never
/// change with a compiler or crate version. A collision only adds
/// candidates, which the reader checks anyway.
pub fn key_scope(connection_id: &str, object: &str, key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [connection_id, object, key] {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h as i64
}

/// A time (ms) as the filter index holds it: fixed-width digits, so text
/// order is time order.
fn time_value(ms: i64) -> String {
    format!("{:020}", (i128::from(ms) - i128::from(i64::MIN)) as u64)
}

/// A record's index entries (scope, value, seq): its keys, and its
/// created and modified times.
fn entries(
    connection_id: &str,
    object: &str,
    seq: i64,
    keys: impl Iterator<Item = (&'static str, String)>,
    created: Option<i64>,
    modified: Option<i64>,
) -> Vec<(i64, i64, String)> {
    let times = [("createdTime", created), ("modifiedTime", modified)]
        .into_iter()
        .filter_map(|(k, t)| t.map(|t| (k, time_value(t))));
    keys.chain(times)
        .map(|(k, v)| (key_scope(connection_id, object, k), seq, v))
        .collect()
}
