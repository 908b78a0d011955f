//! The unified CRM service behind v1 `/crm/*` and v2 `/unifications/crm/*`:
//! reads from the store (or live from the provider with v2 `synced:false`),
//! writes through the connector and re-reads the written record into the
//! store before answering.

use berth_connections::{Platform, now_ms, status};
use berth_connectors::{CallError, ConnectorError, CrmConnector, ListRequest, NativeRecord};
use berth_store::{Connection, KeyProbe, PageWrite, RecordPage, StoredRecord};
use berth_unified::crm::{self, Object, RecordView};
use berth_unified::filter::Probe;
use berth_unified::{Filter, FilterError};
use serde_json::{Map, Value};

use std::sync::Arc;

use bytes::Bytes;

use crate::pages::Pages;
use crate::{ConnProvider, record_write};

/// Which API generation is asking (ids, field names, shapes differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// The connection has not finished its initial sync (v1 409).
    #[error("Data still syncing: the connection's initial sync has not finished yet")]
    Syncing,
    #[error("{0}")]
    NotSupported(String),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The provider refused a write; its field errors ride along.
    #[error("{message}")]
    Provider {
        status: u16,
        message: String,
        errors: Vec<Value>,
    },
    #[error("{message}")]
    RateLimited {
        retry_after_secs: u64,
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
    /// See `PlatformError::StoreUnavailable`.
    #[error("the store is unavailable for a moment; retry shortly")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<berth_store::StoreError> for CrmError {
    fn from(e: berth_store::StoreError) -> Self {
        if e.is_unavailable() {
            CrmError::StoreUnavailable(Box::new(e))
        } else {
            CrmError::Internal(Box::new(e))
        }
    }
}

impl From<FilterError> for CrmError {
    fn from(e: FilterError) -> Self {
        CrmError::BadRequest {
            code: "INVALID_FILTER",
            message: e.to_string(),
        }
    }
}

impl From<ConnectorError> for CrmError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::Provider {
                status,
                message,
                errors,
            } => CrmError::Provider {
                status,
                message,
                errors,
            },
            ConnectorError::NotFound => CrmError::NotFound("not found at the provider".into()),
            ConnectorError::Unsupported(m) => CrmError::NotSupported(m),
            ConnectorError::Call(CallError::RateLimited {
                retry_after_secs,
                message,
            }) => CrmError::RateLimited {
                retry_after_secs,
                message,
            },
            ConnectorError::Call(CallError::Auth(m)) => CrmError::Provider {
                status: 401,
                message: m,
                errors: Vec::new(),
            },
            ConnectorError::Call(CallError::Refused { code, message }) => {
                CrmError::BadRequest { code, message }
            }
            ConnectorError::Call(c) => CrmError::Unavailable(c.to_string()),
            ConnectorError::Decode(m) => CrmError::Unavailable(m),
        }
    }
}

pub type Result<T, E = CrmError> = std::result::Result<T, E>;

/// How to show records.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// v1 `allFields` / v2 `include.$native`.
    pub raw: bool,
    /// v2 `associations`: canonical keys to fill (`None`: all).
    pub associations: Option<Vec<&'static str>>,
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub struct ListArgs {
    pub cursor: Option<String>,
    pub limit: Option<i64>,
    pub filters: Value,
    /// v2 `synced: false`: read live from the provider.
    pub live: bool,
}

/// A stored record's canonical data with the reverse associations other
/// records imply on it.
fn merged(r: &StoredRecord, reverse: &Reverse) -> Map<String, Value> {
    let mut data: Map<String, Value> = serde_json::from_str(&r.data).unwrap_or_default();
    if let Some(links) = reverse.get(&r.native_id) {
        let links: Vec<(&str, &str)> = links
            .iter()
            .map(|(k, f)| (k.as_str(), f.as_str()))
            .collect();
        crm::merge_reverse(&mut data, &links);
    }
    data
}

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
/// By default a filtered list examines at most this many stored rows per
/// call and then answers with what it found and a cursor to go on.
pub const SCAN_BUDGET: usize = 50_000;
/// The filter index serves a condition that admits at most this many
/// records; past it the condition matches densely enough that a scan in
/// store order finds a page as fast.
pub const INDEX_CANDIDATES: usize = 20_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct LiveCursor {
    c: String,
}

