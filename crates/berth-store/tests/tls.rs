//! PostgreSQL over TLS: `sslmode` and a custom root CA in the URL, as a
//! managed PostgreSQL needs. The test script's throwaway server speaks TLS
//! with a certificate from its own CA (`BERTH_TEST_POSTGRES_CA`).

use berth_store::{Store, testing};

#[tokio::test]
async fn postgres_over_tls_verifies_the_server() {
    let (Ok(admin), Ok(ca)) = (
        std::env::var("BERTH_TEST_POSTGRES_URL"),
        std::env::var("BERTH_TEST_POSTGRES_CA"),
    ) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must set BERTH_TEST_POSTGRES_URL and BERTH_TEST_POSTGRES_CA"
        );
        eprintln!("note: no TLS PostgreSQL configured; skipped");
        return;
    };
    let url = testing::fresh_postgres_database(&admin).await.unwrap();
    let localhost = url.replace("127.0.0.1", "localhost");
    for (u, what) in [
        (
            format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
            "verify-full by IP",
        ),
        (
            format!("{localhost}?sslmode=verify-full&sslrootcert={ca}"),
            "verify-full by name",
        ),
        (
            format!("{url}?sslmode=verify-ca&sslrootcert={ca}"),
            "verify-ca",
        ),
        (format!("{url}?sslmode=require"), "require"),
    ] {
        let store = Store::connect(&u)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            testing::postgres_ssl_in_use(&store).await.unwrap(),
            "{what}: the session is encrypted"
        );
        store.migrate().await.unwrap();
        store.close().await;
    }
    let plain = Store::connect(&format!("{url}?sslmode=disable"))
        .await
        .unwrap();
    assert!(!testing::postgres_ssl_in_use(&plain).await.unwrap());
    plain.close().await;
    // The server's CA is not a public root: verification without it fails.
    let Err(e) = Store::connect(&format!("{url}?sslmode=verify-full")).await else {
        panic!("an unknown CA is refused");
    };
    assert!(
        e.to_string().to_lowercase().contains("certificate")
            || format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
}
