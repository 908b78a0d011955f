//! The platform API of seed 000 (and Vessel v2's spellings): integrations,
//! sessions, the connect step, token exchange and connections. Every route
//! is POST with a JSON body and answers `{"result": ...}`; each is served
//! both bare and under `/api`.

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use berth_connections::{NewSessionRequest, StartAuth, session_kind};

use crate::AppState;
use crate::error::{ApiError, V2};
use crate::extract::{
    AccessTokenHeader, ApiEnv, Body, MaybeApiEnv, MaybeSession, Session, SessionTokenHeader,
};
use crate::models::*;

type Res<T> = Result<Json<Envelope<T>>, ApiError<V2>>;

/// Routes the connect modal and client packages call from the customer's
/// page (cross-origin, authenticated by the session token): they answer
/// CORS. Without prefix; the caller mounts them bare and at `/api`.
pub fn browser_routes() -> Router<AppState> {
    Router::new()
        .route("/integrations/list", post(list_integrations))
        .route("/integrations/find", post(find_integration))
        .route("/auth/start", post(start_auth))
        .route("/auth/check-permissions", post(check_permissions))
        .route("/auth/session-status", post(session_status))
}

/// Server-to-server platform routes (API token), without prefix; the caller
/// mounts them bare and at `/api`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/session-token", post(create_session_token))
        .route("/auth/access-token", post(exchange_access_token))
        .route("/auth/oauth-apps/create", post(create_oauth_app))
        .route("/auth/oauth-apps/list", post(list_oauth_apps))
        .route("/auth/oauth-apps/find", post(find_oauth_app))
        .route("/auth/oauth-apps/delete", post(delete_oauth_app))
        .route("/connections/list", post(list_connections))
        .route("/connections/get", post(get_connection))
        .route("/connections/find", post(find_connection))
        .route("/connections/delete", post(delete_connection))
}

/// List all integrations.
///
/// Public: answers without a token, with a valid API or session token, and
/// with 401 for an invalid one.
#[utoipa::path(post, path = "/integrations/list", tag = "integrations",
    request_body(content = Option<ListIntegrationsIn>, content_type = "application/json"),
    responses((status = 200, body = Envelope<IntegrationsOut>), (status = 401, body = ErrorBody)))]
pub async fn list_integrations(
    State(state): State<AppState>,
    _api: MaybeApiEnv<V2>,
    _session: MaybeSession<V2>,
    Body(input, ..): Body<ListIntegrationsIn, V2>,
) -> Res<IntegrationsOut> {
    let filters = input.filters.unwrap_or_default();
    if let Some(c) = &filters.category
        && !berth_catalog::CATEGORIES.contains(&c.as_str())
    {
        return Err(ApiError::bad_request(
            "INVALID_BODY",
            format!(
                "unknown category `{c}` (one of {})",
                berth_catalog::CATEGORIES.join(", ")
            ),
        ));
    }
    let public_url = &state.platform.config().public_url;
    let integrations = state
        .platform
        .catalog()
        .all()
        .iter()
        .filter(|i| filters.ids.as_ref().is_none_or(|ids| ids.contains(&i.id)))
        .filter(|i| filters.category.as_ref().is_none_or(|c| i.has_category(c)))
        .map(|i| IntegrationOut::new(i, public_url))
        .collect();
    Ok(v2(IntegrationsOut { integrations }))
}

/// Find one integration by id.
#[utoipa::path(post, path = "/integrations/find", tag = "integrations",
    request_body = FindIn,
    responses((status = 200, body = Envelope<IntegrationFound>), (status = 404, body = ErrorBody)))]
pub async fn find_integration(
    State(state): State<AppState>,
    _api: MaybeApiEnv<V2>,
    _session: MaybeSession<V2>,
    Body(input, ..): Body<FindIn, V2>,
) -> Res<IntegrationFound> {
    let i = state
        .platform
        .catalog()
        .get(&input.id)
        .ok_or_else(|| ApiError::not_found(format!("unknown integration `{}`", input.id)))?;
    Ok(v2(IntegrationFound {
        integration: IntegrationOut::new(i, &state.platform.config().public_url),
    }))
}

/// Create a session token for one end user's connect flow.
#[utoipa::path(post, path = "/auth/session-token", tag = "auth",
    request_body(content = Option<SessionTokenIn>, content_type = "application/json"),
    security(("apiToken" = [])),
    responses((status = 200, body = Envelope<SessionTokenOut>), (status = 401, body = ErrorBody)))]
