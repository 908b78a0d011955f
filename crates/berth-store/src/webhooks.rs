//! Webhook endpoints, messages (the delivery queue) and attempts.
//!
//! Messages are created by the `events_fan_out` trigger in the transaction
//! that writes the event. A dispatcher claims due messages by pushing their
//! `next_attempt_at` forward by a lease; results are written in batches.

use super::*;

macro_rules! endpoint_cols {
    () => {
        "id, environment_id, flavor, url, description, filters, connection_scoped, connection_ids, \
         secret_sealed, previous_secret_sealed, previous_secret_until, vessel_key_sealed, \
         disabled_at, disabled_reason, failing_since, created_at, updated_at"
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookEndpoint {
    pub id: String,
    pub environment_id: String,
    pub flavor: String,
    pub url: String,
    pub description: Option<String>,
    /// JSON array of the filters as given.
    pub filters: String,
    pub connection_scoped: i64,
    /// JSON array, when scoped.
    pub connection_ids: Option<String>,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_until: Option<i64>,
    pub vessel_key_sealed: Option<String>,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One event filter: `prefix` is `Some("")` for `*`, `Some("a.b.")` for
/// `a.b.*`, `None` for an exact event type.
#[derive(Debug, Clone)]
pub struct EventFilter {
    pub pattern: String,
    pub prefix: Option<String>,
}

pub struct NewWebhookEndpoint<'a> {
    pub id: &'a str,
    pub environment_id: &'a str,
    pub flavor: &'a str,
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub filters: &'a [EventFilter],
    pub connection_ids: Option<&'a [String]>,
    pub secret_sealed: &'a str,
    pub vessel_key_sealed: Option<&'a str>,
    pub disabled: bool,
    pub now: i64,
}

/// A change to an endpoint; `None` leaves a field as it is.
#[derive(Default)]
pub struct WebhookEndpointUpdate<'a> {
    pub url: Option<&'a str>,
    pub description: Option<Option<&'a str>>,
    pub filters: Option<&'a [EventFilter]>,
    /// `Some(None)`: no longer scoped to connections.
    pub connection_ids: Option<Option<&'a [String]>>,
    /// `Some(true)` disables, `Some(false)` enables.
    pub disabled: Option<bool>,
    /// Replaces the Vessel signing key.
    pub vessel_key_sealed: Option<&'a str>,
}

/// A message handed to a dispatcher, with what it needs to deliver it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedMessage {
    pub seq: i64,
    pub environment_id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub attempts: i64,
    pub replay: i64,
}

/// Messages still owed, across every endpoint and node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookBacklog {
    /// Neither delivered nor dead: due, waiting for a retry, or in flight.
    pub pending: i64,
    /// Pending messages whose next attempt is due.
    pub due: i64,
    /// When the longest-waiting due message became due.
    pub oldest_due_at: Option<i64>,
}

/// The outcome of one delivery attempt, as the dispatcher records it.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub message_seq: i64,
    pub environment_id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub attempted_at: i64,
    pub replay: bool,
    pub success: bool,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// The message's attempts in this schedule, this one included.
    pub attempts: i64,
    /// When to try again; `None` with `success == false` means dead.
    pub next_attempt_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookMessage {
    pub seq: i64,
    pub environment_id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub delivered_at: Option<i64>,
    pub event_type: String,
    pub connection_id: Option<String>,
    pub payload: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookAttempt {
    pub id: i64,
    pub environment_id: String,
    pub endpoint_id: String,
    pub message_seq: i64,
    pub event_id: String,
    pub attempted_at: i64,
    pub trigger: String,
    pub outcome: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

#[derive(Debug, Default)]
pub struct MessageFilter<'a> {
    pub endpoint_id: Option<&'a str>,
    pub state: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub before_seq: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Default)]
