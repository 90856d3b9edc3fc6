//! Scale to zero: HTTP deployments (a Wasm component, a container with a port)
//! go to zero replicas after `idle_seconds` without a request, with a
//! `ScaledToZero` event; their name stays routable, and the next request is
//! held at the ingress while one replica starts, then answered. Concurrent first
//! requests through two nodes share one activation (one `ScaledFromZero` event,
//! one replica); the queue bound answers 503 with `Retry-After`, the activation
//! timeout 504; a deployment under load never goes to zero; a rollout at zero
//! changes the revision and starts nothing; `skiff get`/`describe` say so.

use serde_json::Value;
use skiff_tests::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// A server and nodes as separate processes, each node with `node_extra` flags.
struct Cluster {
    dir: TempDir,
    url: String,
    _server: Proc,
    nodes: Vec<Proc>,
    /// Each node's ingress (`http://127.0.0.1:PORT`) and node API.
    ingresses: Vec<String>,
    apis: Vec<String>,
}

impl Cluster {
    fn new(tag: &str, nodes: &[&str], node_extra: &[&str]) -> Cluster {
        let dir = TempDir::new(tag);
        let (server, url, token) = loopback_server(dir.path(), &[]);
        let mut c = Cluster { dir, url, _server: server, nodes: Vec::new(), ingresses: Vec::new(), apis: Vec::new() };
        for name in nodes {
            let data = c.dir.path().join(format!("node-{name}"));
            let (node, ingress) = start_node_on_loopback(c.dir.path(), &c.url, &token, name, node_extra);
            c.nodes.push(node);
            c.ingresses.push(ingress);
            c.apis.push(read_when_ready(&data.join("node.addr")));
        }
        let n = nodes.len();
        wait_for(Duration::from_secs(30), &format!("{n} ready nodes"), || {
            let nodes = c.get("nodes");
            let ready = nodes.iter().filter(|node| node["state"] == "ready").count();
            if ready == n { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
        c
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn get(&self, kind: &str) -> Vec<Value> {
        get_json(self.dir.path(), &self.url, kind)
    }

    fn deployment(&self, name: &str) -> Value {
        let all = self.get("deployments");
        all.into_iter().find(|d| d["name"] == name).unwrap_or_else(|| panic!("no deployment {name}"))
    }

    /// Live replicas of `name` (any state).
    fn replicas(&self, name: &str) -> Vec<Value> {
        self.get("replicas").into_iter().filter(|r| r["deployment"] == name).collect()
    }

    /// Events about deployment `name`, oldest first.
    fn events(&self, name: &str) -> Vec<Value> {
        let body = http_get(&format!("{}/v1/events?object=deployment/{name}&limit=1000", self.url))
            .unwrap_or_else(|e| panic!("events of {name}: {e}"));
        let mut events: Vec<Value> = serde_json::from_str(&body).unwrap_or_else(|e| panic!("events: {e}: {body}"));
        events.sort_by_key(|e| e["id"].as_u64());
        events
    }

    fn count_events(&self, name: &str, reason: &str) -> usize {
        self.events(name).iter().filter(|e| e["reason"] == reason).count()
    }

    /// Waits until `name` is at zero: no replica asked for, none left, and a
    /// `ScaledToZero` event (the `n`th) says why.
    fn wait_zero(&self, name: &str, n: usize) {
        wait_for(Duration::from_secs(60), &format!("{name} scaled to zero ({n} times)"), || {
            let d = self.deployment(name);
            let left = self.replicas(name);
            let zeroed = self.count_events(name, "ScaledToZero");
            if d["replicas"] == 0 && left.is_empty() && zeroed >= n {
                Ok(())
            } else {
                Err(format!("replicas {} live {left:?} ScaledToZero events {zeroed}", d["replicas"]))
            }
        });
    }

    /// The node API's `/metrics` of node `i`.
    fn metrics(&self, i: usize) -> String {
        let a = get(&self.apis[i], "node", "/metrics").unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(a.status, 200, "{a:?}");
        a.body
    }

    /// (Wasm compiles, compiled-code loads from disk) on node `i` so far.
    fn compiles_and_loads(&self, i: usize) -> (f64, f64) {
        let page = self.metrics(i);
        (
            metric(&page, "skiff_node_wasm_compile_duration_seconds_count"),
            metric(&page, "skiff_node_wasm_compiled_code_loads_total"),
        )
    }
}

fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn hello(dir: &Path) -> PathBuf {
    let copy = dir.join("hello_http.wasm");
    std::fs::copy(wasm_p2("hello_http"), &copy).expect("copy hello_http");
    copy
}

/// `GET /` of deployment `name` through `ingress`, which must answer 200 with
/// `WORD from REPLICA`; returns the replica.
fn served(ingress: &str, name: &str, word: &str) -> String {
    let a = get(ingress, &format!("{name}.skiff.local"), "/").unwrap_or_else(|e| panic!("GET {name}: {e}"));
    assert_eq!(a.status, 200, "GET {name} through {ingress}: {a:?}");
    let id = a.body.trim().strip_prefix(&format!("{word} from ")).unwrap_or_else(|| panic!("body {:?}", a.body));
    assert!(id.starts_with(&format!("{name}-")), "answered by {id}");
    id.to_string()
}

/// The answer to the first `GET /` of `name` through `ingress` once the
/// ingress knows the name (before, it answers 404, or 503 before it has any
/// table: neither starts anything).
fn first_answer(ingress: &str, name: &str) -> Answer {
    wait_for(Duration::from_secs(30), &format!("the ingress to know {name}"), || {
        let a = get(ingress, &format!("{name}.skiff.local"), "/")?;
        let unknown = a.status == 404 || a.body.contains("has not received the endpoints table");
        if unknown { Err(format!("{a:?}")) } else { Ok(a) }
    })
}

#[test]
fn wasm_deployment_goes_to_zero_when_idle_and_its_next_request_starts_it_without_compiling() {
    let c = Cluster::new("stz-wasm", &["n1"], &[]);
    let wasm = hello(c.dir.path());
    let wasm = wasm.to_str().unwrap_or_default();
    // Only HTTP deployments scale to zero: a Wasm command is refused before
    // anything is uploaded, an image without a port by the rules.
    std::fs::copy(wasm_p2("counter"), c.dir.path().join("counter.wasm")).expect("copy counter");
    let cmd = cli_in(c.dir.path(), &c.url, &["deploy", "counter.wasm", "--name", "cmd", "--scale-to-zero", "5s"]);
    assert!(!cmd.ok && cmd.stderr.contains("is not an HTTP component"), "{}", cmd.stderr);
    let img = cli_in(c.dir.path(), &c.url, &["deploy", "--image", "busybox", "--name", "img", "--scale-to-zero", "5s"]);
    assert!(!img.ok && img.stderr.contains("scale_to_zero is for HTTP deployments"), "{}", img.stderr);

    // (No --wait: its 2 s of steady readiness may outlast the 2 s idle time.)
    c.cli(&["deploy", wasm, "--name", "hello", "--memory", "32Mi", "--scale-to-zero", "2s"]);
    let first = wait_for(Duration::from_secs(30), "hello answering", || {
        let a = get(&c.ingresses[0], "hello.skiff.local", "/")?;
        if a.status == 200 { Ok(a.body) } else { Err(format!("{a:?}")) }
    });
    let described = c.cli(&["describe", "deployment", "hello"]);
    assert!(described.contains("Scale to zero: after 2s without a request"), "{described}");

    c.wait_zero("hello", 1);
    let table = c.cli(&["get", "deployments"]);
    let row = table.lines().find(|l| l.starts_with("hello ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("0/0 (scaled to zero)"), "{table}");
    let described = c.cli(&["describe", "deployment", "hello"]);
    assert!(described.contains("scaled to zero now: the next request starts a replica"), "{described}");
    assert!(described.contains("ScaledToZero") && described.contains("no request for 2s"), "{described}");

    // The node ran the component before: starting it again loads nothing anew
    // and compiles nothing (the compiled code is the node's, by digest).
    let (compiles, _) = c.compiles_and_loads(0);
    assert_eq!(compiles, 1.0, "one compile for the first replica");
    let before = c.count_events("hello", "ScaledFromZero");
    let zeroed = c.count_events("hello", "ScaledToZero");
    let second = served(&c.ingresses[0], "hello", "hello");
    assert_ne!(first.trim(), format!("hello from {second}"), "a new replica answers");
    assert_eq!(c.compiles_and_loads(0).0, compiles, "no compile when scaling from zero");
    let from_zero: Vec<Value> = c.events("hello").into_iter().filter(|e| e["reason"] == "ScaledFromZero").collect();
    assert_eq!(from_zero.len(), before + 1, "{from_zero:?}");
    let msg = from_zero.last().and_then(|e| e["message"].as_str()).unwrap_or_default();
    assert!(msg.contains("scaled from 0 to 1 replica for GET hello.skiff.local/"), "{msg}");
    assert!(msg.contains("at node n1's ingress"), "{msg}");

    // By path prefix too, once it is back at zero.
    c.wait_zero("hello", zeroed + 1);
    let a = get(&c.ingresses[0], "127.0.0.1", "/d/hello/").expect("GET /d/hello/");
    assert!(a.status == 200 && a.body.starts_with("hello from hello-"), "{a:?}");
}

#[test]
fn concurrent_first_requests_through_two_nodes_share_one_activation() {
    let c = Cluster::new("stz-many", &["n1", "n2"], &[]);
    let wasm = hello(c.dir.path());
    c.cli(&["deploy", wasm.to_str().unwrap_or_default(), "--name", "web", "--memory", "32Mi", "--scale-to-zero", "2s"]);
    // Known to both ingresses (answered through each), then idle.
    for ingress in &c.ingresses {
        wait_for(Duration::from_secs(30), "web answering", || {
            let a = get(ingress, "web.skiff.local", "/")?;
            if a.status == 200 { Ok(()) } else { Err(format!("{a:?}")) }
        });
    }
    c.wait_zero("web", 1);
    let before = c.count_events("web", "ScaledFromZero");

    let n = 50;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, ingress) = (barrier.clone(), c.ingresses[i % 2].clone());
            std::thread::spawn(move || {
                barrier.wait();
                get(&ingress, "web.skiff.local", "/")
            })
        })
        .collect();
    let answers: Vec<Answer> = threads.into_iter().map(|t| t.join().expect("thread").expect("answer")).collect();
    let mut ids = std::collections::BTreeSet::new();
    for a in &answers {
        assert_eq!(a.status, 200, "{a:?}");
        ids.insert(a.body.trim().strip_prefix("hello from ").unwrap_or_else(|| panic!("{a:?}")).to_string());
    }
    assert_eq!(ids.len(), 1, "one replica answered all {n}: {ids:?}");
    assert_eq!(c.count_events("web", "ScaledFromZero") - before, 1, "{:?}", c.events("web"));
    let live = c.replicas("web");
    assert_eq!(live.len(), 1, "one replica made: {live:?}");
    assert_eq!(c.deployment("web")["replicas"], 1);
}

#[test]
fn activation_queue_overflow_is_503_and_a_replica_never_ready_is_504() {
    let c = Cluster::new("stz-limits", &["n1"], &["--activation-queue", "2", "--activation-timeout", "3s"]);
    hello(c.dir.path());
    // Never ready: its readiness probe fails; at zero from the start.
    let yaml = "name: sick\nwasm: hello_http.wasm\nreplicas: 0\nresources: {cpu: 50m, memory: 32Mi}\n\
        env: {HEALTHY: \"false\"}\nscale_to_zero: {idle_seconds: 600}\n\
        probes:\n  readiness: {http: {path: /healthz}, period_seconds: 1}\n";
    let manifest = c.dir.path().join("sick.yaml");
    std::fs::write(&manifest, yaml).expect("manifest");
    c.cli(&["apply", "-f", manifest.to_str().unwrap_or_default()]);
    assert_eq!(c.deployment("sick")["replicas"], 0, "applied at zero");
    assert!(c.replicas("sick").is_empty(), "nothing runs at zero");

    // The first request (once the ingress knows the name) is held, starts a
    // replica, and is answered 504 when none is ready in time.
    let a = first_answer(&c.ingresses[0], "sick");
    assert_eq!(a.status, 504, "{a:?}");
    assert!(a.body.contains("no replica of sick became ready within 3s (--activation-timeout)"), "{a:?}");
    assert_eq!(c.count_events("sick", "ScaledFromZero"), 1);

    // Eight at once against a queue of two: the rest are turned away at once.
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, ingress) = (barrier.clone(), c.ingresses[0].clone());
            std::thread::spawn(move || {
                barrier.wait();
                get(&ingress, "sick.skiff.local", "/")
            })
        })
        .collect();
    let answers: Vec<Answer> = threads.into_iter().map(|t| t.join().expect("thread").expect("answer")).collect();
    let full: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    let timed_out = answers.iter().filter(|a| a.status == 504).count();
    assert!(!full.is_empty() && timed_out >= 2 && full.len() + timed_out == n, "{answers:?}");
    for a in full {
        assert_eq!(a.header("retry-after").as_deref(), Some("1"), "{a:?}");
        assert!(a.body.contains("requests for sick already wait for it to start (--activation-queue)"), "{a:?}");
    }
    // Still one activation: the replica was asked for once.
    assert_eq!(c.count_events("sick", "ScaledFromZero"), 1);
}

