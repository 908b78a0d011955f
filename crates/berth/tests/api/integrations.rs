//! The public catalog endpoints and the icons.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn catalog_is_public_but_invalid_tokens_are_refused() {
    let app = spawn().await;
    let none = app.send("POST", "/integrations/list", &[], None).await;
    assert_eq!(none.status, 200);
    let all = none.body["result"]["integrations"].as_array().unwrap();
    assert!(all.len() >= 19);
    let hubspot = all.iter().find(|i| i["id"] == "hubspot").unwrap();
    assert_eq!(hubspot["integrationId"], "hubspot");
    assert_eq!(hubspot["category"], "crm");
    assert_eq!(hubspot["display"]["name"], "HubSpot");
    assert_eq!(
        hubspot["display"]["iconURI"],
        format!("{}/icons/hubspot.svg", app.base)
    );
    assert_eq!(hubspot["auth"][0]["type"], "oauth2");
    assert_eq!(hubspot["auth"][0]["default"], true);
    let chatwoot = all.iter().find(|i| i["id"] == "chatwoot").unwrap();
    let questions: Vec<_> = chatwoot["auth"][0]["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["id"].as_str().unwrap())
        .collect();
    assert_eq!(questions, ["instanceUrl", "accountId", "api-key"]);
    let sf = all.iter().find(|i| i["id"] == "salesforce").unwrap();
    assert_eq!(sf["auth"][0]["questions"][0]["type"], "select");

    let api = app
        .post(
            "/api/integrations/list",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({}),
        )
        .await;
    assert_eq!(api.status, 200);
    let st = app.session_token(&app.dev_token, json!({})).await;
    let sess = app
        .post(
            "/integrations/list",
            &[("x-vessel-session-token", &st)],
            json!({}),
        )
        .await;
    assert_eq!(sess.status, 200);
    let bad = app
        .post(
            "/integrations/list",
            &[("x-vessel-api-token", "berth_dev_bogus")],
            json!({}),
        )
        .await;
    assert_eq!(v2_error(&bad, 401), "INVALID_API_TOKEN");
    let bad = app
        .post(
            "/integrations/list",
            &[("x-vessel-session-token", "v_session_bogus")],
            json!({}),
        )
        .await;
    assert_eq!(v2_error(&bad, 401), "INVALID_SESSION_TOKEN");

    let filtered = app
        .post(
            "/integrations/list",
            &[],
            json!({"filters": {"ids": ["slack", "apollo"]}}),
        )
        .await;
    assert_eq!(
        filtered.body["result"]["integrations"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let dialers = app
        .post(
            "/integrations/list",
            &[],
            json!({"filters": {"category": "dialer"}}),
        )
        .await;
    let ids: Vec<_> = dialers.body["result"]["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let bad = app
        .post(
            "/integrations/list",
            &[],
            json!({"filters": {"category": "toys"}}),
        )
        .await;
    assert_eq!(v2_error(&bad, 400), "INVALID_BODY");

    for path in ["/integrations/find", "/api/integrations/find"] {
        let one = app
            .post(
                path,
                &[("x-vessel-session-token", &st)],
                json!({"id": "snovio"}),
            )
            .await;
        assert_eq!(
            one.body["result"]["integration"]["auth"][0]["type"],
            "oauth2-client-credentials"
        );
    }
    let missing = app
        .post("/integrations/find", &[], json!({"id": "nope"}))
        .await;
    assert_eq!(v2_error(&missing, 404), "NOT_FOUND");
}

#[tokio::test]
async fn icons_are_served_by_berth() {
    let app = spawn().await;
    let r = app
        .client
        .get(format!("{}/icons/salesforce.svg", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    let svg = r.text().await.unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("#00A1E0"));
    let r = app
        .client
        .get(format!("{}/icons/nope.svg", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn providers_file_overrides_and_adds_integrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.toml");
    std::fs::write(
        &path,
        r#"
[integrations.chatwoot]
name = "Chatwoot (self-hosted)"
[integrations.acme]
name = "Acme CRM"
category = "crm"
base_url = "{{public_url}}/sandbox/api/v1"
[integrations.acme.auth.apiKey]
attach = { header = "Authorization", value = "Bearer {{credential.apiKey}}" }
questions = [{ id = "api-key", label = "Key", type = "password" }]
check = { method = "GET", path = "/me" }
"#,
    )
    .unwrap();
    let app = spawn_with(|c| c.providers_file = Some(path.clone())).await;
    let r = app
        .post("/integrations/find", &[], json!({"id": "chatwoot"}))
        .await;
    assert_eq!(
        r.body["result"]["integration"]["display"]["name"],
        "Chatwoot (self-hosted)"
    );
    // a custom integration works end to end (it points at the sandbox)
    let (conn, _) = {
        let st = app
            .session_token(&app.dev_token, json!({"integrationId": "acme"}))
            .await;
        let r = app
            .post(
                "/auth/start",
                &[("x-vessel-session-token", &st)],
                json!({"answers": {"api-key": "k"}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        (
            r.body["result"]["connectionId"]
                .as_str()
                .unwrap()
                .to_string(),
            st,
        )
    };
    assert!(conn.contains("_acme_"));
}
