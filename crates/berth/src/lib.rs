//! Wiring: turns a [`Config`] into a running Berth. `main.rs` only parses
//! the command line and dispatches here, so tests and the binary share one
//! code path.
#![forbid(unsafe_code)]

pub mod config;
pub mod http_server;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use berth_api::AppState;
use berth_catalog::Catalog;
use berth_connections::{Platform, PlatformConfig};
use berth_outbound::Outbound;
use berth_store::Store;
use berth_vault::{Keyring, Vault};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Environment variable holding master keys (base64, comma-separated, oldest first).
pub const MASTER_KEY_ENV: &str = "BERTH_MASTER_KEY";

/// Opens the store, creating the data directory for SQLite, and migrates it.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    if config.database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
    }
    let store = Store::connect(&config.database_url)
        .await
        .context("cannot open the database")?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

/// The vault: keys from `BERTH_MASTER_KEY`, or the key file in the data dir
/// (generated with mode 0600 on first use).
pub fn open_vault(config: &Config) -> anyhow::Result<Vault> {
    match std::env::var(MASTER_KEY_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let ring =
                Keyring::parse_list(&v).with_context(|| format!("invalid {MASTER_KEY_ENV}"))?;
            Ok(Vault::new(ring))
        }
        _ => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("cannot create data directory {}", config.data_dir.display())
            })?;
            let (vault, created) = Vault::from_data_dir(&config.data_dir)?;
            if created {
                tracing::warn!(
                    path = %config.data_dir.join(berth_vault::KEY_FILE_NAME).display(),
                    "generated a new master key file; back it up: without it the stored credentials cannot be decrypted"
                );
            }
            Ok(vault)
        }
    }
}

/// Everything needed to build the platform services, minus the public URL.
pub async fn platform(config: &Config, public_url: String) -> anyhow::Result<Platform> {
    let catalog = Catalog::load(config.providers_file.as_deref())
        .context("cannot load the integration catalog")?;
    let mut oauth_apps = std::collections::BTreeMap::new();
    for (id, (client_id, secret, scopes)) in &config.oauth_apps {
        let Some(i) = catalog.get(id) else {
            anyhow::bail!("oauth_apps.{id}: no integration with that id in the catalog");
        };
        if i.auth_method(berth_catalog::AuthType::OAuth2).is_none() {
            anyhow::bail!("oauth_apps.{id}: {} does not use OAuth2", i.name);
        }
        oauth_apps.insert(
            id.to_string(),
            berth_connections::ConfiguredApp {
                client_id: client_id.clone(),
                client_secret: secret.clone(),
                scopes: scopes.clone(),
            },
        );
    }
    let store = open_store(config).await?;
    let vault = open_vault(config)?;
    let outbound = Outbound::new(&config.outbound).context("cannot build the HTTP client")?;
    Ok(Platform::new(
        store,
        vault,
        Arc::new(catalog),
        outbound,
        PlatformConfig {
            public_url,
            session_ttl: config.session_ttl,
            dev_connection_limit: config.dev_connection_limit,
            refresh_margin: config.refresh_margin,
            oauth_apps,
            request_log_retention: config.request_log_retention,
        },
    ))
}

/// A bound, not yet serving, Berth server.
pub struct App {
    listener: TcpListener,
    pub addr: SocketAddr,
    pub platform: Platform,
    pub webhooks: berth_webhooks::Webhooks,
    pub sync: berth_sync::Engine,
    /// Whether this process runs sync workers (`serve --no-workers` does not).
    run_workers: bool,
    /// HTTP serving threads.
    http_threads: usize,
    http_pin: http_server::Pinning,
    /// The development token created on first start, if this start created the project.
    pub initial_token: Option<String>,
}

