//! `skiff dev` (a scheduler and a node in one process) against bad input: each gets
//! a clear error or is contained, and the daemon keeps serving.

use serde_json::Value;
use skiff_tests::*;
use std::path::Path;
use std::time::Duration;

/// What these tests ask of `skiff dev` beyond the shared harness.
trait DevExt {
    fn replicas_of(&self, d: &str) -> Vec<Value>;
    fn deploy(&self, file: &Path, name: &str, extra: &[&str]) -> Cli;
    fn log_of(&self, deployment: &str) -> String;
    fn assert_serving(&mut self);
}

impl DevExt for Dev {
    fn replicas_of(&self, d: &str) -> Vec<Value> {
        self.get("replicas").into_iter().filter(|r| r["deployment"] == d).collect()
    }

    fn deploy(&self, file: &Path, name: &str, extra: &[&str]) -> Cli {
        let mut args = vec!["deploy", file.to_str().unwrap_or_default(), "--name", name];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    fn log_of(&self, deployment: &str) -> String {
        self.cli(&["logs", deployment, "--tail", "1000"]).stdout
    }

    fn assert_serving(&mut self) {
        assert!(self.proc.alive(), "skiff dev died");
        http_get(&format!("{}/healthz", self.url)).expect("scheduler answers /healthz");
    }
}

/// The one line a failed CLI call prints.
fn one_line_error(out: &Cli) -> String {
    assert!(!out.ok, "expected failure, got success: {}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {}", out.stderr);
    lines[0].to_string()
}

#[test]
fn bad_input_gets_clear_errors_and_is_contained() {
    let mut dev = Dev::start("dev");
    let dir = dev.dir.path().to_path_buf();

    // Bytes that are not Wasm: refused before upload.
    let not_wasm = dir.join("notes.wasm");
    std::fs::write(&not_wasm, b"hello, I am text").expect("write");
    let err = one_line_error(&dev.deploy(&not_wasm, "bogus", &[]));
    assert!(err.contains("not a WebAssembly"), "{err}");
    // Wasm magic but garbage after it: the scheduler validates and refuses.
    let broken = dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x01\0\0\0\x05garbage").expect("write");
    let err = one_line_error(&dev.deploy(&broken, "broken", &[]));
    assert!(err.contains("not valid WebAssembly"), "{err}");
    dev.assert_serving();

    // A healthy worker (a core module, WASI preview 1) beside a guest in an
    // infinite loop: the worker keeps logging.
    let healthy =
        dev.deploy(&wasm_p1("worker"), "healthy", &["--env", "INTERVAL_MS=100", "--env", "GREETING=alive", "--wait"]);
    assert!(healthy.ok, "{}", healthy.stderr);
    let spin = dev.deploy(&wasm_p2("spinner"), "spin", &["--replicas", "2", "--wait"]);
    assert!(spin.ok, "{}", spin.stderr);
    let count = |s: &str| s.matches("alive").count();
    let before = count(&dev.log_of("healthy"));
    std::thread::sleep(Duration::from_secs(3));
    let after = count(&dev.log_of("healthy"));
    // 100 ms ticks: about 30 lines in 3 s; demand a third of that beside two spinners.
    assert!(after >= before + 10, "the healthy guest starved: {before} -> {after} lines");
    assert!(dev.replicas_of("spin").iter().all(|r| r["state"] == "running"));
    dev.assert_serving();
    // Deleting the spinners really stops them (epoch interruption lets them be aborted).
    assert!(dev.cli(&["delete", "spin"]).ok);

    // A guest that grows memory without end is stopped at its limit, with the reason.
    let bomb = dev.deploy(&wasm_p2("membomb"), "bomb", &["--memory", "32Mi", "--restart", "never"]);
    assert!(bomb.ok, "{}", bomb.stderr);
    let failed = wait_for(Duration::from_secs(30), "the memory bomb to fail", || {
        let r = dev.replicas_of("bomb");
        match r.first() {
            Some(r) if r["state"] == "failed" => Ok(r.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("memory limit"), "{reason}");
    dev.assert_serving();

    // A guest that exits non-zero is restarted with backoff, and counted.
    // A core module: WASI 0.2 components can only exit 0 or 1.
    assert!(dev.deploy(&wasm_p1("crasher"), "crash", &[]).ok);
    let restarted = wait_for(Duration::from_secs(30), "restarts of the crasher", || {
        let r = dev.replicas_of("crash");
        let n = r.first().and_then(|r| r["restarts"].as_u64()).unwrap_or(0);
        // Seen between two runs: failed, with the status it exited with.
        if n >= 2 && r[0]["state"] == "failed" { Ok(r[0].clone()) } else { Err(format!("{r:?}")) }
    });
    assert_eq!(restarted["exit_code"], 3, "{restarted}");
    std::thread::sleep(Duration::from_secs(3));
    let later = dev.replicas_of("crash")[0]["restarts"].as_u64().unwrap_or(0);
    // With backoff starting near 250 ms and doubling, ~6 s allow far fewer than the
    // dozens of restarts a busy loop would make.
    assert!(later < 12, "{later} restarts in a few seconds: no backoff");
    let logs = dev.log_of("crash");
    assert!(logs.contains("restarting"), "the log explains the restarts: {logs}");

    // A request larger than any node: a warning, a pending replica with the reason.
    let huge = dev.deploy(&wasm_p2("worker"), "huge", &["--memory", "100Ti"]);
    assert!(huge.ok, "{}", huge.stderr);
    assert!(
        format!("{}{}", huge.stdout, huge.stderr).contains("no node is large enough"),
        "{} {}",
        huge.stdout,
        huge.stderr
    );
    let pending = wait_for(Duration::from_secs(10), "the pending reason", || {
        let r = dev.replicas_of("huge");
        match r.first().and_then(|r| r["reason"].as_str().map(str::to_owned)) {
            Some(reason) => Ok(reason),
            None => Err(format!("{r:?}")),
        }
    });
    assert_eq!(pending, "0/1 nodes fit: 1 insufficient memory");
    let described = dev.cli(&["describe", "deployment", "huge"]);
    assert!(described.ok && described.stdout.contains("insufficient memory"), "{}", described.stdout);

    // Manifests: a malformed one names its line and column; a good one applied
    // twice changes nothing the second time.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: web\nwasm: w.wasm\nreplicas: lots\n").expect("write");
    let err = one_line_error(&dev.cli(&["apply", "-f", bad.to_str().unwrap_or_default()]));
    assert!(err.contains("line 3 column 11"), "{err}");
    let good = dir.join("app.yaml");
    std::fs::copy(wasm_p2("worker"), dir.join("worker.wasm")).expect("copy");
    std::fs::write(
        &good,
        "name: web\nwasm: worker.wasm\nreplicas: 2\nresources: {cpu: 50m, memory: 16Mi}\nenv: {GREETING: from-manifest}\n---\nname: web2\nwasm: worker.wasm\n",
    )
    .expect("write");
    let first = dev.cli(&["apply", "-f", good.to_str().unwrap_or_default()]);
    assert!(first.ok && first.stdout.contains("created"), "{} {}", first.stdout, first.stderr);
    let second = dev.cli(&["apply", "-f", good.to_str().unwrap_or_default()]);
    assert!(second.ok, "{}", second.stderr);
    assert!(second.stdout.contains("unchanged") && !second.stdout.contains("created"), "{}", second.stdout);
    wait_for(Duration::from_secs(20), "the manifest's replicas running", || {
        let r = running(&dir, &dev.url, "web");
        if r.len() == 2 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    dev.assert_serving();
}

#[test]
fn an_api_apply_is_held_to_the_rules_a_manifest_is() {
    // Before validation lived in one place only manifests refused these: an API
    // client could store http_port 0, or a grace period on a Wasm workload.
    let dev = Dev::start("api-rules");
    let token = token_for(&dev.url);
    let res = r#""resources": {"cpu": "100m", "memory": "64Mi"}"#;
    // A Wasm artifact the scheduler holds: the digest of one deployed by the CLI.
    assert!(dev.deploy(&wasm_p1("worker"), "base", &[]).ok);
    let base = dev.get("deployments").into_iter().find(|d| d["name"] == "base").expect("deployment base");
    let wasm = base["spec"]["workload"]["wasm"].as_str().expect("a wasm digest").to_string();
    let cases = [
        (
            "port0",
            format!(r#"{{"spec": {{"workload": {{"image": "registry.example:5000/web:1"}}, {res}, "http_port": 0}}}}"#),
            "http_port must be 1-65535",
        ),
        (
            "wasmport",
            format!(r#"{{"spec": {{"workload": {{"wasm": "{wasm}"}}, {res}, "http_port": 8080}}}}"#),
            "http_port is for images",
        ),
        (
            "wasmgrace",
            format!(r#"{{"spec": {{"workload": {{"wasm": "{wasm}"}}, {res}, "stop_grace_period": "3s"}}}}"#),
            "stop_grace_period is for images",
        ),
    ];
    for (name, body, refusal) in cases {
        let path = format!("/v1/deployments/{name}");
        let (status, answer) = crate::auth::call(&dev.url, "PUT", &path, token.as_deref(), &body);
        assert_eq!(status, 400, "{name}: {answer}");
        assert!(answer.contains(refusal), "{name}: {answer}");
        let (status, answer) = crate::auth::call(&dev.url, "GET", &path, token.as_deref(), "");
        assert_eq!(status, 404, "{name} was stored: {answer}");
    }
}

#[test]
fn wait_means_routable_for_a_service_and_fails_on_a_crash_loop() {
    let dev = Dev::start("wait");
    let ingress = format!("http://{}", read_when_ready(&dev.data().join("ingress.addr")).trim_start_matches("http://"));

    // A crash loop from the first second: --wait fails, naming the replica and
    // why, rather than printing "1/1 replicas running".
    let started = std::time::Instant::now();
    let out = dev.deploy(&wasm_p1("crasher"), "crashy", &["--wait", "--timeout", "30s"]);
    assert!(!out.ok, "--wait succeeded for a crash loop: {}", out.stdout);
    // At the first failure, not at the timeout (it waited all 30 s, then said
    // "only 0/1 replicas running").
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}: {}", started.elapsed(), out.stderr);
    let err = one_line_error(&out);
    assert!(err.contains("replica crashy-") && err.contains("exit status 3"), "{err}");
    // And so does rollout status, where the rollout shows the replica failing.
    let status = dev.cli(&["rollout", "status", "crashy", "--timeout", "30s"]);
    assert!(!status.ok, "rollout status succeeded for a crash loop: {}", status.stdout);
    assert!(status.stderr.contains("crashy-"), "{}", status.stderr);

    // An HTTP component: once --wait returns, the ingress answers at once (it
    // said "running" while the ingress still answered 503).
    for round in 0..3 {
        let name = format!("web{round}");
        let out = dev.deploy(&wasm_p2("hello_http"), &name, &["--replicas", "2", "--wait"]);
        assert!(out.ok, "{}", out.stderr);
        let a = get(&ingress, &format!("{name}.skiff.local"), "/").expect("the ingress answers");
        assert_eq!(a.status, 200, "right after --wait ({}): {} {}", out.stdout.trim(), a.head, a.body);
        assert!(out.stdout.contains("2/2 replicas ready (routable)"), "{}", out.stdout);
    }
    // A worker that serves nothing: running is what it means, and says so.
    let out = dev.deploy(&wasm_p1("worker"), "plain", &["--wait"]);
    assert!(out.ok && out.stdout.contains("1/1 replicas running"), "{} {}", out.stdout, out.stderr);
}
