//! The store conformance suite: every behaviour the rest of Berth relies on,
//! checked on SQLite and on PostgreSQL.
//!
//! PostgreSQL runs when `BERTH_TEST_POSTGRES_URL` names a server (the test
//! script starts a throwaway one). Under `CI` a missing URL is a failure,
//! so the PostgreSQL half can never be skipped silently there.

use berth_store::*;

async fn backends() -> Vec<Store> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
    out.push(Store::connect(&url).await.unwrap());
    match std::env::var("BERTH_TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            let url = testing::fresh_postgres_database(&admin).await.unwrap();
            out.push(Store::connect(&url).await.unwrap());
        }
        _ if std::env::var("CI").is_ok() => {
            panic!("CI must set BERTH_TEST_POSTGRES_URL so the store suite runs on PostgreSQL too")
        }
        _ => eprintln!("note: BERTH_TEST_POSTGRES_URL unset; PostgreSQL half skipped"),
    }
    for s in &out {
        s.migrate().await.unwrap();
        // migrating twice is a no-op
        s.migrate().await.unwrap();
    }
    out
}

async fn bootstrapped() -> Vec<(Store, Environment, Environment)> {
    let mut out = Vec::new();
    for s in backends().await {
        let envs = s
            .bootstrap(1)
            .await
            .unwrap()
            .expect("first bootstrap creates");
        assert!(
            s.bootstrap(2).await.unwrap().is_none(),
            "second bootstrap is a no-op"
        );
        let dev = envs
            .iter()
            .find(|e| e.name == "development")
            .unwrap()
            .clone();
        let prod = envs
            .iter()
            .find(|e| e.name == "production")
            .unwrap()
            .clone();
        out.push((s, dev, prod));
    }
    out
}

