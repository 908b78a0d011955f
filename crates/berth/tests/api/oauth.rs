//! The OAuth2 engine against a small loopback provider whose token endpoint
//! misbehaves on request: every bad outcome must end in a clear error page
//! or 4xx, never a 500, and never a half-created connection. (The happy path
//! against a real authorization server is in `tests/e2e`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_with, v2_error};

#[derive(Clone, Default)]
struct Provider {
    base: String,
    token_calls: Arc<AtomicUsize>,
}

/// The `code` picks the token endpoint's behaviour.
async fn token(State(p): State<Provider>, body: Bytes) -> Response {
    let f: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    p.token_calls.fetch_add(1, Ordering::SeqCst);
    let get = |k: &str| {
        f.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    assert!(!get("code_verifier").is_empty() || get("grant_type") != "authorization_code");
    if get("grant_type") == "client_credentials" {
        if get("client_secret") != "cc-secret" {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_client", "error_description": "bad secret"})),
            )
                .into_response();
        }
        // The first token is already inside the refresh margin; later ones last.
        let n = p.token_calls.load(Ordering::SeqCst);
        let expires_in = if n == 1 { 1 } else { 3600 };
        return Json(json!({"access_token": "at-1", "expires_in": expires_in})).into_response();
    }
    match (get("grant_type"), get("code")) {
        ("authorization_code", "good") => Json(json!({
            "access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600,
            "instance_url": p.base, "token_type": "Bearer"
        }))
        .into_response(),
        ("authorization_code", "norefresh") => Json(json!({
            "access_token": "at-2", "expires_in": 1, "instance_url": p.base
        }))
        .into_response(),
        ("authorization_code", "html") => (
            [("content-type", "text/html")],
            "<html><body>Login</body></html>",
        )
            .into_response(),
        ("authorization_code", "badurl") => Json(json!({
            "access_token": "at-3", "refresh_token": "r", "instance_url": "javascript:alert(1)"
        }))
        .into_response(),
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "code expired"})),
        )
            .into_response(),
    }
}

async fn me(headers: HeaderMap) -> Response {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some("Bearer at-1") | Some("Bearer at-2") => Json(json!({"id": "u1"})).into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn start_provider() -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let p = Provider {
        base,
        token_calls: Default::default(),
    };
    let app = Router::new()
        .route("/token", post(token))
        .route("/api/me", get(me))
        .with_state(p.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    p
}

async fn setup() -> (TestApp, Provider) {
    let p = start_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("providers.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[integrations.testoauth]
name = "Test OAuth"
category = "crm"
base_url = "{{{{metadata.instance_url}}}}/api"
[integrations.testoauth.auth.oauth2]
authorize_url = "{base}/authorize"
token_url = "{base}/token"
scopes = ["read", "write"]
pkce = true
token_metadata = ["instance_url"]
native = {{ org_url = "{{{{metadata.instance_url}}}}" }}
attach = {{ header = "Authorization", value = "Bearer {{{{credential.accessToken}}}}" }}

[integrations.snovio]
base_url = "{base}/api"
[integrations.snovio.auth.oauth2-client-credentials]
token_url = "{base}/token"
"#,
            base = p.base
        ),
    )
    .unwrap();
    let app = spawn_with(move |c| {
        c.providers_file = Some(file);
        // keep the file alive for the app's lifetime
        std::mem::forget(dir);
    })
    .await;
    (app, p)
}

