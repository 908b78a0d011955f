//! The sandbox CRM: a provider that needs no external account, so a new user
//! can try every flow on a fresh machine.
//!
//! It is a separate HTTP API with its own native shapes (snake_case fields,
//! its own ids, its own cursor format and error bodies), mounted by `berth
//! serve` under `/sandbox/api/v1` and reached by Berth through the outbound
//! layer like any other provider, never by a shortcut inside the server.
//!
//! Each API key is its own account, seeded deterministically from the key, so
//! two users never see each other's writes. Keys starting with `invalid` are
//! refused (to try the error path). Accounts and records live in Berth's
//! store, in the sandbox's own tables, so every serving thread and every
//! node sees one account, and writes survive a restart. The rate-limit
//! window is counted per process.
#![forbid(unsafe_code)]

mod data;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_store::{SandboxPage, SandboxRecord, Store};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use data::OBJECTS;
use data::{Record, schema_of};

/// Default and maximum page sizes.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 100;

/// A freshly seeded account (see `data::generate`).
#[derive(Default)]
struct Account {
    next_id: u64,
    objects: HashMap<&'static str, BTreeMap<String, Record>>,
}

struct RateWindow {
    per_minute: i64,
    started: Instant,
    used: i64,
}

/// Shared sandbox state: the store, and this process's rate-limit windows.
#[derive(Clone)]
pub struct Sandbox {
    store: Store,
    windows: Arc<Mutex<HashMap<String, RateWindow>>>,
}

impl Sandbox {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            windows: Default::default(),
        }
    }
}

/// The sandbox's routes over `state`, to be nested under `/sandbox/api/v1`.
pub fn router_with(state: Sandbox) -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/_settings", post(settings))
        .route("/{object}", get(list).post(create))
        .route("/{object}/{id}", get(find).patch(update).delete(remove))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

fn unavailable(e: berth_store::StoreError) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("the sandbox's storage is unavailable: {e}"),
    );
    r.headers_mut().insert("retry-after", HeaderValue::from(1));
    r
}

/// An authenticated call: the account, and the rate-limit headers to add.
struct Call {
    account: String,
    limit: Option<(i64, i64, u64)>,
}

