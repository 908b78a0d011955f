//! End users choose some provider hosts (a self-hosted Chatwoot's instance
//! URL): Berth never calls an internal address on their say-so, unless the
//! operator allowed that network; customers' webhook targets and filters
//! are held to the same guard and to their own environment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::helpers::*;

/// A stand-in Chatwoot on loopback that counts the calls it gets.
async fn chatwoot_on_loopback() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"payload": []}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("{port}"), calls)
}

async fn connect_chatwoot(app: &TestApp, instance: &str) -> Resp {
    let st = app.session_token(&app.dev_token, json!({})).await;
    app.post(
        "/auth/start",
        &[("x-vessel-session-token", &st)],
        json!({"integrationId": "chatwoot", "answers": {"instanceUrl": instance, "accountId": "1", "api-key": "k"}}),
    )
    .await
}

async fn connection_count(app: &TestApp) -> usize {
    app.post(
        "/connections/list",
        &[("x-vessel-api-token", &app.dev_token)],
        json!({}),
    )
    .await
    .body["result"]["connections"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn an_end_user_cannot_make_berth_call_internal_addresses() {
    let (port, calls) = chatwoot_on_loopback().await;
    let app = spawn().await;
    for instance in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
        format!("http://[::127.0.0.1]:{port}"),
        format!("http://[::ffff:0:7f00:1]:{port}"),
        format!("http://[2002:7f00:1::]:{port}"),
        "http://169.254.169.254".to_string(),
        "http://[fd00:ec2::254]".to_string(),
        "http://10.0.0.1".to_string(),
        "http://192.0.2.1".to_string(),
        "http://0x7f000001".to_string(),
    ] {
        let r = connect_chatwoot(&app, &instance).await;
        assert_eq!(
            v2_error(&r, 400),
            "PRIVATE_ADDRESS_REFUSED",
            "{instance}: {r:?}"
        );
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("--allow-private-provider-networks"), "{msg}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing reached the address"
    );
    assert_eq!(connection_count(&app).await, 0, "nothing was stored");
}

#[tokio::test]
async fn the_operator_may_allow_a_network_and_every_later_call_is_guarded_again() {
    let (port, calls) = chatwoot_on_loopback().await;
    let app = spawn_with(|c| {
        c.outbound.allow_private_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let r = connect_chatwoot(&app, &format!("http://127.0.0.1:{port}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .post(
            "/auth/access-token",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({}),
        )
        .await;
    let _ = r;
    assert!(
        calls.load(Ordering::SeqCst) >= 1,
        "the check call reached it"
    );
    assert_eq!(connection_count(&app).await, 1);

    // The same store served by a Berth whose operator allows nothing: the
    // stored connection's calls are refused at the connection, before any
    // byte leaves.
    let conn = app
        .post(
            "/connections/list",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({}),
        )
        .await
        .body["result"]["connections"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let strict = spawn_with(|c| {
        c.data_dir = app.data_dir.clone();
        c.database_url = app.database_url.clone();
    })
    .await;
    let before = calls.load(Ordering::SeqCst);
    let store_conn = strict
        .platform
        .store()
        .get_connection("v_env_development", &conn)
        .await
        .unwrap()
        .unwrap();
    let call = berth_connections::ProviderCall {
        method: berth_outbound::Method::GET,
        path: "/agents".into(),
        query: Vec::new(),
        headers: Vec::new(),
        body: None,
        read_only: false,
    };
    let e = strict
        .platform
        .call_provider(&store_conn, &call)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &e,
            berth_connections::PlatformError::BadRequest {
                code: "PRIVATE_ADDRESS_REFUSED",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), before, "nothing was sent");
}

#[tokio::test]
async fn webhook_targets_and_filters_are_checked() {
    let app = spawn().await;
    let h = [("x-vessel-api-token", app.dev_token.as_str())];
    for url in [
        "https://[::127.0.0.1]/hook",
        "https://[::ffff:0:7f00:1]/hook",
        "https://[2002:7f00:1::]/hook",
        "https://192.0.2.1/hook",
        "https://198.51.100.7/hook",
        "https://203.0.113.9/hook",
        "https://[2001:db8::1]/hook",
    ] {
        let r = app
            .post("/webhooks/create", &h, json!({"url": url, "event": "*"}))
            .await;
        assert_eq!(v2_error(&r, 400), "INVALID_WEBHOOK_URL", "{url}: {r:?}");
    }
    // A connection of another environment is not a filter of this one.
    let prod = app.prod_token().await;
    let (other_conn, _) = app.connect_sandbox(&prod, "other-env").await;
    let r = app
        .post(
            "/webhooks/create",
            &h,
            json!({"url": "https://93.184.216.34/hook", "event": "*", "connectionIds": [other_conn]}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_CONNECTION_ID", "{r:?}");
    let (mine, _) = app.connect_sandbox(&app.dev_token, "mine").await;
    let r = app
        .post(
            "/webhooks/create",
            &h,
            json!({"url": "https://93.184.216.34/hook", "event": "*", "connectionIds": [mine]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
