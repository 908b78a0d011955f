//! The unified CRM API in both generations:
//!
//! - v1 (`/crm/*`, bare JSON, `accessToken` in the query or body): lists,
//!   search, get (contacts also by email), batch, create, update, details,
//!   custom fields, user associations;
//! - v2 (`POST /unifications/crm/{object}/{op}`, bare and under `/api`):
//!   list, find, create, update, delete, batch-read, details, plus
//!   `custom-fields/create` and `info` (also spelled `info/find`).
//!
//! Handlers parse and map; `berth_sync::Crm` does the work.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_store::Connection;
use berth_sync::crm::{ListArgs, View};
use berth_sync::{Crm, CrmError, Generation};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, Family, V1, V2};
use crate::extract::{AccessConnection, ApiEnv, parse_body};
use crate::models::{Envelope, ErrorBody, V1ErrorBody};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/crm/{a}", get(v1_get_1).post(v1_write_1).patch(v1_write_1))
        .route(
            "/crm/{a}/{b}",
            get(v1_get_2).post(v1_write_2).patch(v1_write_2),
        )
        .route("/crm/{a}/{b}/{c}", get(v1_get_3).post(v1_write_3))
        .route("/unifications/crm/info", post(v2_info))
        .route("/api/unifications/crm/info", post(v2_info))
        .route("/unifications/crm/{object}/{op}", post(v2_op))
        .route("/api/unifications/crm/{object}/{op}", post(v2_op))
        .route("/connections/sync", post(sync_now))
        .route("/api/connections/sync", post(sync_now))
        .route("/connections/update", post(update_schedule))
        .route("/api/connections/update", post(update_schedule))
}

impl<F> From<CrmError> for ApiError<F> {
    fn from(e: CrmError) -> Self {
        let message = e.to_string();
        match e {
            CrmError::Syncing => Self::new(StatusCode::CONFLICT, "DATA_STILL_SYNCING", message),
            // A 4xx: monitors read every 5xx as Berth's own failure, and
            // this is the caller asking for what the integration lacks.
            CrmError::NotSupported(_) => Self::bad_request("NOT_SUPPORTED", message),
            CrmError::BadRequest { code, .. } => Self::bad_request(code, message),
            CrmError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", message),
            CrmError::Provider { status, .. } => {
                // A provider's 4xx stays a 4xx; anything else is its failure.
                let s = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.is_client_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                Self::new(s, "PROVIDER_ERROR", message)
            }
            CrmError::RateLimited {
                retry_after_secs, ..
            } => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message);
                e.retry_after = Some(retry_after_secs);
                e
            }
            CrmError::Unavailable(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "PROVIDER_UNAVAILABLE", message)
            }
            CrmError::StoreUnavailable(source) => {
                ApiError::from(berth_connections::PlatformError::StoreUnavailable(source))
            }
            CrmError::Internal(source) => {
                ApiError::from(berth_connections::PlatformError::Internal(source))
            }
        }
    }
}

/// A CRM error in family `F`'s shape, with the provider's field errors
/// under `metadata.originalErrors` when it refused a write.
fn crm_error<F: Family>(e: CrmError) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let CrmError::Provider { status, errors, .. } = &e {
        let (status, errors) = (*status, errors.clone());
        let api: ApiError<F> = e.into();
        let mut body = F::body(api.status, api.code, &api.message);
        let meta = json!({"originalStatusCode": status, "originalErrors": errors});
        match body.get_mut("error").and_then(Value::as_object_mut) {
            Some(err) => {
                err.insert("metadata".into(), meta);
            }
            None => {
                body["metadata"] = meta;
            }
        }
        return (api.status, Json(body)).into_response();
    }
    ApiError::<F>::from(e).into_response()
}

type Resp = axum::response::Response;

fn ok(v: Value) -> Resp {
    use axum::response::IntoResponse;
    Json(v).into_response()
}

/// A rendered list page (JSON bytes) or the family's error.
fn page<F: Family>(r: Result<bytes::Bytes, CrmError>) -> Resp {
    use axum::response::IntoResponse;
    match r {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => crm_error::<F>(e),
    }
}

fn err<F: Family>(e: ApiError<F>) -> Resp {
    use axum::response::IntoResponse;
    e.into_response()
}

