//! The end-to-end flow a new user follows, with plain HTTP calls only.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn new_user_connects_the_sandbox_lists_hits_the_dev_limit_and_deletes() {
    let app = spawn().await;
    let api = app.dev_token.clone();
    assert!(api.starts_with("berth_dev_") && api.len() >= 64);

    // session token bound to the end user's identifiers
    let st = app
        .session_token(
            &api,
            json!({"externalUserId": "acct-7", "metadata": {"plan": "pro"}}),
        )
        .await;
    assert!(st.starts_with("v_session_"));

    // the modal's step: the sandbox refuses an invalid key with its reason
    let bad = app
        .post("/api/auth/start", &[("x-vessel-session-token", &st)],
            json!({"integrationId": "sandbox", "authType": "apiKey", "answers": {"api-key": "invalid-key"}}))
        .await;
    assert_eq!(v2_error(&bad, 400), "INVALID_CREDENTIALS");
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid or has been revoked"),
        "{bad:?}"
    );

    // ...and a retry with a good key on the same session succeeds
    let ok = app
        .post("/api/auth/start", &[("x-vessel-session-token", &st)],
            json!({"integrationId": "sandbox", "authType": "apiKey", "answers": {"api-key": "demo-key"}}))
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body["result"]["oauthURL"].is_null());
    // a completed session cannot start another connection
    let again = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st)],
            json!({"integrationId": "sandbox", "answers": {"api-key": "demo-key"}}),
        )
        .await;
    assert_eq!(v2_error(&again, 400), "SESSION_ALREADY_USED");

    // exchange, once
    let ex = app
        .post(
            "/auth/access-token",
            &[
                ("x-vessel-api-token", &api),
                ("x-vessel-session-token", &st),
            ],
            json!({}),
        )
        .await;
    assert_eq!(ex.status, 200, "{ex:?}");
    let conn_id = ex.body["result"]["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let access = ex.body["result"]["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ex.body["result"]["integrationId"], "sandbox");
    assert!(conn_id.starts_with("v_connection_development_sandbox_"));
    let twice = app
        .post(
            "/auth/access-token",
            &[
                ("x-vessel-api-token", &api),
                ("x-vessel-session-token", &st),
            ],
            json!({}),
        )
        .await;
    assert_eq!(v2_error(&twice, 400), "TOKEN_ALREADY_EXCHANGED");

    // list and get, in both spellings
    let list = app
        .post(
            "/connections/list",
            &[("x-vessel-api-token", &api)],
            json!({}),
        )
        .await;
    let conns = list.body["result"]["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(c["connectionId"], conn_id.as_str());
    assert_eq!(c["status"], "NEW_CONNECTION");
    assert_eq!(c["externalUserId"], "acct-7");
    assert_eq!(c["metadata"]["plan"], "pro");
    assert!(c["createdAt"].as_str().unwrap().ends_with('Z'));
    let got = app
        .post(
            "/connections/get",
            &[("x-vessel-api-token", &api)],
            json!({"id": conn_id}),
        )
        .await;
    assert_eq!(
        got.body["result"]["connectionId"],
        conn_id.as_str(),
        "{got:?}"
    );
    let found = app
        .post(
            "/api/connections/find",
            &[("x-vessel-api-token", &api)],
            json!({"id": conn_id}),
        )
        .await;
    assert_eq!(
        found.body["result"]["connection"]["id"],
        conn_id.as_str(),
        "{found:?}"
    );

    // the credential is vaulted, readable only through the vault
    let env = app.platform.authenticate_api_token(&api).await.unwrap();
    let cred = app.platform.load_credential(&env, &conn_id).await.unwrap();
    assert_eq!(cred.api_key.as_deref(), Some("demo-key"));
    let raw = app
        .platform
        .store()
        .get_credential(&env.id, &conn_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!raw.sealed.contains("demo-key") && raw.sealed.starts_with("bv1:"));

    // four more fill the development limit; the sixth is refused
    for i in 0..4 {
        app.connect_sandbox(&api, &format!("key-{i}")).await;
    }
    let st6 = app.session_token(&api, json!({})).await;
    let sixth = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st6)],
            json!({"integrationId": "sandbox", "answers": {"api-key": "k6"}}),
        )
        .await;
    assert_eq!(v2_error(&sixth, 400), "CONNECTION_LIMIT_REACHED");
    assert!(
        sixth.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("development connection limit")
    );
    // production has no such limit
    let prod = app.prod_token().await;
    app.connect_sandbox(&prod, "prod-key").await;

    // delete: with a foreign access token it is refused, with its own it works
    let (other_id, other_access) = {
        let list = app
            .post(
                "/connections/list",
                &[("x-vessel-api-token", &api)],
                json!({}),
            )
            .await;
        let c = list.body["result"]["connections"][1]["connectionId"]
            .as_str()
            .unwrap()
            .to_string();
        (c, "berth_at_not_this_one")
    };
    let refused = app
        .post(
            "/connections/delete",
            &[
                ("x-vessel-api-token", &api),
                ("x-vessel-access-token", other_access),
            ],
            json!({"id": other_id}),
        )
        .await;
    assert_eq!(v2_error(&refused, 401), "INVALID_ACCESS_TOKEN");
    let del = app
        .post(
            "/connections/delete",
            &[
                ("x-vessel-api-token", &api),
                ("x-vessel-access-token", &access),
            ],
            json!({"id": conn_id}),
        )
        .await;
    assert_eq!(del.status, 200, "{del:?}");
    assert_eq!(del.body["result"]["success"], true);
    let gone = app
        .post(
            "/connections/get",
            &[("x-vessel-api-token", &api)],
            json!({"id": conn_id}),
        )
        .await;
    assert_eq!(v2_error(&gone, 404), "NOT_FOUND");
    assert!(
        app.platform
            .store()
            .get_credential(&env.id, &conn_id)
            .await
            .unwrap()
            .is_none()
    );
    // its access token is revoked
    assert!(
        app.platform
            .connection_for_access_token(&env, &access)
            .await
            .is_err()
    );
    // and the freed slot can be used again
    let st7 = app.session_token(&api, json!({})).await;
    let seventh = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st7)],
            json!({"integrationId": "sandbox", "answers": {"api-key": "k7"}}),
        )
        .await;
    assert_eq!(seventh.status, 200, "{seventh:?}");

    // events for the webhooks issue were written with each change
    let events = app
        .platform
        .store()
        .list_events(&env.id, 0, 100)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.event_type == "connection.deleted"
        && e.connection_id.as_deref() == Some(conn_id.as_str())));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "connection.created")
            .count(),
        6
    );
}

