//! The request log in blocks (migration 0009): the calls of one connection
//! that the writer flushed together are one row, packed as a JSON array.
//!
//! Invariants:
//! - a call's id is `block id * ID_STRIDE + its index in the block`, so
//!   ids grow with time (blocks are numbered in insert order) and a cursor
//!   is one integer;
//! - a block never holds more than [`BLOCK_MAX`] calls (< `ID_STRIDE`);
//! - retention removes a whole block once all its calls are past it, and
//!   blanks (`null`) the old calls of a block it cuts through, so the
//!   remaining calls keep their indexes and ids;
//! - `min_created_at`, `max_created_at`, `status_classes` and `layers`
//!   cover every call left in the block, so a query that skips a block by
//!   them skips no matching call.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Db, RequestLog, RequestLogFilter, Result, Store};

/// Ids of calls in block `b` are `b * ID_STRIDE ..`.
const ID_STRIDE: i64 = 4096;
/// Calls per block, at most.
const BLOCK_MAX: usize = 1024;
/// Blocks read per query while filling a page.
const SCAN_BATCH: i64 = 16;

/// One call as the block stores it.
#[derive(Serialize, Deserialize)]
struct Packed<'a>(
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    i32,
    i64,
    Option<i64>,
    Option<i64>,
    i32,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Option<Cow<'a, str>>,
);

/// The calls of one connection to append, oldest first.
#[derive(Debug, Clone)]
pub struct LogBlock<'a> {
    pub environment_id: &'a str,
    pub connection_id: Option<&'a str>,
    pub integration_id: &'a str,
    pub calls: Vec<LoggedCall<'a>>,
}

/// One call of a [`LogBlock`].
#[derive(Debug, Clone)]
pub struct LoggedCall<'a> {
    pub created_at: i64,
    pub method: &'a str,
    pub path: &'a str,
    pub status: i32,
    pub latency_ms: i64,
    pub request_bytes: Option<i64>,
    pub response_bytes: Option<i64>,
    pub retries: i32,
    pub layer: &'a str,
    pub error: Option<&'a str>,
}

impl<'a> Packed<'a> {
    fn of(r: &LoggedCall<'a>) -> Self {
        Packed(
            r.created_at,
            Cow::Borrowed(r.method),
            Cow::Borrowed(r.path),
            r.status,
            r.latency_ms,
            r.request_bytes,
            r.response_bytes,
            r.retries,
            Cow::Borrowed(r.layer),
            r.error.map(Cow::Borrowed),
        )
    }

    fn created_at(&self) -> i64 {
        self.0
    }
}

fn status_class_bit(status: i32) -> i64 {
    1 << (status / 100).clamp(0, 9)
}

fn layer_bit(layer: &str) -> i64 {
    match layer {
        "provider" => 1,
        "berth" => 2,
        "network" => 4,
        _ => 8,
    }
}

/// The status classes a half-open status range touches.
fn status_mask(lo: i32, hi: i32) -> i64 {
    (0..10)
        .filter(|c| c * 100 < hi && (c + 1) * 100 > lo)
        .fold(0, |m, c| m | 1 << c)
}

/// What a block row says about the calls in it.
struct Summary {
    min: i64,
    max: i64,
    classes: i64,
    layers: i64,
    count: i64,
}

fn summarize<'a>(calls: impl Iterator<Item = &'a Packed<'a>>) -> Option<Summary> {
    let mut s: Option<Summary> = None;
    for p in calls {
        let sum = s.get_or_insert(Summary {
            min: p.0,
            max: p.0,
            classes: 0,
            layers: 0,
            count: 0,
        });
        sum.min = sum.min.min(p.0);
        sum.max = sum.max.max(p.0);
        sum.classes |= status_class_bit(p.3);
        sum.layers |= layer_bit(&p.8);
        sum.count += 1;
    }
    s
}

#[derive(sqlx::FromRow)]
struct BlockRow {
    id: i64,
    environment_id: String,
    connection_id: Option<String>,
    integration_id: String,
    entries: String,
}

