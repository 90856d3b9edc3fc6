//! Faults, with real processes: a scheduler SIGKILLed in the middle of a rollout
//! and of a large deploy, a node partitioned from the scheduler and healed, a
//! data dir whose disk fills up, and the object limits.

use serde_json::Value;
use sha2::{Digest, Sha256};
use skiff_tests::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn start_server(dir: &Path, data: &Path, port: u16, extra: &[&str]) -> Proc {
    let _ = std::fs::remove_file(data.join("server.url"));
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["server", "--listen", &listen, "--data-dir", data.to_str().unwrap_or_default()];
    args.extend_from_slice(extra);
    Proc::start("server", &args, &dir.join("server.log"))
}

/// `skiff node --simulate N`: nodes that speak the protocol and run nothing.
fn start_sims(dir: &Path, url: &str, n: usize, prefix: &str) -> Proc {
    let join = read_when_ready(&dir.join("server/join-token"));
    let count = n.to_string();
    let args = [
        "node",
        "--simulate",
        &count,
        "--name-prefix",
        prefix,
        "--server",
        url,
        "--token",
        &join,
        "--cpu",
        "4",
        "--memory",
        "4Gi",
    ];
    Proc::start("sim nodes", &args, &dir.join(format!("sim-{prefix}.log")))
}

fn wait_nodes(dir: &Path, url: &str, n: usize) {
    wait_for(Duration::from_secs(60), &format!("{n} nodes ready"), || {
        let nodes = get_json(dir, url, "nodes");
        let ready = nodes.iter().filter(|x| x["state"] == "ready").count();
        if ready >= n { Ok(()) } else { Err(format!("{ready} ready")) }
    });
}

/// Live (non-terminal) replicas per deployment.
fn live_counts(dir: &Path, url: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in get_json(dir, url, "replicas") {
        if r["state"] != "stopped" && r["state"] != "lost" {
            *m.entry(r["deployment"].as_str().unwrap_or("").to_string()).or_default() += 1;
        }
    }
    m
}

/// What must survive anything: each deployment's spec, count, revision and
/// rollout target, and the secrets' names and keys.
fn objects(dir: &Path, url: &str) -> (BTreeMap<String, Value>, Vec<Value>) {
    let deployments = get_json(dir, url, "deployments")
        .into_iter()
        .map(|d| {
            let name = d["name"].as_str().unwrap_or("").to_string();
            let kept = serde_json::json!({
                "spec": d["spec"],
                "replicas": d["replicas"],
                "revision": d["revision"],
                "to_revision": d["rollout"]["to_revision"],
                "created_ms": d["created_ms"],
            });
            (name, kept)
        })
        .collect();
    let secrets: Value =
        serde_json::from_str(&http_get(&format!("{url}/v1/secrets")).expect("GET secrets")).unwrap_or(Value::Null);
    let secrets = secrets
        .as_array()
        .map(|a| a.iter().map(|s| serde_json::json!({"name": s["name"], "keys": s["keys"]})).collect())
        .unwrap_or_default();
    (deployments, secrets)
}

