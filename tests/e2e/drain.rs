//! Cordon, drain, uncordon and rebalance, on a scheduler and three `skiff node`
//! processes on loopback: a drain under continuous load through the ingresses
//! drops no request and leaves the node empty; a replica pinned to a volume is
//! reported, a `--timeout` names it, a SIGKILLed and restarted scheduler keeps
//! the drain, `--force` stops it; after a node is
//! SIGKILLed and comes back, `rebalance: true` spreads a deployment 2/2/2 again
//! without a failed request, and a deployment without it stays where it is
//! until `skiff rebalance` names it. A drain short of room elsewhere waits,
//! says why, and finishes by itself after the CLI was interrupted.

use serde_json::Value;
use skiff_tests::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

struct Cluster {
    dir: TempDir,
    url: String,
    token: String,
    server: Proc,
    nodes: BTreeMap<String, Proc>,
}

impl Cluster {
    fn new(tag: &str, nodes: &[&str]) -> Cluster {
        let dir = TempDir::new(tag);
        // A fixed port, so that the nodes find a restarted scheduler.
        let server = Self::server(dir.path(), free_port());
        let url = server_ready(&dir.path().join("server"));
        let token = read_when_ready(&dir.path().join("server/join-token"));
        let mut c = Cluster { dir, url, token, server, nodes: BTreeMap::new() };
        for name in nodes {
            c.start_node(name);
        }
        // Deploying before every node has registered would put every replica
        // on the first one.
        c.wait_nodes_ready(nodes.len());
        c
    }

    fn server(dir: &std::path::Path, port: u16) -> Proc {
        let data = dir.join("server");
        let listen = format!("127.0.0.1:{port}");
        let args = ["server", "--listen", &listen, "--data-dir", data.to_str().unwrap_or_default()];
        Proc::start("server", &args, &dir.join("server.log"))
    }

    /// SIGKILLs the scheduler and starts it again on its port and data.
    fn restart_server(&mut self) {
        self.server.kill();
        let port = self.url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port");
        self.server = Self::server(self.dir.path(), port);
        wait_for(Duration::from_secs(30), "the scheduler back", || {
            let out = self.cli(&["get", "nodes"]);
            if out.ok { Ok(()) } else { Err(out.stderr) }
        });
    }

