//! Sloppy and hostile input gets a 4xx that says what to fix, in the shape
//! of the API family it hit; nothing is half-written.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn sloppy_but_valid_requests_are_accepted() {
    let app = spawn().await;
    let h = [("x-vessel-api-token", app.dev_token.as_str())];
    // no body, no content type
    let r = app.send("POST", "/auth/session-token", &h, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // JSON sent as text/plain
    let mut hp = h.to_vec();
    hp.push(("content-type", "text/plain"));
    let r = app
        .send(
            "POST",
            "/auth/session-token",
            &hp,
            Some(r#"{"externalUserId":"u"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // whitespace-only body
    let r = app
        .send("POST", "/connections/list", &h, Some("  \n"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // unknown fields are ignored
    let r = app
        .post("/connections/list", &h, json!({"whatever": 1}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // answers may alias the api-key question
    let st = app.session_token(&app.dev_token, json!({})).await;
    let r = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st)],
            json!({"integrationId": "sandbox", "answers": {"apiKey": "k"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let app = spawn().await;
    let api = app.dev_token.clone();
    let h = [("x-vessel-api-token", api.as_str())];

    let r = app
        .send("POST", "/auth/session-token", &h, Some("{not json"))
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let r = app
        .send(
            "POST",
            "/auth/session-token",
            &h,
            Some(r#"{"externalUserId": 5}"#),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("externalUserId")
            || r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("string"),
        "{r:?}"
    );
    let r = app
        .send(
            "POST",
            "/auth/session-token",
            &h,
            Some(r#"{"metadata": [1]}"#),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let r = app
        .send(
            "POST",
            "/auth/session-token",
            &h,
            Some(r#"{"integrationId": "nope"}"#),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "UNKNOWN_INTEGRATION");
    let r = app
        .send(
            "POST",
            "/auth/session-token",
            &h,
            Some(r#"{"allowedOrigins": ["javascript:alert(1)"]}"#),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let r = app
        .send(
            "POST",
            "/auth/session-token",
            &h,
            Some(&format!(r#"{{"externalUserId": "{}"}}"#, "x".repeat(300))),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let r = app
        .send("POST", "/auth/session-token", &h, Some("\u{0}\u{1}"))
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let r = app.send("POST", "/connections/get", &h, Some("{}")).await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("id"),
        "{r:?}"
    );
    let r = app
        .post("/connections/list", &h, json!({"cursor": "forged"}))
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_CURSOR");
    let r = app
        .post("/connections/list", &h, json!({"limit": "ten"}))
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");

    // oversized payloads
    let big = format!(r#"{{"externalUserId": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let r = app
        .send("POST", "/auth/session-token", &h, Some(&big))
        .await;
    assert_eq!(v2_error(&r, 413), "PAYLOAD_TOO_LARGE");

    // missing and bad tokens
    let r = app.send("POST", "/auth/session-token", &[], None).await;
    assert_eq!(v2_error(&r, 401), "MISSING_API_TOKEN");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-vessel-api-token")
    );
    let r = app.send("POST", "/auth/start", &[], None).await;
    assert_eq!(v2_error(&r, 401), "MISSING_SESSION_TOKEN");
    let r = app
        .send(
            "POST",
            "/auth/start",
            &[("x-vessel-session-token", "v_session_0000")],
            None,
        )
        .await;
    assert_eq!(v2_error(&r, 401), "INVALID_SESSION_TOKEN");
    let r = app.send("POST", "/auth/access-token", &h, None).await;
    assert_eq!(v2_error(&r, 400), "MISSING_SESSION_TOKEN");
    // an API token is not a session token and vice versa
    let r = app
        .send(
            "POST",
            "/auth/start",
            &[("x-vessel-session-token", &api)],
            None,
        )
        .await;
    assert_eq!(v2_error(&r, 401), "INVALID_SESSION_TOKEN");

    // connect-form problems
    let st = app.session_token(&api, json!({})).await;
    let s = [("x-vessel-session-token", st.as_str())];
    let r = app.post("/auth/start", &s, json!({})).await;
    assert_eq!(v2_error(&r, 400), "INVALID_BODY");
    let r = app
        .post("/auth/start", &s, json!({"integrationId": "sandbox"}))
        .await;
    assert_eq!(v2_error(&r, 400), "MISSING_ANSWERS");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api-key")
    );
    let r = app
        .post(
            "/auth/start",
            &s,
            json!({"integrationId": "sandbox", "authType": "basic", "answers": {}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_AUTH_TYPE");
    let r = app
        .post(
            "/auth/start",
            &s,
            json!({"integrationId": "sandbox", "authType": "magic"}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_AUTH_TYPE");
    let r = app.post("/auth/start", &s, json!({"integrationId": "sandbox", "oauthAppId": "v_oauthapp_x", "answers": {"api-key": "k"}})).await;
    assert_eq!(v2_error(&r, 400), "INVALID_AUTH_TYPE");
    let r = app
        .post(
            "/auth/start",
            &s,
            json!({"integrationId": "sandbox", "answers": {"api-key": ["k"]}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_ANSWERS");
    let r = app.post("/auth/start", &s, json!({"integrationId": "chatwoot", "answers": {"instanceUrl": "not a url", "accountId": "1", "api-key": "k"}})).await;
    assert_eq!(v2_error(&r, 400), "INVALID_ANSWERS");
    // an exchange before the user finished
    let r = app
        .post(
            "/auth/access-token",
            &[
                ("x-vessel-api-token", &api),
                ("x-vessel-session-token", &st),
            ],
            json!({}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "SESSION_NOT_COMPLETED");
    // none of that created a connection
    let r = app.post("/connections/list", &h, json!({})).await;
    assert_eq!(r.body["result"]["connections"].as_array().unwrap().len(), 0);

    // unknown routes answer JSON too
    let r = app.send("POST", "/nope", &[], None).await;
    assert_eq!(v2_error(&r, 404), "NOT_FOUND");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_502_and_nothing_is_stored() {
    // Loopback allowed, as an operator would allow a company network
    // (tests/api/ssrf.rs covers the refusal without it).
    let app = spawn_with(|c| {
        c.outbound.allow_private_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let st = app.session_token(&app.dev_token, json!({})).await;
    // Chatwoot's check call goes to the instance URL the user typed: nothing listens on port 9.
    let r = app
        .post("/auth/start", &[("x-vessel-session-token", &st)],
            json!({"integrationId": "chatwoot", "answers": {"instanceUrl": "http://127.0.0.1:9", "accountId": "1", "api-key": "k"}}))
        .await;
    assert_eq!(v2_error(&r, 502), "PROVIDER_UNAVAILABLE");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Chatwoot")
    );
    let list = app
        .post(
            "/connections/list",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({}),
        )
        .await;
    assert_eq!(
        list.body["result"]["connections"].as_array().unwrap().len(),
        0
    );
}