pub async fn create_session_token(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<SessionTokenIn, V2>,
) -> Res<SessionTokenOut> {
    let session_token = state
        .platform
        .create_session(
            &env,
            session_kind::SESSION,
            NewSessionRequest {
                integration_id: input.integration_id,
                external_user_id: input.external_user_id,
                metadata: input.metadata,
                allowed_origins: input.allowed_origins.unwrap_or_default(),
                connection_id: input.connection_id,
            },
        )
        .await?;
    Ok(v2(SessionTokenOut { session_token }))
}

/// Submit the connect form (called by the connect modal).
///
/// For apiKey, basic and client-credentials methods the credentials are
/// verified with the provider, vaulted, and the connection is created;
/// `oauthURL` is then null. For oauth2 the result is the provider's
/// authorization URL (PKCE S256, signed single-use state); the connection is
/// created when the provider redirects to `/auth/oauth-callback`.
#[utoipa::path(post, path = "/auth/start", tag = "auth",
    request_body = StartAuthIn,
    security(("sessionToken" = [])),
    responses((status = 200, body = Envelope<StartAuthOut>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn start_auth(
    State(state): State<AppState>,
    session: Session<V2>,
    Body(input, ..): Body<StartAuthIn, V2>,
) -> Res<StartAuthOut> {
    let out = state
        .platform
        .start_auth(
            &session.session,
            StartAuth {
                integration_id: input.integration_id,
                auth_type: input.auth_type,
                oauth_app_id: input.oauth_app_id,
                answers: input.answers.unwrap_or_default(),
            },
        )
        .await?;
    Ok(v2(StartAuthOut {
        oauth_url: out.oauth_url,
        connection_id: out.connection_id,
        integration_id: out.integration_id,
        public_token: out.public_token,
    }))
}

/// Exchange a completed session token for the connection's access token.
#[utoipa::path(post, path = "/auth/access-token", tag = "auth",
    request_body(content = Option<AccessTokenIn>, content_type = "application/json"),
    security(("apiToken" = [], "sessionToken" = [])),
    responses((status = 200, body = Envelope<AccessTokenOut>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn exchange_access_token(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    SessionTokenHeader(header): SessionTokenHeader,
    Body(input, ..): Body<AccessTokenIn, V2>,
) -> Res<AccessTokenOut> {
    let token = header.or(input.session_token).ok_or_else(|| {
        ApiError::bad_request(
            "MISSING_SESSION_TOKEN",
            "send the session token in the x-vessel-session-token header",
        )
    })?;
    let ex = state.platform.exchange_session_token(&env, &token).await?;
    Ok(v2(AccessTokenOut {
        access_token: ex.access_token,
        connection_id: ex.connection.id.clone(),
        integration_id: ex.connection.integration_id.clone(),
    }))
}

/// List the environment's connections (100 per page by default).
#[utoipa::path(post, path = "/connections/list", tag = "connections",
    request_body(content = Option<ListConnectionsIn>, content_type = "application/json"),
    security(("apiToken" = [])),
    responses((status = 200, body = Envelope<ConnectionsOut>), (status = 401, body = ErrorBody)))]
pub async fn list_connections(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<ListConnectionsIn, V2>,
) -> Res<ConnectionsOut> {
    let (rows, next) = state
        .platform
        .list_connections(&env, input.cursor.as_deref(), input.limit.unwrap_or(100))
        .await?;
    // Two queries for the whole page, not two per connection.
    let ids: Vec<&str> = rows.iter().map(|c| c.id.as_str()).collect();
    let store = state.platform.store();
    let mut states: HashMap<String, Vec<berth_store::SyncState>> = HashMap::new();
    for s in store
        .sync_states_of(&ids)
        .await
        .map_err(berth_connections::PlatformError::from)?
    {
        states.entry(s.connection_id.clone()).or_default().push(s);
    }
    let schedules: HashMap<String, (Option<i64>, Option<i64>)> = store
        .sync_schedules_of(&ids)
        .await
        .map_err(berth_connections::PlatformError::from)?
        .into_iter()
        .map(|(id, interval, next)| (id, (interval, next)))
        .collect();
    let connections = rows
        .iter()
        .map(|c| {
            let sync = progress_json(
                &state,
                c,
                states.remove(&c.id).unwrap_or_default(),
                schedules.get(&c.id).copied().unwrap_or((None, None)),
            );
            ConnectionOut::new(c, &env.project_id).with_sync(sync)
        })
        .collect();
    Ok(v2(ConnectionsOut {
        connections,
        next_page_cursor: next,
    }))
}

/// Get a connection (seed shape: the connection is the result).
#[utoipa::path(post, path = "/connections/get", tag = "connections",
    request_body = FindIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<ConnectionOut>), (status = 404, body = ErrorBody)))]
