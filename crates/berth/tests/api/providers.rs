//! The HubSpot and Salesforce connectors end to end, against the
//! in-repository fakes (`crates/berth-fakes`) reached through a catalog
//! override: connect (HubSpot private-app token; Salesforce OAuth with
//! PKCE), NEW_CONNECTION → INITIAL_SYNCED → READY, exact record counts,
//! provider-side changes found by incremental runs (HubSpot search +
//! archived; Salesforce SystemModstamp + queryAll), unified writes in both
//! generations, and provider validation errors passed back.

use std::time::Duration;

use berth_fakes::{hubspot, salesforce};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sync::{events_of, last_job_done, status_of, until, v1_all};

pub(crate) async fn app_with_catalog(toml: String) -> TestApp {
    app_with_catalog_and(toml, |_| {}).await
}

pub(crate) async fn app_with_catalog_and(
    toml: String,
    tweak: impl FnOnce(&mut berth::config::Config),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("providers.toml");
    std::fs::write(&file, toml).unwrap();
    spawn_with(move |c| {
        c.providers_file = Some(file);
        c.no_workers = false;
        std::mem::forget(dir);
        tweak(c);
    })
    .await
}

impl TestApp {
    pub(crate) async fn connect_api_key(&self, integration: &str, key: &str) -> (String, String) {
        let st = self.session_token(&self.dev_token, json!({})).await;
        let r = self
            .post(
                "/auth/start",
                &[("x-vessel-session-token", &st)],
                json!({"integrationId": integration, "authType": "apiKey", "answers": {"api-key": key}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        self.finish_connect(&st).await
    }

    pub(crate) async fn finish_connect(&self, st: &str) -> (String, String) {
        let r = self
            .post(
                "/auth/access-token",
                &[
                    ("x-vessel-api-token", &self.dev_token),
                    ("x-vessel-session-token", st),
                ],
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        (
            r.body["result"]["connectionId"].as_str().unwrap().into(),
            r.body["result"]["accessToken"].as_str().unwrap().into(),
        )
    }

    pub(crate) async fn sync_now_and_wait(&self, conn: &str) {
        let done = |ev: &[(String, Value)]| {
            ev.iter()
                .filter(|(t, _)| t == "sync.completed" || t == "sync.failed")
                .count()
        };
        let before = done(&events_of(self, conn).await);
        let r = self
            .post(
                "/connections/sync",
                &[("x-vessel-api-token", &self.dev_token)],
                json!({"id": conn}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        until("the on-demand sync", || async {
            done(&events_of(self, conn).await) > before && last_job_done(self, conn).await
        })
        .await;
    }

    pub(crate) fn v2h<'a>(&'a self, access: &'a str) -> [(&'a str, &'a str); 2] {
        [
            ("x-vessel-api-token", self.dev_token.as_str()),
            ("x-vessel-access-token", access),
        ]
    }
}

/// A HubSpot fake made with `opts` (accepting `token` as its private-app
/// token) and a Berth connected to it: (fake, app, connection id, access
/// token).
pub(crate) async fn hubspot_app(
    token: &str,
    opts: hubspot::Options,
) -> (hubspot::HubSpot, TestApp, String, String) {
    let hs = hubspot::HubSpot::new(hubspot::Options {
        tokens: vec![token.into()],
        ..opts
    });
    let base = berth_fakes::serve(hs.router()).await.unwrap();
    let app = app_with_catalog(format!(
        "[integrations.hubspot]\nbase_url = \"{base}\"\nrate_limit = {{ requests = 1000, per_seconds = 10, scope = \"account\" }}\n"
    ))
    .await;
    let (conn, access) = app.connect_api_key("hubspot", token).await;
    (hs, app, conn, access)
}

/// A Berth whose Salesforce points at the fake at `base`, connected through
/// the OAuth dance as a browser would do it; (app, connectionId,
/// accessToken).
pub(crate) async fn salesforce_app(base: &str) -> (TestApp, String, String) {
    let app = app_with_catalog(format!(
        r#"
[integrations.salesforce.auth.oauth2]
authorize_url = "{base}/services/oauth2/authorize"
token_url = "{base}/services/oauth2/token"
"#
    ))
    .await;
    let r = app
        .post(
            "/auth/oauth-apps/create",
            &[("x-vessel-api-token", &app.dev_token)],
            json!({"integrationId": "salesforce", "clientId": "sf-client", "clientSecret": "sf-secret"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // The OAuth dance, as the browser would do it.
    let st = app
        .session_token(&app.dev_token, json!({"integrationId": "salesforce"}))
        .await;
    let r = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st)],
            json!({"authType": "oauth2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let authorize = r.body["result"]["oauthURL"].as_str().unwrap();
    let r = browser.get(authorize).send().await.unwrap();
    assert_eq!(r.status(), 303, "the fake approves at once");
    let callback = r.headers()["location"].to_str().unwrap().to_string();
    let r = browser.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (conn, access) = app.finish_connect(&st).await;
    (app, conn, access)
}

fn object_events(ev: &[(String, Value)]) -> Vec<(String, String)> {
    ev.iter()
        .filter(|(t, _)| t.starts_with("object."))
        .map(|(t, p)| (t.clone(), p["nativeId"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// Lifecycle and exact counts, shared by both providers.
pub(crate) async fn synced_with_exact_counts(
    app: &TestApp,
    conn: &str,
    access: &str,
    expected: &[(&str, &str, usize)],
) {
    // READY comes before the same job's first incremental pass ends; wait
    // for the job too, so later provider-side changes belong to later runs.
    for _ in 0..600 {
        if status_of(app, &app.dev_token, conn).await == "READY" && last_job_done(app, conn).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = events_of(app, conn).await;
    let st = status_of(app, &app.dev_token, conn).await;
    assert_eq!(st, "READY", "{ev:?}");
    let statuses: Vec<&str> = ev
        .iter()
        .filter(|(t, _)| t == "connection.status_changed")
        .map(|(_, p)| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["INITIAL_SYNCED", "READY"], "{ev:?}");
    assert!(!ev.iter().any(|(t, _)| t == "sync.failed"), "{ev:?}");
    for (plural, key, n) in expected {
        let rows = v1_all(app, &app.dev_token, access, plural, key).await;
        let mut ids: Vec<&str> = rows
            .iter()
            .map(|r| r["nativeId"].as_str().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(rows.len(), *n, "{plural}: every provider record");
        assert_eq!(ids.len(), *n, "{plural}: no duplicates");
    }
}

#[tokio::test]
async fn a_hubspot_connection_syncs_detects_changes_and_writes_back() {
    let token = "pat-na1-11111111-2222";
    let hs = hubspot::HubSpot::new(hubspot::Options {
        tokens: vec![token.into()],
        ..Default::default()
    });
    let base = berth_fakes::serve(hs.router()).await.unwrap();
    let app = app_with_catalog(format!(
        "[integrations.hubspot]\nbase_url = \"{base}\"\nrate_limit = {{ requests = 1000, per_seconds = 10, scope = \"account\" }}\n"
    ))
    .await;

    // A wrong token is refused at connect time with HubSpot's reason.
    let st = app.session_token(&app.dev_token, json!({})).await;
    let r = app
        .post(
            "/auth/start",
            &[("x-vessel-session-token", &st)],
            json!({"integrationId": "hubspot", "authType": "apiKey", "answers": {"api-key": "pat-wrong"}}),
        )
        .await;
    assert!(r.status == 400 || r.status == 401, "{r:?}");

    let (conn, access) = app.connect_api_key("hubspot", token).await;
    let o = hubspot::Options::default();
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[
            ("contacts", "contacts", o.contacts),
            ("accounts", "accounts", o.companies),
            ("deals", "deals", o.deals),
            ("users", "users", o.owners),
            ("notes", "notes", o.engagements),
            ("tasks", "tasks", o.engagements),
            ("events", "events", o.engagements),
            ("calls", "calls", o.engagements),
            ("emails", "emails", o.engagements),
        ],
    )
    .await;

    // Associations came through (list inline for full runs, v4 batch for
    // search runs): every deal is linked to one company in the fake.
    let r = app
        .post(
            "/unifications/crm/deals/list",
            &app.v2h(&access),
            json!({"associations": ["accounts", "contacts"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let deals = r.body["result"]["deals"].as_array().unwrap();
    assert!(!deals.is_empty());
    for d in deals {
        assert_eq!(
            d["associations"]["accountIds"].as_array().map(Vec::len),
            Some(1),
            "{d}"
        );
    }

    // Changes made in HubSpot by someone else.
    let client = reqwest::Client::new();
    let auth = format!("Bearer {token}");
    let ids = hs.live_ids("contacts");
    let (changed, archived) = (ids[0].clone(), ids[1].clone());
    let r = client
        .patch(format!("{base}/crm/v3/objects/contacts/{changed}"))
        .header("authorization", &auth)
        .json(&json!({"properties": {"jobtitle": "Head of Sync"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .delete(format!("{base}/crm/v3/objects/contacts/{archived}"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client
        .post(format!("{base}/crm/v3/objects/deals"))
        .header("authorization", &auth)
        .json(&json!({"properties": {"dealname": "Made in HubSpot", "dealstage": "qualifiedtobuy"}, "associations": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let created = created["id"].as_str().unwrap().to_string();
    let before = object_events(&events_of(&app, &conn).await).len();
    app.sync_now_and_wait(&conn).await;
    let ev = object_events(&events_of(&app, &conn).await);
    let new: Vec<(String, String)> = ev[before..].to_vec();
    assert_eq!(new.len(), 3, "one event per change: {new:?}");
    assert!(new.contains(&("object.crm.contacts.updated".into(), changed.clone())));
    assert!(new.contains(&("object.crm.contacts.deleted".into(), archived.clone())));
    assert!(new.contains(&("object.crm.deals.created".into(), created.clone())));
    let contacts = v1_all(&app, &app.dev_token, &access, "contacts", "contacts").await;
    assert_eq!(contacts.len(), o.contacts - 1);
    assert!(
        contacts
            .iter()
            .any(|c| c["nativeId"] == changed.as_str() && c["jobTitle"] == "Head of Sync")
    );

    // Nothing changed: nothing announced.
    let before = object_events(&events_of(&app, &conn).await).len();
    app.sync_now_and_wait(&conn).await;
    assert_eq!(object_events(&events_of(&app, &conn).await).len(), before);

    // Unified writes reach HubSpot, with associations, and read back at once.
    let company = hs.live_ids("companies")[0].clone();
    let r = app
        .post(
            "/unifications/crm/contacts/create",
            &app.v2h(&access),
            json!({"contact": {"firstName": "Wren", "lastName": "Okafor", "email": "wren@example.net", "accountId": company}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let new_id = r.body["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        hs.property("contacts", &new_id, "email").as_deref(),
        Some("wren@example.net")
    );
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &app.v2h(&access),
            json!({"id": new_id, "associations": ["accounts"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["result"]["contact"]["associations"]["accountIds"],
        json!([company])
    );
    let r = app
        .post(
            "/unifications/crm/contacts/update",
            &app.v2h(&access),
            json!({"id": new_id, "contact": {"jobTitle": "VP"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        hs.property("contacts", &new_id, "jobtitle").as_deref(),
        Some("VP")
    );
    // v1 create of a deal (HubSpot requires a stage; the connector starts
    // new deals in the default pipeline's first stage).
    let r = app
        .post(
            "/crm/deal",
            &[("vessel-api-token", &app.dev_token)],
            json!({"accessToken": access, "deal": {"name": "Unified deal", "closeDate": "2027-01-31", "amount": 1200}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // HubSpot's validation errors come back with its field errors.
    let r = app
        .post(
            "/unifications/crm/contacts/create",
            &app.v2h(&access),
            json!({"contact": {"lastName": "X", "email": "not-an-email"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let errs = &r.body["error"]["metadata"]["originalErrors"];
    assert_eq!(errs[0]["errorCode"], "INVALID_EMAIL", "{r:?}");
    assert_eq!(errs[0]["fields"], json!(["email"]));
    let r = app
        .post(
            "/unifications/crm/contacts/create",
            &app.v2h(&access),
            json!({"contact": {"lastName": "X", "$native": {"no_such_property": "1"}}}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        r.body["error"]["metadata"]["originalErrors"][0]["errorCode"],
        "PROPERTY_DOESNT_EXIST"
    );
    let r = app
        .post(
            "/unifications/crm/contacts/create",
            &app.v2h(&access),
            json!({"contact": {"lastName": "Dup", "email": "wren@example.net"}}),
        )
        .await;
    assert_eq!(r.status, 409, "{r:?}");

    // Delete through Berth: archived in HubSpot, gone from the store.
    let r = app
        .post(
            "/unifications/crm/contacts/delete",
            &app.v2h(&access),
            json!({"id": new_id}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!hs.live_ids("contacts").contains(&new_id));

    // synced:false reads HubSpot live.
    let r = app
        .post(
            "/unifications/crm/accounts/list",
            &app.v2h(&access),
            json!({"synced": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body["result"]["accounts"].as_array().unwrap().is_empty());
}

/// HubSpot's GDPR delete leaves no tombstone, so incremental runs cannot
/// see it; the periodic full re-sync (here due on every run) lists
/// everything and sweeps what is gone.
#[tokio::test]
async fn a_full_resync_finds_deletes_that_leave_no_tombstone() {
    let token = "pat-na1-33333333-4444";
    let hs = hubspot::HubSpot::new(hubspot::Options {
        tokens: vec![token.into()],
        ..Default::default()
    });
    let base = berth_fakes::serve(hs.router()).await.unwrap();
    let app = app_with_catalog_and(
        format!("[integrations.hubspot]\nbase_url = \"{base}\"\n"),
        |c| c.sync.full_resync = Some(Duration::ZERO),
    )
    .await;
    let (conn, access) = app.connect_api_key("hubspot", token).await;
    let o = hubspot::Options::default();
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[("contacts", "contacts", o.contacts)],
    )
    .await;

    let erased = hs.live_ids("contacts")[2].clone();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/crm/v3/objects/contacts/gdpr-delete"))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"objectId": erased}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client
        .get(format!(
            "{base}/crm/v3/objects/contacts?archived=true&limit=100"
        ))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let tombstones: Value = r.json().await.unwrap();
    assert!(
        !tombstones.to_string().contains(&format!("\"{erased}\"")),
        "an erased contact is not among the archived"
    );

    let pages_before = hs.list_pages("contacts");
    let before = object_events(&events_of(&app, &conn).await).len();
    app.sync_now_and_wait(&conn).await;
    assert!(
        hs.list_pages("contacts") > pages_before,
        "a full listing ran"
    );
    let new = object_events(&events_of(&app, &conn).await)[before..].to_vec();
    let contact_events: Vec<_> = new
        .iter()
        .filter(|(t, _)| t.starts_with("object.crm.contacts."))
        .cloned()
        .collect();
    assert_eq!(
        contact_events,
        [("object.crm.contacts.deleted".to_string(), erased.clone())],
        "the sweep announces exactly the erased contact"
    );
    // The records it was associated with lost that association (a real
    // change, found because the full listing re-reads them).
    assert!(
        new.iter()
            .all(|(t, _)| t.ends_with(".updated") || t == "object.crm.contacts.deleted"),
        "{new:?}"
    );
    let contacts = v1_all(&app, &app.dev_token, &access, "contacts", "contacts").await;
    assert_eq!(contacts.len(), o.contacts - 1);
    assert!(!contacts.iter().any(|c| c["nativeId"] == erased.as_str()));
}

#[tokio::test]
async fn a_salesforce_connection_over_oauth_syncs_detects_changes_and_writes_back() {
    let sf = salesforce::Salesforce::new(salesforce::Options::default());
    let base = sf.serve().await.unwrap();
    let (app, conn, access) = salesforce_app(&base).await;

    let o = salesforce::Options::default();
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[
            ("contacts", "contacts", o.contacts),
            ("accounts", "accounts", o.accounts),
            ("deals", "deals", o.opportunities),
            ("leads", "leads", o.leads),
            ("users", "users", o.users),
            ("tasks", "tasks", o.activities),
            ("calls", "calls", o.activities),
            ("events", "events", o.activities),
            ("notes", "notes", o.activities),
        ],
    )
    .await;
    // Contacts carry their account and owner.
    let contacts = v1_all(&app, &app.dev_token, &access, "contacts", "contacts").await;
    let c = &contacts[0];
    let native = c["nativeId"].as_str().unwrap();
    let account = sf.field("Contact", native, "AccountId").unwrap();
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &app.v2h(&access),
            json!({"id": native, "associations": ["accounts", "users"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["result"]["contact"]["associations"]["accountIds"],
        json!([account])
    );

    // Someone edits and deletes in Salesforce (here through passthrough,
    // which also proves the token and instance_url are used).
    let pass = |method: &str, path: String, body: Option<Value>| {
        let mut b = json!({"method": method, "path": path});
        if let Some(body) = body {
            b["body"] = body;
        }
        b
    };
    let ids = sf.live_ids("Contact", None);
    let (changed, deleted) = (ids[0].clone(), ids[1].clone());
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            pass(
                "PATCH",
                format!("/sobjects/Contact/{changed}"),
                Some(json!({"Title": "CRO"})),
            ),
        )
        .await;
    assert_eq!(r.status, 204, "Salesforce's answer, passed through: {r:?}");
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            pass("DELETE", format!("/sobjects/Contact/{deleted}"), None),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    // An expired session is refreshed on the 401, mid-sync.
    sf.expire_sessions();
    let before = object_events(&events_of(&app, &conn).await).len();
    app.sync_now_and_wait(&conn).await;
    let ev = events_of(&app, &conn).await;
    assert!(!ev.iter().any(|(t, _)| t == "sync.failed"), "{ev:?}");
    let new = object_events(&ev)[before..].to_vec();
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(new.contains(&("object.crm.contacts.updated".into(), changed.clone())));
    assert!(new.contains(&("object.crm.contacts.deleted".into(), deleted.clone())));
    let contacts = v1_all(&app, &app.dev_token, &access, "contacts", "contacts").await;
    assert_eq!(contacts.len(), o.contacts - 1);

    // Unified writes: v1 create with an account, v2 update, read at once.
    let r = app
        .post(
            "/crm/contact",
            &[("vessel-api-token", &app.dev_token)],
            json!({"accessToken": access, "contact": {"firstName": "Ines", "lastName": "Moreau", "email": "ines@example.net", "accountId": account}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v1id = r.body["id"].as_str().unwrap().to_string();
    let r = app
        .send(
            "GET",
            &format!("/crm/contact?accessToken={access}&id={v1id}"),
            &[("vessel-api-token", &app.dev_token)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let sf_id = r.body["contact"]["nativeId"].as_str().unwrap().to_string();
    assert_eq!(
        sf.field("Contact", &sf_id, "AccountId"),
        Some(account.clone())
    );
    let r = app
        .post(
            "/unifications/crm/deals/create",
            &app.v2h(&access),
            json!({"deal": {"name": "Expansion", "closeDate": "2027-03-01", "amount": 5000, "stage": "Prospecting", "accountId": account}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let deal = r.body["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        sf.field("Opportunity", &deal, "CloseDate"),
        Some(json!("2027-03-01"))
    );
    let r = app
        .post(
            "/unifications/crm/deals/update",
            &app.v2h(&access),
            json!({"id": deal, "deal": {"stage": "Closed Won"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Salesforce derived IsWon; the store has what Salesforce has.
    let r = app
        .post(
            "/unifications/crm/deals/find",
            &app.v2h(&access),
            json!({"id": deal}),
        )
        .await;
    assert_eq!(r.body["result"]["deal"]["isWon"], true, "{r:?}");

    // Salesforce's validation errors come back with its field errors.
    let r = app
        .post(
            "/unifications/crm/deals/create",
            &app.v2h(&access),
            json!({"deal": {"name": "Bad", "closeDate": "2027-03-01", "stage": "Maybe"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let errs = &r.body["error"]["metadata"]["originalErrors"];
    assert_eq!(
        errs[0]["errorCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "{r:?}"
    );
    assert_eq!(errs[0]["fields"], json!(["StageName"]));
    // An id that cannot be a Salesforce id never reaches a URL.
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &app.v2h(&access),
            json!({"id": "../limits", "synced": false}),
        )
        .await;
    assert_eq!(r.status, 400, "an id that cannot be a provider id: {r:?}");
    assert_eq!(r.body["error"]["code"], "INVALID_ID", "{r:?}");

    // Delete through Berth.
    let r = app
        .post(
            "/unifications/crm/deals/delete",
            &app.v2h(&access),
            json!({"id": deal}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!sf.live_ids("Opportunity", None).contains(&deal));
}

/// Salesforce records a link on one side only (a Note's ParentId, a
/// Contact's AccountId); the unified records show it on both: the
/// contact's `noteIds`, the account's `contactIds`. Reverse links follow
/// deletes and API writes, also through the list page cache.
#[tokio::test]
async fn salesforce_associations_show_on_both_sides() {
    let sf = salesforce::Salesforce::new(salesforce::Options::default());
    let base = sf.serve().await.unwrap();
    let (app, conn, access) = salesforce_app(&base).await;
    let o = salesforce::Options::default();
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[
            ("contacts", "contacts", o.contacts),
            ("accounts", "accounts", o.accounts),
            ("notes", "notes", o.activities),
        ],
    )
    .await;
    let notes = v1_all(&app, &app.dev_token, &access, "notes", "notes").await;
    let note = &notes[0];
    let note_native = note["nativeId"].as_str().unwrap().to_string();
    let note_v1 = note["id"].as_str().unwrap().to_string();
    let parent = sf.field("Note", &note_native, "ParentId").unwrap();
    let parent = parent.as_str().unwrap().to_string();
    let note_ids_of = |contacts: &[Value], native: &str| -> Vec<String> {
        let c = contacts
            .iter()
            .find(|c| c["nativeId"] == native)
            .expect("the contact is listed");
        c["associations"]["noteIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let contacts = v1_all(&app, &app.dev_token, &access, "contacts", "contacts").await;
    assert!(
        note_ids_of(&contacts, &parent).contains(&note_v1),
        "the note's parent contact lists it (v1 ids)"
    );
    let expected: usize = sf
        .live_ids("Note", None)
        .iter()
        .filter(|n| {
            sf.field("Note", n, "ParentId")
                .and_then(|p| p.as_str().map(str::to_string))
                == Some(parent.clone())
        })
        .count();
    assert_eq!(note_ids_of(&contacts, &parent).len(), expected);

    // v2: an account lists the contacts whose AccountId names it.
    let account = sf.field("Contact", &parent, "AccountId").unwrap();
    let account = account.as_str().unwrap().to_string();
    let r = app
        .post(
            "/unifications/crm/accounts/find",
            &app.v2h(&access),
            json!({"id": account, "associations": ["contacts"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let listed: Vec<&str> = r.body["result"]["account"]["associations"]["contactIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(listed.contains(&parent.as_str()), "{listed:?}");
    let mut want: Vec<String> = sf
        .live_ids("Contact", None)
        .into_iter()
        .filter(|c| {
            sf.field("Contact", c, "AccountId")
                .and_then(|a| a.as_str().map(str::to_string))
                == Some(account.clone())
        })
        .collect();
    let mut got: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);

    // Deleting the note through Berth drops it from the contact's list
    // (the cached page of contacts is not served stale).
    let r = app
        .post(
            "/unifications/crm/notes/delete",
            &app.v2h(&access),
            json!({"id": note_native}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let contacts = v1_all(&app, &app.dev_token, &access, "contacts", "contacts").await;
    assert!(!note_ids_of(&contacts, &parent).contains(&note_v1));
    assert_eq!(note_ids_of(&contacts, &parent).len(), expected - 1);

    // A note created through Berth shows on its contact at once.
    let r = app
        .post(
            "/unifications/crm/notes/create",
            &app.v2h(&access),
            json!({"note": {"contentText": "Two-way", "contactId": parent}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let created = r.body["result"]["id"].as_str().unwrap().to_string();
    let notes = v1_all(&app, &app.dev_token, &access, "notes", "notes").await;
    let created_v1 = notes
        .iter()
        .find(|n| n["nativeId"] == created.as_str())
        .expect("the new note is stored")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .send(
            "GET",
            &format!("/crm/contact?accessToken={access}&id={parent}"),
            &[("vessel-api-token", app.dev_token.as_str())],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let ids = r.body["contact"]["associations"]["noteIds"]
        .as_array()
        .unwrap();
    assert!(
        ids.iter().any(|i| i == created_v1.as_str()),
        "{ids:?} has {created_v1}"
    );
}

/// Salesforce emails are EmailMessage rows; attendees are the invitee rows
/// of EventRelation (the rows it keeps for an event's own WhoId are not
/// attendees). Both sync, render, link both ways and write back.
#[tokio::test]
async fn salesforce_emails_and_event_attendees() {
    let sf = salesforce::Salesforce::new(salesforce::Options::default());
    let base = sf.serve().await.unwrap();
    let (app, _conn_id, access) = salesforce_app(&base).await;
    let o = salesforce::Options::default();
    let invitees = sf.live_ids_where("EventRelation", "IsInvitee", &json!(true));
    assert!(
        sf.live_ids("EventRelation", None).len() > invitees.len(),
        "the fake also has non-invitee rows to leave out"
    );
    synced_with_exact_counts(
        &app,
        &_conn_id,
        &access,
        &[
            ("emails", "emails", o.activities),
            ("event/attendees", "eventAttendees", invitees.len()),
        ],
    )
    .await;

    // Emails: addresses split, status in words, related record linked.
    let emails = v1_all(&app, &app.dev_token, &access, "emails", "emails").await;
    let sent = emails
        .iter()
        .find(|e| e["isIncoming"] == false)
        .expect("an outgoing email");
    assert_eq!(
        sent["to"],
        json!(["buyer@customer.example", "cfo@customer.example"])
    );
    assert_eq!(sent["status"], "sent");
    let native = sent["nativeId"].as_str().unwrap();
    let related = sf.field("EmailMessage", native, "RelatedToId").unwrap();
    let related = related.as_str().unwrap();
    let key = if related.starts_with("006") {
        "dealIds"
    } else {
        "accountIds"
    };
    assert_eq!(
        sent["associations"][key].as_array().unwrap().len(),
        1,
        "{sent}"
    );

    // Attendees: the invitee, its kind, its event; the event lists it.
    let attendees = v1_all(
        &app,
        &app.dev_token,
        &access,
        "event/attendees",
        "eventAttendees",
    )
    .await;
    let a = attendees
        .iter()
        .find(|a| a["associatedObjectType"] == "lead")
        .expect("a lead invitee");
    assert_eq!(a["status"], "new");
    let a_native = a["nativeId"].as_str().unwrap().to_string();
    let event = sf.field("EventRelation", &a_native, "EventId").unwrap();
    let event = event.as_str().unwrap().to_string();
    let r = app
        .post(
            "/unifications/crm/events/find",
            &app.v2h(&access),
            json!({"id": event, "associations": ["attendees"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["result"]["event"]["associations"]["eventAttendeeIds"],
        json!([a_native]),
        "{r:?}"
    );
    let r = app
        .post(
            "/unifications/crm/attendees/find",
            &app.v2h(&access),
            json!({"id": a_native}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let lead = sf.field("EventRelation", &a_native, "RelationId").unwrap();
    assert_eq!(
        r.body["result"]["eventAttendee"]["associations"],
        json!({"eventId": event, "associationId": lead}),
        "{r:?}"
    );

    // Writes: an email logged against a deal, an attendee invited.
    let deal = sf.live_ids("Opportunity", None)[0].clone();
    let r = app
        .post(
            "/unifications/crm/emails/create",
            &app.v2h(&access),
            json!({"email": {"from": "rep@org.example", "to": ["a@x.example", "b@x.example"],
                "subject": "Logged", "bodyText": "Hello", "dealId": deal}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let email = r.body["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        sf.field("EmailMessage", &email, "ToAddress"),
        Some(json!("a@x.example; b@x.example"))
    );
    assert_eq!(sf.field("EmailMessage", &email, "Status"), Some(json!("3")));
    assert_eq!(
        sf.field("EmailMessage", &email, "TextBody"),
        Some(json!("Hello"))
    );
    assert_eq!(
        sf.field("EmailMessage", &email, "RelatedToId"),
        Some(json!(deal))
    );
    let contact = sf.live_ids("Contact", None)[0].clone();
    let r = app
        .post(
            "/unifications/crm/attendees/create",
            &app.v2h(&access),
            json!({"attendee": {"eventId": event, "associationId": contact,
                "associatedObjectType": "contact", "status": "accepted"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let invited = r.body["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        sf.field("EventRelation", &invited, "IsInvitee"),
        Some(json!(true))
    );
    assert_eq!(
        sf.field("EventRelation", &invited, "Status"),
        Some(json!("Accepted"))
    );
    let r = app
        .post(
            "/unifications/crm/events/find",
            &app.v2h(&access),
            json!({"id": event, "associations": ["attendees"]}),
        )
        .await;
    let mut listed: Vec<String> = r.body["result"]["event"]["associations"]["eventAttendeeIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut want = vec![a_native.clone(), invited.clone()];
    want.sort();
    assert_eq!(listed, want, "the new invitee shows on its event at once");
}

/// A Salesforce deal's contacts are its OpportunityContactRoles. A role
/// added or removed in Salesforce leaves the opportunity's SystemModstamp
/// alone; the next incremental run still sees it.
#[tokio::test]
async fn salesforce_deal_contacts_are_contact_roles() {
    let sf = salesforce::Salesforce::new(salesforce::Options::default());
    let base = sf.serve().await.unwrap();
    let (app, conn, access) = salesforce_app(&base).await;
    let o = salesforce::Options::default();
    synced_with_exact_counts(&app, &conn, &access, &[("deals", "deals", o.opportunities)]).await;
    let roles_of = |opp: &str| -> Vec<String> {
        let mut ids: Vec<String> = sf
            .live_ids_where("OpportunityContactRole", "OpportunityId", &json!(opp))
            .into_iter()
            .map(|r| {
                sf.field("OpportunityContactRole", &r, "ContactId")
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let deal_contacts = |body: &Value| -> Vec<String> {
        let mut ids: Vec<String> = body["result"]["deal"]["associations"]["contactIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let find = |id: String| {
        let app = &app;
        let access = &access;
        async move {
            app.post(
                "/unifications/crm/deals/find",
                &app.v2h(access),
                json!({"id": id, "associations": ["contacts"]}),
            )
            .await
        }
    };
    let deal = sf.live_ids("Opportunity", None)[1].clone();
    let r = find(deal.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(deal_contacts(&r.body), roles_of(&deal));
    assert!(!roles_of(&deal).is_empty());

    // The contact lists the deal back (a derived link).
    let contact = roles_of(&deal)[0].clone();
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &app.v2h(&access),
            json!({"id": contact, "associations": ["deals"]}),
        )
        .await;
    let deals = r.body["result"]["contact"]["associations"]["dealIds"]
        .as_array()
        .unwrap();
    assert!(deals.iter().any(|d| d == deal.as_str()), "{r:?}");

    // A role added in Salesforce shows after the next incremental run.
    let newcomer = sf
        .live_ids("Contact", None)
        .into_iter()
        .find(|c| !roles_of(&deal).contains(c))
        .unwrap();
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            json!({"method": "POST", "path": "/sobjects/OpportunityContactRole",
                "body": {"OpportunityId": deal, "ContactId": newcomer, "Role": "Evaluator"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let role_id = r.body["result"]["id"].as_str().unwrap().to_string();
    app.sync_now_and_wait(&conn).await;
    let r = find(deal.clone()).await;
    assert!(deal_contacts(&r.body).contains(&newcomer), "{r:?}");
    assert_eq!(deal_contacts(&r.body), roles_of(&deal));

    // And a role removed disappears.
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            json!({"method": "DELETE", "path": format!("/sobjects/OpportunityContactRole/{role_id}")}),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    app.sync_now_and_wait(&conn).await;
    let r = find(deal.clone()).await;
    assert!(!deal_contacts(&r.body).contains(&newcomer), "{r:?}");

    // A deal created with a contact gets a contact role.
    let r = app
        .post(
            "/crm/deal",
            &[("vessel-api-token", &app.dev_token)],
            json!({"accessToken": access, "deal": {"name": "With a buyer", "closeDate": "2027-05-01",
                "stage": "Prospecting", "contactId": newcomer}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let created = sf
        .live_ids_where("Opportunity", "Name", &json!("With a buyer"))
        .pop()
        .unwrap();
    assert_eq!(roles_of(&created), std::slice::from_ref(&newcomer));
    let r = find(created).await;
    assert_eq!(deal_contacts(&r.body), [newcomer]);
}

/// Salesforce campaigns are the unified lists; their members are
/// CampaignMember rows (contacts and leads), and a membership change made
/// in Salesforce shows after the next incremental run.
#[tokio::test]
async fn salesforce_campaigns_are_lists() {
    let sf = salesforce::Salesforce::new(salesforce::Options::default());
    let base = sf.serve().await.unwrap();
    let (app, conn, access) = salesforce_app(&base).await;
    let o = salesforce::Options::default();
    synced_with_exact_counts(&app, &conn, &access, &[("lists", "lists", o.campaigns)]).await;
    let lists = |kind: &'static str| {
        let app = &app;
        let access = &access;
        async move {
            let r = app
                .send(
                    "GET",
                    &format!("/crm/lists?accessToken={access}&objectType={kind}"),
                    &[("vessel-api-token", app.dev_token.as_str())],
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body["lists"].as_array().unwrap().clone()
        }
    };
    let members_of = |campaign: &str, field: &str| -> Vec<String> {
        let mut ids: Vec<String> = sf
            .live_ids_where("CampaignMember", "CampaignId", &json!(campaign))
            .into_iter()
            .filter_map(|m| {
                sf.field("CampaignMember", &m, field)
                    .and_then(|v| v.as_str().map(str::to_string))
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let natives = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let leads = lists("lead").await;
    assert_eq!(leads.len(), 1, "{leads:?}");
    let contacts = lists("contact").await;
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    let mixed = contacts
        .iter()
        .find(|l| l["name"] == "Campaign 2")
        .expect("the mixed campaign");
    let campaign = mixed["nativeId"].as_str().unwrap().to_string();
    // v1 renders association ids as v1 ids; v2 shows native ones.
    assert_eq!(
        mixed["associations"]["leadIds"].as_array().unwrap().len(),
        members_of(&campaign, "LeadId").len()
    );
    let find = |id: String| {
        let app = &app;
        let access = &access;
        async move {
            app.post(
                "/unifications/crm/lists/find",
                &app.v2h(access),
                json!({"id": id, "objectType": "contacts"}),
            )
            .await
        }
    };
    let r = find(campaign.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let list = &r.body["result"]["list"];
    assert_eq!(
        natives(&list["associations"]["contactIds"]),
        members_of(&campaign, "ContactId")
    );
    assert_eq!(
        natives(&list["associations"]["leadIds"]),
        members_of(&campaign, "LeadId")
    );

    // A member added in Salesforce.
    let newcomer = sf
        .live_ids("Contact", None)
        .into_iter()
        .find(|c| !members_of(&campaign, "ContactId").contains(c))
        .unwrap();
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            json!({"method": "POST", "path": "/sobjects/CampaignMember",
                "body": {"CampaignId": campaign, "ContactId": newcomer, "Status": "Responded"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    app.sync_now_and_wait(&conn).await;
    let r = find(campaign.clone()).await;
    let got = natives(&r.body["result"]["list"]["associations"]["contactIds"]);
    assert!(got.contains(&newcomer), "{r:?}");
    assert_eq!(got, members_of(&campaign, "ContactId"));
}

/// HubSpot's meeting attendees are the meeting's contacts: one attendee per
/// (meeting, contact), with the contact's email; inviting associates the
/// contact, removing dissociates it.
#[tokio::test]
async fn hubspot_meeting_attendees_are_meeting_contacts() {
    let (hs, app, conn, access) =
        hubspot_app("pat-na1-attendees", hubspot::Options::default()).await;
    let meetings = hs.live_ids("meetings");
    let pairs: usize = meetings
        .iter()
        .map(|m| hs.associated("meetings", m, "contacts").len())
        .sum();
    assert!(pairs > 0);
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[("event/attendees", "eventAttendees", pairs)],
    )
    .await;
    let meeting = meetings[0].clone();
    let contact = hs.associated("meetings", &meeting, "contacts")[0].clone();
    let attendee = format!("{meeting}:{contact}");
    let r = app
        .post(
            "/unifications/crm/attendees/find",
            &app.v2h(&access),
            json!({"id": attendee}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let a = &r.body["result"]["eventAttendee"];
    assert_eq!(a["associatedObjectType"], "contacts", "v2 spells it plural");
    assert_eq!(
        a["email"].as_str(),
        hs.property("contacts", &contact, "email").as_deref()
    );
    assert_eq!(
        a["associations"],
        json!({"eventId": meeting, "associationId": contact})
    );
    let attendees_of_meeting = || {
        let app = &app;
        let access = &access;
        let meeting = meeting.clone();
        async move {
            let r = app
                .post(
                    "/unifications/crm/events/find",
                    &app.v2h(access),
                    json!({"id": meeting, "associations": ["attendees"]}),
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            let mut ids: Vec<String> =
                r.body["result"]["event"]["associations"]["eventAttendeeIds"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        attendees_of_meeting().await,
        std::slice::from_ref(&attendee)
    );

    // Inviting another contact associates it with the meeting.
    let other = hs
        .live_ids("contacts")
        .into_iter()
        .find(|c| *c != contact)
        .unwrap();
    let r = app
        .post(
            "/unifications/crm/attendees/create",
            &app.v2h(&access),
            json!({"attendee": {"eventId": meeting, "associationId": other, "associatedObjectType": "contact"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let invited = r.body["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(invited, format!("{meeting}:{other}"));
    let mut want = vec![contact.clone(), other.clone()];
    want.sort();
    assert_eq!(hs.associated("meetings", &meeting, "contacts"), want);
    let mut both = vec![attendee.clone(), invited.clone()];
    both.sort();
    assert_eq!(attendees_of_meeting().await, both);

    // Removing the attendee dissociates the contact.
    let r = app
        .post(
            "/unifications/crm/attendees/delete",
            &app.v2h(&access),
            json!({"id": invited}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        hs.associated("meetings", &meeting, "contacts"),
        std::slice::from_ref(&contact)
    );
    assert_eq!(attendees_of_meeting().await, [attendee]);
}

/// HubSpot contact lists (the v3 Lists API; lists of other objects are
/// not unified lists) with their members; a member added in HubSpot shows
/// after the next run, which reads every list.
#[tokio::test]
async fn hubspot_contact_lists_and_members() {
    let (hs, app, conn, access) = hubspot_app("pat-na1-lists", hubspot::Options::default()).await;
    let contact_lists: Vec<_> = hs.lists().into_iter().filter(|l| l.2 == "0-1").collect();
    assert!(
        hs.lists().len() > contact_lists.len(),
        "a company list to leave out"
    );
    synced_with_exact_counts(
        &app,
        &conn,
        &access,
        &[("lists", "lists", contact_lists.len())],
    )
    .await;
    let (list_id, name, _, _) = contact_lists[0].clone();
    let members = |id: &str| -> Vec<String> {
        let mut m = hs.lists().into_iter().find(|l| l.0 == id).unwrap().3;
        m.sort();
        m
    };
    let find = || {
        let app = &app;
        let access = &access;
        let list_id = list_id.clone();
        async move {
            let r = app
                .post(
                    "/unifications/crm/lists/find",
                    &app.v2h(access),
                    json!({"id": list_id, "objectType": "contacts"}),
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body["result"]["list"].clone()
        }
    };
    let list = find().await;
    assert_eq!(list["name"], name.as_str());
    // v2 lists filter by `objectType`.
    for (t, n) in [("contacts", contact_lists.len()), ("leads", 0)] {
        let r = app
            .post(
                "/unifications/crm/lists/list",
                &app.v2h(&access),
                json!({"objectType": t}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.body["result"]["lists"].as_array().unwrap().len(),
            n,
            "{t}: {r:?}"
        );
    }
    let got = |l: &Value| -> Vec<String> {
        let mut ids: Vec<String> = l["associations"]["contactIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(got(&list), members(&list_id));

    let newcomer = hs
        .live_ids("contacts")
        .into_iter()
        .find(|c| !members(&list_id).contains(c))
        .unwrap();
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            json!({"method": "PUT", "path": format!("/crm/v3/lists/{list_id}/memberships/add"),
                "body": [newcomer]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    app.sync_now_and_wait(&conn).await;
    let list = find().await;
    assert!(got(&list).contains(&newcomer), "{list}");
    assert_eq!(got(&list), members(&list_id));
}

/// A HubSpot lead is a record about a contact: the unified lead shows its
/// primary contact's person fields and its company's name; creating one
/// makes the contact too, updating person fields updates the contact.
#[tokio::test]
async fn hubspot_leads_show_their_contact() {
    let (hs, app, conn, access) = hubspot_app("pat-na1-leads", hubspot::Options::default()).await;
    let o = hubspot::Options::default();
    synced_with_exact_counts(&app, &conn, &access, &[("leads", "leads", o.leads)]).await;
    let lead = hs.live_ids("leads")[0].clone();
    let contact = hs.associated("leads", &lead, "contacts")[0].clone();
    let find = |id: String| {
        let app = &app;
        let access = &access;
        async move {
            let r = app
                .post(
                    "/unifications/crm/leads/find",
                    &app.v2h(access),
                    json!({"id": id, "associations": ["contacts", "accounts"]}),
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body["result"]["lead"].clone()
        }
    };
    let l = find(lead.clone()).await;
    assert_eq!(
        l["lastName"].as_str(),
        hs.property("contacts", &contact, "lastname").as_deref()
    );
    assert_eq!(
        l["email"].as_str(),
        hs.property("contacts", &contact, "email").as_deref()
    );
    assert_eq!(l["associations"]["contactIds"], json!([contact]));
    let company = hs.associated("leads", &lead, "companies").first().cloned();
    assert_eq!(
        l["accountName"].as_str(),
        company
            .as_deref()
            .and_then(|c| hs.property("companies", c, "name"))
            .as_deref(),
        "{l}"
    );
    // The contact lists the lead back.
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &app.v2h(&access),
            json!({"id": contact, "associations": ["leads"]}),
        )
        .await;
    let leads = r.body["result"]["contact"]["associations"]["leadIds"]
        .as_array()
        .unwrap();
    assert!(leads.iter().any(|x| x == lead.as_str()), "{r:?}");

    // Creating a lead makes its contact; person updates reach the contact.
    let account = hs.live_ids("companies")[0].clone();
    let r = app
        .post(
            "/unifications/crm/leads/create",
            &app.v2h(&access),
            json!({"lead": {"firstName": "Noor", "lastName": "Haddad", "email": "noor@prospect.example",
                "accountId": account}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let new_lead = r.body["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        hs.property("leads", &new_lead, "hs_lead_name").as_deref(),
        Some("Noor Haddad")
    );
    let new_contact = hs.associated("leads", &new_lead, "contacts")[0].clone();
    assert_eq!(
        hs.property("contacts", &new_contact, "email").as_deref(),
        Some("noor@prospect.example")
    );
    assert_eq!(hs.associated("leads", &new_lead, "companies"), [account]);
    let r = app
        .post(
            "/unifications/crm/leads/update",
            &app.v2h(&access),
            json!({"id": new_lead, "lead": {"jobTitle": "CTO"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        hs.property("contacts", &new_contact, "jobtitle").as_deref(),
        Some("CTO")
    );
    let l = find(new_lead).await;
    assert_eq!(l["jobTitle"], "CTO");
    assert_eq!(l["firstName"], "Noor");
}

/// HubSpot carries at most 100 associations of a type inline (and a v4
/// batch read 500 per record); a company with more contacts has them all,
/// in full runs, incremental runs and read-backs.
#[tokio::test]
async fn hubspot_associations_past_the_inline_page() {
    let (hs, app, conn, access) = hubspot_app(
        "pat-na1-crowded",
        hubspot::Options {
            contacts: 160,
            crowded_company: true,
            ..Default::default()
        },
    )
    .await;
    synced_with_exact_counts(&app, &conn, &access, &[("contacts", "contacts", 160)]).await;
    let company = hs.live_ids("companies")[0].clone();
    let want = hs.associated("companies", &company, "contacts");
    assert!(want.len() > 100, "{}", want.len());
    for synced in [true, false] {
        let r = app
            .post(
                "/unifications/crm/accounts/find",
                &app.v2h(&access),
                json!({"id": company, "associations": ["contacts"], "synced": synced}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let mut got: Vec<String> = r.body["result"]["account"]["associations"]["contactIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, want, "synced: {synced}");
    }
}