#[test]
fn a_scheduler_killed_mid_rollout_and_mid_deploy_loses_nothing() {
    let dir = TempDir::new("fault-kill");
    let data = dir.path().join("server");
    let port = free_port();
    let mut server = start_server(dir.path(), &data, port, &[]);
    let url = server_ready(&data);
    let _sims = start_sims(dir.path(), &url, 20, "sim");
    wait_nodes(dir.path(), &url, 20);
    let cwd = dir.path();
    let worker = wasm_p2("worker");
    let wasm = worker.to_str().unwrap_or_default();

    cli_ok(cwd, &url, &["secret", "create", "db", "--from-literal", "password=hunter2"]);
    cli_ok(cwd, &url, &["deploy", wasm, "--name", "r", "--replicas", "3", "--memory", "32Mi"]);
    wait_for(Duration::from_secs(60), "r at 3 running, rollout complete", || {
        let d = get_json(cwd, &url, "deployments");
        let r = running(cwd, &url, "r").len();
        let done = d.iter().any(|x| x["name"] == "r" && x["rollout"]["state"] == "complete");
        if r == 3 && done { Ok(()) } else { Err(format!("{r} running; {d:?}")) }
    });

    // A new revision of r (a rolling update, one at a time) and a large deploy,
    // then SIGKILL at once: both are under way in the store, neither finished.
    cli_ok(cwd, &url, &["deploy", wasm, "--name", "r", "--replicas", "3", "--memory", "32Mi", "--env", "V=2"]);
    cli_ok(cwd, &url, &["deploy", wasm, "--name", "big", "--replicas", "300", "--memory", "16Mi", "--cpu", "10m"]);
    let before = objects(cwd, &url);
    let seen = live_counts(cwd, &url);
    let big_running = running(cwd, &url, "big").len();
    server.kill();
    println!("killed the scheduler with {big_running}/300 of big running; live replicas {seen:?}");

    // Restarted on the same data dir and port: the nodes find it again.
    let _server = start_server(dir.path(), &data, port, &[]);
    assert_eq!(server_ready(&data), url);
    let after = objects(cwd, &url);
    assert_eq!(before, after, "objects changed across the crash");

    // Every rollout finishes, and no deployment ever has more live replicas than
    // its count allows (r: 3 + maxSurge 1 while rolling; big: 300).
    wait_for(Duration::from_secs(120), "r rolled out and big at 300", || {
        let live = live_counts(cwd, &url);
        let (r, big) = (live.get("r").copied().unwrap_or(0), live.get("big").copied().unwrap_or(0));
        assert!(r <= 4 && big <= 300, "over its count: {live:?}");
        let reps = get_json(cwd, &url, "replicas");
        let new_r = reps
            .iter()
            .filter(|x| x["deployment"] == "r" && x["state"] == "running" && x["revision"] == after.0["r"]["revision"])
            .count();
        let big_running = running(cwd, &url, "big").len();
        let d = get_json(cwd, &url, "deployments");
        let done = d.iter().any(|x| x["name"] == "r" && x["rollout"]["state"] == "complete");
        if new_r == 3 && r == 3 && done && big_running == 300 && big == 300 {
            Ok(())
        } else {
            Err(format!("r: {new_r} new running of {r} live, complete {done}; big: {big_running} running of {big}"))
        }
    });
    // The events from before the crash are still there.
    for object in ["deployment/r", "secret/db"] {
        let events = http_get(&format!("{url}/v1/events?object={object}")).expect("GET events");
        assert!(events.contains("Created"), "{object}: {events}");
    }
}

/// A small ext4 loop-mounted for the test, unmounted (and its loop device freed)
/// on drop, even when the test fails.
struct LoopMount {
    mnt: PathBuf,
    _dir: TempDir,
}

impl LoopMount {
    fn new(tag: &str, size: &str) -> LoopMount {
        let dir = TempDir::new(tag);
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
            assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run("truncate", &["-s", size, img.to_str().unwrap_or_default()]);
        // Is e2fsprogs installed? `make test` installs it.
        run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap_or_default()]);
        run("mount", &["-o", "loop", img.to_str().unwrap_or_default(), mnt.to_str().unwrap_or_default()]);
        LoopMount { mnt, _dir: dir }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // Mounted with -o loop, the loop device is freed with the mount.
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// `PUT /v1/blobs/DIGEST` of `bytes` with the server's token: (status, body).
fn put_blob(url: &str, bytes: &[u8]) -> (u16, String) {
    let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
    let hostport = url.trim_start_matches("http://").trim_start_matches("https://");
    let mut s = Conn::open(url).expect("connect");
    let token = token_for(url).unwrap_or_default();
    let head = format!(
        "PUT /v1/blobs/{digest} HTTP/1.0\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    );
    // The server may answer (and close) before all is sent: that is its answer.
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(bytes));
    let buf = s.read_all().unwrap_or_default();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut v)).expect("read /dev/urandom");
    v
}