fn new_conn<'a>(id: &'a str, env: &'a str) -> NewConnection<'a> {
    NewConnection {
        id,
        environment_id: env,
        integration_id: "sandbox",
        auth_type: "apiKey",
        status: "NEW_CONNECTION",
        external_user_id: Some("u1"),
        metadata: Some(r#"{"a":1}"#),
        answers: "{}",
        native_org_id: None,
        native_user_id: None,
        native_org_url: None,
        provider_metadata: "{}",
    }
}

async fn session(s: &Store, env: &str, id: &str, expires_at: i64) {
    s.insert_session(&NewSession {
        id,
        environment_id: env,
        kind: "session",
        token_hash: &format!("hash-{id}"),
        integration_id: None,
        external_user_id: Some("u1"),
        metadata: None,
        allowed_origins: "[]",
        reauth_connection_id: None,
        created_at: 1,
        expires_at,
    })
    .await
    .unwrap();
}

async fn connect(
    s: &Store,
    env: &str,
    sid: &str,
    cid: &str,
    limit: Option<i64>,
) -> Result<(), CreateConnectionError> {
    session(s, env, sid, i64::MAX).await;
    let c = new_conn(cid, env);
    s.create_connection_for_session(&CreateConnection {
        session_id: sid,
        connection: &c,
        sealed_credential: "sealed",
        public_token_hash: Some(&format!("pub-{sid}")),
        live_connection_limit: limit,
        event: NewEvent {
            id: &format!("evt-{cid}"),
            environment_id: env,
            connection_id: Some(cid),
            event_type: "connection.created",
            payload: "{}",
            created_at: 10,
        },
        now: 10,
    })
    .await
}

#[tokio::test]
async fn api_tokens_hash_lookup_scoping_and_revocation() {
    for (s, dev, prod) in bootstrapped().await {
        for (id, env, hash) in [("t1", &dev, "h1"), ("t2", &prod, "h2")] {
            s.insert_api_token(&NewApiToken {
                id,
                environment_id: &env.id,
                name: "n",
                prefix: "berth_dev_ab",
                token_hash: hash,
                created_at: 5,
            })
            .await
            .unwrap();
        }
        assert_eq!(
            s.environment_by_api_token_hash("h1")
                .await
                .unwrap()
                .unwrap()
                .name,
            "development"
        );
        assert_eq!(
            s.environment_by_api_token_hash("h2")
                .await
                .unwrap()
                .unwrap()
                .name,
            "production"
        );
        assert!(
            s.environment_by_api_token_hash("nope")
                .await
                .unwrap()
                .is_none()
        );
        let dup = s
            .insert_api_token(&NewApiToken {
                id: "t3",
                environment_id: &dev.id,
                name: "n",
                prefix: "p",
                token_hash: "h1",
                created_at: 5,
            })
            .await
            .unwrap_err();
        assert!(dup.is_unique_violation(), "{} {dup}", s.backend());
        assert_eq!(s.list_api_tokens().await.unwrap().len(), 2);
        assert_eq!(
            s.environment(&prod.id).await.unwrap().unwrap().name,
            "production"
        );
        assert!(s.environment("nope").await.unwrap().is_none());
        assert_eq!(s.revoke_api_token("t1", 9).await.unwrap(), 1);
        assert_eq!(s.revoke_api_token("t1", 9).await.unwrap(), 0);
        assert!(
            s.environment_by_api_token_hash("h1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.list_api_tokens()
                .await
                .unwrap()
                .iter()
                .any(|t| t.id == "t1" && t.revoked_at == Some(9))
        );
    }
}

#[tokio::test]
async fn connection_creation_is_atomic_and_limited() {
    for (s, dev, prod) in bootstrapped().await {
        for i in 0..3 {
            connect(&s, &dev.id, &format!("s{i}"), &format!("c{i}"), Some(3))
                .await
                .unwrap();
        }
        let err = connect(&s, &dev.id, "s3", "c3", Some(3)).await.unwrap_err();
        assert!(
            matches!(err, CreateConnectionError::LimitReached(3)),
            "{err}"
        );
        // nothing of the refused attempt was written
        assert!(s.get_connection(&dev.id, "c3").await.unwrap().is_none());
        assert!(s.get_credential(&dev.id, "c3").await.unwrap().is_none());
        assert_eq!(s.list_events(&dev.id, 0, 100).await.unwrap().len(), 3);
        // the limit is per environment
        connect(&s, &prod.id, "p0", "pc0", None).await.unwrap();
        // a used session cannot create a second connection
        let c = new_conn("c9", &dev.id);
        let again = s
            .create_connection_for_session(&CreateConnection {
                session_id: "s0",
                connection: &c,
                sealed_credential: "x",
                public_token_hash: None,
                live_connection_limit: None,
                event: NewEvent {
                    id: "e9",
                    environment_id: &dev.id,
                    connection_id: None,
                    event_type: "x",
                    payload: "{}",
                    created_at: 1,
                },
                now: 11,
            })
            .await
            .unwrap_err();
        assert!(matches!(again, CreateConnectionError::SessionNotPending));
        assert!(s.get_connection(&dev.id, "c9").await.unwrap().is_none());
        // an expired session cannot either
        session(&s, &dev.id, "old", 5).await;
        let c = new_conn("c8", &prod.id);
        let expired = s
            .create_connection_for_session(&CreateConnection {
                session_id: "old",
                connection: &c,
                sealed_credential: "x",
                public_token_hash: None,
                live_connection_limit: None,
                event: NewEvent {
                    id: "e8",
                    environment_id: &prod.id,
                    connection_id: None,
                    event_type: "x",
                    payload: "{}",
                    created_at: 1,
                },
                now: 11,
            })
            .await
            .unwrap_err();
        assert!(matches!(expired, CreateConnectionError::SessionNotPending));
    }
}

#[tokio::test]
async fn concurrent_creations_never_exceed_the_limit() {
    for (s, dev, _) in bootstrapped().await {
        let mut tasks = Vec::new();
        for i in 0..12 {
            let s = s.clone();
            let env = dev.id.clone();
            tasks.push(tokio::spawn(async move {
                connect(&s, &env, &format!("cs{i}"), &format!("cc{i}"), Some(5)).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(CreateConnectionError::LimitReached(_)) => {}
                Err(e) => panic!("{}: unexpected {e}", s.backend()),
            }
        }
        assert_eq!(ok, 5, "{}", s.backend());
        let (live, _) = (
            s.list_connections(&dev.id, None, 100).await.unwrap().len(),
            (),
        );
        assert_eq!(live, 5);
    }
}

#[tokio::test]
async fn exchange_is_single_use_and_scoped() {
    for (s, dev, prod) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        let sess = s
            .session_by_public_token_hash("pub-s1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sess.state, "completed");
        assert_eq!(sess.connection_id.as_deref(), Some("c1"));
        let c = s.exchange_session("s1", "ah1", 20).await.unwrap().unwrap();
        assert_eq!(c.id, "c1");
        assert!(s.exchange_session("s1", "ah2", 21).await.unwrap().is_none());
        assert_eq!(
            s.connection_by_access_token_hash(&dev.id, "ah1")
                .await
                .unwrap()
                .unwrap()
                .id,
            "c1"
        );
        assert!(
            s.connection_by_access_token_hash(&prod.id, "ah1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.connection_by_access_token_hash(&dev.id, "ah2")
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.get_connection(&prod.id, "c1").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn delete_revokes_erases_and_records() {
    for (s, dev, prod) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        s.exchange_session("s1", "ah1", 20).await.unwrap().unwrap();
        let ev = |id: &'static str, env: &'static str| NewEvent {
            id,
            environment_id: env,
            connection_id: Some("c1"),
            event_type: "connection.deleted",
            payload: "{}",
            created_at: 30,
        };
        // another environment cannot delete it
        let prod_id: &'static str = Box::leak(prod.id.clone().into_boxed_str());
        let dev_id: &'static str = Box::leak(dev.id.clone().into_boxed_str());
        assert!(
            !s.delete_connection(prod_id, "c1", &ev("e1", prod_id), 30)
                .await
                .unwrap()
        );
        assert!(
            s.delete_connection(dev_id, "c1", &ev("e2", dev_id), 30)
                .await
                .unwrap()
        );
        assert!(
            !s.delete_connection(dev_id, "c1", &ev("e3", dev_id), 31)
                .await
                .unwrap()
        );
        assert!(s.get_connection(dev_id, "c1").await.unwrap().is_none());
        assert!(s.get_credential(dev_id, "c1").await.unwrap().is_none());
        assert!(
            s.connection_by_access_token_hash(dev_id, "ah1")
                .await
                .unwrap()
                .is_none()
        );
        let events = s.list_events(dev_id, 0, 10).await.unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
            ["connection.created", "connection.deleted"]
        );
        assert!(events[0].seq < events[1].seq);
        assert!(s.list_events(prod_id, 0, 10).await.unwrap().is_empty());
        // the freed slot counts again toward the limit
        connect(&s, dev_id, "s2", "c2", Some(1)).await.unwrap();
    }
}

#[tokio::test]
async fn keyset_paging_is_stable_under_inserts() {
    for (s, dev, _) in bootstrapped().await {
        for i in 0..7 {
            connect(&s, &dev.id, &format!("s{i}"), &format!("c{i}"), None)
                .await
                .unwrap();
        }
        let first = s.list_connections(&dev.id, None, 3).await.unwrap();
        assert_eq!(first.len(), 3);
        let last = first.last().unwrap();
        // inserted "before" the cursor position (same timestamp, smaller id): not repeated
        connect(&s, &dev.id, "sa", "c0a", None).await.unwrap();
        let mut seen: Vec<String> = first.iter().map(|c| c.id.clone()).collect();
        let mut after = (last.created_at, last.id.clone());
        loop {
            let page = s
                .list_connections(&dev.id, Some((after.0, &after.1)), 3)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = (
                page.last().unwrap().created_at,
                page.last().unwrap().id.clone(),
            );
            seen.extend(page.into_iter().map(|c| c.id));
        }
        let mut sorted = seen.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "no repeats: {seen:?}");
        for i in 0..7 {
            assert!(seen.contains(&format!("c{i}")), "{seen:?}");
        }
    }
}

#[tokio::test]
async fn credential_compare_and_swap() {
    for (s, dev, _) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        let c = s.get_credential(&dev.id, "c1").await.unwrap().unwrap();
        assert_eq!(c.version, 1);
        assert!(s.replace_credential("c1", 1, "v2", 5).await.unwrap());
        assert!(!s.replace_credential("c1", 1, "stale", 6).await.unwrap());
        let c = s.get_credential(&dev.id, "c1").await.unwrap().unwrap();
        assert_eq!((c.version, c.sealed.as_str()), (2, "v2"));
        let page = s.credentials_page("", 10).await.unwrap();
        assert_eq!(page.len(), 1);
        assert!(s.credentials_page("c1", 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn key_rotation_walks_and_swaps_oauth_secrets() {
    for (s, dev, prod) in bootstrapped().await {
        for (id, env) in [("app-b", &dev), ("app-a", &prod), ("app-c", &dev)] {
            s.insert_oauth_app(&OAuthApp {
                id: id.into(),
                environment_id: env.id.clone(),
                integration_id: "hubspot".into(),
                client_id: "cid".into(),
                sealed_secret: format!("old-{id}"),
                scopes: "[]".into(),
                created_at: 1,
            })
            .await
            .unwrap();
        }
        assert!(s.delete_oauth_app(&dev.id, "app-c", 2).await.unwrap());
        let first = s.oauth_apps_page("", 1).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, "app-a", "every environment, by id");
        let rest = s.oauth_apps_page("app-a", 10).await.unwrap();
        let ids: Vec<&str> = rest.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["app-b"], "deleted apps are not walked");
        assert!(
            s.reseal_oauth_app("app-b", "old-app-b", "new-b")
                .await
                .unwrap()
        );
        assert!(
            !s.reseal_oauth_app("app-b", "old-app-b", "newer-b")
                .await
                .unwrap(),
            "a secret changed meanwhile is not overwritten"
        );
        assert!(
            !s.reseal_oauth_app("app-c", "", "x").await.unwrap(),
            "deleted stays erased"
        );
        let app = s.get_oauth_app(&dev.id, "app-b").await.unwrap().unwrap();
        assert_eq!(app.sealed_secret, "new-b");

        session(&s, &dev.id, "sess-f", 10_000).await;
        for (id, expires_at) in [("flow-1", 10_000), ("flow-2", 10_000), ("flow-old", 50)] {
            s.insert_oauth_flow(&OAuthFlow {
                id: id.into(),
                session_id: "sess-f".into(),
                environment_id: dev.id.clone(),
                sealed: format!("old-{id}"),
                created_at: 1,
                expires_at,
            })
            .await
            .unwrap();
        }
        assert!(s.consume_oauth_flow("flow-2", 100).await.unwrap().is_some());
        let open = s.open_oauth_flows_page("", 100, 10).await.unwrap();
        let ids: Vec<&str> = open.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["flow-1"], "used and expired flows are not walked");
        assert!(
            s.reseal_oauth_flow("flow-1", "old-flow-1", "new-1")
                .await
                .unwrap()
        );
        assert!(
            !s.reseal_oauth_flow("flow-2", "old-flow-2", "new-2")
                .await
                .unwrap()
        );
        let f = s.consume_oauth_flow("flow-1", 100).await.unwrap().unwrap();
        assert_eq!(f.sealed, "new-1");
    }
}

#[tokio::test]
async fn webhook_history_retention_keeps_what_is_still_in_flight() {
    for (s, dev, prod) in bootstrapped().await {
        s.create_webhook_endpoint(&NewWebhookEndpoint {
            id: "ep",
            environment_id: &dev.id,
            flavor: "berth",
            url: "https://example.test/h",
            description: None,
            filters: &[EventFilter {
                pattern: "*".into(),
                prefix: Some(String::new()),
            }],
            connection_ids: None,
            secret_sealed: "sealed",
            vessel_key_sealed: None,
            disabled: false,
            now: 1,
        })
        .await
        .unwrap();
        let events = [
            ("e-done", &dev, 100),
            ("e-dead", &dev, 100),
            ("e-retry", &dev, 100),
            ("e-new", &dev, 5000),
            ("e-nomsg", &prod, 100),
        ];
        for (id, env, at) in events {
            s.insert_event(&NewEvent {
                id,
                environment_id: &env.id,
                connection_id: None,
                event_type: "connection.created",
                payload: "{}",
                created_at: at,
            })
            .await
            .unwrap();
        }
        let claimed = s
            .claim_webhook_messages(200, 60_000, 10, &[])
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3, "the old messages are due");
        let results: Vec<AttemptResult> = claimed
            .iter()
            .map(|m| AttemptResult {
                message_seq: m.seq,
                environment_id: m.environment_id.clone(),
                endpoint_id: m.endpoint_id.clone(),
                event_id: m.event_id.clone(),
                attempted_at: 200,
                replay: false,
                success: m.event_id == "e-done",
                status_code: Some(if m.event_id == "e-done" { 200 } else { 500 }),
                latency_ms: 1,
                error: None,
                response_excerpt: None,
                attempts: 1,
                next_attempt_at: (m.event_id == "e-retry").then_some(10_000),
            })
            .collect();
        s.record_webhook_attempts(&results).await.unwrap();

        // Batches of one row: every statement loops until it is done.
        assert_eq!(s.purge_webhook_history(1000, 1).await.unwrap(), 3 + 2 + 3);
        assert_eq!(s.purge_webhook_history(1000, 1).await.unwrap(), 0);
        let left = s
            .list_webhook_messages(
                &dev.id,
                &MessageFilter {
                    endpoint_id: None,
                    state: None,
                    event_id: None,
                    before_seq: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        let mut ids: Vec<&str> = left.iter().map(|m| m.event_id.as_str()).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["e-new", "e-retry"],
            "unfinished and recent messages stay"
        );
        let ids: Vec<String> = events.iter().map(|e| e.0.to_string()).collect();
        let mut kept: Vec<String> = s
            .events_by_ids(&ids)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            ["e-new", "e-retry"],
            "events of live messages and recent ones stay"
        );
    }
}

#[tokio::test]
async fn expired_sessions_are_cleaned_but_exchanged_ones_kept() {
    for (s, dev, _) in bootstrapped().await {
        session(&s, &dev.id, "old", 5).await;
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        s.exchange_session("s1", "ah", 6).await.unwrap().unwrap();
        assert_eq!(s.delete_expired_sessions(i64::MAX).await.unwrap(), 1);
        assert!(s.session_by_token_hash("hash-old").await.unwrap().is_none());
        assert!(s.session_by_token_hash("hash-s1").await.unwrap().is_some());
        s.ping().await.unwrap();
    }
}

fn log_row(env: &str, label: &str, conn: &str, at: i64, status: i32, layer: &str) -> RequestLog {
    RequestLog {
        id: 0,
        environment_id: env.into(),
        connection_id: Some(conn.into()),
        integration_id: "hubspot".into(),
        created_at: at,
        method: "GET".into(),
        path: format!("/{label}"),
        status,
        latency_ms: 12,
        request_bytes: Some(0),
        response_bytes: None,
        retries: 1,
        layer: layer.into(),
        error: None,
    }
}

/// A filter every call matches, `limit` a page.
fn every_call(limit: i64) -> RequestLogFilter<'static> {
    RequestLogFilter {
        connection_id: None,
        status: (0, 1000),
        layer: None,
        time: (i64::MIN, i64::MAX),
        before: None,
        limit,
    }
}

#[tokio::test]
async fn request_logs_filter_page_and_purge() {
    for (s, dev, prod) in bootstrapped().await {
        let mut rows = Vec::new();
        for i in 0..10 {
            let status = if i % 2 == 0 { 200 } else { 502 };
            let layer = if i % 2 == 0 { "provider" } else { "network" };
            rows.push(log_row(
                &dev.id,
                &format!("l{i:02}"),
                if i < 5 { "c1" } else { "c2" },
                1000 + i / 2,
                status,
                layer,
            ));
        }
        rows.push(log_row(&prod.id, "other", "c1", 1000, 200, "provider"));
        s.insert_request_logs(&rows).await.unwrap();
        s.insert_request_logs(&[]).await.unwrap();
        let all = every_call(100);
        let page = s.list_request_logs(&dev.id, &all).await.unwrap();
        assert_eq!(page.len(), 10, "scoped to the environment");
        assert_eq!(page[0].path, "/l09", "newest first");
        assert_eq!(page[0].retries, 1);
        // Keyset paging over equal timestamps loses and repeats nothing.
        let mut seen = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let f = RequestLogFilter {
                before,
                limit: 3,
                ..all.clone()
            };
            let p = s.list_request_logs(&dev.id, &f).await.unwrap();
            if p.is_empty() {
                break;
            }
            before = Some(p.last().unwrap().id);
            seen.extend(p.into_iter().map(|r| r.id));
        }
        let expected: Vec<i64> = page.iter().map(|r| r.id).collect();
        assert_eq!(seen, expected);
        let f = RequestLogFilter {
            connection_id: Some("c1"),
            status: (500, 600),
            ..all.clone()
        };
        let p = s.list_request_logs(&dev.id, &f).await.unwrap();
        assert_eq!(
            p.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["/l03", "/l01"]
        );
        let f = RequestLogFilter {
            layer: Some("network"),
            time: (1001, 1003),
            ..all.clone()
        };
        assert_eq!(s.list_request_logs(&dev.id, &f).await.unwrap().len(), 2);
        // Every call made before the cut-off, in every environment: four
        // of c1's (a block the cut goes through keeps its newer call and
        // that call's id) and prod's.
        assert_eq!(s.purge_request_logs(1002).await.unwrap(), 5);
        let left = s.list_request_logs(&dev.id, &all).await.unwrap();
        assert_eq!(
            left.iter().map(|r| r.id).collect::<Vec<_>>(),
            expected[..6],
            "the calls left keep their ids"
        );
        assert_eq!(s.purge_request_logs(1002).await.unwrap(), 0);
        assert_eq!(s.purge_request_logs(i64::MAX).await.unwrap(), 6);
        assert!(s.list_request_logs(&dev.id, &all).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn request_logs_page_across_blocks_in_call_order() {
    for (s, dev, _prod) in bootstrapped().await {
        // More calls of one connection than a block holds, interleaved
        // with another connection's, over two writes.
        let mut n = 0;
        for _ in 0..2 {
            let mut rows = Vec::new();
            for _ in 0..1300 {
                let conn = if n % 7 == 0 { "c2" } else { "c1" };
                let status = if n % 5 == 0 { 429 } else { 200 };
                rows.push(log_row(
                    &dev.id,
                    &format!("{n}"),
                    conn,
                    5000 + n,
                    status,
                    "provider",
                ));
                n += 1;
            }
            s.insert_request_logs(&rows).await.unwrap();
        }
        let all = every_call(500);
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = s
                .list_request_logs(
                    &dev.id,
                    &RequestLogFilter {
                        before,
                        ..all.clone()
                    },
                )
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            got.extend(page);
        }
        assert_eq!(got.len(), 2600);
        assert!(
            got.windows(2).all(|w| w[0].id > w[1].id),
            "ids strictly fall"
        );
        // Within a connection, newest first is call order reversed.
        let c1: Vec<i64> = got
            .iter()
            .filter(|r| r.connection_id.as_deref() == Some("c1"))
            .map(|r| r.created_at)
            .collect();
        assert!(c1.windows(2).all(|w| w[0] > w[1]));
        let limited = s
            .list_request_logs(
                &dev.id,
                &RequestLogFilter {
                    connection_id: Some("c2"),
                    status: (400, 500),
                    time: (5000, 5700),
                    ..all.clone()
                },
            )
            .await
            .unwrap();
        let expect = (0..700).filter(|n| n % 7 == 0 && n % 5 == 0).count();
        assert_eq!(limited.len(), expect);
        assert!(
            limited
                .iter()
                .all(|r| r.status == 429 && r.created_at < 5700)
        );
    }
}

fn job<'a>(id: &'a str, dedup: Option<&'a str>, priority: i32, run_at: i64) -> NewJob<'a> {
    NewJob {
        id,
        kind: "sync",
        environment_id: None,
        connection_id: None,
        dedup_key: dedup,
        payload: "{}",
        priority,
        max_attempts: 3,
        run_at,
    }
}

#[tokio::test]
async fn job_queue_dedups_leases_retries_and_kills() {
    for s in backends().await {
        // Creating a connection owes its initial sync in the same transaction.
        // (Covered by the connection tests; here the queue itself.)
        assert!(
            s.enqueue_job(&job("j1", Some("k"), 0, 100), 1)
                .await
                .unwrap()
        );
        assert!(
            !s.enqueue_job(&job("j2", Some("k"), 0, 100), 1)
                .await
                .unwrap(),
            "one queued job per de-duplication key"
        );
        assert!(s.enqueue_job(&job("j3", None, 5, 100), 1).await.unwrap());
        assert!(
            s.claim_jobs(&["sync"], "a", 99, 1000, 10)
                .await
                .unwrap()
                .is_empty(),
            "not due yet"
        );
        let got = s.claim_jobs(&["sync"], "a", 100, 1000, 1).await.unwrap();
        assert_eq!(got[0].id, "j3", "higher priority first");
        assert_eq!(got[0].attempts, 1);
        let got = s.claim_jobs(&["sync"], "b", 100, 1000, 10).await.unwrap();
        assert_eq!(
            got.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["j1"]
        );
        assert!(
            s.claim_jobs(&["other"], "b", 100, 1000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // While running, the key still de-duplicates.
        assert!(
            !s.enqueue_job(&job("j4", Some("k"), 0, 100), 1)
                .await
                .unwrap()
        );
        // A heartbeat extends the lease; a lost lease is re-claimed by another.
        assert!(s.heartbeat_job("j1", "b", 5000).await.unwrap());
        assert!(
            s.claim_jobs(&["sync"], "c", 1050, 1000, 10)
                .await
                .unwrap()
                .is_empty(),
            "j3 leased till 1100, j1 till 5000"
        );
        // j3's lease (till 1100) expired: another worker takes it over.
        let got = s.claim_jobs(&["sync"], "c", 1200, 1000, 10).await.unwrap();
        assert_eq!(
            got.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["j3"]
        );
        assert_eq!(got[0].attempts, 2);
        assert!(
            !s.complete_job("j3", "a", 1300).await.unwrap(),
            "the old owner lost it"
        );
        assert!(s.complete_job("j3", "c", 1300).await.unwrap());
        // Failure: back in the queue later, then dead with the last error.
        assert!(
            s.fail_job("j1", "b", "boom", Some(3000), 1300)
                .await
                .unwrap()
        );
        assert!(
            s.claim_jobs(&["sync"], "b", 2999, 1000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let got = s.claim_jobs(&["sync"], "b", 3000, 1000, 10).await.unwrap();
        assert_eq!(got[0].last_error.as_deref(), Some("boom"));
        assert!(
            s.fail_job("j1", "b", "boom again", None, 3100)
                .await
                .unwrap()
        );
        let j = s.get_job("j1").await.unwrap().unwrap();
        assert_eq!(
            (j.state.as_str(), j.last_error.as_deref()),
            ("dead", Some("boom again"))
        );
        // Once done or dead, the key is free again.
        assert!(
            s.enqueue_job(&job("j5", Some("k"), 0, 100), 1)
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn pages_write_records_checkpoint_and_events_together() {
    for (s, dev, _) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        let queued = s.claim_jobs(&["sync"], "w", 20, 1000, 10).await.unwrap();
        assert_eq!(
            queued.len(),
            1,
            "the new connection's initial sync was queued with it"
        );
        s.ensure_sync_states(&dev.id, "c1", &["contacts"], 20)
            .await
            .unwrap();
        s.start_sync_run("c1", "contacts", "run1", None, 20)
            .await
            .unwrap();
        let rec = |n: &str, hash: &str, deleted: bool| RecordWrite {
            native_id: n.into(),
            uid: format!("uid{n}"),
            hash: hash.into(),
            data: "{}".into(),
            native: "{}".into(),
            created_time: Some(1),
            modified_time: Some(50),
            deleted,
            event_id: format!("e-{n}-{hash}-{deleted}"),
            event_payload: "{}".into(),
            links: vec![],
            keys: vec![],
        };
        let page = |records: &'static [RecordWrite],
                    run: &'static str,
                    prefix: Option<&'static str>,
                    next: Option<&'static str>| PageWrite {
            environment_id: "",
            connection_id: "c1",
            object: "contacts",
            run_id: Some(run),
            records,
            event_prefix: prefix,
            next_cursor: next,
            high_water: Some(50),
            total: None,
            now: 30,
            lease: None,
            refresh_links: false,
            defer_keys: false,
        };
        let p1: &'static [RecordWrite] =
            Box::leak(Box::new([rec("1", "a", false), rec("2", "a", false)]));
        let mut w = page(p1, "run1", Some("object.crm.contacts"), Some("cur2"));
        w.environment_id = Box::leak(dev.id.clone().into_boxed_str());
        let v0 = s.record_version("c1", "contacts");
        let out = s.apply_page(&w).await.unwrap();
        assert_eq!((out.created, out.updated, out.unchanged), (2, 0, 0));
        let v1 = s.record_version("c1", "contacts");
        assert!(v1 > v0, "a page that changed records moves the version");
        assert_eq!(
            s.record_version("c1", "deals"),
            v0,
            "other objects keep theirs"
        );
        // Re-applying the same page (a crash before the next checkpoint) changes nothing.
        let out = s.apply_page(&w).await.unwrap();
        assert_eq!((out.created, out.updated, out.unchanged), (0, 0, 2));
        assert_eq!(s.record_version("c1", "contacts"), v1, "nothing changed");
        let st = s.sync_states("c1").await.unwrap();
        assert_eq!(st[0].cursor.as_deref(), Some("cur2"));
        assert_eq!(st[0].high_water, Some(50));
        // Changed hash → updated; tombstone → deleted.
        let p2: &'static [RecordWrite] =
            Box::leak(Box::new([rec("1", "b", false), rec("2", "a", true)]));
        let mut w2 = page(p2, "run1", Some("object.crm.contacts"), None);
        w2.environment_id = w.environment_id;
        let out = s.apply_page(&w2).await.unwrap();
        assert_eq!((out.updated, out.deleted), (1, 1));
        let v2 = s.record_version("c1", "contacts");
        assert!(v2 > v1);
        let events: Vec<String> = s
            .list_events(&dev.id, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        for t in [
            "object.crm.contacts.created",
            "object.crm.contacts.updated",
            "object.crm.contacts.deleted",
        ] {
            assert!(events.iter().any(|e| e == t), "{t} in {events:?}");
        }
        assert_eq!(
            events
                .iter()
                .filter(|e| *e == "object.crm.contacts.created")
                .count(),
            2
        );
        let live = s
            .list_records(&RecordPage {
                environment_id: &dev.id,
                connection_id: "c1",
                object: "contacts",
                after_seq: 0,
                limit: 10,
                include_deleted: false,
            })
            .await
            .unwrap();
        assert_eq!(
            live.iter()
                .map(|r| r.native_id.as_str())
                .collect::<Vec<_>>(),
            ["1"]
        );
        // Another environment sees nothing.
        let other = s
            .list_records(&RecordPage {
                environment_id: "v_env_production",
                connection_id: "c1",
                object: "contacts",
                after_seq: 0,
                limit: 10,
                include_deleted: true,
            })
            .await
            .unwrap();
        assert!(other.is_empty());
        // A run that was taken over writes nothing.
        s.finish_sync_run("c1", "contacts", "incremental", true, 40)
            .await
            .unwrap();
        let st = s.sync_states("c1").await.unwrap();
        let st = st.iter().find(|s| s.object == "contacts").unwrap();
        assert_eq!(st.full_at, Some(40), "a full run records when it ended");
        s.start_sync_run("c1", "contacts", "run2", Some(50), 41)
            .await
            .unwrap();
        assert!(matches!(s.apply_page(&w).await, Err(StoreError::RunFenced)));
        // Deleting the connection erases its records and sync state.
        s.delete_connection(
            &dev.id,
            "c1",
            &NewEvent {
                id: "del",
                environment_id: &dev.id,
                connection_id: Some("c1"),
                event_type: "connection.deleted",
                payload: "{}",
                created_at: 50,
            },
            50,
        )
        .await
        .unwrap();
        assert!(
            s.record_version("c1", "deals") > v2,
            "deleting a connection moves every object's version"
        );
        assert!(s.sync_states("c1").await.unwrap().is_empty());
        let left = s
            .list_records(&RecordPage {
                environment_id: &dev.id,
                connection_id: "c1",
                object: "contacts",
                after_seq: 0,
                limit: 10,
                include_deleted: true,
            })
            .await
            .unwrap();
        assert!(left.is_empty());
    }
}

#[tokio::test]
async fn reverse_links_follow_their_sources() {
    for (s, dev, _) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        let link = |target: &str| RecordLink {
            object: "contacts",
            native_id: target.into(),
            key: "noteIds",
        };
        let note = |n: &str, hash: &str, deleted: bool, links: Vec<RecordLink>| RecordWrite {
            native_id: n.into(),
            uid: format!("uid{n}"),
            hash: hash.into(),
            data: "{}".into(),
            native: "{}".into(),
            created_time: Some(1),
            modified_time: Some(50),
            deleted,
            event_id: format!("e-{n}-{hash}"),
            event_payload: "{}".into(),
            links,
            keys: vec![],
        };
        let apply = |records: Vec<RecordWrite>, refresh: bool| {
            let s = s.clone();
            let env = dev.id.clone();
            async move {
                s.apply_page(&PageWrite {
                    environment_id: &env,
                    connection_id: "c1",
                    object: "notes",
                    run_id: None,
                    records: &records,
                    event_prefix: None,
                    next_cursor: None,
                    high_water: None,
                    total: None,
                    now: 30,
                    lease: None,
                    refresh_links: refresh,
                    defer_keys: false,
                })
                .await
                .unwrap()
            }
        };
        let v0 = s.record_version("c1", "contacts");
        apply(
            vec![
                note("n1", "a", false, vec![link("k1"), link("k2")]),
                note("n2", "a", false, vec![link("k1")]),
            ],
            false,
        )
        .await;
        assert!(
            s.record_version("c1", "contacts") > v0,
            "the targets render differently"
        );
        let got = s
            .reverse_links("c1", "contacts", &["k1", "k2", "k3"])
            .await
            .unwrap();
        assert_eq!(
            got,
            [
                ("k1".into(), "noteIds".into(), "n1".into()),
                ("k2".into(), "noteIds".into(), "n1".into()),
                ("k1".into(), "noteIds".into(), "n2".into()),
            ]
        );
        // A changed source replaces its links; an unchanged one keeps them
        // unless the page refreshes links.
        apply(vec![note("n1", "b", false, vec![link("k3")])], false).await;
        apply(vec![note("n2", "a", false, vec![])], false).await;
        let got = s
            .reverse_links("c1", "contacts", &["k1", "k2", "k3"])
            .await
            .unwrap();
        assert_eq!(
            got,
            [
                ("k3".into(), "noteIds".into(), "n1".into()),
                ("k1".into(), "noteIds".into(), "n2".into()),
            ]
        );
        apply(vec![note("n2", "a", false, vec![])], true).await;
        let got = s
            .reverse_links("c1", "contacts", &["k1", "k3"])
            .await
            .unwrap();
        assert_eq!(got, [("k3".into(), "noteIds".into(), "n1".into())]);
        // A deleted source (tombstone, or marked deleted by a sweep) links
        // nothing.
        s.mark_records_deleted("c1", "notes", &["n1".into()], &[], 40)
            .await
            .unwrap();
        assert!(
            s.reverse_links("c1", "contacts", &["k3"])
                .await
                .unwrap()
                .is_empty()
        );
        apply(vec![note("n1", "c", false, vec![link("k2")])], false).await;
        assert_eq!(
            s.reverse_links("c1", "contacts", &["k2"])
                .await
                .unwrap()
                .len(),
            1
        );
        apply(vec![note("n1", "c", true, vec![link("k2")])], false).await;
        assert!(
            s.reverse_links("c1", "contacts", &["k2"])
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn an_older_sync_page_never_overwrites_a_newer_write() {
    for (s, dev, _) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        s.ensure_sync_states(&dev.id, "c1", &["contacts"], 20)
            .await
            .unwrap();
        s.start_sync_run("c1", "contacts", "run1", None, 20)
            .await
            .unwrap();
        let rec = |hash: &str, modified: i64| RecordWrite {
            native_id: "n1".into(),
            uid: "uid-n1".into(),
            hash: hash.into(),
            data: format!("{{\"v\":\"{hash}\"}}"),
            native: "{}".into(),
            created_time: Some(1),
            modified_time: Some(modified),
            deleted: false,
            event_id: format!("e-{hash}"),
            event_payload: "{}".into(),
            links: vec![],
            keys: vec![],
        };
        let write = |r: RecordWrite, run: Option<&'static str>| {
            let s = s.clone();
            let env = dev.id.clone();
            async move {
                s.apply_page(&PageWrite {
                    environment_id: &env,
                    connection_id: "c1",
                    object: "contacts",
                    run_id: run,
                    records: std::slice::from_ref(&r),
                    event_prefix: None,
                    next_cursor: None,
                    high_water: None,
                    total: None,
                    now: 30,
                    lease: None,
                    refresh_links: false,
                    defer_keys: false,
                })
                .await
                .unwrap()
            }
        };
        write(rec("old", 50), Some("run1")).await;
        // An API write re-reads the record as modified at 100 ...
        write(rec("api", 100), None).await;
        // ... then a page the run fetched before it (modified 50) commits.
        let out = write(rec("old", 50), Some("run1")).await;
        assert_eq!((out.updated, out.unchanged), (0, 1));
        let got = s
            .records_by_ids(&dev.id, "c1", "contacts", &["n1".to_string()], true)
            .await
            .unwrap();
        assert_eq!(got[0].hash, "api", "the newer write stays");
        // A page with a newer version still lands.
        let out = write(rec("new", 150), Some("run1")).await;
        assert_eq!(out.updated, 1);
    }
}

#[tokio::test]
async fn sync_states_and_schedules_of_many_connections() {
    for (s, dev, _) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        connect(&s, &dev.id, "s2", "c2", None).await.unwrap();
        s.ensure_sync_states(&dev.id, "c1", &["contacts", "deals"], 20)
            .await
            .unwrap();
        s.ensure_sync_states(&dev.id, "c2", &["contacts"], 20)
            .await
            .unwrap();
        let states = s.sync_states_of(&["c1", "c2", "nope"]).await.unwrap();
        let got: Vec<(&str, &str)> = states
            .iter()
            .map(|st| (st.connection_id.as_str(), st.object.as_str()))
            .collect();
        assert_eq!(
            got,
            [("c1", "contacts"), ("c1", "deals"), ("c2", "contacts")]
        );
        let mut schedules = s.sync_schedules_of(&["c1", "c2"]).await.unwrap();
        schedules.sort();
        let one = s.sync_schedule("c1").await.unwrap();
        assert_eq!(schedules.len(), 2);
        assert_eq!((schedules[0].1, schedules[0].2), one);
    }
}

#[tokio::test]
async fn the_filter_index_follows_every_write_and_backfills() {
    for (s, dev, _) in bootstrapped().await {
        connect(&s, &dev.id, "s1", "c1", None).await.unwrap();
        s.ensure_sync_states(&dev.id, "c1", &["contacts"], 20)
            .await
            .unwrap();
        assert!(
            s.keys_ready("c1", "contacts").await.unwrap(),
            "new objects start indexed"
        );
        assert!(
            !s.keys_ready("c1", "deals").await.unwrap(),
            "no state: not indexed"
        );
        let rec = |n: &str, email: &str, created: i64, deleted: bool| RecordWrite {
            native_id: n.into(),
            uid: format!("uid-{n}"),
            hash: format!("{email}{deleted}"),
            data: "{}".into(),
            native: "{}".into(),
            created_time: Some(created),
            modified_time: Some(created),
            deleted,
            event_id: format!("e-{n}-{email}"),
            event_payload: "{}".into(),
            links: vec![],
            keys: vec![("email", email.to_string())],
        };
        let write = |records: Vec<RecordWrite>| {
            let s = s.clone();
            let env = dev.id.clone();
            async move {
                s.apply_page(&PageWrite {
                    environment_id: &env,
                    connection_id: "c1",
                    object: "contacts",
                    run_id: None,
                    records: &records,
                    event_prefix: None,
                    next_cursor: None,
                    high_water: None,
                    total: None,
                    now: 30,
                    lease: None,
                    refresh_links: false,
                    defer_keys: false,
                })
                .await
                .unwrap()
            }
        };
        let emails = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let probe = |values: Vec<String>| {
            let s = s.clone();
            async move {
                s.probe_keys(
                    "c1",
                    "contacts",
                    &KeyProbe::Values {
                        key: "email",
                        values: &values,
                        linked_from: None,
                    },
                    0,
                    100,
                )
                .await
                .unwrap()
                .unwrap()
            }
        };
        write(vec![
            rec("1", "a@x", 10, false),
            rec("2", "b@x", 20, false),
            rec("3", "ab@x", 30, false),
        ])
        .await;
        let all = s
            .list_records(&RecordPage {
                environment_id: &dev.id,
                connection_id: "c1",
                object: "contacts",
                after_seq: 0,
                limit: 10,
                include_deleted: false,
            })
            .await
            .unwrap();
        let seq: std::collections::HashMap<String, i64> =
            all.iter().map(|r| (r.native_id.clone(), r.seq)).collect();
        assert_eq!(probe(emails(&["a@x"])).await, vec![seq["1"]]);
        assert_eq!(
            probe(emails(&["b@x", "a@x", "zz"])).await,
            vec![seq["1"], seq["2"]]
        );
        let range = s
            .probe_keys(
                "c1",
                "contacts",
                &KeyProbe::Range {
                    key: "email",
                    lo: "a",
                    hi: "b",
                },
                0,
                100,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(range, vec![seq["1"], seq["3"]], "a prefix is a range");
        let after = s
            .probe_keys(
                "c1",
                "contacts",
                &KeyProbe::Range {
                    key: "email",
                    lo: "a",
                    hi: "b",
                },
                seq["1"],
                100,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after, vec![seq["3"]], "only records after the position");
        let time = s
            .probe_keys(
                "c1",
                "contacts",
                &KeyProbe::Time {
                    modified: false,
                    lo: Some(15),
                    hi: Some(30),
                },
                0,
                100,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(time, vec![seq["2"], seq["3"]]);
        let capped = s
            .probe_keys(
                "c1",
                "contacts",
                &KeyProbe::Range {
                    key: "email",
                    lo: "a",
                    hi: "c",
                },
                0,
                2,
            )
            .await
            .unwrap();
        assert_eq!(capped, None, "more candidates than the cap: not selective");
        // An update replaces the entries; a tombstone and a delete drop them.
        write(vec![rec("1", "c@x", 10, false), rec("2", "b@x", 20, true)]).await;
        assert!(probe(emails(&["a@x"])).await.is_empty());
        assert_eq!(probe(emails(&["c@x"])).await, vec![seq["1"]]);
        assert!(probe(emails(&["b@x"])).await.is_empty());
        s.mark_records_deleted("c1", "contacts", &["1".to_string()], &[], 40)
            .await
            .unwrap();
        assert!(probe(emails(&["c@x"])).await.is_empty());
        // A build rewrites live records' entries whole.
        let derive = |r: &StoredRecord| vec![("email", format!("new-{}", r.native_id))];
        s.build_record_keys("c1", "contacts", &derive)
            .await
            .unwrap();
        assert_eq!(probe(emails(&["new-3"])).await, vec![seq["3"]]);
        assert!(
            probe(emails(&["ab@x"])).await.is_empty(),
            "old entries replaced"
        );
        assert!(
            probe(emails(&["new-1"])).await.is_empty(),
            "deleted records get none"
        );
        assert!(s.objects_missing_keys().await.unwrap().is_empty());
        // A backfill page defers its entries and marks the object out of
        // date; a build brings it back.
        let mut deferred = rec("4", "d@x", 40, false);
        deferred.hash = "d".into();
        s.apply_page(&PageWrite {
            environment_id: &dev.id,
            connection_id: "c1",
            object: "contacts",
            run_id: None,
            records: std::slice::from_ref(&deferred),
            event_prefix: None,
            next_cursor: None,
            high_water: None,
            total: None,
            now: 41,
            lease: None,
            refresh_links: false,
            defer_keys: true,
        })
        .await
        .unwrap();
        assert!(!s.keys_ready("c1", "contacts").await.unwrap());
        assert!(
            probe(emails(&["d@x"])).await.is_empty(),
            "nothing written for it yet"
        );
        let derive = |r: &StoredRecord| {
            vec![(
                "email",
                if r.native_id == "4" {
                    "d@x".to_string()
                } else {
                    format!("new-{}", r.native_id)
                },
            )]
        };
        s.build_record_keys("c1", "contacts", &derive)
            .await
            .unwrap();
        assert!(s.keys_ready("c1", "contacts").await.unwrap());
        assert_eq!(probe(emails(&["d@x"])).await.len(), 1);
        let got = s
            .records_by_seqs(&dev.id, "c1", "contacts", &[seq["1"], seq["3"]])
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "only live records");
        // Deleting the connection takes its entries along.
        s.delete_connection(
            &dev.id,
            "c1",
            &NewEvent {
                id: "evt-del",
                environment_id: &dev.id,
                connection_id: Some("c1"),
                event_type: "connection.deleted",
                payload: "{}",
                created_at: 50,
            },
            50,
        )
        .await
        .unwrap();
        assert!(probe(emails(&["new-3"])).await.is_empty());
    }
}

#[tokio::test]
async fn sandbox_accounts_seed_once_and_hand_out_ids_once() {
    for s in backends().await {
        let rec = |id: &str, updated: i64| SandboxRecord {
            object: "contacts".into(),
            id: id.into(),
            created_at: 1,
            updated_at: updated,
            deleted_at: None,
            fields: format!("{{\"n\":\"{id}\"}}"),
        };
        let seed = || (1002, vec![rec("1001", 10), rec("999", 10), rec("1002", 5)]);
        // Two nodes seeding at once: one seed lands.
        let (a, b) = tokio::join!(
            s.sandbox_account("acct", seed, 1),
            s.sandbox_account("acct", seed, 1)
        );
        assert_eq!((a.unwrap(), b.unwrap()), (None, None));
        let page = |after: Option<(i64, &'static str)>| {
            let s = s.clone();
            async move {
                s.sandbox_list(&SandboxPage {
                    account_id: "acct",
                    object: "contacts",
                    after,
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
            }
        };
        // (updated_at, id as a number) order.
        assert_eq!(page(None).await, ["1002", "999", "1001"]);
        assert_eq!(page(Some((10, "999"))).await, ["1001"]);
        let ids: Vec<String> = futures_ids(&s).await;
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 20, "every create gets its own id: {ids:?}");
        assert!(ids.iter().all(|i| i.parse::<i64>().unwrap() > 1002));
        let changed = s
            .sandbox_update("acct", "contacts", "999", 5, false, |f| {
                f.replace("999", "x")
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (changed.fields.as_str(), changed.updated_at),
            ("{\"n\":\"x\"}", 11)
        );
        s.sandbox_update("acct", "contacts", "999", 20, true, str::to_string)
            .await
            .unwrap()
            .unwrap();
        assert!(
            s.sandbox_update("acct", "contacts", "999", 30, false, str::to_string)
                .await
                .unwrap()
                .is_none(),
            "a deleted record is not changed"
        );
        assert_eq!(
            s.sandbox_get("acct", "contacts", "999")
                .await
                .unwrap()
                .unwrap()
                .deleted_at,
            Some(20)
        );
        s.sandbox_set_rate_limit("acct", Some(7)).await.unwrap();
        assert_eq!(s.sandbox_account("acct", seed, 2).await.unwrap(), Some(7));
    }
}

/// Twenty creates at once on one account; their ids.
async fn futures_ids(s: &Store) -> Vec<String> {
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.sandbox_create("acct", "contacts", "{}", 3)
                .await
                .unwrap()
                .id
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
