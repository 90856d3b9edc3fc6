//! HTTP services: a scheduler and two nodes as separate processes, the
//! `hello_http` component deployed with three replicas and reached through either
//! node's ingress, by Host name and by path prefix; unknown names, no ready
//! replica, a handler in an infinite loop, one that outgrows its memory limit,
//! and outbound calls (to another deployment by name, and to a host not allowed).

use skiff_tests::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

struct Cluster {
    dir: TempDir,
    url: String,
    _server: Proc,
    nodes: Vec<Proc>,
    ingresses: Vec<String>,
}

impl Cluster {
    fn new(nodes: &[&str]) -> Cluster {
        let dir = TempDir::new("http");
        let (server, url, token) = loopback_server(dir.path(), &[]);
        let mut procs = Vec::new();
        let mut ingresses = Vec::new();
        for name in nodes {
            let (node, ingress) = start_node_on_loopback(dir.path(), &url, &token, name, &["--request-timeout", "2s"]);
            procs.push(node);
            ingresses.push(ingress);
        }
        let c = Cluster { dir, url, _server: server, nodes: procs, ingresses };
        // Deploying before every node has registered would place all replicas on
        // the first one, and the test would not test what it says.
        wait_nodes_ready(c.dir.path(), &c.url, nodes.len());
        c
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn ready(&self, deployment: &str) -> Vec<String> {
        get_json(self.dir.path(), &self.url, "replicas")
            .into_iter()
            .filter(|r| r["deployment"] == deployment && r["state"] == "ready")
            .map(|r| r["id"].as_str().unwrap_or("").to_string())
            .collect()
    }

    fn wait_ready(&self, deployment: &str, n: usize) -> BTreeSet<String> {
        wait_for(Duration::from_secs(60), &format!("{n} ready replicas of {deployment}"), || {
            let r = self.ready(deployment);
            if r.len() == n { Ok(r.into_iter().collect()) } else { Err(format!("{r:?}")) }
        })
    }
}

/// Waits (at most 30 s) until `GET path` with `Host: host` on `ingress` answers
/// `status` and `body`: the nodes' endpoints tables follow the scheduler's by a
/// moment, and a service calling another sees the other's table.
fn answered(ingress: &str, host: &str, path: &str, status: u16, body: &str) {
    wait_for(Duration::from_secs(30), &format!("{status} {body:?} for {host}{path} on {ingress}"), || {
        let a = get(ingress, host, path)?;
        if a.status == status && a.body == body { Ok(()) } else { Err(format!("{a:?}")) }
    });
}

/// Waits until `n` nodes are ready.
fn wait_nodes_ready(dir: &Path, url: &str, n: usize) {
    wait_for(Duration::from_secs(30), &format!("{n} ready nodes"), || {
        let nodes = get_json(dir, url, "nodes");
        let ready = nodes.iter().filter(|node| node["state"] == "ready").count();
        if ready == n { Ok(()) } else { Err(format!("{nodes:?}")) }
    });
}

/// Asks `ingress` until every replica in `want` has answered (through `host` and
/// `path`), at most 100 answers; what answered otherwise fails the test. A 503
/// is asked again (for at most 30 s): a replica is ready at the scheduler a moment
/// before every node's endpoints table says so.
fn reach_all(ingress: &str, host: &str, path: &str, want: &BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut answers = 0;
    while answers < 100 {
        let a = get(ingress, host, path).unwrap_or_else(|e| panic!("GET {path} Host {host} on {ingress}: {e}"));
        if a.status == 503 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        answers += 1;
        assert_eq!(a.status, 200, "GET {path} Host {host} on {ingress}: {a:?}");
        let id = a.body.trim().strip_prefix("hello from ").unwrap_or_else(|| panic!("unexpected body {:?}", a.body));
        assert_eq!(a.header("x-skiff-replica").as_deref(), Some(id), "{a:?}");
        assert!(want.contains(id), "answered by {id}, not a ready replica of {want:?}");
        seen.insert(id.to_string());
        if &seen == want {
            return;
        }
    }
    panic!("through {ingress} ({host}{path}) only {seen:?} of {want:?} answered in 100 requests");
}

fn example(dir: &Path) -> String {
    let wasm = wasm_p2("hello_http");
    let copy = dir.join("hello_http.wasm");
    std::fs::copy(&wasm, &copy).expect("copy the example");
    copy.to_string_lossy().into_owned()
}

#[test]
fn http_replicas_answer_through_every_ingress() {
    let c = Cluster::new(&["n1", "n2"]);
    let wasm = example(c.dir.path());
    c.cli(&["deploy", &wasm, "--name", "hello", "--replicas", "3", "--memory", "64Mi", "--wait"]);
    let replicas = c.wait_ready("hello", 3);

    // Every replica answers through either node's ingress, by Host and by path.
    for ingress in &c.ingresses {
        reach_all(ingress, "hello.skiff.local", "/", &replicas);
        reach_all(ingress, "127.0.0.1", "/d/hello/", &replicas);
    }

    // Unknown names: 404 with one line saying so.
    let a = get(&c.ingresses[0], "nope.skiff.local", "/").expect("GET nope");
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(a.body, "no deployment named nope; `skiff get deployments` lists them\n");
    let a = get(&c.ingresses[1], "127.0.0.1", "/elsewhere").expect("GET /elsewhere");
    assert_eq!(a.status, 404, "{a:?}");

    // A handler that never returns gets 504 at the deadline; meanwhile the others
    // answer (one request at a time, on the same node).
    let spin_ingress = c.ingresses[0].clone();
    let spinner = std::thread::spawn(move || get(&spin_ingress, "hello.skiff.local", "/spin"));
    for _ in 0..10 {
        let a = get(&c.ingresses[0], "hello.skiff.local", "/").expect("GET / while one spins");
        assert_eq!(a.status, 200, "{a:?}");
    }
    let spun = spinner.join().expect("spinner thread").expect("GET /spin");
    assert_eq!(spun.status, 504, "{spun:?}");
    assert!(spun.body.starts_with("hello did not answer within 2s"), "{spun:?}");

    // Growing past the memory limit fails that request only.
    let grown = get(&c.ingresses[1], "hello.skiff.local", "/grow").expect("GET /grow");
    assert_eq!(grown.status, 500, "{grown:?}");
    assert_eq!(grown.body, "hello exceeded its memory limit of 64Mi\n");
    let a = get(&c.ingresses[1], "hello.skiff.local", "/").expect("GET / after /grow");
    assert_eq!(a.status, 200, "{a:?}");

    // Outbound: another deployment by name works; an allowed host works; a
    // host not allowed is refused.
    let outside = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the outside server");
    let outside_addr = outside.local_addr().expect("outside address").to_string();
    let server = std::thread::spawn(move || {
        // One request, one answer, then the thread ends.
        let (mut conn, _) = outside.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\noutside\n");
    });
    c.cli(&["deploy", &wasm, "--name", "caller", "--replicas", "1", "--allow-host", &outside_addr, "--wait"]);
    c.wait_ready("caller", 1);
    let a = get(&c.ingresses[1], "caller.skiff.local", "/call/hello.skiff.local/").expect("GET /call");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.starts_with("200 hello from hello-"), "{a:?}");
    let a = get(&c.ingresses[0], "caller.skiff.local", &format!("/call/{outside_addr}/")).expect("GET /call allowed");
    assert_eq!((a.status, a.body.as_str()), (200, "200 outside\n"), "{a:?}");
    server.join().expect("outside server");
    let a = get(&c.ingresses[0], "caller.skiff.local", "/call/127.0.0.1:9/").expect("GET /call denied");
    assert_eq!(a.status, 502, "{a:?}");
    assert!(a.body.contains("HttpRequestDenied"), "{a:?}");
    let bad = cli_in(c.dir.path(), &c.url, &["deploy", &wasm, "--name", "bad", "--allow-host", "http://x.io"]);
    assert!(!bad.ok && bad.stderr.contains("allowed host \"http://x.io\" has a scheme or a path"), "{}", bad.stderr);

