//! The sync engine and the unified CRM API, against the sandbox provider:
//! lifecycle, both API generations, change detection, writes, bad input.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const DEV_ENV: &str = "v_env_development";

/// Waits (bounded) until `check` holds; fails with `what` otherwise.
pub(crate) async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub(crate) async fn status_of(app: &TestApp, token: &str, id: &str) -> String {
    let r = app
        .post(
            "/connections/get",
            &[("x-vessel-api-token", token)],
            json!({"id": id}),
        )
        .await;
    r.body["result"]["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Every record of a sandbox object, straight from the sandbox.
async fn sandbox_all(app: &TestApp, key: &str, object: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/sandbox/api/v1/{object}?limit=100&cursor={cursor}");
        let r = app
            .send(
                "GET",
                &path,
                &[("authorization", &format!("Bearer {key}"))],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        out.extend(r.body["data"].as_array().unwrap().iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

/// Every record of a v1 list, following cursors.
pub(crate) async fn v1_all(
    app: &TestApp,
    token: &str,
    access: &str,
    plural: &str,
    key: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/crm/{plural}?accessToken={access}&limit=37&cursor={cursor}");
        let r = app
            .send("GET", &path, &[("vessel-api-token", token)], None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        out.extend(r.body[key].as_array().unwrap().iter().cloned());
        match r.body["nextPageCursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

pub(crate) async fn events_of(app: &TestApp, conn: &str) -> Vec<(String, Value)> {
    app.platform
        .store()
        .list_events(DEV_ENV, 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.connection_id.as_deref() == Some(conn))
        .map(|e| (e.event_type, serde_json::from_str(&e.payload).unwrap()))
        .collect()
}

pub(crate) async fn last_job_done(app: &TestApp, conn: &str) -> bool {
    let jobs = app
        .platform
        .store()
        .jobs_of_connection(conn, 1)
        .await
        .unwrap();
    jobs.first().is_some_and(|j| j.state == "done")
}

#[tokio::test]
async fn a_sandbox_connection_syncs_and_serves_the_unified_crm() {
    // Workers off at first, so NEW_CONNECTION can be observed.
    let app = spawn_with(|c| c.no_workers = true).await;
    let token = app.dev_token.clone();
    let key = "sync-lifecycle";
    let (conn, access) = app.connect_sandbox(&token, key).await;
    assert_eq!(status_of(&app, &token, &conn).await, "NEW_CONNECTION");

    // 409 on both generations while NEW_CONNECTION; /connection* works.
    let r = app
        .send(
            "GET",
            &format!("/crm/contacts?accessToken={access}"),
            &[("vessel-api-token", &token)],
            None,
        )
        .await;
    assert_eq!(v1_error(&r, 409), "DATA_STILL_SYNCING");
    let v2h = [
        ("x-vessel-api-token", token.as_str()),
        ("x-vessel-access-token", access.as_str()),
    ];
    let r = app
        .post("/unifications/crm/contacts/list", &v2h, json!({}))
        .await;
    assert_eq!(v2_error(&r, 409), "DATA_STILL_SYNCING");
    let r = app
        .send(
            "GET",
            &format!("/connection/connection?connectionId={conn}"),
            &[("vessel-api-token", &token)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Start workers the way `berth worker` does.
    let engine = berth_sync::Engine::new(
        app.platform.clone(),
        berth_sync::SyncConfig {
            poll: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let _workers = engine.spawn(cancel.clone());
    until("READY", || async {
        status_of(&app, &token, &conn).await == "READY"
    })
    .await;

    // Status events, in order, and the initial-sync event.
    let ev = events_of(&app, &conn).await;
    let statuses: Vec<&str> = ev
        .iter()
        .filter(|(t, _)| t == "connection.status_changed")
        .map(|(_, p)| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["INITIAL_SYNCED", "READY"]);
    assert_eq!(
        ev.iter()
            .filter(|(t, _)| t == "system.sync.initial.complete")
            .count(),
        1
    );
    // The initial sync and backfill announce no per-record events.
    assert!(!ev.iter().any(|(t, _)| t.starts_with("object.")), "{ev:?}");

    // Exact counts: every sandbox record, once, in both generations.
    for (object, v1_path, v1_key) in [
        ("contacts", "contacts", "contacts"),
        ("accounts", "accounts", "accounts"),
        ("deals", "deals", "deals"),
        ("attendees", "event/attendees", "eventAttendees"),
        ("users", "users", "users"),
    ] {
        let native = sandbox_all(&app, key, object).await;
        let v1 = v1_all(&app, &token, &access, v1_path, v1_key).await;
        assert_eq!(v1.len(), native.len(), "{object}");
        let mut ids: Vec<&str> = v1.iter().map(|r| r["nativeId"].as_str().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), native.len(), "{object}: no duplicates");
        assert!(
            v1.iter()
                .all(|r| r["id"].as_str().unwrap().starts_with("v."))
        );
    }

    // v1 single reads: by v1 id, by email, with allFields; batch.
    let contacts = v1_all(&app, &token, &access, "contacts", "contacts").await;
    let c0 = &contacts[0];
    let r = app
        .send(
            "GET",
            &format!(
                "/crm/contact?accessToken={access}&id={}&allFields=true",
                c0["id"].as_str().unwrap()
            ),
            &[("vessel-api-token", &token)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["contact"]["nativeId"], c0["nativeId"]);
    assert_eq!(r.body["contact"]["additional"]["id"], c0["nativeId"]);
    let email = c0["email"].as_str().unwrap().to_uppercase();
    let r = app
        .send(
            "GET",
            &format!("/crm/contact?accessToken={access}&id={email}"),
            &[("vessel-api-token", &token)],
            None,
        )
        .await;
    assert_eq!(r.body["contact"]["id"], c0["id"], "{r:?}");
    let ids = format!(
        "{},{},v.contact.00000000000000000000000000000000",
        c0["id"].as_str().unwrap(),
        contacts[1]["id"].as_str().unwrap()
    );
    let r = app
        .send(
            "GET",
            &format!("/crm/contact/batch?accessToken={access}&ids={ids}"),
            &[("vessel-api-token", &token)],
            None,
        )
        .await;
    assert_eq!(r.body["contacts"].as_array().unwrap().len(), 2, "{r:?}");
    assert_eq!(
        r.body["invalidIds"],
        json!(["v.contact.00000000000000000000000000000000"])
    );

    // v1 search with operators; v2 list with filters and $native.
    let last = c0["lastName"].as_str().unwrap();
    let r = app
        .post(
            &format!("/crm/contacts/search?accessToken={access}"),
            &[("vessel-api-token", &token)],
            json!({"filters": {"lastName": {"equals": last.to_lowercase(), "mode": "insensitive"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let want = contacts
        .iter()
        .filter(|c| c["lastName"] == c0["lastName"])
        .count();
    assert_eq!(r.body["contacts"].as_array().unwrap().len(), want);
    let r = app
        .post(
            "/api/unifications/crm/deals/list",
            &v2h,
            json!({"filters": {"amount": {"gte": 0}}, "include": {"$native": true}, "associations": ["accounts"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let d0 = &r.body["result"]["deals"][0];
    assert!(
        d0["$native"].is_object() && d0["associations"]["accountIds"].is_array(),
        "{d0}"
    );
    assert_eq!(
        d0["associations"]["contactIds"],
        json!([]),
        "every key of the schema is there; the unasked ones are empty"
    );
    let r = app
        .post(
            "/unifications/crm/deals/find",
            &v2h,
            json!({"id": d0["id"]}),
        )
        .await;
    assert_eq!(r.body["result"]["deal"]["id"], d0["id"], "{r:?}");
    // The sandbox has no pipelines: a synced deal's id is accepted, any
    // other id is unknown.
    let r = app
        .post(
            "/unifications/crm/deals/details",
            &v2h,
            json!({"id": d0["id"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .post(
            "/unifications/crm/deals/details",
            &v2h,
            json!({"id": "nope"}),
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = app
        .post("/unifications/crm/contacts/details", &v2h, json!({}))
        .await;
    assert!(
        r.body["result"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["key"] == "lastName"),
        "{r:?}"
    );
    // synced:false reads live from the provider.
    let r = app
        .post(
            "/unifications/crm/contacts/list",
            &v2h,
            json!({"synced": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["result"]["contacts"].as_array().unwrap().len(),
        contacts.len().min(100)
    );

    // Changes at the provider: update, create, delete; then sync on demand.
    let auth = format!("Bearer {key}");
    let sh = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let n1 = c0["nativeId"].as_str().unwrap();
    let n2 = contacts[1]["nativeId"].as_str().unwrap();
    let r = app
        .send(
            "PATCH",
            &format!("/sandbox/api/v1/contacts/{n1}"),
            &sh,
            Some(r#"{"title": "Chief Synchronizer"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .send(
            "POST",
            "/sandbox/api/v1/contacts",
            &sh,
            Some(r#"{"last_name": "Newcomer"}"#),
        )
        .await;
    let n3 = r.body["data"]["id"].as_str().unwrap().to_string();
    let r = app
        .send(
            "DELETE",
            &format!("/sandbox/api/v1/contacts/{n2}"),
            &sh,
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let before = events_of(&app, &conn).await.len();
    let r = app
        .post(
            "/connections/sync",
            &[("x-vessel-api-token", &token)],
            json!({"id": conn}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    until("the on-demand sync", || async {
        last_job_done(&app, &conn).await
            && events_of(&app, &conn)
                .await
                .iter()
                .any(|(t, _)| t == "sync.completed")
            && events_of(&app, &conn).await.len() > before + 3
    })
    .await;
    let ev = events_of(&app, &conn).await;
    let object_events: Vec<(&str, &str)> = ev
        .iter()
        .filter(|(t, _)| t.starts_with("object."))
        .map(|(t, p)| (t.as_str(), p["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        object_events.len(),
        3,
        "exactly one event per change: {object_events:?}"
    );
    assert!(object_events.contains(&("object.crm.contacts.updated", n1)));
    assert!(object_events.contains(&("object.crm.contacts.created", n3.as_str())));
    assert!(object_events.contains(&("object.crm.contacts.deleted", n2)));
    let now = v1_all(&app, &token, &access, "contacts", "contacts").await;
    assert_eq!(now.len(), contacts.len());
    assert!(now.iter().any(|c| c["nativeId"] == n3.as_str()));
    assert!(!now.iter().any(|c| c["nativeId"] == n2));
    assert!(
        now.iter()
            .any(|c| c["nativeId"] == n1 && c["jobTitle"] == "Chief Synchronizer")
    );

    // A sync with nothing changed announces nothing.
    let before = events_of(&app, &conn)
        .await
        .iter()
        .filter(|(t, _)| t.starts_with("object."))
        .count();
    let done_before = events_of(&app, &conn)
        .await
        .iter()
        .filter(|(t, _)| t == "sync.completed")
        .count();
    app.post(
        "/connections/sync",
        &[("x-vessel-api-token", &token)],
        json!({"id": conn}),
    )
    .await;
    until("the second sync", || async {
        events_of(&app, &conn)
            .await
            .iter()
            .filter(|(t, _)| t == "sync.completed")
            .count()
            > done_before
    })
    .await;
    let after = events_of(&app, &conn)
        .await
        .iter()
        .filter(|(t, _)| t.starts_with("object."))
        .count();
    assert_eq!(before, after);

    // Connection get shows per-object progress.
    let r = app
        .post(
            "/connections/get",
            &[("x-vessel-api-token", &token)],
            json!({"id": conn}),
        )
        .await;
    let progress = &r.body["result"]["sync"]["objects"];
    assert!(
        progress["contacts"]["recordsSynced"].as_i64().unwrap() >= contacts.len() as i64,
        "{r:?}"
    );
    assert_eq!(progress["contacts"]["phase"], "incremental");

    cancel.cancel();
}

#[tokio::test]
async fn writes_go_to_the_provider_and_are_readable_at_once() {
    let app = spawn_with(|c| c.no_workers = false).await;
    let token = app.dev_token.clone();
    let (conn, access) = app.connect_sandbox(&token, "sync-writes").await;
    until("INITIAL_SYNCED", || async {
        status_of(&app, &token, &conn).await != "NEW_CONNECTION"
    })
    .await;
    let v2h = [
        ("x-vessel-api-token", token.as_str()),
        ("x-vessel-access-token", access.as_str()),
    ];

    // v2 create → find at once (read-your-write).
    let r = app
        .post(
            "/unifications/crm/contacts/create",
            &v2h,
            json!({"contact": {"lastName": "Written", "email": "w@x.test", "accountId": "1010"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["result"]["id"].as_str().unwrap().to_string();
    let r = app
        .post("/unifications/crm/contacts/find", &v2h, json!({"id": id}))
        .await;
    assert_eq!(r.body["result"]["contact"]["lastName"], "Written", "{r:?}");
    assert_eq!(
        r.body["result"]["contact"]["associations"]["accountIds"],
        json!(["1010"])
    );

    // v1 update by v1 id, then read.
    let r = app
        .post(
            "/crm/contact",
            &[("vessel-api-token", &token)],
            json!({"accessToken": access, "contact": {"lastName": "Viaversion1"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v1id = r.body["id"].as_str().unwrap().to_string();
    assert!(v1id.starts_with("v.contact."));
    let r = app
        .send(
            "PATCH",
            "/crm/contact",
            &[
                ("vessel-api-token", &token),
                ("content-type", "application/json"),
            ],
            Some(
                &json!({"accessToken": access, "id": v1id, "contact": {"jobTitle": "Patched"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.body["id"], v1id.as_str(), "{r:?}");
    let r = app
        .send(
            "GET",
            &format!("/crm/contact?accessToken={access}&id={v1id}"),
            &[("vessel-api-token", &token)],
            None,
        )
        .await;
    assert_eq!(r.body["contact"]["jobTitle"], "Patched", "{r:?}");

    // Delete (v2) → gone from reads, one deleted event.
    let r = app
        .post("/unifications/crm/contacts/delete", &v2h, json!({"id": id}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .post("/unifications/crm/contacts/find", &v2h, json!({"id": id}))
        .await;
    assert_eq!(v2_error(&r, 404), "OBJECT_NOT_FOUND");
    let ev = events_of(&app, &conn).await;
    assert_eq!(
        ev.iter()
            .filter(|(t, p)| t == "object.crm.contacts.deleted" && p["id"] == id.as_str())
            .count(),
        1
    );
    assert_eq!(
        ev.iter()
            .filter(|(t, p)| t == "object.crm.contacts.created" && p["id"] == id.as_str())
            .count(),
        1
    );

    // Validation: ours (missing required, wrong type, unknown field) and the provider's.
    let r = app
        .post(
            "/unifications/crm/contacts/create",
            &v2h,
            json!({"contact": {"email": 5, "nope": 1}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "INVALID_FIELD_VALUE");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("lastName") && msg.contains("email") && msg.contains("nope"),
        "{msg}"
    );
    let r = app
        .post(
            "/unifications/crm/contacts/create",
            &v2h,
            json!({"contact": {"lastName": "X", "$native": {"shoe_size": 44}}}),
        )
        .await;
    assert_eq!(v2_error(&r, 422), "PROVIDER_ERROR");
    assert_eq!(
        r.body["error"]["metadata"]["originalErrors"][0]["fields"],
        json!(["shoe_size"]),
        "{r:?}"
    );
    let r = app
        .post("/crm/contact", &[("vessel-api-token", &token)], json!({"accessToken": access, "contact": {"lastName": "X", "additional": {"shoe_size": 1}}}))
        .await;
    assert_eq!(v1_error(&r, 422), "PROVIDER_ERROR");
    assert_eq!(r.body["metadata"]["originalStatusCode"], 422);
    let r = app
        .post(
            "/unifications/crm/users/create",
            &v2h,
            json!({"user": {"email": "x"}}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "READ_ONLY_OBJECT");
}

#[tokio::test]
async fn bad_crm_input_gets_clear_errors() {
    let app = spawn_with(|c| c.no_workers = false).await;
    let token = app.dev_token.clone();
    let (conn, access) = app.connect_sandbox(&token, "sync-bad").await;
    until("INITIAL_SYNCED", || async {
        status_of(&app, &token, &conn).await != "NEW_CONNECTION"
    })
    .await;
    let v2h = [
        ("x-vessel-api-token", token.as_str()),
        ("x-vessel-access-token", access.as_str()),
    ];
    let v1 = [("vessel-api-token", token.as_str())];
    let cases: Vec<(Resp, u16, &str)> = vec![
        (
            app.post("/unifications/crm/widgets/list", &v2h, json!({}))
                .await,
            404,
            "OBJECT_NOT_FOUND",
        ),
        (
            app.post("/unifications/crm/contacts/explode", &v2h, json!({}))
                .await,
            404,
            "NOT_FOUND",
        ),
        (
            app.post(
                "/unifications/crm/contacts/list",
                &v2h,
                json!({"cursor": "garbage"}),
            )
            .await,
            400,
            "INVALID_CURSOR",
        ),
        (
            app.post(
                "/unifications/crm/contacts/list",
                &v2h,
                json!({"filters": {"shoe": {"equals": 1}}}),
            )
            .await,
            400,
            "INVALID_FILTER",
        ),
        (
            app.post(
                "/unifications/crm/contacts/list",
                &v2h,
                json!({"filters": {"email": {"gt": 1}}}),
            )
            .await,
            400,
            "INVALID_FILTER",
        ),
        (
            app.post(
                "/unifications/crm/contacts/list",
                &v2h,
                json!({"filters": {"createdTime": {"gt": "soon"}}}),
            )
            .await,
            400,
            "INVALID_FILTER",
        ),
        (
            app.post(
                "/unifications/crm/contacts/list",
                &v2h,
                json!({"associations": ["shoes"]}),
            )
            .await,
            400,
            "INVALID_ASSOCIATION",
        ),
        (
            app.post(
                "/unifications/crm/contacts/list",
                &v2h,
                json!({"synced": "yes"}),
            )
            .await,
            400,
            "INVALID_BODY",
        ),
        (
            app.post("/unifications/crm/contacts/find", &v2h, json!({}))
                .await,
            400,
            "MISSING_ID",
        ),
        (
            app.post(
                "/unifications/crm/contacts/batch-read",
                &v2h,
                json!({"ids": [1]}),
            )
            .await,
            400,
            "INVALID_BODY",
        ),
        (
            app.post(
                "/unifications/crm/contacts/update",
                &v2h,
                json!({"id": "1"}),
            )
            .await,
            400,
            "INVALID_BODY",
        ),
    ];
    for (r, status, code) in cases {
        assert_eq!(v2_error(&r, status), code, "{r:?}");
    }
    // v1 batch ids: a bad entry is named, never silently dropped.
    for ids in [json!(["a", null]), json!([{"id": "a"}]), json!(7)] {
        let r = app
            .post(
                "/crm/contact/batch",
                &v1,
                json!({"accessToken": access, "ids": ids}),
            )
            .await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.body["errorCode"], "INVALID_IDS", "{r:?}");
    }
    let get = |p: String| {
        let app = &app;
        async move { app.send("GET", &p, &v1, None).await }
    };
    let r = get(format!("/crm/contacts?accessToken={access}&limit=0")).await;
    assert_eq!(v1_error(&r, 400), "INVALID_LIMIT");
    let r = get(format!("/crm/contacts?accessToken={access}&limit=ten")).await;
    assert_eq!(v1_error(&r, 400), "INVALID_LIMIT");
    let r = get(format!("/crm/contacts?accessToken={access}&cursor=abc")).await;
    assert_eq!(v1_error(&r, 400), "INVALID_CURSOR");
    let r = get(format!("/crm/gadgets?accessToken={access}")).await;
    assert_eq!(v1_error(&r, 404), "NOT_FOUND");
    let r = get("/crm/contacts".to_string()).await;
    assert_eq!(v1_error(&r, 401), "MISSING_ACCESS_TOKEN");
    let r = get(format!(
        "/crm/contact?accessToken={access}&id=v.contact.ffffffffffffffffffffffffffffffff"
    ))
    .await;
    assert_eq!(v1_error(&r, 404), "OBJECT_NOT_FOUND");
    // A cursor of one list does not work on another.
    let r = get(format!("/crm/contacts?accessToken={access}&limit=1")).await;
    let c = r.body["nextPageCursor"].as_str().unwrap().to_string();
    let r = get(format!("/crm/accounts?accessToken={access}&cursor={c}")).await;
    assert_eq!(v1_error(&r, 400), "INVALID_CURSOR");
    // Another connection's ids are not found.
    let (conn2, access2) = app.connect_sandbox(&token, "sync-bad-other").await;
    until("INITIAL_SYNCED", || async {
        status_of(&app, &token, &conn2).await != "NEW_CONNECTION"
    })
    .await;
    let r = get(format!("/crm/contacts?accessToken={access}&limit=1")).await;
    let foreign = r.body["contacts"][0]["id"].as_str().unwrap().to_string();
    let r = get(format!("/crm/contact?accessToken={access2}&id={foreign}")).await;
    assert_eq!(v1_error(&r, 404), "OBJECT_NOT_FOUND");
    let r = app
        .post(
            "/connections/sync",
            &[("x-vessel-api-token", &token)],
            json!({"id": "v_connection_nope"}),
        )
        .await;
    assert_eq!(v2_error(&r, 404), "NOT_FOUND");
    let r = app
        .post(
            "/connections/sync",
            &[("x-vessel-api-token", &token)],
            json!({}),
        )
        .await;
    assert_eq!(v2_error(&r, 400), "MISSING_ID");
}
