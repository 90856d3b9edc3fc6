//! A scheduler and three nodes as separate processes: placement by resources, a
//! node killed, the scheduler killed and restarted, scaling and deletion.

use serde_json::Value;
use skiff_tests::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

struct Cluster {
    dir: TempDir,
    url: String,
    port: String,
    token: String,
    server: Proc,
    nodes: BTreeMap<String, Proc>,
}

impl Cluster {
    fn start_server(dir: &Path, listen: &str) -> Proc {
        let data = dir.join("server");
        Proc::start(
            "server",
            &["server", "--listen", listen, "--data-dir", data.to_str().unwrap_or_default()],
            &dir.join("server.log"),
        )
    }

    fn new() -> Cluster {
        let dir = TempDir::new("cluster");
        let server = Self::start_server(dir.path(), "127.0.0.1:0");
        let url = server_ready(&dir.path().join("server"));
        let port = url.rsplit(':').next().unwrap_or_default().to_string();
        let token = read_when_ready(&dir.path().join("server/join-token"));
        Cluster { dir, url, port, token, server, nodes: BTreeMap::new() }
    }

    fn start_node(&mut self, name: &str, memory: &str) {
        let data = self.dir.path().join(format!("node-{name}"));
        let _ = std::fs::remove_file(data.join("node.addr"));
        let args = [
            "node",
            "--server",
            &self.url,
            "--token",
            &self.token,
            "--name",
            name,
            "--cpu",
            "2",
            "--memory",
            memory,
            "--labels",
            &format!("host={name}"),
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
        ];
        let p = Proc::start(name, &args, &self.dir.path().join(format!("node-{name}.log")));
        read_when_ready(&data.join("node.addr"));
        self.nodes.insert(name.to_string(), p);
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn replicas(&self) -> Vec<Value> {
        get_json(self.dir.path(), &self.url, "replicas")
    }

    fn running(&self, deployment: &str) -> Vec<(String, String)> {
        running(self.dir.path(), &self.url, deployment)
    }

    fn wait_running(&self, deployment: &str, n: usize, timeout: Duration) -> Vec<(String, String)> {
        wait_for(timeout, &format!("{n} running replicas of {deployment}"), || {
            let r = self.running(deployment);
            let all = self.replicas();
            if r.len() == n && all.iter().filter(|x| x["deployment"] == deployment).count() == n {
                Ok(r)
            } else {
                Err(format!("{} running; replicas: {all:?}", r.len()))
            }
        })
    }
}

fn per_node(running: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, node) in running {
        *m.entry(node.clone()).or_default() += 1;
    }
    m
}

