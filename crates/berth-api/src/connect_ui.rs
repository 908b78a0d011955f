//! The hosted connect modal: server-rendered pages plus a little vanilla JS,
//! embedded in the binary (no build step, no CDN).
//!
//! - `/modal/index.html`: the modal in an iframe (Vessel client-sdk, and
//!   Berth's `connect.js` / `init.js`), speaking the `_vessel_*` messages;
//! - `/connect#token=...`: the same flow as a full page, a shareable link;
//! - `/init.js`, `/connect.js`: the host-page script (`window.Vessel` for
//!   `@vesselapi/react-vessel-link`, `window.Berth`);
//! - `/auth/oauth-callback`: where providers redirect after consent.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_connections::{CallbackOutcome, CallbackParams};
use minijinja::{Environment, context};
use serde::Serialize;

use crate::AppState;

const CONNECT_HTML: &str = include_str!("../assets/connect.html");
const CALLBACK_HTML: &str = include_str!("../assets/callback.html");
const MODAL_JS: &str = include_str!("../assets/modal.js");
const MODAL_CSS: &str = include_str!("../assets/modal.css");
const CALLBACK_JS: &str = include_str!("../assets/callback.js");
const CONNECT_JS: &str = include_str!("../assets/connect.js");

/// The modal may be framed by any page: which pages may receive results is
/// decided per session (allowed origins), in the modal and in the API.
const CSP_FRAMEABLE: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors *";
const CSP_TOP_LEVEL: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/connect", get(connect_page))
        .route("/modal", get(modal_page))
        .route("/modal/", get(modal_page))
        .route("/modal/index.html", get(modal_page))
        .route(
            "/modal/modal.js",
            get(|| async { asset("text/javascript; charset=utf-8", MODAL_JS) }),
        )
        .route(
            "/modal/modal.css",
            get(|| async { asset("text/css; charset=utf-8", MODAL_CSS) }),
        )
        .route(
            "/modal/callback.js",
            get(|| async { asset("text/javascript; charset=utf-8", CALLBACK_JS) }),
        )
        .route(
            "/init.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONNECT_JS) }),
        )
        .route(
            "/connect.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONNECT_JS) }),
        )
        .route("/auth/oauth-callback", get(oauth_callback))
        .route("/api/auth/oauth-callback", get(oauth_callback))
}

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.add_template("connect.html", CONNECT_HTML)
            .expect("connect.html parses");
        env.add_template("callback.html", CALLBACK_HTML)
            .expect("callback.html parses");
        env
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

fn html(body: String, csp: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(csp),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(Serialize)]
struct PickerItem<'a> {
    id: &'a str,
    name: &'a str,
    categories: &'a [String],
}

#[derive(Serialize)]
struct CategoryItem {
    id: &'static str,
    label: &'static str,
}

fn category_label(c: &str) -> &'static str {
    match c {
        "crm" => "CRM",
        "engagement" => "Sales engagement",
        "chat" => "Chat",
        "marketing-automation" => "Marketing automation",
        "dialer" => "Dialer",
        "email" => "Email",
        "calendar" => "Calendar",
        _ => "Other",
    }
}

fn render_connect(state: &AppState, mode: &str) -> String {
    let catalog = state.platform.catalog();
    let integrations: Vec<_> = catalog
        .all()
        .iter()
        .map(|i| PickerItem {
            id: &i.id,
            name: &i.name,
            categories: &i.categories,
        })
        .collect();
    let categories: Vec<_> = berth_catalog::CATEGORIES
        .iter()
        .map(|c| CategoryItem {
            id: c,
            label: category_label(c),
        })
        .collect();
    templates()
        .get_template("connect.html")
        .and_then(|t| t.render(context! { mode, integrations, categories }))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "connect page failed to render");
            "<!doctype html><title>Error</title><p>The connect page failed to render.</p>".into()
        })
}

async fn connect_page(State(state): State<AppState>) -> Response {
    html(render_connect(&state, "page"), CSP_TOP_LEVEL)
}

async fn modal_page(State(state): State<AppState>) -> Response {
    html(render_connect(&state, "iframe"), CSP_FRAMEABLE)
}

/// Where providers send the user back. Every outcome, including forged or
/// replayed states, is a page that says what happened.
async fn oauth_callback(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let mut params = CallbackParams::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "state" => params.state = Some(v),
            "code" => params.code = Some(v),
            "error" => params.error = Some(v),
            "error_description" => params.error_description = Some(v),
            other if params.extra.len() < 32 => {
                params.extra.insert(other.to_string(), v);
            }
            _ => {}
        }
    }
    let outcome = state.platform.oauth_callback(params).await;
    let (status, ctx) = match outcome {
        CallbackOutcome::Connected {
            integration_name, ..
        } => (
            axum::http::StatusCode::OK,
            context! { ok => true, name => integration_name },
        ),
        CallbackOutcome::Failed(f) => {
            tracing::info!(code = f.code, "oauth callback refused");
            (
                axum::http::StatusCode::BAD_REQUEST,
                context! { ok => false, message => f.message, code => f.code },
            )
        }
    };
    let body = templates()
        .get_template("callback.html")
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "callback page failed to render");
            "<!doctype html><title>Error</title><p>Something went wrong.</p>".into()
        });
    let mut resp = html(body, CSP_TOP_LEVEL);
    *resp.status_mut() = status;
    resp
}
