//! `berth`: one binary, several subcommands. Parses the command line,
//! initialises logging and dispatches; the work lives in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

// mimalloc: the proxy path allocates per request; glibc malloc was a
// fifth of its CPU profile (see scripts/bench-proxy.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use berth::config::{Config, ServeArgs, StoreArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Berth: self-hosted embedded integrations and unified GTM API"
)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (and, unless --no-workers, the sync workers).
    Serve(Box<ServeArgs>),
    /// Run sync workers and the scheduler only (no HTTP API). Set
    /// --public-url to where the API is reachable.
    Worker(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API tokens.
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCmd),
    /// Manage projects (each with a development and a production
    /// environment).
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Manage the credential vault.
    #[command(subcommand)]
    Vault(VaultCmd),
    /// Print Berth's OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum ProjectCmd {
    /// Create a project with its two environments; prints its id.
    Create {
        #[arg(long)]
        name: String,
    },
    /// List projects and their environments.
    List,
}

#[derive(Subcommand)]
enum ApiTokenCmd {
    /// Create a token; prints only the token on stdout.
    Create {
        #[arg(long, value_parser = ["development", "production"])]
        environment: String,
        /// The project (default: the default project).
        #[arg(long, default_value = berth_store::DEFAULT_PROJECT_ID)]
        project: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List tokens (names and prefixes, never secrets).
    List,
    /// Revoke a token by id or prefix.
    Revoke { id_or_prefix: String },
}

#[derive(Subcommand)]
enum VaultCmd {
    /// Re-encrypt every credential under the newest key. With the key file
    /// (no BERTH_MASTER_KEY), first generates and appends a new key.
    RotateKey {
        /// After re-encrypting, remove the old keys from the key file.
        #[arg(long)]
        prune: bool,
    },
    /// Print a new random master key (for BERTH_MASTER_KEY).
    GenerateKey,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("BERTH_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The platform an admin command works on: the store bootstrapped, no
/// public URL (nothing is served).
async fn admin_platform(
    store: &berth::config::StoreArgs,
    no_serve: &berth::config::ServeArgs,
) -> anyhow::Result<berth_connections::Platform> {
    let config = Config::resolve(store, no_serve)?;
    let platform = berth::platform(&config, String::new()).await?;
    platform
        .store()
        .bootstrap(berth_connections::now_ms())
        .await?;
    Ok(platform)
}

fn main() -> ExitCode {
    // Before any thread starts: mimalloc commits its arenas eagerly on
    // Linux, and with transparent huge pages on (`always` is common) each
    // thread's first small allocation then pins a whole 2 MiB page. Off,
    // an idle server holds ~22 MB instead of ~42 MB; the heap is small
    // enough that huge pages buy nothing measurable.
    // `BERTH_TRANSPARENT_HUGE_PAGES=on` keeps the system's setting.
    #[cfg(target_os = "linux")]
    if std::env::var("BERTH_TRANSPARENT_HUGE_PAGES").as_deref() != Ok("on") {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let no_serve = ServeArgs::default();
    match cli.command {
        Command::Serve(serve) => {
            let config = Config::resolve(&cli.store, &serve)?;
            let app = berth::App::build(&config).await?;
            if let Some(token) = &app.initial_token {
                // stdout, not the log: the one time this secret is shown.
                println!(
                    "\n==================================================================\n\
                     Berth created a default project with development and production\n\
                     environments. Your DEVELOPMENT API token (shown only this once):\n\n    {token}\n\n\
                     Send it as the x-vessel-api-token (v2) or vessel-api-token (v1)\n\
                     header. Create more with: berth api-token create --environment ...\n\
                     ==================================================================\n"
                );
            }
            tracing::info!(addr = %app.addr, backend = app.platform.store().backend(), public_url = %app.platform.config().public_url, "berth is listening");
            println!("Listening on http://{}", app.addr);
            app.run_until_stopped(berth::shutdown_signal()).await
        }
        Command::Worker(serve) => {
            let config = Config::resolve(&cli.store, &serve)?;
            tracing::info!("berth worker is running");
            berth::run_worker(&config, berth::shutdown_signal()).await
        }
        Command::Project(cmd) => {
            let platform = admin_platform(&cli.store, &no_serve).await?;
            match cmd {
                ProjectCmd::Create { name } => {
                    let envs = platform.create_project(&name).await?;
                    if let Some(e) = envs.first() {
                        println!("{}", e.project_id);
                    }
                    for e in &envs {
                        eprintln!("environment {} {}", e.name, e.id);
                    }
                    eprintln!(
                        "create its API tokens with: berth api-token create --project <id> --environment development|production"
                    );
                }
                ProjectCmd::List => {
                    let envs = platform.store().environments().await?;
                    println!("{:<28} {:<32} ENVIRONMENTS", "ID", "NAME");
                    for p in platform.store().projects().await? {
                        let ids: Vec<String> = envs
                            .iter()
                            .filter(|e| e.project_id == p.id)
                            .map(|e| format!("{}={}", e.name, e.id))
                            .collect();
                        println!("{:<28} {:<32} {}", p.id, p.name, ids.join(" "));
                    }
                }
            }
            Ok(())
        }
        Command::Migrate => {
            let config = Config::resolve(&cli.store, &no_serve)?;
            let store = berth::open_store(&config).await?;
            eprintln!("migrations applied ({})", store.backend());
            store.close().await;
            Ok(())
        }
        Command::ApiToken(cmd) => {
            let platform = admin_platform(&cli.store, &no_serve).await?;
            match cmd {
                ApiTokenCmd::Create {
                    environment,
                    project,
                    name,
                } => {
                    let token = platform
                        .create_api_token_in(&project, &environment, &name)
                        .await?;
                    println!("{token}");
                }
                ApiTokenCmd::List => {
                    println!(
                        "{:<28} {:<12} {:<18} {:<24} STATUS",
                        "ID", "ENVIRONMENT", "PREFIX", "NAME"
                    );
                    for t in platform.store().list_api_tokens().await? {
                        println!(
                            "{:<28} {:<12} {:<18} {:<24} {}",
                            t.id,
                            t.environment,
                            format!("{}…", t.prefix),
                            t.name,
                            if t.revoked_at.is_some() {
                                "revoked"
                            } else {
                                "active"
                            }
                        );
                    }
                }
                ApiTokenCmd::Revoke { id_or_prefix } => {
                    let n = platform
                        .store()
                        .revoke_api_token(&id_or_prefix, berth_connections::now_ms())
                        .await?;
                    if n == 0 {
                        anyhow::bail!("no active token with id or prefix `{id_or_prefix}`");
                    }
                    eprintln!("revoked {n} token(s)");
                }
            }
            platform.store().close().await;
            Ok(())
        }
        Command::Vault(VaultCmd::GenerateKey) => {
            println!("{}", berth_vault::MasterKey::generate().encode().as_str());
            Ok(())
        }
        Command::Vault(VaultCmd::RotateKey { prune }) => {
            let config = Config::resolve(&cli.store, &no_serve)?;
            let vault = berth::open_vault(&config)?;
            let key_file = vault.key_file().map(|p| p.to_path_buf());
            if let Some(path) = &key_file {
                let ring = vault
                    .keyring()
                    .with_new_key(berth_vault::MasterKey::generate());
                ring.write_file(path).context("cannot write the key file")?;
                eprintln!("added key {} to {}", ring.active().id(), path.display());
            } else if prune {
                anyhow::bail!(
                    "--prune works on the key file; with {} remove the old keys from the variable yourself",
                    berth::MASTER_KEY_ENV
                );
            }
            let platform = berth::platform(&config, String::new()).await?;
            let n = platform.reseal_credentials().await?;
            let hooks = berth_webhooks::Webhooks::new(
                platform.store().clone(),
                platform.vault().clone(),
                config.webhooks.clone(),
            );
            let w = hooks.reseal_secrets().await?;
            let o = platform.reseal_oauth_secrets().await?;
            eprintln!(
                "re-encrypted {n} credential(s), {w} webhook endpoint(s) and {o} OAuth app secret(s) or pending connect flow(s) under key {}",
                platform_key_id(&config)?
            );
            if prune && let Some(path) = &key_file {
                let ring = berth::open_vault(&config)?.keyring().only_active();
                ring.write_file(path).context("cannot write the key file")?;
                eprintln!(
                    "removed old keys; {} now holds only key {}",
                    path.display(),
                    ring.active().id()
                );
            }
            platform.store().close().await;
            Ok(())
        }
        Command::Openapi => {
            print!("{}", berth_api::openapi_string());
            Ok(())
        }
    }
}

fn platform_key_id(config: &Config) -> anyhow::Result<String> {
    Ok(berth::open_vault(config)?.active_key_id())
}