/// The service. Cheap to clone.
#[derive(Clone)]
pub struct Crm {
    pub(crate) platform: Platform,
    pages: Arc<Pages>,
    pub(crate) scan_budget: usize,
    use_index: bool,
}

impl Crm {
    /// The service with a rendered-page cache of up to `page_cache_bytes`
    /// (0: none).
    pub fn new(platform: Platform, page_cache_bytes: u64) -> Self {
        Self {
            platform,
            pages: Arc::new(Pages::new(page_cache_bytes)),
            scan_budget: SCAN_BUDGET,
            use_index: true,
        }
    }

    /// The same service reading filters by scanning only, never from the
    /// filter index (the reference the index is tested against).
    pub fn without_index(mut self) -> Self {
        self.use_index = false;
        self
    }

    /// The same service with another scan budget (see [`SCAN_BUDGET`]).
    pub fn with_scan_budget(mut self, rows: usize) -> Self {
        self.scan_budget = rows.max(1);
        self
    }

    /// The unified object named by a path, or a clear 404.
    pub fn object(name: &str, generation: Generation) -> Result<&'static Object> {
        let o = match generation {
            Generation::V1 => crm::by_v1_plural(name).or_else(|| crm::by_v1_singular(name)),
            Generation::V2 => crm::object(name),
        };
        o.ok_or_else(|| CrmError::NotFound(format!("unknown CRM object `{name}`")))
    }

    /// The store sequence a signed cursor of `scope` stands for (0: from
    /// the start).
    pub(crate) fn store_position(&self, scope: &str, cursor: Option<&str>) -> Result<i64> {
        match cursor.filter(|c| !c.is_empty()) {
            None => Ok(0),
            Some(c) => self
                .platform
                .cursors()
                .decode(scope, c)
                .map_err(|e| CrmError::BadRequest {
                    code: "INVALID_CURSOR",
                    message: e.to_string(),
                }),
        }
    }

    /// The connector of the connection's integration (whatever its sync
    /// status: metadata and account info need no synced data).
    pub(crate) fn connector(conn: &Connection) -> Result<&'static dyn CrmConnector> {
        berth_connectors::crm(&conn.integration_id).ok_or_else(|| {
            CrmError::NotSupported(format!(
                "the unified CRM API is not available for integration `{}` yet",
                conn.integration_id
            ))
        })
    }

    /// The connector, once the connection may be served.
    pub(crate) async fn ready(&self, conn: &Connection) -> Result<&'static dyn CrmConnector> {
        let connector = Self::connector(conn)?;
        if conn.status == status::NEW_CONNECTION {
            // The hot cache may hold a status a second old; ask the store.
            let fresh = self
                .platform
                .store()
                .get_connection(&conn.environment_id, &conn.id)
                .await?;
            if fresh.is_none_or(|c| c.status == status::NEW_CONNECTION) {
                return Err(CrmError::Syncing);
            }
        }
        Ok(connector)
    }

    fn render(
        &self,
        o: &Object,
        conn: &Connection,
        r: &StoredRecord,
        generation: Generation,
        view: &View,
        reverse: &Reverse,
    ) -> Value {
        let data = merged(r, reverse);
        // The raw record is the larger half of a row and is shown only on
        // request (`allFields` / `$native`): parse it only then.
        let native: Value = if view.raw {
            serde_json::from_str(&r.native).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let rv = RecordView {
            connection_id: &conn.id,
            native_id: &r.native_id,
            uid: &r.uid,
            data: &data,
            native: &native,
            created_time: r.created_time,
            modified_time: r.modified_time,
        };
        show(o, &rv, generation, view)
    }

    /// The reverse associations of stored records (see
    /// [`crm::reverse_links`]), by native id.
    async fn reverse(
        &self,
        conn: &Connection,
        o: &Object,
        rows: &[StoredRecord],
    ) -> Result<Reverse> {
        let mut out = Reverse::new();
        if rows.is_empty() || crm::reverse_sources(o).is_empty() {
            return Ok(out);
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.native_id.as_str()).collect();
        for (native_id, key, from) in self
            .platform
            .store()
            .reverse_links(&conn.id, o.name, &ids)
            .await?
        {
            out.entry(native_id).or_default().push((key, from));
        }
        Ok(out)
    }

    fn render_native(
        &self,
        o: &Object,
        conn: &Connection,
        r: &NativeRecord,
        generation: Generation,
        view: &View,
    ) -> Value {
        let uid = crm::uid(&conn.id, o.name, &r.native_id);
        let rv = RecordView {
            connection_id: &conn.id,
            native_id: &r.native_id,
            uid: &uid,
            data: &r.data,
            native: &r.native,
            created_time: r.created_time,
            modified_time: r.modified_time,
        };
        show(o, &rv, generation, view)
    }

    fn scope(
        conn: &Connection,
        o: &Object,
        generation: Generation,
        filters: &Value,
        live: bool,
    ) -> String {
        let fh = crm::content_hash(filters, &Value::Null);
        format!(
            "crm:{}:{}:{:?}:{}:{}",
            conn.id,
            o.name,
            generation,
            if live { "live" } else { "store" },
            &fh[..12]
        )
    }

    /// One page of records, in store order (a stable, unique order by
    /// first-insertion sequence), filtered.
    pub async fn list(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        args: &ListArgs,
        view: &View,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let connector = self.ready(conn).await?;
        let filter = Filter::parse(o, &args.filters, generation == Generation::V2)?;
        let limit = match args.limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => {
                return Err(CrmError::BadRequest {
                    code: "INVALID_LIMIT",
                    message: format!("limit must be between 1 and {MAX_LIMIT}"),
                });
            }
        };
        let scope = Self::scope(conn, o, generation, &args.filters, args.live);
        let cursors = self.platform.cursors();
        if args.live {
            return self
                .list_live(conn, connector, o, generation, args, view, &filter, &scope)
                .await;
        }
        let mut after = self.store_position(&scope, args.cursor.as_deref())?;
        let mut out = Vec::new();
        if let Some(candidates) = self.candidates(conn, o, generation, &filter, after).await? {
            // The index named every record that can pass, in store order.
            for part in candidates.chunks(500) {
                let rows = self
                    .platform
                    .store()
                    .records_by_seqs(&conn.environment_id, &conn.id, o.name, part)
                    .await?;
                let reverse = self.reverse(conn, o, &rows).await?;
                for r in &rows {
                    if self.passes(o, conn, r, generation, view, &reverse, &filter, &mut out)
                        && out.len() as i64 > limit
                    {
                        out.pop();
                        return Ok((out, Some(cursors.encode(&scope, &after))));
                    }
                    after = r.seq;
                }
            }
            return Ok((out, None));
        }
        let mut scanned = 0usize;
        let chunk = if filter.is_empty() { limit + 1 } else { 500 };
        loop {
            let rows = self
                .platform
                .store()
                .list_records(&RecordPage {
                    environment_id: &conn.environment_id,
                    connection_id: &conn.id,
                    object: o.name,
                    after_seq: after,
                    limit: chunk,
                    include_deleted: false,
                })
                .await?;
            let exhausted = (rows.len() as i64) < chunk;
            let reverse = self.reverse(conn, o, &rows).await?;
            for r in &rows {
                scanned += 1;
                if self.passes(o, conn, r, generation, view, &reverse, &filter, &mut out)
                    && out.len() as i64 > limit
                {
                    // One more match exists: the page ends at the last one kept.
                    out.pop();
                    return Ok((out, Some(cursors.encode(&scope, &after))));
                }
                after = r.seq;
            }
            if exhausted {
                return Ok((out, None));
            }
            if scanned >= self.scan_budget {
                return Ok((out, Some(cursors.encode(&scope, &after))));
            }
        }
    }

    /// Renders a stored record into `out` when it passes `filter`.
    #[allow(clippy::too_many_arguments)]
    fn passes(
        &self,
        o: &Object,
        conn: &Connection,
        r: &StoredRecord,
        generation: Generation,
        view: &View,
        reverse: &Reverse,
        filter: &Filter,
        out: &mut Vec<Value>,
    ) -> bool {
        let v = self.render(o, conn, r, generation, view, reverse);
        let pass = filter.is_empty()
            || v.as_object().is_some_and(|m| {
                if generation == Generation::V2 && filter.reads_associations() {
                    // A v2 answer shows only the associations asked for;
                    // the filter reads them all.
                    let data = merged(r, reverse);
                    let empty = Map::new();
                    let assoc = data
                        .get("associations")
                        .and_then(Value::as_object)
                        .unwrap_or(&empty);
                    filter.matches_with(m, Some(assoc))
                } else {
                    filter.matches(m)
                }
            });
        if pass {
            out.push(v);
        }
        pass
    }

    /// The store sequences after `after` of every record that can pass
    /// `filter`, from the filter index; `None` when the index cannot
    /// narrow it (no indexed condition, none selective enough, or the
    /// object's entries not yet backfilled): the caller scans.
    async fn candidates(
        &self,
        conn: &Connection,
        o: &Object,
        generation: Generation,
        filter: &Filter,
        after: i64,
    ) -> Result<Option<Vec<i64>>> {
        if filter.is_empty() || !self.use_index {
            return Ok(None);
        }
        let probes = filter.probes(&conn.id, generation == Generation::V2);
        if probes.is_empty() {
            return Ok(None);
        }
        let store = self.platform.store();
        if !store.keys_ready(&conn.id, o.name).await? {
            return Ok(None);
        }
        for p in &probes {
            let resolved;
            let probe = match p {
                Probe::Nothing => return Ok(Some(Vec::new())),
                Probe::Values { key, values } => KeyProbe::Values {
                    key,
                    values,
                    linked_from: None,
                },
                Probe::Linked {
                    key,
                    target,
                    uids,
                    natives,
                } => {
                    resolved = match natives {
                        Some(n) => n.clone(),
                        // v1 ids: the records links come from are stored.
                        None => store
                            .records_by_ids(&conn.environment_id, &conn.id, target, uids, false)
                            .await?
                            .into_iter()
                            .map(|r| r.native_id)
                            .collect(),
                    };
                    KeyProbe::Values {
                        key,
                        values: uids,
                        linked_from: Some((target, &resolved)),
                    }
                }
                Probe::Prefix { key, lo, hi } => KeyProbe::Range { key, lo, hi },
                Probe::Time { modified, lo, hi } => KeyProbe::Time {
                    modified: *modified,
                    lo: *lo,
                    hi: *hi,
                },
            };
            if let Some(seqs) = store
                .probe_keys(&conn.id, o.name, &probe, after, INDEX_CANDIDATES)
                .await?
            {
                return Ok(Some(seqs));
            }
        }
        Ok(None)
    }

    /// A list page as JSON bytes, shaped by `shape` (which `kind` names:
    /// the same kind must always shape the same way). Store reads are
    /// served from the page cache while the object's records are
    /// unchanged; live reads never are.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_bytes(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        args: &ListArgs,
        view: &View,
        kind: &'static str,
        shape: impl FnOnce(Vec<Value>, Option<String>) -> Value,
    ) -> Result<Bytes> {
        if args.live {
            let (items, next) = self.list(conn, o, generation, args, view).await?;
            return Ok(to_bytes(&shape(items, next)));
        }
        self.ready(conn).await?;
        // Read before the rows (see `pages`).
        // Records of other objects add reverse associations to these.
        let store = self.platform.store();
        let version = crm::reverse_sources(o)
            .into_iter()
            .fold(store.record_version(&conn.id, o.name), |v, s| {
                v.wrapping_add(store.record_version(&conn.id, s))
            });
        let key = format!(
            "{}\u{1f}{}\u{1f}{kind}\u{1f}{generation:?}\u{1f}{}\u{1f}{:?}\u{1f}{}\u{1f}{:?}\u{1f}{}",
            conn.id,
            o.name,
            view.raw,
            view.associations,
            args.cursor.as_deref().unwrap_or(""),
            args.limit,
            args.filters,
        );
        if let Some(body) = self.pages.get(&key, version) {
            return Ok(body);
        }
        let (items, next) = self.list(conn, o, generation, args, view).await?;
        let body = to_bytes(&shape(items, next));
        self.pages.put(key, version, body.clone());
        Ok(body)
    }

    #[allow(clippy::too_many_arguments)]
    async fn list_live(
        &self,
        conn: &Connection,
        connector: &dyn CrmConnector,
        o: &'static Object,
        generation: Generation,
        args: &ListArgs,
        view: &View,
        filter: &Filter,
        scope: &str,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let cursor = match args.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                self.platform
                    .cursors()
                    .decode::<LiveCursor>(scope, c)
                    .map_err(|e| CrmError::BadRequest {
                        code: "INVALID_CURSOR",
                        message: e.to_string(),
                    })?
                    .c,
            ),
        };
        let provider = ConnProvider::new(&self.platform, conn);
        let page = connector
            .list(
                &provider,
                o.name,
                &ListRequest {
                    since: None,
                    cursor,
                    include_deleted: false,
                },
            )
            .await?;
        let items = page
            .records
            .iter()
            .map(|r| self.render_native(o, conn, r, generation, view))
            .filter(|v| filter.is_empty() || v.as_object().is_some_and(|m| filter.matches(m)))
            .collect();
        let next = page
            .next_cursor
            .map(|c| self.platform.cursors().encode(scope, &LiveCursor { c }));
        Ok((items, next))
    }

    /// Resolves a caller's id to stored records: v1 ids (`v.<type>.<hex>`),
    /// native ids, and for v1 contacts an email address.
    pub(crate) async fn lookup(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        ids: &[String],
    ) -> Result<Vec<(String, Option<StoredRecord>)>> {
        let store = self.platform.store();
        let mut uids = Vec::new();
        let mut natives = Vec::new();
        for id in ids {
            match crm::parse_v1_id(o.v1_type, id) {
                Some(u) if generation == Generation::V1 => uids.push(u.to_string()),
                _ => natives.push(id.clone()),
            }
        }
        let mut found = store
            .records_by_ids(&conn.environment_id, &conn.id, o.name, &uids, false)
            .await?;
        found.extend(
            store
                .records_by_ids(&conn.environment_id, &conn.id, o.name, &natives, true)
                .await?,
        );
        Ok(ids
            .iter()
            .map(|id| {
                let r = found.iter().find(|r| {
                    r.native_id == *id || crm::parse_v1_id(o.v1_type, id) == Some(r.uid.as_str())
                });
                (id.clone(), r.cloned())
            })
            .collect())
    }

    /// One record by id (v1 contacts: also by email).
    pub async fn find(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        id: &str,
        view: &View,
        live: bool,
    ) -> Result<Value> {
        let connector = self.ready(conn).await?;
        if id.trim().is_empty() {
            return Err(CrmError::BadRequest {
                code: "MISSING_ID",
                message: "`id` is required".into(),
            });
        }
        if live {
            check_provider_id(id)?;
            let provider = ConnProvider::new(&self.platform, conn);
            let r = connector.find(&provider, o.name, id).await?;
            return r
                .map(|r| self.render_native(o, conn, &r, generation, view))
                .ok_or_else(|| not_found(o, id));
        }
        let found = self.lookup(conn, o, generation, &[id.to_string()]).await?;
        if let Some((_, Some(r))) = found.first() {
            let reverse = self.reverse(conn, o, std::slice::from_ref(r)).await?;
            return Ok(self.render(o, conn, r, generation, view, &reverse));
        }
        if o.name == "contacts" && id.contains('@') {
            // A filtered page stops at the scan budget with a cursor: follow
            // it to the end, or a contact stored late is never found.
            let filters = serde_json::json!({"email": {"equals": id, "mode": "insensitive"}});
            let mut args = ListArgs {
                filters,
                limit: Some(1),
                ..Default::default()
            };
            loop {
                let (items, next) = self.list(conn, o, generation, &args, view).await?;
                if let Some(v) = items.into_iter().next() {
                    return Ok(v);
                }
                match next {
                    Some(c) => args.cursor = Some(c),
                    None => break,
                }
            }
        }
        Err(not_found(o, id))
    }

    /// Several records; the ids not found are returned apart.
    pub async fn batch(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        ids: &[String],
        view: &View,
    ) -> Result<(Vec<Value>, Vec<String>)> {
        self.ready(conn).await?;
        if ids.len() > MAX_LIMIT as usize {
            return Err(CrmError::BadRequest {
                code: "TOO_MANY_IDS",
                message: format!("at most {MAX_LIMIT} ids per batch"),
            });
        }
        let mut found = Vec::new();
        let mut invalid = Vec::new();
        let looked = self.lookup(conn, o, generation, ids).await?;
        let rows: Vec<StoredRecord> = looked.iter().filter_map(|(_, r)| r.clone()).collect();
        let reverse = self.reverse(conn, o, &rows).await?;
        for (id, r) in looked {
            match r {
                Some(r) => found.push(self.render(o, conn, &r, generation, view, &reverse)),
                None => invalid.push(id),
            }
        }
        Ok((found, invalid))
    }

    /// Creates at the provider, stores what it answered, returns the id in
    /// the caller's generation.
    pub async fn create(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        input: &Map<String, Value>,
    ) -> Result<String> {
        let connector = self.ready(conn).await?;
        writable(o)?;
        let mut canonical = crm::input_to_canonical(o, input, generation == Generation::V2, true)
            .map_err(invalid_input)?;
        self.native_associations(conn, &mut canonical).await?;
        let provider = ConnProvider::new(&self.platform, conn);
        let r = connector.create(&provider, o.name, &canonical).await?;
        self.store_written(conn, connector, o, &r).await?;
        Ok(shown_id(o, conn, &r.native_id, generation))
    }

    pub async fn update(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        id: &str,
        input: &Map<String, Value>,
    ) -> Result<String> {
        let connector = self.ready(conn).await?;
        writable(o)?;
        let native_id = self.native_id_of(conn, o, generation, id).await?;
        let mut canonical = crm::input_to_canonical(o, input, generation == Generation::V2, false)
            .map_err(invalid_input)?;
        self.native_associations(conn, &mut canonical).await?;
        let provider = ConnProvider::new(&self.platform, conn);
        let r = connector
            .update(&provider, o.name, &native_id, &canonical)
            .await?;
        self.store_written(conn, connector, o, &r).await?;
        Ok(shown_id(o, conn, &r.native_id, generation))
    }

    pub async fn delete(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        id: &str,
    ) -> Result<()> {
        let connector = self.ready(conn).await?;
        writable(o)?;
        let native_id = self.native_id_of(conn, o, generation, id).await?;
        let provider = ConnProvider::new(&self.platform, conn);
        match connector.delete(&provider, o.name, &native_id).await {
            Ok(()) | Err(ConnectorError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let uid = crm::uid(&conn.id, o.name, &native_id);
        let payload = serde_json::json!({"id": native_id, "nativeId": native_id, "v1Id": crm::v1_id(o.v1_type, &uid)}).to_string();
        let event_type = format!("{}.deleted", o.event_prefix());
        let event_id = berth_connections::secrets::new_id("evt");
        self.platform
            .store()
            .mark_records_deleted(
                &conn.id,
                o.name,
                std::slice::from_ref(&native_id),
                &[berth_store::NewEvent {
                    id: &event_id,
                    environment_id: &conn.environment_id,
                    connection_id: Some(&conn.id),
                    event_type: &event_type,
                    payload: &payload,
                    created_at: now_ms(),
                }],
                now_ms(),
            )
            .await?;
        Ok(())
    }

    /// The provider id behind a caller's id: a stored record's, or (v2,
    /// or an id that is not a v1 id) the id itself.
    async fn native_id_of(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        id: &str,
    ) -> Result<String> {
        if id.trim().is_empty() {
            return Err(CrmError::BadRequest {
                code: "MISSING_ID",
                message: "`id` is required".into(),
            });
        }
        if generation == Generation::V1 && crm::parse_v1_id(o.v1_type, id).is_some() {
            let found = self.lookup(conn, o, generation, &[id.to_string()]).await?;
            return match found.into_iter().next() {
                Some((_, Some(r))) => Ok(r.native_id),
                _ => Err(not_found(o, id)),
            };
        }
        if id.starts_with("v.") {
            return Err(not_found(o, id));
        }
        check_provider_id(id)?;
        Ok(id.to_string())
    }

    /// Replaces the v1 ids (`v.contact.<hex>`) among a write's association
    /// ids with the native ids the provider knows, and refuses ids that
    /// cannot be a provider's. A v1 id of no stored record is a 400 naming
    /// it, not a provider error later.
    async fn native_associations(
        &self,
        conn: &Connection,
        canonical: &mut Map<String, Value>,
    ) -> Result<()> {
        let snapshot = canonical.clone();
        for (key, v) in canonical.iter_mut() {
            let Some(target) = crm::write_association_target(key, &snapshot) else {
                continue;
            };
            let ids: Vec<&mut Value> = match v {
                Value::Array(a) => a.iter_mut().collect(),
                v @ Value::String(_) => vec![v],
                _ => continue,
            };
            for id in ids {
                let Some(s) = id.as_str() else { continue };
                let Some(to) = crm::object(target) else {
                    continue;
                };
                if let Some(uid) = crm::parse_v1_id(to.v1_type, s) {
                    let found = self
                        .platform
                        .store()
                        .records_by_ids(
                            &conn.environment_id,
                            &conn.id,
                            to.name,
                            &[uid.to_string()],
                            false,
                        )
                        .await?;
                    match found.into_iter().next() {
                        Some(r) => *id = Value::String(r.native_id),
                        None => {
                            return Err(CrmError::BadRequest {
                                code: "INVALID_ASSOCIATION",
                                message: format!("{key}: no {} with id `{s}`", to.v1_one_key),
                            });
                        }
                    }
                    continue;
                }
                check_provider_id(s).map_err(|_| CrmError::BadRequest {
                    code: "INVALID_ASSOCIATION",
                    message: format!("{key}: `{}` cannot be an id", s.escape_debug()),
                })?;
            }
        }
        Ok(())
    }

    /// Writes a record the provider returned into the store (with its
    /// change event) so a read right after the write sees it.
    async fn store_written(
        &self,
        conn: &Connection,
        connector: &dyn CrmConnector,
        o: &Object,
        r: &NativeRecord,
    ) -> Result<()> {
        let w = record_write(conn, connector, o.name, r, true);
        let prefix = o.event_prefix();
        self.platform
            .store()
            .apply_page(&PageWrite {
                environment_id: &conn.environment_id,
                connection_id: &conn.id,
                object: o.name,
                run_id: None,
                records: std::slice::from_ref(&w),
                event_prefix: Some(&prefix),
                next_cursor: None,
                high_water: None,
                total: None,
                now: now_ms(),
                lease: None,
                refresh_links: false,
                defer_keys: false,
            })
            .await?;
        Ok(())
    }
}

/// Native id → (key, source native id) of reverse associations.
type Reverse = std::collections::HashMap<String, Vec<(String, String)>>;

fn show(o: &Object, rv: &RecordView<'_>, generation: Generation, view: &View) -> Value {
    match generation {
        Generation::V1 => crm::render_v1(o, rv, view.raw),
        Generation::V2 => crm::render_v2(o, rv, view.raw, view.associations.as_deref()),
    }
}

fn writable(o: &Object) -> Result<()> {
    if o.writable {
        Ok(())
    } else {
        Err(CrmError::BadRequest {
            code: "READ_ONLY_OBJECT",
            message: format!("{} are read-only", o.name),
        })
    }
}

fn invalid_input(errors: Vec<(String, String)>) -> CrmError {
    let message = errors
        .iter()
        .map(|(f, m)| format!("{f} {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    CrmError::BadRequest {
        code: "INVALID_FIELD_VALUE",
        message,
    }
}

/// Refuses an id that cannot be a provider's before it reaches a provider
/// path: control characters, whitespace, path and query punctuation, dot
/// segments, or an absurd length. Provider ids are short tokens (HubSpot
/// and Pipedrive numbers, Salesforce's 18 characters, HubSpot attendees'
/// `<meeting>:<contact>`).
pub(crate) fn check_provider_id(id: &str) -> Result<()> {
    let why = if id.is_empty() {
        Some("is empty")
    } else if id.len() > 256 {
        Some("is longer than 256 bytes")
    } else if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("has a control or space character")
    } else if id.contains(['/', '\\', '?', '#', '%', '&']) {
        Some("has a character that cannot be in a provider id (/ \\ ? # % &)")
    } else if id == "." || id.contains("..") {
        Some("has a dot segment")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CrmError::BadRequest {
            code: "INVALID_ID",
            message: format!("the id `{}` {why}", id.escape_debug()),
        }),
    }
}

fn not_found(o: &Object, id: &str) -> CrmError {
    CrmError::NotFound(format!("no {} with id `{id}`", o.v2_one_key))
}

fn shown_id(o: &Object, conn: &Connection, native_id: &str, generation: Generation) -> String {
    match generation {
        Generation::V1 => crm::v1_id(o.v1_type, &crm::uid(&conn.id, o.name, native_id)),
        Generation::V2 => native_id.to_string(),
    }
}

fn to_bytes(v: &Value) -> Bytes {
    // Serialising a `Value` cannot fail (its keys are strings).
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}