    // A node dies: requests through the other keep succeeding (a connection
    // error is retried elsewhere), and once its replicas are replaced every
    // replica answers again.
    let mut c = c;
    c.nodes[1].kill();
    for _ in 0..20 {
        let a = get(&c.ingresses[0], "hello.skiff.local", "/").expect("GET / after a node died");
        assert_eq!(a.status, 200, "{a:?}");
    }
    let replaced = wait_for(Duration::from_secs(60), "3 ready replicas of hello on n1", || {
        let on_n1: BTreeSet<String> = get_json(c.dir.path(), &c.url, "replicas")
            .into_iter()
            .filter(|r| r["deployment"] == "hello" && r["state"] == "ready" && r["node"] == "n1")
            .map(|r| r["id"].as_str().unwrap_or("").to_string())
            .collect();
        if on_n1.len() == 3 { Ok(on_n1) } else { Err(format!("{on_n1:?}")) }
    });
    reach_all(&c.ingresses[0], "hello.skiff.local", "/", &replaced);

    // Scaled to zero: the deployment exists but nothing is ready, so 503 and
    // Retry-After once the table says so.
    c.cli(&["scale", "hello", "0"]);
    for ingress in &c.ingresses[..1] {
        let a = wait_for(Duration::from_secs(30), "503 after scaling to 0", || {
            let a = get(ingress, "hello.skiff.local", "/").map_err(|e| e.to_string())?;
            if a.status == 503 { Ok(a) } else { Err(format!("{a:?}")) }
        });
        assert_eq!(a.header("retry-after").as_deref(), Some("1"), "{a:?}");
        assert!(a.body.starts_with("no ready replica of hello"), "{a:?}");
    }
}

