//! One typed, validated configuration. Precedence: command-line flag, then
//! environment variable (`BERTH_*`), then the optional TOML file
//! (`--config` / `BERTH_CONFIG`), then the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

/// Options every subcommand takes: where the data lives.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// TOML config file (keys: listen, data_dir, database_url, public_url,
    /// providers_file, session_ttl_secs, dev_connection_limit).
    #[arg(long, env = "BERTH_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database and the generated master key file.
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://path` or `postgres://user@host/db`; default: SQLite in the data dir.
    #[arg(
        long,
        env = "BERTH_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

/// Options of `berth serve`.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<String>,
    /// The URL Berth is reached at (builds callback and icon URLs).
    #[arg(long, env = "BERTH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Integration catalog overrides and additions (TOML; see README).
    #[arg(long, env = "BERTH_PROVIDERS_FILE")]
    pub providers_file: Option<PathBuf>,
    /// Lifetime of session and link tokens, in seconds.
    #[arg(long, env = "BERTH_SESSION_TTL_SECS")]
    pub session_ttl_secs: Option<u64>,
    /// Live connections allowed in a development environment.
    #[arg(long, env = "BERTH_DEV_CONNECTION_LIMIT")]
    pub dev_connection_limit: Option<i64>,
    /// Refresh OAuth access tokens this many seconds before they expire.
    #[arg(long, env = "BERTH_REFRESH_MARGIN_SECS")]
    pub refresh_margin_secs: Option<u64>,
    /// Longest a buffered provider call may take, body included (seconds).
    #[arg(long, env = "BERTH_PROVIDER_TIMEOUT_SECS")]
    pub provider_timeout_secs: Option<u64>,
    /// Longest wait for a TCP/TLS connection to a provider (seconds).
    #[arg(long, env = "BERTH_PROVIDER_CONNECT_TIMEOUT_SECS")]
    pub provider_connect_timeout_secs: Option<u64>,
    /// Retries of a failed provider call (0 disables retries).
    #[arg(long, env = "BERTH_PROVIDER_MAX_RETRIES")]
    pub provider_max_retries: Option<u32>,
    /// How long a call may queue for a rate-limit budget before Berth
    /// answers 429 (milliseconds).
    #[arg(long, env = "BERTH_RATE_LIMIT_MAX_WAIT_MS")]
    pub rate_limit_max_wait_ms: Option<u64>,
    /// Internal networks (comma-separated CIDRs, `10.0.0.0/8,fd00::/8`)
    /// that end-user-chosen provider hosts may still reach, such as a
    /// self-hosted Chatwoot on the company network. Without them, a
    /// loopback, private, link-local or metadata address is refused.
    #[arg(long, env = "BERTH_ALLOW_PRIVATE_PROVIDER_NETWORKS")]
    pub allow_private_provider_networks: Option<String>,
    /// Request-log rows are kept this many hours.
    #[arg(long, env = "BERTH_REQUEST_LOG_RETENTION_HOURS")]
    pub request_log_retention_hours: Option<u64>,
    /// DANGEROUS: let webhooks use plain http and target loopback, private
    /// and link-local addresses. For development and tests only.
    #[arg(long, env = "BERTH_DANGEROUS_ALLOW_PRIVATE_WEBHOOK_TARGETS", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub dangerous_allow_private_webhook_targets: Option<bool>,
    /// A webhook attempt succeeds on a 2xx within this many seconds.
    #[arg(long, env = "BERTH_WEBHOOK_TIMEOUT_SECS")]
    pub webhook_timeout_secs: Option<u64>,
    /// Delay before each webhook attempt, comma-separated, with units
    /// (`0,5s,5m,30m,2h,5h,10h,10h`); its length is the number of attempts.
    #[arg(long, env = "BERTH_WEBHOOK_RETRY_SCHEDULE")]
    pub webhook_retry_schedule: Option<String>,
    /// An endpoint failing without any success for this many hours is disabled.
    #[arg(long, env = "BERTH_WEBHOOK_DISABLE_AFTER_HOURS")]
    pub webhook_disable_after_hours: Option<u64>,
    /// Days webhook delivery history (attempts, delivered or dead messages,
    /// their events) is kept; 0 keeps it forever.
    #[arg(long, env = "BERTH_WEBHOOK_RETENTION_DAYS")]
    pub webhook_retention_days: Option<u64>,
    /// Webhook deliveries in flight per process.
    #[arg(long, env = "BERTH_WEBHOOK_MAX_IN_FLIGHT")]
    pub webhook_max_in_flight: Option<usize>,
    /// Webhook deliveries in flight per endpoint per process.
    #[arg(long, env = "BERTH_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT")]
    pub webhook_max_in_flight_per_endpoint: Option<usize>,
    /// Default time between a connection's syncs, in seconds (at least 60).
    #[arg(long, env = "BERTH_SYNC_INTERVAL_SECS")]
    pub sync_interval_secs: Option<u64>,
    /// Sync jobs run at once by this process.
    #[arg(long, env = "BERTH_SYNC_CONCURRENCY")]
    pub sync_concurrency: Option<usize>,
    /// A full sync refuses to mark more than this percentage of an object's
    /// records deleted in one run.
    #[arg(long, env = "BERTH_SYNC_MAX_DELETE_PERCENT")]
    pub sync_max_delete_percent: Option<u8>,
    /// How long a worker holds a sync job without renewing it; a job whose
    /// worker died is taken over after this (renewed after every page).
    #[arg(long, env = "BERTH_SYNC_LEASE_SECS")]
    pub sync_lease_secs: Option<u64>,
    /// Hours between full re-syncs of each object (mark-and-sweep finds
    /// deletes incremental runs cannot see); 0 turns them off.
    #[arg(long, env = "BERTH_SYNC_FULL_RESYNC_HOURS")]
    pub sync_full_resync_hours: Option<u64>,
    /// Memory for rendered CRM list pages, in MiB (0 turns the cache off).
    #[arg(long, env = "BERTH_PAGE_CACHE_MB")]
    pub page_cache_mb: Option<u64>,
    /// HTTP serving threads, each a single-threaded runtime keeping the
    /// connections it accepts (default: one per core).
    #[arg(long, env = "BERTH_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// Pin each HTTP serving thread to its own CPU: `auto` (when there are
    /// as many threads as CPUs the process may use), `on` or `off`.
    #[arg(long, env = "BERTH_HTTP_PIN")]
    pub http_pin: Option<String>,
    /// Serve the API only; run sync workers elsewhere with `berth worker`.
    #[arg(long, env = "BERTH_NO_WORKERS", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub no_workers: Option<bool>,
}

