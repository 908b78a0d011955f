//! Berth's HTTP API: the one place that knows about HTTP and wire shapes.
//!
//! Handlers are thin: extractors resolve tenancy and auth (`extract`), the
//! domain work happens in `berth-connections`, and each API family maps
//! errors to its own shape (`error`).
#![forbid(unsafe_code)]

mod connect_ui;
mod crm;
pub mod error;
pub mod extract;
mod link;
pub mod models;
mod passthrough;
mod platform;
mod webhooks;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use berth_connections::Platform;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};

use crate::error::{ApiError, V2};

/// Largest accepted JSON request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Shared state of every handler. Cloning it (axum does, per request and
/// per extractor) touches one reference count.
///
/// Decision: each HTTP serving thread builds its router from its own
/// `AppState` (see `berth::http_server`), so that count is written by one
/// core only; three shared counts bumped by every request on every core
/// made a cache line bounce between cores on each call.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

/// What handlers reach through [`AppState`].
pub struct Services {
    pub platform: Platform,
    pub webhooks: berth_webhooks::Webhooks,
    pub sync: berth_sync::Engine,
}

impl AppState {
    pub fn new(
        platform: Platform,
        webhooks: berth_webhooks::Webhooks,
        sync: berth_sync::Engine,
    ) -> Self {
        Self(Arc::new(Services {
            platform,
            webhooks,
            sync,
        }))
    }

    /// A new `AppState` over the same services, with a reference count of
    /// its own.
    pub fn fork(&self) -> Self {
        Self::new(
            self.0.platform.clone(),
            self.0.webhooks.clone(),
            self.0.sync.clone(),
        )
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The whole HTTP API. `extra` is merged in (the sandbox provider, later
/// the connect modal) so that `berth` can compose independent routers.
pub fn router(state: AppState, extra: Router) -> Router {
    // Only the routes the modal and the client packages call from a
    // customer's page answer CORS; API-token routes stay server-to-server.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::mirror_request())
        .allow_methods([axum::http::Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            axum::http::HeaderName::from_static(extract::SESSION_HEADER),
        ])
        .max_age(std::time::Duration::from_secs(600));
    let browser = Router::new()
        .merge(platform::browser_routes())
        .nest("/api", platform::browser_routes())
        .layer(cors);
    let server_routes = || platform::routes().merge(webhooks::routes());
    let api = Router::new()
        .merge(server_routes())
        .nest("/api", server_routes())
        .merge(browser)
        .merge(passthrough::routes())
        .merge(crm::routes())
        .merge(connect_ui::routes())
        .merge(link::routes())
        .merge(webhooks::v1_routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/icons/{file}", get(icon))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .with_state(state);
    // One `layer` call with the stack composed: each `Router::layer` wraps
    // every route in another boxed service, and three of them showed up on
    // every proxied call.
    let app = api.merge(extra);
    let limits = tower::ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(extract::ReadBodylessBodies);
    // Decision: the access-log layer only when its lines are written (the
    // filter is fixed at start): it reads the clock three times and wraps
    // every response body, for nothing when `BERTH_LOG` is `warn`.
    if !tracing::enabled!(tracing::Level::INFO) {
        return app.layer(limits);
    }
    app.layer(
        tower::ServiceBuilder::new()
            .layer(
                // Spans carry method and path only: query strings hold v1
                // access tokens and must never reach a log line.
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request<_>| {
                        tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                    })
                    .on_request(())
                    .on_response(
                        |res: &axum::http::Response<_>, latency: std::time::Duration, _span: &tracing::Span| {
                            tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_millis() as u64, "request");
                        },
                    ),
            )
            .layer(limits),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::<V2>::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "internal error; the details are in the server log",
    )
    .into_response()
}

async fn not_found() -> ApiError<V2> {
    ApiError::not_found("no such route; GET /openapi.json lists every route")
}

/// Health check: 200 when the store answers.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "the store answers"), (status = 503, description = "the store does not answer")))]
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.platform.store().ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

/// Prometheus metrics: provider calls by provider and status, latency
/// histograms, retries, rate-limit waits; webhook delivery attempts by
/// outcome, their latency, disabled endpoints and the delivery backlog. No
/// tenant data in any label.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    state.platform.outbound().metrics().encode_into(&mut out);
    state.webhooks.encode_metrics(&mut out).await;
    out.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// An integration's icon, drawn by Berth.
#[utoipa::path(get, path = "/icons/{file}", tag = "meta",
    params(("file" = String, Path, description = "`<integration id>.svg`")),
    responses((status = 200, content_type = "image/svg+xml", body = String), (status = 404, body = models::ErrorBody)))]
