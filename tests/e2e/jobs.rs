//! Jobs, `skiff run`, crons and `after:` (#19) on real processes: a scheduler
//! and three nodes, or a `skiff dev`. The guest is wasm-sdk's `job_worker`,
//! which prints its index and try and fails, sleeps or exits as its env says.

use serde_json::Value;
use skiff_tests::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A scheduler and nodes as separate processes; the server can be killed and
/// started again on the same port and data.
struct Cluster {
    nodes: BTreeMap<String, Proc>,
    server: Option<Proc>,
    url: String,
    token: String,
    listen: String,
    dir: TempDir,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let listen = format!("127.0.0.1:{}", free_port());
        let mut c =
            Cluster { nodes: BTreeMap::new(), server: None, url: String::new(), token: String::new(), listen, dir };
        c.start_server();
        c.token = read_when_ready(&c.dir.path().join("server/join-token"));
        c
    }

    fn start_server(&mut self) {
        let data = self.dir.path().join("server");
        let _ = std::fs::remove_file(data.join("server.url"));
        let args = ["server", "--listen", &self.listen, "--data-dir", data.to_str().unwrap_or_default()];
        self.server = Some(Proc::start("server", &args, &self.dir.path().join("server.log")));
        self.url = server_ready(&data);
    }

    fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    fn start_node(&mut self, name: &str) {
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
            "4",
            "--memory",
            "2Gi",
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
            "--ingress",
            "127.0.0.1:0",
        ];
        let p = Proc::start(name, &args, &self.dir.path().join(format!("node-{name}.log")));
        read_when_ready(&data.join("node.addr"));
        self.nodes.insert(name.to_string(), p);
    }

    fn wait_nodes(&self, n: usize) {
        wait_for(Duration::from_secs(30), &format!("{n} ready nodes"), || {
            let nodes = get_json(self.dir.path(), &self.url, "nodes");
            let ready = nodes.iter().filter(|n| n["state"] == "ready").count();
            if ready == n { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
    }

    fn cli(&self, args: &[&str]) -> Cli {
        cli_in(self.dir.path(), &self.url, args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// What the tests need of a cluster or a `skiff dev`.
trait Target {
    fn cli_ok(&self, args: &[&str]) -> String;
    fn dir(&self) -> &Path;

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("`skiff {}` printed no JSON ({e}): {out}", args.join(" ")))
    }

    fn job(&self, name: &str) -> Value {
        match self.json(&["get", "jobs", name, "-o", "json"]) {
            Value::Array(mut v) if v.len() == 1 => v.remove(0),
            other => panic!("job {name}: {other}"),
        }
    }

    fn runs(&self, name: &str) -> Vec<Value> {
        match self.json(&["get", "runs", name, "-o", "json"]) {
            Value::Array(v) => v,
            other => panic!("runs of {name}: {other}"),
        }
    }

    fn jobs(&self) -> Vec<Value> {
        match self.json(&["get", "jobs", "-o", "json"]) {
            Value::Array(v) => v,
            other => panic!("jobs: {other}"),
        }
    }

    /// Waits for job `name` to end in `state`; the job.
    fn wait_job(&self, name: &str, state: &str, timeout: Duration) -> Value {
        wait_for(timeout, &format!("job {name} {state}"), || {
            let j = self.job(name);
            match j["state"].as_str() {
                Some(s) if s == state => Ok(j),
                Some("succeeded" | "failed") => panic!("job {name} ended otherwise: {j}"),
                _ => Err(format!("{j}")),
            }
        })
    }

    /// Writes a manifest into the test's directory and applies it.
    fn apply(&self, file: &str, yaml: &str) -> String {
        let path = self.dir().join(file);
        std::fs::write(&path, yaml).expect("write manifest");
        self.cli_ok(&["apply", "-f", path.to_str().unwrap_or_default()])
    }

    /// Live replicas that are runs of job `name`.
    fn run_replicas(&self, name: &str) -> Vec<Value> {
        match self.json(&["get", "replicas", "-o", "json"]) {
            Value::Array(v) => v.into_iter().filter(|r| r["deployment"] == format!("job:{name}")).collect(),
            other => panic!("replicas: {other}"),
        }
    }

    fn events(&self, object: &str) -> String {
        self.cli_ok(&["events", "--object", object])
    }
}

impl Target for Cluster {
    fn cli_ok(&self, args: &[&str]) -> String {
        Cluster::cli_ok(self, args)
    }
    fn dir(&self) -> &Path {
        Cluster::dir(self)
    }
}

impl Target for Dev {
    fn cli_ok(&self, args: &[&str]) -> String {
        Dev::cli_ok(self, args)
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn worker_p1() -> PathBuf {
    wasm_p1("job_worker")
}

fn worker_p2() -> PathBuf {
    wasm_p2("job_worker")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Lines of `skiff logs job/NAME` holding `needle`, by their `[INDEX] ` prefix.
fn lines_by_index(logs: &str, needle: &str) -> BTreeMap<u32, usize> {
    let mut m = BTreeMap::new();
    for line in logs.lines().filter(|l| l.contains(needle)) {
        let Some(rest) = line.strip_prefix('[') else { continue };
        let index = rest.split([']', ' ']).next().and_then(|i| i.parse().ok());
        if let Some(i) = index {
            *m.entry(i).or_default() += 1;
        }
    }
    m
}

#[test]
fn a_job_of_200_wasm_runs_succeeds_once_per_index_across_three_nodes() {
    let mut c = Cluster::new("jobs-200");
    for n in ["a", "b", "c"] {
        c.start_node(n);
    }
    c.wait_nodes(3);
    let out = c.apply(
        "thumbs.yaml",
        &format!(
            "kind: job\nname: thumbs\nwasm: {}\nargs: [\"--size\", \"128\"]\ncompletions: 200\nparallelism: 20\nresources: {{cpu: 50m, memory: 32Mi}}\n",
            path(&worker_p2())
        ),
    );
    assert!(out.contains("job thumbs created"), "{out}");
    let job = c.wait_job("thumbs", "succeeded", Duration::from_secs(180));
    assert_eq!((job["succeeded"].as_u64(), job["failed"].as_u64()), (Some(200), Some(0)), "{job}");

    // Each index ran once and succeeded once (no node was lost).
    let runs = c.runs("thumbs");
    let mut per_index: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for r in &runs {
        assert_eq!(r["outcome"], "succeeded", "{r}");
        assert_eq!(r["exit_code"], 0, "{r}");
        *per_index.entry(r["index"].as_u64().unwrap_or(u64::MAX)).or_default() += 1;
        *per_node.entry(r["node"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    assert_eq!(per_index.len(), 200, "{per_index:?}");
    assert!(per_index.iter().all(|(i, n)| *i < 200 && *n == 1), "{per_index:?}");
    assert_eq!(per_node.len(), 3, "runs spread over the three nodes: {per_node:?}");

    // The outputs: one line per index, each with its own index, from every node.
    let logs = c.cli_ok(&["logs", "job/thumbs"]);
    let printed = lines_by_index(&logs, "stdout job-worker index=");
    assert_eq!(printed.len(), 200, "{logs}");
    assert!(printed.values().all(|n| *n == 1), "{printed:?}");
    for i in [0u32, 123, 199] {
        let line = logs.lines().find(|l| l.starts_with(&format!("[{i}] ")) && l.contains("stdout")).unwrap_or("");
        assert!(line.contains(&format!("index={i} attempt=1 args=--size,128")), "{line}");
    }
    let one = c.cli_ok(&["logs", "job/thumbs", "--index", "123"]);
    assert!(one.contains("index=123 attempt=1") && !one.contains("index=124"), "{one}");
    let d = c.cli_ok(&["describe", "job", "thumbs"]);
    assert!(d.contains("200/200 succeeded") && d.contains("Slowest runs"), "{d}");

    c.cli_ok(&["delete", "job", "thumbs"]);
    let left = c.cli(&["get", "jobs", "thumbs"]);
    assert!(!left.ok && left.stderr.contains("not found"), "{}", left.stderr);
}

#[test]
fn a_failing_index_is_retried_and_the_backoff_limit_fails_the_job() {
    let dev = Dev::start("jobs-retry");
    let wasm = worker_p1();
    dev.apply(
        "retry.yaml",
        &format!(
            "kind: job\nname: retry\nwasm: {}\ncompletions: 3\nparallelism: 3\nbackoff_limit: 3\nenv: {{FAIL_INDEX: \"1\", FAIL_TIMES: \"2\"}}\n",
            path(&wasm)
        ),
    );
    let job = dev.wait_job("retry", "succeeded", Duration::from_secs(60));
    assert_eq!((job["succeeded"].as_u64(), job["failed"].as_u64()), (Some(3), Some(2)), "{job}");
    let runs = dev.runs("retry");
    let of1: Vec<(u64, &str, i64)> = runs
        .iter()
        .filter(|r| r["index"] == 1)
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap_or(0),
                r["outcome"].as_str().unwrap_or(""),
                r["exit_code"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(of1, vec![(1, "failed", 3), (2, "failed", 3), (3, "succeeded", 0)], "{runs:?}");
    assert_eq!(runs.iter().filter(|r| r["index"] != 1).count(), 2, "{runs:?}");
    let logs = dev.cli_ok(&["logs", "job/retry", "--index", "1"]);
    assert!(logs.contains("[1 try 2]") && logs.contains("fails try 2 of 2") && logs.contains("attempt=3"), "{logs}");

    dev.apply(
        "limit.yaml",
        &format!(
            "kind: job\nname: limited\nwasm: {}\ncompletions: 3\nbackoff_limit: 1\nenv: {{FAIL_INDEX: \"1\", FAIL_TIMES: \"2\"}}\n",
            path(&wasm)
        ),
    );
    let job = dev.wait_job("limited", "failed", Duration::from_secs(60));
    assert_eq!(job["reason"], "backoff limit reached at index 1: exited with status 3", "{job}");
    let fails = dev.runs("limited").iter().filter(|r| r["outcome"] == "failed").count();
    assert_eq!(fails, 2, "backoff_limit 1: one retry");
    assert!(dev.run_replicas("limited").is_empty());
    // Prometheus: jobs by state, runs by outcome, their durations.
    let metrics = http_get(&format!("{}/metrics", dev.url)).expect("metrics");
    for line in [
        "skiff_scheduler_jobs{state=\"succeeded\"} 1",
        "skiff_scheduler_jobs{state=\"failed\"} 1",
        "skiff_scheduler_job_runs_total{outcome=\"failed\"} 4",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("skiff_scheduler_job_run_duration_seconds_count"), "{metrics}");
    let d = dev.cli_ok(&["describe", "job", "limited"]);
    let failed_line = d.lines().find(|l| l.starts_with("Failed indices:")).unwrap_or("");
    assert_eq!(failed_line.trim_start_matches("Failed indices:").trim(), "1", "{d}");
}

#[test]
fn the_active_deadline_stops_the_runs_and_fails_the_job() {
    let dev = Dev::start("jobs-deadline");
    dev.apply(
        "slow.yaml",
        &format!(
            "kind: job\nname: slow\nwasm: {}\ncompletions: 4\nparallelism: 2\nactive_deadline: 3s\nenv: {{SLEEP_MS: \"120000\"}}\n",
            path(&worker_p1())
        ),
    );
    wait_for(Duration::from_secs(30), "two runs running", || {
        let r = dev.run_replicas("slow");
        if r.iter().filter(|r| r["state"] == "running").count() == 2 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let job = dev.wait_job("slow", "failed", Duration::from_secs(30));
    assert_eq!(job["reason"], "active deadline of 3s passed", "{job}");
    let runs = dev.runs("slow");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["outcome"] == "stopped"), "{runs:?}");
    // Off the scheduler's books and off the node.
    assert!(dev.run_replicas("slow").is_empty());
    let node_api = read_when_ready(&dev.data().join("node/node.addr"));
    wait_for(Duration::from_secs(15), "the node to stop the runs", || {
        let list = http_get(&format!("{}/v1/replicas", node_api.trim()))?;
        if list.contains("slow-") { Err(list) } else { Ok(()) }
    });
}

#[test]
fn a_node_killed_mid_job_has_its_indices_run_elsewhere() {
    let mut c = Cluster::new("jobs-nodekill");
    for n in ["a", "b", "c"] {
        c.start_node(n);
    }
    c.wait_nodes(3);
    c.apply(
        "long.yaml",
        &format!(
            "kind: job\nname: long\nwasm: {}\ncompletions: 30\nparallelism: 9\nenv: {{SLEEP_MS: \"3000\"}}\nresources: {{cpu: 50m, memory: 32Mi}}\n",
            path(&worker_p1())
        ),
    );
    let on_b = wait_for(Duration::from_secs(60), "runs under way on node b", || {
        let r: Vec<Value> =
            c.runs("long").into_iter().filter(|r| r["outcome"] == "running" && r["node"] == "b").collect();
        if r.is_empty() { Err("none yet".into()) } else { Ok(r) }
    });
    let lost: Vec<u64> = on_b.iter().filter_map(|r| r["index"].as_u64()).collect();
    c.nodes.get_mut("b").expect("node b").kill();
    let job = c.wait_job("long", "succeeded", Duration::from_secs(180));
    assert_eq!(job["succeeded"], 30, "{job}");
    let runs = c.runs("long");
    let lost_runs: Vec<&Value> = runs.iter().filter(|r| r["outcome"] == "lost").collect();
    assert!(!lost_runs.is_empty(), "the killed node's runs are recorded lost: {runs:?}");
    for i in &lost {
        let ok: Vec<&Value> = runs.iter().filter(|r| r["index"] == *i && r["outcome"] == "succeeded").collect();
        assert_eq!(ok.len(), 1, "index {i} succeeded once: {runs:?}");
        assert_ne!(ok[0]["node"], "b", "index {i} ran again elsewhere: {runs:?}");
    }
    let mut per_index: BTreeMap<u64, usize> = BTreeMap::new();
    for r in runs.iter().filter(|r| r["outcome"] == "succeeded") {
        *per_index.entry(r["index"].as_u64().unwrap_or(u64::MAX)).or_default() += 1;
    }
    assert!(per_index.len() == 30 && per_index.values().all(|n| *n == 1), "{per_index:?}");
    assert!(c.events("job/long").contains("RunLost"));
}

/// `skiff run ARGS` from `dev`'s directory: (exit code, stdout, stderr).
fn skiff_run(dev: &Dev, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(skiff_bin())
        .args(args)
        .current_dir(dev.dir.path())
        .env("SKIFF_SERVER", &dev.url)
        .env("SKIFF_TOKEN", read_when_ready(&dev.data().join("admin-token")))
        .env("SKIFF_CA_FILE", dev.data().join("ca.crt"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn skiff_run_streams_a_wasm_run_and_exits_with_its_status() {
    let dev = Dev::start("jobs-run");
    let wasm = worker_p1();
    let (code, out, err) = skiff_run(&dev, &["run", path(&wasm), "--", "hello", "world"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(out, "job-worker index=0 attempt=1 args=hello,world\n", "only the guest's stdout: {err}");
    assert!(err.contains("job-worker index=0 to stderr"), "{err}");

    let (code, out, err) = skiff_run(&dev, &["run", path(&wasm), "--env", "EXIT_CODE=3", "--name", "three"]);
    assert_eq!(code, Some(3), "{out}\n{err}");
    assert!(out.contains("index=0 attempt=1"), "{out}");
    let job = dev.job("three");
    assert_eq!(job["state"], "failed");
    // A p2 component runs the same way (WASI 0.2 carries only failure: 1).
    let (code, out, _) = skiff_run(&dev, &["run", path(&worker_p2()), "--env", "EXIT_CODE=3"]);
    assert_eq!((code, out.contains("index=0")), (Some(1), true), "{out}");

    // --detach prints the name; the job is there.
    let (code, out, _) = skiff_run(&dev, &["run", path(&wasm), "--detach", "--name", "bg"]);
    assert_eq!((code, out.trim()), (Some(0), "bg"));
    dev.wait_job("bg", "succeeded", Duration::from_secs(30));

    // An HTTP component is served, never run to its end: refused.
    let (code, _, err) = skiff_run(&dev, &["run", path(&wasm_p2("hello_http")), "--name", "served"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is an HTTP component") && err.contains("deploy it instead"), "{err}");

    // A run that fits no node says why, exits non-zero and leaves no job.
    let (code, out, err) = skiff_run(&dev, &["run", path(&wasm), "--memory", "900Gi", "--name", "huge"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("cannot be placed") && err.contains("memory"), "{err}");
    assert!(!dev.cli(&["get", "jobs", "huge"]).ok, "the unplaceable job is deleted");
}

#[test]
fn ctrl_c_stops_a_skiff_run_and_leaves_nothing_running() {
    let dev = Dev::start("jobs-ctrlc");
    let mut child = Command::new(skiff_bin())
        .args(["run", path(&worker_p1()), "--env", "SLEEP_MS=120000", "--name", "sleepy"])
        .current_dir(dev.dir.path())
        .env("SKIFF_SERVER", &dev.url)
        .env("SKIFF_TOKEN", read_when_ready(&dev.data().join("admin-token")))
        .env("SKIFF_CA_FILE", dev.data().join("ca.crt"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skiff run");
    let pid = child.id();
    // Killed however the test ends.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).stderr(Stdio::null()).status();
        }
    }
    let _reap = Reap(pid);
    // Its first line arrives while the run goes on (streamed, not at the end).
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains('\n') {
        assert!(Instant::now() < deadline, "no output streamed: {}", String::from_utf8_lossy(&seen));
        match stdout.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!("skiff run ended early: {}", String::from_utf8_lossy(&seen)),
        }
    }
    assert!(String::from_utf8_lossy(&seen).contains("index=0 attempt=1"));
    assert!(dev.run_replicas("sleepy").iter().any(|r| r["state"] == "running"));
    let sent = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    assert!(sent.is_ok_and(|s| s.success()));
    let status = wait_for(Duration::from_secs(15), "skiff run to exit", || match child.try_wait() {
        Ok(Some(s)) => Ok(s),
        _ => Err("still running".into()),
    });
    assert_eq!(status.code(), Some(130));
    let mut err = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(err.contains("stopping run sleepy"), "{err}");
    // Nothing runs: not the job, not its replica, not on the node.
    assert!(!dev.cli(&["get", "jobs", "sleepy"]).ok);
    assert!(dev.run_replicas("sleepy").is_empty());
    let node_api = read_when_ready(&dev.data().join("node/node.addr"));
    wait_for(Duration::from_secs(15), "the node to stop the run", || {
        let list = http_get(&format!("{}/v1/replicas", node_api.trim()))?;
        if list.contains("sleepy-") { Err(list) } else { Ok(()) }
    });
}

#[test]
fn after_waits_for_its_jobs_and_an_upstream_failure_fails_it() {
    let dev = Dev::start("jobs-after");
    let wasm = path(&worker_p1()).to_string();
    dev.apply(
        "chain.yaml",
        &format!(
            "kind: job\nname: second\nwasm: {wasm}\nafter: [first]\n---\nkind: job\nname: first\nwasm: {wasm}\nenv: {{SLEEP_MS: \"1500\"}}\n---\nkind: job\nname: broken\nwasm: {wasm}\nbackoff_limit: 0\nenv: {{EXIT_CODE: \"3\"}}\n---\nkind: job\nname: downstream\nwasm: {wasm}\nafter: [first, broken]\n"
        ),
    );
    let pending = dev.job("second");
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(pending["reason"].as_str().unwrap_or("").contains("waiting for job first"), "{pending}");
    let first = dev.wait_job("first", "succeeded", Duration::from_secs(30));
    let second = dev.wait_job("second", "succeeded", Duration::from_secs(30));
    let (done, started) =
        (first["finished_ms"].as_u64().unwrap_or(u64::MAX), second["started_ms"].as_u64().unwrap_or(0));
    assert!(started >= done, "second started at {started}, before first finished at {done}");
    let down = dev.wait_job("downstream", "failed", Duration::from_secs(30));
    assert_eq!(
        down["reason"], "upstream job broken failed: backoff limit reached at index 0: exited with status 3",
        "{down}"
    );
    assert!(dev.runs("downstream").is_empty(), "it never ran");
}

/// Jobs of cron `cron`: (name, scheduled_ms, created_ms, state).
fn cron_jobs(t: &impl Target, cron: &str) -> Vec<(String, u64, u64, String)> {
    let mut v: Vec<(String, u64, u64, String)> = t
        .jobs()
        .into_iter()
        .filter(|j| j["cron"] == cron)
        .map(|j| {
            (
                j["name"].as_str().unwrap_or("").to_string(),
                j["scheduled_ms"].as_u64().unwrap_or(0),
                j["created_ms"].as_u64().unwrap_or(0),
                j["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort_by_key(|j| j.1);
    v
}

fn no_time_twice(jobs: &[(String, u64, u64, String)]) {
    let mut times: Vec<u64> = jobs.iter().map(|j| j.1).filter(|t| *t > 0).collect();
    let n = times.len();
    times.dedup();
    assert_eq!(times.len(), n, "a scheduled time ran twice: {jobs:?}");
}

#[test]
fn a_seconds_cron_forbids_or_replaces_a_running_job() {
    let dev = Dev::start("jobs-cron");
    let wasm = path(&worker_p1()).to_string();
    dev.apply(
        "forbid.yaml",
        &format!(
            "kind: cron\nname: forbid\nschedule: \"*/2 * * * * *\"\nconcurrency_policy: forbid\nhistory: {{succeeded: 50, failed: 50}}\njob:\n  wasm: {wasm}\n  env: {{SLEEP_MS: \"5000\"}}\n"
        ),
    );
    wait_for(Duration::from_secs(40), "forbid to skip a time", || {
        let ev = dev.events("cron/forbid");
        if ev.contains("Skipped") && ev.contains("concurrency policy forbid") { Ok(()) } else { Err(ev) }
    });
    let jobs = cron_jobs(&dev, "forbid");
    no_time_twice(&jobs);
    // Never two at once: each job was made after the one before it ended.
    for w in jobs.windows(2) {
        let before = dev.job(&w[0].0);
        let ended = before["finished_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(w[1].2 >= ended, "{} started while {} ran: {jobs:?}", w[1].0, w[0].0);
    }
    dev.cli_ok(&["delete", "cron", "forbid"]);
    assert!(cron_jobs(&dev, "forbid").is_empty(), "its jobs go with it");

    dev.apply(
        "replace.yaml",
        &format!(
            "kind: cron\nname: replace\nschedule: \"*/2 * * * * *\"\nconcurrency_policy: replace\njob:\n  wasm: {wasm}\n  env: {{SLEEP_MS: \"60000\"}}\n"
        ),
    );
    wait_for(Duration::from_secs(40), "replace to replace a job", || {
        let ev = dev.events("cron/replace");
        if ev.contains("Replaced") { Ok(()) } else { Err(ev) }
    });
    let jobs = cron_jobs(&dev, "replace");
    no_time_twice(&jobs);
    let running: Vec<_> = jobs.iter().filter(|j| j.3 != "succeeded" && j.3 != "failed").collect();
    assert!(running.len() <= 1, "replace keeps one job: {jobs:?}");
    let d = dev.cli_ok(&["get", "crons"]);
    assert!(d.contains("replace") && d.contains("*/2 * * * * *") && d.contains("in "), "{d}");
    // Triggered by hand, whatever the schedule; suspended, nothing starts.
    dev.apply(
        "replace.yaml",
        &format!(
            "kind: cron\nname: replace\nschedule: \"*/2 * * * * *\"\nsuspend: true\nconcurrency_policy: replace\njob:\n  wasm: {wasm}\n  env: {{SLEEP_MS: \"60000\"}}\n"
        ),
    );
    let before = cron_jobs(&dev, "replace").len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(cron_jobs(&dev, "replace").len(), before, "suspended: no job");
    let out = dev.cli_ok(&["cron", "trigger", "replace"]);
    assert!(out.contains("started"), "{out}");
    assert_eq!(cron_jobs(&dev, "replace").len(), before + 1);
}

#[test]
fn a_cron_missed_while_the_scheduler_was_down_runs_once() {
    let mut c = Cluster::new("jobs-cron-kill");
    c.start_node("a");
    c.wait_nodes(1);
    let wasm = path(&worker_p1()).to_string();
    c.apply(
        "tick.yaml",
        &format!(
            "kind: cron\nname: tick\nschedule: \"*/2 * * * * *\"\nstarting_deadline: 30s\nhistory: {{succeeded: 100, failed: 100}}\njob:\n  wasm: {wasm}\n"
        ),
    );
    wait_for(Duration::from_secs(20), "a first job", || {
        let j = cron_jobs(&c, "tick");
        if j.is_empty() { Err("none".into()) } else { Ok(()) }
    });
    c.kill_server();
    let killed = now_ms();
    // Two scheduled times at least pass while no scheduler runs.
    std::thread::sleep(Duration::from_millis(5_000));
    let restarted = now_ms();
    c.start_server();
    wait_for(Duration::from_secs(20), "jobs after the restart", || {
        let j = cron_jobs(&c, "tick");
        if j.iter().any(|j| j.2 > restarted + 2_500) { Ok(()) } else { Err(format!("{j:?}")) }
    });
    let jobs = cron_jobs(&c, "tick");
    no_time_twice(&jobs);
    let missed: Vec<_> = jobs.iter().filter(|j| j.1 > killed && j.1 <= restarted).collect();
    assert_eq!(missed.len(), 1, "the missed times ran once, the latest: {jobs:?}");
    assert!(missed[0].2 >= restarted, "it ran late, after the restart: {jobs:?}");
    assert!(missed[0].1 + 2_000 > restarted, "the latest missed time: {jobs:?}");
    let ev = c.events("cron/tick");
    assert!(ev.contains("MissedSchedule"), "the earlier missed times are told: {ev}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `skiff ARGS` in `dev`'s namespace and directory: (exit code, stdout, stderr).
fn run_in_ns(dev: &crate::container_lifecycle::DevNs, args: &[&str]) -> (Option<i32>, String, String) {
    let netns = format!("--net=/run/netns/{}", dev.ns.name);
    let out = Command::new("nsenter")
        .args([netns.as_str(), "--"])
        .arg(skiff_bin())
        .args(args)
        .current_dir(dev.dir.path())
        .env("SKIFF_SERVER", &dev.url)
        .env("SKIFF_TOKEN", read_when_ready(&dev.data().join("admin-token")))
        .env("SKIFF_CA_FILE", dev.data().join("ca.crt"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn skiff_run_of_an_image_streams_it_and_exits_with_its_status() {
    if !crate::container_lifecycle::require() {
        return;
    }
    let dev = crate::container_lifecycle::DevNs::start("jobs-image");
    dev.import_busybox();
    let (code, out, err) = run_in_ns(
        &dev,
        &[
            "run",
            "--image",
            "busybox:latest",
            "--name",
            "ok",
            "--",
            "/bin/sh",
            "-c",
            "echo hello from busybox; echo oops >&2",
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(out, "hello from busybox\n", "{err}");
    assert!(err.contains("oops"), "{err}");
    let (code, out, err) = run_in_ns(
        &dev,
        &["run", "--image", "busybox:latest", "--name", "three", "--", "/bin/sh", "-c", "echo before; exit 3"],
    );
    assert_eq!(code, Some(3), "{out}\n{err}");
    assert_eq!(out, "before\n", "{err}");
    // A job of containers: two indices, their index in the env.
    let yaml = dev.dir.path().join("c.yaml");
    std::fs::write(
        &yaml,
        "kind: job\nname: boxes\nimage: busybox:latest\nargs: [\"/bin/sh\", \"-c\", \"echo box $SKIFF_JOB_INDEX of $SKIFF_JOB_COMPLETIONS\"]\ncompletions: 2\nparallelism: 2\n",
    )
    .expect("manifest");
    dev.cli(&["apply", "-f", yaml.to_str().unwrap_or_default()]);
    wait_for(Duration::from_secs(60), "job boxes succeeded", || {
        let out = dev.cli(&["get", "jobs", "boxes", "-o", "json"]);
        if out.contains("\"succeeded\"") && out.contains("\"state\": \"succeeded\"") { Ok(()) } else { Err(out) }
    });
    let logs = dev.cli(&["logs", "job/boxes"]);
    assert!(logs.contains("[0] ") && logs.contains("box 0 of 2") && logs.contains("box 1 of 2"), "{logs}");
    // Every run's container is gone: runc state, mounts, cgroups, namespaces.
    let ids: Vec<String> = ["ok", "three", "boxes"]
        .iter()
        .flat_map(|j| {
            let out = dev.cli(&["get", "runs", j, "-o", "json"]);
            let runs: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
            runs.into_iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    wait_for(Duration::from_secs(30), "nothing left of the runs", || {
        let left = dev.leftovers(&ids, &[]);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
}

/// Jobs of cron `cron` read through any of `urls`: (name, scheduled_ms, created_ms, state).
fn cron_jobs_at(cwd: &Path, urls: &str, cron: &str) -> Result<Vec<(String, u64, u64, String)>, String> {
    let out = cli_in(cwd, urls, &["get", "jobs", "-o", "json"]);
    if !out.ok {
        return Err(out.stderr);
    }
    let list: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    let mut v: Vec<(String, u64, u64, String)> = list
        .iter()
        .filter(|j| j["cron"] == cron)
        .map(|j| {
            (
                j["name"].as_str().unwrap_or("").to_string(),
                j["scheduled_ms"].as_u64().unwrap_or(0),
                j["created_ms"].as_u64().unwrap_or(0),
                j["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort_by_key(|j| j.1);
    Ok(v)
}

#[test]
fn a_cron_on_three_servers_on_etcd_runs_no_time_twice_when_the_leader_dies() {
    if Command::new("etcd").arg("--version").output().is_err() {
        panic!("etcd is not installed: `make deps-test` installs Debian's etcd-server");
    }
    let dir = TempDir::new("jobs-etcd");
    let cwd = dir.path();
    let etcd = crate::servers::Etcd::start(cwd);
    let store = etcd.url();
    let (s1, u1) = crate::servers::start_server(cwd, "127.0.0.1", "s1", &store, &[]);
    let join = read_when_ready(&cwd.join("s1").join("join-token"));
    let (s2, u2) = crate::servers::start_server(cwd, "127.0.0.1", "s2", &store, &["--join-token", &join]);
    let (s3, u3) = crate::servers::start_server(cwd, "127.0.0.1", "s3", &store, &["--join-token", &join]);
    let mut procs = vec![("s1", s1), ("s2", s2), ("s3", s3)];
    let urls = format!("{u1},{u2},{u3}");
    remember_token(&urls, &read_when_ready(&cwd.join("s1").join("admin-token")));
    remember_ca(&urls, &cwd.join("s1").join("ca.crt"));
    let first = wait_for(Duration::from_secs(20), "a leader", || crate::servers::leader(cwd, &urls));
    let data = cwd.join("n1");
    let node_args = [
        "node",
        "--server",
        &urls,
        "--token",
        &join,
        "--name",
        "n1",
        "--data-dir",
        data.to_str().unwrap_or_default(),
        "--listen",
        "127.0.0.1:0",
        "--ingress",
        "127.0.0.1:0",
    ];
    let _node = Proc::start("n1", &node_args, &cwd.join("n1.log"));
    wait_for(Duration::from_secs(30), "the node ready", || {
        let nodes = get_json(cwd, &urls, "nodes");
        if nodes.iter().any(|n| n["state"] == "ready") { Ok(()) } else { Err(format!("{nodes:?}")) }
    });
    let manifest = cwd.join("tick.yaml");
    std::fs::write(
        &manifest,
        format!(
            "kind: cron\nname: tick\nschedule: \"*/2 * * * * *\"\nhistory: {{succeeded: 200, failed: 200}}\njob:\n  wasm: {}\n",
            path(&worker_p1())
        ),
    )
    .expect("manifest");
    cli_ok(cwd, &urls, &["apply", "-f", manifest.to_str().unwrap_or_default()]);
    // A job of another namespace (#20), stored by key `team-a/report` beside
    // default's in etcd: the next leader loads it and its runs there.
    cli_ok(cwd, &urls, &["namespace", "create", "team-a"]);
    let report = cwd.join("report.yaml");
    let yaml = format!("kind: job\nname: report\nnamespace: team-a\nwasm: {}\ncompletions: 2\n", path(&worker_p1()));
    std::fs::write(&report, yaml).expect("manifest");
    cli_ok(cwd, &urls, &["apply", "-f", report.to_str().unwrap_or_default()]);
    let team_runs = || {
        let out = cli_in(cwd, &urls, &["-n", "team-a", "get", "runs", "report", "-o", "json"]);
        let runs: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stderr))?;
        if runs.len() == 2 && runs.iter().all(|r| r["outcome"] == "succeeded") {
            Ok(())
        } else {
            Err(format!("{runs:?}"))
        }
    };
    wait_for(Duration::from_secs(30), "team-a's job to succeed", team_runs);
    wait_for(Duration::from_secs(30), "two jobs of the cron", || {
        let j = cron_jobs_at(cwd, &urls, "tick")?;
        if j.len() >= 2 { Ok(()) } else { Err(format!("{j:?}")) }
    });
    let i = procs.iter().position(|(n, _)| *n == first).expect("the leader is one of the three");
    let (_, mut dead) = procs.remove(i);
    dead.kill();
    let killed = now_ms();
    let second = wait_for(Duration::from_secs(30), "another leader", || match crate::servers::leader(cwd, &urls) {
        Ok(l) if l != first => Ok(l),
        other => Err(format!("{other:?}")),
    });
    wait_for(Duration::from_secs(40), "jobs under the new leader", || {
        let j = cron_jobs_at(cwd, &urls, "tick")?;
        let after: Vec<_> = j.iter().filter(|j| j.2 > killed).collect();
        if after.len() >= 3 && after.iter().filter(|j| j.3 == "succeeded").count() >= 2 {
            Ok(())
        } else {
            Err(format!("{j:?}"))
        }
    });
    wait_for(Duration::from_secs(10), "team-a's job on the new leader", team_runs);
    let listed = cli_ok(cwd, &urls, &["get", "jobs", "-A"]);
    assert!(listed.lines().any(|l| l.split_whitespace().take(2).eq(["team-a", "report"])), "{listed}");
    cli_ok(cwd, &urls, &["-n", "team-a", "delete", "job", "report"]);
    let gone = cli_in(cwd, &urls, &["-n", "team-a", "get", "jobs", "report"]);
    assert!(!gone.ok && gone.stderr.contains("not found"), "{}", gone.stderr);
    let jobs = cron_jobs_at(cwd, &urls, "tick").expect("jobs");
    no_time_twice(&jobs);
    let names: std::collections::BTreeSet<&String> = jobs.iter().map(|j| &j.0).collect();
    assert_eq!(names.len(), jobs.len(), "{jobs:?}");
    assert!(jobs.iter().all(|j| j.1 % 2_000 == 0), "every job is for a scheduled time: {jobs:?}");
    // A time started twice (two leaders) would show as a second run of its job.
    for (name, ..) in jobs.iter().filter(|j| j.3 == "succeeded") {
        let out = cli_ok(cwd, &urls, &["get", "runs", name, "-o", "json"]);
        let runs: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(runs.len(), 1, "job {name} ran {} times: {out}", runs.len());
    }
    eprintln!("leader {first} killed, {second} took over; {} jobs, none for the same time", jobs.len());
    drop(procs);
    drop(etcd);
}

#[test]
fn logs_follow_takes_in_the_runs_a_job_starts_later() {
    let dev = Dev::start("jobs-follow");
    dev.apply(
        "seq.yaml",
        &format!(
            "kind: job\nname: seq\nwasm: {}\ncompletions: 3\nparallelism: 1\nenv: {{SLEEP_MS: \"1000\"}}\n",
            path(&worker_p1())
        ),
    );
    wait_for(Duration::from_secs(30), "the first run on its node", || {
        let r = dev.runs("seq");
        if r.iter().any(|r| r["node"].is_string()) { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let mut child = Command::new(skiff_bin())
        .args(["logs", "job/seq", "-f"])
        .current_dir(dev.dir.path())
        .env("SKIFF_SERVER", &dev.url)
        .env("SKIFF_TOKEN", read_when_ready(&dev.data().join("admin-token")))
        .env("SKIFF_CA_FILE", dev.data().join("ca.crt"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("skiff logs -f");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdout = child.stdout.take().expect("stdout");
    let _reap = Reap(child);
    // Read until the last index's second line came: runs 1 and 2 started after
    // the follow began.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("[2] ") || !String::from_utf8_lossy(&seen).contains("index=2 slept")
    {
        assert!(Instant::now() < deadline, "followed: {}", String::from_utf8_lossy(&seen));
        match stdout.read(&mut buf) {
            Ok(0) => panic!("the follow ended: {}", String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the follow: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    for i in 0..3 {
        assert_eq!(text.matches(&format!("stdout job-worker index={i} slept")).count(), 1, "{text}");
    }
}

/// A team's view (#20): `skiff -n NS ...` with a token of that namespace.
struct Team<'a> {
    dev: &'a Dev,
    ns: &'static str,
    token: String,
}

impl Team<'_> {
    fn cli(&self, args: &[&str]) -> Cli {
        let mut all = vec!["-n", self.ns];
        all.extend_from_slice(args);
        super::namespaces::as_token(self.dev.dir.path(), &self.dev.url, &self.token, &all)
    }
}

impl Target for Team<'_> {
    fn cli_ok(&self, args: &[&str]) -> String {
        super::namespaces::ok(self.cli(args), &format!("{} as {}: skiff {}", self.ns, self.token, args.join(" ")))
    }
    fn dir(&self) -> &Path {
        self.dev.dir.path()
    }
}

/// Why `c` was refused: it failed, and its stderr.
fn refused(c: Cli, what: &str) -> String {
    assert!(!c.ok, "{what} was allowed: {}", c.stdout);
    c.stderr
}

/// Two teams, each with its own tokens, run a job of the same name, a cron
/// and a `skiff run` in their namespaces; neither sees nor touches the
/// other's (404, as for deployments), a read token only reads, and the
/// cluster admin sees both with -A.
#[test]
fn two_teams_run_jobs_and_crons_in_their_namespaces_apart() {
    let dev = Dev::start("jobs-teams");
    let wasm = path(&worker_p1()).to_string();
    let mut teams = Vec::new();
    let mut readers = Vec::new();
    for ns in ["team-a", "team-b"] {
        dev.cli_ok(&["namespace", "create", ns]);
        let token = |role: &str| dev.cli_ok(&["-n", ns, "token", "create", &format!("{ns}-{role}"), "--role", role]);
        teams.push(Team { dev: &dev, ns, token: token("deploy").trim().to_string() });
        readers.push(Team { dev: &dev, ns, token: token("read").trim().to_string() });
    }
    for t in &teams {
        // team-a names its namespace in the manifest, team-b with -n only.
        let ns_line = if t.ns == "team-a" { "namespace: team-a\n" } else { "" };
        let out = t.apply(
            &format!("{}.yaml", t.ns),
            &format!(
                "kind: job\nname: report\n{ns_line}wasm: {wasm}\nargs: [\"{ns}\"]\ncompletions: 2\n---\nkind: cron\nname: nightly\n{ns_line}schedule: \"0 3 * * *\"\njob:\n  wasm: {wasm}\n  args: [\"{ns}-cron\"]\n",
                ns = t.ns
            ),
        );
        assert!(out.contains("job report created") && out.contains("cron nightly created"), "{out}");
        let job = t.wait_job("report", "succeeded", Duration::from_secs(60));
        assert_eq!(job["namespace"], t.ns, "{job}");
        let logs = t.cli_ok(&["logs", "job/report"]);
        assert!(logs.contains(&format!("args={}", t.ns)), "its own runs: {logs}");
        assert_eq!(t.runs("report").len(), 2);
        let d = t.cli_ok(&["describe", "job", "report"]);
        assert!(d.contains(&format!("Namespace:       {}", t.ns)) && d.contains("2/2 succeeded"), "{d}");
        // A cron triggered by hand starts its job in the namespace.
        let out = t.cli_ok(&["cron", "trigger", "nightly"]);
        let started = out.trim().strip_prefix("job ").and_then(|o| o.strip_suffix(" started")).unwrap_or_default();
        assert!(started.starts_with("nightly-t"), "{out}");
        let job = t.wait_job(started, "succeeded", Duration::from_secs(60));
        assert_eq!((job["cron"].as_str(), job["namespace"].as_str()), (Some("nightly"), Some(t.ns)), "{job}");
        let d = t.cli_ok(&["describe", "cron", "nightly"]);
        assert!(d.contains(started) && d.contains("succeeded"), "{d}");
        // A cron on its schedule starts its jobs in the namespace too.
        t.apply(
            &format!("{}-tick.yaml", t.ns),
            &format!("kind: cron\nname: tick\nschedule: \"*/2 * * * * *\"\njob: {{wasm: {wasm}}}\n"),
        );
        let scheduled = wait_for(Duration::from_secs(30), "a scheduled job of tick", || {
            let jobs = t.jobs();
            let done = jobs.iter().find(|j| j["cron"] == "tick" && j["state"] == "succeeded");
            done.map(|j| j["name"].as_str().unwrap_or_default().to_string()).ok_or_else(|| format!("{jobs:?}"))
        });
        assert!(scheduled.strip_prefix("tick-").is_some_and(|s| s.parse::<u64>().is_ok()), "{scheduled}");
        t.cli_ok(&["delete", "cron", "tick"]);
        assert!(t.jobs().iter().all(|j| j["cron"] != "tick"), "tick's jobs go with it");
        // `skiff run` with the team's token, in its namespace.
        let c = t.cli(&["run", &wasm, "--name", "once", "--", t.ns]);
        assert!(c.ok, "{}", c.stderr);
        assert_eq!(c.stdout, format!("job-worker index=0 attempt=1 args={}\n", t.ns));
        assert_eq!(t.job("once")["namespace"], t.ns);
    }

    // team-a's tokens and team-b's jobs and crons: not found, whatever the verb.
    let (a, b) = (&teams[0], &teams[1]);
    let in_b = |args: &[&str]| {
        let mut all = vec!["-n", "team-b"];
        all.extend_from_slice(args);
        super::namespaces::as_token(dev.dir.path(), &dev.url, &a.token, &all)
    };
    let verbs: [&[&str]; 10] = [
        &["get", "jobs"],
        &["get", "jobs", "report"],
        &["get", "runs", "report"],
        &["describe", "job", "report"],
        &["logs", "job/report"],
        &["get", "crons"],
        &["describe", "cron", "nightly"],
        &["cron", "trigger", "nightly"],
        &["delete", "cron", "nightly"],
        &["delete", "job", "report"],
    ];
    for v in verbs {
        super::namespaces::not_found(in_b(v), &v.join(" "));
    }
    let c = in_b(&["run", &wasm, "--name", "sneak"]);
    assert!(!c.ok && c.stderr.contains("not found"), "run in team-b: {}", c.stderr);
    // team-b's are as they were, and nothing went to default.
    assert_eq!(b.job("report")["succeeded"], 2);
    assert_eq!(b.jobs().len(), 3, "report, the cron's job, once");
    assert!(dev.get("jobs").is_empty(), "a team's job landed in default");

    // A read token reads, and changes nothing.
    let r = &readers[0];
    assert_eq!(r.job("report")["state"], "succeeded");
    r.cli_ok(&["logs", "job/report"]);
    r.cli_ok(&["get", "crons", "nightly"]);
    let job = dev.dir.path().join("team-a.yaml");
    for args in [
        vec!["apply", "-f", job.to_str().unwrap_or_default()],
        vec!["cron", "trigger", "nightly"],
        vec!["delete", "job", "report"],
        vec!["run", &wasm, "--name", "nope"],
    ] {
        let why = refused(r.cli(&args), &args.join(" "));
        assert!(why.contains("needs the deploy role"), "{}: {why}", args.join(" "));
    }

    // The cluster admin: both, with their namespace.
    let all = dev.cli_ok(&["get", "jobs", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    for ns in ["team-a", "team-b"] {
        assert!(all.lines().any(|l| l.split_whitespace().take(2).eq([ns, "report"])), "{ns} report in {all}");
    }
    let crons = dev.cli_ok(&["get", "crons", "-A"]);
    assert_eq!(crons.lines().filter(|l| l.contains("nightly")).count(), 2, "{crons}");
    let runs = dev.cli_ok(&["get", "runs", "-A"]);
    assert_eq!(runs.lines().filter(|l| l.split_whitespace().take(2).eq(["team-b", "report"])).count(), 2, "{runs}");

    // namespace rm names them; --cascade takes them.
    let rm = dev.cli(&["namespace", "rm", "team-b"]);
    assert!(!rm.ok && rm.stderr.contains("namespace team-b holds 3 jobs, 1 cron"), "{}", rm.stderr);
    dev.cli_ok(&["namespace", "rm", "team-b", "--cascade"]);
    let gone = dev.cli(&["-n", "team-b", "get", "jobs"]);
    assert!(!gone.ok && gone.stderr.contains("not found"), "{}", gone.stderr);
    assert_eq!(a.jobs().len(), 3, "team-a's stay");
}

/// A namespace's quota holds a job's runs (#20): with the replicas quota
/// full, a job waits and says why, starts as the quota frees and then runs
/// one run at a time within it; a job one run of which could never fit is
/// refused with one line.
#[test]
fn a_jobs_runs_wait_at_a_full_quota_and_finish_when_it_frees() {
    let dev = Dev::start("jobs-quota");
    dev.cli_ok(&["namespace", "create", "team-q", "--replicas", "1", "--memory", "256Mi"]);
    let token = dev.cli_ok(&["-n", "team-q", "token", "create", "q-deploy", "--role", "deploy"]);
    let t = Team { dev: &dev, ns: "team-q", token: token.trim().to_string() };
    let hello = wasm_p2("hello_http");
    t.cli_ok(&["deploy", path(&hello), "--name", "web", "--memory", "32Mi", "--wait"]);

    let wasm = path(&worker_p1()).to_string();
    let manifest = |name: &str, memory: &str| {
        format!(
            "kind: job\nname: {name}\nwasm: {wasm}\ncompletions: 3\nparallelism: 3\nenv: {{SLEEP_MS: \"300\"}}\nresources: {{memory: {memory}}}\n"
        )
    };
    let why = refused(
        t.cli(&["apply", "-f", &{
            let p = dev.dir.path().join("huge.yaml");
            std::fs::write(&p, manifest("huge", "512Mi")).expect("write");
            p.to_str().unwrap_or_default().to_string()
        }]),
        "a job bigger than the quota",
    );
    assert!(
        why.contains("namespace team-q: memory quota 256Mi, one run of this job asks 512Mi; it could never start"),
        "{why}"
    );

    t.apply("batch.yaml", &manifest("batch", "32Mi"));
    let held = "runs wait for quota: namespace team-q: replicas quota 1, 1 in use, this asks 1 more";
    let job = wait_for(Duration::from_secs(30), "the job held by the quota", || {
        let j = t.job("batch");
        if j["reason"] == held { Ok(j) } else { Err(format!("{j}")) }
    });
    assert_eq!(job["state"], "pending", "{job}");
    assert!(t.runs("batch").is_empty(), "no run was made");
    let d = t.cli_ok(&["describe", "job", "batch"]);
    assert!(d.contains(&format!("Reason:          {held}")), "{d}");
    assert!(d.contains("QuotaHeld") && d.contains("a run waits: namespace team-q: replicas quota 1"), "{d}");
    // `skiff run` in the full namespace says why it waits, and waits.
    let ca = dev.data().join("ca.crt");
    let args = [
        "--server",
        &dev.url,
        "--token",
        &t.token,
        "--ca-file",
        path(&ca),
        "-n",
        "team-q",
        "run",
        &wasm,
        "--name",
        "waiter",
        "--",
        "waited",
    ];
    let mut waiter = Proc::start("skiff run", &args, &dev.dir.path().join("waiter.log"));
    let said = format!("skiff: job waiter waits: {held}");
    wait_for(Duration::from_secs(30), "skiff run to say it waits", || {
        let log = waiter.log();
        if log.contains(&said) { Ok(()) } else { Err(log) }
    });

    // Room made: the runs go, one at a time within the quota, and all succeed.
    t.cli_ok(&["scale", "web", "0"]);
    let mut most = 0;
    let job = wait_for(Duration::from_secs(60), "the job to succeed", || {
        let j = t.job("batch");
        most = most.max(j["active"].as_u64().unwrap_or(0));
        match j["state"].as_str() {
            Some("succeeded") => Ok(j),
            Some("failed") => panic!("{j}"),
            _ => Err(format!("{j}")),
        }
    });
    assert_eq!(job["succeeded"], 3, "{job}");
    assert!(most <= 1, "{most} runs at once in a quota of 1 replica");
    let mut runs = t.runs("batch");
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|r| r["outcome"] == "succeeded"), "{runs:?}");
    // Each run started after the one before it had ended.
    runs.sort_by_key(|r| r["started_ms"].as_u64());
    for w in runs.windows(2) {
        let (ended, started) = (w[0]["finished_ms"].as_u64(), w[1]["started_ms"].as_u64());
        assert!(started >= ended && ended.is_some(), "two runs at once: {runs:?}");
    }
    // skiff run's run had its turn too, and streamed its output.
    wait_for(Duration::from_secs(60), "skiff run to end", || if waiter.alive() { Err(waiter.log()) } else { Ok(()) });
    assert!(waiter.log().contains("job-worker index=0 attempt=1 args=waited"), "{}", waiter.log());
    assert_eq!(t.job("waiter")["state"], "succeeded");
    // Their use is given back: the deployment may grow again.
    t.cli_ok(&["scale", "web", "1"]);
}
