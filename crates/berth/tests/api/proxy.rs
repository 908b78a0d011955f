//! Passthrough, the streaming proxy and the outbound layer against a local
//! fake provider that misbehaves on request: header hygiene, the path-escape
//! corpus, retries and `Retry-After`, rate-limit budgets, timeouts and
//! broken providers, and the request log that records all of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::Digest;

use crate::helpers::{TestApp, spawn_with, v1_error, v2_error};

#[derive(Clone, Default)]
struct Fake {
    /// Calls per key (`route:key`).
    calls: Arc<Mutex<HashMap<String, usize>>>,
    /// Requests that arrived outside `/api`: must stay zero.
    escapes: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn hit(&self, key: &str) -> usize {
        let mut m = self.calls.lock().unwrap();
        let n = m.entry(key.to_string()).or_default();
        *n += 1;
        *n
    }
    fn count(&self, key: &str) -> usize {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

type Q = Query<HashMap<String, String>>;

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let h: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
        .collect();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    (
        [
            ("x-provider", "yes"),
            ("set-cookie", "provider_session=abc; Domain=provider.test"),
        ],
        Json(json!({
            "method": method.as_str(), "path": uri.path(), "query": query,
            "headers": h, "body": String::from_utf8_lossy(&body),
        })),
    )
        .into_response()
}

/// Fails with `status` `fail` times per `key`, then answers 200.
async fn flaky(State(f): State<Fake>, method: Method, Query(q): Q) -> Response {
    let key = format!("flaky:{}", q["key"]);
    let n = f.hit(&key);
    let fail: usize = q.get("fail").map(|v| v.parse().unwrap()).unwrap_or(1);
    let status: u16 = q.get("status").map(|v| v.parse().unwrap()).unwrap_or(503);
    if n <= fail {
        let mut resp = (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": "try later"})),
        )
            .into_response();
        match q.get("ra").map(String::as_str) {
            Some("date") => {
                let at = SystemTime::now() + Duration::from_secs(2);
                resp.headers_mut()
                    .insert("retry-after", httpdate::fmt_http_date(at).parse().unwrap());
            }
            Some(secs) => {
                resp.headers_mut()
                    .insert("retry-after", secs.parse().unwrap());
            }
            None => {}
        }
        return resp;
    }
    Json(json!({"ok": true, "attempt": n, "method": method.as_str()})).into_response()
}

async fn counted(State(f): State<Fake>, Query(q): Q) -> Response {
    let n = f.hit(&format!("counted:{}", q["key"]));
    let mut resp = Json(json!({"n": n})).into_response();
    if q.contains_key("exhaust") {
        let h = resp.headers_mut();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        let reset = q.get("reset").map(String::as_str).unwrap_or("30");
        h.insert("x-ratelimit-reset", reset.parse().unwrap());
    }
    resp
}

async fn slow() -> Response {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Json(json!({"late": true})).into_response()
}

/// Headers and a first chunk, then nothing (the stream never ends).
async fn stall() -> Response {
    let first =
        futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("partial")) });
    let body = first.chain(futures_util::stream::pending());
    Response::new(axum::body::Body::from_stream(body))
}

async fn status(Path(code): Path<u16>) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/problem+json")],
        "{\"title\":\"teapot\"}",
    )
        .into_response()
}

