//! The request log: entries from the outbound layer are written to the
//! store in batches by one background task, so a provider call never waits
//! for a log write.
//!
//! Decision: the log is observability data, not customer data. Entries are
//! queued in memory (bounded; overflow is dropped and counted in
//! `berth_outbound_request_logs_dropped_total`) and a crash loses at most
//! the last batch not yet written (≤ 50 ms of calls in steady state). Listing
//! flushes first, so a caller always sees the calls it already got answers
//! for.

use std::time::Duration;

use std::collections::HashMap;

use berth_outbound::{CallContext, LogEntry};
use berth_store::{LogBlock, LoggedCall, RequestLog, RequestLogFilter, Store};
use tokio::sync::{mpsc, oneshot};

use crate::{Platform, PlatformError, Result};

const BATCH: usize = 1000;
/// How long the writer waits for more entries before writing a batch.
const LINGER: Duration = Duration::from_millis(50);

pub(crate) enum Msg {
    Flush(oneshot::Sender<()>),
}

/// Spawns the writer; returns the handle used to ask for a flush.
pub(crate) fn spawn_writer(
    store: Store,
    mut entries: mpsc::Receiver<LogEntry>,
) -> mpsc::Sender<Msg> {
    let (tx, mut control) = mpsc::channel::<Msg>(64);
    tokio::spawn(async move {
        let mut batch: Vec<LogEntry> = Vec::with_capacity(BATCH);
        let mut queued: Vec<LogEntry> = Vec::with_capacity(BATCH);
        loop {
            let mut flush = None;
            tokio::select! {
                e = entries.recv() => match e {
                    Some(e) => batch.push(e),
                    None => break,
                },
                m = control.recv() => match m {
                    Some(Msg::Flush(done)) => flush = Some(done),
                    None => break,
                },
            }
            // Linger so one transaction carries many entries: on SQLite
            // every write transaction takes the one write lock, and a log
            // write per provider call would make sync pages wait for it.
            // The entries arriving meanwhile stay queued and are taken in
            // one go after, rather than waking this task once each.
            if flush.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    m = control.recv() => {
                        if let Some(Msg::Flush(done)) = m {
                            flush = Some(done);
                        }
                    }
                }
            }
            loop {
                queued.clear();
                if entries.is_empty() || entries.recv_many(&mut queued, BATCH).await == 0 {
                    break;
                }
                for e in queued.drain(..) {
                    batch.push(e);
                    if batch.len() >= BATCH {
                        write(&store, &mut batch).await;
                    }
                }
            }
            write(&store, &mut batch).await;
            if let Some(done) = flush {
                let _ = done.send(());
            }
        }
        write(&store, &mut batch).await;
    });
    tx
}

async fn write(store: &Store, batch: &mut Vec<LogEntry>) {
    if batch.is_empty() {
        return;
    }
    let blocks = blocks(batch);
    // One retry: a busy SQLite writer is the usual cause.
    for attempt in 0..2 {
        match store.insert_request_log_blocks(&blocks).await {
            Ok(()) => break,
            Err(e) if attempt == 0 => {
                tracing::debug!(error = %e, "request log write failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => tracing::warn!(error = %e, rows = batch.len(), "request log rows lost"),
        }
    }
    drop(blocks);
    batch.clear();
}

/// The entries as one block per caller context (in practice, per
/// connection), in order; the ids are borrowed from the shared context.
fn blocks(entries: &[LogEntry]) -> Vec<LogBlock<'_>> {
    let mut out: Vec<LogBlock<'_>> = Vec::new();
    let mut index: HashMap<*const CallContext, usize> = HashMap::new();
    for e in entries {
        let ctx = &*e.context;
        let b = *index.entry(ctx as *const CallContext).or_insert_with(|| {
            out.push(LogBlock {
                environment_id: &ctx.environment_id,
                connection_id: ctx.connection_id.as_deref(),
                integration_id: &ctx.provider,
                calls: Vec::new(),
            });
            out.len() - 1
        });
        out[b].calls.push(LoggedCall {
            created_at: e.at_ms,
            method: &e.method,
            path: &e.path,
            status: e.status.map(i32::from).unwrap_or(502),
            latency_ms: e.latency_ms as i64,
            request_bytes: e.request_bytes.map(|b| b as i64),
            response_bytes: e.response_bytes.map(|b| b as i64),
            retries: e.retries as i32,
            layer: e.layer,
            error: e.error.as_deref(),
        });
    }
    out
}

/// Filters of `POST /logs/list`, as the API parsed them.
#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    pub connection_id: Option<String>,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status_class: Option<String>,
    pub layer: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub cursor: Option<String>,
    pub limit: i64,
}

impl Platform {
    /// Waits until every entry queued so far is in the store.
    pub async fn flush_request_logs(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.log_writer.send(Msg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// One page of the environment's request log, newest first.
    pub async fn list_request_logs(
        &self,
        env: &berth_store::Environment,
        q: &LogQuery,
    ) -> Result<(Vec<RequestLog>, Option<String>)> {
        let status = match q.status_class.as_deref() {
            None | Some("") => (0, 1000),
            Some(c) => match c.to_ascii_lowercase().as_str() {
                "1xx" => (100, 200),
                "2xx" => (200, 300),
                "3xx" => (300, 400),
                "4xx" => (400, 500),
                "5xx" => (500, 600),
                _ => {
                    return Err(PlatformError::bad_request(
                        "INVALID_FILTER",
                        format!("statusClass `{c}` is not one of 1xx, 2xx, 3xx, 4xx, 5xx"),
                    ));
                }
            },
        };
        if let Some(l) = q.layer.as_deref()
            && !matches!(l, "provider" | "berth" | "network")
        {
            return Err(PlatformError::bad_request(
                "INVALID_FILTER",
                format!("layer `{l}` is not one of provider, berth, network"),
            ));
        }
        let scope = format!("{}/request-logs", env.id);
        let before: Option<i64> = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(self.cursors().decode(&scope, c)?),
            None => None,
        };
        self.flush_request_logs().await;
        let limit = q.limit.clamp(1, 500);
        let mut rows = self
            .store()
            .list_request_logs(
                &env.id,
                &RequestLogFilter {
                    connection_id: q.connection_id.as_deref().filter(|c| !c.is_empty()),
                    status,
                    layer: q.layer.as_deref(),
                    time: (
                        q.since_ms.unwrap_or(i64::MIN),
                        q.until_ms.unwrap_or(i64::MAX),
                    ),
                    before,
                    limit: limit + 1,
                },
            )
            .await?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| self.cursors().encode(&scope, &r.id))
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Deletes request-log rows older than the retention; returns how many.
    pub async fn purge_request_logs(&self, now_ms: i64) -> Result<u64> {
        let keep = self.config().request_log_retention.as_millis() as i64;
        Ok(self.store().purge_request_logs(now_ms - keep).await?)
    }
}
