//! Progressive delivery (#18): canary rollouts under real load through a real
//! ingress. The workload is `flaky_http`, whose error rate (`FAIL_PERCENT`)
//! and latency (`DELAY_MS`) come from its env, so a bad revision is the same
//! artifact with other env; every answer names the revision that served it
//! (`x-skiff-revision`).
//!
//! - a good revision under continuous load: the split observed at each step is
//!   within ±3 points of the step's weight, no request fails, it ends
//!   promoted and the old replicas are gone;
//! - a bad revision (20% 500s, ready all the same) is aborted at its first
//!   step, at most its weight + 3 points of the requests reached it, no
//!   replica of it is left, and the `CanaryAborted` event names the figures;
//! - a slow revision (p99 4× the stable's) is aborted on `max_p99_ms`;
//! - a `pause: manual` step waits for `skiff rollout promote`, and a request
//!   with `x-skiff-revision: N` goes to that revision while both run.

use serde_json::Value;
use skiff_tests::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Fixture {
    dev: Dev,
    ingress: String,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dev = Dev::start(tag);
        let ingress = read_when_ready(&dev.data().join("ingress.addr"));
        std::fs::copy(wasm_p2("flaky_http"), dev.dir.path().join("flaky_http.wasm")).expect("copy flaky_http");
        Fixture { dev, ingress }
    }

    fn apply(&self, text: &str) {
        let file = self.dev.dir.path().join("web.yaml");
        std::fs::write(&file, text).expect("write manifest");
        self.dev.cli_ok(&["apply", "-f", file.to_str().unwrap_or_default()]);
    }

    fn deployment(&self) -> Value {
        let all = get_json(self.dev.dir.path(), &self.dev.url, "deployments");
        all.into_iter().find(|d| d["name"] == "web").unwrap_or_else(|| panic!("no deployment web"))
    }

    fn replicas(&self) -> Vec<Value> {
        get_json(self.dev.dir.path(), &self.dev.url, "replicas")
            .into_iter()
            .filter(|r| r["deployment"] == "web")
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        let body = http_get(&format!("{}/v1/events?object=deployment/web&limit=1000", self.dev.url))
            .unwrap_or_else(|e| panic!("events: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("events: {e}: {body}"))
    }

    fn rolled_out(&self) {
        let st = self.dev.cli(&["rollout", "status", "web", "--timeout", "90s"]);
        assert!(st.ok, "{}{}", st.stdout, st.stderr);
    }

    /// Waits for the rollout to reach `state`.
    fn wait_rollout(&self, state: &str, secs: u64) -> Value {
        wait_for(Duration::from_secs(secs), &format!("rollout {state}"), || {
            let d = self.deployment();
            if d["rollout"]["state"] == state { Ok(d) } else { Err(format!("{}", d["rollout"])) }
        })
    }
}

/// The manifest of `web`: 4 replicas of `flaky_http` with `env` (a YAML
/// flow map's inside) and canary `canary` (the canary's own keys).
fn manifest(env: &str, canary: &str) -> String {
    format!(
        "name: web\nwasm: flaky_http.wasm\nreplicas: 4\nresources: {{cpu: 50m, memory: 32Mi}}\n\
         env: {{{env}}}\n\
         probes: {{readiness: {{http: {{path: /healthz}}, period_seconds: 1}}}}\n\
         strategy: {{progress_deadline_seconds: 120, canary: {{{canary}}}}}\n"
    )
}

/// One answer seen by the load: when, which revision served it (0: none), its status.
type Seen = (Instant, u64, u16, String);

/// Clients sending `GET /` to `web` through `ingress` until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ingress: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, seen, ingress) = (stop.clone(), seen.clone(), ingress.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let a = get(&ingress, "web.skiff.local", "/");
                        let entry = match a {
                            Ok(a) => {
                                let rev = a.header("x-skiff-revision").and_then(|v| v.parse().ok()).unwrap_or(0);
                                (Instant::now(), rev, a.status, a.body.trim().to_string())
                            }
                            Err(e) => (Instant::now(), 0, 0, e),
                        };
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
                    }
                })
            })
            .collect();
        Load { stop, seen, threads }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A `GET /` of `web` with header `x-skiff-revision: revision`.