#[test]
fn a_full_data_dir_gives_a_clear_error_and_loses_nothing() {
    // Declared first, dropped last: the server is gone before the unmount.
    let disk = LoopMount::new("fault-disk", "16M");
    let dir = TempDir::new("fault-disk-run");
    let data = disk.mnt.join("server");
    let port = free_port();
    let mut server = start_server(dir.path(), &data, port, &[]);
    let url = server_ready(&data);
    // The sims find the join token under `dir/server`.
    std::fs::create_dir_all(dir.path().join("server")).expect("mkdir");
    std::fs::copy(data.join("join-token"), dir.path().join("server/join-token")).expect("copy join token");
    let _sims = start_sims(dir.path(), &url, 2, "sim");
    wait_nodes(dir.path(), &url, 2);
    let cwd = dir.path();
    let worker = wasm_p2("worker");
    let wasm = worker.to_str().unwrap_or_default();

    cli_ok(cwd, &url, &["secret", "create", "kept", "--from-literal", "k=v"]);
    cli_ok(cwd, &url, &["deploy", wasm, "--name", "kept", "--replicas", "3", "--memory", "32Mi"]);
    let stored_blob = random_bytes(256 * 1024);
    assert_eq!(put_blob(&url, &stored_blob).0, 200);
    wait_for(Duration::from_secs(60), "kept at 3 running", || {
        let r = running(cwd, &url, "kept").len();
        if r == 3 { Ok(()) } else { Err(format!("{r}")) }
    });
    let before = objects(cwd, &url);

    // Fill the disk from outside, as another program on the host would.
    let filler = disk.mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    // Uploads and changes are refused with the one clear error, and the server
    // stays up and answers reads.
    let (status, body) = put_blob(&url, &random_bytes(1 << 20));
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("data directory is full"), "{body}");
    let mut refused = None;
    for i in 0..200 {
        // SQLite may still fit a few small writes in pages it holds free.
        let out =
            cli_in(cwd, &url, &["secret", "create", &format!("s{i}"), "--from-literal", &format!("k={i:0>2000}")]);
        if !out.ok {
            refused = Some(out.stderr);
            break;
        }
    }
    let refused = refused.expect("the full disk never refused a secret");
    assert!(refused.contains("data directory is full") && refused.lines().count() == 1, "{refused}");
    assert!(server.alive(), "the scheduler died of a full disk");
    assert_eq!(running(cwd, &url, "kept").len(), 3);

    // Crash while full, free the space, restart: everything stored before is intact.
    server.kill();
    std::fs::remove_file(&filler).expect("remove filler");
    let _server = start_server(dir.path(), &data, port, &[]);
    assert_eq!(server_ready(&data), url);
    let after = objects(cwd, &url);
    assert_eq!(before.0, after.0, "deployments changed");
    assert!(before.1.iter().all(|s| after.1.contains(s)), "secrets lost: {:?} → {:?}", before.1, after.1);
    let digest = format!("sha256:{}", hex(&Sha256::digest(&stored_blob)));
    let (status, _) = put_blob(&url, &stored_blob);
    assert_eq!(status, 200, "the stored blob {digest} is gone");
    let blob_file = data.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(&blob_file).ok().as_deref(), Some(&stored_blob[..]), "the stored blob is corrupted");

    // Recovered: changes work again and the cluster converges.
    cli_ok(cwd, &url, &["secret", "create", "later", "--from-literal", "k=v"]);
    cli_ok(cwd, &url, &["deploy", wasm, "--name", "later", "--replicas", "2", "--memory", "32Mi"]);
    wait_for(Duration::from_secs(60), "kept at 3 and later at 2 running", || {
        let (k, l) = (running(cwd, &url, "kept").len(), running(cwd, &url, "later").len());
        if k == 3 && l == 2 { Ok(()) } else { Err(format!("kept {k}, later {l}")) }
    });
}

#[test]
fn object_counts_are_capped_with_a_clear_error() {
    let dir = TempDir::new("fault-limits");
    let data = dir.path().join("server");
    let _server = start_server(dir.path(), &data, free_port(), &["--max-objects", "2"]);
    let url = server_ready(&data);
    let cwd = dir.path();
    let worker = wasm_p2("worker");
    let wasm = worker.to_str().unwrap_or_default();
    for i in 0..2 {
        cli_ok(cwd, &url, &["secret", "create", &format!("s{i}"), "--from-literal", "k=v"]);
        cli_ok(cwd, &url, &["deploy", wasm, "--name", &format!("d{i}"), "--volume", &format!("v{i}:/data")]);
    }
    let over = cli_in(cwd, &url, &["secret", "create", "s2", "--from-literal", "k=v"]);
    assert!(!over.ok && over.stderr.contains("limit of 2 secrets"), "{}", over.stderr);
    let over = cli_in(cwd, &url, &["deploy", wasm, "--name", "d2"]);
    assert!(!over.ok && over.stderr.contains("limit of 2 deployments"), "{}", over.stderr);
    // Updating what exists is no new object.
    cli_ok(cwd, &url, &["secret", "create", "s1", "--from-literal", "k=w", "--overwrite"]);
    cli_ok(cwd, &url, &["deploy", wasm, "--name", "d1", "--volume", "v1:/data", "--env", "A=1"]);
    let over = cli_in(cwd, &url, &["deploy", wasm, "--name", "d1", "--volume", "v9:/data"]);
    assert!(!over.ok && over.stderr.contains("limit of 2 volumes"), "{}", over.stderr);
    // Deleting makes room.
    cli_ok(cwd, &url, &["secret", "rm", "s0"]);
    cli_ok(cwd, &url, &["secret", "create", "s2", "--from-literal", "k=v"]);
}