/// `n` bytes of a repeating pattern, streamed in 64 KiB chunks.
async fn big(Query(q): Q) -> Response {
    let n: usize = q["bytes"].parse().unwrap();
    let chunk = Bytes::from((0..65_536).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let stream = futures_util::stream::iter((0..n.div_ceil(65_536)).map(move |i| {
        let len = (n - i * 65_536).min(65_536);
        Ok::<_, std::io::Error>(chunk.slice(0..len))
    }));
    (
        [
            ("content-type", "application/octet-stream"),
            ("content-length", &n.to_string()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Hashes an uploaded body as it streams in.
async fn upload(headers: HeaderMap, body: axum::body::Body) -> Response {
    let mut stream = body.into_data_stream();
    let mut hasher = sha2::Sha256::new();
    let mut n = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len();
        hasher.update(&chunk);
    }
    Json(json!({
        "bytes": n, "sha256": hex::encode(hasher.finalize()),
        "chunked": headers.get("transfer-encoding").is_some(),
    }))
    .into_response()
}

async fn outside(State(f): State<Fake>, uri: Uri) -> Response {
    f.escapes.lock().unwrap().push(uri.to_string());
    (StatusCode::IM_A_TEAPOT, "escaped").into_response()
}

async fn start_fake() -> (String, Fake) {
    let f = Fake::default();
    let app = Router::new()
        .route("/api/echo", any(echo))
        .route("/api/echo/{*rest}", any(echo))
        .route("/api/flaky", any(flaky))
        .route("/api/counted", get(counted))
        .route("/api/slow", get(slow))
        .route("/api/stall", get(stall))
        .route("/api/status/{code}", any(status))
        .route("/api/big", get(big))
        .route("/api/upload", post(upload).put(upload))
        .route("/api/me", get(|| async { Json(json!({"id": "me"})) }))
        .fallback(outside)
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, f)
}

/// A server that answers every connection with bytes that are not HTTP.
async fn start_garbage() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"\x00\x01 this is not HTTP at all\r\n\r\n")
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn providers_toml(base: &str, garbage: &str) -> String {
    format!(
        r#"
[integrations.fake]
name = "Fake CRM"
category = "crm"
base_url = "{base}/api"
[integrations.fake.auth.apiKey]
attach = {{ header = "Authorization", value = "Bearer {{{{credential.apiKey}}}}" }}
questions = [{{ id = "api-key", label = "Key", type = "password" }}]

[integrations.fakeq]
name = "Fake Query-Key API"
category = "engagement"
base_url = "{base}/api"
[integrations.fakeq.auth.apiKey]
attach = {{ query = "access_token", value = "{{{{credential.apiKey}}}}" }}
questions = [{{ id = "api-key", label = "Key", type = "password" }}]

[integrations.fakelimited]
name = "Fake Limited"
category = "crm"
base_url = "{base}/api"
rate_limit = {{ requests = 2, per_seconds = 60, scope = "account" }}
[integrations.fakelimited.auth.apiKey]
attach = {{ header = "Authorization", value = "Bearer {{{{credential.apiKey}}}}" }}
native = {{ org_id = "{{{{answers.account}}}}" }}
questions = [{{ id = "api-key", label = "Key", type = "password" }}, {{ id = "account", label = "Account", type = "text" }}]

[integrations.fakegarbage]
name = "Fake Garbage"
category = "crm"
base_url = "{garbage}/api"
[integrations.fakegarbage.auth.apiKey]
attach = {{ header = "Authorization", value = "Bearer {{{{credential.apiKey}}}}" }}
questions = [{{ id = "api-key", label = "Key", type = "password" }}]

[integrations.fakedns]
name = "Fake Nowhere"
category = "crm"
base_url = "http://berth-test.invalid/api"
[integrations.fakedns.auth.apiKey]
attach = {{ header = "Authorization", value = "Bearer {{{{credential.apiKey}}}}" }}
questions = [{{ id = "api-key", label = "Key", type = "password" }}]
"#
    )
}

struct Env {
    app: TestApp,
    fake: Fake,
}

async fn setup_with(tweak: impl FnOnce(&mut berth::Config) + Send + 'static) -> Env {
    let (base, fake) = start_fake().await;
    let garbage = start_garbage().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("providers.toml");
    std::fs::write(&file, providers_toml(&base, &garbage)).unwrap();
    let app = spawn_with(move |c| {
        c.providers_file = Some(file);
        c.dev_connection_limit = 20;
        tweak(c);
    })
    .await;
    Env { app, fake }
}

async fn setup() -> Env {
    setup_with(|_| {}).await
}

impl TestApp {
    async fn connect_key(&self, integration: &str, answers: Value) -> (String, String) {
        let st = self.session_token(&self.dev_token, json!({})).await;
        let r = self
            .post(
                "/auth/start",
                &[("x-vessel-session-token", &st)],
                json!({"integrationId": integration, "authType": "apiKey", "answers": answers}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = self
            .post(
                "/auth/access-token",
                &[
                    ("x-vessel-api-token", &self.dev_token),
                    ("x-vessel-session-token", &st),
                ],
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let res = &r.body["result"];
        (
            res["connectionId"].as_str().unwrap().into(),
            res["accessToken"].as_str().unwrap().into(),
        )
    }

    async fn pass(&self, access: &str, body: Value) -> crate::helpers::Resp {
        self.post(
            "/passthrough",
            &[
                ("x-vessel-api-token", &self.dev_token),
                ("x-vessel-access-token", access),
            ],
            body,
        )
        .await
    }

    fn proxy(&self, method: &str, path: &str, access: &str) -> reqwest::RequestBuilder {
        self.client
            .request(
                method.parse().unwrap(),
                format!("{}/proxy{path}", self.base),
            )
            .header("x-vessel-api-token", &self.dev_token)
            .header("x-vessel-access-token", access)
    }

    async fn logs(&self, filter: Value) -> Value {
        let r = self
            .post(
                "/logs/list",
                &[("x-vessel-api-token", &self.dev_token)],
                filter,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["result"].clone()
    }
}

#[tokio::test]
async fn credentials_are_attached_and_caller_headers_cleaned() {
    let Env { app, .. } = setup().await;
    let (_, access) = app
        .connect_key("fake", json!({"api-key": "k-secret"}))
        .await;
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/echo", "headers": {
                "Authorization": "Bearer evil", "x-custom": "kept", "cookie": "a=b",
                "x-forwarded-for": "10.0.0.1", "host": "evil.test", "x-vessel-api-token": "leak"
            }}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.body["result"]["headers"];
    assert_eq!(h["authorization"], "Bearer k-secret");
    assert_eq!(h["x-custom"], "kept");
    for dropped in [
        "cookie",
        "x-forwarded-for",
        "x-vessel-api-token",
        "x-vessel-access-token",
    ] {
        assert!(h.get(dropped).is_none(), "{dropped} forwarded: {h}");
    }
    assert!(h["host"].as_str().unwrap().starts_with("127.0.0.1:"), "{h}");

    // The streaming proxy: same rules on real request headers, plus
    // whatever the caller's Connection header names.
    let resp = app
        .proxy("GET", "/echo/deep/path?limit=5&q=a%20b", &access)
        .header("authorization", "Bearer evil")
        .header("x-secret-hop", "1")
        .header("connection", "x-secret-hop")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-provider"], "yes");
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "provider cookies must not reach the caller"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["path"], "/api/echo/deep/path");
    assert_eq!(body["query"], json!([["limit", "5"], ["q", "a b"]]));
    let h = &body["headers"];
    assert_eq!(h["authorization"], "Bearer k-secret");
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("x-secret-hop").is_none(), "{h}");
    assert!(h.get("x-vessel-api-token").is_none(), "{h}");

    // The provider's status and content type come back unchanged.
    let resp = app
        .proxy("POST", "/status/418", &access)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let r = app
        .pass(&access, json!({"method": "DELETE", "path": "/status/404"}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["result"]["title"], "teapot");
}

#[tokio::test]
async fn query_credentials_cannot_be_overridden() {
    let Env { app, .. } = setup().await;
    let (_, access) = app
        .connect_key("fakeq", json!({"api-key": "q-secret"}))
        .await;
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/echo?access_token=evil&x=1", "query": {"access_token": "evil2", "y": 2}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let q = r.body["result"]["query"].as_array().unwrap().clone();
    let tokens: Vec<&Value> = q.iter().filter(|p| p[0] == "access_token").collect();
    assert_eq!(tokens, [&json!(["access_token", "q-secret"])], "{q:?}");
    assert!(q.contains(&json!(["x", "1"])) && q.contains(&json!(["y", "2"])));
    let resp = app
        .proxy("GET", "/echo?access_token=evil", &access)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["query"], json!([["access_token", "q-secret"]]));
    // The request log never holds the credential.
    let logs = app.logs(json!({})).await;
    let text = logs.to_string();
    assert!(
        !text.contains("q-secret") && !text.contains("evil"),
        "{text}"
    );
    assert!(text.contains("access_token=***"), "{text}");
}

#[tokio::test]
async fn v1_and_v2_passthrough_shapes() {
    let Env { app, .. } = setup().await;
    let (_, access) = app.connect_key("fake", json!({"api-key": "k"})).await;
    for route in ["/crm/passthrough", "/engagement/passthrough"] {
        let r = app
            .post(
                route,
                &[("vessel-api-token", &app.dev_token)],
                json!({"accessToken": access, "method": "POST", "path": "/echo",
                       "body": {"a": 1}, "query": {"limit": 2}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["statusCode"], 200);
        assert_eq!(r.body["url"], "/echo");
        assert_eq!(r.body["headers"]["x-provider"], "yes");
        assert!(r.body["headers"].get("set-cookie").is_none());
        assert_eq!(r.body["body"]["body"], "{\"a\":1}");
        assert_eq!(r.body["body"]["query"], json!([["limit", "2"]]));
    }
    let r = app
        .post(
            "/crm/passthrough",
            &[("vessel-api-token", &app.dev_token)],
            json!({"accessToken": "nope", "method": "GET", "path": "/echo"}),
        )
        .await;
    assert_eq!(v1_error(&r, 401), "INVALID_ACCESS_TOKEN");
    let r = app
        .post(
            "/crm/passthrough",
            &[("vessel-api-token", &app.dev_token)],
            json!({"accessToken": access, "method": "GET", "path": "https://evil.test/"}),
        )
        .await;
    assert_eq!(v1_error(&r, 400), "INVALID_PATH");
    let r = app
        .post(
            "/api/passthrough",
            &[
                ("x-vessel-api-token", &app.dev_token),
                ("x-vessel-access-token", &access),
            ],
            json!({"method": "PUT", "path": "/echo", "json": {"b": 2}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let native = &r.body["result"]["$native"];
    assert_eq!(native["statusCode"], 200);
    assert_eq!(native["body"]["method"], "PUT");
    assert_eq!(native["body"]["body"], "{\"b\":2}");
}

/// Every way of leaving the provider's base URL or smuggling a second
/// request, each refused with 400 before anything is sent.
const ESCAPES: &[&str] = &[
    "https://evil.test/x",
    "http://evil.test",
    "HTTP://evil.test/",
    "ftp://evil.test/",
    "javascript:alert(1)",
    "//evil.test/x",
    "///evil.test",
    "//evil.test@127.0.0.1/x",
    "\\\\evil.test\\x",
    "/\\evil.test",
    "/\\\\evil.test/x",
    "/%5cevil.test",
    "/%5c%5cevil.test",
    "@evil.test",
    "evil.test/x",
    "echo",
    "",
    "/..",
    "/../",
    "/../admin",
    "/echo/../../admin",
    "/echo/..",
    "/%2e%2e/admin",
    "/%2E%2E/admin",
    "/%2e./admin",
    "/.%2e/admin",
    "/echo/%2e%2e%2f%2e%2e/admin",
    "/echo%2f..%2f..%2fadmin",
    "/%252e%252e/admin",
    "/%25252e%25252e/admin",
    "/echo/..%5c..%5cadmin",
    "/..;/admin",
    "/echo/.;/x",
    "/./admin",
    "/echo/./x",
    "/%2e/admin",
    "/echo#frag",
    "/echo%23frag/../..",
    "/echo\r\nHost: evil.test",
    "/echo\nX-Injected: 1",
    "/echo\r",
    "/echo\0",
    "/echo%00",
    "/echo%0d%0aHost:%20evil.test",
    "/echo?x=\r\nHost: evil.test",
    "/echo?x=%0d%0a",
    "/echo?x=%250d%250a",
    "/echo\t",
    "/echo%09",
    "/echo\u{7f}",
];

#[tokio::test]
async fn path_escape_corpus_is_refused() {
    assert!(ESCAPES.len() >= 40);
    let Env { app, fake } = setup().await;
    let (_, access) = app.connect_key("fake", json!({"api-key": "k"})).await;
    for path in ESCAPES {
        let r = app
            .pass(&access, json!({"method": "GET", "path": path}))
            .await;
        let code = v2_error(&r, 400);
        assert_eq!(code, "INVALID_PATH", "{path:?}: {r:?}");
    }
    assert!(fake.escapes.lock().unwrap().is_empty());
    // Host header overrides are dropped, not followed.
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/echo", "headers": {"Host": "evil.test"}}),
        )
        .await;
    assert_ne!(r.body["result"]["headers"]["host"], "evil.test");
    // The refusals are in the request log, escaped.
    let logs = app
        .logs(json!({"layer": "berth", "statusClass": "4xx", "limit": 500}))
        .await;
    let got: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), ESCAPES.len(), "{got:#?}");

    // The same through the streaming proxy, on a raw socket so that no
    // client library normalizes the path first.
    let addr = app.base.trim_start_matches("http://").to_string();
    for path in [
        "/proxy/../admin",
        "/proxy/%2e%2e/admin",
        "/proxy//evil.test/x",
        "/proxy/echo/..%2f..%2fadmin",
        "/proxy/%5c%5cevil.test",
        "/proxy/echo%0d%0aX:1",
        "/proxy/..;/admin",
        "/proxy/echo/%252e%252e/%252e%252e/admin",
    ] {
        let status = raw_get(&addr, path, &app.dev_token, &access).await;
        assert!(status == 400 || status == 404, "{path}: status {status}");
    }
    assert!(
        fake.escapes.lock().unwrap().is_empty(),
        "{:?}",
        fake.escapes
    );
}

async fn raw_get(addr: &str, path: &str, api: &str, access: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-vessel-api-token: {api}\r\nx-vessel-access-token: {access}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0)
}

#[tokio::test]
async fn retries_follow_method_safety_and_retry_after() {
    let Env { app, fake } = setup().await;
    let (conn, access) = app.connect_key("fake", json!({"api-key": "k"})).await;
    // GET: retried through two 503s.
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/flaky?key=a&fail=2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(fake.count("flaky:a"), 3);
    // Retry-After in seconds is waited out.
    let t = Instant::now();
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/flaky?key=b&status=429&ra=1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    // ... and as an HTTP date.
    let t = Instant::now();
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/flaky?key=c&ra=date"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(fake.count("flaky:c"), 2);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // A POST that reached the provider is not repeated...
    let r = app
        .pass(
            &access,
            json!({"method": "POST", "path": "/flaky?key=d&fail=9"}),
        )
        .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(fake.count("flaky:d"), 1);
    // ... unless the caller made it safe with an idempotency key.
    let r = app
        .pass(
            &access,
            json!({"method": "POST", "path": "/flaky?key=e&fail=1",
                   "headers": {"Idempotency-Key": "op-1"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(fake.count("flaky:e"), 2);
    // A Retry-After beyond what Berth waits is answered at once; the
    // connection's budget then holds further calls back without sending.
    let t = Instant::now();
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/flaky?key=f&status=429&ra=3600&fail=9"}),
        )
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let resp = app
        .client
        .post(format!("{}/passthrough", app.base))
        .header("x-vessel-api-token", &app.dev_token)
        .header("x-vessel-access-token", &access)
        .body(json!({"method": "GET", "path": "/flaky?key=f"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let ra: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ra > 3000, "{ra}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(
        fake.count("flaky:f"),
        1,
        "the held-back call never reached the provider"
    );
    // The log has the retries and which layer answered.
    let logs = app.logs(json!({"connectionId": conn})).await;
    let logs = logs["logs"].as_array().unwrap();
    let a = logs
        .iter()
        .rev()
        .find(|l| l["path"] == "/api/flaky?key=***&fail=***")
        .unwrap();
    assert_eq!(a["retries"], 2);
    assert_eq!(a["status"], 200);
    assert_eq!(a["layer"], "provider");
    let held = &logs[0];
    assert_eq!(held["status"], 429);
    assert_eq!(held["layer"], "berth");
    // Metrics saw retries and the held-back call.
    let m = app.metrics_text().await;
    assert!(
        m.contains("berth_outbound_retries_total{provider=\"fake\"}"),
        "{m}"
    );
    assert!(m.contains("berth_outbound_requests_total{provider=\"fake\",status=\"200\"}"));
    assert!(m.contains(
        "berth_outbound_rate_limit_waits_total{provider=\"fake\",outcome=\"rejected\"} 1"
    ));
    assert!(m.contains("berth_outbound_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn declared_and_learned_budgets_hold_calls_back() {
    let Env { app, fake } = setup_with(|c| {
        c.outbound.max_budget_wait = Duration::ZERO;
    })
    .await;
    // Two connections to one provider account share its budget (2/min);
    // a connection to another account has its own.
    let (_, a1) = app
        .connect_key("fakelimited", json!({"api-key": "k", "account": "acct-1"}))
        .await;
    let (_, a2) = app
        .connect_key("fakelimited", json!({"api-key": "k", "account": "acct-1"}))
        .await;
    let (_, b) = app
        .connect_key("fakelimited", json!({"api-key": "k", "account": "acct-2"}))
        .await;
    let call = |t: &str| {
        let t = t.to_string();
        let app = &app;
        async move {
            app.pass(&t, json!({"method": "GET", "path": "/counted?key=lim"}))
                .await
        }
    };
    assert_eq!(call(&a1).await.status, 200);
    assert_eq!(call(&a2).await.status, 200);
    let r = call(&a1).await;
    assert_eq!(v2_error(&r, 429), "RATE_LIMITED");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("account"),
        "{r:?}"
    );
    assert_eq!(call(&a2).await.status, 429);
    assert_eq!(call(&b).await.status, 200);
    assert_eq!(fake.count("counted:lim"), 3);

    // Learned from headers: the provider says its quota is gone.
    let (_, c) = app.connect_key("fake", json!({"api-key": "k"})).await;
    let r = app
        .pass(
            &c,
            json!({"method": "GET", "path": "/counted?key=x&exhaust=1"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .pass(&c, json!({"method": "GET", "path": "/counted?key=x"}))
        .await;
    assert_eq!(v2_error(&r, 429), "RATE_LIMITED");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider reported")
    );
    assert_eq!(fake.count("counted:x"), 1);
}

#[tokio::test]
async fn queued_calls_wait_for_the_budget_instead_of_failing() {
    let Env { app, fake } = setup_with(|c| {
        c.outbound.max_budget_wait = Duration::from_secs(30);
    })
    .await;
    let (_, c) = app.connect_key("fake", json!({"api-key": "k"})).await;
    // The provider says its quota returns in 1 s: the next call queues
    // for it and then goes, instead of failing.
    let r = app
        .pass(
            &c,
            json!({"method": "GET", "path": "/counted?key=wq&exhaust=1&reset=1"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let t = Instant::now();
    let r = app
        .pass(&c, json!({"method": "GET", "path": "/counted?key=wq"}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fake.count("counted:wq"), 2);
    let m = app.metrics_text().await;
    assert!(
        m.contains("berth_outbound_rate_limit_waits_total{provider=\"fake\",outcome=\"waited\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn broken_providers_get_named_errors_and_are_logged() {
    let Env { app, .. } = setup_with(|c| {
        c.outbound.total_timeout = Duration::from_secs(1);
        c.outbound.first_byte_timeout = Duration::from_secs(1);
        c.outbound.idle_timeout = Duration::from_secs(1);
        c.outbound.retry.max_retries = 0;
    })
    .await;
    let (_, access) = app.connect_key("fake", json!({"api-key": "k"})).await;
    let r = app
        .pass(&access, json!({"method": "GET", "path": "/slow"}))
        .await;
    assert_eq!(v2_error(&r, 504), "PROVIDER_TIMEOUT");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout")
    );
    let resp = app.proxy("GET", "/slow", &access).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    // A body that stops arriving is ended by the idle timeout, and the
    // caller sees it broken off rather than complete.
    let resp = app.proxy("GET", "/stall", &access).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err());

    let (_, g) = app.connect_key_unchecked("fakegarbage").await;
    let r = app.pass(&g, json!({"method": "GET", "path": "/x"})).await;
    assert_eq!(v2_error(&r, 502), "PROVIDER_UNAVAILABLE");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid or broken"),
        "{r:?}"
    );
    let (_, d) = app.connect_key_unchecked("fakedns").await;
    let r = app.pass(&d, json!({"method": "GET", "path": "/x"})).await;
    assert_eq!(v2_error(&r, 502), "PROVIDER_UNAVAILABLE");
    let msg = r.body["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(
        msg.contains("could not connect") && msg.contains("dns"),
        "{msg}"
    );

    // Bad input, each named, each logged.
    let r = app
        .pass(&access, json!({"method": "BREW", "path": "/echo"}))
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_METHOD");
    let r = app
        .send(
            "POST",
            "/passthrough",
            &[
                ("x-vessel-api-token", &app.dev_token),
                ("x-vessel-access-token", &access),
            ],
            Some("{not json"),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let huge = format!(
        "{{\"method\":\"POST\",\"path\":\"/echo\",\"body\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = app
        .send(
            "POST",
            "/passthrough",
            &[
                ("x-vessel-api-token", &app.dev_token),
                ("x-vessel-access-token", &access),
            ],
            Some(&huge),
        )
        .await;
    assert_eq!(v2_error(&r, 413), "PAYLOAD_TOO_LARGE");
    let r = app
        .pass(
            &access,
            json!({"method": "GET", "path": "/echo", "headers": {"bad header": "x"}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_HEADER");
    let resp = app.proxy("TRACE", "/echo", &access).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    let logs = app.logs(json!({"limit": 500})).await;
    let logs = logs["logs"].as_array().unwrap();
    let find = |status: i64, layer: &str| {
        logs.iter()
            .filter(|l| l["status"] == status && l["layer"] == layer)
            .count()
    };
    assert_eq!(find(504, "network"), 2, "{logs:#?}");
    assert_eq!(find(502, "network"), 2, "{logs:#?}");
    assert_eq!(find(400, "berth"), 3, "{logs:#?}");
    assert_eq!(find(413, "berth"), 1, "{logs:#?}");
    assert_eq!(find(405, "berth"), 1, "{logs:#?}");
    assert!(
        logs.iter().any(|l| l["status"] == 200
            && l["layer"] == "network"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("idle timeout"))),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .all(|l| l["error"].is_null() || !l["error"].as_str().unwrap().contains("xxxx"))
    );
}

impl TestApp {
    /// Connects an API-key integration whose provider cannot answer (no
    /// check call is declared, so the connection is created).
    async fn connect_key_unchecked(&self, integration: &str) -> (String, String) {
        self.connect_key(integration, json!({"api-key": "k"})).await
    }
}

#[tokio::test]
async fn request_log_filters_pages_and_expires() {
    let Env { app, .. } = setup().await;
    let (c1, a1) = app.connect_key("fake", json!({"api-key": "k"})).await;
    let (c2, a2) = app.connect_key("fake", json!({"api-key": "k"})).await;
    let since = berth_connections::now_ms();
    for i in 0..5 {
        app.pass(
            &a1,
            json!({"method": "GET", "path": format!("/echo?i={i}")}),
        )
        .await;
    }
    app.pass(&a2, json!({"method": "GET", "path": "/status/500"}))
        .await;
    let all = app.logs(json!({"since": since})).await;
    assert_eq!(all["logs"].as_array().unwrap().len(), 6);
    let first = &all["logs"][0];
    assert_eq!(first["connectionId"], c2.as_str());
    assert_eq!(first["status"], 500);
    assert_eq!(first["method"], "GET");
    assert!(first["latencyMs"].as_i64().unwrap() >= 0);
    assert!(first["responseBytes"].as_i64().unwrap() > 0);
    assert_eq!(first["integrationId"], "fake");
    let only = app
        .logs(json!({"connectionId": c1, "statusClass": "2xx"}))
        .await;
    assert_eq!(only["logs"].as_array().unwrap().len(), 5);
    // Pages of two, newest first, without repeats.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = app
            .logs(json!({"connectionId": c1, "limit": 2, "cursor": cursor}))
            .await;
        for l in page["logs"].as_array().unwrap() {
            seen.push(l["id"].as_str().unwrap().to_string());
        }
        cursor = page["nextPageCursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen.len(), 5);
    seen.dedup();
    assert_eq!(seen.len(), 5);
    let future = chrono_like(since + 3_600_000);
    let none = app.logs(json!({"since": future})).await;
    assert!(none["logs"].as_array().unwrap().is_empty());
    for bad in [
        json!({"statusClass": "6xx"}),
        json!({"layer": "moon"}),
        json!({"since": "yesterday"}),
        json!({"cursor": "forged"}),
        json!({"limit": "ten"}),
    ] {
        let r = app
            .post("/logs/list", &[("x-vessel-api-token", &app.dev_token)], bad)
            .await;
        assert_eq!(r.status, 400, "{r:?}");
    }
    // Another environment sees none of it.
    let prod = app.prod_token().await;
    let r = app
        .post("/logs/list", &[("x-vessel-api-token", &prod)], json!({}))
        .await;
    assert!(r.body["result"]["logs"].as_array().unwrap().is_empty());
    // Retention: rows past it are deleted.
    let removed = app
        .platform
        .purge_request_logs(berth_connections::now_ms() + 8 * 24 * 3_600_000)
        .await
        .unwrap();
    assert!(removed >= 6);
    assert!(
        app.logs(json!({})).await["logs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// RFC 3339 for a Unix-ms time (the API accepts both spellings).
fn chrono_like(ms: i64) -> String {
    let secs = ms / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, dd) = civil(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[tokio::test]
async fn proxy_streams_large_bodies_both_ways() {
    let Env { app, .. } = setup().await;
    let (conn, access) = app.connect_key("fake", json!({"api-key": "k"})).await;
    let n = 24 * 1024 * 1024 + 17;
    let resp = app
        .proxy("GET", &format!("/big?bytes={n}"), &access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
    let mut stream = resp.bytes_stream();
    let mut got = 0usize;
    let mut hasher = sha2::Sha256::new();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        got += c.len();
        hasher.update(&c);
    }
    assert_eq!(got, n);
    // Uploads: a chunked stream and a large body with a length both
    // arrive whole.
    let payload: Vec<u8> = (0..20 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let want = hex::encode(sha2::Sha256::digest(&payload));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        payload.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let resp = app
        .proxy("POST", "/upload", &access)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["bytes"], payload.len());
    assert_eq!(body["sha256"], want.as_str());
    let resp = app
        .proxy("PUT", "/upload", &access)
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["sha256"], want.as_str());
    assert_eq!(body["chunked"], false, "a known length is kept");
    // The log counted the bytes that went through.
    let mut logs = Value::Null;
    for _ in 0..100 {
        logs = app.logs(json!({"connectionId": conn})).await;
        if logs["logs"].as_array().unwrap().len() == 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let big = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["method"] == "GET")
        .unwrap();
    assert_eq!(big["responseBytes"], n);
    assert!(big["error"].is_null(), "{big}");
}

/// The hot cache is per serving thread: deleting a connection must reach
/// every thread's copy before its next call, not after the cache's TTL.
/// Each client keeps its one keep-alive connection, so a client's calls
/// stay on the serving thread that accepted it; with eight of them both
/// threads hold the connection when it is deleted.
#[tokio::test]
async fn a_deleted_connection_is_refused_on_every_serving_thread_at_once() {
    let Env { app, .. } = setup().await;
    let (id, access) = app.connect_key("fake", json!({"api-key": "k"})).await;
    let clients: Vec<reqwest::Client> = (0..8)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap()
        })
        .collect();
    let call = |c: &reqwest::Client| {
        c.get(format!("{}/proxy/echo", app.base))
            .header("x-vessel-api-token", &app.dev_token)
            .header("x-vessel-access-token", &access)
            .send()
    };
    for c in &clients {
        assert_eq!(call(c).await.unwrap().status(), 200);
    }
    let r = app
        .post(
            "/connections/delete",
            &[
                ("x-vessel-api-token", &app.dev_token),
                ("x-vessel-access-token", &access),
            ],
            json!({"id": id}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    for c in &clients {
        let r = call(c).await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_ACCESS_TOKEN", "{body}");
    }
}

/// A provider's own rate-limit headers are catalog data: HubSpot's
/// `X-HubSpot-RateLimit-Remaining: 0` blocks the budget for the window its
/// interval header names, so the next call is held back by Berth; a
/// custom integration that declares no such header is not blocked by it.
#[tokio::test]
async fn catalog_declared_rate_limit_headers_teach_the_budget() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let upstream = axum::Router::new().fallback(move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            (
                [
                    ("x-hubspot-ratelimit-remaining", "0"),
                    ("x-hubspot-ratelimit-interval-milliseconds", "30000"),
                ],
                axum::Json(serde_json::json!({"results": []})),
            )
        }
    });
    let base = berth_fakes::serve(upstream).await.unwrap();
    let app = crate::providers::app_with_catalog(format!(
        "[integrations.hubspot]\nbase_url = \"{base}\"\n\
         [integrations.acme]\nname = \"Acme\"\ncategory = \"crm\"\nbase_url = \"{base}\"\n\
         [integrations.acme.auth.apiKey]\nattach = {{ header = \"Authorization\", value = \"Bearer {{{{credential.apiKey}}}}\" }}\n\
         questions = [{{ id = \"api-key\", label = \"Key\", type = \"password\" }}]\n"
    ))
    .await;
    for (integration, held_back) in [("hubspot", true), ("acme", false)] {
        let (_, access) = app.connect_api_key(integration, "pat-na1-x").await;
        let h = [
            ("x-vessel-api-token", app.dev_token.as_str()),
            ("x-vessel-access-token", access.as_str()),
        ];
        let body = serde_json::json!({"method": "GET", "path": "/crm/v3/objects/contacts"});
        let r = app.post("/passthrough", &h, body.clone()).await;
        assert_eq!(r.status, 200, "{integration}: {r:?}");
        let before = calls.load(Ordering::SeqCst);
        let r = app.post("/passthrough", &h, body).await;
        if held_back {
            assert_eq!(v2_error(&r, 429), "RATE_LIMITED", "{r:?}");
            assert_eq!(calls.load(Ordering::SeqCst), before, "held back by Berth");
        } else {
            assert_eq!(r.status, 200, "{integration}: {r:?}");
            assert_eq!(calls.load(Ordering::SeqCst), before + 1);
        }
    }
}
