//! The v1 "link" API of seed 001: link tokens, public-token exchange and
//! connection management, with bare JSON bodies and v1 error shapes.

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_connections::{NewSessionRequest, session_kind};

use crate::AppState;
use crate::error::{ApiError, V1};
use crate::extract::{ApiEnv, Body};
use crate::models::*;

type Res<T> = Result<Json<T>, ApiError<V1>>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/link/token", post(link_token))
        .route("/link/exchange", post(link_exchange))
        .route(
            "/connection/connection",
            get(get_connection).delete(delete_connection),
        )
        .route("/connection/connections", get(list_connections))
        .route("/connection/crm/integrations", get(crm_integrations))
        .route(
            "/connection/engagement/integrations",
            get(engagement_integrations),
        )
}

/// Create a link token for the v1 connect flow.
#[utoipa::path(post, path = "/link/token", tag = "v1",
    request_body(content = Option<LinkTokenIn>, content_type = "application/json"),
    security(("v1ApiToken" = [])),
    responses((status = 200, body = LinkTokenOut), (status = 401, body = V1ErrorBody)))]
pub async fn link_token(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    Body(input, ..): Body<LinkTokenIn, V1>,
) -> Res<LinkTokenOut> {
    let link_token = state
        .platform
        .create_session(
            &env,
            session_kind::LINK,
            NewSessionRequest {
                integration_id: input.integration_id,
                external_user_id: input.external_user_id,
                metadata: input.metadata,
                allowed_origins: input.allowed_origins.unwrap_or_default(),
                connection_id: input.connection_id,
            },
        )
        .await?;
    Ok(Json(LinkTokenOut { link_token }))
}

/// Exchange a public token for the connection's access token.
#[utoipa::path(post, path = "/link/exchange", tag = "v1",
    request_body = LinkExchangeIn, security(("v1ApiToken" = [])),
    responses((status = 200, body = LinkExchangeOut), (status = 400, body = V1ErrorBody), (status = 401, body = V1ErrorBody)))]
pub async fn link_exchange(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    Body(input, ..): Body<LinkExchangeIn, V1>,
) -> Res<LinkExchangeOut> {
    let ex = state
        .platform
        .exchange_public_token(&env, &input.public_token)
        .await?;
    let c = ex.connection;
    Ok(Json(LinkExchangeOut {
        connection_id: c.id,
        access_token: ex.access_token,
        integration_id: c.integration_id,
        native_org_id: c.native_org_id,
        native_user_id: c.native_user_id,
        native_org_url: c.native_org_url,
    }))
}

fn require_id(q: ConnectionIdIn, body: Option<ConnectionIdIn>) -> Result<String, ApiError<V1>> {
    q.connection_id
        .or(body.and_then(|b| b.connection_id))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("INVALID_BODY", "connectionId is required"))
}

/// Get a connection.
#[utoipa::path(get, path = "/connection/connection", tag = "v1",
    params(("connectionId" = String, Query)), security(("v1ApiToken" = [])),
    responses((status = 200, body = ConnectionV1Out), (status = 404, body = V1ErrorBody)))]
pub async fn get_connection(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    q: Result<Query<ConnectionIdIn>, axum::extract::rejection::QueryRejection>,
) -> Res<ConnectionV1Out> {
    let q = q.map(|q| q.0).unwrap_or_default();
    let id = require_id(q, None)?;
    let c = state.platform.get_connection(&env, &id).await?;
    Ok(Json(ConnectionV1Out {
        connection: (&c).into(),
    }))
}

/// Delete a connection (body or query `connectionId`).
#[utoipa::path(delete, path = "/connection/connection", tag = "v1",
    request_body = ConnectionIdIn, security(("v1ApiToken" = [])),
    responses((status = 200, body = Object), (status = 404, body = V1ErrorBody)))]
pub async fn delete_connection(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    q: Result<Query<ConnectionIdIn>, axum::extract::rejection::QueryRejection>,
    Body(input, ..): Body<ConnectionIdIn, V1>,
) -> Res<serde_json::Value> {
    let q = q.map(|q| q.0).unwrap_or_default();
    let id = require_id(q, Some(input))?;
    state.platform.delete_connection(&env, &id).await?;
    Ok(Json(serde_json::json!({})))
}

/// List all connections of the environment.
#[utoipa::path(get, path = "/connection/connections", tag = "v1",
    security(("v1ApiToken" = [])),
    responses((status = 200, body = ConnectionsV1Out), (status = 401, body = V1ErrorBody)))]
pub async fn list_connections(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
) -> Res<ConnectionsV1Out> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (rows, next) = state
            .platform
            .list_connections(&env, cursor.as_deref(), 500)
            .await?;
        out.extend(rows.iter().map(ConnectionV1::from));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    Ok(Json(ConnectionsV1Out { connections: out }))
}

fn integrations_of(state: &AppState, category: &str) -> IntegrationsV1Out {
    let public_url = &state.platform.config().public_url;
    IntegrationsV1Out {
        integrations: state
            .platform
            .catalog()
            .all()
            .iter()
            .filter(|i| i.has_category(category))
            .map(|i| IntegrationV1 {
                integration_id: i.id.clone(),
                name: i.name.clone(),
                icon_url: icon_url(public_url, &i.id),
            })
            .collect(),
    }
}

/// CRM integrations.
#[utoipa::path(get, path = "/connection/crm/integrations", tag = "v1",
    security(("v1ApiToken" = [])),
    responses((status = 200, body = IntegrationsV1Out), (status = 401, body = V1ErrorBody)))]
pub async fn crm_integrations(
    State(state): State<AppState>,
    _env: ApiEnv<V1>,
) -> Res<IntegrationsV1Out> {
    Ok(Json(integrations_of(&state, "crm")))
}

/// Sales-engagement integrations.
#[utoipa::path(get, path = "/connection/engagement/integrations", tag = "v1",
    security(("v1ApiToken" = [])),
    responses((status = 200, body = IntegrationsV1Out), (status = 401, body = V1ErrorBody)))]
pub async fn engagement_integrations(
    State(state): State<AppState>,
    _env: ApiEnv<V1>,
) -> Res<IntegrationsV1Out> {
    Ok(Json(integrations_of(&state, "engagement")))
}
