//! Schema-based fuzzing: schemathesis (PyPI, in the tools venv `make setup-test` builds) reads
//! the service's own `/openapi.json` from the real server on a loopback socket and sends
//! requests generated from it — valid ones, invalid ones, edge cases of every parameter and
//! body — checking every answer against the document: no 5xx, only documented statuses,
//! content types, headers and bodies matching their schemas, requests the schema allows
//! accepted and those it forbids refused.
//!
//! Two things a schema cannot say are told to it: the model's name and version on the v2 paths
//! (without them every v2 request is a 404), and that a request the schema allows may still be
//! refused for its content — 413 (too large for this server), 415 (the bytes are not a photo)
//! and 422 (a corrupt image, a tensor whose data does not fill its shape). A 400 for a request
//! the schema allows stays a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{Served, limits, ready_state};

/// Test cases per operation and phase: 15 operations, a few hundred requests in all.
const MAX_EXAMPLES: u32 = 25;

const CONFIG: &str = r#"
[parameters]
"path.name" = "face2simpson"
"path.version" = "r1"

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "404", "413", "415", "422", "429", "503", "504"]
"#;

/// The tools venv's schemathesis; a clear failure, never a skip, without it.
fn schemathesis() -> PathBuf {
    let deps = std::env::var_os("FACE2SIMPSON_DEPS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps"),
        PathBuf::from,
    );
    let bin = deps.join("tools/bin/schemathesis");
    let ok = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} is missing: run `make setup-test` (scripts/setup-tools.sh installs schemathesis into the tools venv)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_mismatch_with_the_openapi_document() {
    let bin = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let served = Served::start(state).await;
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("schemathesis.toml"), CONFIG).unwrap();
    let out = tokio::process::Command::new(&bin)
        .current_dir(work.path())
        .args([
            "run",
            &format!("http://{}/openapi.json", served.addr),
            "--checks",
            "all",
            "--max-examples",
            &MAX_EXAMPLES.to_string(),
            // Reproducible: the same requests on every run.
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("passed"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{summary}");
    assert!(
        out.status.success(),
        "schemathesis found mismatches between the server and its OpenAPI document:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It did test something: every operation, hundreds of requests.
    assert!(report.contains("Tested: 15"), "{report}");
    served.stop().await;
}
