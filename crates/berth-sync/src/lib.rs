//! The sync engine: durable jobs, the scheduler, and sync runs that pull
//! each connection's provider into the store through its connector.
//!
//! A connection's life (seed 001): `NEW_CONNECTION` → an initial run of the
//! last 30 days of every object → `INITIAL_SYNCED` → a full backfill →
//! `READY` → incremental runs from each object's high-water mark, on the
//! connection's interval or on demand.
//!
//! Crash safety: every page (or group of pages) of records is written with
//! the checkpoint that follows it, in one transaction
//! (`Store::apply_page`). A killed job's
//! lease expires, another worker claims it, and the run goes on from the
//! last committed checkpoint; records are keyed by native id, so the page
//! that was in flight is written again without duplicates or events.
#![forbid(unsafe_code)]

pub mod crm;
mod crm_meta;
pub mod pages;
mod provider;

use std::sync::Arc;
use std::time::Duration;

use berth_connections::{Platform, now_ms, secrets, status};
use berth_connectors::{CallError, ConnectorError, CrmConnector, ListRequest};
use berth_store::{Connection, Job, NewEvent, PageWrite, RecordWrite, SyncState};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

pub use crm::{Crm, CrmError, Generation};
pub use provider::ConnProvider;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// How often a connection syncs unless it or its integration says otherwise.
    pub default_interval: Duration,
    /// The initial run covers records modified this long ago or later.
    pub initial_window: Duration,
    /// A full run refuses to mark more than this share of an object's
    /// records deleted, and flags the sync instead.
    pub max_delete_share: f64,
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// How long a claimed job is leased; renewed after every page.
    pub lease: Duration,
    /// How often the queue and the schedule are polled when nothing wakes them.
    pub poll: Duration,
    /// Bytes of rendered list pages kept in memory (0: none).
    pub page_cache_bytes: u64,
    /// An object whose last full listing is older than this is listed in
    /// full again (with mark-and-sweep) instead of incrementally; `None`:
    /// never after the backfill.
    pub full_resync: Option<Duration>,
    /// Stored rows a filtered list examines per call before it answers
    /// with what it found and a cursor to go on (bounds an unindexed
    /// filter's cost per request).
    pub scan_budget: usize,
    /// Whether filtered lists read the filter index (off only to compare
    /// its answers with a scan's).
    pub filter_index: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(3600),
            initial_window: Duration::from_secs(30 * 24 * 3600),
            max_delete_share: 0.2,
            concurrency: 4,
            lease: Duration::from_secs(120),
            poll: Duration::from_millis(500),
            page_cache_bytes: pages::DEFAULT_BYTES,
            full_resync: Some(Duration::from_secs(24 * 3600)),
            scan_budget: crm::SCAN_BUDGET,
            filter_index: true,
        }
    }
}

/// The smallest sync interval a connection may ask for.
pub const MIN_INTERVAL_SECS: i64 = 60;

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    platform: Platform,
    crm: Crm,
    config: SyncConfig,
    node: String,
    wake: Notify,
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    #[error("store: {0}")]
    Store(#[from] berth_store::StoreError),
    #[error("the job's lease was lost to another worker")]
    LeaseLost,
}