#[tokio::test]
async fn session_bound_to_an_integration_refuses_another() {
    let app = spawn().await;
    let st = app
        .session_token(&app.dev_token, json!({"integrationId": "hubspot"}))
        .await;
    let r = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st)],
            json!({"integrationId": "sandbox", "answers": {"api-key": "k"}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INTEGRATION_MISMATCH");
    // HubSpot's default is OAuth; without an OAuth app it says how to add one
    let r = app
        .post("/auth/start", &[("x-vessel-session-token", &st)], json!({}))
        .await;
    assert_eq!(v2_error(&r, 400), "NO_OAUTH_APP");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("oauth-apps/create"),
        "{r:?}"
    );
}

#[tokio::test]
async fn sandbox_is_a_real_http_provider() {
    let app = spawn().await;
    let auth = [("authorization", "Bearer sandbox-user-1")];
    let page = app
        .send("GET", "/sandbox/api/v1/contacts?limit=50", &auth, None)
        .await;
    assert_eq!(page.status, 200);
    let first = page.body["data"].as_array().unwrap().clone();
    assert_eq!(first.len(), 50);
    assert!(first[0]["first_name"].is_string() && first[0]["account_id"].is_string());
    let next = page.body["next_cursor"].as_str().unwrap();
    let page2 = app
        .send(
            "GET",
            &format!("/sandbox/api/v1/contacts?limit=50&cursor={next}"),
            &auth,
            None,
        )
        .await;
    let second = page2.body["data"].as_array().unwrap();
    assert_eq!(first.len() + second.len(), 90);
    assert!(page2.body["next_cursor"].is_null());
    // every unified CRM object exists
    for o in berth_sandbox::OBJECTS {
        let r = app
            .send("GET", &format!("/sandbox/api/v1/{o}?limit=1"), &auth, None)
            .await;
        assert_eq!(r.status, 200, "{o}: {r:?}");
        assert_eq!(r.body["data"].as_array().unwrap().len(), 1, "{o}");
    }
    // writes: validation errors in the provider's own shape, then create/update/delete
    let bad = app
        .send(
            "POST",
            "/sandbox/api/v1/contacts",
            &auth,
            Some(r#"{"first_name": 5}"#),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["error"], "validation_failed");
    let created = app
        .send(
            "POST",
            "/sandbox/api/v1/contacts",
            &auth,
            Some(r#"{"last_name":"Lovelace","email":"ada@example.com"}"#),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["data"]["id"].as_str().unwrap().to_string();
    let upd = app
        .send(
            "PATCH",
            &format!("/sandbox/api/v1/contacts/{id}"),
            &auth,
            Some(r#"{"title":"Countess"}"#),
        )
        .await;
    assert_eq!(upd.body["data"]["title"], "Countess");
    let since = upd.body["data"]["updated_at"]
        .as_str()
        .unwrap()
        .replace('+', "%2B");
    let changed = app
        .send(
            "GET",
            &format!("/sandbox/api/v1/contacts?updated_since={since}"),
            &auth,
            None,
        )
        .await;
    assert!(
        changed.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str())
    );
    assert_eq!(
        app.send(
            "DELETE",
            &format!("/sandbox/api/v1/contacts/{id}"),
            &auth,
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        app.send(
            "GET",
            &format!("/sandbox/api/v1/contacts/{id}"),
            &auth,
            None
        )
        .await
        .status,
        404
    );
    let with_deleted = app
        .send(
            "GET",
            &format!("/sandbox/api/v1/contacts?include_deleted=true&updated_since={since}"),
            &auth,
            None,
        )
        .await;
    assert!(
        with_deleted.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["deleted_at"].is_string())
    );
    // accounts are isolated per key
    let other = app
        .send(
            "GET",
            &format!("/sandbox/api/v1/contacts/{id}"),
            &[("authorization", "Bearer another-user")],
            None,
        )
        .await;
    assert_eq!(other.status, 404);
    // rate limiting when asked to
    app.send(
        "POST",
        "/sandbox/api/v1/_settings",
        &auth,
        Some(r#"{"rate_limit_per_minute": 2}"#),
    )
    .await;
    let a = app.send("GET", "/sandbox/api/v1/users", &auth, None).await;
    assert_eq!(a.status, 200);
    app.send("GET", "/sandbox/api/v1/users", &auth, None).await;
    let limited = app.send("GET", "/sandbox/api/v1/users", &auth, None).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.body["error"], "rate_limited");
    // no key, no data
    assert_eq!(
        app.send("GET", "/sandbox/api/v1/contacts", &[], None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn an_access_token_replaced_by_reauthentication_says_so() {
    let app = spawn().await;
    let token = app.dev_token.clone();
    let (conn, old) = app.connect_sandbox(&token, "reauth-key").await;
    // Re-authenticate in place: a session naming the connection.
    let st = app
        .session_token(&token, serde_json::json!({"connectionId": conn}))
        .await;
    let r = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st)],
            serde_json::json!({"integrationId": "sandbox", "answers": {"api-key": "reauth-key-2"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .post(
            "/auth/access-token",
            &[
                ("x-vessel-api-token", &token),
                ("x-vessel-session-token", &st),
            ],
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["connectionId"], conn.as_str());
    let new = r.body["result"]["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let call = |access: String| {
        let app = &app;
        let token = token.clone();
        async move {
            app.post(
                "/passthrough",
                &[
                    ("x-vessel-api-token", &token),
                    ("x-vessel-access-token", &access),
                ],
                serde_json::json!({"method": "GET", "path": "/me"}),
            )
            .await
        }
    };
    let r = call(old).await;
    assert_eq!(v2_error(&r, 401), "ACCESS_TOKEN_REPLACED", "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("re-authenticated")
    );
    assert_eq!(call(new).await.status, 200);
    let r = call("v_access_bogus".into()).await;
    assert_eq!(v2_error(&r, 401), "INVALID_ACCESS_TOKEN");
}