impl TestApp {
    async fn create_app(&self) -> Value {
        let r = self
            .post(
                "/auth/oauth-apps/create",
                &[("x-vessel-api-token", &self.dev_token)],
                json!({"integrationId": "testoauth", "clientId": "cid", "clientSecret": "very-secret-value"}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["result"]["oauthApp"].clone()
    }

    /// Starts an OAuth flow; returns (session token, state).
    async fn begin_oauth(&self) -> (String, String) {
        let st = self
            .session_token(&self.dev_token, json!({"integrationId": "testoauth"}))
            .await;
        let r = self
            .post(
                "/auth/start",
                &[("x-vessel-session-token", &st)],
                json!({"authType": "oauth2"}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let url = url::Url::parse(r.body["result"]["oauthURL"].as_str().unwrap()).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["scope"], "read write");
        assert!(q["redirect_uri"].ends_with("/auth/oauth-callback"));
        (st, q["state"].clone())
    }

    async fn exchange(&self, session_token: &str) -> crate::helpers::Resp {
        let r = self
            .post(
                "/auth/access-token",
                &[
                    ("x-vessel-api-token", &self.dev_token),
                    ("x-vessel-session-token", session_token),
                ],
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r
    }

    async fn passthrough(&self, access_token: &str, path: &str) -> crate::helpers::Resp {
        self.post(
            "/passthrough",
            &[
                ("x-vessel-api-token", &self.dev_token),
                ("x-vessel-access-token", access_token),
            ],
            json!({"method": "GET", "path": path}),
        )
        .await
    }

    async fn callback(&self, query: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}/auth/oauth-callback?{query}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn live_connections(&self) -> usize {
        let r = self
            .post(
                "/connections/list",
                &[("x-vessel-api-token", &self.dev_token)],
                json!({}),
            )
            .await;
        r.body["result"]["connections"].as_array().unwrap().len()
    }
}

#[tokio::test]
async fn oauth_apps_are_per_environment_and_never_return_the_secret() {
    let (app, _p) = setup().await;
    let created = app.create_app().await;
    assert!(created.to_string().find("very-secret-value").is_none());
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("v_oauthapp_testoauth_"));
    let h = [("x-vessel-api-token", app.dev_token.as_str())];
    let list = app.post("/api/auth/oauth-apps/list", &h, json!({})).await;
    assert_eq!(list.body["result"]["oauthApps"][0]["clientId"], "cid");
    assert!(!list.body.to_string().contains("very-secret-value"));
    let prod = app.prod_token().await;
    let r = app
        .post(
            "/auth/oauth-apps/find",
            &[("x-vessel-api-token", &prod)],
            json!({"id": id}),
        )
        .await;
    assert_eq!(v2_error(&r, 404), "NOT_FOUND");
    let r = app
        .post(
            "/auth/oauth-apps/create",
            &h,
            json!({"integrationId": "apollo", "clientId": "x", "clientSecret": ""}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let r = app
        .post(
            "/auth/oauth-apps/create",
            &h,
            json!({"integrationId": "chatwoot", "clientId": "x", "clientSecret": "y"}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "OAUTH_NOT_SUPPORTED");
    let r = app
        .post("/auth/oauth-apps/delete", &h, json!({"id": id}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .post("/auth/oauth-apps/delete", &h, json!({"id": id}))
        .await;
    assert_eq!(v2_error(&r, 404), "NOT_FOUND");
}

#[tokio::test]
async fn a_good_flow_creates_the_connection_with_its_instance_url() {
    let (app, p) = setup().await;
    app.create_app().await;
    let (st, state) = app.begin_oauth().await;
    let (status, page) = app.callback(&format!("code=good&state={state}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected to Test OAuth"));
    let r = app.exchange(&st).await;
    assert_eq!(r.status, 200, "{r:?}");
    let at = r.body["result"]["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    // passthrough goes to {{metadata.instance_url}}/api with the vaulted token
    let r = app.passthrough(&at, "/me").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["id"], "u1");
    // the state is single-use
    let (status, page) = app.callback(&format!("code=good&state={state}")).await;
    assert_eq!(status, 400);
    assert!(page.contains("STATE_USED"), "{page}");
    assert_eq!(p.token_calls.load(Ordering::SeqCst), 1);
    // escaping a path out of the provider's API is refused
    let r = app.passthrough(&at, "/../token").await;
    assert_eq!(v2_error(&r, 400), "INVALID_PATH");
}

#[tokio::test]
async fn forged_denied_and_broken_callbacks_end_in_clear_pages() {
    let (app, p) = setup().await;
    app.create_app().await;

    let (_, state) = app.begin_oauth().await;
    let (flow_id, sig) = state.split_once('.').unwrap();
    let mut forged = sig.to_string();
    forged.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
    for (query, code) in [
        (
            format!("code=good&state={flow_id}.{forged}"),
            "STATE_MISMATCH",
        ),
        ("code=good&state=garbage".to_string(), "STATE_MISMATCH"),
        ("code=good".to_string(), "STATE_MISSING"),
        ("code=good&state=".to_string(), "STATE_MISSING"),
    ] {
        let (status, page) = app.callback(&query).await;
        assert_eq!(status, 400, "{query}");
        assert!(page.contains(code), "{query}: {page}");
    }

    // the user denies consent: the modal's session shows why
    let (st, state) = app.begin_oauth().await;
    let (status, page) = app
        .callback(&format!(
            "error=access_denied&error_description=The+user+said+no&state={state}"
        ))
        .await;
    assert_eq!(status, 400);
    assert!(
        page.contains("Access was denied at Test OAuth: The user said no"),
        "{page}"
    );
    let r = app
        .post(
            "/auth/session-status",
            &[("x-vessel-session-token", &st)],
            json!({}),
        )
        .await;
    assert_eq!(r.body["result"]["state"], "created");
    assert!(
        r.body["result"]["lastError"]
            .as_str()
            .unwrap()
            .contains("denied")
    );

    // a token endpoint that answers HTML, a refused code, a malformed instance URL
    for (code, expect) in [
        ("html", "instead of JSON"),
        ("expired", "code expired"),
        ("badurl", "malformed `instance_url`"),
    ] {
        let (_, state) = app.begin_oauth().await;
        let (status, page) = app.callback(&format!("code={code}&state={state}")).await;
        assert_eq!(status, 400, "{code}");
        assert!(page.contains(expect), "{code}: {page}");
        // the markup is escaped: provider text cannot inject HTML
        assert!(!page.contains("<html><body>Login"), "{page}");
    }
    assert!(p.token_calls.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        app.live_connections().await,
        0,
        "no half-created connection"
    );
}

#[tokio::test]
async fn a_missing_refresh_token_marks_the_connection_for_reauthentication() {
    let (app, _p) = setup().await;
    app.create_app().await;
    let (st, state) = app.begin_oauth().await;
    let (status, _) = app.callback(&format!("code=norefresh&state={state}")).await;
    assert_eq!(status, 200);
    let r = app.exchange(&st).await;
    let at = r.body["result"]["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let id = r.body["result"]["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    // expires_in 1 s is inside the 300 s refresh margin: due at once
    let r = app.passthrough(&at, "/me").await;
    assert_eq!(v2_error(&r, 409), "CONNECTION_NEEDS_REAUTH");
    let r = app
        .post(
            "/connections/find",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"id": id}),
        )
        .await;
    let c = &r.body["result"]["connection"];
    assert_eq!(c["authState"], "needs_reauth");
    assert!(
        c["authError"]
            .as_str()
            .unwrap()
            .contains("never issued a refresh token")
    );
    // a session can target it for re-authentication; others cannot
    let r = app
        .post(
            "/auth/session-token",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"connectionId": id, "integrationId": "sandbox"}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INTEGRATION_MISMATCH");
    let prod = app.prod_token().await;
    let r = app
        .post(
            "/auth/session-token",
            &[("x-vessel-api-token", &prod)],
            json!({"connectionId": id}),
        )
        .await;
    assert_eq!(v2_error(&r, 404), "NOT_FOUND");
}

#[tokio::test]
async fn browser_routes_answer_cors_and_server_routes_do_not() {
    let (app, _p) = setup().await;
    let preflight = |path: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", app.base))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-vessel-session-token",
            )
            .send()
    };
    for path in [
        "/integrations/find",
        "/api/integrations/list",
        "/auth/start",
        "/api/auth/start",
        "/auth/check-permissions",
    ] {
        let r = preflight(path).await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example.com",
            "{path}"
        );
    }
    for path in ["/auth/session-token", "/connections/list", "/passthrough"] {
        let r = preflight(path).await.unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{path} must stay server-to-server"
        );
    }
    // the modal and host scripts are served
    for (path, ct) in [
        ("/init.js", "text/javascript"),
        ("/connect.js", "text/javascript"),
        ("/modal/index.html", "text/html"),
        ("/connect", "text/html"),
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ct)
        );
    }
}

#[tokio::test]
async fn client_credentials_tokens_are_fetched_on_demand_and_cached() {
    let (app, p) = setup().await;
    let st = app
        .session_token(&app.dev_token, json!({"integrationId": "snovio"}))
        .await;
    let h = [("x-vessel-session-token", st.as_str())];
    let r = app
        .post(
            "/auth/start",
            &h,
            json!({"answers": {"clientId": "cid", "clientSecret": "wrong"}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_CREDENTIALS");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad secret")
    );
    p.token_calls.store(0, Ordering::SeqCst);
    let r = app
        .post(
            "/auth/start",
            &h,
            json!({"answers": {"clientId": "cid", "clientSecret": "cc-secret"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(p.token_calls.load(Ordering::SeqCst), 1);
    let at = app.exchange(&st).await.body["result"]["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        let r = app.passthrough(&at, "/me").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // one fetch at connect, one when the first (short) token was due, then cached
    assert_eq!(p.token_calls.load(Ordering::SeqCst), 2);
}
