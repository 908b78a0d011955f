//! The sync benchmark of `scripts/bench-sync.sh`.
//!
//! `bench-sync DATABASE_URL LABEL` runs, in this process, the HubSpot fake
//! (`crates/berth-fakes`, no rate limits, pages of 100) holding
//! BENCH_CONTACTS contacts (default 100,000) plus a fifth as many companies
//! and deals, and Berth (the real server, workers and store). It prints one
//! markdown table row:
//! 1. ingest: a new connection from creation to READY with its job done
//!    (initial 30-day pass, full backfill, one incremental pass); records
//!    stored per second;
//! 2. the bare loader: the same rows, read back from Berth's `records`
//!    table, inserted into an identical fresh table (same columns and
//!    indexes, same store settings) by plain INSERTs committed per page of
//!    100: the floor for writing these rows to this store;
//! 3. list: `wrk` on v1 `GET /crm/contacts?limit=100` against Berth, and
//!    against a bare axum handler answering the same page pre-serialized.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use sqlx::Row;

// The allocator the `berth` binary ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs wrk; returns requests per second.
async fn wrk(url: &str, header: Option<&str>, secs: usize) -> anyhow::Result<f64> {
    let mut cmd = std::process::Command::new("wrk");
    cmd.args(["-t2", "-c16", &format!("-d{secs}s"), "--latency"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    // Blocking, on a thread of its own: tokio's process support would put
    // a check for exited children into every runtime's idle loop, Berth's
    // serving threads included (features are shared by the whole build).
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "wrk saw errors against {url}: {text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output: {text}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let db = args.next().expect("usage: bench-sync DATABASE_URL LABEL");
    let label = args.next().unwrap_or_else(|| "store".into());
    let contacts = berth_bench::env_num("BENCH_CONTACTS", 100_000);
    let wrk_secs = berth_bench::env_num("BENCH_WRK_SECS", 10);

    let hs = berth_fakes::hubspot::HubSpot::new(berth_fakes::hubspot::Options {
        tokens: vec!["pat-bench".into()],
        owners: 10,
        contacts,
        companies: contacts / 5,
        deals: contacts / 5,
        engagements: 0,
        leads: 0,
        history_days: 730,
        burst_per_10s: 0,
        search_per_sec: 0,
        ..Default::default()
    });
    let hs_base = berth_fakes::serve(hs.router()).await?;

    let dir = tempfile::tempdir()?;
    let providers = berth_bench::hubspot_providers(dir.path(), &hs_base)?;
    let db_url = db.replace("{dir}", &dir.path().display().to_string());
    let config = berth_bench::config(dir.path(), db_url.clone(), Some(providers));
    let berth = berth_bench::Running::start(&config).await?;
    let base = berth.base.clone();
    let token = berth.token.clone();
    let store = berth.store.clone();
    let client = reqwest::Client::new();

    // 1. Ingest.
    let t0 = Instant::now();
    let (conn, access) = berth
        .connect_api_key(&client, "hubspot", "pat-bench")
        .await?;
    berth.until_synced(&conn, Duration::from_secs(1800)).await?;
    let ingest = t0.elapsed();
    let mut stored = 0i64;
    for o in ["users", "accounts", "contacts", "deals"] {
        stored += store.count_records(&conn, o).await?;
    }
    let expected = (10 + contacts + 2 * (contacts / 5)) as i64;
    anyhow::ensure!(
        stored == expected,
        "stored {stored} records, expected {expected}"
    );
    let provider_calls = hs.calls();

    // 2. The bare loader, on the same kind of store.
    let bare = bare_loader(&db_url, &dir).await?;

    // 3. List throughput.
    let list_url = format!("{base}/crm/contacts?accessToken={access}&limit=100");
    let page = client
        .get(&list_url)
        .header("vessel-api-token", &token)
        .send()
        .await?
        .bytes()
        .await?;
    anyhow::ensure!(page.len() > 1000, "the list page is too small");
    let page_check = page.clone();
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}/crm/contacts", bare_listener.local_addr()?);
    let router = axum::Router::new().route(
        "/crm/contacts",
        axum::routing::get(move || {
            let page = page.clone();
            async move { ([("content-type", "application/json")], page) }
        }),
    );
    tokio::spawn(async move { axum::serve(bare_listener, router).await });
    let header = format!("vessel-api-token: {token}");
    let berth_rps = wrk(&list_url, Some(&header), wrk_secs).await?;
    let bare_rps = wrk(&bare_url, None, wrk_secs).await?;
    // The same list from a second Berth on the same store with its page
    // cache off: every request reads and renders the 100 records.
    let mut cold_config = config.clone();
    cold_config.no_workers = true;
    cold_config.sync.page_cache_bytes = 0;
    let cold = berth_bench::Running::start(&cold_config).await?;
    let cold_url = format!("{}/crm/contacts?accessToken={access}&limit=100", cold.base);
    let cold_page = client
        .get(&cold_url)
        .header("vessel-api-token", &token)
        .send()
        .await?
        .bytes()
        .await?;
    anyhow::ensure!(
        cold_page == page_check,
        "the uncached page differs from the cached one"
    );
    let cold_rps = wrk(&cold_url, Some(&header), wrk_secs).await?;
    cold.stop().await;

    let rps = stored as f64 / ingest.as_secs_f64();
    println!(
        "| {label} | {stored} | {provider_calls} | {:.1} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.2}x | {:.0} | {:.3}x |",
        ingest.as_secs_f64(),
        rps,
        bare,
        rps / bare,
        berth_rps,
        bare_rps,
        berth_rps / bare_rps,
        cold_rps,
        cold_rps / bare_rps
    );
    berth.stop().await;
    Ok(())
}

const DDL_SQLITE: &[&str] = &[
    "CREATE TABLE bare_records (seq INTEGER PRIMARY KEY AUTOINCREMENT, environment_id TEXT NOT NULL, connection_id TEXT NOT NULL, object TEXT NOT NULL, native_id TEXT NOT NULL, uid TEXT NOT NULL, hash TEXT NOT NULL, data TEXT NOT NULL, native TEXT NOT NULL, created_time BIGINT, modified_time BIGINT, deleted_at BIGINT, seen_run TEXT, synced_at BIGINT NOT NULL)",
    "CREATE UNIQUE INDEX bare_native ON bare_records (connection_id, object, native_id)",
    "CREATE UNIQUE INDEX bare_uid ON bare_records (connection_id, object, uid)",
    "CREATE INDEX bare_list ON bare_records (connection_id, object, seq)",
];

const INSERT: &str = "INSERT INTO bare_records (environment_id, connection_id, object, native_id, uid, hash, data, native, created_time, modified_time, seen_run, synced_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

type Rec = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
);

