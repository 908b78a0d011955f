//! Client input never reaches a 5xx, case by case where random bodies
//! rarely go: ids that cannot be provider ids, operations an integration
//! lacks, GETs with bodies, control characters in passthrough queries; and
//! the sandbox behaves as one provider for every serving thread.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::sync::{status_of, until};

async fn ready_sandbox(app: &TestApp, key: &str) -> String {
    let token = app.dev_token.clone();
    let (conn, access) = app.connect_sandbox(&token, key).await;
    until("READY", || async {
        status_of(app, &token, &conn).await == "READY"
    })
    .await;
    access
}

#[tokio::test]
async fn ids_that_cannot_be_provider_ids_are_a_400() {
    let app = spawn_with(|c| c.no_workers = false).await;
    let access = ready_sandbox(&app, "bad-ids").await;
    let h = [
        ("x-vessel-api-token", app.dev_token.as_str()),
        ("x-vessel-access-token", access.as_str()),
    ];
    for id in [
        "1\u{0}2",
        "../limits",
        "a/b",
        "1?x=2",
        "1#f",
        "..",
        "1 2",
        "%2e%2e",
    ] {
        for (path, body) in [
            ("contacts/find", json!({"id": id, "synced": false})),
            (
                "contacts/update",
                json!({"id": id, "contact": {"firstName": "x"}}),
            ),
            ("contacts/delete", json!({"id": id})),
            (
                "notes/create",
                json!({"note": {"contentText": "x", "associations": {"contactId": id}}}),
            ),
        ] {
            let r = app
                .post(&format!("/unifications/crm/{path}"), &h, body)
                .await;
            let code = v2_error(&r, 400);
            assert!(
                code == "INVALID_ID" || code == "INVALID_ASSOCIATION",
                "{path} {id:?}: {r:?}"
            );
        }
        let q = format!("/crm/contact?accessToken={access}&id={}", urlencode(id));
        let r = app
            .send(
                "PATCH",
                &q,
                &[("vessel-api-token", &app.dev_token)],
                Some(
                    &json!({"accessToken": access, "id": id, "contact": {"firstName": "x"}})
                        .to_string(),
                ),
            )
            .await;
        assert_eq!(v1_error(&r, 400), "INVALID_ID", "v1 update {id:?}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn what_an_integration_lacks_is_a_clear_4xx_naming_it() {
    let app = spawn_with(|c| c.no_workers = false).await;
    let access = ready_sandbox(&app, "lacks").await;
    let h = [
        ("x-vessel-api-token", app.dev_token.as_str()),
        ("x-vessel-access-token", access.as_str()),
    ];
    let r = app
        .post(
            "/unifications/crm/custom-fields/create",
            &h,
            json!({"objectType": "contacts", "customField": {"name": "x", "type": "text"}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "NOT_SUPPORTED", "{r:?}");
    let r = app
        .send(
            "POST",
            "/crm/contact/custom-field",
            &[("vessel-api-token", &app.dev_token)],
            Some(
                &json!({"accessToken": access, "customField": {"name": "x", "type": "text"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(v1_error(&r, 400), "NOT_SUPPORTED", "{r:?}");
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("custom"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_get_with_a_large_body_is_answered_whole() {
    let app = spawn_with(|c| c.no_workers = false).await;
    let access = ready_sandbox(&app, "get-body").await;
    // 900 KiB of JSON: past the socket buffers, under the body limit.
    let filler = "x".repeat(900 * 1024);
    let body = json!({"accessToken": access, "filler": filler}).to_string();
    for _ in 0..3 {
        let resp = app
            .client
            .get(format!(
                "{}/crm/contacts?accessToken={access}&limit=1000",
                app.base
            ))
            .header("vessel-api-token", &app.dev_token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.expect("the whole answer arrives");
        assert!(!v["contacts"].as_array().unwrap().is_empty());
    }
    // Past the body limit: a 413, not a reset.
    let huge = "x".repeat(berth_api::MAX_BODY_BYTES + 1024);
    let resp = app
        .client
        .get(format!("{}/healthz", app.base))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn control_characters_in_a_passthrough_query_are_refused() {
    let app = spawn_with(|c| c.no_workers = false).await;
    let access = ready_sandbox(&app, "pt-query").await;
    for (path, headers, extra) in [
        (
            "/passthrough",
            vec![
                ("x-vessel-api-token", app.dev_token.as_str()),
                ("x-vessel-access-token", access.as_str()),
            ],
            json!({}),
        ),
        (
            "/api/passthrough",
            vec![
                ("x-vessel-api-token", app.dev_token.as_str()),
                ("x-vessel-access-token", access.as_str()),
            ],
            json!({}),
        ),
        (
            "/crm/passthrough",
            vec![("vessel-api-token", app.dev_token.as_str())],
            json!({"accessToken": access}),
        ),
    ] {
        for bad in ["a\r\nX-Injected: 1", "nul\u{0}", "tab\tx"] {
            let mut body = json!({"method": "GET", "path": "/me", "query": {"q": bad}});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let r = app.post(path, &headers, body).await;
            assert_eq!(r.status, 400, "{path} {bad:?}: {r:?}");
        }
        let mut body = json!({"method": "GET", "path": "/me", "query": {"q": "plain"}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = app.post(path, &headers, body).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
}

#[tokio::test]
async fn the_sandbox_is_one_provider_for_every_node() {
    // Two API nodes on one store: creates alternate between them, ids are
    // never handed out twice, and each record is at once found through the
    // other node, live from the sandbox.
    let a = spawn_with(|c| c.no_workers = false).await;
    let access = ready_sandbox(&a, "two-nodes").await;
    let b = spawn_with(|c| {
        c.database_url = a.database_url.clone();
        // The same vault key: node b decrypts the credentials node a stored.
        c.data_dir = a.data_dir.clone();
    })
    .await;
    let h = [
        ("x-vessel-api-token", a.dev_token.as_str()),
        ("x-vessel-access-token", access.as_str()),
    ];
    let mut ids = std::collections::HashSet::new();
    for i in 0..100 {
        let (here, there) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let r = here
            .post(
                "/unifications/crm/contacts/create",
                &h,
                json!({"contact": {"lastName": format!("N{i}")}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let id = r.body["result"]["id"].as_str().unwrap().to_string();
        assert!(ids.insert(id.clone()), "try {i}: id {id} handed out twice");
        let r = there
            .post(
                "/unifications/crm/contacts/find",
                &h,
                json!({"id": id, "synced": false}),
            )
            .await;
        assert_eq!(r.status, 200, "try {i}: {r:?}");
        assert_eq!(r.body["result"]["contact"]["lastName"], format!("N{i}"));
    }
}

#[tokio::test]
async fn the_sandbox_is_one_provider_for_every_serving_thread() {
    // Two serving threads (the test default): a record created through one
    // is found through the other on the very next call.
    let app = spawn_with(|c| c.no_workers = false).await;
    let access = ready_sandbox(&app, "one-sandbox").await;
    let h = [
        ("x-vessel-api-token", app.dev_token.as_str()),
        ("x-vessel-access-token", access.as_str()),
    ];
    let mut ids = std::collections::HashSet::new();
    for i in 0..40 {
        // A fresh client each time: a new connection, so the acceptor may
        // hand it to either serving thread.
        let client = reqwest::Client::new();
        let r = client
            .post(format!("{}/unifications/crm/contacts/create", app.base))
            .header(h[0].0, h[0].1)
            .header(h[1].0, h[1].1)
            .json(&json!({"contact": {"lastName": format!("T{i}")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.json::<Value>().await.unwrap()["result"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(ids.insert(id.clone()), "ids are never handed out twice");
        let r = reqwest::Client::new()
            .post(format!("{}/unifications/crm/contacts/find", app.base))
            .header(h[0].0, h[0].1)
            .header(h[1].0, h[1].1)
            .json(&json!({"id": id, "synced": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "try {i}: the record just created is there");
    }

    // Lists by objectType, in both generations' spellings.
    for (t, want) in [("contact", "contact"), ("lead", "lead")] {
        let r = app
            .send(
                "GET",
                &format!("/crm/lists?accessToken={access}&objectType={t}"),
                &[("vessel-api-token", &app.dev_token)],
                None,
            )
            .await;
        let lists = r.body["lists"].as_array().unwrap();
        assert!(!lists.is_empty(), "v1 objectType={t}: {r:?}");
        assert!(lists.iter().all(|l| l["objectType"] == want), "{r:?}");
        let r = app
            .post(
                "/unifications/crm/lists/list",
                &h,
                json!({"objectType": format!("{t}s")}),
            )
            .await;
        let lists = r.body["result"]["lists"].as_array().unwrap();
        assert!(!lists.is_empty(), "v2 objectType={t}s: {r:?}");
    }

    // A call keeps the contacts it was created with.
    let r = app
        .post("/unifications/crm/contacts/list", &h, json!({}))
        .await;
    let contacts: Vec<String> = r.body["result"]["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let r = app
        .post(
            "/unifications/crm/calls/create",
            &h,
            json!({"call": {"disposition": "ANSWERED", "direction": "inbound",
                "date": "2024-01-02T03:04:05Z", "associations": {"contactIds": contacts}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["result"]["id"].as_str().unwrap().to_string();
    let r = app
        .post("/unifications/crm/calls/find", &h, json!({"id": id}))
        .await;
    assert_eq!(
        r.body["result"]["call"]["associations"]["contactIds"],
        json!(contacts),
        "{r:?}"
    );
}

#[tokio::test]
async fn find_by_email_reaches_contacts_past_the_scan_budget() {
    // A scan budget of 5 rows stands in for 50,000 of a million contacts:
    // the contact stored last must still be found by its email.
    let app = spawn_with(|c| {
        c.no_workers = false;
        c.sync.scan_budget = 5;
    })
    .await;
    let access = ready_sandbox(&app, "email-scale").await;
    let r = app
        .send(
            "GET",
            &format!("/crm/contacts?accessToken={access}&limit=1000"),
            &[("vessel-api-token", &app.dev_token)],
            None,
        )
        .await;
    let contacts = r.body["contacts"].as_array().unwrap();
    assert!(contacts.len() > 20, "{r:?}");
    let last = contacts
        .iter()
        .rev()
        .find(|c| c["email"].is_string())
        .unwrap();
    let email = last["email"].as_str().unwrap().to_uppercase();
    let r = app
        .send(
            "GET",
            &format!("/crm/contact?accessToken={access}&id={}", urlencode(&email)),
            &[("vessel-api-token", &app.dev_token)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "v1 find by email: {r:?}");
    assert_eq!(r.body["contact"]["id"], last["id"]);
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &[
                ("x-vessel-api-token", app.dev_token.as_str()),
                ("x-vessel-access-token", access.as_str()),
            ],
            json!({"id": email}),
        )
        .await;
    assert_eq!(r.status, 200, "v2 find by email: {r:?}");
    assert_eq!(r.body["result"]["contact"]["id"], last["nativeId"]);
}
