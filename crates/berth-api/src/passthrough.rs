//! Raw calls to a connection's provider, credential attached (refreshed as
//! needed), through the shared outbound layer:
//!
//! - `POST /passthrough` (seed 000) and `POST /api/passthrough` (Vessel v2
//!   `$native`), `POST /crm/passthrough` and `/engagement/passthrough`
//!   (Vessel v1): JSON in, JSON out, bodies buffered;
//! - `ANY /proxy/{path}`: the streaming mode. Bodies pass through in both
//!   directions without being held whole; the provider's status and
//!   headers (minus hop-by-hop ones and cookies) come back as they are.
//!
//! Every call, and every call refused here, lands in the request log
//! (`POST /logs/list`).

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use berth_connections::tokens::{forwardable_response_header, strip_response_headers};
use berth_connections::{LogQuery, ProviderCall, StreamCall};
use berth_outbound::{Method, OutBody};
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::{ApiError, Family, V1, V2};
use crate::extract::{AccessConnection, ApiEnv, Body};
use crate::models::*;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/passthrough", post(passthrough))
        .route("/api/passthrough", post(passthrough_v2))
        .route("/crm/passthrough", post(passthrough_v1))
        .route("/engagement/passthrough", post(passthrough_v1))
        .route("/proxy/{*path}", any(proxy))
        .route("/logs/list", post(list_logs))
}

/// Request bodies of the streaming proxy up to this size are buffered, so
/// a 401 can be retried after a token refresh; larger ones stream once.
const REPLAYABLE_BODY: u64 = 64 * 1024;

fn parse_method<F>(m: &str) -> Result<Method, ApiError<F>> {
    match m.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        other => Err(ApiError::bad_request(
            "INVALID_METHOD",
            format!(
                "method `{}` is not one of GET, POST, PUT, PATCH, DELETE",
                other.escape_debug()
            ),
        )),
    }
}

struct CallIn {
    method: String,
    path: String,
    body: Option<Value>,
    query: Option<Map<String, Value>>,
    headers: Option<Map<String, Value>>,
}

fn to_call<F>(input: CallIn) -> Result<ProviderCall, ApiError<F>> {
    let method = parse_method(&input.method)?;
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    for (k, v) in input.headers.unwrap_or_default() {
        let Value::String(v) = v else {
            return Err(ApiError::bad_request(
                "INVALID_BODY",
                format!("headers.{k} must be a string"),
            ));
        };
        if HeaderName::from_bytes(k.as_bytes()).is_err() || HeaderValue::from_str(&v).is_err() {
            return Err(ApiError::bad_request(
                "INVALID_HEADER",
                format!(
                    "header `{}` is not a valid HTTP header name and value",
                    k.escape_debug()
                ),
            ));
        }
        headers.retain(|(h, _)| !h.eq_ignore_ascii_case(&k));
        headers.push((k, v));
    }
    let body = input.body.filter(|b| !b.is_null()).map(|b| {
        headers.push(("content-type".into(), "application/json".into()));
        serde_json::to_vec(&b).expect("json serializes")
    });
    let mut query = Vec::new();
    for (k, v) in input.query.unwrap_or_default() {
        let v = match v {
            Value::String(s) => s,
            Value::Null => continue,
            other => other.to_string(),
        };
        // As `/proxy` does for its raw query: a control character has no
        // business in a provider's query, and encoded it can still split
        // a header or a log line downstream.
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(ApiError::bad_request(
                "INVALID_QUERY",
                format!(
                    "query parameter `{}` has a control character (CR, LF, NUL...)",
                    k.escape_debug()
                ),
            ));
        }
        query.push((k, v));
    }
    Ok(ProviderCall {
        method,
        path: input.path,
        query,
        headers,
        body,
        read_only: false,
    })
}

