//! Observability against the real things: Debian's Prometheus scraping a
//! scheduler and two nodes found through `/v1/prometheus/targets`, the dashboard
//! driven in Debian's headless Chromium, and `skiff events -f`.

use serde_json::Value;
use skiff_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A scheduler and nodes as separate processes.
struct Cluster {
    dir: TempDir,
    url: String,
    token: String,
    _server: Proc,
    nodes: Vec<Proc>,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let data = dir.path().join("server");
        // Prometheus scrapes without a token: the flag that allows it.
        let server = Proc::start(
            "server",
            &["server", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap_or_default(), "--metrics-open"],
            &dir.path().join("server.log"),
        );
        let url = server_ready(&data);
        let token = read_when_ready(&data.join("join-token"));
        Cluster { dir, url, token, _server: server, nodes: Vec::new() }
    }

    fn start_node(&mut self, name: &str) {
        let data = self.dir.path().join(format!("node-{name}"));
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
            "1Gi",
            "--labels",
            &format!("host={name}"),
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
            // A handler that spins is stopped (504) after a second.
            "--request-timeout",
            "1s",
        ];
        let p = Proc::start(name, &args, &self.dir.path().join(format!("node-{name}.log")));
        read_when_ready(&data.join("node.addr"));
        self.nodes.push(p);
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn wait_nodes_ready(&self, n: usize) {
        wait_for(Duration::from_secs(30), &format!("{n} ready nodes"), || {
            let nodes = get_json(self.dir.path(), &self.url, "nodes");
            let ready = nodes.iter().filter(|n| n["state"] == "ready").count();
            if ready == n { Ok(()) } else { Err(format!("{ready} ready")) }
        });
    }

    /// The node that runs the one ready replica of `deployment`, once it does.
    fn wait_ready_on(&self, deployment: &str) -> String {
        wait_for(Duration::from_secs(60), &format!("a ready replica of {deployment}"), || {
            let replicas = get_json(self.dir.path(), &self.url, "replicas");
            let ready: Vec<&Value> =
                replicas.iter().filter(|r| r["deployment"] == deployment && r["state"] == "ready").collect();
            match ready.as_slice() {
                [one] => Ok(one["node"].as_str().unwrap_or_default().to_string()),
                other => Err(format!("{} ready", other.len())),
            }
        })
    }

    /// The ingress address of node `name`.
    fn ingress(&self, name: &str) -> String {
        read_when_ready(&self.dir.path().join(format!("node-{name}")).join("ingress.addr"))
    }

    fn wait_running(&self, deployment: &str, n: usize) {
        wait_for(Duration::from_secs(60), &format!("{n} running replicas of {deployment}"), || {
            let r = running(self.dir.path(), &self.url, deployment);
            if r.len() == n { Ok(()) } else { Err(format!("{} running", r.len())) }
        });
    }
}

/// A process that is not skiff (prometheus, node), killed by its pid on drop.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- last lines of {} ----\n{}", self.name, lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a PromQL query that answers one sample, or why not.
fn query(prom: &str, q: &str) -> Result<f64, String> {
    let body = http_get(&format!("{prom}/api/v1/query?query={}", encode(q)))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let result = v["data"]["result"].as_array().ok_or_else(|| format!("no result: {body}"))?;
    match result.as_slice() {
        [one] => one["value"][1].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad sample: {body}")),
        [] => Err("no series".into()),
        many => Err(format!("{} series, wanted one: {body}", many.len())),
    }
}

/// Waits until query `q` answers a value for which `ok` holds.
fn wait_query(prom: &str, q: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    wait_for(Duration::from_secs(60), &format!("{what} ({q})"), || match query(prom, q) {
        Ok(v) if ok(v) => Ok(v),
        Ok(v) => Err(format!("value {v}")),
        Err(e) => Err(e),
    })
}