pub async fn get_connection(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<FindIn, V2>,
) -> Res<ConnectionOut> {
    let c = state.platform.get_connection(&env, &input.id).await?;
    let sync = sync_progress(&state, &c).await?;
    Ok(v2(ConnectionOut::new(&c, &env.project_id).with_sync(sync)))
}

/// Find a connection (Vessel v2 shape: `{connection}`).
#[utoipa::path(post, path = "/connections/find", tag = "connections",
    request_body = FindIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<ConnectionFound>), (status = 404, body = ErrorBody)))]
pub async fn find_connection(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<FindIn, V2>,
) -> Res<ConnectionFound> {
    let c = state.platform.get_connection(&env, &input.id).await?;
    Ok(v2(ConnectionFound {
        connection: ConnectionOut::new(&c, &env.project_id)
            .with_sync(sync_progress(&state, &c).await?),
    }))
}

/// Delete a connection: revokes its access token and erases its credentials.
///
/// If `x-vessel-access-token` is sent it must belong to that connection.
#[utoipa::path(post, path = "/connections/delete", tag = "connections",
    request_body = FindIn, security(("apiToken" = [], "accessToken" = [])),
    responses((status = 200, body = Envelope<SuccessOut>), (status = 404, body = ErrorBody)))]
pub async fn delete_connection(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    AccessTokenHeader(access): AccessTokenHeader,
    Body(input, ..): Body<FindIn, V2>,
) -> Res<SuccessOut> {
    if let Some(token) = access {
        let c = state
            .platform
            .connection_for_access_token(&env, &token)
            .await?;
        if c.id != input.id {
            return Err(ApiError::unauthorized(
                "ACCESS_TOKEN_MISMATCH",
                "the x-vessel-access-token belongs to another connection",
            ));
        }
    }
    state.platform.delete_connection(&env, &input.id).await?;
    Ok(v2(SuccessOut { success: true }))
}

/// Whether the session's connection works (called by the connect modal).
#[utoipa::path(post, path = "/auth/check-permissions", tag = "auth",
    security(("sessionToken" = [])),
    responses((status = 200, body = Envelope<CheckPermissionsOut>), (status = 401, body = ErrorBody)))]
pub async fn check_permissions(
    State(state): State<AppState>,
    session: Session<V2>,
) -> Res<CheckPermissionsOut> {
    let s = &session.session;
    let out = match (s.state.as_str(), &s.connection_id) {
        ("created", _) | (_, None) => CheckPermissionsOut {
            valid: false,
            error_message: Some(
                s.last_error
                    .clone()
                    .unwrap_or_else(|| "the connection is not finished yet".into()),
            ),
        },
        (_, Some(id)) => match state
            .platform
            .store()
            .get_connection(&s.environment_id, id)
            .await
            .map_err(berth_connections::PlatformError::from)?
        {
            Some(c) if c.auth_state == "ok" => CheckPermissionsOut {
                valid: true,
                error_message: None,
            },
            Some(c) => CheckPermissionsOut {
                valid: false,
                error_message: c
                    .auth_error
                    .or(Some("the connection needs re-authentication".into())),
            },
            None => CheckPermissionsOut {
                valid: false,
                error_message: Some("the connection was deleted".into()),
            },
        },
    };
    Ok(v2(out))
}

/// The state of the session's connect flow (polled by the connect modal
/// while the user is at the provider's consent screen).
#[utoipa::path(post, path = "/auth/session-status", tag = "auth",
    security(("sessionToken" = [])),
    responses((status = 200, body = Envelope<SessionStatusOut>), (status = 401, body = ErrorBody)))]
pub async fn session_status(
    State(state): State<AppState>,
    SessionTokenHeader(token): SessionTokenHeader,
    session: Session<V2>,
) -> Res<SessionStatusOut> {
    let st = state
        .platform
        .session_status(token.as_deref().unwrap_or_default())
        .await?;
    let s = st.session;
    drop(session);
    Ok(v2(SessionStatusOut {
        state: s.state,
        kind: s.kind,
        integration_id: s.integration_id.or(st.reauth_integration_id),
        connection_id: s.connection_id,
        reauth_connection_id: s.reauth_connection_id,
        allowed_origins: serde_json::from_str(&s.allowed_origins).unwrap_or_default(),
        last_error: s.last_error,
        public_token: st.public_token,
        expires_at: chrono::DateTime::from_timestamp_millis(s.expires_at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}

/// Register an OAuth app (client id and secret) for an integration in this
/// environment. The secret is vaulted and never returned.
#[utoipa::path(post, path = "/auth/oauth-apps/create", tag = "oauth-apps",
    request_body = CreateOAuthAppIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<OAuthAppFound>), (status = 400, body = ErrorBody)))]
