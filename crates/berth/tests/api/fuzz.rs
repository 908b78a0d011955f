//! Property test: no request body, header combination or method on any JSON
//! endpoint produces a 5xx (a 502 would need a failing provider, and the only
//! provider reachable here is the local sandbox).

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
            "//evil.example/x"
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

#[test]
fn no_input_reaches_a_server_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn());
    let (session, link, access) = rt.block_on(async {
        let s = app
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
        (s, l.body["linkToken"].as_str().unwrap().to_string(), access)
    });
    let config = ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        ep in prop::sample::select(ENDPOINTS.to_vec()),
        body in body(),
        api in prop::option::of(prop::sample::select(vec![0usize, 1, 2])),
        sess in prop::option::of(prop::sample::select(vec![0usize, 1, 2])),
        query in prop::option::of("[a-zA-Z0-9=&%_.-]{0,30}"),
        with_access in any::<bool>(),
        ctype in prop::sample::select(vec!["application/json", "text/plain", "", "application/x-www-form-urlencoded"]),
    )| {
        let api_tok = api.map(|i| [app.dev_token.as_str(), "berth_dev_bogus", ""][i]);
        let sess_tok = sess.map(|i| [session.as_str(), link.as_str(), "v_session_x"][i]);
        let status = rt.block_on(async {
            let (method, path) = ep;
            let url = match &query { Some(q) => format!("{}{path}?{q}", app.base), None => format!("{}{path}", app.base) };
            let mut req = app.client.request(method.parse().unwrap(), url);
            if let Some(t) = api_tok { req = req.header("x-vessel-api-token", t).header("vessel-api-token", t); }
            if let Some(t) = sess_tok { req = req.header("x-vessel-session-token", t); }
            if with_access { req = req.header("x-vessel-access-token", access.as_str()); }
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