// ---- v1 --------------------------------------------------------------------

/// What a v1 path names: an object and an operation.
enum V1Op {
    List,
    Search,
    One,
    Details,
    Batch,
}

fn v1_route(parts: &[&str]) -> Option<(&'static berth_unified::crm::Object, V1Op)> {
    use berth_unified::crm::{by_v1_plural, by_v1_singular};
    let (path, op) = match parts {
        [p] => (p.to_string(), None),
        [a, b] if matches!(*b, "search" | "details" | "batch") => (a.to_string(), Some(*b)),
        [a, b] => (format!("{a}/{b}"), None),
        [a, b, c] => (format!("{a}/{b}"), Some(*c)),
        _ => return None,
    };
    if let Some(o) = by_v1_plural(&path) {
        return match op {
            None => Some((o, V1Op::List)),
            Some("search") => Some((o, V1Op::Search)),
            _ => None,
        };
    }
    let o = by_v1_singular(&path)?;
    match op {
        None => Some((o, V1Op::One)),
        Some("details") => Some((o, V1Op::Details)),
        Some("batch") => Some((o, V1Op::Batch)),
        _ => None,
    }
}

fn unknown_path<F>(parts: &[&str]) -> ApiError<F> {
    ApiError::not_found(format!(
        "no CRM endpoint `/crm/{}`; objects are users, contacts, deals, accounts, leads, notes, tasks, events, event/attendees, emails, calls, lists",
        parts.join("/")
    ))
}

async fn v1_connection(
    state: &AppState,
    env: &berth_connections::Env,
    token: Option<&str>,
) -> Result<Connection, ApiError<V1>> {
    let token = token.map(str::trim).filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::unauthorized(
            "MISSING_ACCESS_TOKEN",
            "missing accessToken: send the connection's access token (query for GET, body otherwise)",
        )
    })?;
    Ok(state
        .platform
        .connection_for_access_token(env, token)
        .await?)
}

