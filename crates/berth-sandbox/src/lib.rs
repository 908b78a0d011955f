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
//! refused (to try the error path). State lives in memory: it is regenerated
//! from the key after a restart, and writes made before the restart are lost.
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
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use data::OBJECTS;
use data::{Record, schema_of};

/// Default and maximum page sizes.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 100;

#[derive(Default)]
struct Account {
    next_id: u64,
    objects: HashMap<&'static str, BTreeMap<String, Record>>,
    rate_limit: Option<RateWindow>,
}

struct RateWindow {
    per_minute: u32,
    started: Instant,
    used: u32,
}

/// Shared sandbox state. Clone it into the router.
#[derive(Clone, Default)]
pub struct Sandbox {
    accounts: Arc<Mutex<HashMap<String, Account>>>,
}

/// The sandbox's routes, to be nested under `/sandbox/api/v1`, on a
/// state of their own (tests that want one sandbox per app).
pub fn router() -> Router {
    router_with(Sandbox::default())
}

/// The sandbox's routes over `state`. A server builds one router per
/// serving thread, and every one of them must see the same accounts, or a
/// record created on one thread is missing on the next call.
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

/// Authenticates the key, applies the account's rate limit, and runs `f`
/// on the account. Returns the response with rate-limit headers.
fn with_account(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    f: impl FnOnce(&mut Account) -> Response,
) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if key.is_empty() {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <api key>`",
        );
    }
    if key.starts_with("invalid") {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "The API key is invalid or has been revoked.",
        );
    }
    let account_id = hex::encode(&Sha256::digest(key.as_bytes())[..16]);
    let mut accounts = sandbox.accounts.lock().unwrap_or_else(|p| p.into_inner());
    let account = accounts
        .entry(account_id.clone())
        .or_insert_with(|| data::generate(&account_id));
    let mut limit_headers = None;
    if let Some(w) = &mut account.rate_limit {
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
            return r;
        }
        w.used += 1;
        limit_headers = Some((w.per_minute, w.per_minute - w.used, reset));
    }
    let mut resp = f(account);
    if let Some((limit, remaining, reset)) = limit_headers {
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    }
    resp
}

async fn me(State(s): State<Sandbox>, headers: HeaderMap) -> Response {
    with_account(&s, &headers, |a| {
        let owner = a
            .objects
            .get("users")
            .and_then(|u| u.values().next())
            .map(|r| r.to_json(false))
            .unwrap_or(Value::Null);
        Json(json!({
            "user": owner,
            "org": {"id": "sandbox-org", "name": "Sandbox Inc.", "url": "https://sandbox.berth.invalid", "currency": "USD"},
        }))
        .into_response()
    })
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
    with_account(&s, &headers, |a| match parsed {
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()),
        Ok(set) => {
            a.rate_limit = set
                .rate_limit_per_minute
                .filter(|n| *n > 0)
                .map(|n| RateWindow {
                    per_minute: n,
                    started: Instant::now(),
                    used: 0,
                });
            Json(json!({"rate_limit_per_minute": set.rate_limit_per_minute})).into_response()
        }
    })
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
    with_account(&s, &headers, |a| {
        let records = a.objects.entry(object).or_default();
        let mut page: Vec<&Record> = records
            .values()
            .filter(|r| include_deleted || r.deleted_at.is_none())
            .filter(|r| since.is_none_or(|t| r.updated_at >= t))
            .filter(|r| {
                after
                    .as_ref()
                    .is_none_or(|(t, id)| r.sort_key() > (*t, id.clone()))
            })
            .collect();
        page.sort_by_key(|r| r.sort_key());
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more
            .then(|| page.last().map(|r| data::encode_cursor(&r.sort_key())))
            .flatten();
        Json(json!({
            "data": page.iter().map(|r| r.to_json(true)).collect::<Vec<_>>(),
            "next_cursor": next,
        }))
        .into_response()
    })
}

async fn find(
    State(s): State<Sandbox>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(object) = object_name(&object) else {
        return unknown_object(&object);
    };
    with_account(&s, &headers, |a| {
        match a.objects.entry(object).or_default().get(&id) {
            Some(r) if r.deleted_at.is_none() => {
                Json(json!({"data": r.to_json(true)})).into_response()
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {object} with id {id}"),
            ),
        }
    })
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
    with_account(&s, &headers, |a| {
        a.next_id += 1;
        let id = a.next_id.to_string();
        let now = chrono::Utc::now();
        let r = Record {
            id: id.clone(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
            fields,
        };
        let out = r.to_json(true);
        a.objects.entry(object).or_default().insert(id, r);
        (StatusCode::CREATED, Json(json!({"data": out}))).into_response()
    })
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
    with_account(&s, &headers, |a| {
        match a.objects.entry(object).or_default().get_mut(&id) {
            Some(r) if r.deleted_at.is_none() => {
                for (k, v) in fields {
                    r.fields.insert(k, v);
                }
                r.updated_at =
                    chrono::Utc::now().max(r.updated_at + chrono::Duration::milliseconds(1));
                Json(json!({"data": r.to_json(true)})).into_response()
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {object} with id {id}"),
            ),
        }
    })
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
    with_account(&s, &headers, |a| {
        match a.objects.entry(object).or_default().get_mut(&id) {
            Some(r) if r.deleted_at.is_none() => {
                let now = chrono::Utc::now();
                r.deleted_at = Some(now);
                r.updated_at = now.max(r.updated_at + chrono::Duration::milliseconds(1));
                StatusCode::NO_CONTENT.into_response()
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {object} with id {id}"),
            ),
        }
    })
}
