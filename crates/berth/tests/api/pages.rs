//! Rendered list pages are served again only while the records under them
//! are unchanged: a write in this process shows at once, a write made by
//! another process sharing the store shows once that process's change
//! reaches this one (LISTEN/NOTIFY on PostgreSQL, a polled table on SQLite).

use serde_json::{Value, json};

use crate::helpers::*;
use crate::sync::{last_job_done, status_of, until};

async fn first_page(app: &TestApp, token: &str, access: &str) -> Value {
    let r = app
        .send(
            "GET",
            &format!("/crm/contacts?accessToken={access}&limit=3"),
            &[("vessel-api-token", token)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

async fn v2_first_page(app: &TestApp, token: &str, access: &str) -> Value {
    let r = app
        .post(
            "/unifications/crm/contacts/list",
            &[
                ("x-vessel-api-token", token),
                ("x-vessel-access-token", access),
            ],
            json!({"limit": 3}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["result"].clone()
}

async fn rename(app: &TestApp, token: &str, access: &str, id: &str, name: &str) {
    let r = app
        .post(
            "/unifications/crm/contacts/update",
            &[
                ("x-vessel-api-token", token),
                ("x-vessel-access-token", access),
            ],
            json!({"id": id, "contact": {"lastName": name}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn list_pages_follow_writes_from_this_process_and_from_others() {
    let a = spawn_with(|c| c.no_workers = false).await;
    let token = a.dev_token.clone();
    let (conn, access) = a.connect_sandbox(&token, "pages").await;
    until("READY and idle", || async {
        status_of(&a, &token, &conn).await == "READY" && last_job_done(&a, &conn).await
    })
    .await;

    let page = first_page(&a, &token, &access).await;
    assert_eq!(
        first_page(&a, &token, &access).await,
        page,
        "stable while nothing changes"
    );
    let first = page["contacts"][0].clone();
    let native = first["nativeId"].as_str().unwrap().to_string();
    let v2 = v2_first_page(&a, &token, &access).await;
    assert_eq!(v2["contacts"][0]["id"], native.as_str());

    // A write through this process shows in both generations at once.
    rename(&a, &token, &access, &native, "RenamedHere").await;
    let page = first_page(&a, &token, &access).await;
    assert_eq!(page["contacts"][0]["lastName"], "RenamedHere", "{page}");
    assert_eq!(page["contacts"][0]["id"], first["id"]);
    let v2 = v2_first_page(&a, &token, &access).await;
    assert_eq!(v2["contacts"][0]["lastName"], "RenamedHere", "{v2}");

    // Another process on the same store writes; this one's pages follow.
    let b = spawn_with(|c| {
        c.database_url = a.database_url.clone();
        c.data_dir = a.data_dir.clone();
        c.no_workers = true;
    })
    .await;
    rename(&b, &token, &access, &native, "RenamedThere").await;
    let r = b
        .send(
            "GET",
            &format!("/crm/contacts?accessToken={access}&limit=3"),
            &[("vessel-api-token", &token)],
            None,
        )
        .await;
    assert_eq!(r.body["contacts"][0]["lastName"], "RenamedThere", "{r:?}");
    until(
        "the other process's write to reach this one's pages",
        || async {
            first_page(&a, &token, &access).await["contacts"][0]["lastName"] == "RenamedThere"
                && v2_first_page(&a, &token, &access).await["contacts"][0]["lastName"]
                    == "RenamedThere"
        },
    )
    .await;

    // Other pages and shapes of the same object were not served stale
    // either: a filtered search sees the new name.
    let r = a
        .post(
            &format!("/crm/contacts/search?accessToken={access}"),
            &[("vessel-api-token", &token)],
            json!({"filters": {"lastName": {"equals": "RenamedThere"}}}),
        )
        .await;
    assert_eq!(
        r.body["contacts"].as_array().map(Vec::len),
        Some(1),
        "{r:?}"
    );
}
