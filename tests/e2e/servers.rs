//! Several servers on etcd: three etcd members (Debian's etcd-server), three
//! `skiff server --store etcd://...`, nodes and clients given all three. The
//! leader is SIGKILLed in the middle of a rollout and of a 1,000-replica deploy;
//! another takes over and the work finishes with every object intact.

use serde_json::Value;
use skiff_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Three etcd members on loopback; killed on drop.
pub(crate) struct Etcd {
    members: Vec<Proc>,
    /// Each member's arguments, to start it again on its data.
    args: Vec<Vec<String>>,
    dir: std::path::PathBuf,
    /// `host:port` of each member's client URL.
    clients: Vec<String>,
}

impl Etcd {
    pub(crate) fn start(dir: &Path) -> Etcd {
        Etcd::start_on(dir, "127.0.0.1")
    }

    /// Three members listening on `ip` (a test bridge's address, say).
    fn start_on(dir: &Path, ip: &str) -> Etcd {
        let names = ["e0", "e1", "e2"];
        // Ports are picked free on loopback; on a bridge's address they are as likely free.
        let ports = free_ports(2 * names.len());
        let (peers, clients) = ports.split_at(names.len());
        let clients: Vec<String> = clients.iter().map(|p| format!("{ip}:{p}")).collect();
        let initial: Vec<String> = names.iter().zip(peers).map(|(n, p)| format!("{n}=http://{ip}:{p}")).collect();
        let initial = initial.join(",");
        let (mut members, mut all_args) = (Vec::new(), Vec::new());
        for (i, name) in names.iter().enumerate() {
            let data = dir.join(format!("etcd-{name}"));
            let (peer, client) = (format!("http://{ip}:{}", peers[i]), format!("http://{}", clients[i]));
            let args = [
                "--name",
                name,
                "--data-dir",
                data.to_str().unwrap_or_default(),
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "skiff-test",
                "--max-txn-ops",
                "65536",
                "--max-request-bytes",
                "33554432",
            ];
            members.push(Proc::start_program(name, "etcd", &args, &dir.join(format!("etcd-{name}.log"))));
            all_args.push(args.iter().map(|a| a.to_string()).collect());
        }
        let etcd = Etcd { members, args: all_args, dir: dir.to_path_buf(), clients };
        etcd.wait_healthy(3);
        etcd
    }

    /// Waits until `n` members say they are healthy.
    fn wait_healthy(&self, n: usize) {
        wait_for(Duration::from_secs(30), &format!("{n} etcd members healthy"), || {
            let out = std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.clients.join(","), "endpoint", "health"])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            if text.matches("is healthy").count() >= n { Ok(()) } else { Err(text) }
        });
    }

    /// SIGKILLs member `i`.
    fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data.
    fn restart(&mut self, i: usize) {
        let args: Vec<&str> = self.args[i].iter().map(String::as_str).collect();
        let log = self.dir.join(format!("etcd-e{i}.log"));
        self.members[i] = Proc::start_program(&format!("e{i}"), "etcd", &args, &log);
    }

    pub(crate) fn url(&self) -> String {
        format!("etcd://{}", self.clients.join(","))
    }
}

/// A test bridge (`NET.1/24`, its prefix `NET` returned first) and three etcd
/// members on its address. (Bound in this order, the bridge outlives etcd.)
fn etcd_on_bridge(dir: &Path) -> (String, Bridge, Etcd) {
    let net = net_prefix();
    let bridge = Bridge::new(&net_name("skb"), &format!("{net}.1/24"));
    let etcd = Etcd::start_on(dir, &bridge.ip);
    (net, bridge, etcd)
}

/// A server on `store`, named `name`, on a free port of `ip`.
pub(crate) fn start_server(dir: &Path, ip: &str, name: &str, store: &str, extra: &[&str]) -> (Proc, String) {
    let data = dir.join(name);
    let d = data.to_str().unwrap_or_default();
    let listen = format!("{ip}:0");
    let mut args = vec!["server", "--listen", &listen, "--data-dir", d, "--store", store, "--name", name];
    args.extend_from_slice(extra);
    let p = Proc::start(name, &args, &dir.join(format!("{name}.log")));
    (p, server_ready(&data))
}