fn body_value(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn header_map(headers: &[(String, String)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in headers {
        if forwardable_response_header(k) {
            out.insert(k.clone(), Value::String(v.clone()));
        }
    }
    out
}

/// Runs a buffered passthrough, logging a refusal of the request itself.
async fn run<F: Family>(
    state: &AppState,
    conn: &berth_store::Connection,
    input: CallIn,
) -> Result<(ProviderCall, berth_outbound::OutboundResponse), ApiError<F>> {
    let (method, path) = (input.method.clone(), input.path.clone());
    let call = to_call::<F>(input).inspect_err(|e| {
        state
            .platform
            .log_refused(conn, &method, &path, e.status.as_u16(), &e.message)
    })?;
    let resp = state.platform.call_provider(conn, &call).await?;
    Ok((call, resp))
}

/// Logs a body that could not be read or parsed, then answers its error.
fn refused_body<F: Family, T>(
    state: &AppState,
    conn: &berth_store::Connection,
    body: Result<Body<T, F>, ApiError<F>>,
) -> Result<T, ApiError<F>> {
    body.map(|b| b.0).inspect_err(|e| {
        state
            .platform
            .log_refused(conn, "?", "/", e.status.as_u16(), &e.message)
    })
}

/// Call the provider's API with the connection's credentials (seed shape).
///
/// Answers with the provider's status code and `{"result": <provider body>}`.
#[utoipa::path(post, path = "/passthrough", tag = "passthrough",
    request_body = PassthroughIn, security(("apiToken" = [], "accessToken" = [])),
    responses((status = 200, body = Envelope<Value>), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn passthrough(
    State(state): State<AppState>,
    access: AccessConnection<V2>,
    body: Result<Body<PassthroughIn, V2>, ApiError<V2>>,
) -> Result<Response, ApiError<V2>> {
    let input = refused_body(&state, &access.connection, body)?;
    let (_, resp) = run::<V2>(
        &state,
        &access.connection,
        CallIn {
            method: input.method,
            path: input.path,
            body: input.body.or(input.json),
            query: input.query,
            headers: input.headers,
        },
    )
    .await?;
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((
        status,
        Json(serde_json::json!({"result": body_value(&resp.body)})),
    )
        .into_response())
}

/// Call the provider's API (Vessel v2 shape: `{$native: {headers, body, url}}`).
#[utoipa::path(post, path = "/api/passthrough", tag = "passthrough",
    request_body = PassthroughIn, security(("apiToken" = [], "accessToken" = [])),
    responses((status = 200, body = Envelope<PassthroughV2Out>), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn passthrough_v2(
    State(state): State<AppState>,
    access: AccessConnection<V2>,
    body: Result<Body<PassthroughIn, V2>, ApiError<V2>>,
) -> Result<Json<Envelope<PassthroughV2Out>>, ApiError<V2>> {
    let input = refused_body(&state, &access.connection, body)?;
    let (call, resp) = run::<V2>(
        &state,
        &access.connection,
        CallIn {
            method: input.method,
            path: input.path,
            body: input.json.or(input.body),
            query: input.query,
            headers: input.headers,
        },
    )
    .await?;
    Ok(v2(PassthroughV2Out {
        native: NativeResponse {
            headers: header_map(&resp.headers),
            body: body_value(&resp.body),
            url: call.path,
            status_code: resp.status,
        },
    }))
}

/// Call the provider's API (Vessel v1 shape). Also served at
/// `/engagement/passthrough`.
#[utoipa::path(post, path = "/crm/passthrough", tag = "passthrough",
    request_body = V1PassthroughIn, security(("v1ApiToken" = [])),
    responses((status = 200, body = V1PassthroughOut), (status = 401, body = V1ErrorBody), (status = 409, body = V1ErrorBody), (status = 429, body = V1ErrorBody), (status = 502, body = V1ErrorBody)))]
pub async fn passthrough_v1(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    Body(input, ..): Body<V1PassthroughIn, V1>,
) -> Result<Json<V1PassthroughOut>, ApiError<V1>> {
    if input.access_token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "MISSING_ACCESS_TOKEN",
            "missing accessToken: send the connection's access token in the body",
        ));
    }
    let conn = state
        .platform
        .connection_for_access_token(&env, &input.access_token)
        .await?;
    let (call, resp) = run::<V1>(
        &state,
        &conn,
        CallIn {
            method: input.method,
            path: input.path,
            body: input.body,
            query: input.query,
            headers: input.headers,
        },
    )
    .await?;
    Ok(Json(V1PassthroughOut {
        headers: header_map(&resp.headers),
        url: call.path,
        status_code: resp.status,
        body: body_value(&resp.body),
    }))
}