/// A replica slower to become ready than `idle_seconds` (its readiness probe
/// waits 3 s; idle after 1 s) still serves the request held for it: a held
/// request keeps the deployment busy, so it is not scaled back to zero while
/// the request waits (it was, again and again, until the activation timeout).
#[test]
fn a_replica_slower_to_start_than_its_idle_time_serves_the_held_request() {
    let c = Cluster::new("stz-slow", &["n1"], &[]);
    hello(c.dir.path());
    let yaml = "name: slow\nwasm: hello_http.wasm\nreplicas: 0\nresources: {cpu: 50m, memory: 32Mi}\n\
        scale_to_zero: {idle_seconds: 1}\n\
        probes:\n  readiness: {http: {path: /healthz}, period_seconds: 1, initial_delay_seconds: 3}\n";
    let manifest = c.dir.path().join("slow.yaml");
    std::fs::write(&manifest, yaml).expect("manifest");
    c.cli(&["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let a = first_answer(&c.ingresses[0], "slow");
    let answered_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    assert!(a.status == 200 && a.body.starts_with("hello from slow-"), "{a:?}");
    // Once served it may go idle again; until then it never went to zero.
    let events = c.events("slow");
    let before = |e: &&Value| e["time_ms"].as_u64().is_some_and(|t| t <= answered_ms);
    let count = |reason: &str| events.iter().filter(before).filter(|e| e["reason"] == reason).count();
    assert_eq!((count("ScaledFromZero"), count("ScaledToZero")), (1, 0), "{events:?}");
}

#[test]
fn continuous_load_never_scales_to_zero() {
    let c = Cluster::new("stz-load", &["n1"], &[]);
    let wasm = hello(c.dir.path());
    c.cli(&[
        "deploy",
        wasm.to_str().unwrap_or_default(),
        "--name",
        "busy",
        "--memory",
        "32Mi",
        "--scale-to-zero",
        "2s",
    ]);
    let ingress = &c.ingresses[0];
    let first = wait_for(Duration::from_secs(30), "busy answering", || {
        let a = get(ingress, "busy.skiff.local", "/")?;
        if a.status == 200 { Ok(a.body) } else { Err(format!("{a:?}")) }
    });
    // A request every 200 ms for four idle periods: one replica serves all of them.
    for _ in 0..40 {
        let a = get(ingress, "busy.skiff.local", "/").expect("GET busy");
        assert_eq!((a.status, &a.body), (200, &first), "the same replica serves throughout");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.count_events("busy", "ScaledToZero"), 0, "{:?}", c.events("busy"));
    assert_eq!(c.deployment("busy")["replicas"], 1);
    // Once the load stops, it goes.
    c.wait_zero("busy", 1);
}

#[test]
fn rollout_at_zero_changes_the_revision_and_the_next_request_runs_it() {
    let c = Cluster::new("stz-rollout", &["n1"], &[]);
    let wasm = hello(c.dir.path());
    let wasm = wasm.to_str().unwrap_or_default();
    let deploy = |greeting: &str| {
        let env = format!("GREETING={greeting}");
        c.cli(&["deploy", wasm, "--name", "greet", "--memory", "32Mi", "--scale-to-zero", "2s", "--env", &env])
    };
    deploy("hello");
    wait_for(Duration::from_secs(30), "greet answering", || {
        let a = get(&c.ingresses[0], "greet.skiff.local", "/")?;
        if a.status == 200 { Ok(()) } else { Err(format!("{a:?}")) }
    });
    c.wait_zero("greet", 1);

    let out = deploy("howdy");
    assert!(out.contains("deployment greet updated (revision 2)"), "{out}");
    let d = c.deployment("greet");
    assert_eq!((d["revision"].as_u64(), d["replicas"].as_u64()), (Some(2), Some(0)), "{d}");
    wait_for(Duration::from_secs(30), "the rollout at zero to complete", || {
        let d = c.deployment("greet");
        if d["rollout"]["state"] == "complete" { Ok(()) } else { Err(format!("{d}")) }
    });
    assert!(c.replicas("greet").is_empty(), "a rollout at zero starts nothing");
    assert_eq!(c.count_events("greet", "ScaledFromZero"), 0);

    served(&c.ingresses[0], "greet", "howdy");
    let live = c.replicas("greet");
    assert!(live.len() == 1 && live[0]["revision"] == 2, "{live:?}");
}

#[test]
fn container_with_a_port_goes_to_zero_and_its_next_request_starts_it() {
    if !require_root("containers (runc, overlayfs)") {
        return;
    }
    let dir = TempDir::new("stz-container");
    let data = dir.path().join("node");
    // Declared before the processes: dropped after them, it removes what they left.
    let _janitor = crate::containers::Janitor { state: data.join("containers/state"), data: data.clone() };
    let (_server, url, token) = loopback_server(dir.path(), &[]);
    let node_args = [
        "node",
        "--server",
        &url,
        "--token",
        &token,
        "--name",
        "n1",
        "--cpu",
        "2",
        "--memory",
        "1Gi",
        "--data-dir",
        data.to_str().unwrap_or_default(),
        "--listen",
        "127.0.0.1:0",
        "--ingress",
        "127.0.0.1:0",
        "--container-network",
        "loopback",
    ];
    let _node = Proc::start("node", &node_args, &dir.path().join("node.log"));
    let ingress = read_when_ready(&data.join("ingress.addr"));
    let (oci, _) = crate::containers::build_images(dir.path());
    cli_ok(dir.path(), &url, &["image", "import", oci.to_str().unwrap_or_default()]);
    // Host networking: the container's port is the node's (loopback-only
    // containers are unreachable from the ingress).
    let port = free_port().to_string();
    let web =
        format!("mkdir -p /www && echo served by $(hostname) > /www/index.html && exec httpd -f -p {port} -h /www");
    let args = [
        "deploy",
        "--image",
        "busybox",
        "--name",
        "box",
        "--memory",
        "32Mi",
        "--network",
        "host",
        "--port",
        &port,
        "--scale-to-zero",
        "2s",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        &web,
    ];
    cli_ok(dir.path(), &url, &args);
    let page = |want: &str| {
        wait_for(Duration::from_secs(60), &format!("box answering {want}"), || {
            let a = get(&ingress, "box.skiff.local", "/")?;
            if a.status == 200 && a.body.starts_with(want) { Ok(a.body) } else { Err(format!("{a:?}")) }
        })
    };
    page("served by ");
    let zero = || {
        wait_for(Duration::from_secs(60), "box scaled to zero", || {
            let d = get_json(dir.path(), &url, "deployments");
            let live = get_json(dir.path(), &url, "replicas");
            if d.iter().any(|d| d["name"] == "box" && d["replicas"] == 0) && live.is_empty() {
                Ok(())
            } else {
                Err(format!("{d:?} {live:?}"))
            }
        })
    };
    zero();
    // The next request is held while the container starts and listens: one
    // request, answered by it (no retry here).
    let a = get(&ingress, "box.skiff.local", "/").expect("GET box");
    assert!(a.status == 200 && a.body.starts_with("served by "), "{a:?}");
    let events = http_get(&format!("{url}/v1/events?object=deployment/box")).expect("events");
    assert!(events.contains("ScaledToZero") && events.contains("ScaledFromZero"), "{events}");
    zero();
}

/// Three servers on etcd and a node given all three: a deployment at zero is
/// activated by its next request after the leader was SIGKILLed (the node's
/// activation call moves to a live server and the new leader places one
/// replica).
#[test]
fn activation_works_after_the_leader_dies_on_etcd() {
    use crate::servers::{Trio, leader, three_servers_on_loopback};
    let dir = TempDir::new("stz-etcd");
    let cwd = dir.path();
    let Trio { etcd: _etcd, mut procs, urls, each: [u1, u2, u3], join, first } = three_servers_on_loopback(cwd);
    let (_node, ingress) = crate::servers::start_loopback_node(cwd, &urls, &join, "n1");
    let wasm = hello(cwd);
    cli_ok(cwd, &urls, &["deploy", wasm.to_str().unwrap_or_default(), "--name", "web", "--scale-to-zero", "2s"]);
    wait_for(Duration::from_secs(30), "web answering", || {
        let a = get(&ingress, "web.skiff.local", "/")?;
        if a.status == 200 { Ok(()) } else { Err(format!("{a:?}")) }
    });
    let events = |url: &str| -> Vec<Value> {
        let body = http_get(&format!("{url}/v1/events?object=deployment/web&limit=1000")).unwrap_or_default();
        serde_json::from_str(&body).unwrap_or_default()
    };
    let count = |url: &str, reason: &str| events(url).iter().filter(|e| e["reason"] == reason).count();
    wait_for(Duration::from_secs(60), "web scaled to zero", || {
        let d = get_json(cwd, &urls, "deployments");
        let zero = d.iter().any(|d| d["name"] == "web" && d["replicas"] == 0);
        let live = get_json(cwd, &urls, "replicas");
        if zero && live.is_empty() { Ok(()) } else { Err(format!("{d:?} {live:?}")) }
    });

    let i = procs.iter().position(|(n, _)| *n == first).unwrap_or_else(|| panic!("no server {first}"));
    let (_, mut dead) = procs.remove(i);
    dead.kill();
    let live_urls: Vec<&String> =
        [&u1, &u2, &u3].into_iter().filter(|u| crate::servers::server_url(cwd, &first) != **u).collect();
    let second = wait_for(Duration::from_secs(20), "a new leader", || {
        let l = leader(cwd, &urls)?;
        if l != first { Ok(l) } else { Err(format!("still {l}")) }
    });
    println!("{second} leads after {first} was killed");

    // The first request after the failover starts one replica and is answered.
    let a = get(&ingress, "web.skiff.local", "/").expect("GET web");
    assert!(a.status == 200 && a.body.starts_with("hello from web-"), "{a:?}");
    let url = live_urls[0];
    assert_eq!(count(url, "ScaledFromZero"), 1, "{:?}", events(url));
    let live = get_json(cwd, &urls, "replicas");
    assert_eq!(live.len(), 1, "one replica: {live:?}");
}
