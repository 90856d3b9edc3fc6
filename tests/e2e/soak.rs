//! A soak: two clients apply, scale, delete and re-create Wasm deployments in a
//! seeded pseudo-random loop against a scheduler and three node processes, then
//! the cluster must settle to exactly what they asked for, on the scheduler and
//! on every node, and again after the scheduler is SIGKILLed and restarted.
//!
//! The seed is printed; `SKIFF_SOAK_SEED=N` replays the same operations (their
//! timing against the controllers is not replayed). `SKIFF_SOAK_SECS` sets how
//! long the clients churn (default 12).

use serde_json::Value;
use skiff_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most operations one client makes, whatever the time left.
const MAX_OPS: usize = 400;
/// Most replicas an operation asks for.
const MAX_REPLICAS: u64 = 5;
/// How long the cluster gets to settle after the churn (and after the restart).
/// A rolling update advances one replica per full reconcile pass (every 2 s), so
/// a 5-replica deployment updated last needs 10-20 s.
const SETTLE: Duration = Duration::from_secs(45);

/// xorshift64: enough to replay a sequence from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a client last asked of one of its deployments.
#[derive(Debug, Clone, PartialEq)]
struct Want {
    replicas: u64,
    revision: u64,
}

/// What a client expects: its live deployments and how often it deleted each name.
#[derive(Debug, Default)]
struct Model {
    live: BTreeMap<String, Want>,
    deletes: BTreeMap<String, usize>,
    ops: usize,
}

struct Soak {
    dir: TempDir,
    url: String,
    port: String,
    server: Proc,
    /// Node name → (process, node API URL).
    nodes: BTreeMap<String, (Proc, String)>,
}

impl Soak {
    fn start_server(dir: &Path, listen: &str) -> Proc {
        let data = dir.join("server");
        Proc::start(
            "server",
            &["server", "--listen", listen, "--data-dir", data.to_str().unwrap_or_default()],
            &dir.join("server.log"),
        )
    }

    fn new(nodes: &[&str]) -> Soak {
        let dir = TempDir::new("soak");
        let server = Soak::start_server(dir.path(), "127.0.0.1:0");
        let url = server_ready(&dir.path().join("server"));
        let port = url.rsplit(':').next().unwrap_or_default().to_string();
        let token = read_when_ready(&dir.path().join("server/join-token"));
        let mut soak = Soak { dir, url, port, server, nodes: BTreeMap::new() };
        for name in nodes {
            let data = soak.dir.path().join(format!("node-{name}"));
            let args = [
                "node",
                "--server",
                &soak.url,
                "--token",
                &token,
                "--name",
                name,
                "--cpu",
                "4",
                "--memory",
                "2Gi",
                "--data-dir",
                data.to_str().unwrap_or_default(),
                "--listen",
                "127.0.0.1:0",
            ];
            let p = Proc::start(name, &args, &soak.dir.path().join(format!("node-{name}.log")));
            let api = read_when_ready(&data.join("node.addr"));
            soak.nodes.insert(name.to_string(), (p, api));
        }
        wait_for(Duration::from_secs(20), &format!("{} ready nodes", nodes.len()), || {
            let all = get_json(soak.dir.path(), &soak.url, "nodes");
            let ready = all.iter().filter(|n| n["state"] == "ready").count();
            if ready == nodes.len() { Ok(()) } else { Err(format!("{all:?}")) }
        });
        soak
    }
}