/// A scheduler on the host and nodes each in a network namespace of its own,
/// joined by a bridge: the hops between ingresses cross real interfaces.
/// Fields drop in order: processes, then namespaces, then the bridge, then files.
struct NsCluster {
    url: String,
    nodes: Vec<Proc>,
    _server: Proc,
    _netns: Vec<NetNs>,
    _bridge: Bridge,
    ingresses: Vec<String>,
    dir: TempDir,
}

impl NsCluster {
    /// Nodes as (name, labels, cpu).
    fn new(nodes: &[(&str, &str, &str)]) -> NsCluster {
        let dir = TempDir::new("http-netns");
        let net = net_prefix();
        let bridge = Bridge::new(&net_name("skb"), &format!("{net}.1/24"));
        let data = dir.path().join("server");
        let server = Proc::start(
            "server",
            &["server", "--listen", &format!("{}:0", bridge.ip), "--data-dir", data.to_str().unwrap_or_default()],
            &dir.path().join("server.log"),
        );
        let url = server_ready(&data);
        let token = read_when_ready(&data.join("join-token"));
        let (mut procs, mut namespaces, mut ingresses) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (name, labels, cpu)) in nodes.iter().enumerate() {
            let ns = NetNs::on_bridge(&net_name("skn"), &bridge, &format!("{net}.{}/24", i + 2));
            let addr = format!("{}:0", ns.ip.as_deref().unwrap_or_default());
            let data = dir.path().join(format!("node-{name}"));
            let args = [
                "node",
                "--server",
                &url,
                "--token",
                &token,
                "--name",
                name,
                "--labels",
                labels,
                "--cpu",
                cpu,
                "--memory",
                "2Gi",
                "--data-dir",
                data.to_str().unwrap_or_default(),
                "--listen",
                &addr,
                "--ingress",
                &addr,
            ];
            procs.push(ns.start(name, &args, &dir.path().join(format!("node-{name}.log"))));
            namespaces.push(ns);
            ingresses.push(read_when_ready(&data.join("ingress.addr")));
        }
        let c = NsCluster { url, nodes: procs, _server: server, _netns: namespaces, _bridge: bridge, ingresses, dir };
        wait_nodes_ready(c.dir.path(), &c.url, nodes.len());
        c
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    /// Ready replicas of `deployment`, as (id, node), once there are `n`.
    fn wait_ready(&self, deployment: &str, n: usize) -> Vec<(String, String)> {
        wait_for(Duration::from_secs(60), &format!("{n} ready replicas of {deployment}"), || {
            let r: Vec<(String, String)> = get_json(self.dir.path(), &self.url, "replicas")
                .into_iter()
                .filter(|r| r["deployment"] == deployment && r["state"] == "ready")
                .map(|r| (r["id"].as_str().unwrap_or("").to_string(), r["node"].as_str().unwrap_or("").to_string()))
                .collect();
            if r.len() == n { Ok(r) } else { Err(format!("{r:?}")) }
        })
    }
}

