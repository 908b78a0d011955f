//! The account-level parts of the unified CRM API against the HubSpot and
//! Salesforce fakes: `/details` with the provider's own and custom fields,
//! custom fields created and updated (v1 `/crm/{object}/custom-field`, v2
//! `custom-fields/create`) and then written through, `/unifications/crm/info`,
//! and v1 `POST /crm/users/associations`.

use berth_fakes::{hubspot, salesforce};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::providers::{app_with_catalog, hubspot_app, salesforce_app, synced_with_exact_counts};
use crate::sync::v1_all;

async fn get(app: &TestApp, path: &str) -> Resp {
    app.send(
        "GET",
        path,
        &[("x-vessel-api-token", app.dev_token.as_str())],
        None,
    )
    .await
}

async fn v1(app: &TestApp, method: &str, path: &str, body: Value) -> Resp {
    app.send(
        method,
        path,
        &[
            ("x-vessel-api-token", app.dev_token.as_str()),
            ("content-type", "application/json"),
        ],
        Some(&body.to_string()),
    )
    .await
}

fn field<'a>(details: &'a Resp, key: &str) -> Option<&'a Value> {
    details.body["fields"]
        .as_array()
        .or(details.body["result"]["fields"].as_array())?
        .iter()
        .find(|f| f["key"] == key)
}

fn option_keys(f: &Value) -> Vec<&str> {
    f["options"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["key"].as_str())
        .collect()
}