fn pinned(ingress: &str, revision: u64) -> Answer {
    use std::io::{Read, Write};
    let addr = ingress.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(s, "GET / HTTP/1.0\r\nHost: web.skiff.local\r\nx-skiff-revision: {revision}\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

#[test]
fn a_good_canary_takes_each_steps_share_under_load_and_is_promoted() {
    let f = Fixture::new("canary-good");
    let canary = "steps: [{weight: 25, pause: 4s}, {weight: 50, pause: 4s}], \
                  analysis: {max_error_rate: 0.01, min_requests: 100, interval: 2s}";
    f.apply(&manifest("V: '1'", canary));
    f.rolled_out();

    let load = Load::start(&f.ingress, 3);
    wait_for(Duration::from_secs(30), "load flowing", || if load.count() > 50 { Ok(()) } else { Err("".into()) });
    f.apply(&manifest("V: '2'", canary));
    // The weight the ingress applies, as the scheduler shows it, over time.
    let mut phases: Vec<(Instant, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = f.deployment();
        let weight = d["rollout"]["canary"]["weight"].as_u64().unwrap_or(0);
        if phases.last().is_none_or(|(_, w)| *w != weight) {
            phases.push((Instant::now(), weight));
        }
        if d["rollout"]["state"] == "complete" {
            break;
        }
        assert_ne!(d["rollout"]["state"], "rolled-back", "{}", d["rollout"]);
        assert!(Instant::now() < deadline, "no promotion within 120s: {}", d["rollout"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Some more load on the promoted revision.
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.finish();
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.2 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, such as {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(seen.len() >= 2000, "only {} requests over the rollout", seen.len());

    let weights: Vec<u64> = phases.iter().map(|p| p.1).collect();
    for want in [25, 50] {
        let i = phases.iter().position(|p| p.1 == want).unwrap_or_else(|| panic!("no step at {want}%: {weights:?}"));
        // The step's window, less 300 ms at its start for the ingress's table to catch up.
        let from = phases[i].0 + Duration::from_millis(300);
        let to = phases.get(i + 1).map_or(Instant::now(), |p| p.0);
        let window: Vec<&Seen> = seen.iter().filter(|s| s.0 >= from && s.0 < to).collect();
        let canary = window.iter().filter(|s| s.1 == 2).count();
        let share = canary as f64 * 100.0 / window.len().max(1) as f64;
        eprintln!("step {want}%: {canary} of {} requests to revision 2 ({share:.1}%)", window.len());
        assert!(window.len() >= 100, "too few requests at {want}%: {}", window.len());
        assert!((share - want as f64).abs() <= 3.0, "at {want}%: {share:.1}% of {} went to the canary", window.len());
    }
    let d = f.deployment();
    assert_eq!(d["revision"], 2);
    assert_eq!(d["rollout"]["canary"]["promoted"], true, "{}", d["rollout"]);
    let left = f.replicas();
    assert!(left.iter().all(|r| r["revision"] == 2), "old replicas left: {left:?}");
    let reasons: Vec<String> = f.events().iter().map(|e| e["reason"].as_str().unwrap_or("").to_string()).collect();
    assert!(reasons.iter().filter(|r| *r == "CanaryStep").count() >= 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "CanaryPromoted"), "{reasons:?}");
    // The node counts the split's requests by the revision it chose.
    let api = read_when_ready(&f.dev.data().join("node").join("node.addr"));
    let page = get(&api, "node", "/metrics").expect("GET /metrics").body;
    for rev in ["1", "2"] {
        let series = format!(r#"skiff_node_ingress_requests_total{{code="200",deployment="web",revision="{rev}"}}"#);
        assert!(page.contains(&series), "no {series} in {page}");
    }
}

#[test]
fn a_canary_that_fails_a_fifth_of_requests_is_aborted_at_its_first_step() {
    let f = Fixture::new("canary-bad");
    let canary = "steps: [{weight: 10, pause: 60s}, {weight: 50, pause: 60s}], \
                  analysis: {max_error_rate: 0.01, min_requests: 50, interval: 2s}";
    f.apply(&manifest("FAIL_PERCENT: '0'", canary));
    f.rolled_out();
    let load = Load::start(&f.ingress, 3);
    wait_for(Duration::from_secs(30), "load flowing", || if load.count() > 50 { Ok(()) } else { Err("".into()) });
    f.apply(&manifest("FAIL_PERCENT: '20'", canary));
    let d = f.wait_rollout("rolled-back", 90);
    wait_for(Duration::from_secs(30), "no replica of revision 2 left", || {
        let left = f.replicas();
        if left.iter().all(|r| r["revision"] == 1) { Ok(()) } else { Err(format!("{left:?}")) }
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.finish();
    let msg = d["rollout"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("at step 1 (10%)") && msg.contains("error rate"), "{msg}");
    let event = f.events().into_iter().find(|e| e["reason"] == "CanaryAborted").expect("a CanaryAborted event");
    let text = event["message"].as_str().unwrap_or_default();
    eprintln!("event: {text}");
    assert!(text.contains("error rate") && text.contains("> 1.0% over") && text.contains("requests"), "{text}");
    assert_eq!(d["revision"], 1);
    assert!(d["rollout"]["canary"]["canary"]["requests"].as_u64().unwrap_or(0) >= 50, "{}", d["rollout"]);

    let to_canary = seen.iter().filter(|s| s.1 == 2).count();
    let share = to_canary as f64 * 100.0 / seen.len() as f64;
    eprintln!("{to_canary} of {} requests reached revision 2 ({share:.1}%)", seen.len());
    assert!(share <= 13.0, "{share:.1}% of requests reached the bad canary");
    // Only the canary failed requests, and only by its own answers.
    let failed_elsewhere: Vec<&Seen> = seen.iter().filter(|s| s.2 != 200 && s.1 != 2).collect();
    assert!(failed_elsewhere.is_empty(), "{:?}", &failed_elsewhere[..failed_elsewhere.len().min(5)]);
    assert!(seen.iter().any(|s| s.2 == 500 && s.1 == 2), "the canary never answered 500: the test proves nothing");
    let st = f.dev.cli(&["rollout", "status", "web", "--timeout", "5s"]);
    assert!(!st.ok && st.stderr.contains("aborted"), "{}{}", st.stdout, st.stderr);
}

#[test]
fn a_canary_four_times_slower_is_aborted_on_max_p99() {
    let f = Fixture::new("canary-slow");
    let canary = "steps: [{weight: 20, pause: 60s}], \
                  analysis: {max_error_rate: 0.01, max_p99_ms: 60, min_requests: 30, interval: 2s}";
    f.apply(&manifest("DELAY_MS: '25'", canary));
    f.rolled_out();
    let load = Load::start(&f.ingress, 3);
    wait_for(Duration::from_secs(30), "load flowing", || if load.count() > 50 { Ok(()) } else { Err("".into()) });
    f.apply(&manifest("DELAY_MS: '100'", canary));
    let d = f.wait_rollout("rolled-back", 90);
    let seen = load.finish();
    let msg = d["rollout"]["message"].as_str().unwrap_or_default().to_string();
    eprintln!("{msg}");
    assert!(msg.contains("p99") && msg.contains("> 60 ms"), "{msg}");
    let failed = seen.iter().filter(|s| s.2 != 200).count();
    assert_eq!(failed, 0, "a slow canary fails no request");
    let stable = &d["rollout"]["canary"]["stable"];
    assert!(stable["p99_ms"].as_u64().unwrap_or(0) <= 60, "the stable was judged slow too: {stable}");
}

#[test]
fn a_manual_step_waits_for_promote_and_the_revision_header_pins_requests() {
    let f = Fixture::new("canary-manual");
    let canary = "steps: [{weight: 10, pause: manual}], analysis: {min_requests: 1000, interval: 1s}";
    f.apply(&manifest("V: '1'", canary));
    f.rolled_out();
    f.apply(&manifest("V: '2'", canary));
    wait_for(Duration::from_secs(60), "the canary at 10%", || {
        let d = f.deployment();
        if d["rollout"]["canary"]["weight"] == 10 { Ok(()) } else { Err(format!("{}", d["rollout"])) }
    });
    // The ingress has the split once a pinned request reaches the canary.
    wait_for(Duration::from_secs(10), "the ingress to know revision 2", || {
        let a = pinned(&f.ingress, 2);
        if a.status == 200 { Ok(()) } else { Err(format!("{a:?}")) }
    });
    for revision in [1u64, 2, 1, 2] {
        for _ in 0..20 {
            let a = pinned(&f.ingress, revision);
            assert_eq!(a.status, 200, "{a:?}");
            assert_eq!(a.header("x-skiff-revision"), Some(revision.to_string()), "{a:?}");
        }
    }
    // A manual step does not move on by itself.
    std::thread::sleep(Duration::from_secs(3));
    let d = f.deployment();
    assert_eq!(d["rollout"]["state"], "progressing");
    assert_eq!(d["rollout"]["canary"]["step"], 0, "{}", d["rollout"]);
    let st = f.dev.cli(&["rollout", "status", "web", "--timeout", "2s"]);
    assert!(st.stdout.contains("canary step 1/1, weight 10%"), "{}{}", st.stdout, st.stderr);
    let out = f.dev.cli_ok(&["rollout", "promote", "web"]);
    assert!(out.contains("promoted"), "{out}");
    f.rolled_out();
    let left = f.replicas();
    assert!(left.len() == 4 && left.iter().all(|r| r["revision"] == 2), "{left:?}");
    for _ in 0..10 {
        let a = get(&f.ingress, "web.skiff.local", "/").expect("GET");
        assert_eq!((a.status, a.header("x-skiff-revision")), (200, Some("2".to_string())), "{a:?}");
    }
    let nothing = f.dev.cli(&["rollout", "abort", "web"]);
    assert!(!nothing.ok && nothing.stderr.contains("no canary under way"), "{}", nothing.stderr);
}

/// A `GET /` through `ingress` with `Host: host`: the revision that answered.
fn revision_at(ingress: &str, host: &str) -> (u16, Option<String>) {
    let a = get(ingress, host, "/").unwrap_or_else(|e| panic!("GET {host}: {e}"));
    (a.status, a.header("x-skiff-revision"))
}

#[test]
fn blue_green_previews_switches_at_once_and_rolls_back_without_starting_a_replica() {
    let f = Fixture::new("blue-green");
    let bg = |env: &str| {
        format!(
            "name: web\nwasm: flaky_http.wasm\nreplicas: 3\nresources: {{cpu: 50m, memory: 32Mi}}\n\
             env: {{{env}}}\n\
             probes: {{readiness: {{http: {{path: /healthz}}, period_seconds: 1}}}}\n\
             strategy: {{blue_green: {{preview: true, auto_promote_seconds: 0, scale_down_delay: 60s}}}}\n"
        )
    };
    f.apply(&bg("V: '1'"));
    f.rolled_out();
    f.apply(&bg("V: '2'"));
    wait_for(Duration::from_secs(60), "revision 2 up in full", || {
        let d = f.deployment();
        let c = &d["rollout"]["canary"];
        if c["step_started_ms"].as_u64().unwrap_or(0) > 0 { Ok(()) } else { Err(format!("{}", d["rollout"])) }
    });
    assert_eq!(f.replicas().len(), 6, "both revisions in full");
    // The preview name reaches only the new revision, the main name only the old.
    wait_for(Duration::from_secs(10), "the ingress to know the preview", || {
        match revision_at(&f.ingress, "web--preview.skiff.local") {
            (200, Some(r)) if r == "2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for _ in 0..20 {
        assert_eq!(revision_at(&f.ingress, "web--preview.skiff.local"), (200, Some("2".into())));
        assert_eq!(revision_at(&f.ingress, "web.skiff.local"), (200, Some("1".into())));
        let a = get(&f.ingress, "127.0.0.1", "/d/web--preview/").expect("GET /d/web--preview/");
        assert_eq!(a.header("x-skiff-revision"), Some("2".into()), "{a:?}");
    }
    // Not promoted by itself (auto_promote_seconds: 0).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.deployment()["rollout"]["canary"]["weight"], 0);

    let load = Load::start(&f.ingress, 2);
    wait_for(Duration::from_secs(30), "load flowing", || if load.count() > 50 { Ok(()) } else { Err("".into()) });
    f.dev.cli_ok(&["rollout", "promote", "web"]);
    wait_for(Duration::from_secs(30), "the switch", || {
        let d = f.deployment();
        if d["rollout"]["canary"]["weight"] == 100 { Ok(()) } else { Err(format!("{}", d["rollout"])) }
    });
    // After the ingress's table caught up, only revision 2 answers the main name.
    wait_for(Duration::from_secs(10), "the main name on revision 2", || {
        match revision_at(&f.ingress, "web.skiff.local") {
            (200, Some(r)) if r == "2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for _ in 0..20 {
        assert_eq!(revision_at(&f.ingress, "web.skiff.local"), (200, Some("2".into())));
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.finish();
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.2 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed across the switch: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    // The old revision is still up for the scale-down delay ...
    let before: std::collections::BTreeSet<String> =
        f.replicas().iter().map(|r| r["id"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(before.len(), 6, "the old revision stays up: {before:?}");
    // ... so a rollback starts nothing: its replicas are there and ready.
    f.dev.cli_ok(&["rollout", "undo", "web"]);
    wait_for(Duration::from_secs(30), "back on revision 1", || {
        let left = f.replicas();
        if left.len() == 3 && left.iter().all(|r| r["revision"] == 1) { Ok(()) } else { Err(format!("{left:?}")) }
    });
    let after: std::collections::BTreeSet<String> =
        f.replicas().iter().map(|r| r["id"].as_str().unwrap_or_default().to_string()).collect();
    assert!(after.is_subset(&before), "a replica started for the rollback: {after:?} not in {before:?}");
    wait_for(Duration::from_secs(10), "the main name on revision 1", || {
        match revision_at(&f.ingress, "web.skiff.local") {
            (200, Some(r)) if r == "1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for _ in 0..10 {
        assert_eq!(revision_at(&f.ingress, "web.skiff.local"), (200, Some("1".into())));
    }
}

/// Two nodes, requests through the first node's ingress only: the canary's
/// share holds when most replicas are on the other node (the revision chosen
/// travels with the request passed on, in `x-skiff-revision`).
#[test]
fn the_split_holds_across_nodes() {
    let dir = TempDir::new("canary-nodes");
    let (_server, url, token) = loopback_server(dir.path(), &[]);
    let mut nodes = Vec::new();
    let mut ingresses = Vec::new();
    for name in ["n1", "n2"] {
        let (node, ingress) = start_node_on_loopback(dir.path(), &url, &token, name, &[]);
        nodes.push(node);
        ingresses.push(ingress);
    }
    wait_for(Duration::from_secs(30), "2 ready nodes", || {
        let n = get_json(dir.path(), &url, "nodes");
        if n.iter().filter(|x| x["state"] == "ready").count() == 2 { Ok(()) } else { Err(format!("{n:?}")) }
    });
    std::fs::copy(wasm_p2("flaky_http"), dir.path().join("flaky_http.wasm")).expect("copy");
    let canary = "steps: [{weight: 30, pause: 6s}], analysis: {max_error_rate: 0.01, min_requests: 50, interval: 2s}";
    let file = dir.path().join("web.yaml");
    let apply = |env: &str| {
        std::fs::write(&file, manifest(env, canary)).expect("write");
        cli_ok(dir.path(), &url, &["apply", "-f", file.to_str().unwrap_or_default()]);
    };
    let deployment =
        || get_json(dir.path(), &url, "deployments").into_iter().find(|d| d["name"] == "web").expect("web");
    apply("V: '1'");
    let st = cli_in(dir.path(), &url, &["rollout", "status", "web", "--timeout", "90s"]);
    assert!(st.ok, "{}{}", st.stdout, st.stderr);
    let load = Load::start(&ingresses[0], 3);
    wait_for(Duration::from_secs(30), "load flowing", || if load.count() > 50 { Ok(()) } else { Err("".into()) });
    apply("V: '2'");
    let started = wait_for(Duration::from_secs(60), "the canary at 30%", || {
        let d = deployment();
        if d["rollout"]["canary"]["weight"] == 30 { Ok(Instant::now()) } else { Err(format!("{}", d["rollout"])) }
    });
    let ended = wait_for(Duration::from_secs(90), "promotion", || {
        let d = deployment();
        if d["rollout"]["canary"]["promoted"] == true { Ok(Instant::now()) } else { Err(format!("{}", d["rollout"])) }
    });
    let seen = load.finish();
    let placed: Vec<String> = get_json(dir.path(), &url, "replicas")
        .iter()
        .map(|r| format!("{}@{}", r["revision"], r["node"].as_str().unwrap_or("")))
        .collect();
    let window: Vec<&Seen> =
        seen.iter().filter(|s| s.0 >= started + Duration::from_millis(300) && s.0 < ended).collect();
    let share = window.iter().filter(|s| s.1 == 2).count() as f64 * 100.0 / window.len().max(1) as f64;
    eprintln!("30% step across nodes: {share:.1}% of {} requests; replicas now {placed:?}", window.len());
    assert!(window.len() >= 100, "too few requests: {}", window.len());
    assert!((share - 30.0).abs() <= 3.0, "{share:.1}% of {} went to the canary", window.len());
    let failed = seen.iter().filter(|s| s.2 != 200).count();
    assert_eq!(failed, 0, "of {}", seen.len());
    drop(nodes);
}

/// Three servers on etcd: the leader is SIGKILLed while a canary is at its
/// first step. The new leader resumes the same step (stored with the
/// rollout), goes on to promote once, and no request fails.
#[test]
fn a_canary_resumes_its_step_after_the_leader_dies_on_etcd() {
    use crate::servers::{Trio, leader, three_servers_on_loopback};
    let dir = TempDir::new("canary-etcd");
    let cwd = dir.path();
    let Trio { etcd: _etcd, mut procs, urls, each: [_, u2, _], join, first } = three_servers_on_loopback(cwd);
    let (_node, ingress) = crate::servers::start_loopback_node(cwd, &urls, &join, "n1");
    std::fs::copy(wasm_p2("flaky_http"), cwd.join("flaky_http.wasm")).expect("copy");
    let canary = "steps: [{weight: 20, pause: 6s}, {weight: 50, pause: 3s}], \
                  analysis: {max_error_rate: 0.01, min_requests: 30, interval: 2s}";
    let file = cwd.join("web.yaml");
    let apply = |env: &str| {
        std::fs::write(&file, manifest(env, canary)).expect("write");
        cli_ok(cwd, &urls, &["apply", "-f", file.to_str().unwrap_or_default()]);
    };
    let deployment = || get_json(cwd, &urls, "deployments").into_iter().find(|d| d["name"] == "web");
    apply("V: '1'");
    let st = cli_in(cwd, &urls, &["rollout", "status", "web", "--timeout", "90s"]);
    assert!(st.ok, "{}{}", st.stdout, st.stderr);
    let load = Load::start(&ingress, 2);
    wait_for(Duration::from_secs(30), "load flowing", || if load.count() > 50 { Ok(()) } else { Err("".into()) });
    apply("V: '2'");
    let before = wait_for(Duration::from_secs(60), "the canary at 20%", || {
        let d = deployment().ok_or("no web")?;
        if d["rollout"]["canary"]["weight"] == 20 {
            Ok(d["rollout"]["canary"].clone())
        } else {
            Err(format!("{}", d["rollout"]))
        }
    });

    let i = procs.iter().position(|(n, _)| *n == first).unwrap_or_else(|| panic!("no server {first}"));
    let (_, mut dead) = procs.remove(i);
    dead.kill();
    let second = wait_for(Duration::from_secs(20), "a new leader", || {
        let l = leader(cwd, &urls)?;
        if l != first { Ok(l) } else { Err(format!("still {l}")) }
    });
    println!("{second} leads after {first} was killed at {before}");
    // The same step, started at the same time: resumed, not restarted.
    let after = deployment().expect("web")["rollout"]["canary"].clone();
    assert!(
        after["step"].as_u64() > before["step"].as_u64() || after["step_started_ms"] == before["step_started_ms"],
        "before {before} after {after}"
    );
    let done = wait_for(Duration::from_secs(120), "the rollout complete", || {
        let d = deployment().ok_or("no web")?;
        assert_ne!(d["rollout"]["state"], "rolled-back", "{}", d["rollout"]);
        if d["rollout"]["state"] == "complete" { Ok(d) } else { Err(format!("{}", d["rollout"])) }
    });
    let seen = load.finish();
    assert_eq!(done["revision"], 2);
    let live = get_json(cwd, &urls, "replicas");
    assert!(live.iter().all(|r| r["revision"] == 2), "{live:?}");
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.2 != 200).collect();
    assert!(failed.is_empty(), "{} of {} failed: {:?}", failed.len(), seen.len(), &failed[..failed.len().min(5)]);
    let body = http_get(&format!(
        "{}/v1/events?object=deployment/web&limit=1000",
        urls.split(',').find(|u| *u != crate::servers::server_url(cwd, &first)).unwrap_or(&u2)
    ))
    .unwrap_or_default();
    let events: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
    let said = |text: &str| events.iter().filter(|e| e["message"].as_str().unwrap_or("").contains(text)).count();
    assert_eq!(said("step 1/2:"), 1, "{events:?}");
    assert_eq!(said("step 2/2:"), 1, "{events:?}");
    assert_eq!(said("passed all 2 steps"), 1, "promoted once: {events:?}");
}
