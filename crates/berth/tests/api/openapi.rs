//! The committed OpenAPI document must match the generated one, and cover
//! every route. Regenerate with `BERTH_BLESS=1 cargo test --test api openapi`.

use crate::helpers::*;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

#[test]
fn committed_openapi_matches_the_code() {
    let generated = berth_api::openapi_string();
    if std::env::var("BERTH_BLESS").is_ok() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date: run `BERTH_BLESS=1 cargo test --test api openapi` and commit it"
    );
}

#[tokio::test]
async fn every_route_is_documented_and_served() {
    let doc: serde_json::Value = serde_json::from_str(&berth_api::openapi_string()).unwrap();
    assert_eq!(doc["openapi"].as_str().unwrap(), "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let app = spawn().await;
    let platform = [
        "/integrations/list",
        "/integrations/find",
        "/auth/session-token",
        "/auth/start",
        "/auth/access-token",
        "/connections/list",
        "/connections/get",
        "/connections/find",
        "/connections/delete",
    ];
    for p in platform {
        for prefix in ["", "/api"] {
            let full = format!("{prefix}{p}");
            assert!(paths.contains_key(&full), "{full} undocumented");
            // served: anything but the router's 404
            let r = app.send("POST", &full, &[], None).await;
            assert_ne!(r.status, 404, "{full} not served");
        }
    }
    for (m, p) in [
        ("post", "/link/token"),
        ("post", "/link/exchange"),
        ("get", "/connection/connection"),
        ("delete", "/connection/connection"),
        ("get", "/connection/connections"),
        ("get", "/connection/crm/integrations"),
        ("get", "/connection/engagement/integrations"),
        ("get", "/healthz"),
        ("get", "/icons/{file}"),
        ("get", "/openapi.json"),
    ] {
        assert!(
            paths.get(p).and_then(|i| i.get(m)).is_some(),
            "{m} {p} undocumented"
        );
    }
    let served = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served: serde_json::Value = served.json().await.unwrap();
    assert_eq!(served, doc);
}
