//! The growth benchmark of `scripts/bench-growth.sh`: what a million
//! stored contacts cost against ten thousand.
//!
//! `bench-growth DATABASE_URL LABEL CONTACTS` runs, in this process, the
//! HubSpot fake holding CONTACTS contacts and Berth (the real server,
//! workers and store, page cache off so every read is answered from the
//! store). It syncs them (ingest: records stored per second), then times
//! BENCH_SAMPLES sequential requests of each kind and prints one markdown
//! row of p50/p99 latencies (ms):
//! - first page: v1 `GET /crm/contacts?limit=100`;
//! - deep page: the same, from a cursor 90% of the way through;
//! - email filter: v2 `contacts/list` with `email.equals` of a random
//!   stored contact (one match);
//! - find by email: v1 `GET /crm/contact?id=<email>`;
//! - find by id: v1 `GET /crm/contact?id=<v1 id>`.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// p50 and p99 of `n` timed calls of `f(i)`, in ms.
async fn timed<F, Fut>(n: usize, mut f: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .expect("usage: bench-growth DATABASE_URL LABEL CONTACTS");
    let label = args.next().unwrap_or_else(|| "store".into());
    let contacts: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let samples = berth_bench::env_num("BENCH_SAMPLES", 200);

    let hs = berth_fakes::hubspot::HubSpot::new(berth_fakes::hubspot::Options {
        tokens: vec!["pat-bench".into()],
        owners: 10,
        contacts,
        companies: 0,
        deals: 0,
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
    let mut config = berth_bench::config(dir.path(), db_url, Some(providers));
    config.sync.page_cache_bytes = 0;
    let berth = berth_bench::Running::start(&config).await?;
    let client = reqwest::Client::new();

    let t0 = Instant::now();
    let (conn, access) = berth
        .connect_api_key(&client, "hubspot", "pat-bench")
        .await?;
    berth.until_synced(&conn, Duration::from_secs(3600)).await?;
    let ingest = t0.elapsed();
    let stored = berth.store.count_records(&conn, "contacts").await?;
    anyhow::ensure!(
        stored == contacts as i64,
        "stored {stored} contacts, expected {contacts}"
    );

    let base = berth.base.clone();
    let token = berth.token.clone();
    let get = |path: String| {
        let r = client
            .get(format!("{base}{path}"))
            .header("vessel-api-token", &token)
            .send();
        async move {
            let r = r.await?;
            anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
            anyhow::Ok(r.json::<Value>().await?)
        }
    };
    // Samples spread over the whole store: every contact of a v1 page of
    // 1000 at each tenth of the way, collected while walking to the deep
    // page's cursor.
    let mut sample: Vec<(String, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    let pages = contacts.div_ceil(1000);
    let deep_at = pages * 9 / 10;
    let stride = (pages / samples.max(1)).max(1);
    for p in 0..deep_at.max(1) {
        let c = cursor
            .as_deref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let page = get(format!("/crm/contacts?accessToken={access}&limit=1000{c}")).await?;
        if p % stride == 0 || sample.len() < samples {
            for rec in page["contacts"].as_array().into_iter().flatten() {
                if let (Some(id), Some(email)) = (rec["id"].as_str(), rec["email"].as_str()) {
                    sample.push((id.to_string(), email.to_string()));
                }
            }
        }
        cursor = page["nextPageCursor"].as_str().map(str::to_string);
        if p + 1 == deep_at {
            break;
        }
    }
    let deep = cursor.unwrap_or_default();
    // Spread the samples: every k-th one.
    let k = (sample.len() / samples.max(1)).max(1);
    let sample: Vec<(String, String)> = sample.into_iter().step_by(k).take(samples).collect();
    anyhow::ensure!(!sample.is_empty(), "no contacts to sample");
    let pick = |i: usize| &sample[(i * 7919) % sample.len()];

    let first = timed(samples, |_| {
        let f = get(format!("/crm/contacts?accessToken={access}&limit=100"));
        async move {
            anyhow::ensure!(
                f.await?["contacts"].as_array().map_or(0, Vec::len) == 100.min(contacts)
            );
            Ok(())
        }
    })
    .await?;
    let deep_page = timed(samples, |_| {
        let f = get(format!(
            "/crm/contacts?accessToken={access}&limit=100&cursor={deep}"
        ));
        async move {
            anyhow::ensure!(!f.await?["contacts"].as_array().is_none_or(Vec::is_empty));
            Ok(())
        }
    })
    .await?;
    let email_filter = timed(samples, |i| {
        let (id, email) = pick(i).clone();
        let r = client
            .post(format!("{base}/unifications/crm/contacts/list"))
            .header("x-vessel-api-token", &token)
            .header("x-vessel-access-token", &access)
            .json(&json!({"filters": {"email": {"equals": email}}}))
            .send();
        async move {
            let v: Value = r.await?.json().await?;
            let got = v["result"]["contacts"].as_array().map_or(0, Vec::len);
            anyhow::ensure!(got == 1, "email filter for {id}: {got} matches");
            Ok(())
        }
    })
    .await?;
    let by_email = timed(samples, |i| {
        let (id, email) = pick(i).clone();
        let f = get(format!("/crm/contact?accessToken={access}&id={email}"));
        async move {
            anyhow::ensure!(f.await?["contact"]["id"] == id.as_str());
            Ok(())
        }
    })
    .await?;
    let by_id = timed(samples, |i| {
        let (id, _) = pick(i).clone();
        let f = get(format!("/crm/contact?accessToken={access}&id={id}"));
        async move {
            anyhow::ensure!(f.await?["contact"]["id"] == id.as_str());
            Ok(())
        }
    })
    .await?;
    let cell = |(p50, p99): (f64, f64)| format!("{p50:.2} / {p99:.2}");
    println!(
        "| {label} | {contacts} | {:.1} | {:.0} | {} | {} | {} | {} | {} |",
        ingest.as_secs_f64(),
        stored as f64 / ingest.as_secs_f64(),
        cell(first),
        cell(deep_page),
        cell(email_filter),
        cell(by_email),
        cell(by_id)
    );
    berth.stop().await;
    Ok(())
}