/// Applies, scales, deletes and re-creates `names` until `until` (or `MAX_OPS`),
/// checking each answer against its model; returns the model.
fn churn(cwd: &Path, url: &str, wasm: &str, tag: &str, names: &[String], seed: u64, until: Instant) -> Model {
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    let mut generation = 0u64;
    while Instant::now() < until && m.ops < MAX_OPS {
        m.ops += 1;
        let name = &names[rng.below(names.len() as u64) as usize];
        let roll = rng.below(10);
        let replicas = rng.below(MAX_REPLICAS + 1);
        let op = match m.live.get(name) {
            None => "create",
            Some(_) if roll < 4 => "apply",
            Some(_) if roll < 8 => "scale",
            Some(_) => "delete",
        };
        let what = format!("[{tag} op {} seed {seed}] {op} {name}", m.ops);
        match op {
            "create" | "apply" => {
                generation += 1;
                let env = format!("GEN={tag}{generation}");
                let count = replicas.to_string();
                let mut args = vec!["deploy", wasm, "--name", name, "--memory", "32Mi", "--cpu", "10m"];
                args.extend_from_slice(&["--env", &env, "--env", "INTERVAL_MS=5000"]);
                // An update sometimes keeps its count (no --replicas).
                let keep = op == "apply" && rng.below(3) == 0;
                if !keep {
                    args.extend_from_slice(&["--replicas", &count]);
                }
                let out = cli_ok(cwd, url, &args);
                let revision = out
                    .split("(revision ")
                    .nth(1)
                    .and_then(|r| r.trim_end().trim_end_matches(')').parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{what}: no revision in {out:?}"));
                let outcome = if op == "create" { "created" } else { "updated" };
                assert!(out.contains(outcome), "{what}: expected {outcome}, got {out:?}");
                let before = m.live.get(name).cloned();
                if let Some(b) = &before {
                    assert!(revision > b.revision, "{what}: a new env gave revision {revision} after {}", b.revision);
                }
                let replicas = match (keep, before) {
                    (true, Some(b)) => b.replicas,
                    _ => replicas,
                };
                eprintln!("{what}: {} replicas, revision {revision}", replicas);
                m.live.insert(name.clone(), Want { replicas, revision });
            }
            "scale" => {
                cli_ok(cwd, url, &["scale", name, &replicas.to_string()]);
                eprintln!("{what}: {replicas} replicas");
                if let Some(w) = m.live.get_mut(name) {
                    w.replicas = replicas;
                }
            }
            _ => {
                cli_ok(cwd, url, &["delete", name]);
                eprintln!("{what}");
                m.live.remove(name);
                *m.deletes.entry(name.clone()).or_default() += 1;
            }
        }
    }
    m
}

/// A replica as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    id: String,
    deployment: String,
    node: String,
    state: String,
    revision: u64,
}

/// The scheduler's live replicas (neither stopped nor lost), sorted.
fn scheduler_replicas(cwd: &Path, url: &str) -> Vec<Seen> {
    let mut v: Vec<Seen> = get_json(cwd, url, "replicas")
        .into_iter()
        .filter(|r| r["state"] != "stopped" && r["state"] != "lost")
        .map(|r| Seen {
            id: r["id"].as_str().unwrap_or("").to_string(),
            deployment: r["deployment"].as_str().unwrap_or("").to_string(),
            node: r["node"].as_str().unwrap_or("").to_string(),
            state: r["state"].as_str().unwrap_or("").to_string(),
            revision: r["revision"].as_u64().unwrap_or(0),
        })
        .collect();
    v.sort();
    v
}

/// Whether the cluster is exactly what `want` asks for: the deployments with their
/// counts and revisions; that many running replicas of that revision each and no
/// others; every node's own API listing exactly, and running, the replicas the
/// scheduler gives it. Returns the scheduler's replicas, or what is off.
fn settled(s: &Soak, want: &BTreeMap<String, Want>) -> Result<Vec<Seen>, String> {
    let cwd = s.dir.path();
    let deployments = get_json(cwd, &s.url, "deployments");
    let have: BTreeMap<String, Want> = deployments
        .iter()
        .map(|d| {
            let w = Want {
                replicas: d["replicas"].as_u64().unwrap_or(u64::MAX),
                revision: d["revision"].as_u64().unwrap_or(0),
            };
            (d["name"].as_str().unwrap_or("").to_string(), w)
        })
        .collect();
    if have != *want {
        return Err(format!("deployments {have:?}, want {want:?}"));
    }
    let replicas = scheduler_replicas(cwd, &s.url);
    for r in &replicas {
        let Some(w) = want.get(&r.deployment) else {
            return Err(format!("replica {} of deleted deployment {} on the scheduler: {r:?}", r.id, r.deployment));
        };
        if r.state != "running" || r.revision != w.revision {
            return Err(format!("replica {r:?} not running revision {} yet", w.revision));
        }
    }
    for (name, w) in want {
        let n = replicas.iter().filter(|r| r.deployment == *name).count() as u64;
        if n != w.replicas {
            return Err(format!("{name} has {n} live replicas, want {}", w.replicas));
        }
    }
    for (node, (_, api)) in &s.nodes {
        let body = http_get(&format!("{api}/v1/replicas")).map_err(|e| format!("node {node} api: {e}"))?;
        let list: Vec<Value> = serde_json::from_str(&body).map_err(|e| format!("node {node}: {body:?}: {e}"))?;
        let on_node: BTreeSet<(String, String)> = list
            .iter()
            .map(|r| (r["id"].as_str().unwrap_or("").to_string(), r["state"].as_str().unwrap_or("").to_string()))
            .collect();
        let assigned: BTreeSet<(String, String)> =
            replicas.iter().filter(|r| r.node == *node).map(|r| (r.id.clone(), "running".to_string())).collect();
        if on_node != assigned {
            let extra: Vec<_> = on_node.difference(&assigned).collect();
            let missing: Vec<_> = assigned.difference(&on_node).collect();
            return Err(format!("node {node} runs extra {extra:?} and lacks {missing:?}"));
        }
    }
    Ok(replicas)
}

