//! The filter index answers exactly what a scan of the store answers, in
//! both generations, through every cursor; and reads really use it.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::sync::{status_of, until};

/// Every id a filter returns, following cursors with small pages.
async fn all_ids(
    (app, token): (&TestApp, &str),
    access: &str,
    object: &str,
    v2: bool,
    filters: &Value,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..500 {
        let r = if v2 {
            app.post(
                &format!("/unifications/crm/{object}/list"),
                &[
                    ("x-vessel-api-token", token),
                    ("x-vessel-access-token", access),
                ],
                json!({"filters": filters, "cursor": cursor, "limit": 2}),
            )
            .await
        } else {
            app.post(
                &format!("/crm/{object}/search?accessToken={access}&limit=2"),
                &[("vessel-api-token", token)],
                json!({"filters": filters, "cursor": cursor}),
            )
            .await
        };
        assert_eq!(r.status, 200, "{object} {filters}: {r:?}");
        let page = if v2 { &r.body["result"] } else { &r.body };
        let key = if object == "attendees" {
            "eventAttendees"
        } else {
            object
        };
        for rec in page[key].as_array().unwrap() {
            ids.push(rec["id"].as_str().unwrap().to_string());
        }
        cursor = page["nextPageCursor"].clone();
        if cursor.is_null() {
            return ids;
        }
    }
    panic!("{object} {filters}: cursors never ended");
}

/// Every record of an object, as v1 or v2 renders it.
async fn records(app: &TestApp, access: &str, object: &str, v2: bool) -> Vec<Value> {
    let r = if v2 {
        app.post(
            &format!("/unifications/crm/{object}/list"),
            &[
                ("x-vessel-api-token", app.dev_token.as_str()),
                ("x-vessel-access-token", access),
            ],
            json!({"limit": 1000}),
        )
        .await
    } else {
        app.send(
            "GET",
            &format!("/crm/{object}?accessToken={access}&limit=1000"),
            &[("vessel-api-token", app.dev_token.as_str())],
            None,
        )
        .await
    };
    let page = if v2 { &r.body["result"] } else { &r.body };
    page[object].as_array().unwrap().clone()
}

/// Filters on the indexed keys, built from the records themselves so each
/// kind matches something (and some match nothing on purpose).
fn filters_for(object: &str, recs: &[Value]) -> Vec<Value> {
    let s = |r: &Value, k: &str| r[k].as_str().map(str::to_string);
    let with = |k: &str| -> Vec<String> { recs.iter().filter_map(|r| s(r, k)).collect() };
    let assoc = |k: &str| -> Vec<Value> {
        recs.iter()
            .filter_map(|r| {
                let v = &r["associations"][k];
                match v {
                    Value::String(_) => Some(v.clone()),
                    Value::Array(a) => a.first().cloned(),
                    _ => None,
                }
            })
            .collect()
    };
    let mut out = Vec::new();
    let text_key = match object {
        "contacts" => "email",
        "notes" => "",
        _ => "name",
    };
    let values = if text_key.is_empty() {
        Vec::new()
    } else {
        with(text_key)
    };
    if let (Some(a), Some(b)) = (values.first(), values.last()) {
        out.extend([
            json!({text_key: {"equals": a}}),
            json!({text_key: {"equals": a.to_uppercase()}}),
            json!({text_key: {"equals": a.to_uppercase(), "mode": "insensitive"}}),
            json!({text_key: {"in": [a, b, "nobody@nowhere.test"]}}),
            json!({text_key: {"in": []}}),
            json!({text_key: {"startsWith": a.chars().take(3).collect::<String>()}}),
            json!({text_key: {"startsWith": a.chars().take(2).collect::<String>().to_uppercase(), "mode": "insensitive"}}),
            json!({text_key: {"equals": a}, "createdTime": {"gt": "2100-01-01T00:00:00Z"}}),
        ]);
    }
    let mut created: Vec<String> = with("createdTime");
    created.sort();
    if let (Some(lo), Some(mid), Some(hi)) = (
        created.first(),
        created.get(created.len() / 2),
        created.last(),
    ) {
        out.extend([
            json!({"createdTime": {"gte": mid}}),
            json!({"createdTime": {"gt": lo, "lt": hi}}),
            json!({"createdTime": {"equals": mid}}),
            json!({"createdTime": {"in": [lo, hi]}}),
            json!({"modifiedTime": {"lte": mid}}),
        ]);
    }
    for key in [
        "ownerUserId",
        "accountIds",
        "contactIds",
        "noteIds",
        "dealIds",
    ] {
        if let Some(v) = assoc(key).first() {
            if key == "ownerUserId" {
                out.push(json!({key: {"equals": v}}));
                out.push(json!({key: {"in": [v, "nobody"]}}));
            } else {
                out.push(json!({key: {"has": v}}));
                out.push(json!({key: {"hasSome": [v, "nobody"]}}));
                out.push(json!({key: {"hasEvery": [v]}}));
                out.push(json!({key: {"hasEvery": []}}));
            }
        }
    }
    out
}

