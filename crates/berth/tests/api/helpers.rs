//! Spawns Berth in-process on a random port with a fresh store: SQLite by
//! default, PostgreSQL when `BERTH_TEST_BACKEND=postgres` (a new database on
//! the server `BERTH_TEST_POSTGRES_URL` names).

use std::path::PathBuf;
use std::time::Duration;

use berth::config::Config;
use berth_connections::Platform;
use serde_json::{Value, json};

pub struct TestApp {
    pub base: String,
    pub dev_token: String,
    pub platform: Platform,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    pub database_url: String,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn database_url(dir: &std::path::Path) -> String {
    match std::env::var("BERTH_TEST_BACKEND").as_deref() {
        Ok("postgres") => {
            let admin = std::env::var("BERTH_TEST_POSTGRES_URL")
                .expect("BERTH_TEST_BACKEND=postgres needs BERTH_TEST_POSTGRES_URL");
            berth_store::testing::fresh_postgres_database(&admin)
                .await
                .unwrap()
        }
        _ => format!("sqlite://{}?mode=rwc", dir.join("berth.db").display()),
    }
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        database_url: database_url(dir.path()).await,
        public_url: None,
        providers_file: None,
        session_ttl: Duration::from_secs(1800),
        dev_connection_limit: 5,
        refresh_margin: std::time::Duration::from_secs(300),
        oauth_apps: Default::default(),
        outbound: Default::default(),
        request_log_retention: Duration::from_secs(7 * 24 * 3600),
        webhooks: Default::default(),
        sync: berth_sync::SyncConfig {
            poll: std::time::Duration::from_millis(50),
            ..Default::default()
        },
        // Sync workers only where a test asks for them (tests/api/sync.rs),
        // so other tests see connections exactly as the API left them.
        no_workers: true,
        http_threads: 2,
        http_pin: berth::http_server::Pinning::Auto,
    };
    tweak(&mut config);
    let app = berth::App::build(&config).await.unwrap();
    let base = format!("http://{}", app.addr);
    // Empty when the tweak pointed this app at another one's store.
    let dev_token = app.initial_token.clone().unwrap_or_default();
    let platform = app.platform.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        base,
        dev_token,
        platform,
        client: reqwest::Client::new(),
        data_dir: config.data_dir.clone(),
        database_url: config.database_url.clone(),
        _dir: dir,
        shutdown: Some(tx),
    }
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

/// A response: status and parsed JSON body (`Value::Null` if not JSON).
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl TestApp {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// POST a JSON body with headers.
    /// The `/metrics` page, checked to be one OpenMetrics document (a
    /// single closing `# EOF`).
    pub async fn metrics_text(&self) -> String {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        text
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Value) -> Resp {
        let mut h = headers.to_vec();
        h.push(("content-type", "application/json"));
        self.send("POST", path, &h, Some(&body.to_string())).await
    }

    pub async fn session_token(&self, api_token: &str, body: Value) -> String {
        let r = self
            .post(
                "/auth/session-token",
                &[("x-vessel-api-token", api_token)],
                body,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["result"]["sessionToken"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs the whole v2 sandbox flow; returns (connectionId, accessToken).
    pub async fn connect_sandbox(&self, api_token: &str, key: &str) -> (String, String) {
        let st = self.session_token(api_token, json!({})).await;
        let r = self
            .post(
                "/auth/start",
                &[("x-vessel-session-token", &st)],
                json!({"integrationId": "sandbox", "authType": "apiKey", "answers": {"api-key": key}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = self
            .post(
                "/auth/access-token",
                &[
                    ("x-vessel-api-token", api_token),
                    ("x-vessel-session-token", &st),
                ],
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        (
            r.body["result"]["connectionId"]
                .as_str()
                .unwrap()
                .to_string(),
            r.body["result"]["accessToken"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    }

    pub async fn prod_token(&self) -> String {
        self.platform
            .create_api_token("production", "test")
            .await
            .unwrap()
    }
}

/// Asserts the platform error shape and returns the error code.
pub fn v2_error(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{r:?}");
    assert!(r.body["result"].is_null(), "{r:?}");
    let msg = r.body["error"]["message"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "error message must say what to fix: {r:?}");
    r.body["error"]["code"].as_str().unwrap().to_string()
}

/// Asserts the v1 error shape and returns the error code.
pub fn v1_error(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        !r.body["message"].as_str().unwrap_or("").is_empty(),
        "{r:?}"
    );
    r.body["errorCode"].as_str().unwrap().to_string()
}