#[test]
fn prometheus_scrapes_the_scheduler_and_every_node() {
    let prometheus_bin = Path::new("/usr/bin/prometheus");
    assert!(
        prometheus_bin.exists(),
        "/usr/bin/prometheus is missing: run `make test` (it installs Debian's prometheus)"
    );
    let mut c = Cluster::new("prom");
    c.start_node("n1");
    c.start_node("n2");
    c.wait_nodes_ready(2);

    // The target list is http_sd: the scheduler and both nodes.
    let targets: Value =
        serde_json::from_str(&http_get(&format!("{}/v1/prometheus/targets", c.url)).expect("GET targets"))
            .expect("targets are JSON");
    let jobs: Vec<&str> =
        targets.as_array().expect("a list").iter().filter_map(|g| g["labels"]["job"].as_str()).collect();
    assert_eq!(jobs, ["skiff-scheduler", "skiff-node", "skiff-node"], "{targets}");

    let worker = wasm_p1("worker");
    let crasher = wasm_p1("crasher");
    c.cli(&["deploy", worker.to_str().unwrap_or_default(), "--name", "hello", "--replicas", "3", "--memory", "32Mi"]);
    c.cli(&["deploy", crasher.to_str().unwrap_or_default(), "--name", "crash", "--replicas", "1", "--memory", "32Mi"]);
    // Larger than any node: pending, and counted under its reason.
    c.cli(&["deploy", worker.to_str().unwrap_or_default(), "--name", "big", "--replicas", "2", "--memory", "4Gi"]);
    // An HTTP component, served through the ingress.
    let web = wasm_p2("hello_http");
    c.cli(&["deploy", web.to_str().unwrap_or_default(), "--name", "web", "--replicas", "1", "--memory", "32Mi"]);
    c.wait_running("hello", 3);

    let port = free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let config = c.dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            // The scheduler is HTTPS with its own CA: discovery and its scrape trust it.
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: skiff\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    tls_config:\n      ca_file: {ca}\n    http_sd_configs:\n      - url: {}/v1/prometheus/targets\n        refresh_interval: 1s\n        tls_config:\n          ca_file: {ca}\n",
            c.url,
            ca = c.dir.path().join("server/ca.crt").display()
        ),
    )
    .expect("write prometheus.yml");
    let log = c.dir.path().join("prometheus.log");
    let out = std::fs::File::create(&log).expect("prometheus log");
    let child = Command::new(prometheus_bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", c.dir.path().join("prometheus-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("start prometheus");
    let _prometheus = Daemon { name: "prometheus", child, log };

    // Every target is up: the scheduler and both nodes, found by discovery.
    wait_query(&prom, r#"count(up{job="skiff-node"} == 1)"#, "both nodes scraped", |v| v == 2.0);
    wait_query(&prom, r#"up{job="skiff-scheduler"}"#, "the scheduler scraped", |v| v == 1.0);
    // The scheduler's view.
    wait_query(&prom, r#"skiff_scheduler_nodes{state="ready"}"#, "two ready nodes", |v| v == 2.0);
    wait_query(&prom, r#"skiff_scheduler_deployment_replicas_desired{deployment="hello"}"#, "hello wants 3", |v| {
        v == 3.0
    });
    wait_query(&prom, r#"skiff_scheduler_deployment_replicas_running{deployment="hello"}"#, "3 running", |v| v == 3.0);
    wait_query(&prom, "skiff_scheduler_placements_total", "placements counted", |v| v >= 4.0);
    wait_query(&prom, r#"skiff_scheduler_pending_replicas{reason="insufficient_memory"}"#, "big pending", |v| v == 2.0);
    wait_query(&prom, r#"skiff_scheduler_replicas{state="pending"}"#, "pending by state", |v| v == 2.0);
    wait_query(&prom, "sum(skiff_scheduler_rollouts)", "a rollout state per deployment", |v| v == 4.0);
    // Routes are the matched pattern, never the raw path with a node's name.
    wait_query(
        &prom,
        r#"sum(skiff_scheduler_api_requests_total{route="/v1/nodes/{name}/heartbeat",status="204"})"#,
        "heartbeats counted by route",
        |v| v > 0.0,
    );
    wait_query(&prom, r#"absent(skiff_scheduler_api_requests_total{route=~".*n1.*"})"#, "no raw paths", |v| v == 1.0);
    wait_query(&prom, "skiff_scheduler_store_transaction_duration_seconds_count", "store transactions", |v| v > 0.0);
    // The nodes' view: every replica of hello runs, uses memory and cpu; the
    // crasher (exit 3) has been restarted and its exits counted.
    wait_query(&prom, r#"count(skiff_node_replica_memory_bytes{deployment="hello"} > 0)"#, "3 replicas' memory", |v| {
        v == 3.0
    });
    wait_query(&prom, r#"sum(skiff_node_replica_cpu_seconds_total{deployment="hello"})"#, "cpu counted", |v| v > 0.0);
    wait_query(&prom, r#"sum(skiff_node_replica_restarts_total{deployment="crash"})"#, "crasher restarted", |v| {
        v >= 1.0
    });
    wait_query(&prom, r#"sum(skiff_node_replica_exits_total{deployment="crash",reason="error"})"#, "its exits", |v| {
        v >= 1.0
    });
    wait_query(&prom, r#"sum(skiff_node_replicas{state="running"})"#, "running on the nodes", |v| v >= 3.0);
    wait_query(&prom, "sum(skiff_node_wasm_compile_duration_seconds_count)", "compiles timed", |v| v >= 2.0);

    // Ingress requests, all to the ingress of web's node: five answered, one
    // stopped at the deadline, one over its memory limit, one for no deployment.
    let ingress = c.ingress(&c.wait_ready_on("web"));
    let mut sent = Vec::new();
    for (host, path, want) in [
        ("web.skiff.local", "/", 200),
        ("web.skiff.local", "/", 200),
        ("web.skiff.local", "/", 200),
        ("web.skiff.local", "/", 200),
        ("web.skiff.local", "/", 200),
        ("web.skiff.local", "/spin", 504),
        ("web.skiff.local", "/grow", 500),
        ("nosuch.skiff.local", "/", 404),
    ] {
        let answer = get(&ingress, host, path).unwrap_or_else(|e| panic!("GET {host}{path}: {e}"));
        assert_eq!(answer.status, want, "GET {host}{path}: {}", answer.body);
        sent.push(want);
    }
    for code in [200, 504, 500] {
        let n = sent.iter().filter(|&&c| c == code).count() as f64;
        let q = format!(r#"sum(skiff_node_ingress_requests_total{{deployment="web",code="{code}"}})"#);
        wait_query(&prom, &q, &format!("{n} answers {code} counted"), |v| v == n);
    }
    // A name no deployment has is not a label value of its own.
    wait_query(&prom, r#"sum(skiff_node_ingress_requests_total{deployment="",code="404"})"#, "the 404", |v| v == 1.0);
    wait_query(&prom, r#"sum(skiff_node_ingress_request_duration_seconds_count{deployment="web"})"#, "timed", |v| {
        v == 7.0
    });
    wait_query(&prom, r#"sum(skiff_node_wasm_deadline_interruptions_total{deployment="web"})"#, "the spin", |v| {
        v == 1.0
    });
    wait_query(&prom, r#"sum(skiff_node_wasm_memory_limit_traps_total{deployment="web"})"#, "the grow", |v| v == 1.0);
    // Every node has the pool series: 1,000 slots each, none busy now.
    wait_query(&prom, "count(skiff_node_http_pool_slots == 1000)", "both nodes' pools", |v| v == 2.0);
    wait_query(&prom, "sum(skiff_node_http_pool_instances_in_use)", "no instance busy", |v| v == 0.0);
    wait_query(&prom, "count(skiff_node_http_admission_rejections_total == 0)", "none turned away", |v| v == 2.0);

    // Scaling down removes the per-replica series of the stopped replicas.
    c.cli(&["scale", "hello", "1"]);
    c.wait_running("hello", 1);
    wait_query(&prom, r#"count(skiff_node_replica_memory_bytes{deployment="hello"})"#, "one replica's series", |v| {
        v == 1.0
    });
    wait_query(&prom, r#"skiff_scheduler_deployment_replicas_running{deployment="hello"}"#, "1 running", |v| v == 1.0);
}

/// A container deployment deleted on drop, waiting (up to 30 s) until the node
/// has removed its containers' bundles (`NODE_DATA/containers/run/<replica>`):
/// the scheduler forgets a replica before the node has stopped it.
struct Deleted {
    cwd: PathBuf,
    url: String,
    node_data: PathBuf,
    name: &'static str,
}

impl Drop for Deleted {
    fn drop(&mut self) {
        let out = cli_in(&self.cwd, &self.url, &["delete", self.name]);
        if !out.ok {
            eprintln!("cannot delete {}: {}", self.name, out.stderr);
            return;
        }
        let prefix = format!("{}-", self.name);
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let bundles = std::fs::read_dir(self.node_data.join("containers/run"))
                .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).count())
                .unwrap_or(0);
            if bundles == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("the containers of {} were still there 30 s after its deletion", self.name);
    }
}

/// The dashboard as `make run` hands it to a new user: `scripts/run.sh` starts
/// `skiff dev`, deploys its examples and prints the dashboard's link; the browser
/// opens exactly that link (the token in it is all the page is given) and goes
/// through every view, with a failed deployment and, as root, a container
/// beside the Wasm ones. Any page error or console error fails it.
#[test]
fn dashboard_in_a_real_browser() {
    let browser_dir = workspace().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `make test` (it runs npm ci there)"
    );
    assert!(Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium is missing: run `make test` (it installs it)");
    let dir = TempDir::new("dash");
    let cwd = dir.path();
    let data = cwd.join(".skiff");
    let worker = wasm_p2("worker");
    let examples = worker.parent().map(Path::to_path_buf).unwrap_or_default();
    let log = cwd.join("run.log");
    let mut run = Proc::start_script(
        "scripts/run.sh",
        &workspace().join("scripts/run.sh"),
        &[
            ("SKIFF_DATA_DIR", data.as_os_str()),
            ("SKIFF_LISTEN", "127.0.0.1:0".as_ref()),
            ("SKIFF_BIN", skiff_bin().as_os_str()),
            ("SKIFF_WASM_P2", examples.as_os_str()),
        ],
        &log,
    );
    // The link as printed, not rebuilt here: a link that does not work is the bug.
    let link = wait_for(Duration::from_secs(180), "scripts/run.sh to print the dashboard's link", || {
        let said = run.log();
        if let Some(link) = said.lines().find_map(|l| l.strip_prefix("The dashboard: ")) {
            return Ok(link.trim().to_string());
        }
        if !run.alive() {
            panic!("scripts/run.sh exited before printing the dashboard's link:\n{said}");
        }
        Err(said.lines().last().unwrap_or_default().to_string())
    });
    let url = server_ready(&data);
    assert!(link.starts_with(&format!("{url}/?token=")), "the link {link} is not the server's {url} with a token");
    // run.sh passes on what skiff dev printed: `skiff dev` alone gives the same link.
    let dev_said = std::fs::read_to_string(data.join("dev.log")).unwrap_or_default();
    assert!(dev_said.lines().any(|l| l == format!("dashboard: {link}")), "skiff dev did not print {link}:\n{dev_said}");

    // What a first hour adds to run.sh's hello (2 worker replicas) and web (2
    // HTTP replicas): a workload that fails, one too big to place, a container.
    let crasher = wasm_p1("crasher");
    cli_ok(cwd, &url, &["deploy", crasher.to_str().unwrap_or_default(), "--name", "crash", "--restart", "never"]);
    // More memory than any node has: pending, on no node.
    cli_ok(cwd, &url, &["deploy", worker.to_str().unwrap_or_default(), "--name", "big", "--memory", "100Gi"]);
    let container = require_root("a container deployment on the dashboard");
    // Deleted before run.sh stops, even when the test fails: skiff dev itself
    // does not stop its containers on the way out.
    let _box = container.then(|| Deleted {
        cwd: cwd.to_path_buf(),
        url: url.clone(),
        node_data: data.join("node"),
        name: "box",
    });
    if container {
        let image = crate::containers::busybox_image_with(cwd, "box.tar", "/", &[]);
        cli_ok(cwd, &url, &["image", "import", image.to_str().unwrap_or_default(), "--name", "box:v1"]);
        let script = "echo hello from a container; while true; do sleep 1; echo tick; done";
        cli_ok(
            cwd,
            &url,
            &[
                "deploy", "--image", "box:v1", "--name", "box", "--memory", "32Mi", "--arg", "/bin/sh", "--arg", "-c",
                "--arg", script,
            ],
        );
    }
    // Namespaces (#20): a team's deployment, and a read token scoped to its
    // namespace, whose page must show that deployment and none of default's.
    cli_ok(cwd, &url, &["namespace", "create", "team-a", "--deployments", "5", "--memory", "256Mi"]);
    let team = ["-n", "team-a", "deploy", worker.to_str().unwrap_or_default(), "--name", "teamweb", "--memory", "32Mi"];
    cli_ok(cwd, &url, &team);
    // A job of team-a's and one of default's: the scoped page shows team-a's only.
    let job_worker = wasm_p1("job_worker");
    for (ns, name) in [("team-a", "teamjob"), ("default", "dfltjob")] {
        cli_ok(cwd, &url, &["-n", ns, "run", job_worker.to_str().unwrap_or_default(), "--detach", "--name", name]);
    }
    let scoped = cli_ok(cwd, &url, &["-n", "team-a", "token", "create", "team-a-viewer", "--role", "read"]);
    let scoped_link = format!("{url}/?token={}", scoped.trim());
    wait_for(Duration::from_secs(60), "crash to fail", || {
        let r = get_json(cwd, &url, "replicas");
        let failed = r.iter().any(|r| r["deployment"] == "crash" && r["state"] == "failed");
        if failed { Ok(()) } else { Err(format!("{r:?}")) }
    });

    let shots = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("e2e-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let browser_log = cwd.join("browser.log");
    let out = std::fs::File::create(&browser_log).expect("browser log");
    let mut child = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(&link)
        .arg(&shots)
        // Not the bytes hello runs: the page must really upload them.
        .arg(wasm_p1("worker"))
        .env("SKIFF_CONTAINER", if container { "box" } else { "" })
        .env("SKIFF_SCOPED_LINK", &scoped_link)
        .env_remove("SKIFF_TOKEN")
        .current_dir(&browser_dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("run node (is Node.js installed? `make test` installs it)");
    let status = child.wait().expect("wait for the browser test");
    let said = std::fs::read_to_string(&browser_log).unwrap_or_default();
    assert!(status.success(), "the browser test failed:\n{said}");
    println!("{said}");

    // What the page did, seen through the API.
    let deployments = get_json(cwd, &url, "deployments");
    let hello = deployments.iter().find(|d| d["name"] == "hello").expect("hello exists");
    assert_eq!(hello["replicas"], 4, "scaled from the page: {hello}");
    wait_for(Duration::from_secs(60), "4 running replicas of hello", || {
        let r = running(cwd, &url, "hello");
        if r.len() == 4 { Ok(()) } else { Err(format!("{} running", r.len())) }
    });
    assert!(deployments.iter().all(|d| d["name"] != "uploaded"), "deleted from the page: {deployments:?}");
    assert!(deployments.iter().all(|d| d["name"] != "fromimage"), "an unknown image deploys nothing: {deployments:?}");
    let hello = get_json(cwd, &url, "deployments").into_iter().find(|d| d["name"] == "hello");
    let status = hello.map(|d| d["status"].clone()).unwrap_or_default();
    assert_eq!((&status["ready"], &status["available"]), (&Value::from(4), &Value::from(4)), "{status}");
    let events = cli_ok(cwd, &url, &["events", "--object", "deployment/uploaded"]);
    assert!(events.contains("Deleted"), "the upload was deployed and deleted from the page: {events}");
    for view in ["cluster", "deployments", "deploy-image-error", "replicas", "events", "logs", "phone-dark-deployments"]
    {
        let png = shots.join(format!("{view}.png"));
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {} missing or empty", png.display());
    }

    drop(_box);
    let stopped = run.stop(Duration::from_secs(20));
    assert!(stopped.is_some(), "scripts/run.sh did not stop within 20 s of SIGTERM:\n{}", run.log_tail(20));
}

#[test]
fn events_follow_prints_decisions_as_they_happen() {
    let mut c = Cluster::new("events");
    c.start_node("n1");
    c.wait_nodes_ready(1);
    let worker = wasm_p2("worker");
    c.cli(&["deploy", worker.to_str().unwrap_or_default(), "--name", "hello", "--replicas", "1", "--memory", "32Mi"]);
    c.wait_running("hello", 1);

    let past = c.cli(&["events", "--object", "deployment/hello"]);
    assert!(past.starts_with("AGE"), "{past}");
    assert!(past.contains("Scheduled") || past.contains("Started"), "{past}");
    // A deployment no node can hold says why in an event.
    c.cli(&["deploy", worker.to_str().unwrap_or_default(), "--name", "big", "--replicas", "2", "--memory", "4Gi"]);
    wait_for(Duration::from_secs(20), "the Unschedulable event", || {
        let out = c.cli(&["events", "--object", "deployment/big"]);
        let ok = out.lines().any(|l| {
            l.contains("Unschedulable") && l.contains("2 replicas stay pending: 0/1 nodes fit: 1 insufficient memory")
        });
        if ok { Ok(()) } else { Err(out) }
    });
    // A restart says what the last run ended with.
    let crasher = wasm_p1("crasher");
    c.cli(&["deploy", crasher.to_str().unwrap_or_default(), "--name", "crash", "--memory", "32Mi"]);
    wait_for(Duration::from_secs(30), "a Restarted event with the exit", || {
        let out = c.cli(&["events", "--object", "deployment/crash"]);
        let ok = out.lines().any(|l| l.contains("Restarted") && l.contains("status 3"));
        if ok { Ok(()) } else { Err(out) }
    });
    let bad = cli_in(c.dir.path(), &c.url, &["events", "--object", "hello"]);
    assert!(
        !bad.ok && bad.stderr.contains("must be deployment/NAME, node/NAME, job/NAME or cron/NAME"),
        "{}",
        bad.stderr
    );

    // Follow, then make something happen.
    let log = c.dir.path().join("events-f.log");
    let out = std::fs::File::create(&log).expect("events log");
    let child = Command::new(skiff_bin())
        .args(["events", "-f", "--object", "deployment/hello", "-o", "json"])
        .env("SKIFF_SERVER", &c.url)
        .env("SKIFF_TOKEN", token_for(&c.url).unwrap_or_default())
        .envs(ca_for(&c.url).map(|ca| ("SKIFF_CA_FILE", ca)))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("skiff events -f");
    let _follow = Daemon { name: "skiff events -f", child, log: log.clone() };
    wait_for(Duration::from_secs(10), "the past events", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\"reason\"") { Ok(()) } else { Err(text) }
    });
    c.cli(&["scale", "hello", "3"]);
    wait_for(Duration::from_secs(20), "the Scaled event, followed", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let scaled = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["reason"] == "Scaled" && e["message"] == "scaled from 1 to 3 replicas");
        if scaled { Ok(()) } else { Err(text) }
    });
}