/// Comma-separated ids (v1 `ids=a,b`).
fn split_ids(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A v1 list or search page (`{<plural>: [...], nextPageCursor}`), from
/// the page cache when it holds.
async fn v1_page(
    crm: &Crm,
    conn: &berth_store::Connection,
    o: &'static berth_unified::crm::Object,
    args: &ListArgs,
    view: &View,
) -> Resp {
    page::<V1>(
        crm.list_bytes(
            conn,
            o,
            Generation::V1,
            args,
            view,
            "v1",
            |items, next| json!({o.v1_list_key: items, "nextPageCursor": next}),
        )
        .await,
    )
}

/// v1 `ids` in a body: an array of ids (strings, or numbers as providers'
/// numeric ids are often written) or a comma-separated string. `None` when
/// absent; anything else is a 400 that names the bad entry rather than an
/// id silently dropped.
fn ids_of<F>(v: Option<&Value>) -> Result<Option<Vec<String>>, ApiError<F>> {
    let bad = |what: String| ApiError::bad_request("INVALID_IDS", what);
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(bad(format!(
                    "ids[{i}] must be a string id, not {}",
                    kind_of(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(Value::String(s)) => Ok(Some(split_ids(s))),
        Some(other) => Err(bad(format!(
            "ids must be an array of ids or a comma-separated string, not {}",
            kind_of(other)
        ))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

fn limit_of<F>(q: &HashMap<String, String>) -> Result<Option<i64>, ApiError<F>> {
    match q.get("limit").filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "INVALID_LIMIT",
                format!("limit must be an integer, not `{}`", s.escape_debug()),
            )
        }),
    }
}

/// v1 reads of one path segment: `/crm/{plural}` lists (`contacts`,
/// `users?archived=`, `lists?objectType=`), `/crm/{singular}` gets one by
/// `id` (contacts: also by email).
#[utoipa::path(get, path = "/crm/{object}", tag = "crm-v1",
    params(
        ("accessToken" = Option<String>, Query, description = "The connection's access token (GET; writes take it in the body)"),
        ("cursor" = Option<String>, Query, description = "nextPageCursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
        ("allFields" = Option<bool>, Query, description = "Add the provider's raw fields as `additional` (details: all of the provider's fields)"),
        ("id" = Option<String>, Query, description = "One record's v1 id or native id (contacts: also an email)"),
        ("ids" = Option<String>, Query, description = "Batch: comma-separated ids"),
        ("object" = String, Path, description = "users, contacts, accounts, deals, leads, notes, tasks, events, emails, calls, lists, or a singular"),
    ),
    security(("v1ApiToken" = [])),
    responses((status = 200, body = Value), (status = 400, body = V1ErrorBody), (status = 401, body = V1ErrorBody), (status = 404, body = V1ErrorBody), (status = 409, body = V1ErrorBody, description = "DATA_STILL_SYNCING")))]
pub(crate) async fn v1_get_1(
    state: State<AppState>,
    env: ApiEnv<V1>,
    Path(a): Path<String>,
    q: Query<HashMap<String, String>>,
) -> Resp {
    v1_get(state, env, vec![a], q).await
}

/// v1 reads of two segments: `/crm/{singular}/details` (field metadata),
/// `/crm/{singular}/batch`, and `/crm/event/attendees`.
#[utoipa::path(get, path = "/crm/{object}/{op}", tag = "crm-v1",
    params(
        ("accessToken" = Option<String>, Query, description = "The connection's access token (GET; writes take it in the body)"),
        ("cursor" = Option<String>, Query, description = "nextPageCursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
        ("allFields" = Option<bool>, Query, description = "Add the provider's raw fields as `additional` (details: all of the provider's fields)"),
        ("id" = Option<String>, Query, description = "Deal details: a deal's v1 or native id (the stage options of its pipeline) or a pipeline id"),
        ("ids" = Option<String>, Query, description = "Batch: comma-separated ids"),
        ("object" = String, Path, description = "A singular (`contact`) or `event`"),
        ("op" = String, Path, description = "details, batch, attendees, attendee"),
    ),
    security(("v1ApiToken" = [])),
    responses((status = 200, body = Value), (status = 400, body = V1ErrorBody), (status = 401, body = V1ErrorBody), (status = 404, body = V1ErrorBody), (status = 409, body = V1ErrorBody)))]
pub(crate) async fn v1_get_2(
    state: State<AppState>,
    env: ApiEnv<V1>,
    Path((a, b)): Path<(String, String)>,
    q: Query<HashMap<String, String>>,
) -> Resp {
    v1_get(state, env, vec![a, b], q).await
}

async fn v1_get_3(
    state: State<AppState>,
    env: ApiEnv<V1>,
    Path((a, b, c)): Path<(String, String, String)>,
    q: Query<HashMap<String, String>>,
) -> Resp {
    v1_get(state, env, vec![a, b, c], q).await
}

async fn v1_get(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    parts: Vec<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Resp {
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let Some((o, op)) = v1_route(&parts) else {
        return err(unknown_path::<V1>(&parts));
    };
    let conn = match v1_connection(&state, &env, q.get("accessToken").map(String::as_str)).await {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let crm = state.sync.crm();
    let view = View {
        raw: flag(&q, "allFields"),
        associations: None,
    };
    let result = match op {
        V1Op::List => {
            let limit = match limit_of::<V1>(&q) {
                Ok(l) => l,
                Err(e) => return err(e),
            };
            let args = ListArgs {
                cursor: q.get("cursor").cloned(),
                limit,
                filters: list_filters(o, &q),
                live: false,
            };
            return v1_page(&crm, &conn, o, &args, &view).await;
        }
        V1Op::One => {
            let id = q.get("id").cloned().unwrap_or_default();
            crm.find(&conn, o, Generation::V1, &id, &view, false)
                .await
                .map(|r| json!({o.v1_one_key: r}))
        }
        V1Op::Batch => {
            let ids = q.get("ids").map(|s| split_ids(s)).unwrap_or_default();
            crm.batch(&conn, o, Generation::V1, &ids, &view)
                .await
                .map(|(found, invalid)| json!({o.v1_list_key: found, "invalidIds": invalid}))
        }
        V1Op::Details => {
            let deal = q.get("id").map(String::as_str);
            details(&crm, &conn, o, Generation::V1, flag(&q, "allFields"), deal).await
        }
        V1Op::Search => {
            return err(ApiError::<V1>::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "search is POST",
            ));
        }
    };
    match result {
        Ok(v) => ok(v),
        Err(e) => crm_error::<V1>(e),
    }
}

/// v1 list filters given as query parameters: `archived` on users, and
/// `objectType` on lists.
fn list_filters(o: &berth_unified::crm::Object, q: &HashMap<String, String>) -> Value {
    match (o.name, q.get("archived"), q.get("objectType")) {
        ("users", Some(a), _) => json!({"archived": {"equals": a == "true"}}),
        ("lists", _, Some(t)) => json!({"objectType": {"equals": t, "mode": "insensitive"}}),
        _ => Value::Null,
    }
}

/// Field metadata, never cached (Vessel): the unified fields, then the
/// provider's custom fields (all of its fields with `allFields`).
async fn details(
    crm: &Crm,
    conn: &Connection,
    o: &'static berth_unified::crm::Object,
    g: Generation,
    all_fields: bool,
    deal: Option<&str>,
) -> Result<Value, CrmError> {
    let fields = crm.details(conn, o, g, all_fields, deal).await?;
    Ok(json!({"fields": fields, "nextPageCursor": null}))
}

/// Which object a custom-field path or `objectType` names: contacts,
/// leads, accounts (and deals, which both providers allow too).
fn custom_field_object<F>(name: &str) -> Result<&'static berth_unified::crm::Object, ApiError<F>> {
    let plural = match name {
        "contact" | "contacts" => "contacts",
        "lead" | "leads" => "leads",
        "account" | "accounts" => "accounts",
        "deal" | "deals" => "deals",
        other => {
            return Err(ApiError::bad_request(
                "INVALID_OBJECT_TYPE",
                format!(
                    "custom fields are on contacts, leads, accounts or deals, not `{}`",
                    other.escape_debug()
                ),
            ));
        }
    };
    berth_unified::crm::object(plural)
        .ok_or_else(|| ApiError::not_found(format!("unknown CRM object `{plural}`")))
}

/// v1 `POST /crm/users/associations {objectType, ids, cursor}`.
async fn user_associations(
    crm: &Crm,
    conn: &Connection,
    input: &Map<String, Value>,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError<V1>> {
    let t = input
        .get("objectType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let o = match t {
        "account" | "contact" | "deal" | "note" | "email" | "event" | "task" | "call" => {
            berth_unified::crm::by_v1_singular(t)
        }
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_OBJECT_TYPE",
            "objectType must be one of account, contact, deal, note, email, event, task, call",
        )
    })?;
    let ids = ids_of(input.get("ids"))?
        .ok_or_else(|| ApiError::bad_request("INVALID_IDS", "ids must be an array of user ids"))?;
    let cursor = input
        .get("cursor")
        .and_then(Value::as_str)
        .or(q.get("cursor").map(String::as_str));
    let (users, invalid, next) = crm.user_associations(conn, o, &ids, cursor).await?;
    Ok(json!({"users": users, "invalidIds": invalid, "nextPageCursor": next}))
}

