//! One object the provider refuses for good (a scope not granted, an
//! object the account lacks) is set aside; the others finish, the
//! connection becomes READY, and the object's progress says why.

use serde_json::{Value, json};

use berth_fakes::{hubspot, salesforce};

use crate::helpers::*;
use crate::providers::{hubspot_app, salesforce_app, synced_with_exact_counts};
use crate::sync::events_of;

async fn progress(app: &TestApp, conn: &str) -> Value {
    let r = app
        .post(
            "/connections/get",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"id": conn}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["result"]["sync"]["objects"].clone()
}

async fn assert_set_aside(app: &TestApp, conn: &str, object: &str, reason: &str) {
    let p = progress(app, conn).await;
    assert_eq!(p[object]["state"], "unavailable", "{p}");
    assert!(
        p[object]["lastError"]
            .as_str()
            .unwrap_or("")
            .contains(reason),
        "{p}"
    );
    let ev = events_of(app, conn).await;
    let set_aside: Vec<&Value> = ev
        .iter()
        .filter(|(t, _)| t == "sync.object_unavailable")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(set_aside.len(), 1, "{ev:?}");
    assert_eq!(set_aside[0]["object"], object);
    let done = ev
        .iter()
        .rev()
        .find(|(t, _)| t == "sync.completed")
        .expect("the sync completed");
    assert!(done.1["unavailable"][object].is_string(), "{done:?}");
    // The others are untouched by it.
    for (o, s) in p.as_object().unwrap() {
        if o != object {
            assert_ne!(s["state"], "unavailable", "{o}: {p}");
        }
    }
}

#[tokio::test]
async fn a_hubspot_portal_without_leads_scope_still_syncs_the_rest() {
    let opts = hubspot::Options {
        missing_scopes: vec!["leads".into()],
        ..Default::default()
    };
    let contacts = opts.contacts;
    let (_hs, app, conn, access) = hubspot_app("pat-na1-noleads", opts).await;
    // `synced_with_exact_counts` also asserts READY and no `sync.failed`.
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[("contacts", "contacts", contacts), ("leads", "leads", 0)],
    )
    .await;
    assert_set_aside(&app, &conn, "leads", "required scopes").await;
    // Served as empty, not as an error.
    let r = app
        .post("/unifications/crm/leads/list", &app.v2h(&access), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["leads"], json!([]));
}

#[tokio::test]
async fn a_salesforce_org_without_campaign_access_still_syncs_the_rest() {
    let sf = salesforce::Salesforce::new(salesforce::Options {
        inaccessible: vec!["Campaign".into()],
        ..Default::default()
    });
    let base = sf.serve().await.unwrap();
    let (app, conn, access) = salesforce_app(&base).await;
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[(
            "contacts",
            "contacts",
            salesforce::Options::default().contacts,
        )],
    )
    .await;
    assert_set_aside(&app, &conn, "lists", "is not supported").await;
}