/// Waits (at most `SETTLE`) until `settled`, printing the last thing that was
/// off before it was, so a slow convergence says what it waited on.
fn settle(s: &Soak, want: &BTreeMap<String, Want>, what: &str) -> Vec<Seen> {
    let mut last = None;
    let seen = wait_for(SETTLE, what, || settled(s, want).inspect_err(|e| last = Some(e.clone())));
    if let Some(last) = last {
        eprintln!("last off before settling: {last}");
    }
    seen
}

/// The events the scheduler recorded about `object`.
fn events(url: &str, object: &str) -> Vec<Value> {
    let body = http_get(&format!("{url}/v1/events?object={object}&limit=10000"))
        .unwrap_or_else(|e| panic!("events of {object}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("events of {object}: {body:?}: {e}"))
}

#[test]
fn a_soak_of_deploys_scales_and_deletes_leaves_exactly_what_was_asked() {
    let seed = std::env::var("SKIFF_SOAK_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let secs = std::env::var("SKIFF_SOAK_SECS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(12);
    eprintln!("soak seed {seed} (replay with SKIFF_SOAK_SEED={seed}), {secs} s");

    let mut s = Soak::new(&["a", "b", "c"]);
    let wasm: PathBuf = wasm_p2("worker");
    let wasm = wasm.to_str().unwrap_or_default();
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    // Two clients at once, each on its own names (so each knows what to expect).
    let names = |p: &str| (0..4).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let (one, two) = std::thread::scope(|scope| {
        let (cwd, url) = (s.dir.path(), s.url.as_str());
        let (n1, n2) = (names("soak-p"), names("soak-q"));
        let t1 = scope.spawn(move || churn(cwd, url, wasm, "p", &n1, seed, until));
        let t2 = scope.spawn(move || churn(cwd, url, wasm, "q", &n2, seed ^ 0x9e37_79b9_7f4a_7c15, until));
        let join = |t: std::thread::ScopedJoinHandle<'_, Model>| {
            t.join().unwrap_or_else(|_| panic!("a client failed (seed {seed}); see its last operation above"))
        };
        (join(t1), join(t2))
    });
    let mut want = one.live.clone();
    want.extend(two.live.clone());
    let deletes: BTreeMap<String, usize> =
        one.deletes.iter().chain(&two.deletes).map(|(k, v)| (k.clone(), *v)).collect();
    eprintln!(
        "{} operations in {:?}, {} deletes; settling to {} deployments, {} replicas",
        one.ops + two.ops,
        start.elapsed(),
        deletes.values().sum::<usize>(),
        want.len(),
        want.values().map(|w| w.replicas).sum::<u64>()
    );

    let what = format!("the cluster to settle to what the clients asked (seed {seed})");
    let churned = Instant::now();
    let before = settle(&s, &want, &what);
    eprintln!("settled in {:?}", churned.elapsed());
    for (name, n) in &deletes {
        let deleted = events(&s.url, &format!("deployment/{name}")).iter().filter(|e| e["reason"] == "Deleted").count();
        assert!(deleted >= *n, "{name} was deleted {n} times but has {deleted} Deleted events (seed {seed})");
    }

    // SIGKILL the scheduler and restart it on the same data dir and port: nothing
    // is lost, nothing moves or doubles.
    s.server.kill();
    s.server = Soak::start_server(s.dir.path(), &format!("127.0.0.1:{}", s.port));
    wait_for(Duration::from_secs(20), "the scheduler back", || http_get(&format!("{}/healthz", s.url)));
    let what = format!("the cluster as it was after a scheduler restart (seed {seed})");
    let restarted = Instant::now();
    let after = settle(&s, &want, &what);
    eprintln!("settled after the restart in {:?}", restarted.elapsed());
    let ids = |v: &[Seen]| v.iter().map(|r| (r.id.clone(), r.node.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "the same replicas on the same nodes after the restart (seed {seed})");
    // A few heartbeats and a full reconcile pass later, still nothing has moved.
    std::thread::sleep(Duration::from_secs(3));
    let later = settled(&s, &want).unwrap_or_else(|e| panic!("3 s after the restart (seed {seed}): {e}"));
    assert_eq!(ids(&later), ids(&before), "replicas moved 3 s after the restart (seed {seed})");
    assert!(s.server.alive(), "the scheduler died");
    for (node, (p, _)) in s.nodes.iter_mut() {
        assert!(p.alive(), "node {node} died");
    }
}
