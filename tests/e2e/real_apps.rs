//! Real applications, as a user meets them: workloads nobody on the team wrote,
//! built by `scripts/real-apps.sh` (`make real-apps`, a step of `make test`) and
//! run by real `skiff` processes driven through the CLI and the API only.
//!
//! - nginx (Debian's nginx-light) behind the ingress, by Host and by path, and an
//!   nginx that proxies to it by name through `SKIFF_INGRESS`;
//! - redis (Debian's redis-server, `--appendonly yes`) with its data on a volume,
//!   through a SIGKILL of its process, a SIGKILL and restart of the node daemon, a
//!   new revision, and a delete (volumes kept) and redeploy;
//! - wasi:http components from other toolchains (componentize-py, componentize-js):
//!   deploy → ready measured, compiled once per node and then reused (a second
//!   deploy, a scale-up, a node restart), as the node's metrics show.
//!
//! The container tests need root (`require_root`), runc, the CNI plugins and
//! redis-cli; a missing tool or artifact fails the test, saying how to get it.

use skiff_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The artifact `var` names (`SKIFF_REAL_NGINX`…): from the environment, else
/// from `$CARGO_TARGET_DIR/real-apps.env`, which `make real-apps` writes.
fn artifact(var: &str) -> PathBuf {
    let from_file = || {
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
        let text = std::fs::read_to_string(target.join("real-apps.env")).ok()?;
        text.lines().find_map(|l| l.strip_prefix("export ")?.strip_prefix(var)?.strip_prefix('=').map(PathBuf::from))
    };
    let path = std::env::var_os(var).map(PathBuf::from).or_else(from_file).unwrap_or_else(|| {
        panic!("{var} is not set: run `make real-apps` (part of `make test`), which builds the real applications")
    });
    assert!(path.exists(), "{} ({var}) is missing: run `make real-apps` again", path.display());
    path
}

/// Fails the test unless `tools` are on the PATH.
fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        assert!(found.is_ok_and(|o| o.status.success()), "{tool} is missing: `make deps-test` installs it");
    }
}

/// The sum of every series of metric `name` in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn runc_ids(state: &Path) -> Vec<String> {
    let out = Command::new("runc").arg("--root").arg(state).args(["list", "-q"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// Removes what the node leaves when a test ends, passed or failed: containers
/// (a SIGKILLed node daemon leaves them running by design), their cgroups,
/// network namespaces and mounts. Declared after the node so it drops after it.
struct Janitor {
    data: PathBuf,
}

impl Drop for Janitor {
    fn drop(&mut self) {
        let state = self.data.join("containers/state");
        let mut ids = if state.exists() { runc_ids(&state) } else { Vec::new() };
        for id in &ids {
            let _ = Command::new("runc").arg("--root").arg(&state).args(["kill", "--all", id, "KILL"]).output();
            let _ = Command::new("runc").arg("--root").arg(&state).args(["delete", "--force", id]).output();
        }
        let runs = std::fs::read_dir(self.data.join("containers/run")).into_iter().flatten().flatten();
        ids.extend(runs.filter_map(|e| e.file_name().into_string().ok()));
        for id in &ids {
            for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(controller.path().join("skiff").join(id));
            }
            if Path::new(&format!("/run/netns/skiff-{id}")).exists() {
                let _ = Command::new("ip").args(["netns", "delete", &format!("skiff-{id}")]).output();
            }
        }
        let prefix = self.data.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&prefix)).collect();
        ours.reverse();
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
    }
}

/// A scheduler on a test bridge and a container node in a network namespace on
/// it (where the node makes its own CNI bridge, apart from the machine's
/// network); the test reaches both, and the node's ingress, over the bridge.
/// Fields drop in order: the node, the scheduler, the janitor, then the network
/// and the directory.
struct Host {
    node: Option<Proc>,
    _server: Proc,
    _janitor: Janitor,
    url: String,
    node_args: Vec<String>,
    ns: NetNs,
    _bridge: Bridge,
    dir: TempDir,
}

