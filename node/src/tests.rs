//! Tests with real wasmtime and tiny guests written in WAT.

use crate::blobs::sha256_hex;
use crate::logs::{self, LogSink};
use crate::runtime::{Outcome, RunSpec};
use crate::runtimes::Runtimes;
use crate::supervisor::{Context, Replica};
use crate::wasm::{Compiled, WasmRuntime};
use skiff_api::{Assignment, ReplicaState, Resources, RestartPolicy, Workload, WorkloadSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "hello from wasm\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 8))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 100)))))"#;

const EXIT3: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.const 3))))"#;

const GROW: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (drop (memory.grow (i32.const 100)))))"#;

const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))"#;

/// Counts to 30 million, then exits 0: a few tens of ms of work.
const WORK: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 30000000))))))"#;

/// Prints its argv and then its environment, NUL-separated, as one line each.
const ARGS_ENV: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "\n")
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 100) (local.get $ptr))
    (i32.store (i32.const 104) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120)))
    ;; wasi p1 writes only the first non-empty iovec per call, as libc knows.
    (i32.store (i32.const 100) (i32.const 200))
    (i32.store (i32.const 104) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120))))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (call $print (i32.const 4096) (i32.load (i32.const 4)))
    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $environ_get (i32.const 1024) (i32.const 8192)))
    (call $print (i32.const 8192) (i32.load (i32.const 4)))))"#;

/// A component whose `wasi:cli/run` returns ok (status 0) or err (status 1).
fn run_component(ok: bool) -> String {
    format!(
        r#"(component
  (core module $m (func (export "run") (result i32) i32.const {}))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $inst)))"#,
        if ok { 0 } else { 1 }
    )
}

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT parses")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-node-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn spec(name: &str) -> RunSpec {
    RunSpec { deployment: "web".into(), replica: name.into(), revision: 7, memory_limit: 1 << 20, ..RunSpec::default() }
}

fn compile(rt: &WasmRuntime, bytes: &[u8]) -> Arc<Compiled> {
    Arc::new(rt.compile_blocking(&sha256_hex(bytes), bytes).expect("compiles"))
}

/// Log text without timestamps: `stdout hello|skiff ...`.
fn log_text(dir: &std::path::Path) -> String {
    let (text, _) = logs::tail(dir, 1000).expect("read log");
    String::from_utf8_lossy(&text)
        .lines()
        .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("|")
}