impl App {
    /// Binds the listener, opens the store, and bootstraps an empty store.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let public_url = config.public_url.clone().unwrap_or_else(|| {
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            format!("http://{host}:{}", addr.port())
        });
        let platform = platform(config, public_url).await?;
        let initial_token = platform.bootstrap().await?;
        let webhooks = berth_webhooks::Webhooks::new(
            platform.store().clone(),
            platform.vault().clone(),
            config.webhooks.clone(),
        );
        if config.webhooks.dangerous_allow_private_targets {
            tracing::warn!(
                "dangerous_allow_private_webhook_targets is on: webhooks may use http and reach internal addresses"
            );
        }
        let sync = berth_sync::Engine::new(platform.clone(), config.sync.clone());
        Ok(Self {
            listener,
            addr,
            platform,
            webhooks,
            sync,
            run_workers: !config.no_workers,
            http_threads: config.http_threads,
            http_pin: config.http_pin,
            initial_token,
        })
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let housekeeping = tokio::spawn(housekeeping(
            self.platform.clone(),
            self.webhooks.clone(),
            cancel.clone(),
        ));
        let dispatcher = berth_webhooks::Dispatcher::spawn(self.webhooks.clone(), cancel.clone());
        let workers = self.run_workers.then(|| self.sync.spawn(cancel.clone()));
        // Rendered list pages must notice writes made by other processes.
        let changes = {
            let store = self.platform.store().clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { store.follow_record_changes(cancel.cancelled()).await })
        };
        let state = AppState::new(
            self.platform.clone(),
            self.webhooks.clone(),
            self.sync.clone(),
        );
        let sandbox = berth_sandbox::Sandbox::new(self.platform.store().clone());
        let make_router = || {
            berth_api::router(
                state.fork(),
                axum::Router::new().nest(
                    "/sandbox/api/v1",
                    berth_sandbox::router_with(sandbox.clone()),
                ),
            )
        };
        let mut server = http_server::start(
            self.listener,
            self.http_threads,
            self.http_pin,
            make_router,
            shutdown,
        )
        .context("cannot start the HTTP serving threads")?;
        let result = server.drained().await;
        cancel.cancel();
        let _ = housekeeping.await;
        let _ = dispatcher.await;
        let _ = changes.await;
        if let Some(w) = workers {
            let _ = w.await;
        }
        self.platform.flush_request_logs().await;
        self.platform.store().close().await;
        server.release().await;
        result.context("the HTTP server failed")
    }
}

/// `berth worker`: sync workers and the scheduler without the HTTP API, so
/// the two scale apart on PostgreSQL. Stops on `shutdown`, leaving running
/// jobs to resume from their checkpoints.
pub async fn run_worker(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A worker serves nothing, so its listen address is no URL of Berth's:
    // without `--public-url` the integrations whose URLs are built on it
    // (the sandbox, providers-file entries naming `{{public_url}}`) fail
    // their syncs with an error that says so.
    let public_url = config.public_url.clone().unwrap_or_default();
    let platform = platform(config, public_url).await?;
    if config.public_url.is_none() {
        let needing: Vec<String> = platform
            .catalog()
            .all()
            .iter()
            .filter(|i| {
                i.base_url.contains("public_url")
                    || i.auth.iter().any(|m| {
                        [&m.base_url, &m.token_url, &m.authorize_url]
                            .iter()
                            .any(|t| t.as_deref().is_some_and(|t| t.contains("public_url")))
                    })
            })
            .map(|i| i.id.clone())
            .collect();
        if !needing.is_empty() {
            tracing::warn!(
                integrations = %needing.join(", "),
                "no --public-url (BERTH_PUBLIC_URL): this worker cannot sync connections of these integrations, whose URLs are built on the API server's public URL; set it to the URL the API nodes serve"
            );
        }
    }
    let engine = berth_sync::Engine::new(platform.clone(), config.sync.clone());
    let cancel = CancellationToken::new();
    let workers = engine.spawn(cancel.clone());
    shutdown.await;
    cancel.cancel();
    let _ = workers.await;
    platform.flush_request_logs().await;
    platform.store().close().await;
    Ok(())
}

/// Periodic clean-up; stops when `cancel` fires.
async fn housekeeping(
    platform: Platform,
    webhooks: berth_webhooks::Webhooks,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    let mut logs_tick = tokio::time::interval(std::time::Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = logs_tick.tick() => {
                match platform.purge_request_logs(berth_connections::now_ms()).await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "removed request-log rows past retention"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "request-log clean-up failed"),
                }
            }
            _ = tick.tick() => {
                // Keep expired, never-exchanged sessions a day for debugging.
                let before = berth_connections::now_ms() - 24 * 3600 * 1000;
                match platform.store().delete_expired_sessions(before).await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "removed expired connect sessions"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "session clean-up failed"),
                }
                match webhooks.purge_history(berth_connections::now_ms()).await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "removed webhook history past retention"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhook history clean-up failed"),
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