/// v1 writes: `POST /crm/{singular} {accessToken, <singular>}` creates,
/// `PATCH` with `id` updates; both answer `{id}`.
#[utoipa::path(method(post, patch), path = "/crm/{object}", tag = "crm-v1",
    params(("object" = String, Path, description = "contact, account, deal, lead, note, task, event, email, call")),
    request_body = Value, security(("v1ApiToken" = [])),
    responses((status = 200, body = Value), (status = 400, body = V1ErrorBody), (status = 401, body = V1ErrorBody), (status = 404, body = V1ErrorBody), (status = 409, body = V1ErrorBody), (status = 422, body = V1ErrorBody, description = "The provider refused the write: metadata.originalErrors"), (status = 502, body = V1ErrorBody)))]
pub(crate) async fn v1_write_1(
    state: State<AppState>,
    env: ApiEnv<V1>,
    method: Method,
    Path(a): Path<String>,
    q: Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Resp {
    v1_write(state, env, method, vec![a], q, body).await
}

/// v1 POSTs of two segments: `/crm/{plural}/search {filters}`,
/// `/crm/{singular}/batch`, `/crm/{contact|lead|account}/custom-field`
/// (POST creates `{customField:{name, type, options?, customKey?}}`,
/// PATCH updates `{customField:{key, options}}`; both answer `{key}`), and
/// `/crm/users/associations {objectType, ids, cursor?}`.
#[utoipa::path(method(post, patch), path = "/crm/{object}/{op}", tag = "crm-v1",
    params(
        ("object" = String, Path, description = "A plural (search), a singular (batch, custom-field), or users"),
        ("op" = String, Path, description = "search, batch, custom-field, associations"),
        ("accessToken" = Option<String>, Query, description = "Or `accessToken` in the body"),
        ("cursor" = Option<String>, Query),
        ("limit" = Option<i64>, Query),
    ),
    request_body = Value, security(("v1ApiToken" = [])),
    responses((status = 200, body = Value), (status = 400, body = V1ErrorBody), (status = 401, body = V1ErrorBody), (status = 404, body = V1ErrorBody), (status = 409, body = V1ErrorBody), (status = 502, body = V1ErrorBody)))]