impl Call {
    fn finish(&self, mut resp: Response) -> Response {
        if let Some((limit, remaining, reset)) = self.limit {
            let h = resp.headers_mut();
            h.insert("x-ratelimit-limit", HeaderValue::from(limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
            h.insert("x-ratelimit-reset", HeaderValue::from(reset));
        }
        resp
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Authenticates the key (seeding its account on first use) and applies
/// the account's rate limit.
async fn authenticate(sandbox: &Sandbox, headers: &HeaderMap) -> Result<Call, Response> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if key.is_empty() {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <api key>`",
        ));
    }
    if key.starts_with("invalid") {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "The API key is invalid or has been revoked.",
        ));
    }
    let account = hex::encode(&Sha256::digest(key.as_bytes())[..16]);
    let per_minute = sandbox
        .store
        .sandbox_account(&account, || seed_rows(&account), now_ms())
        .await
        .map_err(unavailable)?;
    let Some(per_minute) = per_minute.filter(|n| *n > 0) else {
        return Ok(Call {
            account,
            limit: None,
        });
    };
    let mut windows = sandbox.windows.lock().unwrap_or_else(|p| p.into_inner());
    let w = windows
        .entry(account.clone())
        .or_insert_with(|| RateWindow {
            per_minute,
            started: Instant::now(),
            used: 0,
        });
    w.per_minute = per_minute;
    if w.started.elapsed() >= Duration::from_secs(60) {
        w.started = Instant::now();
        w.used = 0;
    }
    let reset = 60u64.saturating_sub(w.started.elapsed().as_secs()).max(1);
    if w.used >= w.per_minute {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "Rate limit of {} requests per minute exceeded.",
                w.per_minute
            ),
        );
        let h = r.headers_mut();
        h.insert("retry-after", HeaderValue::from(reset));
        h.insert("x-ratelimit-limit", HeaderValue::from(w.per_minute));
        h.insert("x-ratelimit-remaining", HeaderValue::from(0));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
        return Err(r);
    }
    w.used += 1;
    Ok(Call {
        account,
        limit: Some((w.per_minute, w.per_minute - w.used, reset)),
    })
}

/// The generated data of a new account, as store rows.
fn seed_rows(account: &str) -> (i64, Vec<SandboxRecord>) {
    let a = data::generate(account);
    let mut rows = Vec::new();
    for (object, records) in &a.objects {
        for r in records.values() {
            rows.push(SandboxRecord {
                object: (*object).to_string(),
                id: r.id.clone(),
                created_at: r.created_at.timestamp_millis(),
                updated_at: r.updated_at.timestamp_millis(),
                deleted_at: r.deleted_at.map(|t| t.timestamp_millis()),
                fields: Value::Object(r.fields.clone()).to_string(),
            });
        }
    }
    (a.next_id as i64, rows)
}

fn record_of(r: &SandboxRecord) -> Record {
    let t = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    Record {
        id: r.id.clone(),
        created_at: t(r.created_at),
        updated_at: t(r.updated_at),
        deleted_at: r.deleted_at.map(t),
        fields: serde_json::from_str(&r.fields).unwrap_or_default(),
    }
}

async fn me(State(s): State<Sandbox>, headers: HeaderMap) -> Response {
    let call = match authenticate(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let users = s
        .store
        .sandbox_list(&SandboxPage {
            account_id: &call.account,
            object: "users",
            limit: 1,
            ..Default::default()
        })
        .await;
    let owner = match users {
        Ok(u) => u
            .first()
            .map(|r| record_of(r).to_json(false))
            .unwrap_or(Value::Null),
        Err(e) => return unavailable(e),
    };
    call.finish(
        Json(json!({
            "user": owner,
            "org": {"id": "sandbox-org", "name": "Sandbox Inc.", "url": "https://sandbox.berth.invalid", "currency": "USD"},
        }))
        .into_response(),
    )
}

#[derive(Deserialize)]
struct SettingsIn {
    rate_limit_per_minute: Option<u32>,
}

async fn settings(
    State(s): State<Sandbox>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed: Result<SettingsIn, _> = serde_json::from_slice(&body);
    let call = match authenticate(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match parsed {
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()),
        Ok(set) => {
            let limit = set.rate_limit_per_minute.filter(|n| *n > 0).map(i64::from);
            if let Err(e) = s.store.sandbox_set_rate_limit(&call.account, limit).await {
                return unavailable(e);
            }
            s.windows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&call.account);
            Json(json!({"rate_limit_per_minute": set.rate_limit_per_minute})).into_response()
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    updated_since: Option<String>,
    include_deleted: Option<String>,
}

fn object_name(object: &str) -> Option<&'static str> {
    OBJECTS.iter().copied().find(|o| *o == object)
}

fn unknown_object(object: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "unknown object type `{object}`; one of {}",
            OBJECTS.join(", ")
        ),
    )
}

async fn list(
    State(s): State<Sandbox>,
    Path(object): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(object) = object_name(&object) else {
        return unknown_object(&object);
    };
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                format!("limit must be 1..={MAX_LIMIT}"),
            );
        }
    };
    let since = match q
        .updated_since
        .as_deref()
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        None => None,
        Some(Ok(t)) => Some(t.with_timezone(&chrono::Utc)),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "updated_since must be an RFC 3339 timestamp",
            );
        }
    };
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match data::decode_cursor(c) {
            Some(p) => Some(p),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "cursor is invalid",
                );
            }
        },
    };
    let include_deleted = matches!(q.include_deleted.as_deref(), Some("true" | "1"));
    let call = match authenticate(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let rows = s
        .store
        .sandbox_list(&SandboxPage {
            account_id: &call.account,
            object,
            updated_since: since.map(|t| t.timestamp_millis()),
            after: after.as_ref().map(|(t, id)| (*t, id.as_str())),
            include_deleted,
            limit: limit as i64 + 1,
        })
        .await;
    let mut page: Vec<Record> = match rows {
        Ok(rows) => rows.iter().map(record_of).collect(),
        Err(e) => return unavailable(e),
    };
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more
        .then(|| page.last().map(|r| data::encode_cursor(&r.sort_key())))
        .flatten();
    call.finish(
        Json(json!({
            "data": page.iter().map(|r| r.to_json(true)).collect::<Vec<_>>(),
            "next_cursor": next,
        }))
        .into_response(),
    )
}

async fn find(
    State(s): State<Sandbox>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(object) = object_name(&object) else {
        return unknown_object(&object);
    };
    let call = match authenticate(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    call.finish(
        match s.store.sandbox_get(&call.account, object, &id).await {
            Ok(Some(r)) if r.deleted_at.is_none() => {
                Json(json!({"data": record_of(&r).to_json(true)})).into_response()
            }
            Ok(_) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {object} with id {id}"),
            ),
            Err(e) => unavailable(e),
        },
    )
}

/// Validates a write body against the object's schema; returns the field
/// errors in the sandbox's own error shape.
fn validate(object: &str, body: &Map<String, Value>, creating: bool) -> Result<(), Box<Response>> {
    let schema = schema_of(object);
    let mut errors = Vec::new();
    for (k, v) in body {
        match schema.fields.iter().find(|(f, _)| f == k) {
            None => errors.push(json!({"field": k, "message": "unknown field"})),
            Some((_, t)) if !v.is_null() && !t.accepts(v) => {
                errors.push(json!({"field": k, "message": format!("must be {}", t.describe())}))
            }
            _ => {}
        }
    }
    if creating {
        for f in schema.required {
            if body.get(*f).is_none_or(Value::is_null) {
                errors.push(json!({"field": f, "message": "is required"}));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": "validation_failed", "message": "The record is invalid.", "fields": errors})),
            )
                .into_response(),
        ))
    }
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body must be a JSON object",
        ))),
        Err(e) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            e.to_string(),
        ))),
    }
}

async fn create(
    State(s): State<Sandbox>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(object) = object_name(&object) else {
        return unknown_object(&object);
    };
    if object == "users" {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "read_only",
            "users are read-only",
        );
    }
    let fields = match parse_body(&body).and_then(|m| validate(object, &m, true).map(|_| m)) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let call = match authenticate(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let fields = Value::Object(fields).to_string();
    call.finish(
        match s
            .store
            .sandbox_create(&call.account, object, &fields, now_ms())
            .await
        {
            Ok(r) => (
                StatusCode::CREATED,
                Json(json!({"data": record_of(&r).to_json(true)})),
            )
                .into_response(),
            Err(e) => unavailable(e),
        },
    )
}

async fn update(
    State(s): State<Sandbox>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(object) = object_name(&object) else {
        return unknown_object(&object);
    };
    if object == "users" {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "read_only",
            "users are read-only",
        );
    }
    let fields = match parse_body(&body).and_then(|m| validate(object, &m, false).map(|_| m)) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let call = match authenticate(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let merge = |old: &str| {
        let mut m: Map<String, Value> = serde_json::from_str(old).unwrap_or_default();
        for (k, v) in fields {
            m.insert(k, v);
        }
        Value::Object(m).to_string()
    };
    call.finish(
        match s
            .store
            .sandbox_update(&call.account, object, &id, now_ms(), false, merge)
            .await
        {
            Ok(Some(r)) => Json(json!({"data": record_of(&r).to_json(true)})).into_response(),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {object} with id {id}"),
            ),
            Err(e) => unavailable(e),
        },
    )
}

async fn remove(
    State(s): State<Sandbox>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(object) = object_name(&object) else {
        return unknown_object(&object);
    };
    if object == "users" {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "read_only",
            "users are read-only",
        );
    }
    let call = match authenticate(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    call.finish(
        match s
            .store
            .sandbox_update(&call.account, object, &id, now_ms(), true, str::to_string)
            .await
        {
            Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {object} with id {id}"),
            ),
            Err(e) => unavailable(e),
        },
    )
}