/// The replicas of `deployment` that a node's own API (`GET /v1/replicas` at
/// `api`) lists, asked from inside its namespace as a user on that host would,
/// as (id, state).
fn node_view(ns: &NetNs, api: &str, deployment: &str) -> Result<Vec<(String, String)>, String> {
    let body = ns.exec(&["curl", "-sS", "--fail", "--max-time", "3", &format!("{api}/v1/replicas")])?;
    let list: Vec<Value> = serde_json::from_str(&body).map_err(|e| format!("{body:?}: {e}"))?;
    let prefix = format!("{deployment}-");
    let mut seen: Vec<(String, String)> = list
        .iter()
        .filter_map(|r| Some((r["id"].as_str()?.to_string(), r["state"].as_str()?.to_string())))
        .filter(|(id, _)| id.starts_with(&prefix))
        .collect();
    seen.sort();
    Ok(seen)
}

/// The scheduler's live (neither stopped nor lost) replicas of `deployment`, as
/// (id, node, state), sorted; fails the test at once if there are more than
/// `count`.
fn scheduler_view(cwd: &Path, url: &str, deployment: &str, count: usize) -> Vec<(String, String, String)> {
    let mut live: Vec<(String, String, String)> = get_json(cwd, url, "replicas")
        .into_iter()
        .filter(|r| r["deployment"] == deployment && r["state"] != "stopped" && r["state"] != "lost")
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (field("id"), field("node"), field("state"))
        })
        .collect();
    live.sort();
    assert!(live.len() <= count, "{deployment} has more than {count} live replicas: {live:?}");
    live
}

/// The state the scheduler gives node `name`.
fn node_state(cwd: &Path, url: &str, name: &str) -> String {
    let nodes = get_json(cwd, url, "nodes");
    nodes.iter().find(|n| n["name"] == name).and_then(|n| n["state"].as_str()).unwrap_or("absent").to_string()
}

/// The events about `object`, as (id, reason, message), oldest first.
fn events(url: &str, object: &str) -> Vec<(u64, String, String)> {
    let body = http_get(&format!("{url}/v1/events?object={object}")).expect("GET events");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap_or_else(|e| panic!("events of {object}: {e}: {body}"));
    let mut events: Vec<(u64, String, String)> = list
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (e["id"].as_u64().unwrap_or(0), text("reason"), text("message"))
        })
        .collect();
    events.sort();
    events
}