/// The streaming proxy: any method, the rest of the path and the query go
/// to the provider; request and response bodies stream.
#[utoipa::path(get, path = "/proxy/{path}", tag = "passthrough",
    params(("path" = String, Path, description = "Path on the provider's API; any method is accepted")),
    security(("apiToken" = [], "accessToken" = [])),
    responses((status = 200, description = "The provider's own status, headers and body"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn proxy(
    State(state): State<AppState>,
    access: AccessConnection<V2>,
    req: Request,
) -> Result<Response, ApiError<V2>> {
    let (parts, body) = req.into_parts();
    let conn = &access.connection;
    let raw = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = raw
        .strip_prefix("/proxy")
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/")
        .to_string();
    let method = match parts.method.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => parts.method.clone(),
        other => {
            let e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "INVALID_METHOD",
                format!("method `{other}` cannot be proxied"),
            );
            state
                .platform
                .log_refused(conn, other, &path, 405, &e.message);
            return Err(e);
        }
    };
    let length = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = parts
        .headers
        .get(axum::http::header::TRANSFER_ENCODING)
        .is_some();
    let (body, content_length) = match (length, chunked) {
        (Some(0), _) | (None, false) => (OutBody::Empty, None),
        (Some(n), false) if n <= REPLAYABLE_BODY => {
            let bytes = axum::body::to_bytes(body, n as usize).await.map_err(|e| {
                ApiError::bad_request(
                    "INVALID_BODY",
                    format!("could not read the request body: {e}"),
                )
            })?;
            (OutBody::Bytes(bytes), None)
        }
        // Streamed with its length, not re-chunked: some providers refuse
        // chunked uploads.
        _ => (OutBody::body(body), length.map(|n| n.to_string())),
    };
    let resp = state
        .platform
        .stream_provider(
            conn,
            StreamCall {
                method,
                path,
                headers: parts.headers,
                body,
                content_length,
            },
        )
        .await?;
    let mut out = resp.headers;
    strip_response_headers(&mut out);
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(axum::body::Body::new(resp.body));
    *response.status_mut() = status;
    *response.headers_mut() = out;
    Ok(response)
}

fn time_bound(b: &Option<TimeBound>, name: &str) -> Result<Option<i64>, ApiError<V2>> {
    match b {
        None => Ok(None),
        Some(TimeBound::Millis(ms)) => Ok(Some(*ms)),
        Some(TimeBound::Text(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|_| {
                ApiError::bad_request(
                    "INVALID_FILTER",
                    format!("{name} must be Unix milliseconds or an RFC 3339 time"),
                )
            }),
    }
}

/// The request log: every provider call of the environment (and calls
/// Berth refused), newest first.
#[utoipa::path(post, path = "/logs/list", tag = "passthrough",
    request_body(content = Option<ListLogsIn>, content_type = "application/json"),
    security(("apiToken" = [])),
    responses((status = 200, body = Envelope<LogsOut>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_logs(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<ListLogsIn, V2>,
) -> Result<Json<Envelope<LogsOut>>, ApiError<V2>> {
    let q = LogQuery {
        connection_id: input.connection_id,
        status_class: input.status_class,
        layer: input.layer,
        since_ms: time_bound(&input.since, "since")?,
        until_ms: time_bound(&input.until, "until")?,
        cursor: input.cursor,
        limit: input.limit.unwrap_or(100),
    };
    let (rows, next) = state.platform.list_request_logs(&env, &q).await?;
    Ok(v2(LogsOut {
        logs: rows.into_iter().map(LogOut::from).collect(),
        next_page_cursor: next,
    }))
}