/// A default OAuth app (`v_oauthapp_<integration>_default`) from the file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct OAuthAppConfig {
    pub client_id: String,
    /// The secret itself, or (better) `client_secret_env`.
    pub client_secret: Option<String>,
    /// Name of the environment variable holding the secret.
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    public_url: Option<String>,
    providers_file: Option<PathBuf>,
    session_ttl_secs: Option<u64>,
    dev_connection_limit: Option<i64>,
    refresh_margin_secs: Option<u64>,
    provider_timeout_secs: Option<u64>,
    provider_connect_timeout_secs: Option<u64>,
    provider_max_retries: Option<u32>,
    rate_limit_max_wait_ms: Option<u64>,
    allow_private_provider_networks: Option<String>,
    request_log_retention_hours: Option<u64>,
    dangerous_allow_private_webhook_targets: Option<bool>,
    webhook_timeout_secs: Option<u64>,
    webhook_retry_schedule: Option<String>,
    webhook_disable_after_hours: Option<u64>,
    webhook_retention_days: Option<u64>,
    webhook_max_in_flight: Option<usize>,
    webhook_max_in_flight_per_endpoint: Option<usize>,
    sync_interval_secs: Option<u64>,
    sync_concurrency: Option<usize>,
    sync_max_delete_percent: Option<u8>,
    sync_lease_secs: Option<u64>,
    sync_full_resync_hours: Option<u64>,
    page_cache_mb: Option<u64>,
    http_threads: Option<usize>,
    http_pin: Option<String>,
    no_workers: Option<bool>,
    #[serde(default)]
    oauth_apps: std::collections::BTreeMap<String, OAuthAppConfig>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// `None`: derived from the bound address at start.
    pub public_url: Option<String>,
    pub providers_file: Option<PathBuf>,
    pub session_ttl: Duration,
    pub dev_connection_limit: i64,
    pub refresh_margin: Duration,
    /// Timeouts, retries and budget waits of provider calls.
    pub outbound: berth_outbound::OutboundConfig,
    pub request_log_retention: Duration,
    /// Webhook delivery.
    pub webhooks: berth_webhooks::WebhookConfig,
    /// The sync engine.
    pub sync: berth_sync::SyncConfig,
    /// `serve` runs sync workers unless this is set.
    pub no_workers: bool,
    /// HTTP serving threads.
    pub http_threads: usize,
    /// Whether they are pinned to CPUs.
    pub http_pin: crate::http_server::Pinning,
    /// Default OAuth apps by integration id, secrets resolved.
    pub oauth_apps:
        std::collections::BTreeMap<String, (String, zeroize::Zeroizing<String>, Vec<String>)>,
}

fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

impl Config {
    pub fn resolve(store: &StoreArgs, serve: &ServeArgs) -> anyhow::Result<Self> {
        let file = load_file(store.config.as_deref())?;
        let data_dir = store
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./berth-data"));
        let database_url = store
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| {
                format!("sqlite://{}?mode=rwc", data_dir.join("berth.db").display())
            });
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            bail!("database URL must start with sqlite:, postgres:// or postgresql://");
        }
        let listen = serve
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:4000".into());
        listen.parse::<SocketAddr>().with_context(|| {
            format!("--listen `{listen}` is not an address like 127.0.0.1:4000")
        })?;
        let public_url = serve.public_url.clone().or(file.public_url);
        if let Some(u) = &public_url {
            let parsed =
                url::Url::parse(u).with_context(|| format!("--public-url `{u}` is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("--public-url must be an http(s) URL");
            }
        }
        let session_ttl_secs = serve
            .session_ttl_secs
            .or(file.session_ttl_secs)
            .unwrap_or(1800);
        if !(60..=86_400).contains(&session_ttl_secs) {
            bail!("session TTL must be between 60 and 86400 seconds");
        }
        let dev_connection_limit = serve
            .dev_connection_limit
            .or(file.dev_connection_limit)
            .unwrap_or(5);
        if dev_connection_limit < 1 {
            bail!("the development connection limit must be at least 1");
        }
        let refresh_margin_secs = serve
            .refresh_margin_secs
            .or(file.refresh_margin_secs)
            .unwrap_or(300);
        if refresh_margin_secs > 3600 {
            bail!("the refresh margin must be at most 3600 seconds");
        }
        let mut outbound = berth_outbound::OutboundConfig::default();
        let total = serve
            .provider_timeout_secs
            .or(file.provider_timeout_secs)
            .unwrap_or(120);
        if !(1..=3600).contains(&total) {
            bail!("the provider timeout must be between 1 and 3600 seconds");
        }
        outbound.total_timeout = Duration::from_secs(total);
        outbound.first_byte_timeout = Duration::from_secs(total.min(60));
        let connect = serve
            .provider_connect_timeout_secs
            .or(file.provider_connect_timeout_secs)
            .unwrap_or(10);
        if !(1..=300).contains(&connect) {
            bail!("the provider connect timeout must be between 1 and 300 seconds");
        }
        outbound.connect_timeout = Duration::from_secs(connect);
        let retries = serve
            .provider_max_retries
            .or(file.provider_max_retries)
            .unwrap_or(3);
        if retries > 10 {
            bail!("provider retries must be at most 10");
        }
        outbound.retry.max_retries = retries;
        let wait = serve
            .rate_limit_max_wait_ms
            .or(file.rate_limit_max_wait_ms)
            .unwrap_or(5000);
        if wait > 600_000 {
            bail!("the rate-limit wait must be at most 600000 ms");
        }
        outbound.max_budget_wait = Duration::from_millis(wait);
        if let Some(list) = serve
            .allow_private_provider_networks
            .as_deref()
            .or(file.allow_private_provider_networks.as_deref())
        {
            outbound.allow_private_networks = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    n.parse::<berth_outbound::ssrf::IpNet>().map_err(|_| {
                        anyhow::anyhow!(
                            "allow_private_provider_networks: `{n}` is not a CIDR network (e.g. 10.0.0.0/8)"
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        let retention_hours = serve
            .request_log_retention_hours
            .or(file.request_log_retention_hours)
            .unwrap_or(168);
        if !(1..=24 * 366).contains(&retention_hours) {
            bail!("the request-log retention must be between 1 and 8784 hours");
        }
        let mut webhooks = berth_webhooks::WebhookConfig {
            dangerous_allow_private_targets: serve
                .dangerous_allow_private_webhook_targets
                .or(file.dangerous_allow_private_webhook_targets)
                .unwrap_or(false),
            ..Default::default()
        };
        let wt = serve
            .webhook_timeout_secs
            .or(file.webhook_timeout_secs)
            .unwrap_or(15);
        if !(1..=120).contains(&wt) {
            bail!("the webhook timeout must be between 1 and 120 seconds");
        }
        webhooks.timeout = Duration::from_secs(wt);
        if let Some(s) = serve
            .webhook_retry_schedule
            .clone()
            .or(file.webhook_retry_schedule)
        {
            webhooks.retry_schedule = parse_schedule(&s)?;
        }
        let da = serve
            .webhook_disable_after_hours
            .or(file.webhook_disable_after_hours)
            .unwrap_or(120);
        if !(1..=24 * 90).contains(&da) {
            bail!("webhook disable-after must be between 1 and 2160 hours");
        }
        webhooks.disable_after = Duration::from_secs(da * 3600);
        let rd = serve
            .webhook_retention_days
            .or(file.webhook_retention_days)
            .unwrap_or(30);
        if rd > 3650 {
            bail!("webhook retention must be between 0 (keep forever) and 3650 days");
        }
        webhooks.retention = (rd > 0).then(|| Duration::from_secs(rd * 24 * 3600));
        let mif = serve
            .webhook_max_in_flight
            .or(file.webhook_max_in_flight)
            .unwrap_or(512);
        let mife = serve
            .webhook_max_in_flight_per_endpoint
            .or(file.webhook_max_in_flight_per_endpoint)
            .unwrap_or(64);
        if !(1..=10_000).contains(&mif) || !(1..=10_000).contains(&mife) {
            bail!("webhook in-flight limits must be between 1 and 10000");
        }
        webhooks.max_in_flight = mif;
        webhooks.max_in_flight_per_endpoint = mife.min(mif);
        let mut sync = berth_sync::SyncConfig::default();
        let si = serve
            .sync_interval_secs
            .or(file.sync_interval_secs)
            .unwrap_or(3600);
        if !(berth_sync::MIN_INTERVAL_SECS as u64..=7 * 24 * 3600).contains(&si) {
            bail!("the sync interval must be between 60 seconds and 7 days");
        }
        sync.default_interval = Duration::from_secs(si);
        let sc = serve
            .sync_concurrency
            .or(file.sync_concurrency)
            .unwrap_or(4);
        if !(1..=256).contains(&sc) {
            bail!("sync concurrency must be between 1 and 256");
        }
        sync.concurrency = sc;
        let sd = serve
            .sync_max_delete_percent
            .or(file.sync_max_delete_percent)
            .unwrap_or(20);
        if sd > 100 {
            bail!("sync max delete percent must be between 0 and 100");
        }
        sync.max_delete_share = f64::from(sd) / 100.0;
        let sl = serve
            .sync_lease_secs
            .or(file.sync_lease_secs)
            .unwrap_or(120);
        if !(5..=3600).contains(&sl) {
            bail!("the sync lease must be between 5 and 3600 seconds");
        }
        sync.lease = Duration::from_secs(sl);
        let fr = serve
            .sync_full_resync_hours
            .or(file.sync_full_resync_hours)
            .unwrap_or(24);
        if fr > 24 * 366 {
            bail!("the full re-sync interval must be between 0 (off) and 8784 hours");
        }
        sync.full_resync = (fr > 0).then(|| Duration::from_secs(fr * 3600));
        let pc = serve
            .page_cache_mb
            .or(file.page_cache_mb)
            .unwrap_or(berth_sync::pages::DEFAULT_BYTES >> 20);
        if pc > 64 * 1024 {
            bail!("the page cache must be between 0 and 65536 MiB");
        }
        sync.page_cache_bytes = pc << 20;
        let no_workers = serve.no_workers.or(file.no_workers).unwrap_or(false);
        let http_threads = match serve.http_threads.or(file.http_threads) {
            Some(n) if !(1..=256).contains(&n) => {
                bail!("the number of HTTP threads must be between 1 and 256")
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, usize::from),
        };
        let http_pin = match serve.http_pin.as_deref().or(file.http_pin.as_deref()) {
            Some(p) => p.parse().map_err(|e| anyhow::anyhow!("http_pin: {e}"))?,
            None => crate::http_server::Pinning::Auto,
        };
        let mut oauth_apps = std::collections::BTreeMap::new();
        for (id, app) in file.oauth_apps {
            let secret = match (&app.client_secret, &app.client_secret_env) {
                (Some(s), None) => s.clone(),
                (None, Some(var)) => std::env::var(var).with_context(|| {
                    format!("oauth_apps.{id}: environment variable {var} is not set")
                })?,
                _ => {
                    bail!("oauth_apps.{id}: set exactly one of client_secret or client_secret_env")
                }
            };
            if app.client_id.trim().is_empty() || secret.trim().is_empty() {
                bail!("oauth_apps.{id}: client_id and the client secret must not be empty");
            }
            oauth_apps.insert(
                id,
                (app.client_id, zeroize::Zeroizing::new(secret), app.scopes),
            );
        }
        Ok(Self {
            refresh_margin: Duration::from_secs(refresh_margin_secs),
            outbound,
            request_log_retention: Duration::from_secs(retention_hours * 3600),
            webhooks,
            sync,
            no_workers,
            http_threads,
            http_pin,
            oauth_apps,
            listen,
            data_dir,
            database_url,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            providers_file: serve.providers_file.clone().or(file.providers_file),
            session_ttl: Duration::from_secs(session_ttl_secs),
            dev_connection_limit,
        })
    }
}

/// `0,5s,5m,30m,2h` (a bare number is seconds; fractions allowed).
fn parse_schedule(s: &str) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (num, unit) = match part.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => part.split_at(i),
            None => (part, "s"),
        };
        let n: f64 = num
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)
            .with_context(|| {
                format!("webhook retry schedule: `{part}` is not a duration like 5s, 5m or 2h")
            })?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => bail!("webhook retry schedule: unknown unit in `{part}` (ms, s, m, h, d)"),
        };
        if secs > 7.0 * 86400.0 {
            bail!("webhook retry schedule: `{part}` is longer than 7 days");
        }
        out.push(Duration::from_secs_f64(secs));
    }
    if out.is_empty() || out.len() > 50 {
        bail!("webhook retry schedule: between 1 and 50 attempts");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("berth.toml");
        std::fs::write(&f, "listen = '127.0.0.1:5000'\ndev_connection_limit = 3\n").unwrap();
        let store = StoreArgs {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = Config::resolve(&store, &ServeArgs::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000");
        assert_eq!(c.dev_connection_limit, 3);
        assert!(c.database_url.starts_with("sqlite://"));
        let c = Config::resolve(
            &store,
            &ServeArgs {
                listen: Some("127.0.0.1:6000".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:6000");
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let bad = |serve: ServeArgs| {
            Config::resolve(&StoreArgs::default(), &serve)
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(ServeArgs {
                listen: Some("nope".into()),
                ..Default::default()
            })
            .contains("--listen")
        );
        assert!(
            bad(ServeArgs {
                public_url: Some("ftp://x".into()),
                ..Default::default()
            })
            .contains("http")
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "unknown_key = 1").unwrap();
        let e = Config::resolve(
            &StoreArgs {
                config: Some(f),
                ..Default::default()
            },
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown_key"), "{e:#}");
    }
}