pub struct AttemptFilter<'a> {
    pub endpoint_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Undelivered messages of an endpoint that stops receiving (disabled or
/// deleted) are dead-lettered with this reason; a replay after
/// re-enabling sends them.
const ENDPOINT_OFF: &str = "the endpoint was disabled or deleted before delivery";

impl Store {
    pub async fn create_webhook_endpoint(&self, n: &NewWebhookEndpoint<'_>) -> Result<()> {
        let filters_json = serde_json::to_string(
            &n.filters
                .iter()
                .map(|f| f.pattern.as_str())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_else(|_| "[]".into());
        let conn_json = n
            .connection_ids
            .map(|c| serde_json::to_string(c).unwrap_or_else(|_| "[]".into()));
        let disabled_at = n.disabled.then_some(n.now);
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, environment_id, flavor, url, description, filters, \
                 connection_scoped, connection_ids, secret_sealed, vessel_key_sealed, disabled_at, \
                 disabled_reason, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)"
            )
            .bind(n.id).bind(n.environment_id).bind(n.flavor).bind(n.url).bind(n.description)
            .bind(&filters_json).bind(n.connection_ids.is_some() as i64).bind(conn_json.as_deref())
            .bind(n.secret_sealed).bind(n.vessel_key_sealed).bind(disabled_at)
            .bind(n.disabled.then_some("disabled by the API")).bind(n.now)
            .execute(&mut *tx).await?;
            for f in n.filters {
                sqlx::query("INSERT INTO webhook_endpoint_filters (endpoint_id, pattern, prefix) VALUES ($1, $2, $3)")
                    .bind(n.id).bind(&f.pattern).bind(f.prefix.as_deref()).execute(&mut *tx).await?;
            }
            for c in n.connection_ids.unwrap_or_default() {
                sqlx::query("INSERT INTO webhook_endpoint_connections (endpoint_id, connection_id) VALUES ($1, $2)")
                    .bind(n.id).bind(c).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Live endpoints of an environment, oldest first; `flavor` narrows.
    pub async fn list_webhook_endpoints(
        &self,
        environment_id: &str,
        flavor: Option<&str>,
    ) -> Result<Vec<WebhookEndpoint>> {
        Ok(
            with_db!(self, p => sqlx::query_as::<_, WebhookEndpoint>(concat!(
            "SELECT ", endpoint_cols!(), " FROM webhook_endpoints \
             WHERE environment_id = $1 AND deleted_at IS NULL AND ($2 = '' OR flavor = $2) \
             ORDER BY created_at, id"
        )).bind(environment_id).bind(flavor.unwrap_or("")).fetch_all(p).await)?,
        )
    }

    pub async fn get_webhook_endpoint(
        &self,
        environment_id: &str,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>> {
        Ok(
            with_db!(self, p => sqlx::query_as::<_, WebhookEndpoint>(concat!(
            "SELECT ", endpoint_cols!(), " FROM webhook_endpoints \
             WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
        )).bind(environment_id).bind(id).fetch_optional(p).await)?,
        )
    }

    /// Endpoints by id whatever their environment (the dispatcher's view:
    /// the ids come from claimed messages, which carry the environment).
    pub async fn webhook_endpoints_by_ids(&self, ids: &[String]) -> Result<Vec<WebhookEndpoint>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(with_db!(self, p => {
            let mut qb = sqlx::QueryBuilder::new(concat!(
                "SELECT ", endpoint_cols!(), " FROM webhook_endpoints WHERE id IN ("
            ));
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id.clone());
            }
            qb.push(")");
            qb.build_query_as::<WebhookEndpoint>().fetch_all(p).await?
        }))
    }

    /// The live v1 endpoint of a connection, if any.
    pub async fn v1_webhook_for_connection(
        &self,
        environment_id: &str,
        connection_id: &str,
    ) -> Result<Option<WebhookEndpoint>> {
        Ok(
            with_db!(self, p => sqlx::query_as::<_, WebhookEndpoint>(concat!(
            "SELECT ", endpoint_cols!(), " FROM webhook_endpoints e \
             WHERE e.environment_id = $1 AND e.flavor = 'v1' AND e.deleted_at IS NULL \
             AND EXISTS (SELECT 1 FROM webhook_endpoint_connections c WHERE c.endpoint_id = e.id AND c.connection_id = $2)"
        )).bind(environment_id).bind(connection_id).fetch_optional(p).await)?,
        )
    }

    /// Applies `u`; `false` when there is no such live endpoint.
    pub async fn update_webhook_endpoint(
        &self,
        environment_id: &str,
        id: &str,
        u: &WebhookEndpointUpdate<'_>,
        now: i64,
    ) -> Result<bool> {
        let filters_json = u.filters.map(|f| {
            serde_json::to_string(&f.iter().map(|f| f.pattern.as_str()).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into())
        });
        let conn_json = u
            .connection_ids
            .map(|c| c.map(|c| serde_json::to_string(c).unwrap_or_else(|_| "[]".into())));
        Ok(with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "UPDATE webhook_endpoints SET updated_at = $3, \
                 url = COALESCE($4, url), \
                 description = CASE WHEN $5 = 1 THEN $6 ELSE description END, \
                 filters = COALESCE($7, filters), \
                 connection_scoped = CASE WHEN $8 = 1 THEN $9 ELSE connection_scoped END, \
                 connection_ids = CASE WHEN $8 = 1 THEN $10 ELSE connection_ids END, \
                 disabled_at = CASE WHEN $11 = 1 THEN COALESCE(disabled_at, $3) WHEN $11 = 0 THEN NULL ELSE disabled_at END, \
                 disabled_reason = CASE WHEN $11 = 1 THEN COALESCE(disabled_reason, 'disabled by the API') WHEN $11 = 0 THEN NULL ELSE disabled_reason END, \
                 failing_since = CASE WHEN $11 = 0 THEN NULL ELSE failing_since END, \
                 vessel_key_sealed = COALESCE($12, vessel_key_sealed) \
                 WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
            )
            .bind(environment_id).bind(id).bind(now).bind(u.url)
            .bind(u.description.is_some() as i64).bind(u.description.flatten())
            .bind(filters_json.as_deref())
            .bind(u.connection_ids.is_some() as i64)
            .bind(u.connection_ids.is_some_and(|c| c.is_some()) as i64)
            .bind(conn_json.flatten())
            .bind(match u.disabled { Some(true) => 1i64, Some(false) => 0, None => -1 })
            .bind(u.vessel_key_sealed)
            .execute(&mut *tx).await?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            if let Some(filters) = u.filters {
                sqlx::query("DELETE FROM webhook_endpoint_filters WHERE endpoint_id = $1")
                    .bind(id).execute(&mut *tx).await?;
                for f in filters {
                    sqlx::query("INSERT INTO webhook_endpoint_filters (endpoint_id, pattern, prefix) VALUES ($1, $2, $3)")
                        .bind(id).bind(&f.pattern).bind(f.prefix.as_deref()).execute(&mut *tx).await?;
                }
            }
            if let Some(conns) = u.connection_ids {
                sqlx::query("DELETE FROM webhook_endpoint_connections WHERE endpoint_id = $1")
                    .bind(id).execute(&mut *tx).await?;
                for c in conns.unwrap_or_default() {
                    sqlx::query("INSERT INTO webhook_endpoint_connections (endpoint_id, connection_id) VALUES ($1, $2)")
                        .bind(id).bind(c).execute(&mut *tx).await?;
                }
            }
            if u.disabled == Some(true) {
                dead_letter_undelivered(&mut *tx, id, now).await?;
            }
            tx.commit().await?;
            true
        }))
    }

    /// Disables an endpoint for `reason` and records `notice`, atomically;
    /// `false` when it was already disabled or gone.
    pub async fn disable_webhook_endpoint(
        &self,
        id: &str,
        reason: &str,
        notice: &NewEvent<'_>,
        now: i64,
    ) -> Result<bool> {
        let done = with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "UPDATE webhook_endpoints SET disabled_at = $2, disabled_reason = $3, updated_at = $2 \
                 WHERE id = $1 AND disabled_at IS NULL AND deleted_at IS NULL"
            ).bind(id).bind(now).bind(reason).execute(&mut *tx).await?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            dead_letter_undelivered(&mut *tx, id, now).await?;
            insert_event(&mut *tx, notice).await?;
            tx.commit().await?;
            true
        });
        self.events_committed();
        Ok(done)
    }

    pub async fn delete_webhook_endpoint(
        &self,
        environment_id: &str,
        id: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "UPDATE webhook_endpoints SET deleted_at = $3, updated_at = $3 \
                 WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
            ).bind(environment_id).bind(id).bind(now).execute(&mut *tx).await?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            dead_letter_undelivered(&mut *tx, id, now).await?;
            tx.commit().await?;
            true
        }))
    }

    /// Makes `new_sealed` the signing secret; the old one keeps signing
    /// until `previous_until`.
    pub async fn rotate_webhook_secret(
        &self,
        environment_id: &str,
        id: &str,
        new_sealed: &str,
        previous_until: i64,
        now: i64,
    ) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret_sealed = secret_sealed, \
             previous_secret_until = $4, secret_sealed = $3, updated_at = $5 \
             WHERE environment_id = $1 AND id = $2 AND deleted_at IS NULL"
        ).bind(environment_id).bind(id).bind(new_sealed).bind(previous_until).bind(now)
        .execute(p).await.map(|r| r.rows_affected() == 1))?)
    }

    /// Writes an event outside any other change (notices, tests, benchmarks);
    /// the trigger fans it out to matching endpoints.
    pub async fn insert_event(&self, e: &NewEvent<'_>) -> Result<()> {
        with_db!(self, p => insert_event(p, e).await)?;
        self.events_committed();
        Ok(())
    }

    /// Writes many events in one transaction (benchmarks, bulk syncs).
    pub async fn insert_events(&self, events: &[NewEvent<'_>]) -> Result<()> {
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            for e in events {
                insert_event(&mut *tx, e).await?;
            }
            tx.commit().await?;
        });
        self.events_committed();
        Ok(())
    }

    /// Claims up to `limit` due messages for `lease_ms`, skipping the
    /// endpoints in `busy`. Concurrent dispatchers never get the same row.
    pub async fn claim_webhook_messages(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
        busy: &[String],
    ) -> Result<Vec<ClaimedMessage>> {
        fn build<DB: sqlx::Database>(
            now: i64,
            lease_ms: i64,
            limit: i64,
            busy: &[String],
            lock: &str,
        ) -> sqlx::QueryBuilder<DB>
        where
            i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
            String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        {
            let mut qb = sqlx::QueryBuilder::new(
                "UPDATE webhook_messages SET state = 'delivering', next_attempt_at = ",
            );
            qb.push_bind(now + lease_ms)
                .push(", updated_at = ")
                .push_bind(now)
                .push(" WHERE seq IN (SELECT seq FROM webhook_messages WHERE next_attempt_at <= ")
                .push_bind(now);
            if !busy.is_empty() {
                qb.push(" AND endpoint_id NOT IN (");
                let mut sep = qb.separated(", ");
                for b in busy {
                    sep.push_bind(b.clone());
                }
                qb.push(")");
            }
            qb.push(" ORDER BY next_attempt_at LIMIT ")
                .push_bind(limit)
                .push(lock)
                .push(") RETURNING seq, environment_id, endpoint_id, event_id, attempts, replay");
            qb
        }
        Ok(match &self.db {
            Db::Sqlite(p) => {
                build::<sqlx::Sqlite>(now, lease_ms, limit, busy, "")
                    .build_query_as::<ClaimedMessage>()
                    .fetch_all(p)
                    .await?
            }
            Db::Postgres(p) => {
                build::<sqlx::Postgres>(now, lease_ms, limit, busy, " FOR UPDATE SKIP LOCKED")
                    .build_query_as::<ClaimedMessage>()
                    .fetch_all(p)
                    .await?
            }
        })
    }

    /// Events by id (the dispatcher's payloads).
    pub async fn events_by_ids(&self, ids: &[String]) -> Result<Vec<Event>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(with_db!(self, p => {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT seq, id, environment_id, connection_id, event_type, payload, created_at \
                 FROM events WHERE id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id.clone());
            }
            qb.push(")");
            qb.build_query_as::<Event>().fetch_all(p).await?
        }))
    }

    /// Records a batch of attempts and moves their messages on, in one
    /// transaction. A message is only moved if it is still the claimed
    /// one (`delivering`): a replay or deletion meanwhile wins.
    pub async fn record_webhook_attempts(&self, results: &[AttemptResult]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO webhook_attempts (environment_id, endpoint_id, message_seq, event_id, \
                 attempted_at, trigger, outcome, status_code, latency_ms, error, response_excerpt) ",
            );
            qb.push_values(results, |mut b, r| {
                b.push_bind(r.environment_id.clone())
                    .push_bind(r.endpoint_id.clone())
                    .push_bind(r.message_seq)
                    .push_bind(r.event_id.clone())
                    .push_bind(r.attempted_at)
                    .push_bind(if r.replay { "replay" } else { "scheduled" })
                    .push_bind(if r.success { "success" } else { "failed" })
                    .push_bind(r.status_code)
                    .push_bind(r.latency_ms)
                    .push_bind(r.error.clone())
                    .push_bind(r.response_excerpt.clone());
            });
            qb.build().execute(&mut *tx).await?;
            for r in results {
                let state = if r.success {
                    "delivered"
                } else if r.next_attempt_at.is_some() {
                    "retry"
                } else {
                    "dead"
                };
                sqlx::query(
                    "UPDATE webhook_messages SET state = $2, attempts = $3, next_attempt_at = $4, \
                     last_status = $5, last_error = $6, updated_at = $7, replay = 0, \
                     delivered_at = CASE WHEN $8 = 1 THEN $7 ELSE delivered_at END \
                     WHERE seq = $1 AND state = 'delivering'"
                )
                .bind(r.message_seq).bind(state).bind(r.attempts).bind(r.next_attempt_at)
                .bind(r.status_code).bind(r.error.as_deref()).bind(r.attempted_at)
                .bind(r.success as i64)
                .execute(&mut *tx).await?;
            }
            // One endpoint update per endpoint: the last result decides.
            let mut last: Vec<&AttemptResult> = Vec::new();
            for r in results.iter().rev() {
                if !last.iter().any(|l| l.endpoint_id == r.endpoint_id) {
                    last.push(r);
                }
            }
            for r in last {
                if r.success {
                    sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                        .bind(&r.endpoint_id).execute(&mut *tx).await?;
                } else {
                    sqlx::query("UPDATE webhook_endpoints SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL")
                        .bind(&r.endpoint_id).bind(r.attempted_at).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Gives claimed messages back without an attempt (a dispatcher that
    /// is stopping, or whose endpoint is saturated).
    pub async fn release_webhook_messages(&self, seqs: &[i64], now: i64) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        with_db!(self, p => {
            let mut qb = sqlx::QueryBuilder::new("UPDATE webhook_messages SET state = CASE WHEN attempts = 0 THEN 'pending' ELSE 'retry' END, next_attempt_at = ");
            qb.push_bind(now).push(" WHERE state = 'delivering' AND seq IN (");
            let mut sep = qb.separated(", ");
            for s in seqs {
                sep.push_bind(*s);
            }
            qb.push(")");
            qb.build().execute(p).await?;
        });
        Ok(())
    }

    /// Deletes webhook history from before `cutoff`: delivery attempts,
    /// finished (delivered or dead) messages, and events no message refers
    /// to any more. At most `batch` rows per statement, so no statement
    /// holds the write lock for long. Returns the rows deleted.
    pub async fn purge_webhook_history(&self, cutoff: i64, batch: i64) -> Result<u64> {
        const STATEMENTS: [&str; 3] = [
            "DELETE FROM webhook_attempts WHERE id IN (SELECT id FROM webhook_attempts \
             WHERE attempted_at < $1 ORDER BY id LIMIT $2)",
            "DELETE FROM webhook_messages WHERE seq IN (SELECT seq FROM webhook_messages \
             WHERE state IN ('delivered', 'dead') AND updated_at < $1 ORDER BY seq LIMIT $2)",
            // Only events every message of which is gone: one still being
            // delivered keeps its event, whatever its age.
            "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE e.created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM webhook_messages m WHERE m.event_id = e.id) \
             ORDER BY e.seq LIMIT $2)",
        ];
        let mut total = 0;
        for sql in STATEMENTS {
            loop {
                let n = with_db!(self, p => sqlx::query(sql).bind(cutoff).bind(batch)
                    .execute(p).await.map(|r| r.rows_affected()))?;
                total += n;
                if n < batch.max(1) as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// What delivery still owes at `now` (one pass over the due index).
    pub async fn webhook_backlog(&self, now: i64) -> Result<WebhookBacklog> {
        let sql = "SELECT COUNT(*), \
                   COALESCE(SUM(CASE WHEN next_attempt_at <= $1 THEN 1 ELSE 0 END), 0), \
                   MIN(next_attempt_at) \
                   FROM webhook_messages WHERE next_attempt_at IS NOT NULL";
        let (pending, due, oldest): (i64, i64, Option<i64>) =
            with_db!(self, p => sqlx::query_as(sql).bind(now).fetch_one(p).await)?;
        Ok(WebhookBacklog {
            pending,
            due,
            oldest_due_at: oldest.filter(|t| *t <= now),
        })
    }

    /// One page of an environment's messages, newest first.
    pub async fn list_webhook_messages(
        &self,
        environment_id: &str,
        f: &MessageFilter<'_>,
    ) -> Result<Vec<WebhookMessage>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, WebhookMessage>(
            "SELECT m.seq, m.environment_id, m.endpoint_id, m.event_id, m.state, m.attempts, \
             m.next_attempt_at, m.last_status, m.last_error, m.created_at, m.updated_at, m.delivered_at, \
             e.event_type, e.connection_id, e.payload \
             FROM webhook_messages m JOIN events e ON e.id = m.event_id \
             WHERE m.environment_id = $1 AND ($2 = '' OR m.endpoint_id = $2) \
             AND ($3 = '' OR m.state = $3) AND ($4 = '' OR m.event_id = $4) AND m.seq < $5 \
             ORDER BY m.seq DESC LIMIT $6"
        )
        .bind(environment_id).bind(f.endpoint_id.unwrap_or("")).bind(f.state.unwrap_or(""))
        .bind(f.event_id.unwrap_or("")).bind(f.before_seq.unwrap_or(i64::MAX)).bind(f.limit)
        .fetch_all(p).await)?)
    }

    /// One page of an environment's attempts, newest first.
    pub async fn list_webhook_attempts(
        &self,
        environment_id: &str,
        f: &AttemptFilter<'_>,
    ) -> Result<Vec<WebhookAttempt>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, WebhookAttempt>(
            "SELECT id, environment_id, endpoint_id, message_seq, event_id, attempted_at, trigger, \
             outcome, status_code, latency_ms, error, response_excerpt FROM webhook_attempts \
             WHERE environment_id = $1 AND ($2 = '' OR endpoint_id = $2) AND ($3 = '' OR event_id = $3) \
             AND id < $4 ORDER BY id DESC LIMIT $5"
        )
        .bind(environment_id).bind(f.endpoint_id.unwrap_or("")).bind(f.event_id.unwrap_or(""))
        .bind(f.before_id.unwrap_or(i64::MAX)).bind(f.limit)
        .fetch_all(p).await)?)
    }

    /// Schedules a new delivery of one message now (a new schedule of
    /// attempts, same message id). `false` when there is no such message
    /// or it is being delivered right now.
    pub async fn replay_webhook_message(
        &self,
        environment_id: &str,
        endpoint_id: &str,
        event_id: &str,
        now: i64,
    ) -> Result<bool> {
        let done = with_db!(self, p => sqlx::query(
            "UPDATE webhook_messages SET state = 'pending', attempts = 0, replay = 1, \
             next_attempt_at = $4, updated_at = $4 \
             WHERE environment_id = $1 AND endpoint_id = $2 AND event_id = $3 AND state <> 'delivering'"
        ).bind(environment_id).bind(endpoint_id).bind(event_id).bind(now)
        .execute(p).await.map(|r| r.rows_affected() == 1))?;
        self.events_committed();
        Ok(done)
    }

    /// Replays every failed (dead or waiting to retry) message of an
    /// endpoint created at or after `since`; returns how many.
    pub async fn replay_failed_webhook_messages(
        &self,
        environment_id: &str,
        endpoint_id: &str,
        since: i64,
        now: i64,
    ) -> Result<u64> {
        let n = with_db!(self, p => sqlx::query(
            "UPDATE webhook_messages SET state = 'pending', attempts = 0, replay = 1, \
             next_attempt_at = $4, updated_at = $4 \
             WHERE environment_id = $1 AND endpoint_id = $2 AND created_at >= $3 \
             AND state IN ('dead', 'retry')"
        ).bind(environment_id).bind(endpoint_id).bind(since).bind(now)
        .execute(p).await.map(|r| r.rows_affected()))?;
        self.events_committed();
        Ok(n)
    }

    /// Every endpoint not deleted, in every environment, after `after_id`
    /// (key rotation walks them all).
    pub async fn webhook_endpoints_page(
        &self,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<WebhookEndpoint>> {
        Ok(
            with_db!(self, p => sqlx::query_as::<_, WebhookEndpoint>(concat!(
            "SELECT ", endpoint_cols!(), " FROM webhook_endpoints \
             WHERE deleted_at IS NULL AND id > $1 ORDER BY id LIMIT $2"
        )).bind(after_id).bind(limit).fetch_all(p).await)?,
        )
    }

    /// Swaps an endpoint's sealed values if they are still `old` (a
    /// concurrent secret rotation wins; the caller re-reads and retries).
    pub async fn reseal_webhook_endpoint(
        &self,
        old: &WebhookEndpoint,
        secret_sealed: &str,
        previous_secret_sealed: Option<&str>,
        vessel_key_sealed: Option<&str>,
    ) -> Result<bool> {
        Ok(with_db!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET secret_sealed = $2, previous_secret_sealed = $3, vessel_key_sealed = $4 \
             WHERE id = $1 AND secret_sealed = $5 AND updated_at = $6"
        ).bind(&old.id).bind(secret_sealed).bind(previous_secret_sealed).bind(vessel_key_sealed)
        .bind(&old.secret_sealed).bind(old.updated_at)
        .execute(p).await.map(|r| r.rows_affected() == 1))?)
    }

    /// Counts an environment's messages by state (tests, benchmarks, metrics).
    pub async fn webhook_message_counts(&self, environment_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(with_db!(self, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT state, COUNT(*) FROM webhook_messages WHERE environment_id = $1 GROUP BY state ORDER BY state"
        ).bind(environment_id).fetch_all(p).await)?)
    }
}

async fn dead_letter_undelivered<'c, DB, E>(
    exec: E,
    endpoint_id: &str,
    now: i64,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(
        "UPDATE webhook_messages SET state = 'dead', next_attempt_at = NULL, last_error = $3, updated_at = $2 \
         WHERE endpoint_id = $1 AND state IN ('pending', 'retry', 'delivering')",
    )
    .bind(endpoint_id)
    .bind(now)
    .bind(ENDPOINT_OFF)
    .execute(exec)
    .await?;
    Ok(())
}
