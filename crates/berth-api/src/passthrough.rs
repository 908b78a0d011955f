//! Passthrough: a raw call to the connection's provider with its credential
//! attached (refreshed as needed). Seed 000 spelling at `/passthrough`,
//! Vessel v2 spelling (`$native`) at `/api/passthrough`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use berth_connections::ProviderCall;
use berth_outbound::Method;
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::{ApiError, V2};
use crate::extract::{AccessConnection, Body};
use crate::models::*;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/passthrough", post(passthrough))
        .route("/api/passthrough", post(passthrough_v2))
}

/// Headers a caller may not set on a provider call.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    "cookie",
    "proxy-authorization",
];

fn to_call(input: PassthroughIn) -> Result<ProviderCall, ApiError<V2>> {
    let method = match input.method.to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        other => {
            return Err(ApiError::bad_request(
                "INVALID_BODY",
                format!("method `{other}` is not one of GET, POST, PUT, PATCH, DELETE"),
            ));
        }
    };
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    for (k, v) in input.headers.unwrap_or_default() {
        let Value::String(v) = v else {
            return Err(ApiError::bad_request(
                "INVALID_BODY",
                format!("headers.{k} must be a string"),
            ));
        };
        let valid = axum::http::HeaderName::from_bytes(k.as_bytes()).is_ok()
            && axum::http::HeaderValue::from_str(&v).is_ok();
        if !valid || RESERVED.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(ApiError::bad_request(
                "INVALID_BODY",
                format!("header `{k}` is not allowed or not valid"),
            ));
        }
        headers.retain(|(h, _)| !h.eq_ignore_ascii_case(&k));
        headers.push((k, v));
    }
    let body = input.body.or(input.json).filter(|b| !b.is_null());
    let body = body.map(|b| {
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
        query.push((k, v));
    }
    Ok(ProviderCall {
        method,
        path: input.path,
        query,
        headers,
        body,
    })
}

fn body_value(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Call the provider's API with the connection's credentials (seed shape).
///
/// Answers with the provider's status code and `{"result": <provider body>}`.
#[utoipa::path(post, path = "/passthrough", tag = "passthrough",
    request_body = PassthroughIn, security(("apiToken" = [], "accessToken" = [])),
    responses((status = 200, body = Envelope<Value>), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn passthrough(
    State(state): State<AppState>,
    access: AccessConnection<V2>,
    Body(input, ..): Body<PassthroughIn, V2>,
) -> Result<Response, ApiError<V2>> {
    let call = to_call(input)?;
    let resp = state
        .platform
        .call_provider(&access.connection, &call)
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
    responses((status = 200, body = Envelope<PassthroughV2Out>), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn passthrough_v2(
    State(state): State<AppState>,
    access: AccessConnection<V2>,
    Body(input, ..): Body<PassthroughIn, V2>,
) -> Result<Json<Envelope<PassthroughV2Out>>, ApiError<V2>> {
    let call = to_call(input)?;
    let resp = state
        .platform
        .call_provider(&access.connection, &call)
        .await?;
    let mut headers = Map::new();
    for (k, v) in &resp.headers {
        headers.insert(k.clone(), Value::String(v.clone()));
    }
    let url = call.path.clone();
    Ok(v2(PassthroughV2Out {
        native: NativeResponse {
            headers,
            body: body_value(&resp.body),
            url,
            status_code: resp.status,
        },
    }))
}
