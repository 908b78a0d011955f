//! Vessel's own files as the contract: every CRM operation of
//! `v1-crm.yaml` and `v2-crm.yaml` (bare and under `/api`) driven with the
//! files' own request examples over a synced sandbox connection, every
//! answer validated against the files' schemas, every write read back
//! (`tests/vessel/conformance.py` does the driving; it needs Python's
//! `jsonschema` and `PyYAML`, which `scripts/test.sh` installs).

use crate::helpers::*;
use crate::sync::{status_of, until};

#[tokio::test]
async fn every_crm_operation_answers_vessels_examples_in_vessels_shapes() {
    let app = spawn_with(|c| c.no_workers = false).await;
    let token = app.dev_token.clone();
    let (conn, access) = app.connect_sandbox(&token, "vessel-files").await;
    until("READY", || async {
        status_of(&app, &token, &conn).await == "READY"
    })
    .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vessel/conformance.py"
    );
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &base, &token, &access])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Vessel's files: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The driver must have run the operations, not skipped them.
    let passed: u32 = stdout
        .lines()
        .last()
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 200, "too few checks ran: {stdout}");
    eprintln!("Vessel's files: {}", stdout.lines().last().unwrap_or(""));
}