/// A node cut off from the scheduler (the bridge's end of its veth down, as a
/// pulled cable) is counted down and its replicas are replaced on the other
/// node, while it keeps running them: nothing told it otherwise, and they hold
/// no volume lease (a leased writer stopping by itself is
/// `volumes::a_partitioned_node_stops_its_leased_writer`). Once the link is back
/// it hears its new set and stops them, and the scheduler and both nodes agree on
/// exactly the deployment's count, never more.
#[test]
fn a_partitioned_node_is_replaced_and_converges_when_healed() {
    if !require_root("a partition (ip netns, a bridge, veths)") {
        return;
    }
    // Dropped in reverse: the nodes, their namespaces, the server, the bridge, the files.
    let dir = TempDir::new("fault-partition");
    let cwd = dir.path();
    let net = net_prefix();
    let bridge = Bridge::new(&net_name("skb"), &format!("{net}.1/24"));
    let (_server, url, token) = bridge.start_server(&cwd.join("server"), &[], &cwd.join("server.log"));
    let ns_a = NetNs::on_bridge(&net_name("skn"), &bridge, &format!("{net}.2/24"));
    let ns_b = NetNs::on_bridge(&net_name("skn"), &bridge, &format!("{net}.3/24"));
    // Replicas of 250m: a has room for two, b for all four.
    let (data_a, data_b) = (cwd.join("node-a"), cwd.join("node-b"));
    let mut node_a = ns_a.start_node("a", &url, &token, &data_a, &["--cpu", "500m"], &cwd.join("node-a.log"));
    let mut node_b = ns_b.start_node("b", &url, &token, &data_b, &["--cpu", "1"], &cwd.join("node-b.log"));
    let (api_a, api_b) = (read_when_ready(&data_a.join("node.addr")), read_when_ready(&data_b.join("node.addr")));
    wait_nodes(cwd, &url, 2);

    // Four replicas: two fill a, and spreading puts the other two on b.
    let worker = wasm_p2("worker");
    let deploy = ["deploy", worker.to_str().unwrap_or_default(), "--name", "work", "--replicas", "4"];
    cli_ok(cwd, &url, &[&deploy[..], &["--cpu", "250m", "--memory", "32Mi"]].concat());
    let on_a: Vec<(String, String)> = wait_for(Duration::from_secs(30), "4 replicas of work running, 2 on a", || {
        let live = scheduler_view(cwd, &url, "work", 4);
        let on_a: Vec<(String, String)> =
            live.iter().filter(|r| r.1 == "a").map(|r| (r.0.clone(), "running".to_string())).collect();
        let running = live.iter().filter(|r| r.2 == "running").count();
        if running == 4 && on_a.len() == 2 { Ok(on_a) } else { Err(format!("{live:?}")) }
    });
    wait_for(Duration::from_secs(10), "a's own API to list its 2 replicas running", || {
        let seen = node_view(&ns_a, &api_a, "work")?;
        if seen == on_a { Ok(()) } else { Err(format!("{seen:?}")) }
    });

    // Cut a off: the scheduler counts it down (after the node grace, 3 s) and
    // replaces its two replicas on b.
    ns_a.cut();
    let cut = std::time::Instant::now();
    wait_for(Duration::from_secs(15), "a down and all 4 replicas of work running on b", || {
        let live = scheduler_view(cwd, &url, "work", 4);
        let state = node_state(cwd, &url, "a");
        let on_b = live.iter().filter(|r| r.1 == "b" && r.2 == "running").count();
        if state == "down" && on_b == 4 { Ok(()) } else { Err(format!("a {state}; {live:?}")) }
    });
    // A partition kills nothing: a still runs the two it had.
    let seen = node_view(&ns_a, &api_a, "work").expect("a's own API, from inside its namespace");
    assert_eq!(seen, on_a, "a's own view while cut off");
    println!("a down and its replicas replaced on b {:?} after the cut", cut.elapsed());

    // Healed: a hears that its set is empty and stops the two; then the
    // scheduler and both nodes say the same four, all on b.
    ns_a.heal();
    let healed = std::time::Instant::now();
    let converged =
        wait_for(Duration::from_secs(20), "a ready with none of work, b and the scheduler agreeing on 4", || {
            let live = scheduler_view(cwd, &url, "work", 4);
            let state = node_state(cwd, &url, "a");
            let (seen_a, seen_b) = (node_view(&ns_a, &api_a, "work")?, node_view(&ns_b, &api_b, "work")?);
            let scheduler: Vec<(String, String)> =
                live.iter().filter(|r| r.1 == "b" && r.2 == "running").map(|r| (r.0.clone(), r.2.clone())).collect();
            if state == "ready" && seen_a.is_empty() && live.len() == 4 && scheduler == seen_b {
                Ok(seen_b)
            } else {
                Err(format!("a {state}; scheduler {live:?}; a says {seen_a:?}; b says {seen_b:?}"))
            }
        });
    assert_eq!(converged.len(), 4);
    println!("converged {:?} after the heal", healed.elapsed());
    assert!(node_a.alive() && node_b.alive(), "a node daemon died");

    // The scheduler's events say why: a went down, its two replicas were lost
    // with it and placed again on b, and a came back.
    let node_events = events(&url, "node/a");
    let down = node_events
        .iter()
        .find(|e| e.1 == "NodeDown")
        .unwrap_or_else(|| panic!("no NodeDown event for a: {node_events:?}"));
    assert!(
        down.2.starts_with("no heartbeat for") && down.2.ends_with("its 2 replicas are replaced elsewhere"),
        "{down:?}"
    );
    assert!(node_events.iter().any(|e| e.1 == "NodeReady" && e.0 > down.0), "{node_events:?}");
    let work_events = events(&url, "deployment/work");
    for (id, _) in &on_a {
        let lost = format!("replica {id} lost with node a");
        assert!(work_events.iter().any(|e| e.1 == "ReplicaLost" && e.2 == lost), "no {lost:?} in {work_events:?}");
    }
    let placed: Vec<&str> =
        work_events.iter().filter(|e| e.0 > down.0 && e.1 == "Scheduled").map(|e| e.2.as_str()).collect();
    let on_b = placed.iter().map(|m| m.matches(" on b").count()).sum::<usize>();
    assert!(on_b == 2 && !placed.iter().any(|m| m.contains(" on a")), "replacements: {placed:?}");
}