pub async fn icon(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let id = file.strip_suffix(".svg").unwrap_or(&file);
    match state.platform.catalog().get(id) {
        Some(i) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("image/svg+xml"),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                ),
            ],
            berth_catalog::icon_svg(i),
        )
            .into_response(),
        None => ApiError::<V2>::not_found(format!("no integration `{id}`")).into_response(),
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 description of Berth")))]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_string(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Berth API",
        description = "Berth: self-hosted embedded integrations and a unified API for go-to-market tools, compatible with the Vessel platform (v2) and link (v1) APIs.\n\nEvery platform route is served both bare (`/auth/session-token`) and under `/api` (`/api/auth/session-token`).",
        license(name = "Apache-2.0")
    ),
    paths(
        platform::list_integrations,
        platform::find_integration,
        platform::create_session_token,
        platform::start_auth,
        platform::check_permissions,
        platform::session_status,
        platform::exchange_access_token,
        platform::create_oauth_app,
        platform::list_oauth_apps,
        platform::find_oauth_app,
        platform::delete_oauth_app,
        passthrough::passthrough,
        passthrough::passthrough_v2,
        passthrough::passthrough_v1,
        passthrough::proxy,
        passthrough::list_logs,
        platform::list_connections,
        platform::get_connection,
        platform::find_connection,
        platform::delete_connection,
        crm::sync_now,
        crm::update_schedule,
        crm::v1_get_1,
        crm::v1_get_2,
        crm::v1_write_1,
        crm::v1_write_2,
        crm::v2_op,
        crm::v2_info,
        link::link_token,
        link::link_exchange,
        link::get_connection,
        link::delete_connection,
        link::list_connections,
        link::crm_integrations,
        link::engagement_integrations,
        webhooks::create_seed,
        webhooks::create_v2,
        webhooks::list,
        webhooks::find,
        webhooks::update,
        webhooks::delete,
        webhooks::rotate_secret,
        webhooks::event_types,
        webhooks::list_messages,
        webhooks::list_attempts,
        webhooks::replay,
        webhooks::v1_get,
        webhooks::v1_set,
        webhooks::v1_delete,
        healthz,
        metrics,
        icon,
        openapi_json,
    ),
    modifiers(&Security, &ApiAliases)
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        for (name, header) in [
            ("apiToken", "x-vessel-api-token"),
            ("sessionToken", "x-vessel-session-token"),
            ("accessToken", "x-vessel-access-token"),
            ("v1ApiToken", "vessel-api-token"),
        ] {
            c.add_security_scheme(
                name,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(header))),
            );
        }
    }
}

/// Documents the `/api`-prefixed spelling of every platform route.
struct ApiAliases;

impl utoipa::Modify for ApiAliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let aliased: Vec<_> = openapi
            .paths
            .paths
            .iter()
            .filter(|(p, _)| {
                p.starts_with("/integrations/")
                    || p.starts_with("/auth/")
                    || p.starts_with("/connections/")
                    || p.starts_with("/webhooks")
                    || p.starts_with("/unifications/")
            })
            .map(|(p, item)| (format!("/api{p}"), item.clone()))
            .collect();
        for (p, item) in aliased {
            openapi.paths.paths.insert(p, item);
        }
    }
}

/// The OpenAPI document, pretty-printed (the committed `docs/openapi.json`).
pub fn openapi_string() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}
