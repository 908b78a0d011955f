//! Invariant 1: a token of one environment never sees or changes another's
//! data, on every endpoint that takes a token.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn production_token_never_sees_development_data() {
    let app = spawn().await;
    let dev = app.dev_token.clone();
    let prod = app.prod_token().await;
    let (conn, access) = app.connect_sandbox(&dev, "dev-key").await;

    // a dev session completed but not yet exchanged, and a dev public token
    let st = app.session_token(&dev, json!({})).await;
    app.post(
        "/auth/start",
        &[("x-vessel-session-token", &st)],
        json!({"integrationId": "sandbox", "answers": {"api-key": "k"}}),
    )
    .await;
    let link = app
        .send("POST", "/link/token", &[("vessel-api-token", &dev)], None)
        .await
        .body["linkToken"]
        .as_str()
        .unwrap()
        .to_string();
    let public = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &link)],
            json!({"integrationId": "sandbox", "answers": {"api-key": "k"}}),
        )
        .await
        .body["result"]["publicToken"]
        .as_str()
        .unwrap()
        .to_string();

    let p = [("x-vessel-api-token", prod.as_str())];
    // v2
    for prefix in ["", "/api"] {
        let list = app
            .post(&format!("{prefix}/connections/list"), &p, json!({}))
            .await;
        assert_eq!(
            list.body["result"]["connections"].as_array().unwrap().len(),
            0,
            "{list:?}"
        );
        for route in [
            "/connections/get",
            "/connections/find",
            "/connections/delete",
        ] {
            let r = app
                .post(&format!("{prefix}{route}"), &p, json!({"id": conn}))
                .await;
            assert_eq!(v2_error(&r, 404), "NOT_FOUND", "{prefix}{route}");
        }
        let r = app
            .post(
                &format!("{prefix}/auth/access-token"),
                &[
                    ("x-vessel-api-token", &prod),
                    ("x-vessel-session-token", &st),
                ],
                json!({}),
            )
            .await;
        assert_eq!(v2_error(&r, 400), "INVALID_SESSION_TOKEN");
        let r = app
            .post(
                &format!("{prefix}/connections/delete"),
                &[
                    ("x-vessel-api-token", &prod),
                    ("x-vessel-access-token", &access),
                ],
                json!({"id": conn}),
            )
            .await;
        assert_eq!(v2_error(&r, 401), "INVALID_ACCESS_TOKEN");
    }
    // a cursor issued to dev is refused for prod
    for _ in 0..2 {
        app.connect_sandbox(&dev, "more").await;
    }
    let page = app
        .post(
            "/connections/list",
            &[("x-vessel-api-token", &dev)],
            json!({"limit": 1}),
        )
        .await;
    let cursor = page.body["result"]["nextPageCursor"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post("/connections/list", &p, json!({"cursor": cursor}))
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_CURSOR");
    // v1
    let v1 = [("vessel-api-token", prod.as_str())];
    let r = app
        .send(
            "GET",
            &format!("/connection/connection?connectionId={conn}"),
            &v1,
            None,
        )
        .await;
    assert_eq!(v1_error(&r, 404), "NOT_FOUND");
    let r = app.send("GET", "/connection/connections", &v1, None).await;
    assert_eq!(r.body["connections"].as_array().unwrap().len(), 0);
    let r = app
        .send(
            "DELETE",
            "/connection/connection",
            &v1,
            Some(&json!({"connectionId": conn}).to_string()),
        )
        .await;
    assert_eq!(v1_error(&r, 404), "NOT_FOUND");
    let r = app
        .send(
            "POST",
            "/link/exchange",
            &v1,
            Some(&json!({"publicToken": public}).to_string()),
        )
        .await;
    assert_eq!(v1_error(&r, 400), "INVALID_PUBLIC_TOKEN");

    // nothing was changed by those attempts: dev still sees and can use everything
    let r = app
        .post(
            "/connections/get",
            &[("x-vessel-api-token", &dev)],
            json!({"id": conn}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .post(
            "/auth/access-token",
            &[
                ("x-vessel-api-token", &dev),
                ("x-vessel-session-token", &st),
            ],
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .send(
            "POST",
            "/link/exchange",
            &[("vessel-api-token", &dev)],
            Some(&json!({"publicToken": public}).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn revoked_tokens_stop_working_within_the_cache_ttl() {
    let app = spawn().await;
    let token = app.prod_token().await;
    let r = app
        .post(
            "/connections/list",
            &[("x-vessel-api-token", &token)],
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200);
    let prefix: String = token.chars().take(16).collect();
    assert_eq!(
        app.platform
            .store()
            .revoke_api_token(&prefix, 1)
            .await
            .unwrap(),
        1
    );
    // Revocation happens in the store (the CLI is another process); the
    // server's hot cache notices within its TTL (1 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let r = app
            .post(
                "/connections/list",
                &[("x-vessel-api-token", &token)],
                json!({}),
            )
            .await;
        if r.status == 401 {
            assert_eq!(v2_error(&r, 401), "INVALID_API_TOKEN");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still accepted: {r:?}"
        );
        // Polling interval, not synchronization: the deadline decides.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