impl Store {
    /// Appends rows to the log (grouped by connection into blocks; the
    /// order of calls within a connection is kept).
    pub async fn insert_request_logs(&self, rows: &[RequestLog]) -> Result<()> {
        let mut blocks: Vec<LogBlock<'_>> = Vec::new();
        let mut index: HashMap<(&str, Option<&str>, &str), usize> = HashMap::new();
        for r in rows {
            let key = (
                r.environment_id.as_str(),
                r.connection_id.as_deref(),
                r.integration_id.as_str(),
            );
            let b = *index.entry(key).or_insert_with(|| {
                blocks.push(LogBlock {
                    environment_id: key.0,
                    connection_id: key.1,
                    integration_id: key.2,
                    calls: Vec::new(),
                });
                blocks.len() - 1
            });
            blocks[b].calls.push(LoggedCall {
                created_at: r.created_at,
                method: &r.method,
                path: &r.path,
                status: r.status,
                latency_ms: r.latency_ms,
                request_bytes: r.request_bytes,
                response_bytes: r.response_bytes,
                retries: r.retries,
                layer: &r.layer,
                error: r.error.as_deref(),
            });
        }
        self.insert_request_log_blocks(&blocks).await
    }

    /// Appends each connection's calls as one or more block rows (at most
    /// [`BLOCK_MAX`] calls each), all in one transaction.
    pub async fn insert_request_log_blocks(&self, blocks: &[LogBlock<'_>]) -> Result<()> {
        if blocks.iter().all(|b| b.calls.is_empty()) {
            return Ok(());
        }
        let mut json = Vec::with_capacity(BLOCK_MAX * 96);
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            for block in blocks {
                for calls in block.calls.chunks(BLOCK_MAX) {
                    let packed: Vec<Packed<'_>> = calls.iter().map(Packed::of).collect();
                    let sum = summarize(packed.iter()).expect("a chunk is never empty");
                    json.clear();
                    serde_json::to_writer(&mut json, &packed)?;
                    let entries = std::str::from_utf8(&json).expect("serde_json writes UTF-8");
                    sqlx::query(
                        "INSERT INTO request_log_blocks (environment_id, connection_id, \
                         integration_id, min_created_at, max_created_at, status_classes, layers, \
                         entry_count, entries) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(block.environment_id)
                    .bind(block.connection_id)
                    .bind(block.integration_id)
                    .bind(sum.min)
                    .bind(sum.max)
                    .bind(sum.classes as i32)
                    .bind(sum.layers as i32)
                    .bind(sum.count as i32)
                    .bind(entries)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// One page of an environment's request log, newest first.
    pub async fn list_request_logs(
        &self,
        environment_id: &str,
        f: &RequestLogFilter<'_>,
    ) -> Result<Vec<RequestLog>> {
        let before = f.before.unwrap_or(i64::MAX);
        let classes = status_mask(f.status.0, f.status.1);
        let layers = f.layer.map_or(i32::MAX, |l| layer_bit(l) as i32);
        let mut out = Vec::new();
        if f.limit <= 0 || classes == 0 {
            return Ok(out);
        }
        // The newest block that may hold a call below `before`.
        let mut top = if before == i64::MAX {
            i64::MAX
        } else {
            (before - 1).div_euclid(ID_STRIDE)
        };
        while (out.len() as i64) < f.limit && top >= 0 {
            let blocks: Vec<BlockRow> = with_db!(self, p => sqlx::query_as::<_, BlockRow>(
                "SELECT id, environment_id, connection_id, integration_id, entries \
                 FROM request_log_blocks WHERE environment_id = $1 \
                 AND ($2 = '' OR connection_id = $2) AND id <= $3 \
                 AND max_created_at >= $4 AND min_created_at < $5 \
                 AND (status_classes & $6) != 0 AND (layers & $7) != 0 \
                 ORDER BY id DESC LIMIT $8"
            )
            .bind(environment_id)
            .bind(f.connection_id.unwrap_or(""))
            .bind(top)
            .bind(f.time.0)
            .bind(f.time.1)
            .bind(classes as i32)
            .bind(layers)
            .bind(SCAN_BATCH)
            .fetch_all(p).await)?;
            let Some(last) = blocks.last() else { break };
            top = last.id - 1;
            for b in &blocks {
                let calls: Vec<Option<Packed<'_>>> = serde_json::from_str(&b.entries)?;
                for (i, call) in calls.iter().enumerate().rev() {
                    let Some(c) = call else { continue };
                    let id = b.id * ID_STRIDE + i as i64;
                    if id >= before
                        || c.3 < f.status.0
                        || c.3 >= f.status.1
                        || f.layer.is_some_and(|l| l != c.8)
                        || c.0 < f.time.0
                        || c.0 >= f.time.1
                    {
                        continue;
                    }
                    out.push(RequestLog {
                        id,
                        environment_id: b.environment_id.clone(),
                        connection_id: b.connection_id.clone(),
                        integration_id: b.integration_id.clone(),
                        created_at: c.0,
                        method: c.1.to_string(),
                        path: c.2.to_string(),
                        status: c.3,
                        latency_ms: c.4,
                        request_bytes: c.5,
                        response_bytes: c.6,
                        retries: c.7,
                        layer: c.8.to_string(),
                        error: c.9.as_ref().map(|e| e.to_string()),
                    });
                    if out.len() as i64 == f.limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes request-log calls made before `before` (ms); returns how
    /// many.
    pub async fn purge_request_logs(&self, before: i64) -> Result<u64> {
        let whole: Vec<(i32,)> = with_db!(self, p => sqlx::query_as(
            "DELETE FROM request_log_blocks WHERE max_created_at < $1 RETURNING entry_count",
        )
        .bind(before)
        .fetch_all(p)
        .await)?;
        let mut deleted: u64 = whole
            .iter()
            .map(|(n,)| u64::try_from(*n).unwrap_or(0))
            .sum();
        // Blocks the cut-off goes through (after the delete, every block
        // with an older call; found by the start index): blank their old
        // calls.
        let cut: Vec<(i64, String)> = with_db!(self, p => sqlx::query_as(
            "SELECT id, entries FROM request_log_blocks WHERE min_created_at < $1",
        )
        .bind(before)
        .fetch_all(p)
        .await)?;
        for (id, entries) in cut {
            let mut calls: Vec<Option<Packed<'_>>> = serde_json::from_str(&entries)?;
            let mut dropped = 0;
            for c in calls.iter_mut() {
                if c.as_ref().is_some_and(|c| c.created_at() < before) {
                    *c = None;
                    dropped += 1;
                }
            }
            let Some(sum) = summarize(calls.iter().flatten()) else {
                continue;
            };
            let json = serde_json::to_string(&calls)?;
            // Only if the block is as read (one purge at a time wins).
            let done = with_db!(self, p => sqlx::query(
                "UPDATE request_log_blocks SET entries = $1, min_created_at = $2, \
                 status_classes = $3, layers = $4, entry_count = $5 \
                 WHERE id = $6 AND entries = $7",
            )
            .bind(&json)
            .bind(sum.min)
            .bind(sum.classes as i32)
            .bind(sum.layers as i32)
            .bind(sum.count as i32)
            .bind(id)
            .bind(&entries)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
            if done == 1 {
                deleted += dropped;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_masks_cover_exactly_the_classes_touched() {
        assert_eq!(status_mask(0, 1000), 0b11_1111_1111);
        assert_eq!(status_mask(400, 500), 1 << 4);
        assert_eq!(status_mask(450, 550), 1 << 4 | 1 << 5);
        assert_eq!(status_mask(500, 500), 0);
        assert_eq!(status_class_bit(502), 1 << 5);
        assert_eq!(status_class_bit(-1), 1);
    }
}