pub(crate) async fn v1_write_2(
    state: State<AppState>,
    env: ApiEnv<V1>,
    method: Method,
    Path((a, b)): Path<(String, String)>,
    q: Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Resp {
    v1_write(state, env, method, vec![a, b], q, body).await
}

async fn v1_write_3(
    state: State<AppState>,
    env: ApiEnv<V1>,
    method: Method,
    Path((a, b, c)): Path<(String, String, String)>,
    q: Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Resp {
    v1_write(state, env, method, vec![a, b, c], q, body).await
}

async fn v1_write(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    method: Method,
    parts: Vec<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Resp {
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let special = matches!(
        parts.as_slice(),
        [_, "custom-field"] | ["users", "associations"]
    );
    let route = v1_route(&parts);
    if route.is_none() && !special {
        return err(unknown_path::<V1>(&parts));
    }
    let input: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match parse_body::<Map<String, Value>, V1>(&body) {
            Ok(m) => m,
            Err(e) => return err(e),
        }
    };
    let token = input
        .get("accessToken")
        .and_then(Value::as_str)
        .or(q.get("accessToken").map(String::as_str));
    let conn = match v1_connection(&state, &env, token).await {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let crm = state.sync.crm();
    let Some((o, op)) = route else {
        return v1_special(&crm, &conn, &parts, method, &input, &q).await;
    };
    let view = View {
        raw: flag(&q, "allFields"),
        associations: None,
    };
    let result = match (op, method == Method::PATCH) {
        (V1Op::Search, false) => {
            let limit = match limit_of::<V1>(&q) {
                Ok(l) => l,
                Err(e) => return err(e),
            };
            let args = ListArgs {
                cursor: q.get("cursor").cloned().or_else(|| {
                    input
                        .get("cursor")
                        .and_then(Value::as_str)
                        .map(String::from)
                }),
                limit,
                filters: input.get("filters").cloned().unwrap_or(Value::Null),
                live: false,
            };
            return v1_page(&crm, &conn, o, &args, &view).await;
        }
        (V1Op::Batch, false) => {
            let ids = match ids_of::<V1>(input.get("ids")) {
                Ok(ids) => ids.unwrap_or_default(),
                Err(e) => return err(e),
            };
            crm.batch(&conn, o, Generation::V1, &ids, &view)
                .await
                .map(|(found, invalid)| json!({o.v1_list_key: found, "invalidIds": invalid}))
        }
        (V1Op::One, patch) => {
            let record = match input.get(o.v1_one_key) {
                Some(Value::Object(m)) => m.clone(),
                _ => {
                    return err(ApiError::<V1>::bad_request(
                        "INVALID_BODY",
                        format!(
                            "the body needs `{}`: an object of the fields to write",
                            o.v1_one_key
                        ),
                    ));
                }
            };
            if patch {
                let id = input.get("id").and_then(Value::as_str).unwrap_or("");
                crm.update(&conn, o, Generation::V1, id, &record)
                    .await
                    .map(|id| json!({"id": id}))
            } else {
                crm.create(&conn, o, Generation::V1, &record)
                    .await
                    .map(|id| json!({"id": id}))
            }
        }
        _ => return err(unknown_path::<V1>(&parts)),
    };
    match result {
        Ok(v) => ok(v),
        Err(e) => crm_error::<V1>(e),
    }
}

/// v1 writes that are not about records: `/crm/{object}/custom-field`
/// (POST creates, PATCH updates) and `POST /crm/users/associations`.
async fn v1_special(
    crm: &Crm,
    conn: &Connection,
    parts: &[&str],
    method: Method,
    input: &Map<String, Value>,
    q: &HashMap<String, String>,
) -> Resp {
    let result = match parts {
        ["users", "associations"] if method == Method::POST => {
            user_associations(crm, conn, input, q).await
        }
        [object, "custom-field"] => {
            let o = match custom_field_object::<V1>(object) {
                Ok(o) => o,
                Err(e) => return err(e),
            };
            let Some(field) = input.get("customField") else {
                return err(ApiError::<V1>::bad_request(
                    "INVALID_BODY",
                    "the body needs `customField`",
                ));
            };
            let key = if method == Method::PATCH {
                crm.update_custom_field(conn, o, field).await
            } else {
                crm.create_custom_field(conn, o, field).await
            };
            match key {
                Ok(k) => Ok(json!({"key": k})),
                Err(e) => return crm_error::<V1>(e),
            }
        }
        _ => Err(unknown_path::<V1>(parts)),
    };
    match result {
        Ok(v) => ok(v),
        Err(e) => err(e),
    }
}

// ---- v2 --------------------------------------------------------------------

/// `/unifications/crm/info` (and `info/find`): the connected account.
#[utoipa::path(post, path = "/unifications/crm/info", tag = "crm-v2",
    security(("apiToken" = [], "accessToken" = [])),
    responses((status = 200, body = Envelope<Value>, description = "`{url, orgId, userId, currency}`"), (status = 401, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn v2_info(State(state): State<AppState>, access: AccessConnection<V2>) -> Resp {
    info(&state, &access.connection).await
}

async fn info(state: &AppState, conn: &Connection) -> Resp {
    match state.sync.crm().info(conn).await {
        Ok(i) => ok(json!({"result": {
            "url": i.url, "orgId": i.org_id, "userId": i.user_id, "currency": i.currency,
        }})),
        Err(e) => crm_error::<V2>(e),
    }
}

/// `custom-fields/create {objectType, customField}`.
async fn v2_custom_field(state: &AppState, conn: &Connection, input: &Map<String, Value>) -> Resp {
    let t = input
        .get("objectType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let o = match custom_field_object::<V2>(t) {
        Ok(o) => o,
        Err(e) => return err(e),
    };
    let Some(field) = input.get("customField") else {
        return err(ApiError::<V2>::bad_request(
            "INVALID_BODY",
            "the body needs `customField`",
        ));
    };
    match state.sync.crm().create_custom_field(conn, o, field).await {
        Ok(k) => ok(json!({"result": {"key": k}})),
        Err(e) => crm_error::<V2>(e),
    }
}

/// The v2 unified CRM: `list {cursor?, filters?, associations?,
/// include?, synced?}`, `find {id}`, `create {<singular>}`, `update {id,
/// <singular>}`, `delete {id}`, `batch-read {ids}`, `details
/// {allFields?}` on users, contacts, accounts, deals, leads, notes, tasks,
/// events, attendees, emails, calls, lists; plus `custom-fields/create
/// {objectType, customField}` and `info/find`.
#[utoipa::path(post, path = "/unifications/crm/{object}/{op}", tag = "crm-v2",
    params(
        ("object" = String, Path, description = "contacts, accounts, … or custom-fields, info"),
        ("op" = String, Path, description = "list, find, create, update, delete, batch-read, details"),
    ),
    request_body = Value, security(("apiToken" = [], "accessToken" = [])),
    responses((status = 200, body = Envelope<Value>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(crate) async fn v2_op(
    State(state): State<AppState>,
    access: AccessConnection<V2>,
    Path((object, op)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Resp {
    let input: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match parse_body::<Map<String, Value>, V2>(&body) {
            Ok(m) => m,
            Err(e) => return err(e),
        }
    };
    match (object.as_str(), op.as_str()) {
        ("info", "find") => return info(&state, &access.connection).await,
        ("custom-fields", "create") => {
            return v2_custom_field(&state, &access.connection, &input).await;
        }
        _ => {}
    }
    let o = match Crm::object(&object, Generation::V2) {
        Ok(o) => o,
        Err(e) => return crm_error::<V2>(e),
    };
    let conn = &access.connection;
    let crm = state.sync.crm();
    let raw = input
        .get("include")
        .and_then(|i| i.get("$native"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let associations = match input.get("associations") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut keys = Vec::new();
            for v in a {
                match v.as_str().and_then(berth_unified::crm::v2_association_keys) {
                    Some(k) => keys.extend_from_slice(k),
                    None => {
                        return err(ApiError::<V2>::bad_request(
                            "INVALID_ASSOCIATION",
                            format!(
                                "unknown association {v}; one of users, deals, accounts, leads, contacts, attendees"
                            ),
                        ));
                    }
                }
            }
            Some(keys)
        }
        Some(_) => {
            return err(ApiError::<V2>::bad_request(
                "INVALID_ASSOCIATION",
                "associations must be an array of names",
            ));
        }
    };
    let view = View { raw, associations };
    let live = match input.get("synced") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => !b,
        Some(_) => {
            return err(ApiError::<V2>::bad_request(
                "INVALID_BODY",
                "synced must be a boolean",
            ));
        }
    };
    let str_of = |k: &str| input.get(k).and_then(Value::as_str).map(String::from);
    let one = |input: &Map<String, Value>| -> Result<Map<String, Value>, ApiError<V2>> {
        match o.v2_write_keys().iter().find_map(|k| input.get(*k)) {
            Some(Value::Object(m)) => Ok(m.clone()),
            _ => Err(ApiError::bad_request(
                "INVALID_BODY",
                format!(
                    "the body needs `{}`: an object of the fields to write",
                    o.v2_one_key
                ),
            )),
        }
    };
    let result = match op.as_str() {
        "list" => {
            if input.contains_key("limit") && !input["limit"].is_i64() {
                return err(ApiError::<V2>::bad_request(
                    "INVALID_LIMIT",
                    "limit must be an integer",
                ));
            }
            let mut filters = input.get("filters").cloned().unwrap_or(Value::Null);
            // v2 lists take `objectType: 'contacts' | 'leads'`.
            if o.name == "lists"
                && let Some(t) = input.get("objectType").and_then(Value::as_str)
            {
                let t = t.strip_suffix('s').unwrap_or(t);
                let by_type = json!({"equals": t, "mode": "insensitive"});
                match &mut filters {
                    Value::Object(m) => {
                        m.entry("objectType").or_insert(by_type);
                    }
                    other => *other = json!({"objectType": by_type}),
                }
            }
            let args = ListArgs {
                cursor: str_of("cursor"),
                limit: input.get("limit").and_then(Value::as_i64),
                filters,
                live,
            };
            return page::<V2>(
                crm.list_bytes(
                    conn,
                    o,
                    Generation::V2,
                    &args,
                    &view,
                    "v2",
                    |items, next| json!({"result": {o.v2_list_key(): items, "nextPageCursor": next}}),
                )
                .await,
            );
        }
        "find" => {
            let id = str_of("id").unwrap_or_default();
            crm.find(conn, o, Generation::V2, &id, &view, live)
                .await
                .map(|r| json!({o.v2_one_key: r}))
        }
        "batch-read" => {
            let ids: Vec<String> = match input.get("ids") {
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
                _ => {
                    return err(ApiError::<V2>::bad_request(
                        "INVALID_BODY",
                        "ids must be an array of strings",
                    ));
                }
            };
            crm.batch(conn, o, Generation::V2, &ids, &view)
                .await
                .map(|(found, _)| json!({o.v2_list_key(): found}))
        }
        "create" => match one(&input) {
            Ok(m) => crm
                .create(conn, o, Generation::V2, &m)
                .await
                .map(|id| json!({"id": id})),
            Err(e) => return err(e),
        },
        "update" => match one(&input) {
            Ok(m) => {
                let id = str_of("id").unwrap_or_default();
                crm.update(conn, o, Generation::V2, &id, &m)
                    .await
                    .map(|id| json!({"id": id}))
            }
            Err(e) => return err(e),
        },
        "delete" => {
            let id = str_of("id").unwrap_or_default();
            crm.delete(conn, o, Generation::V2, &id)
                .await
                .map(|_| json!({}))
        }
        "details" => {
            let all = input
                .get("allFields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let deal = str_of("id");
            details(&crm, conn, o, Generation::V2, all, deal.as_deref()).await
        }
        other => {
            return err(ApiError::<V2>::not_found(format!(
                "no operation `{}` on {}; one of list, find, create, update, delete, batch-read, details",
                other.escape_debug(),
                o.name
            )));
        }
    };
    match result {
        Ok(v) => ok(json!({"result": v})),
        Err(e) => crm_error::<V2>(e),
    }
}

// ---- on-demand sync ------------------------------------------------------------

/// Queue a sync of a connection now (`{id}`); `alreadyQueued` when one
/// was waiting.
#[utoipa::path(post, path = "/connections/sync", tag = "connections",
    request_body = Value, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<Value>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn sync_now(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    body: axum::body::Bytes,
) -> Resp {
    let input: Map<String, Value> = match parse_body::<Map<String, Value>, V2>(&body) {
        Ok(m) => m,
        Err(e) => return err(e),
    };
    let Some(id) = input
        .get("id")
        .or(input.get("connectionId"))
        .and_then(Value::as_str)
    else {
        return err(ApiError::<V2>::bad_request(
            "MISSING_ID",
            "`id` (the connection id) is required",
        ));
    };
    let conn = match state.platform.get_connection(&env, id).await {
        Ok(c) => c,
        Err(e) => return err(ApiError::<V2>::from(e)),
    };
    match state.sync.request_sync(&env.id, &conn.id).await {
        Ok(queued) => {
            ok(json!({"result": {"id": conn.id, "queued": queued, "alreadyQueued": !queued}}))
        }
        Err(e) => err(ApiError::<V2>::from(
            berth_connections::PlatformError::from(e),
        )),
    }
}

/// Berth's own `POST /connections/update {id, syncIntervalSeconds}`: a
/// connection's time between syncs (60 s to 30 days; `null` goes back to
/// the integration's or the server's default), counted from now.
#[utoipa::path(post, path = "/connections/update", tag = "connections",
    request_body = Value, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<Value>, description = "`{id, syncIntervalSeconds, custom, nextSyncAt}`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn update_schedule(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    body: axum::body::Bytes,
) -> Resp {
    const MAX: i64 = 30 * 86_400;
    let input: Map<String, Value> = match parse_body::<Map<String, Value>, V2>(&body) {
        Ok(m) => m,
        Err(e) => return err(e),
    };
    let Some(id) = input.get("id").and_then(Value::as_str) else {
        return err(ApiError::<V2>::bad_request(
            "MISSING_ID",
            "`id` (the connection id) is required",
        ));
    };
    let interval = match input.get("syncIntervalSeconds") {
        Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if (berth_sync::MIN_INTERVAL_SECS..=MAX).contains(&n) => Some(n),
            _ => {
                return err(ApiError::<V2>::bad_request(
                    "INVALID_SYNC_INTERVAL",
                    format!(
                        "syncIntervalSeconds must be an integer from {} to {MAX}, or null for the default",
                        berth_sync::MIN_INTERVAL_SECS
                    ),
                ));
            }
        },
        None => {
            return err(ApiError::<V2>::bad_request(
                "INVALID_BODY",
                "nothing to update: send syncIntervalSeconds",
            ));
        }
    };
    let conn = match state.platform.get_connection(&env, id).await {
        Ok(c) => c,
        Err(e) => return err(ApiError::<V2>::from(e)),
    };
    let effective =
        interval.unwrap_or_else(|| state.sync.default_interval_secs(&conn.integration_id));
    let next = berth_connections::now_ms() + 1000 * effective;
    match state
        .platform
        .store()
        .set_sync_schedule(&env.id, &conn.id, interval, next)
        .await
    {
        Ok(true) => ok(json!({"result": {
            "id": conn.id,
            "syncIntervalSeconds": effective,
            "custom": interval.is_some(),
            "nextSyncAt": crate::models::iso(next),
        }})),
        Ok(false) => err(ApiError::<V2>::not_found(format!("no connection `{id}`"))),
        Err(e) => err(ApiError::<V2>::from(
            berth_connections::PlatformError::from(e),
        )),
    }
}