async fn run_one(rt: &WasmRuntime, data: &std::path::Path, wat: &str, spec: RunSpec) -> (Outcome, String) {
    let compiled = compile(rt, &wasm(wat));
    let dir = logs::replica_dir(data, &spec.replica);
    let sink = LogSink::open(dir.clone()).expect("open log");
    let outcome = rt.run(compiled, spec, sink.clone()).await;
    sink.flush_all();
    (outcome, log_text(&dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_print_exit_trap_and_hit_memory_limits() {
    let data = temp_dir("outcomes");
    let rt = WasmRuntime::new(&data).expect("runtime");

    let (outcome, log) = run_one(&rt, &data, HELLO, spec("hello")).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(log, "stdout hello from wasm");

    let (outcome, _) = run_one(&rt, &data, EXIT3, spec("exit3")).await;
    assert_eq!(outcome, Outcome::Exited(3));
    assert_eq!(outcome.reason(), "exited with status 3");

    let (outcome, _) = run_one(&rt, &data, GROW, spec("grow")).await;
    assert_eq!(outcome, Outcome::MemoryExceeded(1 << 20));
    assert_eq!(outcome.reason(), "memory limit of 1Mi exceeded");

    let (outcome, _) = run_one(&rt, &data, "(module (func (export \"_start\") unreachable))", spec("trap")).await;
    let Outcome::Failed(reason) = outcome else { panic!("expected a failure, got {outcome:?}") };
    assert!(reason.starts_with("trapped: ") && reason.contains("unreachable"), "{reason}");
    assert!(!reason.contains('\n'));

    let mut s = spec("args");
    s.args = vec!["--flag".into()];
    s.env.insert("GREETING".into(), "hi".into());
    let (outcome, log) = run_one(&rt, &data, ARGS_ENV, s).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(
        log,
        "stdout web\0--flag\0|stdout GREETING=hi\0SKIFF_DEPLOYMENT=web\0SKIFF_REPLICA=args\0SKIFF_REVISION=7\0"
    );

    let (outcome, _) = run_one(&rt, &data, &run_component(true), spec("comp-ok")).await;
    assert_eq!(outcome, Outcome::Exited(0));
    let (outcome, _) = run_one(&rt, &data, &run_component(false), spec("comp-err")).await;
    assert_eq!(outcome, Outcome::Exited(1));
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guest_neither_starves_others_nor_outlives_its_stop() {
    let data = temp_dir("spin");
    let rt = WasmRuntime::new(&data).expect("runtime");
    let spin = compile(&rt, &wasm(SPIN));
    let work = compile(&rt, &wasm(WORK));
    let t = Instant::now();
    let sink = LogSink::open(logs::replica_dir(&data, "alone")).expect("log");
    assert_eq!(rt.run(work.clone(), spec("alone"), sink).await, Outcome::Exited(0));
    eprintln!("healthy guest alone took {:?}", t.elapsed());

    // More spinners than the guest runtime has workers.
    let mut spinners = Vec::new();
    let mut sinks = Vec::new();
    for i in 0..3 {
        let sink = LogSink::open(logs::replica_dir(&data, &format!("spin-{i}"))).expect("log");
        sinks.push(sink.clone());
        spinners.push(tokio::spawn(rt.run(spin.clone(), spec(&format!("spin-{i}")), sink)));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The agent's runtime keeps its timers.
    for _ in 0..10 {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(t.elapsed() < Duration::from_millis(200), "agent timer late by {:?}", t.elapsed());
    }

    // A healthy guest next to them still finishes.
    let sink = LogSink::open(logs::replica_dir(&data, "work")).expect("log");
    let t = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(2), rt.run(work.clone(), spec("work"), sink))
        .await
        .expect("healthy guest finishes next to spinning ones");
    assert_eq!(outcome, Outcome::Exited(0));
    eprintln!("healthy guest took {:?} next to 3 spinners", t.elapsed());

    // Stopping drops the guest (its store holds the log sink) within a second.
    for s in &spinners {
        assert!(!s.is_finished());
        s.abort();
    }
    let t = Instant::now();
    while sinks.iter().any(|s| Arc::strong_count(s) > 1) {
        assert!(t.elapsed() < Duration::from_secs(1), "spinning guests still alive after {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("spinning guests stopped in {:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_fail_clearly_and_compiled_code_is_cached_on_disk() {
    let data = temp_dir("cache");
    let rt = WasmRuntime::new(&data).expect("runtime");

    let Err(e) = rt.compile_blocking(&sha256_hex(b"hello"), b"hello") else { panic!("text is not wasm") };
    assert!(e.starts_with("not a valid WebAssembly module: "), "{e}");
    let broken = b"\0asm\x01\0\0\0\x01\xff\xff";
    let Err(e) = rt.compile_blocking(&sha256_hex(broken), broken) else { panic!("broken wasm") };
    assert!(e.starts_with("not a valid WebAssembly module: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let Err(e) = rt.compile_blocking(&sha256_hex(&wasm(r#"(module)"#)), &wasm("(module)")) else { panic!("no _start") };
    assert!(e.contains("no `_start` export"), "{e}");

    // A module that cannot link (unknown import) fails clearly, compiled once.
    let unlinkable = wasm(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#);
    let before = rt.compilations();
    for _ in 0..2 {
        let Err(e) = rt.compile_blocking(&sha256_hex(&unlinkable), &unlinkable) else { panic!("links") };
        assert!(e.starts_with("cannot link module: "), "{e}");
    }
    assert_eq!(rt.compilations(), before + 1);

    let bytes = wasm(HELLO);
    let hex = sha256_hex(&bytes);
    let before = rt.compilations();
    rt.compile_blocking(&hex, &bytes).expect("compiles");
    assert_eq!(rt.compilations(), before + 1);
    let file = rt.cache_dir().join(format!("{hex}.cwasm"));
    assert!(file.is_file(), "{} written", file.display());
    assert!(rt.cache_dir().starts_with(data.join("cache")));

    // A new runtime (a restarted daemon) loads the file instead of compiling.
    drop(rt);
    let rt = WasmRuntime::new(&data).expect("runtime");
    let compiled = Arc::new(rt.compile_blocking(&hex, &bytes).expect("loads"));
    assert_eq!(rt.compilations(), 0);
    let sink = LogSink::open(logs::replica_dir(&data, "cached")).expect("log");
    assert_eq!(rt.run(compiled, spec("cached"), sink).await, Outcome::Exited(0));

    // The in-memory map: the blob is fetched once and compiled once for N replicas.
    let fetches = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let digest = format!("sha256:{}", sha256_hex(&wasm(EXIT3)));
    for _ in 0..3 {
        let f = fetches.clone();
        let fetch = || async move {
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(bytes::Bytes::from(wasm(EXIT3)))
        };
        rt.artifact(&digest, fetch).await.expect("artifact");
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(rt.compilations(), 1);
    assert!(data.join("blobs").join(sha256_hex(&wasm(EXIT3))).is_file());

    // A download that does not match its digest is refused.
    let other = format!("sha256:{}", "0".repeat(64));
    let err = rt.artifact(&other, || async { Ok(bytes::Bytes::from_static(b"nope")) }).await.err();
    assert!(matches!(&err, Some(crate::runtime::ArtifactError::Transient(m)) if m.contains("has digest")), "{err:?}");
    let _ = std::fs::remove_dir_all(&data);
}

fn assignment(id: &str, bytes: &[u8], restart: RestartPolicy) -> Assignment {
    Assignment {
        replica: id.into(),
        deployment: "web".into(),
        revision: 1,
        generation: 1,
        spec: WorkloadSpec {
            workload: Workload::Wasm(format!("sha256:{}", sha256_hex(bytes))),
            resources: Resources::new(100, 1 << 20),
            env: Default::default(),
            args: vec![],
            restart,
            constraints: Default::default(),
            secrets: vec![],
            allowed_hosts: vec![],
            volumes: vec![],
            probes: Default::default(),
            http_port: None,
            ports: vec![],
            network: Default::default(),
            stop_grace_period: None,
            volume_lease: false,
            rebalance: false,
        },
        secrets: Default::default(),
        registry_auth: None,
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_apply_restart_policies_and_explain_themselves() {
    let data = temp_dir("supervisor");
    let commands = Arc::new(WasmRuntime::new(&data).expect("runtime"));
    let runtimes = Arc::new(Runtimes::new(&data, commands, None, None).expect("runtimes"));
    let ctx = Arc::new(Context { runtimes, client: None, data_dir: data.clone(), ingress: None });
    let blob = |bytes: &[u8]| std::fs::write(data.join("blobs").join(sha256_hex(bytes)), bytes).expect("write blob");
    let (exit3, hello) = (wasm(EXIT3), wasm(HELLO));
    blob(&exit3);
    blob(&hello);

    // never: one run, failed with its status.
    let r = Replica::start(ctx.clone(), assignment("never", &exit3, RestartPolicy::Never));
    wait_for("never to fail", || r.status().state == ReplicaState::Failed).await;
    let st = r.status();
    assert_eq!((st.exit_code, st.reason.as_deref(), st.restarts), (Some(3), Some("exited with status 3"), 0));

    // always: exit 0 is restarted with backoff, and the log says so.
    let r2 = Replica::start(ctx.clone(), assignment("always", &hello, RestartPolicy::Always));
    wait_for("a restart", || r2.status().restarts >= 2).await;
    let log = log_text(&logs::replica_dir(&data, "always"));
    assert!(log.contains("stdout hello from wasm|skiff restarting after exit status 0 (backoff 250ms)"), "{log}");
    assert!(log.contains("skiff restarting after exit status 0 (backoff 500ms)"), "{log}");

    // on-failure: a clean exit stays exited.
    let r3 = Replica::start(ctx.clone(), assignment("onfail", &hello, RestartPolicy::OnFailure));
    wait_for("exit", || r3.status().state == ReplicaState::Exited).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(r3.status().restarts, 0);

    // A blob that is not here and cannot be fetched: starting, with the reason.
    let r4 = Replica::start(ctx.clone(), assignment("missing", b"absent", RestartPolicy::Always));
    wait_for("a reason", || r4.status().reason.is_some()).await;
    assert_eq!(r4.status().state, ReplicaState::Starting);

    // Not wasm at all: failed for good with a clear reason.
    let junk = b"#!/bin/sh\necho hi\n";
    blob(junk);
    let r5 = Replica::start(ctx.clone(), assignment("junk", junk, RestartPolicy::Always));
    wait_for("junk to fail", || r5.status().state == ReplicaState::Failed).await;
    assert!(r5.status().reason.unwrap_or_default().starts_with("not a valid WebAssembly module"));

    r2.stop("test over");
    let dir = logs::replica_dir(&data, "always");
    wait_for("the stop line", || log_text(&dir).ends_with("skiff stopping: test over")).await;
    drop((r, r3, r4, r5));
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_serves_tails_and_follows_logs() {
    let data = temp_dir("api");
    let sink = LogSink::open(logs::replica_dir(&data, "web-1")).expect("log");
    for i in 0..5 {
        sink.write(logs::Stream::Stdout, format!("line {i}\n").as_bytes());
    }
    sink.flush_all();
    let state = Arc::new(crate::api::ApiState { data_dir: data.clone(), replicas: Box::new(Vec::new), relay: None });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, crate::api::router(state)).await });
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    let health = http.get(format!("{base}/healthz")).send().await.expect("healthz");
    assert_eq!(health.text().await.expect("body"), "ok");

    let resp = http.get(format!("{base}/v1/replicas/web-1/logs?tail=2")).send().await.expect("logs");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.ends_with(" stdout line 4\n"), "{text}");

    let resp = http.get(format!("{base}/v1/replicas/nope/logs")).send().await.expect("logs");
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.expect("body").starts_with("{\"error\":"));
    let resp = http.get(format!("{base}/v1/replicas/..%2Fetc/logs")).send().await.expect("logs");
    assert_eq!(resp.status(), 400);

    let mut resp = http.get(format!("{base}/v1/replicas/web-1/logs?follow=true&tail=1")).send().await.expect("follow");
    let first = resp.chunk().await.expect("chunk").expect("some");
    assert!(String::from_utf8_lossy(&first).ends_with("stdout line 4\n"));
    sink.write(logs::Stream::Stderr, b"later\n");
    let next = tokio::time::timeout(Duration::from_secs(2), resp.chunk())
        .await
        .expect("in time")
        .expect("chunk")
        .expect("some");
    assert!(String::from_utf8_lossy(&next).ends_with("stderr later\n"), "{next:?}");
    assert_eq!(crate::api::followers(), 1);
    drop(resp);
    wait_for("the follower to end with its client", || crate::api::followers() == 0).await;
    server.abort();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn meminfo_is_parsed() {
    assert_eq!(crate::parse_meminfo("MemTotal:       16318412 kB\nMemFree: 1 kB\n"), Some(16318412 * 1024));
    assert_eq!(crate::parse_meminfo("nothing"), None);
}

// ---- the agent against a fake scheduler ----

use skiff_api::{Assignments, Heartbeat, Node, NodeState, RegisterRequest, RegisterResponse};
use std::sync::Mutex;

#[derive(Default)]
struct Fake {
    registrations: u32,
    forget: bool,
    index: u64,
    replicas: Vec<Assignment>,
    last: Option<Heartbeat>,
    blobs: std::collections::HashMap<String, Vec<u8>>,
}

type FakeState = Arc<(Mutex<Fake>, tokio::sync::Notify)>;

fn fake_scheduler(state: FakeState) -> axum::Router {
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    async fn register(
        State(s): State<FakeState>,
        axum::Json(req): axum::Json<RegisterRequest>,
    ) -> axum::response::Response {
        let mut f = s.0.lock().unwrap_or_else(|e| e.into_inner());
        f.registrations += 1;
        f.forget = false;
        let node = Node {
            name: req.name,
            address: req.address,
            labels: req.labels,
            capacity: req.capacity,
            allocated: Resources::default(),
            runtimes: req.runtimes,
            state: NodeState::Ready,
            replicas: 0,
            registered_ms: 0,
            last_heartbeat_ms: 0,
            ingress: req.ingress,
            unschedulable: false,
            drain: None,
        };
        axum::Json(RegisterResponse { node, heartbeat_interval_ms: 100, credential: None }).into_response()
    }
    async fn heartbeat(State(s): State<FakeState>, axum::Json(hb): axum::Json<Heartbeat>) -> axum::response::Response {
        let mut f = s.0.lock().unwrap_or_else(|e| e.into_inner());
        if f.forget {
            return (StatusCode::NOT_FOUND, axum::Json(skiff_api::ErrorBody { error: "unknown node".into() }))
                .into_response();
        }
        // As the scheduler does: a delta updates what the last reports said.
        let merged = match f.last.take() {
            Some(mut last) if hb.delta => {
                for st in hb.replicas {
                    match last.replicas.iter_mut().find(|r| r.id == st.id) {
                        Some(r) => *r = st,
                        None => last.replicas.push(st),
                    }
                }
                last
            }
            _ => hb,
        };
        f.last = Some(merged);
        StatusCode::OK.into_response()
    }
    async fn assignments(
        State(s): State<FakeState>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> axum::response::Response {
        // Whole sets only, even to a node that asks for changes (as an older scheduler).
        let number = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let (index, wait) = (number("index"), Duration::from_millis(number("wait")));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = s.1.notified();
            {
                let f = s.0.lock().unwrap_or_else(|e| e.into_inner());
                if f.index > index || tokio::time::Instant::now() >= deadline {
                    return axum::Json(Assignments {
                        index: f.index,
                        replicas: f.replicas.clone(),
                        purge_volumes: vec![],
                        lease_ms: 0,
                        delta: false,
                        removed: vec![],
                    })
                    .into_response();
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
    async fn blob(State(s): State<FakeState>, Path(digest): Path<String>) -> axum::response::Response {
        let f = s.0.lock().unwrap_or_else(|e| e.into_inner());
        match f.blobs.get(&digest) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
    axum::Router::new()
        .route("/v1/nodes/register", post(register))
        .route("/v1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{name}/assignments", get(assignments))
        .route("/v1/blobs/{digest}", get(blob))
        .with_state(state)
}

fn set_assignments(s: &FakeState, index: u64, replicas: Vec<Assignment>) {
    let mut f = s.0.lock().unwrap_or_else(|e| e.into_inner());
    f.index = index;
    f.replicas = replicas;
    drop(f);
    s.1.notify_waiters();
}

fn last_heartbeat(s: &FakeState) -> Vec<skiff_api::ReplicaStatus> {
    let f = s.0.lock().unwrap_or_else(|e| e.into_inner());
    f.last.as_ref().map(|h| h.replicas.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_converges_reregisters_and_serves_logs() {
    let data = temp_dir("agent");
    let state: FakeState = Arc::new((Mutex::new(Fake::default()), tokio::sync::Notify::new()));
    let (spin, hello) = (wasm(SPIN), wasm(HELLO));
    for b in [&spin, &hello] {
        state.0.lock().unwrap_or_else(|e| e.into_inner()).blobs.insert(format!("sha256:{}", sha256_hex(b)), b.clone());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server_addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(axum::serve(listener, fake_scheduler(state.clone())).into_future());

    let config = crate::NodeConfig {
        server: format!("http://{server_addr}"),
        token: "secret".into(),
        name: "node-a".into(),
        labels: Default::default(),
        cpu_millis: Some(2000),
        memory_bytes: None,
        data_dir: data.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
        oci_runtime: None,
        container_network: crate::container::Network::Loopback,
        insecure_registries: vec![],
        ingress: Some("127.0.0.1:0".parse().expect("addr")),
        ingress_advertise: None,
        http: Default::default(),
        containers_on_exit: Default::default(),
        image_gc: Default::default(),
    };
    let node = tokio::spawn(crate::run(config));
    wait_for("node.addr", || data.join("node.addr").is_file()).await;
    let node_url = std::fs::read_to_string(data.join("node.addr")).expect("node.addr");
    assert!(node_url.starts_with("http://127.0.0.1:"), "{node_url}");

    // A spinning service and a batch job.
    let mut web = assignment("web-1", &spin, RestartPolicy::Always);
    let job = assignment("job-1", &hello, RestartPolicy::Never);
    set_assignments(&state, 5, vec![web.clone(), job.clone()]);
    wait_for("both reported", || {
        let hb = last_heartbeat(&state);
        hb.iter().any(|r| r.id == "web-1" && r.state == ReplicaState::Running)
            && hb.iter().any(|r| r.id == "job-1" && r.state == ReplicaState::Exited)
    })
    .await;
    let logs =
        reqwest::get(format!("{node_url}/v1/replicas/job-1/logs")).await.expect("logs").text().await.expect("body");
    assert!(logs.contains(" stdout hello from wasm\n"), "{logs}");

    // A new generation restarts the replica; a dropped one is stopped.
    web.generation = 2;
    set_assignments(&state, 6, vec![web.clone()]);
    wait_for("generation 2 only", || {
        let hb = last_heartbeat(&state);
        hb.len() == 1 && hb[0].generation == 2 && hb[0].state == ReplicaState::Running
    })
    .await;

    // The scheduler goes away: replicas keep running, the node keeps serving.
    server.abort();
    let _ = server.await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let list: Vec<skiff_api::ReplicaStatus> =
        reqwest::get(format!("{node_url}/v1/replicas")).await.expect("list").json().await.expect("json");
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id.as_str(), list[0].state), ("web-1", ReplicaState::Running));

    // It comes back on the same address having lost its data: 404 → register
    // again, and its lower indexes are applied.
    let state: FakeState = Arc::new((Mutex::new(Fake { forget: true, ..Fake::default() }), tokio::sync::Notify::new()));
    state
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .blobs
        .insert(format!("sha256:{}", sha256_hex(&hello)), hello.clone());
    set_assignments(&state, 1, vec![job.clone()]);
    let listener = tokio::net::TcpListener::bind(server_addr).await.expect("bind the same address again");
    let server = tokio::spawn(axum::serve(listener, fake_scheduler(state.clone())).into_future());
    wait_for("re-registration and the new set", || {
        let hb = last_heartbeat(&state);
        let f = state.0.lock().unwrap_or_else(|e| e.into_inner());
        f.registrations == 1 && hb.len() == 1 && hb[0].id == "job-1"
    })
    .await;
    let web_dir = logs::replica_dir(&data, "web-1");
    wait_for("the stop line", || log_text(&web_dir).ends_with("skiff stopping: no longer assigned to this node")).await;
    let web_log = log_text(&web_dir);
    assert!(web_log.contains("skiff stopping: reassigned (generation 1 → 2, revision 1 → 1)"), "{web_log}");

    node.abort();
    server.abort();
    let _ = std::fs::remove_dir_all(&data);
}

/// The SDK's example guests, when they have been built (`make wasm`; the
/// Makefile exports SKIFF_WASM_P1/P2): real Rust guests through both WASI shapes.
fn example(var: &str, target: &str, name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target").join(target).join("release/examples")
    });
    std::fs::read(dir.join(format!("{name}.wasm"))).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_examples_run_as_modules_and_components() {
    let data = temp_dir("examples");
    let rt = WasmRuntime::new(&data).expect("runtime");
    let mut ran = 0;
    for (var, target, crash_status) in [("SKIFF_WASM_P1", "wasm32-wasip1", 3), ("SKIFF_WASM_P2", "wasm32-wasip2", 1)] {
        let get = |name| example(var, target, name);
        let (Some(worker), Some(crasher), Some(membomb)) = (get("worker"), get("crasher"), get("membomb")) else {
            // Under `make test` (which sets the variable) a missing example is a failure.
            assert!(std::env::var_os(var).is_none(), "{var} is set but the {target} examples are missing");
            eprintln!("skipping {target} examples: not built (make wasm)");
            continue;
        };
        ran += 1;
        let mut s = spec(&format!("worker-{crash_status}"));
        s.env = [("EXIT_AFTER", "2"), ("INTERVAL_MS", "10"), ("GREETING", "hey")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.memory_limit = 64 << 20;
        let dir = logs::replica_dir(&data, &s.replica);
        let sink = LogSink::open(dir.clone()).expect("log");
        let outcome = rt.run(compile(&rt, &worker), s, sink.clone()).await;
        sink.flush_all();
        let log = log_text(&dir);
        assert_eq!(outcome, Outcome::Exited(0), "{target}: {log}");
        assert!(log.contains("hey #2"), "{target}: {log}");

        let mut s = spec("crasher");
        s.memory_limit = 64 << 20;
        let sink = LogSink::open(logs::replica_dir(&data, "crasher")).expect("log");
        assert_eq!(rt.run(compile(&rt, &crasher), s, sink).await, Outcome::Exited(crash_status));

        let mut s = spec("membomb");
        s.memory_limit = 64 << 20;
        let sink = LogSink::open(logs::replica_dir(&data, "membomb")).expect("log");
        let outcome = rt.run(compile(&rt, &membomb), s, sink).await;
        assert_eq!(outcome.reason(), "memory limit of 64Mi exceeded", "{target}");
    }
    eprintln!("ran the examples of {ran} targets");
    let _ = std::fs::remove_dir_all(&data);
}

/// An HTTP component whose liveness probe fails is restarted by its
/// supervisor, and the restarts and exits are counted in the node's metrics
/// (the crash-loop alert in docs/metrics.md reads them) as a command's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_an_http_component_and_is_counted() {
    let Some(hello) = example("SKIFF_WASM_P2", "wasm32-wasip2", "hello_http") else {
        // Under `make test` (which sets the variable) a missing example is a failure.
        assert!(std::env::var_os("SKIFF_WASM_P2").is_none(), "SKIFF_WASM_P2 is set but hello_http is missing");
        eprintln!("skipping: hello_http not built (make wasm)");
        return;
    };
    let data = temp_dir("http-liveness");
    let http = crate::http::HttpRuntime::new(&data, crate::http::HttpConfig { concurrency: 4, ..Default::default() })
        .expect("http runtime");
    let commands = Arc::new(WasmRuntime::new(&data).expect("runtime"));
    let runtimes = Arc::new(Runtimes::new(&data, commands, Some(Arc::new(http)), None).expect("runtimes"));
    let ctx = Arc::new(Context { runtimes, client: None, data_dir: data.clone(), ingress: None });
    std::fs::write(data.join("blobs").join(sha256_hex(&hello)), &hello).expect("write blob");
    // hello_http answers /healthz with 500 while HEALTHY=false.
    let deployment = "unhealthy-http";
    let mut a = assignment("unhealthy-http-1", &hello, RestartPolicy::Always);
    a.deployment = deployment.into();
    a.spec.resources = Resources::new(100, 64 << 20);
    a.spec.env.insert("HEALTHY".into(), "false".into());
    let probe = skiff_api::Probe {
        http: Some(skiff_api::HttpProbe { path: "/healthz".into(), status: 200, port: None }),
        tcp: None,
        exec: None,
        period_seconds: 1,
        timeout_seconds: 1,
        failure_threshold: 1,
        initial_delay_seconds: 0,
    };
    a.spec.probes.liveness = Some(probe);
    let metrics = &crate::metrics::METRICS;
    let restarts = || metrics.restarts.with_label_values(&[deployment]).get();
    let exits = || metrics.exits.with_label_values(&[deployment, "trap"]).get();
    let (restarts_before, exits_before) = (restarts(), exits());

    let r = Replica::start(ctx.clone(), a);
    let t = Instant::now();
    while r.status().restarts < 2 {
        assert!(t.elapsed() < Duration::from_secs(15), "no two restarts: {:?}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = log_text(&logs::replica_dir(&data, "unhealthy-http-1"));
    assert!(log.contains("liveness probe failed: GET /healthz answered 500, expected 200"), "{log}");
    let counted = (restarts() - restarts_before, exits() - exits_before);
    assert!(counted.0 >= 2 && counted.1 >= 2, "restarts and exits counted in the metrics: {counted:?}");
    drop(r);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn desired_says_which_replicas_an_answer_touched() {
    use crate::agent::{Desired, Touched};
    let asg = |id: &str| assignment(id, b"\0asm", RestartPolicy::Always);
    let answer = |delta, replicas: Vec<skiff_api::Assignment>, removed: Vec<&str>| skiff_api::Assignments {
        delta,
        replicas,
        removed: removed.into_iter().map(String::from).collect(),
        index: 1,
        purge_volumes: vec![],
        lease_ms: 0,
    };
    let mut d = Desired::default();
    assert_eq!(d.update(answer(false, vec![asg("web-aaaaaa"), asg("web-bbbbbb")], vec![])), Touched::All);
    assert_eq!(d.len(), 2);
    let t = d.update(answer(true, vec![asg("web-cccccc"), asg("BAD/ID")], vec!["web-aaaaaa"]));
    assert_eq!(t, Touched::Some(vec!["web-aaaaaa".into(), "web-cccccc".into()]), "an invalid id is left out");
    let mut ids: Vec<&str> = d.all().map(|a| a.replica.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["web-bbbbbb", "web-cccccc"]);
}

#[test]
fn a_delta_heartbeat_carries_only_replicas_whose_status_or_usage_changed() {
    use crate::agent::{FULL_EVERY, Reports};
    let st = |id: &str, state, requests| skiff_api::ReplicaStatus {
        id: id.into(),
        generation: 1,
        state,
        restarts: 0,
        reason: None,
        exit_code: None,
        cpu_seconds: 0.5,
        memory_bytes: 0,
        requests,
        errors: 0,
        latency: vec![],
    };
    let ids = |hb: &skiff_api::Heartbeat| hb.replicas.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let mut reports = Reports::default();
    let first =
        vec![st("a", ReplicaState::Ready, 1), st("b", ReplicaState::Ready, 1), st("c", ReplicaState::Starting, 0)];
    let hb = reports.heartbeat(Resources::default(), &first, 1);
    assert!(!hb.delta, "the first after registering is full");
    assert_eq!(ids(&hb), ["a", "b", "c"]);
    reports.answered(&hb, first, 1);
    // a served a request, c became ready; b is idle and unchanged: left out.
    let now = vec![st("a", ReplicaState::Ready, 2), st("b", ReplicaState::Ready, 1), st("c", ReplicaState::Ready, 0)];
    let hb = reports.heartbeat(Resources::default(), &now, 1);
    assert!(hb.delta);
    assert_eq!(ids(&hb), ["a", "c"]);
    reports.answered(&hb, now.clone(), 1);
    for _ in 2..FULL_EVERY {
        let hb = reports.heartbeat(Resources::default(), &now, 1);
        assert!(hb.delta && hb.replicas.is_empty(), "nothing changed: a sign of life");
        reports.answered(&hb, now.clone(), 1);
    }
    let hb = reports.heartbeat(Resources::default(), &now, 1);
    assert!(!hb.delta, "every FULL_EVERY-th is full");
    assert_eq!(ids(&hb), ["a", "b", "c"]);
}