pub async fn create_oauth_app(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<CreateOAuthAppIn, V2>,
) -> Res<OAuthAppFound> {
    let app = state
        .platform
        .create_oauth_app(
            &env,
            berth_connections::NewOAuthApp {
                integration_id: input.integration_id,
                client_id: input.client_id,
                client_secret: input.client_secret.into(),
                scopes: input.scopes.unwrap_or_default(),
            },
        )
        .await?;
    Ok(v2(OAuthAppFound {
        oauth_app: OAuthAppOut::new(&app),
    }))
}

/// List this environment's OAuth apps and the server's default apps.
#[utoipa::path(post, path = "/auth/oauth-apps/list", tag = "oauth-apps",
    security(("apiToken" = [])),
    responses((status = 200, body = Envelope<OAuthAppsOut>)))]
pub async fn list_oauth_apps(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
) -> Res<OAuthAppsOut> {
    let apps = state.platform.list_oauth_apps(&env).await?;
    Ok(v2(OAuthAppsOut {
        oauth_apps: apps.iter().map(OAuthAppOut::new).collect(),
    }))
}

/// Find an OAuth app.
#[utoipa::path(post, path = "/auth/oauth-apps/find", tag = "oauth-apps",
    request_body = FindIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<OAuthAppFound>), (status = 404, body = ErrorBody)))]
pub async fn find_oauth_app(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<FindIn, V2>,
) -> Res<OAuthAppFound> {
    let app = state.platform.find_oauth_app(&env, &input.id).await?;
    Ok(v2(OAuthAppFound {
        oauth_app: OAuthAppOut::new(&app),
    }))
}

/// Delete an OAuth app. Connections made with it stop refreshing.
#[utoipa::path(post, path = "/auth/oauth-apps/delete", tag = "oauth-apps",
    request_body = FindIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<IdOut>), (status = 404, body = ErrorBody)))]
pub async fn delete_oauth_app(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<FindIn, V2>,
) -> Res<IdOut> {
    state.platform.delete_oauth_app(&env, &input.id).await?;
    Ok(v2(IdOut { id: input.id }))
}

/// A connection's sync progress: per object, its phase, records and pages
/// synced, the high-water mark, the last error and (when the provider
/// gives totals) a percentage; plus its schedule.
pub(crate) async fn sync_progress(
    state: &AppState,
    c: &berth_store::Connection,
) -> Result<serde_json::Value, ApiError<V2>> {
    let store = state.platform.store();
    let states = store
        .sync_states(&c.id)
        .await
        .map_err(berth_connections::PlatformError::from)?;
    let schedule = store
        .sync_schedule(&c.id)
        .await
        .map_err(berth_connections::PlatformError::from)?;
    Ok(progress_json(state, c, states, schedule))
}

/// A connection's `sync` progress from its object states and schedule.
fn progress_json(
    state: &AppState,
    c: &berth_store::Connection,
    states: Vec<berth_store::SyncState>,
    (interval, next): (Option<i64>, Option<i64>),
) -> serde_json::Value {
    let mut objects = serde_json::Map::new();
    for s in states {
        let percent = s
            .total
            .filter(|t| *t > 0)
            .map(|t| (s.records_synced * 100 / t).min(100));
        objects.insert(
            s.object.clone(),
            serde_json::json!({
                "phase": s.phase,
                "state": s.run_state,
                "recordsSynced": s.records_synced,
                "pages": s.pages,
                "lastCursorTime": s.high_water.map(iso),
                "lastError": s.last_error,
                "percent": percent,
                "lastSyncedAt": s.last_synced_at.map(iso),
                "lastFullSyncAt": s.full_at.map(iso),
                "fullListing": s.run_state == "running" && s.phase != "initial" && s.run_since.is_none(),
            }),
        );
    }
    serde_json::json!({
        "objects": objects,
        "intervalSeconds": interval.unwrap_or_else(|| state.sync.default_interval_secs(&c.integration_id)),
        "customInterval": interval.is_some(),
        "nextSyncAt": next.map(iso),
    })
}
