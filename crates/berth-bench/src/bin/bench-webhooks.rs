//! The webhook benchmark of `scripts/bench-webhooks.sh`: Berth (the real
//! server and dispatcher, in this process) delivering to a local receiver
//! that verifies every Standard Webhooks signature.
//!
//! `bench-webhooks DATABASE_URL LABEL` prints one markdown table row:
//! 1. throughput: BENCH_EVENTS (default 100,000) events written to the
//!    outbox in batches of 1,000, fanned out to one of 10 endpoints each;
//!    deliveries/s until the receiver has all of them, and until the store
//!    records every message delivered (durable);
//! 2. latency: a steady 1,000 events/s for BENCH_STEADY_SECS (default 10);
//!    event-written-to-delivery-received p50/p99.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};

const ENDPOINTS: usize = 10;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

#[derive(Default)]
struct Receiver {
    keys: Mutex<HashMap<usize, Vec<u8>>>,
    received: AtomicU64,
    bad: AtomicU64,
    latencies: Mutex<Vec<i64>>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    Path(i): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = now_us();
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = r.keys.lock().unwrap().get(&i).cloned().unwrap_or_default();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(&body);
    let want = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    if !h("webhook-signature").split(' ').any(|s| s == want) {
        r.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(sent) = v["data"]["sentAtUs"].as_i64()
    {
        r.latencies.lock().unwrap().push(at - sent);
    }
    r.received.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .expect("usage: bench-webhooks DATABASE_URL LABEL");
    let label = args.next().unwrap_or_else(|| "store".into());
    let total: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let steady_secs: u64 = std::env::var("BENCH_STEADY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);

    let recv = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let raddr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/e/{i}", axum::routing::post(receive))
        .with_state(recv.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let mut config = berth_bench::config(
        dir.path(),
        db.replace("{dir}", &dir.path().display().to_string()),
        None,
    );
    config.webhooks = berth_webhooks_config();
    config.sync = Default::default();
    config.no_workers = true;
    let app = berth::App::build(&config).await?;
    let base = format!("http://{}", app.addr);
    let token = app.initial_token.clone().expect("a fresh store");
    let store = app.platform.store().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    let client = reqwest::Client::new();
    for i in 0..ENDPOINTS {
        let r: serde_json::Value = client
            .post(format!("{base}/webhooks"))
            .header("x-vessel-api-token", &token)
            .json(&serde_json::json!({"url": format!("http://{raddr}/e/{i}"), "event": format!("provider.bench.e{i}")}))
            .send()
            .await?
            .json()
            .await?;
        let secret = r["result"]["secret"].as_str().expect("a secret");
        let key = B64.decode(secret.trim_start_matches("whsec_"))?;
        recv.keys.lock().unwrap().insert(i, key);
    }
    let env = store
        .environment_by_name("development")
        .await?
        .expect("development environment");
    let types: Vec<String> = (0..ENDPOINTS)
        .map(|i| format!("provider.bench.e{i}"))
        .collect();
    let mut seq = 0usize;
    let mut write = |n: usize, with_time: bool| {
        let now = berth_connections::now_ms();
        let payload = if with_time {
            format!("{{\"sentAtUs\":{}}}", now_us())
        } else {
            "{}".to_string()
        };
        let rows: Vec<(String, String)> = (0..n)
            .map(|_| {
                seq += 1;
                (
                    format!("evt_bench_{seq:09}"),
                    types[seq % ENDPOINTS].clone(),
                )
            })
            .collect();
        (rows, payload, now)
    };

    // 1. Throughput.
    let t0 = Instant::now();
    let mut written = 0;
    while written < total {
        let n = 1000.min(total - written);
        let (rows, payload, now) = write(n, false);
        let events: Vec<berth_store::NewEvent> = rows
            .iter()
            .map(|(id, t)| berth_store::NewEvent {
                id,
                environment_id: &env.id,
                connection_id: None,
                event_type: t,
                payload: &payload,
                created_at: now,
            })
            .collect();
        store.insert_events(&events).await?;
        written += n;
    }
    let t_written = t0.elapsed();
    while (recv.received.load(Ordering::Relaxed) as usize) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(900),
            "deliveries stalled"
        );
    }
    let t_received = t0.elapsed();
    loop {
        let counts = store.webhook_message_counts(&env.id).await?;
        if counts
            .iter()
            .any(|(s, n)| s == "delivered" && *n as usize == total)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(900),
            "store never settled: {counts:?}"
        );
    }
    let t_durable = t0.elapsed();

    // 2. Latency at a steady 1,000 events/s (10 every 10 ms).
    recv.latencies.lock().unwrap().clear();
    let before = recv.received.load(Ordering::Relaxed) as usize;
    let ticks = steady_secs * 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..ticks {
        tick.tick().await;
        let (rows, payload, now) = write(10, true);
        let events: Vec<berth_store::NewEvent> = rows
            .iter()
            .map(|(id, t)| berth_store::NewEvent {
                id,
                environment_id: &env.id,
                connection_id: None,
                event_type: t,
                payload: &payload,
                created_at: now,
            })
            .collect();
        store.insert_events(&events).await?;
    }
    let steady_total = before + ticks as usize * 10;
    let t1 = Instant::now();
    while (recv.received.load(Ordering::Relaxed) as usize) < steady_total {
        tokio::time::sleep(Duration::from_millis(5)).await;
        anyhow::ensure!(
            t1.elapsed() < Duration::from_secs(120),
            "steady deliveries stalled"
        );
    }
    let mut lat = recv.latencies.lock().unwrap().clone();
    lat.sort_unstable();
    anyhow::ensure!(
        recv.bad.load(Ordering::Relaxed) == 0,
        "signatures failed to verify"
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    println!(
        "| {label} | {total} | {:.1} | {:.0} | {:.0} | {} | {:.1} | {:.1} |",
        t_written.as_secs_f64(),
        total as f64 / t_received.as_secs_f64(),
        total as f64 / t_durable.as_secs_f64(),
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    );
    Ok(())
}

fn berth_webhooks_config() -> berth_webhooks::WebhookConfig {
    berth_webhooks::WebhookConfig {
        dangerous_allow_private_targets: true,
        ..Default::default()
    }
}