#[tokio::test]
async fn hubspot_custom_fields_details_info_and_user_associations() {
    let (hs, app, conn, access) = hubspot_app("pat-na1-meta", hubspot::Options::default()).await;
    synced_with_exact_counts(&app, &conn, &access, &[]).await;

    // A v1 single select on contacts, then a new option.
    let r = v1(
        &app,
        "POST",
        "/crm/contact/custom-field",
        json!({"accessToken": access, "customField": {"name": "Customer Tier", "type": "singleselect",
            "options": [{"name": "Gold", "key": "gold"}]}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"key": "customer_tier"}));
    let r = v1(
        &app,
        "PATCH",
        "/crm/contact/custom-field",
        json!({"accessToken": access, "customField": {"key": "customer_tier",
            "options": [{"name": "Gold", "key": "gold"}, {"name": "Silver", "key": "silver"}]}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["key"], "customer_tier");

    // Details: the unified fields, then the custom one as HubSpot has it.
    let d = get(&app, &format!("/crm/contact/details?accessToken={access}")).await;
    assert_eq!(d.status, 200, "{d:?}");
    let email = field(&d, "email").expect("the unified email field");
    assert_eq!(email["universal"], true);
    let tier = field(&d, "customer_tier").expect("the custom field");
    assert_eq!(
        (&tier["custom"], &tier["universal"], &tier["type"]),
        (&json!(true), &json!(false), &json!("singleselect"))
    );
    assert_eq!(option_keys(tier), ["gold", "silver"]);
    assert!(
        field(&d, "hs_object_id").is_none(),
        "HubSpot's own fields only with allFields"
    );
    let d = get(
        &app,
        &format!("/crm/contact/details?accessToken={access}&allFields=true"),
    )
    .await;
    assert_eq!(field(&d, "hs_object_id").unwrap()["updatable"], false);

    // Deal details: `stage` offers the stages of every pipeline, of the
    // pipeline a given deal is in, or of a pipeline named by its id.
    let d = get(&app, &format!("/crm/deal/details?accessToken={access}")).await;
    assert_eq!(d.status, 200, "{d:?}");
    let all = option_keys(field(&d, "stage").unwrap());
    assert!(
        all.contains(&"closedwon") && all.contains(&"partner_won"),
        "{all:?}"
    );
    let deal = hs.live_ids("deals")[0].clone();
    let d = get(
        &app,
        &format!("/crm/deal/details?accessToken={access}&id={deal}"),
    )
    .await;
    assert_eq!(d.status, 200, "{d:?}");
    let of_deal = option_keys(field(&d, "stage").unwrap());
    assert!(of_deal.contains(&"closedwon"), "{of_deal:?}");
    assert!(
        !of_deal.iter().any(|k| k.starts_with("partner_")),
        "only the deal's pipeline: {of_deal:?}"
    );
    let d = app
        .post(
            "/unifications/crm/deals/details",
            &app.v2h(&access),
            json!({"id": "partner"}),
        )
        .await;
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(
        option_keys(field(&d, "stage").unwrap()),
        ["partner_sourced", "partner_negotiation", "partner_won"]
    );
    let d = get(
        &app,
        &format!("/crm/deal/details?accessToken={access}&id=nope"),
    )
    .await;
    assert_eq!(d.status, 404, "{d:?}");

    // v2: a number field; the same name again is HubSpot's 409.
    let create =
        json!({"objectType": "contacts", "customField": {"name": "NPS", "type": "number"}});
    let r = app
        .post(
            "/api/unifications/crm/custom-fields/create",
            &app.v2h(&access),
            create.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["key"], "nps");
    let r = app
        .post(
            "/unifications/crm/custom-fields/create",
            &app.v2h(&access),
            create,
        )
        .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body["error"]["metadata"]["originalErrors"].is_array());
    let d = app
        .post(
            "/unifications/crm/contacts/details",
            &app.v2h(&access),
            json!({}),
        )
        .await;
    assert_eq!(field(&d, "nps").unwrap()["type"], "number", "{d:?}");

    // Custom property values come with the records: read back after a
    // write, and listed by the next sync (HubSpot sends only the
    // properties asked for, so the connector asks for the custom ones).
    let contact = hs.live_ids("contacts")[0].clone();
    let r = app
        .post(
            "/unifications/crm/contacts/update",
            &app.v2h(&access),
            json!({"id": contact, "contact": {"$native": {"nps": "9"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &app.v2h(&access),
            json!({"id": contact, "include": {"$native": true}}),
        )
        .await;
    assert_eq!(
        r.body["result"]["contact"]["$native"]["properties"]["nps"], "9",
        "{r:?}"
    );
    let other = hs.live_ids("contacts")[1].clone();
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            json!({"method": "PATCH", "path": format!("/crm/v3/objects/contacts/{other}"),
                "body": {"properties": {"nps": "3"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    app.sync_now_and_wait(&conn).await;
    let r = app
        .send(
            "GET",
            &format!("/crm/contact?accessToken={access}&id={other}&allFields=true"),
            &[("vessel-api-token", app.dev_token.as_str())],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["contact"]["additional"]["properties"]["nps"], "3",
        "{r:?}"
    );

    // Bad bodies are 400s that name the problem, and reach no provider.
    let calls = hs.calls();
    for (body, code) in [
        (
            json!({"objectType": "contacts", "customField": {"name": "x", "type": "blob"}}),
            "INVALID_CUSTOM_FIELD",
        ),
        (
            json!({"objectType": "contacts", "customField": {"name": "x", "type": "singleselect"}}),
            "INVALID_CUSTOM_FIELD",
        ),
        (
            json!({"objectType": "calls", "customField": {"name": "x", "type": "text"}}),
            "INVALID_OBJECT_TYPE",
        ),
        (json!({"objectType": "contacts"}), "INVALID_BODY"),
    ] {
        let r = app
            .post(
                "/unifications/crm/custom-fields/create",
                &app.v2h(&access),
                body,
            )
            .await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.body["error"]["code"], code, "{r:?}");
    }
    assert_eq!(hs.calls(), calls);

    // The custom field is written through `additional`, and HubSpot checks
    // its options (v1 errors are flat: `{errorCode, message, metadata}`).
    let contacts = v1_all(&app, &app.dev_token, &access, "contacts", "contacts").await;
    let c = &contacts[0];
    let r = v1(
        &app,
        "PATCH",
        "/crm/contact",
        json!({"accessToken": access, "id": c["id"], "contact": {"additional": {"customer_tier": "silver"}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let native = c["nativeId"].as_str().unwrap();
    assert_eq!(
        hs.property("contacts", native, "customer_tier").as_deref(),
        Some("silver")
    );
    let r = v1(
        &app,
        "PATCH",
        "/crm/contact",
        json!({"accessToken": access, "id": c["id"], "contact": {"additional": {"customer_tier": "platinum"}}}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        r.body["metadata"]["originalErrors"][0]["errorCode"], "INVALID_OPTION",
        "{r:?}"
    );

    // Account info, under both spellings.
    for path in ["/api/unifications/crm/info", "/unifications/crm/info/find"] {
        let r = app.post(path, &app.v2h(&access), json!({})).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.body["result"],
            json!({"url": "https://app.hubspot.com/contacts/62515", "orgId": "62515", "userId": null, "currency": "USD"})
        );
    }

    // Users' contacts, from the store, as v1 ids, against what the
    // contacts themselves say.
    let users = v1_all(&app, &app.dev_token, &access, "users", "users").await;
    let ids: Vec<&str> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    let r = v1(
        &app,
        "POST",
        "/crm/users/associations",
        json!({"accessToken": access, "objectType": "contact", "ids": [ids[0], ids[1], "v.user.00000000000000000000000000000000"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["invalidIds"],
        json!(["v.user.00000000000000000000000000000000"])
    );
    assert_eq!(r.body["nextPageCursor"], Value::Null);
    let mut total = 0;
    for u in r.body["users"].as_array().unwrap() {
        let mut got: Vec<&str> = u["associations"]["contactIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut want: Vec<&str> = contacts
            .iter()
            .filter(|c| c["associations"]["ownerUserId"] == u["id"])
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        total += got.len();
    }
    assert!(total > 0, "the generated contacts have owners");
    let r = v1(
        &app,
        "POST",
        "/crm/users/associations",
        json!({"accessToken": access, "objectType": "lead", "ids": [ids[0]]}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn salesforce_custom_fields_through_the_tooling_api_details_and_info() {
    let sf = salesforce::Salesforce::new(salesforce::Options::default());
    let base = sf.serve().await.unwrap();
    let (app, conn, access) = salesforce_app(&base).await;
    synced_with_exact_counts(&app, &conn, &access, &[]).await;

    // Details: describe's custom fields come with the unified ones.
    let d = get(&app, &format!("/crm/contact/details?accessToken={access}")).await;
    assert_eq!(d.status, 200, "{d:?}");
    assert!(field(&d, "firstName").is_some(), "{d:?}");
    let region = field(&d, "Region__c").expect("the org's custom field");
    assert_eq!(
        (&region["custom"], &region["universal"]),
        (&json!(true), &json!(false))
    );
    let d = get(
        &app,
        &format!("/crm/lead/details?accessToken={access}&allFields=true"),
    )
    .await;
    assert_eq!(field(&d, "Company").unwrap()["required"], true, "{d:?}");

    // Deal details: the stages of a deal's record type (its sales
    // process), or of a record type named by id.
    let d = get(&app, &format!("/crm/deal/details?accessToken={access}")).await;
    let all = option_keys(field(&d, "stage").unwrap());
    assert_eq!(all.len(), 7, "{all:?}");
    let deals = crate::sync::v1_all(&app, &app.dev_token, &access, "deals", "deals").await;
    let deal = deals[0]["id"].as_str().unwrap();
    let d = get(
        &app,
        &format!("/crm/deal/details?accessToken={access}&id={deal}"),
    )
    .await;
    assert_eq!(option_keys(field(&d, "stage").unwrap()), all, "{d:?}");
    let d = get(
        &app,
        &format!(
            "/crm/deal/details?accessToken={access}&id={}",
            salesforce::RENEWAL_RECORD_TYPE
        ),
    )
    .await;
    assert_eq!(
        option_keys(field(&d, "stage").unwrap()),
        ["Negotiation/Review", "Closed Won", "Closed Lost"]
    );
    let d = get(
        &app,
        &format!("/crm/deal/details?accessToken={access}&id=012000000000001AAA"),
    )
    .await;
    assert_eq!(d.status, 404, "{d:?}");

    // A number on leads and a picklist on contacts, then one more value.
    let r = v1(
        &app,
        "POST",
        "/crm/lead/custom-field",
        json!({"accessToken": access, "customField": {"name": "Lead Score", "type": "number"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["key"], "Lead_Score__c");
    let r = app
        .post(
            "/unifications/crm/custom-fields/create",
            &app.v2h(&access),
            json!({"objectType": "contacts", "customField": {"name": "Tier", "type": "singleselect",
                "options": [{"name": "Gold", "key": "gold"}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["key"], "Tier__c");
    let r = v1(
        &app,
        "PATCH",
        "/crm/contact/custom-field",
        json!({"accessToken": access, "customField": {"key": "Tier__c",
            "options": [{"name": "Gold", "key": "gold"}, {"name": "Silver", "key": "silver"}]}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["key"], "Tier__c");
    let d = app
        .post(
            "/unifications/crm/contacts/details",
            &app.v2h(&access),
            json!({}),
        )
        .await;
    let tier = field(&d, "Tier__c").expect("the new picklist");
    assert_eq!(option_keys(tier), ["gold", "silver"]);
    let d = get(&app, &format!("/crm/lead/details?accessToken={access}")).await;
    assert_eq!(field(&d, "Lead_Score__c").unwrap()["type"], "number");

    // Updating a field that does not exist is a 404; a clashing name is
    // Salesforce's own refusal.
    let r = v1(
        &app,
        "PATCH",
        "/crm/contact/custom-field",
        json!({"accessToken": access, "customField": {"key": "Nope__c", "options": []}}),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = v1(
        &app,
        "POST",
        "/crm/contact/custom-field",
        json!({"accessToken": access, "customField": {"name": "Tier", "type": "text"}}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        r.body["metadata"]["originalErrors"][0]["errorCode"], "DUPLICATE_DEVELOPER_NAME",
        "{r:?}"
    );

    // The new picklist is written through `$native` and checked by
    // Salesforce.
    let ids = sf.live_ids("Contact", None);
    let r = app
        .post(
            "/unifications/crm/contacts/update",
            &app.v2h(&access),
            json!({"id": ids[0], "contact": {"$native": {"Tier__c": "silver"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        sf.field("Contact", &ids[0], "Tier__c"),
        Some(json!("silver"))
    );
    // Custom field values come with the record (read back after the
    // write, and selected by every sync).
    let r = app
        .post(
            "/unifications/crm/contacts/find",
            &app.v2h(&access),
            json!({"id": ids[0], "include": {"$native": true}}),
        )
        .await;
    assert_eq!(
        r.body["result"]["contact"]["$native"]["Tier__c"], "silver",
        "{r:?}"
    );
    let r = app
        .post(
            "/passthrough",
            &app.v2h(&access),
            json!({"method": "PATCH", "path": format!("/sobjects/Contact/{}", ids[1]),
                "body": {"Tier__c": "silver"}}),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    app.sync_now_and_wait(&conn).await;
    let r = app
        .send(
            "GET",
            &format!(
                "/crm/contact?accessToken={access}&id={}&allFields=true",
                ids[1]
            ),
            &[("vessel-api-token", app.dev_token.as_str())],
            None,
        )
        .await;
    assert_eq!(
        r.body["contact"]["additional"]["Tier__c"], "silver",
        "{r:?}"
    );

    // Account info: the instance, the org and user of the identity URL,
    // the org's currency.
    let r = app
        .post("/unifications/crm/info", &app.v2h(&access), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let info = &r.body["result"];
    assert_eq!(info["url"], base.as_str());
    assert_eq!(info["currency"], "EUR");
    assert!(info["orgId"].as_str().unwrap().starts_with("00D"), "{info}");
    let user = info["userId"].as_str().unwrap();
    assert!(
        sf.live_ids("User", None).iter().any(|u| u == user),
        "{info}"
    );
}

/// `POST /connections/update {id, syncIntervalSeconds}` over a
/// per-integration interval from the providers file; then the sandbox's
/// account info.
#[tokio::test]
async fn sync_intervals_per_integration_and_per_connection() {
    let app = app_with_catalog("[integrations.sandbox]\nsync_interval_secs = 600\n".into()).await;
    let (conn, access) = app.connect_sandbox(&app.dev_token, "meta-key").await;
    let api = [("x-vessel-api-token", app.dev_token.as_str())];
    let interval = || async {
        let r = app
            .post("/connections/get", &api, json!({"id": conn}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["result"]["sync"]["intervalSeconds"].clone()
    };
    assert_eq!(interval().await, 600, "the integration's interval");

    let r = app
        .post(
            "/api/connections/update",
            &api,
            json!({"id": conn, "syncIntervalSeconds": 120}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["syncIntervalSeconds"], 120);
    assert_eq!(r.body["result"]["custom"], true);
    assert_eq!(interval().await, 120);

    for (body, status, code) in [
        (
            json!({"id": conn, "syncIntervalSeconds": 59}),
            400,
            "INVALID_SYNC_INTERVAL",
        ),
        (
            json!({"id": conn, "syncIntervalSeconds": "60"}),
            400,
            "INVALID_SYNC_INTERVAL",
        ),
        (
            json!({"id": conn, "syncIntervalSeconds": 1e12}),
            400,
            "INVALID_SYNC_INTERVAL",
        ),
        (json!({"id": conn}), 400, "INVALID_BODY"),
        (json!({"syncIntervalSeconds": 60}), 400, "MISSING_ID"),
        (
            json!({"id": "con_nope", "syncIntervalSeconds": 60}),
            404,
            "",
        ),
    ] {
        let r = app.post("/connections/update", &api, body).await;
        assert_eq!(r.status, status, "{r:?}");
        if !code.is_empty() {
            assert_eq!(r.body["error"]["code"], code, "{r:?}");
        }
    }
    assert_eq!(interval().await, 120, "refused updates change nothing");

    // Another environment's token cannot see the connection.
    let prod = app.prod_token().await;
    let r = app
        .post(
            "/connections/update",
            &[("x-vessel-api-token", prod.as_str())],
            json!({"id": conn, "syncIntervalSeconds": 60}),
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");

    let r = app
        .post(
            "/connections/update",
            &api,
            json!({"id": conn, "syncIntervalSeconds": null}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["custom"], false);
    assert_eq!(interval().await, 600, "back to the integration's");

    // The sandbox's account info comes from its `/me` (no synced data
    // needed).
    let r = app
        .post("/unifications/crm/info", &app.v2h(&access), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["currency"], "USD", "{r:?}");
    assert_eq!(r.body["result"]["orgId"], "sandbox-org", "{r:?}");
    assert!(r.body["result"]["userId"].is_string(), "{r:?}");
}