impl Host {
    fn start(tag: &str) -> Host {
        require_tools(&["runc", "ip", "nsenter", "redis-cli"]);
        let dir = TempDir::new(tag);
        let prefix = net_prefix();
        let bridge = Bridge::new(&net_name("ra"), &format!("{prefix}.1/24"));
        let ns = NetNs::on_bridge(&net_name("ra"), &bridge, &format!("{prefix}.2/24"));
        let server_data = dir.path().join("server");
        let (server, url, token) = bridge.start_server(&server_data, &[], &dir.path().join("server.log"));
        let data = dir.path().join("node");
        let janitor = Janitor { data: data.clone() };
        let node_args: Vec<String> = [
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
            "2Gi",
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            &format!("{prefix}.2:0"),
            // Every address of the namespace: containers reach it on the
            // node's bridge gateway (SKIFF_INGRESS), the test over the bridge.
            "--ingress",
            "0.0.0.0:0",
            "--container-network",
            "bridge",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut host =
            Host { node: None, _server: server, _janitor: janitor, url, node_args, ns, _bridge: bridge, dir };
        host.start_node();
        wait_for(Duration::from_secs(30), "node n1 to advertise containers", || {
            let nodes = host.json("nodes");
            let ok = nodes.iter().any(|n| {
                n["state"] == "ready" && n["runtimes"].as_array().is_some_and(|r| r.iter().any(|x| x == "container"))
            });
            if ok { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
        host
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    fn start_node(&mut self) {
        let _ = std::fs::remove_file(self.data().join("node.addr"));
        let _ = std::fs::remove_file(self.data().join("ingress.addr"));
        let args: Vec<&str> = self.node_args.iter().map(String::as_str).collect();
        // nsenter joins the namespace's network only: `ip netns exec` would also
        // remount /sys, hiding the cgroup mounts runc needs.
        let net = format!("--net=/run/netns/{}", self.ns.name);
        let wrapper = ["nsenter", net.as_str(), "--"];
        self.node = Some(Proc::start_in("node n1", &wrapper, &args, &self.dir.path().join("node.log")));
        read_when_ready(&self.data().join("node.addr"));
    }

    /// The node's ingress, `http://NS_IP:PORT`.
    fn ingress(&self) -> String {
        read_when_ready(&self.data().join("ingress.addr"))
    }

    fn cli(&self, args: &[&str]) -> Cli {
        cli_in(self.dir.path(), &self.url, args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn json(&self, kind: &str) -> Vec<serde_json::Value> {
        get_json(self.dir.path(), &self.url, kind)
    }

    fn import(&self, var: &str, name: &str) {
        let archive = artifact(var);
        let out = self.cli_ok(&["image", "import", archive.to_str().unwrap_or_default(), "--name", name]);
        assert!(out.contains(&format!("imported {name}")), "{out}");
    }

    /// The ids of `deployment`'s replicas in `state`, once there are `n`.
    fn wait_state(&self, deployment: &str, state: &str, n: usize) -> Vec<String> {
        wait_for(Duration::from_secs(90), &format!("{n} {state} replicas of {deployment}"), || {
            let all: Vec<serde_json::Value> =
                self.json("replicas").into_iter().filter(|r| r["deployment"] == deployment).collect();
            let ids: Vec<String> = all
                .iter()
                .filter(|r| r["state"] == state)
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect();
            if ids.len() == n { Ok(ids) } else { Err(format!("{all:?}\n{}", self.logs(deployment))) }
        })
    }

    fn logs(&self, deployment: &str) -> String {
        let out = self.cli(&["logs", deployment, "--tail", "200"]);
        out.stdout + &out.stderr
    }

    /// The container address of replica `id`, from the line its log starts with
    /// (the last such line: its latest run).
    fn address(&self, deployment: &str, id: &str) -> String {
        wait_for(Duration::from_secs(30), &format!("the address of {id} in its log"), || {
            let out = self.cli(&["logs", deployment, "--replica", id, "--tail", "500"]);
            let logs = out.stdout + &out.stderr;
            logs.lines()
                .rev()
                .filter_map(|l| l.split_once("network: eth0 ").map(|(_, a)| a.split('/').next().unwrap_or(a)))
                .next()
                .map(|a| a.trim().to_string())
                .ok_or(logs)
        })
    }

    /// `redis-cli -h ADDRESS ARGS` inside the namespace (the container network is
    /// there): its output, trimmed.
    fn redis(&self, address: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = vec!["redis-cli", "-h", address, "--raw"];
        cmd.extend_from_slice(args);
        self.ns.exec(&cmd).map(|s| s.trim().to_string())
    }

    /// The host pid of the container of replica `id` (runc's state).
    fn container_pid(&self, id: &str) -> Option<u64> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.data().join("containers/state"))
            .args(["state", id])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "running").then(|| v["pid"].as_u64()).flatten().filter(|p| *p > 0)
    }
}

/// Deploys nginx three times over: a web server with two replicas, reached
/// through the ingress by Host and by path (nginx itself answers, its own 404
/// too), a second nginx that proxies to the first by name through
/// `SKIFF_INGRESS`, and the image with its own command.
#[test]
fn nginx_serves_behind_the_ingress_and_another_nginx_calls_it_by_name() {
    if !require_root("containers (runc, CNI, network namespaces)") {
        return;
    }
    let host = Host::start("real-nginx");
    host.import("SKIFF_REAL_NGINX", "nginx:bookworm");
    let ingress = host.ingress();
    let page = "echo \"hello from $(hostname)\" > /var/www/html/index.html && exec nginx -g 'daemon off;'";
    host.cli_ok(&[
        "deploy",
        "--image",
        "nginx:bookworm",
        "--name",
        "web",
        "--replicas",
        "2",
        "--memory",
        "64Mi",
        "--port",
        "80",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        page,
    ]);
    let ids = host.wait_state("web", "ready", 2);

    let want: std::collections::BTreeSet<String> = ids.iter().map(|id| format!("hello from {id}")).collect();
    for (how, hostname, path) in [("Host", "web.skiff.local", "/"), ("path", "ingress", "/d/web/")] {
        let mut seen = std::collections::BTreeSet::new();
        wait_for(Duration::from_secs(30), &format!("both nginx replicas by {how}"), || {
            let a = get(&ingress, hostname, path)?;
            if a.status != 200 {
                return Err(format!("{a:?}"));
            }
            assert!(a.header("server").is_some_and(|s| s.starts_with("nginx")), "not nginx's answer: {a:?}");
            seen.insert(a.body.trim().to_string());
            if seen == want { Ok(()) } else { Err(format!("seen {seen:?}")) }
        });
    }
    let missing = get(&ingress, "web.skiff.local", "/no/such/page").expect("a request for a missing page");
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains("<center>nginx/"), "nginx's own 404 page: {missing:?}");

    // A front end that passes every request to web by name, through the ingress
    // its node hands it (`SKIFF_INGRESS`).
    let front = "printf 'server {\\n listen 8080;\\n location / {\\n  proxy_pass %s;\\n  proxy_set_header Host web.skiff.local;\\n }\\n}\\n' \"$SKIFF_INGRESS\" > /etc/nginx/sites-enabled/default && exec nginx -g 'daemon off;'";
    host.cli_ok(&[
        "deploy",
        "--image",
        "nginx:bookworm",
        "--name",
        "front",
        "--memory",
        "64Mi",
        "--port",
        "8080",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        front,
    ]);
    host.wait_state("front", "ready", 1);
    wait_for(Duration::from_secs(30), "front to answer with web's page", || {
        let a = get(&ingress, "front.skiff.local", "/")?;
        if a.status == 200 && want.contains(a.body.trim()) { Ok(()) } else { Err(format!("{a:?}")) }
    });

    // The image as Debian and umoci made it, with its own command and Debian's
    // default page.
    host.cli_ok(&["deploy", "--image", "nginx:bookworm", "--name", "plain", "--memory", "64Mi", "--port", "80"]);
    host.wait_state("plain", "ready", 1);
    wait_for(Duration::from_secs(30), "Debian's nginx page", || {
        let a = get(&ingress, "plain.skiff.local", "/")?;
        if a.status == 200 && a.body.contains("Welcome to nginx!") { Ok(()) } else { Err(format!("{a:?}")) }
    });
    for name in ["plain", "front", "web"] {
        host.cli_ok(&["delete", name]);
    }
}

/// Every key in `keys` holds `value-KEY` in the redis at `address`.
fn check(host: &Host, address: &str, keys: &[&str]) {
    for k in keys {
        let v = host.redis(address, &["GET", k]).unwrap_or_else(|e| panic!("GET {k}: {e}"));
        assert_eq!(v, format!("value-{k}"), "key {k} after the last step");
    }
}

/// Sets `k` to `value-k` in the redis at `address`.
fn set(host: &Host, address: &str, k: &str) {
    let ok = host.redis(address, &["SET", k, &format!("value-{k}")]).unwrap_or_else(|e| panic!("SET {k}: {e}"));
    assert_eq!(ok, "OK");
}

/// Redis with its append-only file on a volume keeps every acknowledged write
/// through a SIGKILL of its process, a SIGKILL and restart of the node daemon, a
/// rollout to a new revision, and a delete without `--purge-volumes` followed by
/// a redeploy.
#[test]
fn redis_keeps_its_data_on_a_volume_through_kills_rollouts_and_redeploys() {
    if !require_root("containers (runc, CNI, network namespaces)") {
        return;
    }
    let mut host = Host::start("real-redis");
    host.import("SKIFF_REAL_REDIS", "redis:bookworm");
    let deploy = |host: &Host, extra: &[&str]| {
        let mut args = vec![
            "deploy",
            "--image",
            "redis:bookworm",
            "--name",
            "redis",
            "--memory",
            "128Mi",
            "--volume",
            "rdata:/data",
        ];
        args.extend_from_slice(extra);
        // Every write is on disk before redis acknowledges it: what is lost after
        // this is skiff's doing, not redis's once-a-second fsync.
        for a in [
            "redis-server",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            "/data",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
        ] {
            args.extend_from_slice(&["--arg", a]);
        }
        host.cli_ok(&args);
    };
    // Waits for the one running replica to answer PING: its id and address.
    let serving = |host: &Host, not: Option<&str>| -> (String, String) {
        wait_for(Duration::from_secs(90), "redis to answer", || {
            let ids = host.wait_state("redis", "running", 1);
            let id = ids[0].clone();
            if not.is_some_and(|n| n == id) {
                return Err(format!("still {id}"));
            }
            let address = host.address("redis", &id);
            match host.redis(&address, &["PING"]) {
                Ok(pong) if pong == "PONG" => Ok((id, address)),
                other => Err(format!("{other:?}")),
            }
        })
    };
    deploy(&host, &[]);
    let (id, address) = serving(&host, None);
    set(&host, &address, "before-kill");

    // SIGKILL redis itself: the node restarts it, on the same volume.
    let pid = wait_for(Duration::from_secs(10), "redis's pid", || host.container_pid(&id).ok_or("no pid".to_string()));
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -KILL {pid}");
    let restarted = wait_for(Duration::from_secs(60), "redis restarted after its SIGKILL", || {
        let new = host.container_pid(&id).filter(|p| *p != pid);
        let reps = host.json("replicas");
        let restarts = reps.iter().find(|r| r["id"] == id.as_str()).and_then(|r| r["restarts"].as_u64()).unwrap_or(0);
        if new.is_some() && restarts >= 1 { Ok(restarts) } else { Err(format!("{reps:?}")) }
    });
    assert!(restarted >= 1);
    let (_, address) = serving(&host, None);
    check(&host, &address, &["before-kill"]);
    set(&host, &address, "before-node-kill");

    // SIGKILL the node daemon and start it again: it adopts the container.
    if let Some(mut node) = host.node.take() {
        node.kill();
    }
    host.start_node();
    wait_for(Duration::from_secs(30), "node n1 ready again", || {
        let nodes = host.json("nodes");
        if nodes.iter().any(|n| n["state"] == "ready") { Ok(()) } else { Err(format!("{nodes:?}")) }
    });
    let (id, address) = serving(&host, None);
    check(&host, &address, &["before-kill", "before-node-kill"]);
    set(&host, &address, "before-rollout");

    // A new revision: a new replica, the same data.
    deploy(&host, &["--env", "REVISION_MARK=2"]);
    let status = host.cli(&["rollout", "status", "redis", "--timeout", "90s"]);
    assert!(status.ok, "rollout status: {}{}", status.stdout, status.stderr);
    let (id2, address) = serving(&host, Some(&id));
    assert_ne!(id2, id, "the rollout made a new replica");
    check(&host, &address, &["before-kill", "before-node-kill", "before-rollout"]);
    set(&host, &address, "before-delete");

    // Deleted, volumes kept, and deployed again.
    host.cli_ok(&["delete", "redis"]);
    wait_for(Duration::from_secs(60), "redis's replica gone", || {
        let reps: Vec<serde_json::Value> =
            host.json("replicas").into_iter().filter(|r| r["deployment"] == "redis").collect();
        if reps.is_empty() { Ok(()) } else { Err(format!("{reps:?}")) }
    });
    assert!(host.cli_ok(&["volume", "ls"]).contains("rdata"), "the volume outlives its deployment");
    deploy(&host, &[]);
    let (_, address) = serving(&host, None);
    check(&host, &address, &["before-kill", "before-node-kill", "before-rollout", "before-delete"]);
    host.cli_ok(&["delete", "redis", "--purge-volumes"]);
}

/// A scheduler and a node on loopback (components need no root), the node
/// restartable on its data dir.
struct Loopback {
    node: Option<Proc>,
    _server: Proc,
    url: String,
    node_args: Vec<String>,
    dir: TempDir,
}

impl Loopback {
    fn start(tag: &str) -> Loopback {
        let dir = TempDir::new(tag);
        let (server, url, token) = loopback_server(dir.path(), &[]);
        let data = dir.path().join("node");
        let node_args = [
            "node",
            "--server",
            &url,
            "--token",
            &token,
            "--name",
            "n1",
            "--cpu",
            "4",
            "--memory",
            "4Gi",
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut l = Loopback { node: None, _server: server, url, node_args, dir };
        l.start_node();
        l
    }

    fn start_node(&mut self) {
        let data = self.dir.path().join("node");
        let _ = std::fs::remove_file(data.join("node.addr"));
        let _ = std::fs::remove_file(data.join("ingress.addr"));
        let args: Vec<&str> = self.node_args.iter().map(String::as_str).collect();
        self.node = Some(Proc::start("node n1", &args, &self.dir.path().join("node.log")));
        read_when_ready(&data.join("node.addr"));
        wait_for(Duration::from_secs(30), "node n1 ready", || {
            let nodes = get_json(self.dir.path(), &self.url, "nodes");
            if nodes.iter().any(|n| n["state"] == "ready") { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
    }

    fn ingress(&self) -> String {
        read_when_ready(&self.dir.path().join("node/ingress.addr"))
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    /// The node's own `/metrics` page.
    fn metrics(&self) -> String {
        let api = read_when_ready(&self.dir.path().join("node/node.addr"));
        let a = get(&api, "node", "/metrics").unwrap_or_else(|e| panic!("GET {api}/metrics: {e}"));
        assert_eq!(a.status, 200, "{a:?}");
        a.body
    }

    /// (compiles, compiled-code loads from disk) so far, from the node's metrics.
    fn compiles_and_loads(&self) -> (f64, f64) {
        let page = self.metrics();
        (
            metric(&page, "skiff_node_wasm_compile_duration_seconds_count"),
            metric(&page, "skiff_node_wasm_compiled_code_loads_total"),
        )
    }

    /// Polls the ingress every 20 ms until `name` answers `path` with 200 and a
    /// body containing `want`; the time that took.
    fn until_answering(&self, name: &str, path: &str, want: &str, since: Instant) -> Duration {
        let ingress = self.ingress();
        let host = format!("{name}.skiff.local");
        let mut last = String::new();
        while since.elapsed() < Duration::from_secs(300) {
            match get(&ingress, &host, path) {
                Ok(a) if a.status == 200 && a.body.contains(want) => return since.elapsed(),
                Ok(a) => last = format!("{} {}", a.status, a.body),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{name} did not answer {path} with {want:?} within 300 s; last: {last}");
    }

    fn ready_count(&self, deployment: &str) -> usize {
        get_json(self.dir.path(), &self.url, "replicas")
            .iter()
            .filter(|r| r["deployment"] == deployment && r["state"] == "ready")
            .count()
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The Python (componentize-py) and JavaScript (componentize-js) components:
/// deploy → ready measured cold and with compiled code reused; a second deploy
/// of the same artifact, a scale-up and a restart of the node compile nothing
/// (`skiff_node_wasm_compile_duration_seconds_count` stays, a restarted node
/// loads the compiled code from disk: `skiff_node_wasm_compiled_code_loads_total`);
/// each answers through the ingress, and the JavaScript one calls the Python one
/// by name.
#[test]
fn python_and_javascript_components_compile_once_per_node() {
    let apps = [("python", artifact("SKIFF_REAL_PYTHON")), ("javascript", artifact("SKIFF_REAL_JS"))];
    let mut l = Loopback::start("real-components");
    let word = "skiff";
    let hashed = sha256_hex(word);
    // The figures, as measured (the README quotes them; `--nocapture` shows them).
    let note = |line: String| println!("real-apps: {line}");

    // Cold: the first deploy of each compiles it, once.
    let (compiles_at_start, _) = l.compiles_and_loads();
    assert_eq!(compiles_at_start, 0.0, "a new node compiled something already");
    for (i, (name, path)) in apps.iter().enumerate() {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let start = Instant::now();
        l.cli_ok(&["deploy", path.to_str().unwrap_or_default(), "--name", name, "--memory", "256Mi"]);
        let took = l.until_answering(name, "/", name, start);
        note(format!("{name} ({:.1} MB): deploy → answering, cold: {:.2} s", size as f64 / 1e6, took.as_secs_f64()));
        let (compiles, _) = l.compiles_and_loads();
        assert_eq!(compiles, (i + 1) as f64, "the first deploy of {name} compiles it once");
    }
    let (compiled, loads_before) = l.compiles_and_loads();

    // Each answers through the ingress with its own code, and the JavaScript one
    // calls the Python one by name.
    for (name, _) in &apps {
        let a = get(&l.ingress(), &format!("{name}.skiff.local"), &format!("/hash?s={word}")).expect("GET /hash");
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.contains(&hashed), "{name}'s sha256 of {word}: {a:?}");
    }
    // By path this time, with the Host a browser would send (the ingress's own).
    let ingress = l.ingress();
    let authority = ingress.trim_start_matches("http://");
    let a = get(&ingress, authority, "/d/javascript/call/python/hash?s=skiff").expect("GET /call");
    assert!(a.status == 200 && a.body.contains("\"status\":200"), "{a:?}");
    assert!(a.body.contains(&hashed), "the Python answer through the JavaScript one: {a:?}");

    // A second deploy of the same artifacts under other names: no compile.
    for (name, path) in &apps {
        let second = format!("{name}-2");
        let start = Instant::now();
        l.cli_ok(&["deploy", path.to_str().unwrap_or_default(), "--name", &second, "--memory", "256Mi"]);
        let took = l.until_answering(&second, "/hash?s=skiff", &hashed, start);
        note(format!("{name}: second deploy → answering, compiled code reused: {:.2} s", took.as_secs_f64()));
    }
    // A scale-up: three replicas each, no compile.
    for (name, _) in &apps {
        l.cli_ok(&["scale", name, "3"]);
    }
    for (name, _) in &apps {
        wait_for(Duration::from_secs(120), &format!("3 ready replicas of {name}"), || {
            let n = l.ready_count(name);
            if n == 3 { Ok(()) } else { Err(format!("{n} ready")) }
        });
    }
    let (compiles, _) = l.compiles_and_loads();
    assert_eq!(compiles, compiled, "a second deploy or a scale-up compiled again");

    // The node restarted on its data dir: every replica comes back from the
    // compiled code on disk, nothing compiles.
    if let Some(mut node) = l.node.take() {
        node.kill();
    }
    let start = Instant::now();
    l.start_node();
    for (name, _) in &apps {
        let took = l.until_answering(name, "/hash?s=skiff", &hashed, start);
        note(format!("{name}: node restart → answering, compiled code reused: {:.2} s", took.as_secs_f64()));
    }
    for (name, _) in &apps {
        wait_for(Duration::from_secs(120), &format!("3 ready replicas of {name} after the restart"), || {
            let n = l.ready_count(name);
            if n == 3 { Ok(()) } else { Err(format!("{n} ready")) }
        });
    }
    let (compiles, loads) = l.compiles_and_loads();
    assert_eq!(compiles, 0.0, "the restarted node compiled again (loads from disk: {loads})");
    assert!(
        loads >= apps.len() as f64,
        "the restarted node loaded no compiled code from disk ({loads}, {loads_before} before)"
    );
}