    fn node_data(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("node-{name}"))
    }

    /// Starts node `name` (again, after a kill: same data dir, new ports).
    fn start_node(&mut self, name: &str) {
        let data = self.node_data(name);
        // A restarted node writes its addresses anew; the old files would be
        // read as if it were up.
        let _ = std::fs::remove_file(data.join("ingress.addr"));
        let _ = std::fs::remove_file(data.join("node.addr"));
        let (node, _) = start_node_on_loopback(self.dir.path(), &self.url, &self.token, name, &[]);
        self.nodes.insert(name.to_string(), node);
    }

    fn ingress(&self, name: &str) -> String {
        let addr = read_when_ready(&self.node_data(name).join("ingress.addr"));
        if addr.starts_with("http") { addr } else { format!("http://{addr}") }
    }

    fn cli(&self, args: &[&str]) -> Cli {
        cli_in(self.dir.path(), &self.url, args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn get(&self, kind: &str) -> Vec<Value> {
        get_json(self.dir.path(), &self.url, kind)
    }

    fn node(&self, name: &str) -> Value {
        self.get("nodes").into_iter().find(|n| n["name"] == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn wait_nodes_ready(&self, n: usize) {
        wait_for(Duration::from_secs(30), &format!("{n} ready nodes"), || {
            let nodes = self.get("nodes");
            let ready = nodes.iter().filter(|node| node["state"] == "ready").count();
            if ready == n { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
    }

    /// Live replicas of `deployment` as (id, node, state).
    fn replicas(&self, deployment: &str) -> Vec<(String, String, String)> {
        self.get("replicas")
            .into_iter()
            .filter(|r| r["deployment"] == deployment)
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                (s("id"), s("node"), s("state"))
            })
            .collect()
    }

    /// Ready replicas of `deployment` per node, once it has exactly `n`, all ready.
    fn wait_spread(&self, deployment: &str, n: usize, ok: impl Fn(&BTreeMap<String, usize>) -> bool) -> Vec<String> {
        wait_for(Duration::from_secs(90), &format!("{n} ready replicas of {deployment} spread as wanted"), || {
            let rs = self.replicas(deployment);
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for (_, node, state) in &rs {
                if state == "ready" {
                    *per.entry(node.clone()).or_default() += 1;
                }
            }
            if rs.len() == n && per.values().sum::<usize>() == n && ok(&per) {
                Ok(rs.into_iter().map(|r| r.0).collect())
            } else {
                Err(format!("{rs:?}"))
            }
        })
    }

    fn events(&self) -> String {
        self.cli_ok(&["events", "--limit", "1000"])
    }
}

/// Requests sent in a loop through the ingresses, round robin, until stopped:
/// every answer must be 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(ingresses: Vec<String>, deployments: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let threads = deployments
            .iter()
            .map(|d| {
                let (stop, sent, ingresses) = (stop.clone(), sent.clone(), ingresses.clone());
                let host = format!("{d}.skiff.local");
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let ingress = &ingresses[i % ingresses.len()];
                        i += 1;
                        match get(ingress, &host, "/") {
                            Ok(a) if a.status == 200 => {}
                            Ok(a) => failures.push(format!("{host} via {ingress}: {} {}", a.status, a.body.trim())),
                            Err(e) => failures.push(format!("{host} via {ingress}: {e}")),
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        Load { stop, sent, threads }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the load; the failed requests, each with what it got.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_else(|_| vec!["a load thread panicked".into()]))
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn hello() -> String {
    wasm_p2("hello_http").to_str().unwrap_or_default().to_string()
}

#[test]
fn drain_moves_http_deployments_without_a_failed_request() {
    let c = Cluster::new("drain", &["n1", "n2", "n3"]);
    let wasm = hello();
    let deployments = ["alpha", "beta", "gamma"];
    for d in deployments {
        c.cli_ok(&["deploy", &wasm, "--name", d, "--replicas", "3", "--wait"]);
    }
    // Spread puts one replica of each on every node: n1 holds all three.
    for d in deployments {
        c.wait_spread(d, 3, |per| per.len() == 3);
    }
    // And one with both its replicas on n1 (the others cordoned meanwhile):
    // during the drain every request to it depends on the replacements being
    // routed before the old replicas go.
    c.cli_ok(&["node", "cordon", "n2"]);
    c.cli_ok(&["node", "cordon", "n3"]);
    c.cli_ok(&["deploy", &wasm, "--name", "solo", "--replicas", "2", "--wait"]);
    c.wait_spread("solo", 2, |per| per.get("n1") == Some(&2));
    c.cli_ok(&["node", "uncordon", "n2"]);
    c.cli_ok(&["node", "uncordon", "n3"]);
    let deployments = ["alpha", "beta", "gamma", "solo"];
    let ingresses: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| c.ingress(n)).collect();
    for d in deployments {
        wait_for(Duration::from_secs(30), &format!("{d} answering on every ingress"), || {
            for i in &ingresses {
                let a = get(i, &format!("{d}.skiff.local"), "/")?;
                if a.status != 200 {
                    return Err(format!("{a:?}"));
                }
            }
            Ok(())
        });
    }

    let load = Load::start(ingresses.clone(), &deployments);
    wait_for(Duration::from_secs(10), "the load under way", || {
        if load.sent() >= 30 { Ok(()) } else { Err(String::new()) }
    });
    let before = load.sent();
    let out = c.cli(&["node", "drain", "n1", "--timeout", "2m"]);
    let during = load.sent() - before;
    // Some more requests after the drain, through n1's ingress too.
    let after = load.sent();
    wait_for(Duration::from_secs(10), "load after the drain", || {
        if load.sent() >= after + 30 { Ok(()) } else { Err(String::new()) }
    });
    let failures = load.finish();
    println!("drain output:\n{}{during} requests sent during the drain, {} failed", out.stdout, failures.len());
    assert!(out.ok, "drain failed:\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("node n1 drained"), "{}", out.stdout);
    assert!(during > 0, "no request was sent while the drain ran");
    assert!(failures.is_empty(), "{} requests failed during the drain:\n{}", failures.len(), failures.join("\n"));

    // The node is empty, cordoned, and says it is drained; every deployment
    // has its three replicas, ready, on the other nodes.
    let n1 = c.node("n1");
    assert_eq!(n1["replicas"], 0, "{n1}");
    assert_eq!(n1["unschedulable"], true, "{n1}");
    assert_eq!(n1["drain"]["done"], true, "{n1}");
    for d in deployments {
        let rs = c.replicas(d);
        assert_eq!(rs.len(), if d == "solo" { 2 } else { 3 }, "{rs:?}");
        assert!(rs.iter().all(|(_, node, state)| node != "n1" && state == "ready"), "{rs:?}");
    }
    let table = c.cli_ok(&["get", "nodes"]);
    let row = table.lines().find(|l| l.starts_with("n1 ")).unwrap_or_default();
    assert!(row.contains("drained"), "{table}");
    let events = c.events();
    assert!(!events.contains("without the ingress of"), "a stop did not wait for every ingress:\n{events}");
    for want in [
        "DrainStarted",
        "Draining",
        "Drained",
        "Moved",
        "out of every ingress's routes first: moved off node n1 (draining)",
    ] {
        assert!(events.contains(want), "no {want:?} in the events:\n{events}");
    }

    // Cordoned nodes take nothing new, and a pending replica says why; running
    // replicas on them keep running.
    c.cli_ok(&["node", "cordon", "n2"]);
    c.cli_ok(&["node", "cordon", "n3"]);
    c.cli_ok(&["deploy", &wasm, "--name", "delta", "--replicas", "1"]);
    wait_for(Duration::from_secs(30), "delta pending because every node is cordoned", || {
        let out = c.cli_ok(&["describe", "deployment", "delta"]);
        if out.contains("3 node cordoned") { Ok(()) } else { Err(out) }
    });
    for d in deployments {
        let rs = c.replicas(d);
        assert!(rs.iter().all(|(_, _, state)| state == "ready"), "{rs:?}");
    }
    // Uncordoned, n1 takes the new replica.
    let out = c.cli_ok(&["node", "uncordon", "n1"]);
    assert!(out.contains("uncordoned"), "{out}");
    let n1 = c.node("n1");
    assert_eq!(n1["unschedulable"], false, "{n1}");
    assert!(n1.get("drain").is_none_or(Value::is_null), "{n1}");
    c.wait_spread("delta", 1, |per| per.get("n1") == Some(&1));
    c.cli_ok(&["node", "uncordon", "n2"]);
    c.cli_ok(&["node", "uncordon", "n3"]);
    // A node that is not there is one clear line.
    let missing = c.cli(&["node", "drain", "n9"]);
    assert!(!missing.ok && missing.stderr.contains("node \"n9\" not found"), "{}", missing.stderr);
}

#[test]
fn drain_reports_a_volume_replica_and_force_stops_it() {
    let mut c = Cluster::new("drain-volume", &["n1", "n2"]);
    let counter = wasm_p2("counter");
    let counter = counter.to_str().unwrap_or_default();
    c.cli_ok(&["deploy", counter, "--name", "db", "--volume", "data:/data", "--env", "INTERVAL_MS=100", "--wait"]);
    c.cli_ok(&["deploy", &hello(), "--name", "web", "--replicas", "2", "--wait"]);
    let db = c.replicas("db");
    assert_eq!(db.len(), 1, "{db:?}");
    let (db_id, node) = (db[0].0.clone(), db[0].1.clone());

    // Without --force the drain moves web and stops at db, naming it.
    let out = c.cli(&["node", "drain", &node, "--timeout", "20s"]);
    assert!(!out.ok, "a drain that cannot finish exited 0:\n{}", out.stdout);
    assert!(out.stderr.contains(&db_id), "the error does not name {db_id}: {}", out.stderr);
    assert!(out.stderr.contains("read-write volume data lives on this node"), "{}", out.stderr);
    assert!(out.stdout.contains(&format!("cannot move: {db_id}")), "{}", out.stdout);
    let web = c.replicas("web");
    assert!(web.iter().all(|(_, n, _)| *n != node), "web still on {node}: {web:?}");
    // db kept running.
    assert_eq!(c.replicas("db"), db, "the replica that cannot move was touched");
    let described = c.cli_ok(&["describe", "node", &node]);
    assert!(described.contains("DrainBlocked") && described.contains(&db_id), "{described}");

    // The drain is the scheduler's, kept on the node: a restart keeps it.
    c.restart_server();
    let n = c.node(&node);
    assert_eq!(n["unschedulable"], true, "{n}");
    let stuck = n["drain"]["stuck"].to_string();
    assert!(stuck.contains(&db_id), "{n}");

    // --force stops it; its replacement waits for the volume's node.
    let out = c.cli(&["node", "drain", &node, "--force", "--timeout", "60s"]);
    assert!(out.ok, "forced drain failed:\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    let n = c.node(&node);
    assert_eq!(n["replicas"], 0, "{n}");
    let db_now = c.replicas("db");
    assert!(db_now.iter().all(|(id, _, state)| *id != db_id && state == "pending"), "{db_now:?}");
    let described = c.cli_ok(&["describe", "deployment", "db"]);
    assert!(described.contains("node cordoned"), "{described}");
    assert!(c.events().contains("stopped by the forced drain"), "no forced stop event");
    // Uncordoned, db runs again on its volume's node.
    c.cli_ok(&["node", "uncordon", &node]);
    wait_for(Duration::from_secs(30), "db running on its volume's node again", || {
        let rs = c.replicas("db");
        if rs.len() == 1 && rs[0].1 == node && rs[0].2 == "running" { Ok(()) } else { Err(format!("{rs:?}")) }
    });
}

#[test]
fn rebalance_spreads_again_after_a_node_returns() {
    let mut c = Cluster::new("rebalance", &["n1", "n2", "n3"]);
    let wasm = hello();
    c.cli_ok(&["deploy", &wasm, "--name", "even", "--replicas", "6", "--rebalance", "--wait"]);
    c.cli_ok(&["deploy", &wasm, "--name", "still", "--replicas", "6", "--wait"]);
    let two_each = |per: &BTreeMap<String, usize>| per.len() == 3 && per.values().all(|&n| n == 2);
    c.wait_spread("even", 6, two_each);
    c.wait_spread("still", 6, two_each);

    // n3 dies: its replicas are replaced on n1 and n2.
    c.nodes.get_mut("n3").map(Proc::kill);
    let three_three = |per: &BTreeMap<String, usize>| per.len() == 2 && per.values().all(|&n| n == 3);
    c.wait_spread("even", 6, three_three);
    let still = c.wait_spread("still", 6, three_three);

    let load = Load::start(vec![c.ingress("n1"), c.ingress("n2")], &["even"]);
    c.start_node("n3");
    c.wait_nodes_ready(3);
    c.wait_spread("even", 6, two_each);
    let sent = load.sent();
    wait_for(Duration::from_secs(10), "load after the rebalance", || {
        if load.sent() >= sent + 30 { Ok(()) } else { Err(String::new()) }
    });
    let total = load.sent();
    let failures = load.finish();
    println!("{total} requests sent while n3 came back and even was rebalanced, {} failed", failures.len());
    assert!(failures.is_empty(), "{} requests failed while rebalancing:\n{}", failures.len(), failures.join("\n"));
    let events = c.cli_ok(&["events", "--limit", "1000", "--object", "deployment/even"]);
    assert!(events.contains("Rebalancing") && events.contains("held 3 of 6, n3 had 0"), "{events}");
    assert!(events.contains("out of every ingress's routes first"), "{events}");
    assert!(!events.contains("without the ingress of"), "a stop did not wait for every ingress:\n{events}");

    // Without rebalance nothing moved: the same replicas, 3/3/0.
    let mut now: Vec<String> = c.replicas("still").into_iter().map(|r| r.0).collect();
    let mut before = still.clone();
    now.sort();
    before.sort();
    assert_eq!(now, before, "replicas of a deployment without rebalance moved");
    assert!(!c.cli_ok(&["events", "--limit", "1000", "--object", "deployment/still"]).contains("Rebalancing"));

    // Once, by name.
    let out = c.cli_ok(&["rebalance", "still"]);
    assert!(out.contains("deployment still: spread:"), "{out}");
    c.wait_spread("still", 6, two_each);
    let out = c.cli_ok(&["rebalance"]);
    assert!(out.contains("nothing to move"), "{out}");
}

#[test]
fn a_drain_waits_for_room_says_why_and_goes_on_without_the_cli() {
    let c = Cluster::new("drain-room", &["n1", "n2"]);
    let wasm = hello();
    // One replica each, 1.5 of each node's 2 cpus: neither node has room for
    // the other's.
    c.cli_ok(&["deploy", &wasm, "--name", "big", "--replicas", "2", "--cpu", "1500m", "--wait"]);
    c.wait_spread("big", 2, |per| per.len() == 2);

    // The replacement cannot be placed: the drain waits, saying why, and a
    // --timeout names what is left.
    let out = c.cli(&["node", "drain", "n1", "--timeout", "5s"]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("not drained after 5s: 1 replica left"), "{}", out.stderr);
    assert!(out.stdout.contains("a replacement is pending: big: 0/2 nodes fit"), "{}", out.stdout);
    assert!(out.stdout.contains("insufficient cpu") && out.stdout.contains("node cordoned"), "{}", out.stdout);

    // Interrupted, the CLI stops waiting; the drain goes on.
    let mut cmd = std::process::Command::new(skiff_bin());
    if let Some(t) = token_for(&c.url) {
        cmd.env("SKIFF_TOKEN", t);
    }
    if let Some(ca) = ca_for(&c.url) {
        cmd.env("SKIFF_CA_FILE", ca);
    }
    let out_file = c.dir.path().join("drain.out");
    let err_file = c.dir.path().join("drain.err");
    let mut child = cmd
        .args(["node", "drain", "n1"])
        .env("SKIFF_SERVER", &c.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("out file"))
        .stderr(std::fs::File::create(&err_file).expect("err file"))
        .spawn()
        .expect("run skiff node drain");
    wait_for(Duration::from_secs(20), "the drain waiting", || {
        let said = std::fs::read_to_string(&out_file).unwrap_or_default();
        if said.contains("a replacement is pending") { Ok(()) } else { Err(said) }
    });
    let _ = std::process::Command::new("kill").args(["-s", "INT", &child.id().to_string()]).output();
    let status = wait_for(Duration::from_secs(10), "the CLI to stop", || {
        child.try_wait().map_err(|e| e.to_string())?.ok_or_else(|| "still running".to_string())
    });
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(!status.success(), "{err}");
    assert!(err.contains("the drain of node n1 goes on in the scheduler"), "{err}");

    // Room appears (the other deployment scaled down): the drain finishes
    // with no CLI waiting.
    c.cli_ok(&["scale", "big", "1"]);
    wait_for(Duration::from_secs(60), "n1 drained", || {
        let n = c.node("n1");
        if n["drain"]["done"] == true { Ok(()) } else { Err(n.to_string()) }
    });
    assert_eq!(c.node("n1")["replicas"], 0);
}
