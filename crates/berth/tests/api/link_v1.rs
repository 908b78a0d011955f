//! Seed 001's v1 link flow: bare JSON, `vessel-api-token`, v1 errors.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn v1_link_flow_end_to_end() {
    let app = spawn().await;
    let api = app.dev_token.clone();
    // Seed 001's curl: POST with no body and no content type.
    let r = app
        .send("POST", "/link/token", &[("vessel-api-token", &api)], None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let link = r.body["linkToken"].as_str().unwrap().to_string();
    assert!(r.body.get("result").is_none(), "v1 bodies are bare");

    // the modal drives /auth/start with the link token and gets a public token
    let start = app
        .post("/auth/start", &[("x-vessel-session-token", &link)],
            json!({"integrationId": "sandbox", "authType": "apiKey", "answers": {"api-key": "v1-key"}}))
        .await;
    assert_eq!(start.status, 200, "{start:?}");
    let public = start.body["result"]["publicToken"]
        .as_str()
        .unwrap()
        .to_string();

    // Seed 001's backend example: JSON body without a content type
    let ex = app
        .send(
            "POST",
            "/link/exchange",
            &[("vessel-api-token", &api)],
            Some(&json!({"publicToken": public}).to_string()),
        )
        .await;
    assert_eq!(ex.status, 200, "{ex:?}");
    let conn = ex.body["connectionId"].as_str().unwrap().to_string();
    assert!(
        ex.body["accessToken"]
            .as_str()
            .unwrap()
            .starts_with("berth_at_")
    );
    assert_eq!(ex.body["integrationId"], "sandbox");
    assert!(ex.body.as_object().unwrap().contains_key("nativeOrgURL"));
    let again = app
        .send(
            "POST",
            "/link/exchange",
            &[("vessel-api-token", &api)],
            Some(&json!({"publicToken": public}).to_string()),
        )
        .await;
    assert_eq!(v1_error(&again, 400), "TOKEN_ALREADY_EXCHANGED");

    // x-vessel-api-token is accepted too
    let got = app
        .send(
            "GET",
            &format!("/connection/connection?connectionId={conn}"),
            &[("x-vessel-api-token", &api)],
            None,
        )
        .await;
    assert_eq!(got.status, 200, "{got:?}");
    let c = &got.body["connection"];
    assert_eq!(c["connectionId"], conn.as_str());
    assert_eq!(c["status"], "NEW_CONNECTION");
    assert!(c["createdTime"].is_string());
    assert!(c.as_object().unwrap().contains_key("lastActivityDate"));

    let all = app
        .send(
            "GET",
            "/connection/connections",
            &[("vessel-api-token", &api)],
            None,
        )
        .await;
    assert_eq!(all.body["connections"].as_array().unwrap().len(), 1);

    let crm = app
        .send(
            "GET",
            "/connection/crm/integrations",
            &[("vessel-api-token", &api)],
            None,
        )
        .await;
    let ids: Vec<_> = crm.body["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["integrationId"].as_str().unwrap().to_string())
        .collect();
    for id in ["salesforce", "hubspot", "zoho", "pipedrive", "sandbox"] {
        assert!(ids.contains(&id.to_string()), "{ids:?}");
    }
    assert!(!ids.contains(&"slack".to_string()));
    assert!(
        crm.body["integrations"][0]["iconURL"]
            .as_str()
            .unwrap()
            .ends_with(".svg")
    );
    let eng = app
        .send(
            "GET",
            "/connection/engagement/integrations",
            &[("vessel-api-token", &api)],
            None,
        )
        .await;
    assert!(
        eng.body["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["integrationId"] == "outreach")
    );

    // delete with a JSON body (as the docs show), then it is gone
    let del = app
        .send(
            "DELETE",
            "/connection/connection",
            &[("vessel-api-token", &api)],
            Some(&json!({"connectionId": conn}).to_string()),
        )
        .await;
    assert_eq!(del.status, 200, "{del:?}");
    let gone = app
        .send(
            "GET",
            &format!("/connection/connection?connectionId={conn}"),
            &[("vessel-api-token", &api)],
            None,
        )
        .await;
    assert_eq!(v1_error(&gone, 404), "NOT_FOUND");
}

#[tokio::test]
async fn v1_errors_use_the_v1_shape() {
    let app = spawn().await;
    let r = app.send("POST", "/link/token", &[], None).await;
    assert_eq!(v1_error(&r, 401), "MISSING_API_TOKEN");
    let r = app
        .send(
            "POST",
            "/link/token",
            &[("vessel-api-token", "berth_dev_wrong")],
            None,
        )
        .await;
    assert_eq!(v1_error(&r, 401), "INVALID_API_TOKEN");
    let api = app.dev_token.clone();
    let r = app
        .send(
            "POST",
            "/link/exchange",
            &[("vessel-api-token", &api)],
            Some("{}"),
        )
        .await;
    assert_eq!(v1_error(&r, 400), "INVALID_BODY");
    assert!(
        r.body["message"].as_str().unwrap().contains("publicToken"),
        "{r:?}"
    );
    let r = app
        .send(
            "POST",
            "/link/exchange",
            &[("vessel-api-token", &api)],
            Some(r#"{"publicToken":"nope"}"#),
        )
        .await;
    assert_eq!(v1_error(&r, 400), "INVALID_PUBLIC_TOKEN");
    let r = app
        .send(
            "GET",
            "/connection/connection",
            &[("vessel-api-token", &api)],
            None,
        )
        .await;
    assert_eq!(v1_error(&r, 400), "INVALID_BODY");
    let r = app
        .send(
            "DELETE",
            "/connection/connection",
            &[("vessel-api-token", &api)],
            Some("[1,2]"),
        )
        .await;
    assert_eq!(v1_error(&r, 400), "INVALID_BODY");
    // a link token is not exchangeable as a v2 session
    let link = app
        .send("POST", "/link/token", &[("vessel-api-token", &api)], None)
        .await
        .body["linkToken"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post(
            "/auth/access-token",
            &[
                ("x-vessel-api-token", &api),
                ("x-vessel-session-token", &link),
            ],
            json!({}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_SESSION_TOKEN");
}
