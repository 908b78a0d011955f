//! Property tests: no request body, header combination or method on any JSON
//! endpoint produces a 5xx (a 502 would need a failing provider, and the only
//! provider reachable here is the local sandbox). The CRM routes (every
//! object and operation of both generations) are fuzzed apart, over a
//! sandbox connection that has finished syncing, so inputs reach the CRM
//! code instead of the 409 of a connection still syncing. No 5xx is
//! allowed anywhere, "not supported" included: monitors read a 5xx as
//! Berth's own failure.

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::helpers::*;

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/integrations/list"),
    ("POST", "/integrations/find"),
    ("POST", "/auth/session-token"),
    ("POST", "/auth/start"),
    ("POST", "/auth/access-token"),
    ("POST", "/connections/list"),
    ("POST", "/connections/get"),
    ("POST", "/api/connections/find"),
    ("POST", "/connections/delete"),
    ("POST", "/link/token"),
    ("POST", "/link/exchange"),
    ("GET", "/connection/connection"),
    ("DELETE", "/connection/connection"),
    ("GET", "/connection/connections"),
    ("POST", "/auth/oauth-apps/create"),
    ("POST", "/api/auth/oauth-apps/find"),
    ("POST", "/auth/oauth-apps/delete"),
    ("POST", "/auth/session-status"),
    ("POST", "/auth/check-permissions"),
    ("POST", "/passthrough"),
    ("POST", "/api/passthrough"),
    ("POST", "/crm/passthrough"),
    ("POST", "/logs/list"),
    ("POST", "/proxy/me"),
    ("PATCH", "/proxy/contacts/1"),
    ("GET", "/proxy/contacts"),
    ("POST", "/engagement/passthrough"),
    ("GET", "/connection/crm/integrations"),
    ("POST", "/auth/oauth-apps/list"),
    ("POST", "/webhooks"),
    ("POST", "/webhooks/create"),
    ("POST", "/webhooks/update"),
    ("POST", "/webhooks/find"),
    ("POST", "/webhooks/list"),
    ("POST", "/webhooks/delete"),
    ("POST", "/webhooks/rotate-secret"),
    ("POST", "/webhooks/messages/list"),
    ("POST", "/webhooks/messages/replay"),
    ("POST", "/webhooks/attempts/list"),
    ("POST", "/webhooks/event-types/list"),
    ("GET", "/connection/webhook"),
    ("POST", "/connection/webhook"),
    ("DELETE", "/connection/webhook"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
];

const CRM_ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/crm/contacts"),
    ("GET", "/crm/contact"),
    ("GET", "/crm/contact/batch"),
    ("GET", "/crm/deal/details"),
    ("GET", "/crm/event/attendees"),
    ("GET", "/crm/lists"),
    ("GET", "/crm/nope"),
    ("POST", "/crm/contacts/search"),
    ("POST", "/crm/contact"),
    ("PATCH", "/crm/contact"),
    ("POST", "/crm/call/batch"),
    ("POST", "/crm/contact/custom-field"),
    ("PATCH", "/crm/account/custom-field"),
    ("POST", "/crm/users/associations"),
    ("POST", "/unifications/crm/contacts/list"),
    ("POST", "/unifications/crm/deals/find"),
    ("POST", "/unifications/crm/accounts/create"),
    ("POST", "/unifications/crm/contacts/update"),
    ("POST", "/unifications/crm/notes/delete"),
    ("POST", "/unifications/crm/users/batch-read"),
    ("POST", "/unifications/crm/leads/details"),
    ("POST", "/unifications/crm/lists/list"),
    ("POST", "/unifications/crm/custom-fields/create"),
    ("POST", "/api/unifications/crm/info"),
    ("POST", "/unifications/crm/info/find"),
    ("POST", "/unifications/crm/nope/list"),
    ("POST", "/connections/sync"),
    ("POST", "/connections/update"),
];

const KEYS: &[&str] = &[
    "id",
    "integrationId",
    "authType",
    "answers",
    "api-key",
    "externalUserId",
    "metadata",
    "allowedOrigins",
    "cursor",
    "limit",
    "filters",
    "ids",
    "category",
    "publicToken",
    "connectionId",
    "sessionToken",
    "oauthAppId",
    "instanceUrl",
    "accountId",
    "clientId",
    "clientSecret",
    "scopes",
    "method",
    "path",
    "body",
    "json",
    "headers",
    "query",
    "accessToken",
    "statusClass",
    "layer",
    "since",
    "until",
    "contact",
    "account",
    "lastName",
    "email",
    "customField",
    "objectType",
    "name",
    "type",
    "options",
    "key",
    "associations",
    "include",
    "$native",
    "additional",
    "synced",
    "allFields",
    "equals",
    "gte",
    "syncIntervalSeconds",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "sandbox",
            "hubspot",
            "chatwoot",
            "apiKey",
            "oauth2",
            "",
            "http://127.0.0.1:9",
            "crm",
            "GET",
            "/me",
            "/../me",
            "//evil.example/x",
            "singleselect",
            "contacts",
            "contact",
            "v.contact.00000000000000000000000000000000",
            "bad\u{0}id",
            "../limits",
            "a/b",
            "1?x=2",
            "1001",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..6).prop_map(
                |kv| Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>()
                )
            ),
        ]
    })
}

fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        "\\PC{0,64}".prop_map(|s| Some(s.into_bytes())),
    ]
}

/// The tokens a fuzzed request may carry.
struct Tokens {
    session: String,
    link: String,
    access: String,
}

/// Sends `cases` random requests to `endpoints`; none may answer 5xx (but
/// `allow_501`: the 501 `NOT_SUPPORTED` of a connector without a feature),
/// and every error body is JSON.
fn fuzz(
    rt: &tokio::runtime::Runtime,
    app: &TestApp,
    endpoints: Vec<(&'static str, String)>,
    t: &Tokens,
    cases: u32,
) {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        ep in prop::sample::select(endpoints.clone()),
        body in body(),
        api in prop::option::of(prop::sample::select(vec![0usize, 1, 2])),
        sess in prop::option::of(prop::sample::select(vec![0usize, 1, 2])),
        query in prop::option::of("[a-zA-Z0-9=&%_.-]{0,30}"),
        with_access in any::<bool>(),
        ctype in prop::sample::select(vec!["application/json", "text/plain", "", "application/x-www-form-urlencoded"]),
    )| {
        let api_tok = api.map(|i| [app.dev_token.as_str(), "berth_dev_bogus", ""][i]);
        let sess_tok = sess.map(|i| [t.session.as_str(), t.link.as_str(), "v_session_x"][i]);
        let status = rt.block_on(async {
            let (method, path) = (ep.0, ep.1.as_str());
            // v1 takes the access token in the query.
            let mut q = query.clone().unwrap_or_default();
            if with_access {
                q = format!("accessToken={}&{q}", t.access);
            }
            let url = if q.is_empty() { format!("{}{path}", app.base) } else { format!("{}{path}?{q}", app.base) };
            let mut req = app.client.request(method.parse().unwrap(), url);
            if let Some(t) = api_tok { req = req.header("x-vessel-api-token", t).header("vessel-api-token", t); }
            if let Some(t) = sess_tok { req = req.header("x-vessel-session-token", t); }
            if with_access { req = req.header("x-vessel-access-token", t.access.as_str()); }
            if !ctype.is_empty() { req = req.header("content-type", ctype); }
            if let Some(b) = &body { req = req.body(b.clone()); }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, text)
        });
        prop_assert!(status.0 < 500, "{} {} -> {} {}", ep.0, ep.1, status.0, status.1);
        // `/proxy` answers with the provider's own body, whatever it is.
        if status.0 >= 400 && !ep.1.starts_with("/proxy/") {
            prop_assert!(serde_json::from_str::<Value>(&status.1).is_ok(), "error body is JSON: {}", status.1);
        }
    });
}

async fn tokens(app: &TestApp) -> Tokens {
    let session = app
        .session_token(&app.dev_token, serde_json::json!({}))
        .await;
    let l = app
        .send(
            "POST",
            "/link/token",
            &[("vessel-api-token", &app.dev_token)],
            None,
        )
        .await;
    let (_, access) = app.connect_sandbox(&app.dev_token, "fuzz-key").await;
    Tokens {
        session,
        link: l.body["linkToken"].as_str().unwrap().to_string(),
        access,
    }
}

#[test]
fn no_input_reaches_a_server_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn());
    let t = rt.block_on(tokens(&app));
    let endpoints = ENDPOINTS.iter().map(|(m, p)| (*m, p.to_string())).collect();
    fuzz(&rt, &app, endpoints, &t, 500);
}

#[test]
fn no_crm_input_reaches_a_server_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_with(|c| c.no_workers = false));
    let t = rt.block_on(async {
        let t = tokens(&app).await;
        crate::sync::until("the fuzzed connection to be READY", || async {
            let list = app
                .send(
                    "GET",
                    &format!("/crm/contacts?accessToken={}&limit=1", t.access),
                    &[("vessel-api-token", &app.dev_token)],
                    None,
                )
                .await;
            list.status == 200
        })
        .await;
        t
    });
    fuzz(&rt, &app, crm_endpoints(), &t, 1500);
}

/// Every CRM route: the listed ones, and every object's every operation
/// in both generations (v2 bare and under `/api`).
fn crm_endpoints() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = CRM_ENDPOINTS
        .iter()
        .map(|(m, p)| (*m, p.to_string()))
        .collect();
    for o in berth_unified::crm::OBJECTS {
        for op in [
            "list",
            "find",
            "create",
            "update",
            "delete",
            "batch-read",
            "details",
        ] {
            out.push(("POST", format!("/unifications/crm/{}/{op}", o.name)));
            out.push(("POST", format!("/api/unifications/crm/{}/{op}", o.name)));
        }
        let (one, many) = (o.v1_singular, o.v1_plural);
        out.push(("GET", format!("/crm/{many}")));
        out.push(("POST", format!("/crm/{many}/search")));
        out.push(("GET", format!("/crm/{one}")));
        out.push(("GET", format!("/crm/{one}/batch")));
        out.push(("POST", format!("/crm/{one}/batch")));
        out.push(("GET", format!("/crm/{one}/details")));
        out.push(("POST", format!("/crm/{one}")));
        out.push(("PATCH", format!("/crm/{one}")));
    }
    out
}
