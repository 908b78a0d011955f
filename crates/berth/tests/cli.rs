//! The real binary, as an operator runs it: `serve` on a random port, the
//! CLI against the same store while it runs, graceful shutdown on SIGTERM,
//! key rotation, and a scan of everything logged for the secrets used.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn berth(data_dir: &Path, db: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--database-url")
        .arg(db)
        .env_remove("BERTH_MASTER_KEY")
        .output()
        .unwrap()
}

/// A child process killed when dropped, so a failing test leaves no
/// server running behind it.
struct Guarded(Child);

impl std::ops::Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    child: Guarded,
    base: String,
    banner: String,
    stdout_rest: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn serve(data_dir: &Path, db: &str) -> Server {
    serve_with(data_dir, db, &[])
}

fn serve_with(data_dir: &Path, db: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .arg("--database-url")
        .arg(db)
        .args(extra)
        .env("BERTH_LOG", "debug")
        .env_remove("BERTH_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    let base = loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("berth exited before listening: {}", stderr.join().unwrap());
        }
        if let Some(addr) = line.trim().strip_prefix("Listening on ") {
            break addr.to_string();
        }
        banner.push_str(&line);
    };
    let stdout_rest = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    Server {
        child: Guarded(child),
        base,
        banner,
        stdout_rest,
        stderr,
    }
}

impl Server {
    /// SIGTERM, wait, and return (exit ok, stdout after the banner, stderr).
    fn stop(mut self) -> (bool, String, String) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        (
            status.success(),
            self.stdout_rest.join().unwrap(),
            self.stderr.join().unwrap(),
        )
    }
}