/// The timed part of the bare loader; a macro because the pool types of
/// the two backends differ.
macro_rules! load {
    ($pool:expr, $rows:expr) => {{
        let t = Instant::now();
        for chunk in $rows.chunks(100) {
            let mut tx = $pool.begin().await?;
            for r in chunk {
                sqlx::query(INSERT)
                    .bind(&r.0)
                    .bind(&r.1)
                    .bind(&r.2)
                    .bind(&r.3)
                    .bind(&r.4)
                    .bind(&r.5)
                    .bind(&r.6)
                    .bind(&r.7)
                    .bind(r.8)
                    .bind(r.9)
                    .bind(&r.10)
                    .bind(r.11)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok($rows.len() as f64 / t.elapsed().as_secs_f64())
    }};
}

/// Inserts Berth's stored rows again into an identical table with plain
/// INSERTs committed per 100; returns rows per second.
async fn bare_loader(db_url: &str, dir: &tempfile::TempDir) -> anyhow::Result<f64> {
    const SELECT: &str = "SELECT environment_id, connection_id, object, native_id, uid, hash, data, native, created_time, modified_time, seen_run, synced_at FROM records ORDER BY seq";
    if db_url.starts_with("sqlite") {
        use sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };
        use std::str::FromStr;
        let src = SqlitePoolOptions::new().connect(db_url).await?;
        let rows: Vec<Rec> = sqlx::query(SELECT)
            .fetch_all(&src)
            .await?
            .iter()
            .map(rec_sqlite)
            .collect();
        let path = dir.path().join("bare.db");
        let opts =
            SqliteConnectOptions::from_str(&format!("sqlite://{}?mode=rwc", path.display()))?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        for d in DDL_SQLITE {
            sqlx::query(*d).execute(&pool).await?;
        }
        load!(pool, rows)
    } else {
        use sqlx::postgres::PgPoolOptions;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(db_url)
            .await?;
        let rows: Vec<Rec> = sqlx::query(SELECT)
            .fetch_all(&pool)
            .await?
            .iter()
            .map(rec_pg)
            .collect();
        sqlx::query("CREATE TABLE bare_records (LIKE records INCLUDING ALL)")
            .execute(&pool)
            .await?;
        load!(pool, rows)
    }
}

fn rec_sqlite(r: &sqlx::sqlite::SqliteRow) -> Rec {
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
        r.get(10),
        r.get(11),
    )
}

fn rec_pg(r: &sqlx::postgres::PgRow) -> Rec {
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
        r.get(10),
        r.get(11),
    )
}