impl Engine {
    pub fn new(platform: Platform, config: SyncConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                crm: {
                    let crm = Crm::new(platform.clone(), config.page_cache_bytes)
                        .with_scan_budget(config.scan_budget);
                    if config.filter_index {
                        crm
                    } else {
                        crm.without_index()
                    }
                },
                platform,
                config,
                // The process id shows operators (and fault tests) which
                // process holds a job's lease.
                node: secrets::new_id(&format!("worker_{}", std::process::id())),
                wake: Notify::new(),
            }),
        }
    }

    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// The unified CRM service (it shares this engine's page cache).
    pub fn crm(&self) -> Crm {
        self.inner.crm.clone()
    }

    pub fn config(&self) -> &SyncConfig {
        &self.inner.config
    }

    /// Queues a sync of a connection now (`POST /connections/sync`).
    /// Returns `false` when one was already queued; when one is running, it
    /// is asked to run again once it ends, so changes made meanwhile are
    /// picked up.
    pub async fn request_sync(
        &self,
        environment_id: &str,
        connection_id: &str,
    ) -> Result<bool, berth_store::StoreError> {
        let store = self.inner.platform.store();
        let dedup = format!("sync:{connection_id}");
        for _ in 0..2 {
            if self.enqueue_sync(environment_id, connection_id).await? {
                self.inner.wake.notify_one();
                return Ok(true);
            }
            if store.request_rerun(&dedup).await? {
                return Ok(true);
            }
            // Neither queued nor running: it ended in between; try again.
        }
        Ok(false)
    }

    async fn enqueue_sync(
        &self,
        environment_id: &str,
        connection_id: &str,
    ) -> Result<bool, berth_store::StoreError> {
        let id = secrets::new_id("job");
        let dedup = format!("sync:{connection_id}");
        self.inner
            .platform
            .store()
            .enqueue_job(
                &berth_store::NewJob {
                    id: &id,
                    kind: "sync",
                    environment_id: Some(environment_id),
                    connection_id: Some(connection_id),
                    dedup_key: Some(&dedup),
                    payload: "{}",
                    priority: 5,
                    max_attempts: 10,
                    run_at: now_ms(),
                },
                now_ms(),
            )
            .await
    }

    /// Runs the workers and the scheduler until `cancel` fires.
    pub fn spawn(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let sched = tokio::spawn(me.clone().scheduler(cancel.clone()));
            tokio::spawn(me.clone().backfill_keys(cancel.clone()));
            me.workers(cancel).await;
            let _ = sched.await;
        })
    }

    /// Writes the filter index entries of records stored before the
    /// index (or before its entries last changed), batch by batch; the
    /// index serves an object once it is done. Several workers may do the
    /// same object at once: each batch rewrites its records' entries
    /// whole, so they agree.
    async fn backfill_keys(self, cancel: CancellationToken) {
        let store = self.inner.platform.store().clone();
        let todo = match store.objects_missing_keys().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list objects to index; filters scan");
                return;
            }
        };
        for (conn, object) in todo {
            if cancel.is_cancelled() {
                return;
            }
            match store.build_record_keys(&conn, &object, &derive_keys).await {
                Ok(()) => {
                    tracing::info!(connection_id = %conn, object = %object, "filter index built")
                }
                Err(e) => tracing::warn!(connection_id = %conn, object = %object, error = %e,
                    "filter index build failed; filters on it scan until the next run"),
            }
        }
    }

    /// The interval (s) of an integration's connections that have none of
    /// their own: the catalog's, or the server's default.
    pub fn default_interval_secs(&self, integration_id: &str) -> i64 {
        self.inner
            .platform
            .catalog()
            .get(integration_id)
            .and_then(|i| i.sync_interval_secs)
            .map_or(self.inner.config.default_interval.as_secs() as i64, |s| {
                s as i64
            })
    }

    /// When a connection syncs next, counted from now.
    fn next_sync_for(&self, conn: &Connection) -> i64 {
        now_ms() + 1000 * self.default_interval_secs(&conn.integration_id)
    }

    async fn scheduler(self, cancel: CancellationToken) {
        let store = self.inner.platform.store().clone();
        let interval = self.inner.config.default_interval.as_secs() as i64;
        loop {
            match store
                .schedule_due_syncs(
                    now_ms(),
                    interval,
                    200,
                    |c| self.default_interval_secs(&c.integration_id),
                    |c| (secrets::new_id("job"), format!("sync:{}", c.id)),
                )
                .await
            {
                Ok(n) if n > 0 => {
                    tracing::debug!(queued = n, "scheduled syncs");
                    self.inner.wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scheduling syncs failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.inner.config.poll.max(Duration::from_secs(1))) => {}
            }
        }
    }

    async fn workers(&self, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.inner.config.concurrency.max(1)));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let free = slots.available_permits() as i64;
            if free > 0 {
                let lease = self.inner.config.lease.as_millis() as i64;
                match self
                    .inner
                    .platform
                    .store()
                    .claim_jobs(&["sync"], &self.inner.node, now_ms(), lease, free)
                    .await
                {
                    Ok(jobs) => {
                        for job in jobs {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let me = self.clone();
                            let cancel = cancel.clone();
                            running.spawn(async move {
                                me.run_job(job, cancel).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming jobs failed"),
                }
            }
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.config.poll) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        // Jobs stop at their next page boundary; their leases then expire
        // and another worker resumes them from the checkpoint.
        while running.join_next().await.is_some() {}
    }

    async fn run_job(&self, job: Job, cancel: CancellationToken) {
        let store = self.inner.platform.store();
        let result = self.sync_connection(&job, &cancel).await;
        let now = now_ms();
        match result {
            Ok(()) => {
                if let Err(e) = store.complete_job(&job.id, &self.inner.node, now).await {
                    tracing::warn!(error = %e, job = %job.id, "could not complete a job");
                }
                let rerun = matches!(store.get_job(&job.id).await, Ok(Some(j)) if j.payload.contains("rerun"));
                if let (true, Some(env), Some(conn)) =
                    (rerun, &job.environment_id, &job.connection_id)
                    && let Err(e) = self.enqueue_sync(env, conn).await
                {
                    tracing::warn!(error = %e, job = %job.id, "could not queue a requested re-run");
                }
                self.inner.wake.notify_one();
            }
            Err(RunError::LeaseLost) => {}
            Err(_) if cancel.is_cancelled() => {}
            Err(e) => {
                let retry_at = if job.attempts >= job.max_attempts {
                    None
                } else {
                    Some(now + retry_delay_ms(job.attempts, &e))
                };
                tracing::warn!(job = %job.id, connection = ?job.connection_id, attempt = job.attempts,
                    dead = retry_at.is_none(), error = %e, "sync failed");
                let _ = store
                    .fail_job(&job.id, &self.inner.node, &e.to_string(), retry_at, now)
                    .await;
                if retry_at.is_none()
                    && let Some(c) = &job.connection_id
                {
                    // A dead job still leaves the connection on its schedule.
                    let at = now + self.inner.config.default_interval.as_millis() as i64;
                    let _ = store.init_next_sync(c, at).await;
                }
            }
        }
    }

    async fn sync_connection(&self, job: &Job, cancel: &CancellationToken) -> Result<(), RunError> {
        let store = self.inner.platform.store();
        let (Some(env), Some(conn_id)) = (&job.environment_id, &job.connection_id) else {
            return Ok(());
        };
        let Some(conn) = store.get_connection(env, conn_id).await? else {
            return Ok(()); // deleted meanwhile
        };
        let Some(connector) = berth_connectors::crm(&conn.integration_id) else {
            // Nothing to sync: everything there is, is synced.
            self.advance_status(&conn, status::READY).await?;
            return Ok(());
        };
        if conn.auth_state != "ok" {
            self.emit(&conn, "sync.failed", json!({"error": "the connection needs re-authentication", "code": "CONNECTION_NEEDS_REAUTH"})).await?;
            store
                .init_next_sync(&conn.id, self.next_sync_for(&conn))
                .await?;
            return Ok(());
        }
        let objects = connector.objects();
        store
            .ensure_sync_states(&conn.environment_id, &conn.id, objects, now_ms())
            .await?;
        let mut totals = serde_json::Map::new();
        let mut unavailable = serde_json::Map::new();
        // Up to three passes: initial, then backfill, then (for connections
        // past both) one incremental pass.
        for _ in 0..3 {
            let states = store.sync_states(&conn.id).await?;
            let phase = pass_phase(&states, objects);
            for object in objects {
                let Some(st) = states.iter().find(|s| s.object == *object) else {
                    continue;
                };
                if st.phase != phase || unavailable.contains_key(*object) {
                    continue;
                }
                // Set aside until the next full re-sync is due.
                if st.run_state == "unavailable" && !self.retry_unavailable(st, now_ms()) {
                    continue;
                }
                if cancel.is_cancelled() {
                    return Err(RunError::LeaseLost);
                }
                match self.run_object(job, &conn, connector, st).await {
                    Ok(counts) => {
                        let e = totals
                            .entry(object.to_string())
                            .or_insert(json!({"created": 0, "updated": 0, "deleted": 0}));
                        for (k, n) in [
                            ("created", counts.0),
                            ("updated", counts.1),
                            ("deleted", counts.2),
                        ] {
                            e[k] = json!(e[k].as_u64().unwrap_or(0) + n);
                        }
                    }
                    Err(RunError::Connector(e)) if refused_for_good(&e) => {
                        // One object the account lacks, or a scope the
                        // connection was not granted, must not hold back
                        // the others: set it aside and go on.
                        let msg = e.to_string();
                        store
                            .mark_object_unavailable(&conn.id, object, &msg, now_ms())
                            .await?;
                        tracing::warn!(connection = %conn.id, object, error = %msg, "object unavailable");
                        self.emit(
                            &conn,
                            "sync.object_unavailable",
                            json!({"object": object, "error": msg}),
                        )
                        .await?;
                        unavailable.insert(object.to_string(), json!(msg));
                    }
                    Err(RunError::Connector(e)) => {
                        let msg = e.to_string();
                        store
                            .set_sync_error(&conn.id, object, &msg, now_ms())
                            .await?;
                        self.emit(
                            &conn,
                            "sync.failed",
                            json!({"object": object, "error": msg}),
                        )
                        .await?;
                        return Err(RunError::Connector(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            match phase {
                "initial" => self.advance_status(&conn, status::INITIAL_SYNCED).await?,
                "backfill" => self.advance_status(&conn, status::READY).await?,
                _ => break,
            }
        }
        let mut done = json!({"objects": totals});
        if !unavailable.is_empty() {
            done["unavailable"] = Value::Object(unavailable);
        }
        self.emit(&conn, "sync.completed", done).await?;
        store
            .init_next_sync(&conn.id, self.next_sync_for(&conn))
            .await?;
        Ok(())
    }

    /// One run of one object, from its checkpoint to the end of the
    /// listing. Returns (created, updated, deleted).
    async fn run_object(
        &self,
        job: &Job,
        conn: &Connection,
        connector: &dyn CrmConnector,
        st: &SyncState,
    ) -> Result<(u64, u64, u64), RunError> {
        let store = self.inner.platform.store();
        let object = st.object.as_str();
        let now = now_ms();
        let since = match st.phase.as_str() {
            "initial" => Some(now - self.inner.config.initial_window.as_millis() as i64),
            "backfill" => None,
            // Incremental runs miss what a provider forgets without a
            // tombstone (HubSpot GDPR deletes, Salesforce records purged
            // from the recycle bin, merges) and records re-dated into the
            // past; a periodic full listing with mark-and-sweep catches them.
            _ if self.full_due(st, now) => None,
            // A little overlap: records modified in the same millisecond
            // as the mark are read again (and found unchanged).
            _ => st.high_water.map(|h| h - 1000),
        };
        let run_id = secrets::new_id("run");
        store
            .start_sync_run(&conn.id, object, &run_id, since, now)
            .await?;
        let st = store
            .sync_states(&conn.id)
            .await?
            .into_iter()
            .find(|s| s.object == object)
            .ok_or(RunError::LeaseLost)?;
        let run_id = st.run_id.clone().unwrap_or(run_id);
        let provider = ConnProvider::new(&self.inner.platform, conn);
        let unified = berth_unified::crm::object(object);
        let incremental = st.phase == "incremental";
        // A run without `since` lists everything: the backfill, an
        // incremental run of an object that had nothing yet, and a periodic
        // full re-sync (also when a crashed one resumes).
        let full = st.phase != "initial" && st.run_since.is_none();
        let prefix = unified.map(|o| o.event_prefix()).filter(|_| incremental);
        let mut counts = (0, 0, 0);
        // Records written through the API while this listing runs may sort
        // before its cursor or arrive after its end; the sweep must not take
        // them for deleted.
        let listing_started = now_ms();
        // The sweep finds a full listing's deletes; tombstones are for
        // runs that only see changes.
        let include_deleted = incremental && !full && connector.tombstones(object);
        let list = |cursor: Option<String>| {
            let provider = &provider;
            async move {
                let req = ListRequest {
                    since: st.run_since,
                    cursor,
                    include_deleted,
                };
                connector.list(provider, object, &req).await
            }
        };
        // Pages go to a writer task while this one fetches and parses the
        // next: provider latency, parsing and the store's write use both
        // cores. When the writer falls behind, the pages waiting for it are
        // written in one transaction (group commit): SQLite's WAL then
        // writes each touched index page once per group instead of once
        // per page. The checkpoint moves with every transaction, so a
        // crash resumes after the last group written; pages fetched ahead
        // of a failed write are dropped.
        let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(WRITE_AHEAD_PAGES);
        let writer = tokio::spawn(write_pages(
            PageJob {
                store: store.clone(),
                conn: conn.clone(),
                object: object.to_string(),
                run_id: run_id.clone(),
                prefix: prefix.clone(),
                job_id: job.id.clone(),
                node: self.inner.node.clone(),
                lease: self.inner.config.lease,
                refresh_links: incremental && full,
            },
            rx,
        ));
        let mut cursor = st.cursor.clone();
        let mut fetch_error = None;
        loop {
            let page = match list(cursor.take()).await {
                Ok(p) => p,
                Err(e) => {
                    fetch_error = Some(e);
                    break;
                }
            };
            let writes: Vec<RecordWrite> = page
                .records
                .iter()
                .map(|r| record_write(conn, connector, object, r, prefix.is_some()))
                .collect();
            let next = page.next_cursor.clone();
            let batch = Batch {
                high_water: page.records.iter().filter_map(|r| r.modified_time).max(),
                next_cursor: page.next_cursor,
                total: page.total,
                writes,
            };
            // A closed channel means the writer failed; its error is
            // returned below.
            if tx.send(batch).await.is_err() {
                break;
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        drop(tx);
        let written = match writer.await {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let written = written.map_err(|e| match e {
            berth_store::StoreError::RunFenced | berth_store::StoreError::LeaseLost => {
                RunError::LeaseLost
            }
            e => RunError::Store(e),
        })?;
        if let Some(e) = fetch_error {
            return Err(e.into());
        }
        counts.0 += written.created;
        counts.1 += written.updated;
        counts.2 += written.deleted;
        if full {
            counts.2 += self
                .sweep(conn, object, &run_id, listing_started, incremental)
                .await?;
        }
        let next = match st.phase.as_str() {
            "initial" => "backfill",
            _ => "incremental",
        };
        store
            .finish_sync_run(&conn.id, object, next, full, now_ms())
            .await?;
        if !store.keys_ready(&conn.id, object).await? {
            store
                .build_record_keys(&conn.id, object, &derive_keys)
                .await?;
        }
        Ok(counts)
    }

    /// Whether an incremental object is due for a full listing.
    /// Whether an object set aside as unavailable is tried again: at the
    /// next full re-sync (its interval after it was set aside), or at
    /// every run when full re-syncs are off.
    fn retry_unavailable(&self, st: &SyncState, now: i64) -> bool {
        match self.inner.config.full_resync {
            None => true,
            Some(every) => now - st.updated_at >= every.as_millis() as i64,
        }
    }

    fn full_due(&self, st: &SyncState, now: i64) -> bool {
        match (self.inner.config.full_resync, st.full_at) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(every), Some(at)) => now - at >= every.as_millis() as i64,
        }
    }

    /// Mark and sweep after a full listing: live records the run did not
    /// see are gone at the provider, unless that is implausibly many.
    async fn sweep(
        &self,
        conn: &Connection,
        object: &str,
        run_id: &str,
        synced_before: i64,
        emit: bool,
    ) -> Result<u64, RunError> {
        let store = self.inner.platform.store();
        let live = store.count_records(&conn.id, object).await?;
        let unseen = store
            .unseen_records(&conn.id, object, run_id, synced_before, 100_000)
            .await?;
        if unseen.is_empty() {
            return Ok(0);
        }
        let share = unseen.len() as f64 / live.max(1) as f64;
        if live >= 10 && share > self.inner.config.max_delete_share {
            let msg = format!(
                "refused to mark {} of {live} {object} deleted in one run (more than {:.0}%); check the connection's permissions, then sync again",
                unseen.len(),
                self.inner.config.max_delete_share * 100.0
            );
            tracing::warn!(connection = %conn.id, object, "{msg}");
            store
                .set_sync_error(&conn.id, object, &msg, now_ms())
                .await?;
            self.emit(
                conn,
                "sync.failed",
                json!({"object": object, "error": msg, "code": "DELETE_GUARD"}),
            )
            .await?;
            return Ok(0);
        }
        let ids: Vec<String> = unseen.iter().map(|r| r.native_id.clone()).collect();
        let mut event_ids = Vec::new();
        let mut payloads = Vec::new();
        let et = format!("object.crm.{object}.deleted");
        if emit {
            let v1_type = berth_unified::crm::object(object).map_or(object, |o| o.v1_type);
            for r in &unseen {
                event_ids.push(secrets::new_id("evt"));
                payloads.push(json!({"id": r.native_id, "nativeId": r.native_id, "v1Id": berth_unified::crm::v1_id(v1_type, &r.uid)}).to_string());
            }
        }
        let now = now_ms();
        let events: Vec<NewEvent<'_>> = event_ids
            .iter()
            .zip(&payloads)
            .map(|(id, p)| NewEvent {
                id,
                environment_id: &conn.environment_id,
                connection_id: Some(&conn.id),
                event_type: &et,
                payload: p,
                created_at: now,
            })
            .collect();
        store
            .mark_records_deleted(&conn.id, object, &ids, &events, now)
            .await?;
        Ok(ids.len() as u64)
    }

    /// Moves the connection forward to `to` (never back), announcing it.
    async fn advance_status(&self, conn: &Connection, to: &str) -> Result<(), RunError> {
        let store = self.inner.platform.store();
        let order = [
            status::NEW_CONNECTION,
            status::INITIAL_SYNCED,
            status::READY,
        ];
        let current = store
            .get_connection(&conn.environment_id, &conn.id)
            .await?
            .map(|c| c.status)
            .unwrap_or_default();
        let (Some(from), Some(target)) = (
            order.iter().position(|s| *s == current),
            order.iter().position(|s| *s == to),
        ) else {
            return Ok(());
        };
        // Step through each status so every change is announced.
        for step in from + 1..=target {
            let now = now_ms();
            let payload = json!({"status": order[step]}).to_string();
            let id1 = secrets::new_id("evt");
            let id2 = secrets::new_id("evt");
            let mut events = vec![NewEvent {
                id: &id1,
                environment_id: &conn.environment_id,
                connection_id: Some(&conn.id),
                event_type: "connection.status_changed",
                payload: &payload,
                created_at: now,
            }];
            if order[step] == status::INITIAL_SYNCED {
                events.push(NewEvent {
                    id: &id2,
                    environment_id: &conn.environment_id,
                    connection_id: Some(&conn.id),
                    event_type: "system.sync.initial.complete",
                    payload: "{}",
                    created_at: now,
                });
            }
            store
                .set_connection_status(&conn.id, order[step - 1], order[step], &events, now)
                .await?;
        }
        self.inner.platform.forget_connection(&conn.id);
        Ok(())
    }

    async fn emit(
        &self,
        conn: &Connection,
        event_type: &str,
        payload: Value,
    ) -> Result<(), RunError> {
        let id = secrets::new_id("evt");
        let payload = payload.to_string();
        self.inner
            .platform
            .store()
            .insert_event(&NewEvent {
                id: &id,
                environment_id: &conn.environment_id,
                connection_id: Some(&conn.id),
                event_type,
                payload: &payload,
                created_at: now_ms(),
            })
            .await?;
        Ok(())
    }
}

/// A provider answer that will not change by asking again: the object is
/// missing (404), forbidden (403, a scope not granted), refused as asked
/// (400, an object type the account does not have), or not supported by
/// the connector. Rate limits, 401s and outages stay retried.
fn refused_for_good(e: &ConnectorError) -> bool {
    match e {
        ConnectorError::NotFound | ConnectorError::Unsupported(_) => true,
        ConnectorError::Provider { status, .. } => matches!(status, 400 | 403 | 404 | 405 | 410),
        _ => false,
    }
}

/// The phase this pass works on: the earliest any object is still in.
fn pass_phase(states: &[SyncState], objects: &[&str]) -> &'static str {
    let of = |p: &str| {
        states
            .iter()
            .any(|s| objects.contains(&s.object.as_str()) && s.phase == p)
    };
    if of("initial") {
        "initial"
    } else if of("backfill") {
        "backfill"
    } else {
        "incremental"
    }
}

/// Exponential backoff with ±20% jitter (10 s, 20 s, … capped at an hour),
/// or the provider's own wait when it rate-limited us.
fn retry_delay_ms(attempts: i32, e: &RunError) -> i64 {
    if let RunError::Connector(ConnectorError::Call(CallError::RateLimited {
        retry_after_secs,
        ..
    })) = e
    {
        return (*retry_after_secs as i64).max(1) * 1000;
    }
    let base = 10_000i64
        .saturating_mul(1 << attempts.clamp(0, 9))
        .min(3_600_000);
    let jitter = rand::random_range(0.8..1.2);
    (base as f64 * jitter) as i64
}

/// Listed pages queued for the writer; beyond this the fetcher waits.
const WRITE_AHEAD_PAGES: usize = 32;
/// A writer transaction takes queued pages up to this many records.
const GROUP_RECORDS: usize = 4000;

/// What a run's writer needs besides the pages.
struct PageJob {
    store: berth_store::Store,
    conn: Connection,
    object: String,
    run_id: String,
    prefix: Option<String>,
    job_id: String,
    node: String,
    lease: Duration,
    /// A periodic full re-sync rewrites every listed record's links.
    refresh_links: bool,
}

/// One listed page (or several merged), with the checkpoint after it.
struct Batch {
    writes: Vec<RecordWrite>,
    high_water: Option<i64>,
    next_cursor: Option<String>,
    total: Option<i64>,
}

impl Batch {
    /// Appends a later page: its checkpoint wins, and a record listed
    /// twice (providers re-list records sharing a modified time across a
    /// page boundary) is written once, as last listed.
    fn merge(&mut self, later: Batch) {
        let ids: std::collections::HashSet<&str> =
            later.writes.iter().map(|w| w.native_id.as_str()).collect();
        self.writes.retain(|w| !ids.contains(w.native_id.as_str()));
        self.writes.extend(later.writes);
        self.high_water = self.high_water.max(later.high_water);
        self.next_cursor = later.next_cursor;
        self.total = later.total.or(self.total);
    }
}

/// The writer of one run: each transaction writes what has queued up
/// (at least one page, up to `GROUP_RECORDS` records) with the run's
/// checkpoint and the job's lease.
async fn write_pages(
    j: PageJob,
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
) -> Result<berth_store::PageOutcome, berth_store::StoreError> {
    let mut total = berth_store::PageOutcome::default();
    while let Some(mut b) = rx.recv().await {
        while b.writes.len() < GROUP_RECORDS {
            match rx.try_recv() {
                Ok(more) => b.merge(more),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let out = j
            .store
            .apply_page(&PageWrite {
                environment_id: &j.conn.environment_id,
                connection_id: &j.conn.id,
                object: &j.object,
                run_id: Some(&j.run_id),
                records: &b.writes,
                event_prefix: j.prefix.as_deref(),
                next_cursor: b.next_cursor.as_deref(),
                high_water: b.high_water,
                total: b.total,
                now,
                lease: Some((&j.job_id, &j.node, now + j.lease.as_millis() as i64)),
                refresh_links: j.refresh_links,
                // A backfill writes no index entries record by record; the
                // object's index is built in key order when it is listed.
                defer_keys: j.prefix.is_none(),
            })
            .await?;
        total.created += out.created;
        total.updated += out.updated;
        total.deleted += out.deleted;
        total.unchanged += out.unchanged;
    }
    Ok(total)
}

/// A stored record's filter index keys (see `berth_unified::crm::index_keys`).
fn derive_keys(r: &berth_store::StoredRecord) -> Vec<(&'static str, String)> {
    let Some(o) = berth_unified::crm::object(&r.object) else {
        return Vec::new();
    };
    let data: serde_json::Map<String, Value> = serde_json::from_str(&r.data).unwrap_or_default();
    berth_unified::crm::index_keys(o, &r.connection_id, &data)
}

/// A provider record → the row written, with its event payload.
pub fn record_write(
    conn: &Connection,
    connector: &dyn CrmConnector,
    object: &str,
    r: &berth_connectors::NativeRecord,
    with_event: bool,
) -> RecordWrite {
    let uid = berth_unified::crm::uid(&conn.id, object, &r.native_id);
    // Serialised once: stored as is and hashed as is.
    let data = serde_json::to_string(&r.data).unwrap_or_default();
    let native = r.native.to_string();
    let hash = berth_unified::crm::content_hash_of(&data, &native);
    // The event payload is built only for writes that may emit one
    // (incremental runs and API writes); a backfill of a million records
    // would otherwise render each of them once more for nothing.
    let (event_id, event_payload) = if with_event {
        let (v1_id, record) = match berth_unified::crm::object(object) {
            Some(o) => {
                let view = berth_unified::crm::RecordView {
                    connection_id: &conn.id,
                    native_id: &r.native_id,
                    uid: &uid,
                    data: &r.data,
                    native: &r.native,
                    created_time: r.created_time,
                    modified_time: r.modified_time,
                };
                (
                    berth_unified::crm::v1_id(o.v1_type, &uid),
                    berth_unified::crm::render_v1(o, &view, false),
                )
            }
            None => (uid.clone(), Value::Null),
        };
        (
            secrets::new_id("evt"),
            json!({"id": r.native_id, "nativeId": r.native_id, "v1Id": v1_id, "record": record})
                .to_string(),
        )
    } else {
        (String::new(), String::new())
    };
    RecordWrite {
        native_id: r.native_id.clone(),
        hash,
        data,
        native,
        created_time: r.created_time,
        modified_time: r.modified_time,
        deleted: r.deleted,
        event_id,
        event_payload,
        keys: match berth_unified::crm::object(object) {
            Some(o) if !r.deleted => berth_unified::crm::index_keys(o, &conn.id, &r.data),
            _ => Vec::new(),
        },
        uid,
        links: berth_unified::crm::reverse_links(object, &r.data, |key| {
            connector.two_way(object, key)
        })
        .into_iter()
        .map(|l| berth_store::RecordLink {
            object: l.object,
            native_id: l.native_id,
            key: l.key,
        })
        .collect(),
    }
}
