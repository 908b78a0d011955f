//! What Berth's benchmark binaries share: the in-process Berth they drive
//! and the connect flow they start from.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A Berth serving in this process on a random port.
pub struct Running {
    pub base: String,
    pub token: String,
    pub store: berth_store::Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn start(config: &berth::Config) -> anyhow::Result<Self> {
        let app = berth::App::build(config).await?;
        let base = format!("http://{}", app.addr);
        let token = app.initial_token.clone().unwrap_or_default();
        let store = app.platform.store().clone();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until_stopped(async move {
                let _ = rx.await;
            })
            .await?;
            anyhow::Ok(())
        });
        Ok(Self {
            base,
            token,
            store,
            stop: Some(stop),
            server: Some(server),
        })
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }

    /// Connects an API-key integration through the session-token flow;
    /// returns (connection id, access token).
    pub async fn connect_api_key(
        &self,
        client: &reqwest::Client,
        integration: &str,
        key: &str,
    ) -> anyhow::Result<(String, String)> {
        let post = |path: &str, headers: Vec<(&str, String)>, body: Value| {
            let mut r = client.post(format!("{}{path}", self.base)).json(&body);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            async move { anyhow::Ok(r.send().await?.json::<Value>().await?) }
        };
        let st = post(
            "/auth/session-token",
            vec![("x-vessel-api-token", self.token.clone())],
            json!({}),
        )
        .await?;
        let st = st["result"]["sessionToken"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let r = post(
            "/auth/start",
            vec![("x-vessel-session-token", st.clone())],
            json!({"integrationId": integration, "authType": "apiKey", "answers": {"api-key": key}}),
        )
        .await?;
        anyhow::ensure!(r["error"].is_null(), "connect failed: {r}");
        let r = post(
            "/auth/access-token",
            vec![
                ("x-vessel-api-token", self.token.clone()),
                ("x-vessel-session-token", st),
            ],
            json!({}),
        )
        .await?;
        let s = |k: &str| r["result"][k].as_str().unwrap_or_default().to_string();
        Ok((s("connectionId"), s("accessToken")))
    }

    /// Waits until the connection is READY with its first sync job done.
    pub async fn until_synced(&self, conn: &str, limit: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let done = self
                .store
                .jobs_of_connection(conn, 1)
                .await?
                .first()
                .is_some_and(|j| j.state == "done");
            let c = self.store.get_connection("v_env_development", conn).await?;
            if done && c.is_some_and(|c| c.status == "READY") {
                return Ok(());
            }
            anyhow::ensure!(t0.elapsed() < limit, "the sync stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A number from the environment, or the default.
pub fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The config of a benchmark's Berth: random port, the given store and
/// providers file, fast job polling.
pub fn config(
    dir: &std::path::Path,
    database_url: String,
    providers: Option<std::path::PathBuf>,
) -> berth::Config {
    berth::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        database_url,
        public_url: None,
        providers_file: providers,
        session_ttl: Duration::from_secs(1800),
        dev_connection_limit: 5,
        refresh_margin: Duration::from_secs(300),
        oauth_apps: Default::default(),
        outbound: Default::default(),
        request_log_retention: Duration::from_secs(3600),
        webhooks: Default::default(),
        sync: berth_sync::SyncConfig {
            poll: Duration::from_millis(20),
            ..Default::default()
        },
        no_workers: false,
        http_threads: 2,
        http_pin: berth::http_server::Pinning::Auto,
    }
}

/// A providers file pointing HubSpot at `base` with no rate limit of
/// Berth's own.
pub fn hubspot_providers(dir: &std::path::Path, base: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("providers.toml");
    std::fs::write(
        &path,
        format!(
            "[integrations.hubspot]\nbase_url = \"{base}\"\nrate_limit = {{ requests = 1000000, per_seconds = 1, scope = \"account\" }}\n"
        ),
    )?;
    Ok(path)
}