async fn post(base: &str, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The v2 connect flow through `base` (session token, `/auth/start` with
/// `start`, exchange): (connection id, access token).
async fn connect(base: &str, api_token: &str, start: Value) -> (String, String) {
    let (s, b) = post(
        base,
        "/auth/session-token",
        &[("x-vessel-api-token", api_token)],
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let st = b["result"]["sessionToken"].as_str().unwrap().to_string();
    let (s, b) = post(
        base,
        "/auth/start",
        &[("x-vessel-session-token", &st)],
        start,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = post(
        base,
        "/auth/access-token",
        &[
            ("x-vessel-api-token", api_token),
            ("x-vessel-session-token", &st),
        ],
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    (
        b["result"]["connectionId"].as_str().unwrap().to_string(),
        b["result"]["accessToken"].as_str().unwrap().to_string(),
    )
}

/// A HubSpot fake without rate limits whose list pages each take `delay`,
/// so a kill lands inside a sync: (fake, base URL).
async fn slow_hubspot(
    token: &str,
    contacts: usize,
    others: usize,
    engagements: usize,
    delay_ms: u64,
) -> (berth_fakes::hubspot::HubSpot, String) {
    let hs = berth_fakes::hubspot::HubSpot::new(berth_fakes::hubspot::Options {
        tokens: vec![token.into()],
        contacts,
        companies: others,
        deals: others,
        engagements,
        history_days: 365,
        burst_per_10s: 0,
        search_per_sec: 0,
        ..Default::default()
    });
    hs.set_page_delay(std::time::Duration::from_millis(delay_ms));
    let base = berth_fakes::serve(hs.router()).await.unwrap();
    (hs, base)
}

/// A providers file in `data` pointing HubSpot at `base`; its path.
fn hubspot_providers_file(data: &Path, base: &str) -> String {
    let providers = data.join("providers.toml");
    std::fs::write(
        &providers,
        format!("[integrations.hubspot]\nbase_url = \"{base}\"\nrate_limit = {{ requests = 10000, per_seconds = 10, scope = \"account\" }}\n"),
    )
    .unwrap();
    providers.to_str().unwrap().to_string()
}

/// The native ids of every record of a v1 list, through every page.
async fn v1_native_ids(base: &str, api_token: &str, access: &str, plural: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r: Value = client
            .get(format!(
                "{base}/crm/{plural}?accessToken={access}&limit=100&cursor={cursor}"
            ))
            .header("vessel-api-token", api_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in r[plural].as_array().unwrap() {
            seen.push(c["nativeId"].as_str().unwrap().to_string());
        }
        match r["nextPageCursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return seen,
        }
    }
}

async fn database_url(dir: &Path) -> String {
    match std::env::var("BERTH_TEST_BACKEND").as_deref() {
        Ok("postgres") => {
            let admin = std::env::var("BERTH_TEST_POSTGRES_URL").unwrap();
            berth_store::testing::fresh_postgres_database(&admin)
                .await
                .unwrap()
        }
        _ => format!("sqlite://{}?mode=rwc", dir.join("berth.db").display()),
    }
}

#[tokio::test]
async fn operator_flow_with_the_real_binary_leaks_no_secret_into_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = database_url(data).await;

    let migrate = berth(data, &db, &["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let server = serve(data, &db);
    let initial = server
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("berth_dev_"))
        .expect("first start prints a development token")
        .to_string();
    assert!(server.banner.contains("DEVELOPMENT API token"));
    let base = server.base.clone();

    // CLI on the same store while the server runs; stdout is only the token
    let out = berth(
        data,
        &db,
        &[
            "api-token",
            "create",
            "--environment",
            "production",
            "--name",
            "ci",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let prod = stdout.trim().to_string();
    assert_eq!(stdout, format!("{prod}\n"));
    assert!(prod.starts_with("berth_prod_") && prod.len() == "berth_prod_".len() + 64);
    let list = berth(data, &db, &["api-token", "list"]);
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(
        listing.contains("production")
            && listing.contains("ci")
            && listing.contains("initial token")
    );
    assert!(
        !listing.contains(&prod) && !listing.contains(&initial),
        "list never shows secrets"
    );

    // the documented flow over HTTP
    let api_key = "sk_sandbox_SECRET_4f1c2a9e";
    let (s, r) = post(
        &base,
        "/auth/session-token",
        &[("x-vessel-api-token", &prod)],
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let session = r["result"]["sessionToken"].as_str().unwrap().to_string();
    let (s, r) = post(
        &base,
        "/auth/start",
        &[("x-vessel-session-token", &session)],
        json!({"integrationId": "sandbox", "answers": {"api-key": api_key}}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = post(
        &base,
        "/auth/access-token",
        &[
            ("x-vessel-api-token", &prod),
            ("x-vessel-session-token", &session),
        ],
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let access = r["result"]["accessToken"].as_str().unwrap().to_string();
    let conn = r["result"]["connectionId"].as_str().unwrap().to_string();
    // v1 carries tokens in the query string; it must not be logged either
    let link = reqwest::Client::new()
        .post(format!("{base}/link/token"))
        .header("vessel-api-token", &initial)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["linkToken"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, r) = post(
        &base,
        "/auth/start",
        &[("x-vessel-session-token", &link)],
        json!({"integrationId": "sandbox", "answers": {"api-key": api_key}}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let public = r["result"]["publicToken"].as_str().unwrap().to_string();
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/connection/connection?connectionId={conn}&accessToken={access}"
        ))
        .header("vessel-api-token", &prod)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // revocation through the CLI takes effect on the running server within
    // its hot-cache TTL (1 s)
    let prefix: String = prod.chars().take(16).collect();
    let out = berth(data, &db, &["api-token", "revoke", &prefix]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let (s, _) = post(
            &base,
            "/connections/list",
            &[("x-vessel-api-token", &prod)],
            json!({}),
        )
        .await;
        if s == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revoked token still accepted"
        );
        // Polling interval; the deadline decides.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = berth(
        data,
        &db,
        &["api-token", "revoke", "berth_nothing_like_this"],
    );
    assert!(!out.status.success());

    // A webhook endpoint: its signing secret is vaulted and re-sealed on rotation.
    let (status, hook) = post(
        &base,
        "/webhooks",
        &[("x-vessel-api-token", &initial)],
        json!({"url": "https://93.184.216.34/hooks", "event": "connection.*"}),
    )
    .await;
    assert_eq!(status, 200, "{hook}");
    let hook_secret = hook["result"]["secret"].as_str().unwrap().to_string();
    // An OAuth app: its client secret is vaulted and re-sealed on rotation.
    let oauth_secret = "cli-oauth-client-secret-value";
    let (status, oauth_app) = post(
        &base,
        "/auth/oauth-apps/create",
        &[("x-vessel-api-token", &initial)],
        json!({"integrationId": "hubspot", "clientId": "cli-client", "clientSecret": oauth_secret}),
    )
    .await;
    assert_eq!(status, 200, "{oauth_app}");

    let (ok, stdout_rest, logs) = server.stop();
    assert!(ok, "graceful exit on SIGTERM; logs:\n{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(logs.contains("/auth/start"), "requests are logged: {logs}");
    for secret in [
        initial.as_str(),
        &prod,
        &session,
        &access,
        &link,
        &public,
        api_key,
        &hook_secret,
        oauth_secret,
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the log: {}…",
            &secret[..12]
        );
        assert!(!stdout_rest.contains(secret));
    }
    let key_file = std::fs::read_to_string(data.join("master.key")).unwrap();
    let key_line = key_file.lines().find(|l| !l.starts_with('#')).unwrap();
    assert!(!logs.contains(key_line));

    // key rotation from the CLI, then a restart reads the re-sealed credentials
    let out = berth(data, &db, &["vault", "rotate-key", "--prune"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "re-encrypted 2 credential(s), 1 webhook endpoint(s) and 1 OAuth app secret(s)"
        ),
        "{err}"
    );
    let new_keys = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert!(!new_keys.contains(key_line), "old key pruned");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = serve(data, &db);
    assert!(
        !again.banner.contains("berth_dev_"),
        "the token is printed on first start only"
    );
    let (s, r) = post(
        &again.base,
        "/connections/list",
        &[("x-vessel-api-token", &initial)],
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["result"]["connections"].as_array().unwrap().len(), 1);
    // The OAuth app's secret opens under the new key alone: starting a
    // connect flow resolves the app and opens its secret.
    let (s, r) = post(
        &again.base,
        "/auth/session-token",
        &[("x-vessel-api-token", &initial)],
        json!({"integrationId": "hubspot"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let st = r["result"]["sessionToken"].as_str().unwrap().to_string();
    let (s, r) = post(
        &again.base,
        "/auth/start",
        &[("x-vessel-session-token", &st)],
        json!({"authType": "oauth2"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r["result"]["oauthURL"]
            .as_str()
            .unwrap()
            .contains("client_id=cli-client"),
        "{r}"
    );
    let (ok, _, _) = again.stop();
    assert!(ok);
}

#[test]
fn bad_configuration_fails_fast_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "not-an-address", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    let out = Command::new(BIN)
        .args(["api-token", "create", "--environment", "staging"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args(["migrate", "--database-url", "mysql://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database URL"));
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("BERTH_MASTER_KEY", "too-short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BERTH_MASTER_KEY"));
    let out = Command::new(BIN)
        .args(["serve", "--webhook-retention-days", "9999", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("webhook retention"));
}

/// kill -9 in the middle of delivering: after a restart every event is
/// delivered (at least once), and every message ends delivered.
#[tokio::test]
async fn kill_9_mid_delivery_loses_no_webhook() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = database_url(data).await;

    // A receiver that takes 20 ms per delivery, so the kill lands mid-way.
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    {
        let seen = seen.clone();
        let arrived = arrived.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                let arrived = arrived.clone();
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    let id = headers["webhook-id"].to_str().unwrap().to_string();
                    seen.lock().unwrap().push(id);
                    arrived.notify_waiters();
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    let wait_for = |n: usize, secs: u64| {
        let seen = seen.clone();
        let arrived = arrived.clone();
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
            loop {
                let notified = arrived.notified();
                let distinct = seen.lock().unwrap().iter().collect::<HashSet<_>>().len();
                if distinct >= n {
                    return distinct;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return seen.lock().unwrap().iter().collect::<HashSet<_>>().len();
                }
            }
        }
    };

    let flags = [
        "--dangerous-allow-private-webhook-targets",
        "--webhook-timeout-secs",
        "1",
        "--webhook-max-in-flight-per-endpoint",
        "8",
    ];
    let server = serve_with(data, &db, &flags);
    let token = server
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("berth_dev_"))
        .unwrap()
        .to_string();
    let (status, body) = post(
        &server.base,
        "/webhooks",
        &[("x-vessel-api-token", &token)],
        json!({"url": hook, "event": "*"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Events written by another process, as a sync worker would.
    const N: usize = 1000;
    let store = berth_store::Store::connect(&db).await.unwrap();
    let env = store
        .environment_by_name("development")
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<String> = (0..N).map(|i| format!("evt_kill_{i:04}")).collect();
    let now = berth_connections::now_ms();
    let events: Vec<berth_store::NewEvent> = ids
        .iter()
        .map(|id| berth_store::NewEvent {
            id,
            environment_id: &env.id,
            connection_id: None,
            event_type: "sync.completed",
            payload: "{}",
            created_at: now,
        })
        .collect();
    store.insert_events(&events).await.unwrap();

    let before_kill = wait_for(200, 60).await;
    assert!(
        before_kill >= 200,
        "only {before_kill} delivered before the kill"
    );
    let mut server = server;
    assert!(
        Command::new("kill")
            .args(["-KILL", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    server.child.wait().unwrap();
    let at_kill = seen.lock().unwrap().iter().collect::<HashSet<_>>().len();
    assert!(at_kill < N, "the kill came too late to prove anything");
    let counts = store.webhook_message_counts(&env.id).await.unwrap();
    eprintln!("at the kill: {at_kill} received; messages {counts:?}");

    // Claimed-but-unfinished messages come back when their lease (2 x
    // timeout + 5 s) runs out.
    let server = serve_with(data, &db, &flags);
    let delivered = wait_for(N, 90).await;
    assert_eq!(delivered, N, "events lost across kill -9");
    let got: HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
    assert_eq!(got, ids.iter().cloned().collect::<HashSet<_>>());
    // Every message ends delivered in the store.
    let mut settled = false;
    for _ in 0..100 {
        let counts = store.webhook_message_counts(&env.id).await.unwrap();
        if counts == vec![("delivered".to_string(), N as i64)] {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        settled,
        "{:?}",
        store.webhook_message_counts(&env.id).await.unwrap()
    );
    eprintln!(
        "after restart: {} deliveries of {N} events",
        seen.lock().unwrap().len()
    );
    store.close().await;
    let (ok, _, stderr) = server.stop();
    assert!(ok, "{stderr}");
}

/// A HubSpot sync killed with SIGKILL in the middle of an object resumes
/// from its checkpoint after a restart and ends with exactly the provider's
/// records: none lost, none twice.
#[tokio::test]
async fn kill_9_mid_sync_resumes_with_exact_counts() {
    use std::collections::HashSet;

    let token = "pat-na1-kill-9";
    // Slow pages, so the kill lands inside the contacts backfill.
    let (hs, hs_base) = slow_hubspot(token, 5000, 300, 20, 25).await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = database_url(data).await;
    let providers = hubspot_providers_file(data, &hs_base);
    let flags = ["--providers-file", &providers, "--sync-lease-secs", "5"];
    let server = serve_with(data, &db, &flags);
    let api_token = server
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("berth_dev_"))
        .unwrap()
        .to_string();
    let (conn, access) = connect(
        &server.base,
        &api_token,
        json!({"integrationId": "hubspot", "authType": "apiKey", "answers": {"api-key": token}}),
    )
    .await;

    // Wait until the contacts backfill has a checkpoint and part of the
    // records, then kill.
    let store = berth_store::Store::connect(&db).await.unwrap();
    let mut at_kill = None;
    for _ in 0..6000 {
        let states = store.sync_states(&conn).await.unwrap();
        if let Some(c) = states.iter().find(|s| s.object == "contacts")
            && c.phase == "backfill"
            && c.cursor.is_some()
            && hs.list_pages("contacts") >= 10
        {
            at_kill = Some(c.clone());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let at_kill = at_kill.expect("the contacts backfill never reached page 10");
    let mut server = server;
    assert!(
        Command::new("kill")
            .args(["-KILL", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    server.child.wait().unwrap();
    let stored_at_kill = store.count_records(&conn, "contacts").await.unwrap();
    assert!(
        (stored_at_kill as usize) < 5000,
        "the kill came too late to prove anything ({stored_at_kill} stored)"
    );
    eprintln!(
        "killed after {} contact list pages with {stored_at_kill} of 5000 stored (checkpoint {:?})",
        hs.list_pages("contacts"),
        at_kill.cursor
    );
    hs.set_page_delay(std::time::Duration::ZERO);
    let pages_before_restart = hs.list_pages("contacts");
    // The pages the checkpoint committed at the kill still has to read:
    // the writer may lag the fetcher by up to its write-ahead queue, and
    // pages fetched but not committed are read again (never skipped).
    let committed = store
        .sync_states(&conn)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.object == "contacts")
        .unwrap();
    let after: u64 = committed
        .cursor
        .as_deref()
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .and_then(|c| c["a"].as_str().and_then(|a| a.parse().ok()))
        .unwrap_or(0);
    let left = hs
        .live_ids("contacts")
        .iter()
        .filter(|id| id.parse::<u64>().unwrap() >= after)
        .count();
    let left_pages = left.div_ceil(100) as u64;

    // A new process takes the job over once the dead worker's lease ends.
    let server = serve_with(data, &db, &flags);
    let mut status = String::new();
    for _ in 0..1200 {
        let (_, b) = post(
            &server.base,
            "/connections/get",
            &[("x-vessel-api-token", &api_token)],
            json!({"id": conn}),
        )
        .await;
        status = b["result"]["status"].as_str().unwrap_or("").to_string();
        let done = store
            .jobs_of_connection(&conn, 1)
            .await
            .unwrap()
            .first()
            .is_some_and(|j| j.state == "done");
        if status == "READY" && done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, "READY");
    // Resumed from the checkpoint: of the 50 pages of contacts only the
    // rest were read (plus at most the page in flight at the kill, and the
    // one `archived=true` page of the incremental pass).
    let pages_after = hs.list_pages("contacts") - pages_before_restart;
    eprintln!("contact list pages: {pages_before_restart} before the restart, {pages_after} after");
    assert!(pages_before_restart >= 10);
    assert!(
        left_pages < 50 && pages_after <= left_pages + 2,
        "{pages_after} contact pages after the restart for {left_pages} left after the committed checkpoint: the backfill started over"
    );

    // Exactly the provider's records, through the API, no duplicates.
    for (object, plural, t) in [
        ("contacts", "contacts", "contacts"),
        ("accounts", "accounts", "companies"),
        ("deals", "deals", "deals"),
    ] {
        let seen = v1_native_ids(&server.base, &api_token, &access, plural).await;
        let distinct: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(distinct.len(), seen.len(), "{object}: duplicates");
        let provider: HashSet<String> = hs.live_ids(t).into_iter().collect();
        assert_eq!(distinct, provider, "{object}: lost or extra records");
        assert_eq!(
            store.count_records(&conn, object).await.unwrap() as usize,
            provider.len()
        );
    }
    let (ok, _, _) = server.stop();
    assert!(ok);
}

#[tokio::test]
async fn a_worker_without_public_url_says_so_instead_of_calling_a_guessed_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = database_url(data).await;
    let server = serve_with(data, &db, &["--no-workers"]);
    let api_token = server
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("berth_dev_"))
        .unwrap()
        .to_string();
    let (_, b) = post(
        &server.base,
        "/auth/session-token",
        &[("x-vessel-api-token", &api_token)],
        json!({}),
    )
    .await;
    let st = b["result"]["sessionToken"].as_str().unwrap().to_string();
    let (s, b) = post(
        &server.base,
        "/auth/start",
        &[("x-vessel-session-token", &st)],
        json!({"integrationId": "sandbox", "answers": {"api-key": "worker-key"}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let conn = b["result"]["connectionId"].as_str().unwrap().to_string();

    let mut worker = Guarded(
        Command::new(BIN)
            .args(["worker", "--data-dir"])
            .arg(data)
            .arg("--database-url")
            .arg(&db)
            .env_remove("BERTH_MASTER_KEY")
            .env_remove("BERTH_PUBLIC_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = worker.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    // The sync fails with a reason naming the missing setting (bounded wait).
    let mut last_error = String::new();
    for _ in 0..400 {
        let (_, b) = post(
            &server.base,
            "/connections/get",
            &[("x-vessel-api-token", &api_token)],
            json!({"id": conn}),
        )
        .await;
        if let Some(e) = b["result"]["sync"]["objects"]
            .as_object()
            .and_then(|o| o.values().find_map(|s| s["lastError"].as_str()))
        {
            last_error = e.to_string();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(last_error.contains("public_url"), "{last_error:?}");
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    worker.wait().unwrap();
    let logged = stderr.join().unwrap();
    assert!(
        logged.contains("no --public-url") && logged.contains("sandbox"),
        "{logged}"
    );
}

#[tokio::test]
async fn a_second_project_from_the_cli_is_a_tenant_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = database_url(data).await;
    let out = berth(data, &db, &["project", "create", "--name", "Acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(project.starts_with("v_project_"), "{project}");
    let out = berth(data, &db, &["project", "list"]);
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(list.contains(&project) && list.contains("Acme"), "{list}");
    assert!(list.contains("v_project_default"), "{list}");
    let out = berth(
        data,
        &db,
        &[
            "api-token",
            "create",
            "--project",
            &project,
            "--environment",
            "development",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acme_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = berth(
        data,
        &db,
        &[
            "api-token",
            "create",
            "--project",
            "v_project_nope",
            "--environment",
            "development",
        ],
    );
    assert!(!out.status.success());

    let server = serve(data, &db);
    let default_token = server
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("berth_dev_"))
        .map(str::to_string);
    // A connection made with Acme's token is Acme's alone.
    let (s, b) = post(
        &server.base,
        "/auth/session-token",
        &[("x-vessel-api-token", &acme_token)],
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let st = b["result"]["sessionToken"].as_str().unwrap().to_string();
    let (s, b) = post(
        &server.base,
        "/auth/start",
        &[("x-vessel-session-token", &st)],
        json!({"integrationId": "sandbox", "answers": {"api-key": "acme"}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = post(
        &server.base,
        "/connections/list",
        &[("x-vessel-api-token", &acme_token)],
        json!({}),
    )
    .await;
    assert_eq!(b["result"]["connections"].as_array().unwrap().len(), 1);
    let other = match default_token {
        Some(t) => t,
        None => {
            let out = berth(
                data,
                &db,
                &["api-token", "create", "--environment", "development"],
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }
    };
    let (_, b) = post(
        &server.base,
        "/connections/list",
        &[("x-vessel-api-token", &other)],
        json!({}),
    )
    .await;
    assert_eq!(
        b["result"]["connections"].as_array().unwrap().len(),
        0,
        "{b}"
    );
}

/// A PostgreSQL of this test's own (the suite's shared one must not be
/// restarted under other tests), through `scripts/pg-throwaway.sh`.
struct OwnPostgres {
    root: std::path::PathBuf,
    url: String,
}

impl OwnPostgres {
    fn script() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-throwaway.sh")
    }

    fn start() -> Self {
        let root = std::env::temp_dir().join(format!("berth-pg-fault-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(Self::script())
            .arg("start")
            .env("BERTH_PG_ROOT", &root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        OwnPostgres { root, url }
    }

    fn run(&self, what: &str) {
        let out = Command::new("bash")
            .arg(Self::script())
            .arg(what)
            .env("BERTH_PG_ROOT", &self.root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .env("BERTH_PG_ROOT", &self.root)
            .output();
    }
}

/// While PostgreSQL restarts or is down, Berth answers 503 with
/// Retry-After, promptly, never a 500; once it is back, everything works.
#[tokio::test]
async fn a_postgres_restart_is_a_brief_503_never_a_500() {
    if std::env::var("BERTH_TEST_BACKEND").as_deref() != Ok("postgres") {
        eprintln!("note: a PostgreSQL fault test; runs with BERTH_TEST_BACKEND=postgres");
        return;
    }
    let pg = OwnPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = berth_store::testing::fresh_postgres_database(&pg.url)
        .await
        .unwrap();
    let server = serve(data, &db);
    let token = server
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("berth_dev_"))
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let hit = move |path: &'static str| {
        let client = client.clone();
        let base = base.clone();
        let token = token.clone();
        async move {
            let started = std::time::Instant::now();
            let r = client
                .post(format!("{base}{path}"))
                .header("x-vessel-api-token", &token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().contains_key("retry-after");
            (r.status().as_u16(), retry_after, started.elapsed())
        }
    };
    assert_eq!(hit("/connections/list").await.0, 200);

    // Restart under load: reads and writes keep coming.
    let load = {
        let hit = hit.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let end = std::time::Instant::now() + std::time::Duration::from_secs(6);
            while std::time::Instant::now() < end {
                let (a, b) = tokio::join!(hit("/connections/list"), hit("/auth/session-token"));
                seen.push(a);
                seen.push(b);
            }
            seen
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    pg.run("restart");
    let seen = load.await.unwrap();
    let bad: Vec<_> = seen
        .iter()
        .filter(|(s, ra, _)| *s >= 500 && !(*s == 503 && *ra))
        .collect();
    assert!(
        bad.is_empty(),
        "5xx other than 503 with Retry-After: {bad:?}"
    );
    assert!(seen.iter().any(|(s, ..)| *s == 200));
    eprintln!(
        "{} requests around the restart: {} answered 503",
        seen.len(),
        seen.iter().filter(|(s, ..)| *s == 503).count()
    );

    // Down: a prompt 503, not a long stall.
    pg.run("halt");
    for path in ["/connections/list", "/auth/session-token"] {
        let (status, retry_after, took) = hit(path).await;
        assert_eq!((status, retry_after), (503, true), "{path}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "{path} took {took:?}"
        );
    }
    pg.run("resume");
    let mut ok = false;
    for _ in 0..100 {
        if hit("/connections/list").await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "back after PostgreSQL returned");
    assert_eq!(hit("/auth/session-token").await.0, 200);
    let mut server = server;
    let _ = server.child.kill();
}

fn spawn_worker(data_dir: &Path, db: &str, extra: &[&str]) -> Guarded {
    Guarded(
        Command::new(BIN)
            .args(["worker", "--data-dir"])
            .arg(data_dir)
            .arg("--database-url")
            .arg(db)
            .args(extra)
            .env_remove("BERTH_MASTER_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Two API nodes and two workers on one PostgreSQL; mid-sync, PostgreSQL
/// restarts and the worker running the job is killed with -9. The other
/// worker finishes the sync, and both API nodes serve exactly the
/// provider's records.
#[tokio::test]
async fn two_nodes_two_workers_survive_a_postgres_restart_and_a_worker_kill() {
    use std::collections::HashSet;
    if std::env::var("BERTH_TEST_BACKEND").as_deref() != Ok("postgres") {
        eprintln!("note: a PostgreSQL fault test; runs with BERTH_TEST_BACKEND=postgres");
        return;
    }
    let token = "pat-na1-multi-node";
    let (hs, hs_base) = slow_hubspot(token, 3000, 200, 10, 30).await;
    let pg = OwnPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = berth_store::testing::fresh_postgres_database(&pg.url)
        .await
        .unwrap();
    let providers = hubspot_providers_file(data, &hs_base);
    let flags = ["--providers-file", &providers, "--sync-lease-secs", "5"];
    let api_a = serve_with(data, &db, &[&flags[..], &["--no-workers"]].concat());
    let api_b = serve_with(data, &db, &[&flags[..], &["--no-workers"]].concat());
    let api_token = api_a
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("berth_dev_"))
        .unwrap()
        .to_string();
    let mut workers = vec![
        spawn_worker(data, &db, &flags),
        spawn_worker(data, &db, &flags),
    ];

    let (_, b) = post(
        &api_a.base,
        "/auth/session-token",
        &[("x-vessel-api-token", &api_token)],
        json!({}),
    )
    .await;
    let st = b["result"]["sessionToken"].as_str().unwrap().to_string();
    let (s, b) = post(
        &api_b.base,
        "/auth/start",
        &[("x-vessel-session-token", &st)],
        json!({"integrationId": "hubspot", "authType": "apiKey", "answers": {"api-key": token}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = post(
        &api_a.base,
        "/auth/access-token",
        &[
            ("x-vessel-api-token", &api_token),
            ("x-vessel-session-token", &st),
        ],
        json!({}),
    )
    .await;
    let conn = b["result"]["connectionId"].as_str().unwrap().to_string();
    let access = b["result"]["accessToken"].as_str().unwrap().to_string();

    // Mid-backfill: restart PostgreSQL, then kill the worker holding the job.
    let store = berth_store::Store::connect(&db).await.unwrap();
    let mut mid = false;
    for _ in 0..4000 {
        let states = store.sync_states(&conn).await.unwrap();
        if states
            .iter()
            .any(|s| s.object == "contacts" && s.phase == "backfill" && s.cursor.is_some())
            && hs.list_pages("contacts") >= 5
        {
            mid = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(mid, "the contacts backfill never started");
    pg.run("restart");
    let store = berth_store::Store::connect(&db).await.unwrap();
    let owner = store
        .jobs_of_connection(&conn, 1)
        .await
        .unwrap()
        .first()
        .and_then(|j| j.lease_owner.clone())
        .unwrap_or_default();
    let victim = workers
        .iter()
        .position(|w| owner.starts_with(&format!("worker_{}_", w.id())))
        .expect("the job is held by one of the two workers");
    Command::new("kill")
        .args(["-KILL", &workers[victim].id().to_string()])
        .status()
        .unwrap();
    workers[victim].wait().unwrap();
    hs.set_page_delay(std::time::Duration::ZERO);

    // The other worker takes the job over once the lease ends.
    let mut ready = false;
    for _ in 0..1200 {
        let (_, b) = post(
            &api_b.base,
            "/connections/get",
            &[("x-vessel-api-token", &api_token)],
            json!({"id": conn}),
        )
        .await;
        let done = store
            .jobs_of_connection(&conn, 1)
            .await
            .map(|j| j.first().is_some_and(|j| j.state == "done"))
            .unwrap_or(false);
        if b["result"]["status"] == "READY" && done {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "the surviving worker finished the sync");

    // Both API nodes serve exactly the provider's contacts.
    let want: HashSet<String> = hs.live_ids("contacts").into_iter().collect();
    for base in [&api_a.base, &api_b.base] {
        let got = v1_native_ids(base, &api_token, &access, "contacts").await;
        let unique: HashSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), unique.len(), "{base}: no duplicates");
        assert_eq!(unique, want, "{base}: exactly the provider's contacts");
    }
    for mut w in workers {
        let _ = w.kill();
    }
    for mut s in [api_a, api_b] {
        let _ = s.child.kill();
    }
}