/// Three servers on one etcd on loopback, as the failover tests of other
/// modules start them: s1 makes the cluster's CA and tokens, s2 and s3 join
/// with its join token; the admin token and the CA are remembered for the list
/// of URLs and for each server's; built once all three agree on a leader.
pub(crate) struct Trio {
    pub(crate) etcd: Etcd,
    /// The servers by name, for a test to kill one.
    pub(crate) procs: Vec<(&'static str, Proc)>,
    /// The three URLs, comma-separated (what `--server` takes).
    pub(crate) urls: String,
    pub(crate) each: [String; 3],
    pub(crate) join: String,
    /// The leader elected first.
    pub(crate) first: String,
}

pub(crate) fn three_servers_on_loopback(cwd: &Path) -> Trio {
    if std::process::Command::new("etcd").arg("--version").output().is_err() {
        panic!("etcd is not installed: `make deps-test` installs Debian's etcd-server");
    }
    let etcd = Etcd::start(cwd);
    let store = etcd.url();
    let (s1, u1) = start_server(cwd, "127.0.0.1", "s1", &store, &[]);
    let join = read_when_ready(&cwd.join("s1").join("join-token"));
    let (s2, u2) = start_server(cwd, "127.0.0.1", "s2", &store, &["--join-token", &join]);
    let (s3, u3) = start_server(cwd, "127.0.0.1", "s3", &store, &["--join-token", &join]);
    let procs = vec![("s1", s1), ("s2", s2), ("s3", s3)];
    let urls = format!("{u1},{u2},{u3}");
    let admin = read_when_ready(&cwd.join("s1").join("admin-token"));
    for u in [&urls, &u1, &u2, &u3] {
        remember_token(u, &admin);
        remember_ca(u, &cwd.join("s1").join("ca.crt"));
    }
    let first = wait_for(Duration::from_secs(20), "a leader among the three servers", || {
        let info = servers(cwd, &urls)?;
        match (info["leader"].as_str(), info["servers"].as_array().map_or(0, Vec::len)) {
            (Some(l), 3) => Ok(l.to_string()),
            _ => Err(info.to_string()),
        }
    });
    Trio { etcd, procs, urls, each: [u1, u2, u3], join, first }
}

/// Node `name` (data dir `node-NAME`, its own ports on loopback) given `urls`,
/// once the servers list it ready; with its ingress address.
pub(crate) fn start_loopback_node(cwd: &Path, urls: &str, join: &str, name: &str) -> (Proc, String) {
    let data = cwd.join(format!("node-{name}"));
    let node_args = [
        "node",
        "--server",
        urls,
        "--token",
        join,
        "--name",
        name,
        "--data-dir",
        data.to_str().unwrap_or_default(),
        "--listen",
        "127.0.0.1:0",
        "--ingress",
        "127.0.0.1:0",
    ];
    let node = Proc::start(name, &node_args, &cwd.join(format!("node-{name}.log")));
    let ingress = read_when_ready(&data.join("ingress.addr"));
    wait_for(Duration::from_secs(30), &format!("{name} ready"), || {
        let nodes = get_json(cwd, urls, "nodes");
        if nodes.iter().any(|n| n["name"] == name && n["state"] == "ready") {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    (node, ingress)
}

/// The URL server `name` wrote into its data dir.
pub(crate) fn server_url(cwd: &Path, name: &str) -> String {
    std::fs::read_to_string(cwd.join(name).join("server.url")).unwrap_or_default().trim().to_string()
}

/// `skiff get servers -o json`, from any server that answers.
pub(crate) fn servers(cwd: &Path, urls: &str) -> Result<Value, String> {
    let out = cli_in(cwd, urls, &["get", "servers", "-o", "json"]);
    if !out.ok {
        return Err(out.stderr);
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))
}

pub(crate) fn leader(cwd: &Path, urls: &str) -> Result<String, String> {
    let info = servers(cwd, urls)?;
    info["leader"].as_str().map(str::to_string).ok_or_else(|| format!("no leader: {info}"))
}

/// Live replicas of `deployment` as (id, node, state, revision); never more than `most`.
fn live(cwd: &Path, urls: &str, deployment: &str, most: usize) -> Result<Vec<(String, String, String, u64)>, String> {
    let out = cli_in(cwd, urls, &["get", "replicas", "--deployment", deployment, "-o", "json"]);
    if !out.ok {
        return Err(out.stderr);
    }
    let list: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    let live: Vec<(String, String, String, u64)> = list
        .iter()
        .filter(|r| r["state"] != "stopped" && r["state"] != "lost")
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (f("id"), f("node"), f("state"), r["revision"].as_u64().unwrap_or(0))
        })
        .collect();
    assert!(live.len() <= most, "{deployment} has {} live replicas, more than {most}", live.len());
    Ok(live)
}

#[test]
fn three_servers_on_etcd_survive_the_leaders_death() {
    if std::process::Command::new("etcd").arg("--version").output().is_err() {
        panic!("etcd is not installed: `make deps-test` installs Debian's etcd-server");
    }
    if !require_root("nodes in network namespaces of their own") {
        return;
    }
    let dir = TempDir::new("servers-etcd");
    let cwd = dir.path();
    // etcd and the servers on a test bridge; each real node in a namespace of its own on it.
    let (net, bridge, etcd) = etcd_on_bridge(cwd);
    let store = etcd.url();

    // The first server makes the cluster's CA and tokens; the others join with
    // its join token and share them.
    let (s1, u1) = start_server(cwd, &bridge.ip, "s1", &store, &[]);
    let join = read_when_ready(&cwd.join("s1").join("join-token"));
    let (s2, u2) = start_server(cwd, &bridge.ip, "s2", &store, &["--join-token", &join]);
    let (s3, u3) = start_server(cwd, &bridge.ip, "s3", &store, &["--join-token", &join]);
    for s in ["s2", "s3"] {
        for f in ["ca.crt", "admin-token", "join-token"] {
            assert_eq!(
                std::fs::read_to_string(cwd.join(s).join(f)).ok(),
                std::fs::read_to_string(cwd.join("s1").join(f)).ok(),
                "{s}'s {f} is not the cluster's"
            );
        }
    }
    let mut procs: Vec<(String, Proc, String)> =
        vec![("s1".into(), s1, u1.clone()), ("s2".into(), s2, u2.clone()), ("s3".into(), s3, u3.clone())];
    let urls = format!("{u1},{u2},{u3}");
    remember_token(&urls, &read_when_ready(&cwd.join("s1").join("admin-token")));
    remember_ca(&urls, &cwd.join("s1").join("ca.crt"));
    let first = wait_for(Duration::from_secs(20), "a leader among the three servers", || {
        let info = servers(cwd, &urls)?;
        let n = info["servers"].as_array().map_or(0, Vec::len);
        match info["leader"].as_str() {
            Some(l) if n == 3 => Ok(l.to_string()),
            _ => Err(info.to_string()),
        }
    });
    // Every server answers, leader or not (the others forward to it).
    for u in [&u1, &u2, &u3] {
        remember_token(u, &read_when_ready(&cwd.join("s1").join("admin-token")));
        remember_ca(u, &cwd.join("s1").join("ca.crt"));
        // The last one started may not have seen the election yet.
        wait_for(Duration::from_secs(10), &format!("{u} to name {first} the leader"), || match leader(cwd, u) {
            Ok(l) if l == first => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }
    follower_reads_its_own_copy(cwd, &procs, &first);

    // Two real nodes, each in a network namespace of its own, and 20 simulated
    // ones, all given the three servers.
    // (Declared first, dropped last: after the nodes running in them.)
    let mut namespaces = Vec::new();
    let mut nodes = Vec::new();
    for (i, n) in ["n1", "n2"].into_iter().enumerate() {
        let ns = NetNs::on_bridge(&net_name("skn"), &bridge, &format!("{net}.{}/24", i + 2));
        let data = cwd.join(n);
        let log = cwd.join(format!("{n}.log"));
        nodes.push(ns.start_node(n, &urls, &join, &data, &["--labels", "kind=real"], &log));
        namespaces.push(ns);
    }
    let sim_args = [
        "node",
        "--simulate",
        "20",
        "--name-prefix",
        "sim",
        "--server",
        &urls,
        "--token",
        &join,
        "--labels",
        "kind=sim",
        "--cpu",
        "16",
        "--memory",
        "64Gi",
    ];
    nodes.push(Proc::start("sim", &sim_args, &cwd.join("sim.log")));
    wait_for(Duration::from_secs(60), "22 nodes ready", || {
        let ready = get_json(cwd, &urls, "nodes").iter().filter(|n| n["state"] == "ready").count();
        if ready == 22 { Ok(()) } else { Err(format!("{ready} ready")) }
    });

    // A rollout in flight when the leader dies.
    let worker = wasm_p2("worker");
    let w = worker.to_str().unwrap_or_default();
    let base = ["deploy", w, "--name", "work", "--replicas", "4", "--label-selector", "kind=real"];
    cli_ok(cwd, &urls, &[&base[..], &["--cpu", "100m", "--memory", "32Mi", "--env", "V=1"]].concat());
    wait_for(Duration::from_secs(30), "4 replicas of work running", || {
        let l = live(cwd, &urls, "work", 5)?;
        if l.iter().filter(|r| r.2 == "running").count() == 4 { Ok(()) } else { Err(format!("{l:?}")) }
    });
    cli_ok(cwd, &urls, &[&base[..], &["--cpu", "100m", "--memory", "32Mi", "--env", "V=2"]].concat());
    let killed = kill_leader(&mut procs, &first);
    let second = wait_for(Duration::from_secs(20), "a new leader", || {
        let l = leader(cwd, &urls)?;
        if l != first { Ok(l) } else { Err(format!("still {l}")) }
    });
    let takeover = killed.elapsed();
    println!("{second} took over from {first} {takeover:?} after the SIGKILL");
    // The rollout finishes under the new leader: 4 running at the new revision,
    // never more than 5 (4 + the default surge of 1) along the way.
    wait_for(Duration::from_secs(60), "work rolled out to revision 2 under the new leader", || {
        let l = live(cwd, &urls, "work", 5)?;
        let done = l.len() == 4 && l.iter().all(|r| r.2 == "running" && r.3 == 2);
        if done { Ok(()) } else { Err(format!("{l:?}")) }
    });

    // Every server shows the same, the follower from its own copy.
    for (name, _, url) in &procs {
        wait_for(Duration::from_secs(10), &format!("{name} shows work rolled out"), || {
            let l = live(cwd, url, "work", 5)?;
            let done = l.len() == 4 && l.iter().all(|r| r.2 == "running" && r.3 == 2);
            if done { Ok(()) } else { Err(format!("{l:?}")) }
        });
    }

    // A 1,000-replica deploy in flight when the next leader dies.
    let big = ["deploy", w, "--name", "big", "--replicas", "1000", "--label-selector", "kind=sim", "--cpu", "10m"];
    cli_ok(cwd, &urls, &[&big[..], &["--memory", "16Mi"]].concat());
    wait_for(Duration::from_secs(30), "some of big placed", || {
        let l = live(cwd, &urls, "big", 1000)?;
        let placed = l.iter().filter(|r| !r.1.is_empty()).count();
        if placed > 0 { Ok(()) } else { Err("none placed".into()) }
    });
    let killed = kill_leader(&mut procs, &second);
    let third = wait_for(Duration::from_secs(20), "a third leader", || {
        let l = leader(cwd, &urls)?;
        if l != second && l != first { Ok(l) } else { Err(format!("still {l}")) }
    });
    println!("{third} took over from {second} {:?} after the SIGKILL", killed.elapsed());
    wait_for(Duration::from_secs(90), "all 1,000 replicas of big running", || {
        let l = live(cwd, &urls, "big", 1000)?;
        let running = l.iter().filter(|r| r.2 == "running").count();
        if running == 1000 { Ok(()) } else { Err(format!("{running} running of {}", l.len())) }
    });
    // Nothing lost: both deployments, at their counts and revisions, and the
    // worker's blob served by a server that never received the upload.
    let deployments = get_json(cwd, &urls, "deployments");
    let count = |name: &str| deployments.iter().find(|d| d["name"] == name).map(|d| d["replicas"].clone());
    assert_eq!(count("work"), Some(Value::from(4)), "{deployments:?}");
    assert_eq!(count("big"), Some(Value::from(1000)), "{deployments:?}");
    let l = live(cwd, &urls, "work", 4).expect("work's replicas");
    assert!(l.iter().all(|r| r.2 == "running" && r.3 == 2), "work after two takeovers: {l:?}");
    for (_, p, _) in procs.iter_mut() {
        assert!(p.alive(), "the surviving server {} died", p.name);
    }
    for n in nodes.iter_mut() {
        assert!(n.alive(), "node {} died", n.name);
    }

    // No server at all: the nodes keep running what they run; the first server,
    // back on its address and data, leads, and they reconcile with it.
    let running_on_nodes = || -> Vec<String> {
        let mut ids = Vec::new();
        for n in ["n1", "n2"] {
            let addr = read_when_ready(&cwd.join(n).join("node.addr"));
            let list = http_get(&format!("{}/v1/replicas", addr.trim())).unwrap_or_else(|e| panic!("{n}'s API: {e}"));
            let list: Vec<Value> = serde_json::from_str(&list).unwrap_or_default();
            ids.extend(
                list.iter().filter(|r| r["state"] == "running").filter_map(|r| r["id"].as_str().map(String::from)),
            );
        }
        ids.sort();
        ids
    };
    let before = running_on_nodes();
    assert_eq!(before.len(), 4, "work's 4 replicas should run on n1 and n2: {before:?}");
    for (_, p, _) in procs.iter_mut() {
        p.kill();
    }
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(running_on_nodes(), before, "the nodes stopped replicas while no server answered");
    let s1_listen = u1.split_once("://").map_or(u1.as_str(), |(_, h)| h).to_string();
    let d1 = cwd.join("s1");
    let s1_args = ["server", "--listen", &s1_listen, "--data-dir", d1.to_str().unwrap_or_default(), "--store", &store];
    let _s1 = Proc::start("s1", &[&s1_args[..], &["--name", "s1"]].concat(), &cwd.join("s1-again.log"));
    wait_for(Duration::from_secs(20), "s1 back and leading", || {
        let l = leader(cwd, &u1)?;
        if l == "s1" { Ok(()) } else { Err(l) }
    });
    wait_for(Duration::from_secs(30), "work and big whole again under s1", || {
        let w = live(cwd, &u1, "work", 4)?;
        let b = live(cwd, &u1, "big", 1000)?;
        let running = |l: &[(String, String, String, u64)]| l.iter().filter(|r| r.2 == "running").count();
        if running(&w) == 4 && running(&b) == 1000 {
            Ok(())
        } else {
            Err(format!("{} and {}", running(&w), running(&b)))
        }
    });
    assert_eq!(running_on_nodes(), before, "the nodes' replicas changed on reconciling with s1");
    drop(nodes);
    drop(namespaces);
    drop(procs);
    drop(etcd);
    drop(bridge);
}

/// A follower answers reads from its own copy of the store (its answers say so)
/// and shows a write made through it at once: a token created through it is
/// listed, and accepted, by it right away.
fn follower_reads_its_own_copy(cwd: &Path, procs: &[(String, Proc, String)], leader: &str) {
    let (name, url) =
        procs.iter().find(|(n, _, _)| n != leader).map(|(n, _, u)| (n.clone(), u.clone())).expect("a follower");
    let host = url.split_once("://").map_or(url.as_str(), |(_, h)| h).to_string();
    let admin = token_for(&url).expect("the admin token");
    let viewer = cli_ok(cwd, &url, &["token", "create", "--read-only", "--name", "viewer"]).trim().to_string();
    let a = get(&url, &host, "/v1/tokens").expect("GET /v1/tokens from the follower");
    assert_eq!(a.status, 200, "{a:?}");
    let from = a.header("x-skiff-read-from").unwrap_or_default();
    assert!(from.starts_with(&format!("{name} at revision ")), "not read from {name}'s copy: {a:?}");
    assert!(a.body.contains("\"viewer\""), "the token made through {name} is not in its copy: {}", a.body);
    remember_token(&url, &viewer);
    let a = get(&url, &host, "/v1/deployments");
    remember_token(&url, &admin);
    let a = a.expect("GET /v1/deployments with the new token");
    assert_eq!(a.status, 200, "{name} refused the token made through it: {a:?}");
    assert!(a.header("x-skiff-read-from").is_some(), "{a:?}");
    // Revoked through it: refused by it at once.
    cli_ok(cwd, &url, &["token", "rm", "viewer"]);
    remember_token(&url, &viewer);
    let a = get(&url, &host, "/v1/deployments");
    remember_token(&url, &admin);
    let a = a.expect("GET /v1/deployments with the revoked token");
    assert_eq!(a.status, 401, "{name} still takes the token revoked through it: {a:?}");
    // Its metrics are its own, and the scrape targets name every server.
    let a = get(&url, &host, "/metrics").expect("GET /metrics from the follower");
    assert!(a.body.lines().any(|l| l.trim() == "skiff_scheduler_leader 0"), "{name} claims to lead: {}", a.body);
    let a = get(&url, &host, "/v1/prometheus/targets").expect("GET /v1/prometheus/targets from the follower");
    let groups: Vec<Value> = serde_json::from_str(&a.body).unwrap_or_default();
    let servers: Vec<&str> = groups
        .iter()
        .filter(|g| g["labels"]["job"] == "skiff-scheduler")
        .filter_map(|g| g["labels"]["server"].as_str())
        .collect();
    assert_eq!(servers, ["s1", "s2", "s3"], "scrape targets: {}", a.body);
    // Node traffic, and writes, still go to the leader.
    let a = get(&url, &host, "/v1/endpoints").expect("GET /v1/endpoints from the follower");
    assert!(a.header("x-skiff-read-from").is_none(), "the endpoints table is the leader's: {a:?}");
}

/// SIGKILLs the server named `name`; when.
fn kill_leader(procs: &mut Vec<(String, Proc, String)>, name: &str) -> Instant {
    let i = procs.iter().position(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no server {name} to kill"));
    let (_, mut p, _) = procs.remove(i);
    p.kill();
    Instant::now()
}

#[test]
fn losing_etcd_members_one_is_carried_two_is_a_clear_error() {
    let dir = TempDir::new("servers-quorum");
    let cwd = dir.path();
    let mut etcd = Etcd::start(cwd);
    let (_s1, url) = start_server(cwd, "127.0.0.1", "s1", &etcd.url(), &[]);
    let join = read_when_ready(&cwd.join("s1").join("join-token"));
    let sim_args =
        ["node", "--simulate", "3", "--name-prefix", "sim", "--server", &url, "--token", &join, "--cpu", "8"];
    let _sim = Proc::start("sim", &sim_args, &cwd.join("sim.log"));
    wait_for(Duration::from_secs(30), "3 nodes ready", || {
        let ready = get_json(cwd, &url, "nodes").iter().filter(|n| n["state"] == "ready").count();
        if ready == 3 { Ok(()) } else { Err(format!("{ready} ready")) }
    });
    let worker = wasm_p2("worker");
    let w = worker.to_str().unwrap_or_default();
    cli_ok(cwd, &url, &["deploy", w, "--name", "q", "--replicas", "3", "--cpu", "100m", "--memory", "16Mi"]);

    // One of three gone: the store still has its majority; writes go on.
    etcd.kill(2);
    // Calls in flight to the killed member time out (3 s, a one-line 503) until
    // the client has moved to the others: a retry goes through.
    let lost = Instant::now();
    wait_for(Duration::from_secs(20), "a scale accepted with one etcd member down", || {
        let out = cli_in(cwd, &url, &["scale", "q", "5"]);
        if out.ok { Ok(()) } else { Err(out.stderr) }
    });
    println!("writes accepted again {:?} after an etcd member was killed", lost.elapsed());
    wait_for(Duration::from_secs(30), "5 replicas of q running with one etcd member down", || {
        let l = live(cwd, &url, "q", 5)?;
        if l.iter().filter(|r| r.2 == "running").count() == 5 { Ok(()) } else { Err(format!("{l:?}")) }
    });

    // Two of three gone: no majority. Once the server has seen it (its lease
    // cannot be renewed: it stops leading), a write is refused with one clear
    // line and never reaches etcd. (A write sent in the moment before is
    // answered "not confirmed": etcd may still commit it on recovery.)
    etcd.kill(1);
    wait_for(Duration::from_secs(20), "the server to stop leading without etcd's majority", || {
        let info = servers(cwd, &url)?;
        if info["leader"].is_null() { Ok(()) } else { Err(info.to_string()) }
    });
    let refused = wait_for(Duration::from_secs(30), "a write refused without etcd's majority", || {
        let out = cli_in(cwd, &url, &["scale", "q", "7"]);
        if out.ok { Err(format!("accepted: {}", out.stdout)) } else { Ok(out.stderr) }
    });
    assert_eq!(refused.trim().lines().count(), 1, "not one line: {refused}");
    assert!(
        refused.contains("etcd") || refused.contains("leader"),
        "the error does not say the store or the leader is the trouble: {refused}"
    );
    println!("without a majority: {}", refused.trim());
    // Nor is a stale copy passed off as the cluster: reads fail as clearly.
    let unread = wait_for(Duration::from_secs(15), "a read refused without etcd's majority", || {
        let out = cli_in(cwd, &url, &["get", "deployments"]);
        if out.ok { Err(format!("answered: {}", out.stdout)) } else { Ok(out.stderr) }
    });
    assert_eq!(unread.trim().lines().count(), 1, "not one line: {unread}");

    // Back: a leader again, the 5 kept, and writes work.
    etcd.restart(1);
    etcd.restart(2);
    etcd.wait_healthy(3);
    let d = wait_for(Duration::from_secs(30), "the API back with q at 5", || {
        let out = cli_in(cwd, &url, &["get", "deployments", "q", "-o", "json"]);
        if !out.ok {
            return Err(out.stderr);
        }
        serde_json::from_str::<Value>(&out.stdout).map_err(|e| e.to_string())
    });
    assert_eq!(d["replicas"], 5, "the refused scale to 7 changed something: {d}");
    // Reads came back from the server's own copy; writes wait for a leader
    // (its old key lives until etcd expires the lease it was made under).
    wait_for(Duration::from_secs(30), "a leader again", || leader(cwd, &url));
    cli_ok(cwd, &url, &["scale", "q", "2"]);
    wait_for(Duration::from_secs(30), "q scaled to 2 after the store came back", || {
        let l = live(cwd, &url, "q", 5)?;
        if l.len() == 2 && l.iter().all(|r| r.2 == "running") { Ok(()) } else { Err(format!("{l:?}")) }
    });
}

#[test]
fn a_sqlite_cluster_migrates_to_etcd_intact() {
    let dir = TempDir::new("servers-migrate");
    let cwd = dir.path();
    let data = cwd.join("s1");
    let d = data.to_str().unwrap_or_default();
    let mut sqlite = Proc::start("sqlite", &["server", "--listen", "127.0.0.1:0", "--data-dir", d], &cwd.join("a.log"));
    let url = server_ready(&data);
    let worker = wasm_p2("worker");
    let w = worker.to_str().unwrap_or_default();
    cli_ok(cwd, &url, &["deploy", w, "--name", "kept", "--replicas", "3", "--env", "V=1"]);
    cli_ok(cwd, &url, &["deploy", w, "--name", "kept", "--replicas", "3", "--env", "V=2"]);
    cli_ok(cwd, &url, &["secret", "create", "db", "--from-literal", "password=hunter2"]);
    let before = cli_ok(cwd, &url, &["get", "deployments", "kept", "-o", "json"]);
    sqlite.kill();

    let etcd = Etcd::start(cwd);
    let out = std::process::Command::new(skiff_bin())
        .args(["server", "migrate", "--from", d, "--to", &etcd.url()])
        .output()
        .expect("run skiff server migrate");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "migrate failed: {said}");
    assert!(said.contains("1 deployments"), "{said}");
    // Into a store that already holds a cluster: refused.
    let again = std::process::Command::new(skiff_bin())
        .args(["server", "migrate", "--from", d, "--to", &etcd.url()])
        .output()
        .expect("run skiff server migrate");
    assert!(!again.status.success(), "a second migrate into the same prefix was accepted");

    // A server on etcd, on the same data dir, has everything.
    std::fs::remove_file(data.join("server.url")).expect("rm server.url");
    let _on_etcd = Proc::start(
        "etcd-server",
        &["server", "--listen", "127.0.0.1:0", "--data-dir", d, "--store", &etcd.url(), "--name", "s1"],
        &cwd.join("b.log"),
    );
    let url = server_ready(&data);
    let after = wait_for(Duration::from_secs(20), "the migrated deployment on etcd", || {
        let out = cli_in(cwd, &url, &["get", "deployments", "kept", "-o", "json"]);
        if out.ok { Ok(out.stdout) } else { Err(out.stderr) }
    });
    let (b, a): (Value, Value) = (serde_json::from_str(&before).unwrap(), serde_json::from_str(&after).unwrap());
    for field in ["replicas", "revision", "spec", "created_ms"] {
        assert_eq!(a[field], b[field], "{field} changed in the migration");
    }
    let secrets = cli_ok(cwd, &url, &["secret", "ls"]);
    assert!(secrets.contains("db"), "the secret was not migrated: {secrets}");
    let revisions = cli_ok(cwd, &url, &["rollout", "history", "kept"]);
    assert!(revisions.lines().count() >= 3, "revisions lost: {revisions}");
}

#[test]
fn a_leader_cut_off_from_etcd_stops_leading_and_nothing_is_placed_twice() {
    if !require_root("a partition (ip netns, a bridge, veths)") {
        return;
    }
    let dir = TempDir::new("servers-partition");
    let cwd = dir.path();
    let (net, bridge, etcd) = etcd_on_bridge(cwd);
    let store = etcd.url();
    // s1 in a namespace of its own, so that it alone can be cut off; it starts
    // first and leads.
    let ns = NetNs::on_bridge(&net_name("skn"), &bridge, &format!("{net}.2/24"));
    let d1 = cwd.join("s1");
    let listen = format!("{net}.2:0");
    let s1_args = ["server", "--listen", &listen, "--data-dir", d1.to_str().unwrap_or_default(), "--store", &store];
    let _s1 = ns.start("s1", &[&s1_args[..], &["--name", "s1"]].concat(), &cwd.join("s1.log"));
    let u1 = server_ready(&d1);
    let join = read_when_ready(&d1.join("join-token"));
    let host_listen = format!("{}:0", bridge.ip);
    let mut others = Vec::new();
    let mut urls = vec![u1.clone()];
    for name in ["s2", "s3"] {
        let data = cwd.join(name);
        let args = [
            "server",
            "--listen",
            &host_listen,
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--store",
            &store,
            "--name",
            name,
            "--join-token",
            &join,
        ];
        others.push(Proc::start(name, &args, &cwd.join(format!("{name}.log"))));
        urls.push(server_ready(&data));
    }
    let urls = urls.join(",");
    let admin = read_when_ready(&d1.join("admin-token"));
    remember_token(&urls, &admin);
    remember_ca(&urls, &d1.join("ca.crt"));
    wait_for(Duration::from_secs(20), "s1 leading three servers", || {
        let info = servers(cwd, &urls)?;
        let n = info["servers"].as_array().map_or(0, Vec::len);
        if info["leader"] == "s1" && n == 3 { Ok(()) } else { Err(info.to_string()) }
    });
    let sim = ["node", "--simulate", "5", "--name-prefix", "sim", "--server", &urls, "--token", &join, "--cpu", "8"];
    let _sim = Proc::start("sim", &sim, &cwd.join("sim.log"));
    let worker = wasm_p2("worker");
    let w = worker.to_str().unwrap_or_default();
    wait_for(Duration::from_secs(30), "5 nodes ready", || {
        let ready = get_json(cwd, &urls, "nodes").iter().filter(|n| n["state"] == "ready").count();
        if ready == 5 { Ok(()) } else { Err(format!("{ready} ready")) }
    });
    cli_ok(cwd, &urls, &["deploy", w, "--name", "p", "--replicas", "40", "--cpu", "100m", "--memory", "16Mi"]);
    wait_for(Duration::from_secs(30), "40 replicas of p running", || {
        let l = live(cwd, &urls, "p", 40)?;
        if l.iter().filter(|r| r.2 == "running").count() == 40 { Ok(()) } else { Err(format!("{}", l.len())) }
    });

    // Cut s1 off: it cannot renew its lease, so it stops leading (its own
    // /metrics, asked inside its namespace, stops answering as a leader), and
    // s2 or s3 takes over.
    let is_leading = || {
        let out = ns.exec(&[
            "curl",
            "-sk",
            "--max-time",
            "2",
            "-H",
            &format!("Authorization: Bearer {admin}"),
            &format!("{u1}/metrics"),
        ]);
        out.is_ok_and(|m| m.lines().any(|l| l.trim() == "skiff_scheduler_leader 1"))
    };
    assert!(is_leading(), "s1 does not say it leads before the cut");
    ns.cut();
    let cut = Instant::now();
    wait_for(Duration::from_secs(10), "s1 to stop leading once cut off", || {
        if is_leading() { Err("still leading".into()) } else { Ok(()) }
    });
    let stopped = cut.elapsed();
    let urls_host = urls.split(',').skip(1).collect::<Vec<_>>().join(",");
    remember_token(&urls_host, &admin);
    remember_ca(&urls_host, &d1.join("ca.crt"));
    let new = wait_for(Duration::from_secs(20), "s2 or s3 leading", || {
        let l = leader(cwd, &urls_host)?;
        if l != "s1" { Ok(l) } else { Err(l) }
    });
    println!("s1 stopped leading {stopped:?} after the cut; {new} leads {:?} after it", cut.elapsed());
    cli_ok(cwd, &urls_host, &["scale", "p", "50"]);
    wait_for(Duration::from_secs(30), "50 replicas of p running under the new leader", || {
        let l = live(cwd, &urls_host, "p", 50)?;
        if l.iter().filter(|r| r.2 == "running").count() == 50 { Ok(()) } else { Err(format!("{}", l.len())) }
    });

    // Healed: s1 follows; nothing was placed twice: 50 distinct replicas, as
    // many as asked, every node within its cpu.
    ns.heal();
    wait_for(Duration::from_secs(20), "s1 back, following", || {
        let info = servers(cwd, &urls)?;
        let n = info["servers"].as_array().map_or(0, Vec::len);
        if n == 3 && info["leader"] != "s1" && !info["leader"].is_null() { Ok(()) } else { Err(info.to_string()) }
    });
    let l = live(cwd, &urls, "p", 50).expect("p's replicas");
    let ids: std::collections::BTreeSet<&String> = l.iter().map(|r| &r.0).collect();
    assert_eq!((l.len(), ids.len()), (50, 50), "{l:?}");
    let mut per_node = std::collections::BTreeMap::<&str, usize>::new();
    for r in &l {
        *per_node.entry(r.1.as_str()).or_default() += 1;
    }
    assert!(per_node.values().all(|&n| n <= 80), "a node over its 8 cpu: {per_node:?}");
    drop(others);
}

/// `etcdctl ARGS` against `etcd`'s members; its stdout.
fn etcdctl(etcd: &Etcd, args: &[&str]) -> String {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.clients.join(",")])
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every (key, value) under `prefix` (values are one-line JSON in these tables).
fn etcd_pairs(etcd: &Etcd, prefix: &str) -> Vec<(String, String)> {
    let text = etcdctl(etcd, &["get", "--prefix", prefix]);
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(2).filter(|kv| kv.len() == 2).map(|kv| (kv[0].to_string(), kv[1].to_string())).collect()
}

/// `GET path` with the admin token of `url`: the JSON answer.
fn api_json(url: &str, path: &str) -> Value {
    let token = token_for(url).expect("the admin token");
    let (status, body) = super::auth::call(url, "GET", path, Some(&token), "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// An etcd store written before namespaces (#20) is read, after the upgrade,
/// with every object in `default`, usable: deployments (one with a secret,
/// one with a volume), a secret, a volume, a job and its runs, tokens, events.
///
/// How the pre-namespace data is made (no binary of b52cf79^ is built: a
/// second build of the workspace costs many minutes on the test machine):
/// - the current server writes the objects on etcd, all in `default`, whose
///   keys and bodies namespaces did not change (`NAME` keys; only `NS/NAME`
///   keys are new); then, with the server stopped, etcdctl takes out what
///   namespaces added (the `meta/namespace/*` rows, a `namespace` field in a
///   body), and the test checks that no key or body names a namespace;
/// - one deployment (`legacy`, with its revision) and one read-only token are
///   written by hand with etcdctl, in the layout of b52cf79^'s etcd.rs
///   (`StoredDeployment`, `StoredRevision`, `StoredToken` with role `read-only`),
///   so the upgrade is also checked on data the current code did not write.
#[test]
fn an_etcd_store_from_before_namespaces_keeps_everything_in_default() {
    if std::process::Command::new("etcd").arg("--version").output().is_err() {
        panic!("etcd is not installed: `make deps-test` installs Debian's etcd-server");
    }
    let dir = TempDir::new("servers-upgrade");
    let cwd = dir.path();
    let etcd = Etcd::start(cwd);
    let store = etcd.url();
    let data = cwd.join("s1");
    let d = data.to_str().unwrap_or_default().to_string();
    // One address for both servers, so that the node carries on across the upgrade.
    let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
    let start = |log: &str| {
        let args = ["server", "--listen", &listen, "--data-dir", &d, "--store", &store, "--name", "s1"];
        let p = Proc::start("s1", &args, &cwd.join(log));
        (p, server_ready(&data))
    };
    let (mut before, url) = start("s1-before.log");
    let join = read_when_ready(&data.join("join-token"));
    let (_node, ingress) = start_loopback_node(cwd, &url, &join, "n1");
    let ingress = format!("http://{}", ingress.trim_start_matches("http://"));
    let hello = wasm_p2("hello_http");
    let hello = hello.to_str().unwrap_or_default();
    let counter = wasm_p2("counter");
    let job_worker = wasm_p2("job_worker");

    cli_ok(cwd, &url, &["secret", "create", "db", "--from-literal", "password=hunter2"]);
    let web = ["deploy", hello, "--name", "web", "--env", "GREETING=before", "--secret-dir", "db:/secrets/db"];
    cli_ok(cwd, &url, &[&web[..], &["--wait"]].concat());
    let counter_args = ["deploy", counter.to_str().unwrap_or_default(), "--name", "counter"];
    cli_ok(cwd, &url, &[&counter_args[..], &["--volume", "data:/data", "--env", "INTERVAL_MS=200"]].concat());
    let manifest = cwd.join("job.yaml");
    let job = format!(
        "kind: job\nname: once\nwasm: {}\ncompletions: 2\nparallelism: 2\nresources: {{cpu: 50m, memory: 32Mi}}\n",
        job_worker.display()
    );
    std::fs::write(&manifest, job).expect("write the job");
    cli_ok(cwd, &url, &["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let reader = cli_ok(cwd, &url, &["token", "create", "reader", "--read-only"]).trim().to_string();
    wait_for(Duration::from_secs(60), "the job done and the volume made", || {
        let jobs = get_json(cwd, &url, "jobs");
        let done = jobs.iter().any(|j| j["name"] == "once" && j["state"] == "succeeded");
        let volumes = cli_in(cwd, &url, &["volume", "ls"]).stdout;
        if done && volumes.contains("data") { Ok(()) } else { Err(format!("{jobs:?} {volumes}")) }
    });
    wait_for(Duration::from_secs(30), "web answering with its secret", || {
        let a = get(&ingress, "web.skiff.local", "/file/secrets/db/password")?;
        if a.body == "hunter2" { Ok(()) } else { Err(format!("{a:?}")) }
    });
    let web_before = api_json(&url, "/v1/deployments/web");
    let digest = web_before["spec"]["workload"]["wasm"].as_str().expect("web's digest").to_string();
    let events_before: Vec<u64> = api_json(&url, "/v1/events?limit=1000")
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert!(!events_before.is_empty(), "no events before the upgrade");
    before.kill();

    // The pre-namespace layout: no namespace rows, no `namespace` in bodies.
    etcdctl(&etcd, &["del", "--prefix", "/skiff/meta/namespace/"]);
    for table in ["nodes/", "deployments/", "revisions/", "replicas/", "jobs/", "runs/", "crons/", "volumes/"] {
        for (k, v) in etcd_pairs(&etcd, &format!("/skiff/{table}")) {
            let mut body: Value = serde_json::from_str(&v).unwrap_or_else(|e| panic!("{k}: {e}: {v}"));
            if body.as_object_mut().and_then(|o| o.remove("namespace")).is_some() {
                etcdctl(&etcd, &["put", &k, &body.to_string()]);
            }
        }
    }
    // Written by hand as b52cf79^ wrote them.
    let now = 1_765_000_000_000u64;
    let legacy = serde_json::json!({"replicas": 1, "revision": 1, "created_ms": now, "updated_ms": now, "extra": {}});
    etcdctl(&etcd, &["put", "/skiff/deployments/legacy", &legacy.to_string()]);
    let spec = serde_json::json!({"workload": {"wasm": digest}, "resources": {"cpu": "100m", "memory": "32Mi"}, "env": {"GREETING": "legacy"}});
    let revision = serde_json::json!({"spec": spec, "created_ms": now});
    etcdctl(&etcd, &["put", "/skiff/revisions/legacy/00000000000000000001", &revision.to_string()]);
    let old_token = "skr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(old_token.as_bytes()))
    };
    let stored = serde_json::json!({"hash": hash, "role": "read-only", "created_ms": now});
    etcdctl(&etcd, &["put", "/skiff/tokens/old-reader", &stored.to_string()]);
    let keys = etcdctl(&etcd, &["get", "--prefix", "/skiff/", "--keys-only"]);
    for table in ["deployments/", "revisions/", "secrets/", "volumes/", "jobs/", "crons/", "runs/"] {
        let under: Vec<&str> = keys.lines().filter_map(|k| k.strip_prefix("/skiff/")?.strip_prefix(table)).collect();
        assert!(under.iter().all(|k| !k.contains(':')), "a namespaced key under {table}: {under:?}");
    }
    assert!(!keys.contains("namespace"), "a namespace key is left: {keys}");
    for table in ["deployments/", "replicas/", "jobs/", "runs/", "nodes/"] {
        for (k, v) in etcd_pairs(&etcd, &format!("/skiff/{table}")) {
            assert!(!v.contains("\"namespace\""), "{k} names a namespace: {v}");
        }
    }

    // The current server on it.
    std::fs::remove_file(data.join("server.url")).expect("rm server.url");
    let (_after, url) = start("s1-after.log");
    // The killed server's election key lives until its lease ends.
    wait_for(Duration::from_secs(30), "s1 leading again", || leader(cwd, &url));
    let spaces = cli_ok(cwd, &url, &["namespace", "ls"]);
    assert!(spaces.lines().any(|l| l.starts_with("default")), "{spaces}");
    let deployments = wait_for(Duration::from_secs(30), "the deployments after the upgrade", || {
        let ds = get_json(cwd, &url, "deployments");
        if ds.len() == 3 { Ok(ds) } else { Err(format!("{ds:?}")) }
    });
    for d in &deployments {
        assert_eq!(d["namespace"], "default", "{d}");
    }
    let web_after = api_json(&url, "/v1/deployments/web");
    for field in ["replicas", "revision", "spec", "created_ms"] {
        assert_eq!(web_after[field], web_before[field], "web's {field} changed in the upgrade");
    }
    let described = cli_ok(cwd, &url, &["namespace", "describe", "default"]);
    assert!(described.lines().any(|l| l.contains("deployments") && l.contains('3')), "{described}");
    // Every event of before is still there.
    let events_after: Vec<u64> = api_json(&url, "/v1/events?limit=1000")
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let lost: Vec<&u64> = events_before.iter().filter(|id| !events_after.contains(id)).collect();
    assert!(lost.is_empty(), "events lost in the upgrade: {lost:?}");
    // The job and its runs, the volume, the secret, in default.
    let jobs = get_json(cwd, &url, "jobs");
    assert!(jobs.iter().any(|j| j["name"] == "once" && j["state"] == "succeeded"), "{jobs:?}");
    let runs = cli_ok(cwd, &url, &["get", "runs", "once", "-o", "json"]);
    assert_eq!(parse_get_json("runs", &runs).len(), 2, "{runs}");
    let volumes = cli_ok(cwd, &url, &["volume", "ls"]);
    assert!(volumes.lines().any(|l| l.starts_with("data ") && l.contains("counter")), "{volumes}");
    assert!(cli_ok(cwd, &url, &["secret", "ls"]).contains("db"));
    // Usable: scaled, rolled to a new revision whose replicas read the secret,
    // the hand-written deployment runs and scales.
    cli_ok(cwd, &url, &["scale", "legacy", "2"]);
    cli_ok(
        cwd,
        &url,
        &["deploy", hello, "--name", "web", "--env", "GREETING=after", "--secret-dir", "db:/secrets/db", "--wait"],
    );
    cli_ok(cwd, &url, &["scale", "web", "2"]);
    wait_for(Duration::from_secs(60), "web's new revision and legacy answering", || {
        let a = get(&ingress, "web.skiff.local", "/")?;
        let s = get(&ingress, "web.skiff.local", "/file/secrets/db/password")?;
        let l = get(&ingress, "legacy.skiff.local", "/")?;
        let legacy = get_json(cwd, &url, "deployments").into_iter().find(|d| d["name"] == "legacy");
        let running = legacy.as_ref().and_then(|d| d["status"]["running"].as_u64());
        if a.body.starts_with("after from web-")
            && s.body == "hunter2"
            && l.body.starts_with("legacy from legacy-")
            && running == Some(2)
        {
            Ok(())
        } else {
            Err(format!("{a:?} {s:?} {l:?} {running:?}"))
        }
    });
    // Both tokens of before read, and only read.
    for t in [reader.as_str(), old_token] {
        let (status, body) = super::auth::call(&url, "GET", "/v1/deployments/web", Some(t), "");
        assert_eq!(status, 200, "{body}");
        let (status, body) = super::auth::call(&url, "POST", "/v1/deployments/web/scale", Some(t), r#"{"replicas":1}"#);
        assert_eq!(status, 403, "{body}");
    }
}
