//! The scheduler's API against schemathesis: property-based calls generated
//! from its own OpenAPI description (`GET /v1/openapi.json`), valid and invalid,
//! on a real `skiff server`. No answer may be a 5xx (bad input is the caller's
//! fault: a 4xx with one line), and every answer must match the description.

use crate::auth::call;
use skiff_tests::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// schemathesis' `st`: `SKIFF_SCHEMATHESIS` (the Makefile's venv), else the
/// venv `make deps-test` makes.
fn schemathesis() -> String {
    let st = std::env::var("SKIFF_SCHEMATHESIS").unwrap_or_else(|_| "/var/cache/skiff-py/bin/st".into());
    assert!(std::path::Path::new(&st).exists(), "no schemathesis at {st}; `make deps-test` installs it");
    st
}

/// Longest the whole run may take; it takes ~30 s.
const DEADLINE: Duration = Duration::from_secs(150);

#[test]
fn schemathesis_finds_no_server_error_and_answers_match_the_description() {
    let st = schemathesis();
    let dir = TempDir::new("schemathesis");
    let data = dir.path().join("server");
    let _server = Proc::start(
        "server",
        &["server", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap_or_default()],
        &dir.path().join("server.log"),
    );
    let url = server_ready(&data);
    let admin = read_when_ready(&data.join("admin-token"));
    let (status, description) = call(&url, "GET", "/v1/openapi.json", Some(&admin), "");
    assert_eq!(status, 200, "{description}");
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, &description).expect("write the description");
    // Long polls answer at once (`wait` up to 60 s is legal, and would only
    // spend the run waiting).
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, "[parameters]\n\"query.wait\" = 0\n").expect("write the config");

    let out_file = dir.path().join("schemathesis.out");
    let out = std::fs::File::create(&out_file).expect("output file");
    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(&schema)
        .args(["--url", &url])
        .arg("--tls-verify")
        .arg(data.join("ca.crt"))
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        // Every check but two. A request the description allows may still be
        // refused (a name that is no DNS label, a digest not uploaded):
        // `positive_data_acceptance` would count it. OpenAPI has no unsigned
        // 64-bit integer (utoipa's `non_strict_integers` writes `u-int64`), so a
        // u64 is described as a non-negative int64, and the server taking 2^63
        // is no bug: `negative_data_rejection` would count it.
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance,negative_data_rejection"])
        // One worker: with two threads, hypothesis' lambda descriptions call
        // ast.parse concurrently, and CPython 3.11 fails that now and then
        // ("AST constructor recursion depth mismatch", seen in `make test`).
        .args(["--max-examples", "15", "--request-timeout", "10", "--workers", "1"])
        // Server-sent events: a stream that never ends.
        .args(["--exclude-path", "/v1/watch"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("run {st}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(&out_file).unwrap_or_default();
            panic!("schemathesis did not end within {DEADLINE:?}:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let said = std::fs::read_to_string(&out_file).unwrap_or_default();
    assert!(status.success(), "schemathesis found failures ({status}):\n{said}");
    // It ran: the summary names the operations it tested.
    assert!(said.contains("passed"), "{said}");
    eprintln!("{}", said.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
}