#[tokio::test]
async fn indexed_filters_answer_what_a_scan_answers() {
    // No page cache: each request is answered from the store.
    let app = spawn_with(|c| {
        c.no_workers = false;
        c.sync.page_cache_bytes = 0;
    })
    .await;
    let token = app.dev_token.clone();
    let (conn, access) = app.connect_sandbox(&token, "filter-index").await;
    until("READY", || async {
        status_of(&app, &token, &conn).await == "READY"
    })
    .await;
    let scan = spawn_with(|c| {
        c.database_url = app.database_url.clone();
        c.sync.filter_index = false;
        c.sync.page_cache_bytes = 0;
    })
    .await;
    let (indexed, scan) = ((&app, token.as_str()), (&scan, token.as_str()));

    let mut compared = 0;
    let mut nonempty = 0;
    for object in ["contacts", "deals", "accounts", "notes"] {
        for v2 in [false, true] {
            let recs = records(&app, &access, object, v2).await;
            assert!(!recs.is_empty(), "{object}: the sandbox has some");
            for f in filters_for(object, &recs) {
                let got = all_ids(indexed, &access, object, v2, &f).await;
                let want = all_ids(scan, &access, object, v2, &f).await;
                assert_eq!(got, want, "{object} v2={v2} {f}");
                compared += 1;
                nonempty += usize::from(!got.is_empty());
            }
        }
    }
    assert!(compared >= 80, "only {compared} filters compared");
    assert!(
        nonempty >= compared / 2,
        "only {nonempty} of {compared} matched anything"
    );

    // Reads use the index: with its entries gone (and the objects still
    // marked current) an email filter finds nothing ...
    let contacts = records(&app, &access, "contacts", false).await;
    let email = contacts
        .iter()
        .find_map(|c| c["email"].as_str())
        .unwrap()
        .to_string();
    let f = json!({"email": {"equals": email}});
    let want = all_ids(scan, &access, "contacts", false, &f).await;
    assert_eq!(want.len(), 1);
    let store = app.platform.store().clone();
    berth_store::testing::forget_record_keys(&store)
        .await
        .unwrap();
    assert!(
        all_ids(indexed, &access, "contacts", false, &f)
            .await
            .is_empty()
    );
    // ... marked out of date, filters scan (and answer right) ...
    berth_store::testing::mark_record_keys_stale(&store)
        .await
        .unwrap();
    assert_eq!(all_ids(indexed, &access, "contacts", false, &f).await, want);
    // ... and a starting worker rebuilds them, after which the index serves
    // again.
    let _worker = spawn_with(|c| {
        c.database_url = app.database_url.clone();
        c.no_workers = false;
    })
    .await;
    until("the index backfilled", || async {
        store.objects_missing_keys().await.unwrap().is_empty()
    })
    .await;
    assert_eq!(all_ids(indexed, &access, "contacts", false, &f).await, want);
    assert_eq!(
        all_ids(
            indexed,
            &access,
            "contacts",
            true,
            &json!({"email": {"in": [email]}})
        )
        .await
        .len(),
        1
    );
    berth_store::testing::forget_record_keys(&store)
        .await
        .unwrap();
    assert!(
        all_ids(indexed, &access, "contacts", false, &f)
            .await
            .is_empty()
    );
}