#[test]
fn a_cluster_keeps_its_replicas_through_crashes() {
    let mut c = Cluster::new();
    c.start_node("a", "300Mi");
    c.start_node("b", "200Mi");
    c.start_node("c", "100Mi");
    wait_for(Duration::from_secs(20), "3 ready nodes", || {
        let nodes = get_json(c.dir.path(), &c.url, "nodes");
        let ready = nodes.iter().filter(|n| n["state"] == "ready").count();
        if ready == 3 { Ok(()) } else { Err(format!("{nodes:?}")) }
    });

    // Six replicas of 100Mi on nodes of 300, 200 and 100Mi: the only layout that
    // fits is 3/2/1.
    let worker = wasm_p2("worker");
    let out = c.cli(&[
        "deploy",
        worker.to_str().unwrap_or_default(),
        "--name",
        "work",
        "--replicas",
        "6",
        "--memory",
        "100Mi",
        "--cpu",
        "100m",
        "--env",
        "GREETING=hi",
        "--env",
        "INTERVAL_MS=200",
    ]);
    assert!(out.contains("created"), "{out}");
    let placed = c.wait_running("work", 6, Duration::from_secs(60));
    let layout = per_node(&placed);
    assert_eq!(layout, BTreeMap::from([("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]), "placement by memory");

    // Their logs reach the CLI through the scheduler.
    let (first, _) = &placed[0];
    let logs = wait_for(Duration::from_secs(10), "log lines", || {
        let out = cli_in(c.dir.path(), &c.url, &["logs", "work", "--replica", first, "--tail", "20"]);
        if out.ok && out.stdout.contains("hi") { Ok(out.stdout) } else { Err(format!("{} {}", out.stdout, out.stderr)) }
    });
    assert!(logs.contains("hi"), "{logs}");

    // Scale to 3, then kill the node that holds most of them: the others have room.
    c.cli(&["scale", "work", "3"]);
    let placed = c.wait_running("work", 3, Duration::from_secs(30));
    let layout = per_node(&placed);
    let (victim, lost) = layout.iter().max_by_key(|(_, n)| **n).map(|(k, v)| (k.clone(), *v)).unwrap_or_default();
    let survivors: Vec<String> = placed.iter().filter(|(_, n)| *n != victim).map(|(id, _)| id.clone()).collect();
    let killed_at = Instant::now();
    c.nodes.get_mut(&victim).map(Proc::kill);
    let after = wait_for(Duration::from_secs(30), "replicas replaced off the dead node", || {
        let r = c.running("work");
        if r.len() == 3 && r.iter().all(|(_, n)| *n != victim) { Ok(r) } else { Err(format!("{r:?}")) }
    });
    let failover = killed_at.elapsed();
    eprintln!("node {victim} killed with {lost} replicas: all running elsewhere after {failover:?}");
    // Default grace 3 s, heartbeats every second: replaced within 5 s of the death.
    assert!(failover < Duration::from_secs(8), "failover took {failover:?}");
    for id in &survivors {
        assert!(after.iter().any(|(r, _)| r == id), "replica {id} on a live node was left alone");
    }
    let nodes = get_json(c.dir.path(), &c.url, "nodes");
    let down = nodes.iter().find(|n| n["name"] == victim.as_str()).map(|n| n["state"].clone());
    assert_eq!(down, Some(Value::from("down")));

    // SIGKILL the scheduler and restart it on the same data dir and port.
    let before: Vec<Value> = c.replicas();
    let deployments_before = get_json(c.dir.path(), &c.url, "deployments");
    c.server.kill();
    c.server = Cluster::start_server(c.dir.path(), &format!("127.0.0.1:{}", c.port));
    wait_for(Duration::from_secs(20), "the scheduler back", || http_get(&format!("{}/healthz", c.url)));
    let ids = |v: &[Value]| -> Vec<(String, String)> {
        let mut x: Vec<_> = v
            .iter()
            .map(|r| (r["id"].as_str().unwrap_or("").to_string(), r["node"].as_str().unwrap_or("").to_string()))
            .collect();
        x.sort();
        x
    };
    assert_eq!(ids(&c.replicas()), ids(&before), "every replica intact after a scheduler crash");
    let deployments_after = get_json(c.dir.path(), &c.url, "deployments");
    assert_eq!(deployments_after[0]["revision"], deployments_before[0]["revision"]);
    assert_eq!(deployments_after[0]["spec"], deployments_before[0]["spec"]);
    // The nodes kept running; a few heartbeats later nothing has moved or doubled.
    std::thread::sleep(Duration::from_secs(4));
    let settled = c.wait_running("work", 3, Duration::from_secs(20));
    assert_eq!(ids(&c.replicas()), ids(&before), "no duplicates and no moves after the restart");
    assert_eq!(settled.len(), 3);

    // The dead node comes back (same name, same data dir) and takes work again.
    let memory = match victim.as_str() {
        "a" => "300Mi",
        "b" => "200Mi",
        _ => "100Mi",
    };
    c.start_node(&victim, memory);
    c.cli(&["scale", "work", "5"]);
    let placed = c.wait_running("work", 5, Duration::from_secs(30));
    assert!(placed.iter().all(|(_, n)| ["a", "b", "c"].contains(&n.as_str())));

    // Scale down, then delete: every replica stops and every node is empty.
    c.cli(&["scale", "work", "1"]);
    c.wait_running("work", 1, Duration::from_secs(30));
    c.cli(&["delete", "work"]);
    wait_for(Duration::from_secs(20), "the deployment gone and nodes empty", || {
        let reps = c.replicas();
        let nodes = get_json(c.dir.path(), &c.url, "nodes");
        let busy: Vec<&Value> = nodes.iter().filter(|n| n["replicas"] != 0).collect();
        if reps.is_empty() && busy.is_empty() { Ok(()) } else { Err(format!("{reps:?} {busy:?}")) }
    });
    let gone = cli_in(c.dir.path(), &c.url, &["get", "deployments", "work"]);
    assert!(!gone.ok && gone.stderr.contains("not found"), "{}", gone.stderr);
    assert!(c.server.alive());
}