/// Three nodes in three network namespaces: a request to any node's ingress is
/// answered by every replica, also through the node that holds none (each answer
/// then crossed from its namespace to another's), and a service calls another by
/// name across them (the SDK's `caller` and `json_api` examples).
#[test]
fn ingresses_in_separate_network_namespaces_reach_every_replica() {
    if !require_root("network namespaces (ip netns, a bridge, veths)") {
        return;
    }
    // An app node fits two replicas of 400m, so three span both; the edge node
    // has none (the label selector).
    let c = NsCluster::new(&[("n1", "role=app", "1"), ("n2", "role=app", "1"), ("edge", "role=edge", "1")]);
    let wasm = example(c.dir.path());
    let hello =
        ["deploy", &wasm, "--name", "hello", "--replicas", "3", "--cpu", "400m", "--label-selector", "role=app"];
    c.cli(&hello);
    let replicas = c.wait_ready("hello", 3);
    let on: BTreeSet<&str> = replicas.iter().map(|(_, node)| node.as_str()).collect();
    assert_eq!(on, BTreeSet::from(["n1", "n2"]), "replicas only on the app nodes: {replicas:?}");
    let want: BTreeSet<String> = replicas.into_iter().map(|(id, _)| id).collect();
    // Every ingress, the edge node's (no replica) included, reaches all three.
    for ingress in &c.ingresses {
        reach_all(ingress, "hello.skiff.local", "/", &want);
    }

    // Service to service by name, from the edge node: caller (on an app node)
    // asks api.skiff.local, which its node's ingress routes to json_api.
    let sdk = |name: &str| {
        let copy = c.dir.path().join(format!("{name}.wasm"));
        std::fs::copy(wasm_p2(name), &copy).expect("copy the example");
        copy.to_string_lossy().into_owned()
    };
    c.cli(&["deploy", &sdk("json_api"), "--name", "api", "--label-selector", "role=app", "--wait"]);
    c.cli(&["deploy", &sdk("caller"), "--name", "caller", "--label-selector", "role=app", "--wait"]);
    c.wait_ready("api", 1);
    c.wait_ready("caller", 1);
    let edge = &c.ingresses[2];
    answered(edge, "api.skiff.local", "/items/2", 200, "{\"id\":2,\"name\":\"oar\"}\n");
    answered(edge, "api.skiff.local", "/nowhere", 404, "{\"error\":\"not found\"}\n");
    let items = "[{\"id\":1,\"name\":\"anchor\"},{\"id\":2,\"name\":\"oar\"},{\"id\":3,\"name\":\"sail\"}]";
    let want = format!("{{\"body\":{items},\"status\":200,\"url\":\"http://api.skiff.local/items\"}}\n");
    answered(edge, "caller.skiff.local", "/", 200, &want);
    // Outbound to a host not allowed: refused by the node, 403 from the caller.
    let a = get(edge, "caller.skiff.local", "/fetch?url=http://example.com/").expect("GET caller /fetch");
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body.contains("host not allowed"), "{a:?}");

    // n2 dies: requests through the edge keep succeeding (a connection error is
    // retried on another node) while the table catches up.
    let mut c = c;
    c.nodes[1].kill();
    for _ in 0..20 {
        let a = get(&c.ingresses[2], "hello.skiff.local", "/").expect("GET / after n2 died");
        assert_eq!(a.status, 200, "{a:?}");
    }
}
