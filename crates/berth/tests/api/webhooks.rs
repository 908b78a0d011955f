//! Webhooks end to end: subscriptions in three spellings, signed delivery
//! to a local receiver, outage and recovery, dead letters and replay,
//! rotation, misbehaving receivers, and the SSRF guard.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use berth_store::NewEvent;
use serde_json::{Value, json};

use crate::helpers::*;

#[derive(Clone, Debug)]
pub struct Got {
    pub headers: HeaderMap,
    pub body: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Ok,
    Status(u16),
    Hang,
    Redirect,
    Huge,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Got>>>,
    mode: Arc<Mutex<Mode>>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let mode = *r.mode.lock().unwrap();
    // Only successful deliveries count as received.
    match mode {
        Mode::Ok => {
            r.got.lock().unwrap().push(Got { headers, body });
            r.arrived.notify_waiters();
            (StatusCode::OK, "thanks").into_response()
        }
        Mode::Status(s) => (StatusCode::from_u16(s).unwrap(), "receiver says no").into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Mode::Redirect => (
            StatusCode::FOUND,
            [("location", "http://127.0.0.1:1/elsewhere")],
        )
            .into_response(),
        Mode::Huge => {
            r.got.lock().unwrap().push(Got { headers, body });
            r.arrived.notify_waiters();
            (StatusCode::OK, "x".repeat(5 * 1024 * 1024)).into_response()
        }
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let r = Receiver {
            url,
            got: Default::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            arrived: Default::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    pub fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what arrived (woken by arrivals; the
    /// timeout is only a guard against a hung test).
    pub async fn wait(&self, what: &str, secs: u64, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let notified = self.arrived.notified();
            {
                let g = self.got.lock().unwrap();
                if pred(&g) {
                    return g.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let g = self.got();
                assert!(
                    pred(&g),
                    "timed out waiting for {what}; got {} deliveries",
                    g.len()
                );
                return g;
            }
        }
    }
}

fn ids(got: &[Got]) -> HashSet<String> {
    got.iter()
        .map(|g| g.headers["webhook-id"].to_str().unwrap().to_string())
        .collect()
}

pub async fn spawn_webhooks(schedule: &str) -> TestApp {
    let schedule = schedule.to_string();
    spawn_with(move |c| {
        c.webhooks.dangerous_allow_private_targets = true;
        c.webhooks.timeout = Duration::from_secs(2);
        c.webhooks.poll_interval = Duration::from_millis(100);
        c.webhooks.retry_schedule = schedule
            .split(',')
            .map(|ms| Duration::from_millis(ms.trim().parse().unwrap()))
            .collect();
    })
    .await
}

async fn env_id(app: &TestApp) -> String {
    app.platform
        .store()
        .environment_by_name("development")
        .await
        .unwrap()
        .unwrap()
        .id
}

/// Writes `n` events of `event_type` straight to the outbox, as a sync
/// or any other producer does.
pub async fn emit(
    app: &TestApp,
    env: &str,
    event_type: &str,
    n: usize,
    payload: Value,
) -> Vec<String> {
    let ids: Vec<String> = (0..n)
        .map(|i| format!("evt_test_{}_{i}", rand_hex()))
        .collect();
    let payload = payload.to_string();
    let now = berth_connections::now_ms();
    let events: Vec<NewEvent> = ids
        .iter()
        .map(|id| NewEvent {
            id,
            environment_id: env,
            connection_id: Some("v_connection_test"),
            event_type,
            payload: &payload,
            created_at: now,
        })
        .collect();
    app.platform.store().insert_events(&events).await.unwrap();
    ids
}

fn rand_hex() -> String {
    berth_connections::secrets::new_id("x")
}

async fn create(app: &TestApp, body: Value) -> Value {
    let r = app
        .post("/webhooks", &[("x-vessel-api-token", &app.dev_token)], body)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["result"].clone()
}

/// The Standard Webhooks check, written out independently of Berth's code.
fn verify_standard(secret: &str, g: &Got) -> bool {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = g.headers["webhook-id"].to_str().unwrap();
    let ts = g.headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{}", g.body).as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    g.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .any(|s| s == expected)
}

async fn messages(app: &TestApp, filter: Value) -> Vec<Value> {
    let r = app
        .post(
            "/webhooks/messages/list",
            &[("x-vessel-api-token", &app.dev_token)],
            filter,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["result"]["messages"].as_array().unwrap().clone()
}

async fn wait_messages(
    app: &TestApp,
    filter: Value,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    // Messages settle in the store shortly after delivery (results are
    // written in batches); poll the API the way a customer would.
    for _ in 0..300 {
        let m = messages(app, filter.clone()).await;
        if pred(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {what}: {:?}",
        messages(app, filter).await
    );
}

#[tokio::test]
async fn subscriptions_in_seed_v2_and_v1_spellings() {
    let app = spawn_webhooks("0").await;
    let rx = Receiver::start().await;
    let api = app.dev_token.clone();
    let h = [("x-vessel-api-token", api.as_str())];

    let seed = create(&app, json!({"url": rx.url, "event": "connection.created"})).await;
    assert!(seed["id"].as_str().unwrap().starts_with("v_webhook_"));
    assert_eq!(seed["event"], "connection.created");
    assert_eq!(seed["url"], rx.url);
    assert!(seed["createdAt"].is_string());
    assert!(seed["secret"].as_str().unwrap().starts_with("whsec_"));

    let r = app
        .post("/api/webhooks/create", &h, json!({"url": rx.url}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v2 = r.body["result"]["webhook"].clone();
    assert!(
        r.body["result"]["secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    assert_eq!(v2["type"], "unified");
    assert!(v2["projectId"].as_str().unwrap().starts_with("v_project_"));
    assert_eq!(
        v2["events"],
        json!(["system.sync.initial.complete", "object.*"])
    );

    let r = app.post("/webhooks/list", &h, json!({})).await;
    let list = r.body["result"]["webhooks"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter().all(|w| w.get("secret").is_none()),
        "secrets are shown once"
    );

    let r = app
        .post("/webhooks/find", &h, json!({"id": v2["id"]}))
        .await;
    assert_eq!(r.body["result"]["webhook"]["id"], v2["id"]);

    let r = app
        .post("/webhooks/update", &h, json!({"id": seed["id"], "disabled": true, "description": "ops", "events": ["connection.*"]}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let w = &r.body["result"]["webhook"];
    assert_eq!(w["disabled"], true);
    assert_eq!(w["description"], "ops");
    assert_eq!(w["events"], json!(["connection.*"]));
    let r = app
        .post(
            "/webhooks/update",
            &h,
            json!({"id": seed["id"], "disabled": false, "description": null}),
        )
        .await;
    assert_eq!(r.body["result"]["webhook"]["disabled"], false);
    assert!(r.body["result"]["webhook"]["description"].is_null());

    // A connection's creation reaches the seed endpoint (connection.*) but
    // not the v2 one (Vessel's default events).
    let (conn, access) = app.connect_sandbox(&api, "sk_live_ok").await;
    let got = rx.wait("connection.created", 10, |g| !g.is_empty()).await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "connection.created");
    assert_eq!(body["connectionId"], conn);
    assert!(verify_standard(seed["secret"].as_str().unwrap(), &got[0]));

    // v1: one webhook per connection.
    let v1h = [("vessel-api-token", api.as_str())];
    let r = app
        .post(
            "/connection/webhook",
            &v1h,
            json!({"accessToken": access, "webhook": {"webhookUrl": rx.url}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let wid = r.body["webhook"]["webhookId"].as_str().unwrap().to_string();
    assert_eq!(r.body["webhook"]["connectionId"], conn);
    assert!(r.body["webhook"]["secret"].is_string());
    let again = app
        .post(
            "/connection/webhook",
            &v1h,
            json!({"accessToken": access, "webhook": {"webhookUrl": format!("{}?v=2", rx.url)}}),
        )
        .await;
    assert_eq!(
        again.body["webhook"]["webhookId"], wid,
        "still one webhook per connection"
    );
    let r = app
        .send(
            "GET",
            &format!("/connection/webhook?accessToken={access}&webhookId={wid}"),
            &v1h,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["webhook"]["webhookUrl"], format!("{}?v=2", rx.url));
    let r = app
        .send(
            "DELETE",
            "/connection/webhook",
            &v1h,
            Some(&json!({"accessToken": access, "webhookId": wid}).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .send(
            "GET",
            &format!("/connection/webhook?accessToken={access}"),
            &v1h,
            None,
        )
        .await;
    assert_eq!(v1_error(&r, 404), "NOT_FOUND");

    let r = app
        .post("/webhooks/delete", &h, json!({"id": v2["id"]}))
        .await;
    assert_eq!(r.body["result"]["id"], v2["id"]);
    let r = app
        .post("/webhooks/find", &h, json!({"id": v2["id"]}))
        .await;
    assert_eq!(v2_error(&r, 404), "NOT_FOUND");
    let r = app.post("/webhooks/event-types/list", &h, json!({})).await;
    assert!(r.body["result"]["eventTypes"].as_array().unwrap().len() > 10);
}

#[tokio::test]
async fn bad_subscriptions_get_a_clear_400_and_the_ssrf_guard_holds() {
    let app = spawn().await; // the dangerous switch is off
    let h = [("x-vessel-api-token", app.dev_token.as_str())];
    for (body, code) in [
        (json!({"event": "*"}), "INVALID_BODY"),
        (json!({"url": "https://93.184.216.34/hook"}), "INVALID_BODY"),
        (
            json!({"url": "not a url", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "http://93.184.216.34/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "ftp://93.184.216.34/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://127.0.0.1/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://10.0.0.7/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://169.254.169.254/latest/meta-data", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://[::1]/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://[::ffff:192.168.0.1]/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://localhost/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://0x7f.1/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://user:pw@93.184.216.34/hook", "event": "*"}),
            "INVALID_WEBHOOK_URL",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "event": "connection.exploded"}),
            "INVALID_EVENT_TYPE",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "event": "object.crm.widgets.*"}),
            "INVALID_EVENT_TYPE",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "events": []}),
            "INVALID_EVENT_TYPE",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "event": "*", "connectionIds": []}),
            "INVALID_BODY",
        ),
        (json!({"url": 7, "event": "*"}), "INVALID_BODY"),
    ] {
        let r = app.post("/webhooks", &h, body.clone()).await;
        assert_eq!(v2_error(&r, 400), code, "{body}");
    }
    let r = app
        .post(
            "/webhooks",
            &h,
            json!({"url": "https://93.184.216.34/hook", "event": "object.crm.*"}),
        )
        .await;
    assert_eq!(r.status, 200, "a public https target is fine: {r:?}");
    let id = r.body["result"]["id"].as_str().unwrap();
    let r = app
        .post(
            "/webhooks/update",
            &h,
            json!({"id": id, "url": "https://192.168.1.1/"}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_WEBHOOK_URL");
    for (path, body, status) in [
        ("/webhooks/messages/list", json!({"status": "lost"}), 400),
        ("/webhooks/messages/list", json!({"cursor": "forged"}), 400),
        ("/webhooks/messages/replay", json!({"webhookId": id}), 400),
        (
            "/webhooks/messages/replay",
            json!({"webhookId": id, "messageId": "evt_nope"}),
            404,
        ),
        (
            "/webhooks/messages/replay",
            json!({"webhookId": id, "since": "yesterday"}),
            400,
        ),
        (
            "/webhooks/rotate-secret",
            json!({"id": id, "overlapSeconds": 99999999}),
            400,
        ),
        ("/webhooks/delete", json!({"id": "v_webhook_nope"}), 404),
        ("/webhooks/find", json!({}), 400),
    ] {
        let r = app.post(path, &h, body.clone()).await;
        assert_eq!(r.status, status, "{path} {body}: {r:?}");
    }
}

#[tokio::test]
async fn vessel_v1_and_v2_payloads_and_signatures() {
    use sha2::Digest;
    let app = spawn_webhooks("0").await;
    let rx = Receiver::start().await;
    let api = app.dev_token.clone();
    let (conn, access) = app.connect_sandbox(&api, "sk_live_ok").await;
    let r = app
        .post(
            "/webhooks/create",
            &[("x-vessel-api-token", &api)],
            json!({"url": rx.url}),
        )
        .await;
    let v2_id = r.body["result"]["webhook"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post(
            "/connection/webhook",
            &[("vessel-api-token", &api)],
            json!({"accessToken": access, "webhook": {"webhookUrl": rx.url}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let env = env_id(&app).await;
    let store = app.platform.store();
    let now = berth_connections::now_ms();
    for (id, t, payload) in [
        (
            "evt_a1",
            "object.crm.deals.updated",
            json!({"id": "deal_1", "record": {"id": "deal_1", "name": "Big"}}),
        ),
        (
            "evt_a2",
            "connection.status_changed",
            json!({"status": "INITIAL_SYNCED"}),
        ),
        ("evt_a3", "system.sync.initial.complete", json!({})),
    ] {
        store
            .insert_event(&NewEvent {
                id,
                environment_id: &env,
                connection_id: Some(&conn),
                event_type: t,
                payload: &payload.to_string(),
                created_at: now,
            })
            .await
            .unwrap();
    }
    // v2 gets the object and the initial-sync events; v1 the object and status change.
    let got = rx.wait("four deliveries", 10, |g| g.len() >= 4).await;
    let hex = |s: String| hex::encode(sha2::Sha256::digest(s.as_bytes()));
    let mut seen = HashSet::new();
    for g in &got {
        let body: Value = serde_json::from_str(&g.body).unwrap();
        if let Some(sig) = g.headers.get("x-vessel-webhook-signature") {
            let ts = g.headers["x-vessel-timestamp"].to_str().unwrap();
            assert_eq!(sig.to_str().unwrap(), hex(format!("{api}:{ts}:{}", g.body)));
            assert_eq!(g.headers["x-vessel-webhook-id"].to_str().unwrap(), v2_id);
            assert!(
                g.headers["x-vessel-project-id"]
                    .to_str()
                    .unwrap()
                    .starts_with("v_project_")
            );
            assert_eq!(body["connectionId"], conn);
            match body["eventType"].as_str().unwrap() {
                "object.crm.deals.updated" => assert_eq!(body["data"], json!({"id": "deal_1"})),
                "system.sync.initial.complete" => assert!(body.get("data").is_none()),
                other => panic!("v2 got {other}"),
            }
            seen.insert(format!("v2 {}", body["eventType"]));
        } else {
            let ts = g.headers["x-vessel-timestamp"].to_str().unwrap();
            let sig = g.headers["x-vessel-signature"].to_str().unwrap();
            assert_eq!(sig, hex(format!("{access}{}{ts}", g.body)));
            assert_eq!(g.headers["x-vessel-connection-id"].to_str().unwrap(), conn);
            match body["type"].as_str().unwrap() {
                "OBJECT_CHANGE" => {
                    assert_eq!(body["data"]["objectType"], "Deal");
                    assert_eq!(body["data"]["eventType"], "UPDATE");
                    assert_eq!(body["data"]["record"]["name"], "Big");
                }
                "STATUS_CHANGE" => assert_eq!(body["data"], json!({"status": "INITIAL_SYNCED"})),
                other => panic!("v1 got {other}"),
            }
            seen.insert(format!("v1 {}", body["type"]));
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// One sample of `/metrics` (name with its labels as the page spells
/// them).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_outage_loses_nothing_then_dead_letters_replay() {
    // Attempts at 0, 0.2 s, 0.4 s, 0.8 s and 1.6 s stand in for the hours
    // of the default schedule.
    let app = spawn_webhooks("0,200,400,800,1600").await;
    let rx = Receiver::start().await;
    let w = create(&app, json!({"url": rx.url, "event": "object.crm.*"})).await;
    let env = env_id(&app).await;

    rx.set(Mode::Status(503));
    let first = emit(
        &app,
        &env,
        "object.crm.contacts.created",
        40,
        json!({"id": "c"}),
    )
    .await;
    // The receiver is down across several retries, then comes back.
    wait_messages(
        &app,
        json!({"webhookId": w["id"], "status": "retry"}),
        "retries",
        |m| m.len() == 40,
    )
    .await;
    // /metrics shows the outage: every message pending, attempts retrying.
    assert_eq!(metric(&app, "berth_webhooks_pending_messages").await, 40.0);
    assert!(
        metric(
            &app,
            "berth_webhooks_delivery_attempts_total{outcome=\"retrying\"}"
        )
        .await
            >= 40.0
    );
    assert!(metric(&app, "berth_webhooks_delivery_duration_seconds_count").await >= 40.0);
    rx.set(Mode::Ok);
    let got = rx
        .wait("every event after the outage", 20, |g| ids(g).len() == 40)
        .await;
    assert_eq!(ids(&got), first.iter().cloned().collect());
    wait_messages(
        &app,
        json!({"webhookId": w["id"], "status": "delivered"}),
        "delivered",
        |m| m.len() == 40,
    )
    .await;
    let r = app
        .post(
            "/webhooks/attempts/list",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"messageId": first[0], "limit": 50}),
        )
        .await;
    let attempts = r.body["result"]["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "success");
    let failed = attempts.iter().find(|a| a["outcome"] == "failed").unwrap();
    assert_eq!(failed["statusCode"], 503);
    assert_eq!(failed["responseExcerpt"], "receiver says no");

    // An outage longer than the schedule: messages are dead-lettered...
    rx.set(Mode::Status(500));
    let second = emit(
        &app,
        &env,
        "object.crm.deals.updated",
        10,
        json!({"id": "d"}),
    )
    .await;
    wait_messages(
        &app,
        json!({"webhookId": w["id"], "status": "dead"}),
        "dead letters",
        |m| m.len() == 10,
    )
    .await;
    assert_eq!(
        metric(
            &app,
            "berth_webhooks_delivery_attempts_total{outcome=\"dead\"}"
        )
        .await,
        10.0
    );
    assert_eq!(
        metric(
            &app,
            "berth_webhooks_delivery_attempts_total{outcome=\"delivered\"}"
        )
        .await,
        40.0
    );
    assert_eq!(metric(&app, "berth_webhooks_pending_messages").await, 0.0);
    assert_eq!(metric(&app, "berth_webhooks_oldest_due_seconds").await, 0.0);
    // ... and a replay of everything failed since then delivers them with the same ids.
    rx.set(Mode::Ok);
    let r = app
        .post(
            "/webhooks/messages/replay",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"webhookId": w["id"], "since": 0}),
        )
        .await;
    assert_eq!(r.body["result"]["replayed"], 10, "{r:?}");
    let got = rx
        .wait("replayed", 20, |g| {
            second.iter().all(|id| ids(g).contains(id))
        })
        .await;
    assert_eq!(ids(&got).len(), 50);
    let m = wait_messages(
        &app,
        json!({"webhookId": w["id"], "messageId": second[0]}),
        "replayed delivered",
        |m| m.first().is_some_and(|m| m["status"] == "delivered"),
    )
    .await;
    assert_eq!(m[0]["id"], second[0].as_str());
    let r = app
        .post(
            "/webhooks/attempts/list",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"messageId": second[0]}),
        )
        .await;
    assert_eq!(r.body["result"]["attempts"][0]["trigger"], "replay");

    // One message replayed on its own: delivered again, same webhook-id.
    let before = rx.got().len();
    let r = app
        .post(
            "/webhooks/messages/replay",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"webhookId": w["id"], "messageId": first[3]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = rx.wait("single replay", 10, |g| g.len() > before).await;
    assert_eq!(
        got.last().unwrap().headers["webhook-id"].to_str().unwrap(),
        first[3]
    );
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_overlap() {
    let app = spawn_webhooks("0").await;
    let rx = Receiver::start().await;
    let w = create(&app, json!({"url": rx.url, "event": "*"})).await;
    let old = w["secret"].as_str().unwrap().to_string();
    let env = env_id(&app).await;
    let h = [("x-vessel-api-token", app.dev_token.as_str())];
    let r = app
        .post(
            "/webhooks/rotate-secret",
            &h,
            json!({"id": w["id"], "overlapSeconds": 3600}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let new = r.body["result"]["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(r.body["result"]["webhook"]["previousSecretExpiresAt"].is_string());
    emit(&app, &env, "sync.completed", 5, json!({})).await;
    let got = rx.wait("5 during overlap", 10, |g| g.len() >= 5).await;
    for g in &got {
        // A receiver on either secret verifies every message.
        assert!(verify_standard(&old, g), "old secret during overlap");
        assert!(verify_standard(&new, g), "new secret during overlap");
    }
    // A rotation without overlap: only the newest secret signs.
    let r = app
        .post(
            "/webhooks/rotate-secret",
            &h,
            json!({"id": w["id"], "overlapSeconds": 0}),
        )
        .await;
    let newest = r.body["result"]["secret"].as_str().unwrap().to_string();
    emit(&app, &env, "sync.completed", 1, json!({})).await;
    let got = rx.wait("after rotation", 10, |g| g.len() >= 6).await;
    let last = got.last().unwrap();
    assert!(verify_standard(&newest, last));
    assert!(!verify_standard(&new, last));
    assert!(!verify_standard(&old, last));
}

#[tokio::test]
async fn misbehaving_receivers_fail_attempts_without_stalling_delivery() {
    let app = spawn_webhooks("0,60000").await;
    let good = Receiver::start().await;
    let hang = Receiver::start().await;
    hang.set(Mode::Hang);
    let redirect = Receiver::start().await;
    redirect.set(Mode::Redirect);
    let huge = Receiver::start().await;
    huge.set(Mode::Huge);
    let gone = Receiver::start().await;
    gone.set(Mode::Status(410));
    // A port that accepts and drops every connection.
    let reset = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_url = format!("http://{}/hook", reset.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = reset.accept().await {
                drop(s);
            }
        }
    });
    let mut ids_by = Vec::new();
    for url in [
        &hang.url,
        &redirect.url,
        &huge.url,
        &gone.url,
        &reset_url,
        &good.url,
    ] {
        let w = create(&app, json!({"url": url, "event": "sync.*"})).await;
        ids_by.push(w["id"].as_str().unwrap().to_string());
    }
    let watcher = Receiver::start().await;
    create(
        &app,
        json!({"url": watcher.url, "event": "webhook.disabled"}),
    )
    .await;
    let env = env_id(&app).await;
    emit(&app, &env, "sync.failed", 3, json!({"error": "x"})).await;
    good.wait("good receiver", 10, |g| g.len() == 3).await;
    huge.wait("huge receiver", 10, |g| g.len() == 3).await;
    let notice = watcher
        .wait("webhook.disabled notice", 10, |g| !g.is_empty())
        .await;
    let n: Value = serde_json::from_str(&notice[0].body).unwrap();
    assert_eq!(n["data"]["webhookId"], ids_by[3].as_str());

    let h = [("x-vessel-api-token", app.dev_token.as_str())];
    let attempts_of = |i: usize| {
        let id = ids_by[i].clone();
        let app = &app;
        async move {
            let r = app
                .post("/webhooks/attempts/list", &h, json!({"webhookId": id}))
                .await;
            r.body["result"]["attempts"].as_array().unwrap().clone()
        }
    };
    // Hanging: fails after the 2 s timeout.
    let mut a = Vec::new();
    for _ in 0..100 {
        a = attempts_of(0).await;
        if a.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.len(), 3, "{a:?}");
    assert!(
        a.iter().all(|a| a["outcome"] == "failed"
            && a["error"].as_str().unwrap().contains("no answer within")),
        "{a:?}"
    );
    let a = attempts_of(1).await;
    assert!(
        a.iter()
            .all(|a| a["statusCode"] == 302 && a["outcome"] == "failed"),
        "redirects are not followed: {a:?}"
    );
    let a = attempts_of(2).await;
    assert!(
        a.iter()
            .all(|a| a["outcome"] == "success"
                && a["responseExcerpt"].as_str().unwrap().len() == 1024),
        "{a:?}"
    );
    let a = attempts_of(4).await;
    assert!(
        !a.is_empty()
            && a.iter()
                .all(|a| a["outcome"] == "failed" && a["statusCode"].is_null()),
        "{a:?}"
    );
    // 410 disabled the endpoint; its undelivered messages are dead letters.
    let r = app
        .post("/webhooks/find", &h, json!({"id": ids_by[3]}))
        .await;
    assert_eq!(r.body["result"]["webhook"]["disabled"], true);
    assert!(
        r.body["result"]["webhook"]["disabledReason"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    let m = messages(&app, json!({"webhookId": ids_by[3]})).await;
    assert!(m.iter().all(|m| m["status"] == "dead"), "{m:?}");
    // Failed messages wait for their retry, a minute away.
    let m = messages(&app, json!({"webhookId": ids_by[4]})).await;
    assert!(
        m.iter()
            .all(|m| m["status"] == "retry" && m["nextAttemptTime"].is_string()),
        "{m:?}"
    );
}

#[tokio::test]
async fn signatures_verify_with_the_python_standardwebhooks_package() {
    let app = spawn_webhooks("0").await;
    let rx = Receiver::start().await;
    let w = create(&app, json!({"url": rx.url, "event": "*"})).await;
    let env = env_id(&app).await;
    emit(
        &app,
        &env,
        "object.crm.contacts.updated",
        3,
        json!({"id": "c1", "record": {"email": "ünï@example.com"}}),
    )
    .await;
    let got = rx.wait("3", 10, |g| g.len() >= 3).await;
    let cases: Vec<Value> = got
        .iter()
        .map(|g| {
            json!({
                "headers": {
                    "webhook-id": g.headers["webhook-id"].to_str().unwrap(),
                    "webhook-timestamp": g.headers["webhook-timestamp"].to_str().unwrap(),
                    "webhook-signature": g.headers["webhook-signature"].to_str().unwrap(),
                },
                "body": g.body,
            })
        })
        .collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/verify-standardwebhooks.py"
    );
    let input = json!({"secret": w["secret"], "cases": cases}).to_string();
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "standardwebhooks refused a signature (pip install standardwebhooks): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "verified 3, rejected tampered 3"
    );
}