/// This node's secret directory on tmpfs (`node/src/secrets.rs`: a hash of the
/// canonical data dir), and the names in it.
fn secret_dirs(data: &Path) -> Vec<String> {
    let abs = std::fs::canonicalize(data).expect("canonical node data dir");
    let tag = hex(&Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    let root = Path::new("/dev/shm").join(format!("skiff-{tag}"));
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The pids of every process running our skiff binary with `marker` (the test's
/// temp dir) on its command line, and of every child of `parent`.
fn skiff_processes(marker: &str, parent: u32) -> (Vec<u32>, Vec<u32>) {
    let exe = std::fs::canonicalize(skiff_bin()).expect("skiff binary");
    let (mut ours, mut children) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let is_ours = std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe)
            && String::from_utf8_lossy(&cmdline).contains(marker);
        if is_ours {
            ours.push(pid);
        }
        // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    ours.sort();
    (ours, children)
}

/// Each replica of the node, by its own API, as (id, state).
fn node_replicas(api: &str) -> Result<Vec<(String, String)>, String> {
    let body = http_get(&format!("{api}/v1/replicas"))?;
    let list: Vec<Value> = serde_json::from_str(&body).map_err(|e| format!("{body:?}: {e}"))?;
    let mut seen: Vec<(String, String)> =
        list.iter().filter_map(|r| Some((r["id"].as_str()?.to_string(), r["state"].as_str()?.to_string()))).collect();
    seen.sort();
    Ok(seen)
}

/// A node daemon SIGKILLed while it runs Wasm replicas (one reading a secret from
/// files on tmpfs, one writing a volume, one HTTP component) and started again on
/// the same data dir: each replica runs again exactly once, the scheduler and the
/// node agree on them, the secret directory holds only the running reader's
/// files, no process of the dead daemon is left, and the volume has one writer
/// (its count goes on from where it was, one step at a time).
#[test]
fn a_killed_node_daemon_restarts_its_replicas_once_and_leaks_nothing() {
    let dir = TempDir::new("fault-node-kill");
    let cwd = dir.path();
    let data = cwd.join("server");
    let _server = start_server(cwd, &data, free_port(), &[]);
    let url = server_ready(&data);
    let join = read_when_ready(&data.join("join-token"));
    let node_data = cwd.join("node");
    let start_node = || {
        for stale in ["node.addr", "ingress.addr"] {
            let _ = std::fs::remove_file(node_data.join(stale));
        }
        let args = [
            "node",
            "--server",
            &url,
            "--token",
            &join,
            "--name",
            "n",
            "--data-dir",
            node_data.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
        ];
        let p = Proc::start("node", &args, &cwd.join("node.log"));
        (p, read_when_ready(&node_data.join("node.addr")))
    };
    let (mut node, _) = start_node();
    wait_nodes(cwd, &url, 1);

    cli_ok(cwd, &url, &["secret", "create", "db", "--from-literal", "password=hunter2"]);
    let (reader, counter, http) = (wasm_p2("secret_reader"), wasm_p2("counter"), wasm_p2("hello_http"));
    let path = |p: &PathBuf| p.to_str().unwrap_or_default().to_string();
    cli_ok(
        cwd,
        &url,
        &["deploy", &path(&reader), "--name", "reader", "--secret-env", "DB_PASSWORD=db:password"]
            .into_iter()
            .chain(["--secret-dir", "db:/secrets/db", "--memory", "16Mi"])
            .collect::<Vec<_>>(),
    );
    cli_ok(
        cwd,
        &url,
        &["deploy", &path(&counter), "--name", "counter", "--volume", "data:/data", "--env", "INTERVAL_MS=100"],
    );
    cli_ok(cwd, &url, &["deploy", &path(&http), "--name", "web", "--memory", "16Mi"]);

    // The scheduler's live replicas (id, state) and the node's own list agree,
    // one per deployment, all running (the HTTP one ready).
    let agreed = |api: &str| -> Result<Vec<(String, String)>, String> {
        let mut sched: Vec<(String, String)> = Vec::new();
        for d in ["counter", "reader", "web"] {
            let live = scheduler_view(cwd, &url, d, 1);
            sched.extend(live.into_iter().map(|(id, _, state)| (id, state)));
        }
        sched.sort();
        let on_node = node_replicas(api)?;
        let up = |s: &str| s == "running" || s == "ready";
        if sched.len() == 3 && sched.iter().all(|(_, s)| up(s)) && sched == on_node {
            Ok(sched)
        } else {
            Err(format!("scheduler {sched:?}, node {on_node:?}"))
        }
    };
    let api = read_when_ready(&node_data.join("node.addr"));
    let before = wait_for(Duration::from_secs(30), "3 replicas up, scheduler and node agreeing", || agreed(&api));
    let id_of = |list: &[(String, String)], d: &str| {
        list.iter().find(|(id, _)| id.starts_with(&format!("{d}-"))).map(|r| r.0.clone()).unwrap_or_default()
    };
    let reader_id = id_of(&before, "reader");
    assert_eq!(secret_dirs(&node_data), std::slice::from_ref(&reader_id), "the reader's secret files");
    let count_file = node_data.join("volumes/data/count");
    let read_count = || std::fs::read_to_string(&count_file).ok().and_then(|s| s.trim().parse::<u64>().ok());
    wait_for(Duration::from_secs(10), "the counter past 3", || match read_count() {
        Some(n) if n > 3 => Ok(()),
        other => Err(format!("{other:?}")),
    });

    // SIGKILL: no Drop runs, the secret files stay on tmpfs until the next start.
    let old_pid = node.pid();
    node.kill();
    let at_kill = read_count().expect("a count at the kill");
    let marker = cwd.to_string_lossy().into_owned();
    assert!(!skiff_processes(&marker, old_pid).0.contains(&old_pid), "the killed daemon still runs");

    // Back within the node grace: the scheduler never counted it down, so the
    // same replicas (same ids) run again.
    let (node, api) = start_node();
    let after = wait_for(Duration::from_secs(30), "the same 3 replicas up again, agreeing", || {
        let now = agreed(&api)?;
        if now == before { Ok(now) } else { Err(format!("{now:?}, before {before:?}")) }
    });
    assert_eq!(secret_dirs(&node_data), [reader_id], "secret dirs after the restart");

    // One process per daemon we started (the server and the new node), none of
    // them a child of the node: Wasm runs in the daemon's own threads.
    let (ours, children) = skiff_processes(&marker, node.pid());
    assert_eq!(ours.len(), 2, "skiff processes of this test: {ours:?}");
    assert!(ours.contains(&node.pid()) && !ours.contains(&old_pid), "{ours:?}");
    assert!(children.is_empty(), "the node has children: {children:?}");

    // The volume has one writer: the counter started once more, from at least
    // where the killed one left it, and counts one step at a time since.
    let logs = wait_for(Duration::from_secs(10), "the counter counting again", || {
        let logs = cli_ok(cwd, &url, &["logs", "counter", "--tail", "1000"]);
        let starts = logs.matches("counter starting at ").count();
        if starts == 2 && logs.rsplit("counter starting at ").next().is_some_and(|l| l.contains("count ")) {
            Ok(logs)
        } else {
            Err(format!("{starts} starts"))
        }
    });
    let restart = logs.rsplit("counter starting at ").next().unwrap_or_default();
    let start: u64 = restart.split(' ').next().and_then(|n| n.parse().ok()).expect("the restart's count");
    assert!(start >= at_kill, "the count went back: {start} < {at_kill}");
    let counts: Vec<u64> =
        restart.lines().filter_map(|l| l.rsplit_once("count ").and_then(|(_, n)| n.trim().parse().ok())).collect();
    let expected: Vec<u64> = (start + 1..=start + counts.len() as u64).collect();
    assert_eq!(counts, expected, "two writers or lost steps since the restart");

    // And the HTTP replica answers through the new daemon's ingress.
    let ingress = read_when_ready(&node_data.join("ingress.addr"));
    wait_for(Duration::from_secs(10), "web answering on the new ingress", || {
        let a = get(&ingress, "web.skiff.local", "/")?;
        if a.status == 200 { Ok(()) } else { Err(format!("{a:?}")) }
    });
    assert_eq!(after.len(), 3);
}
