//! `skiff-bench`: the benchmark driver behind `make bench`.
//!
//! `skiff-bench run` starts real `skiff` processes (a `skiff server` plus
//! `skiff node --simulate` processes, or a `skiff dev`), drives them only through
//! the public HTTP API, measures, and writes one JSON file into `bench/results/`.
//! `skiff-bench report` turns the newest results into the README's table, so no
//! figure is ever typed by hand.
//!
//! Scenarios:
//! - `a`: 5,000 simulated nodes, 50,000 replicas in deployments of varied sizes and
//!   requests (kube-scheduler's scheduler_perf shape);
//! - `quota-cost`: `a` beside the same with its deployments in 100 namespaces,
//!   without and with quotas, interleaved over rounds and timed by the
//!   scheduler's own placements (what quota checks cost, #20);
//! - `failover`: right after `a`, SIGKILL the process holding 10% of the nodes and
//!   time until every replica runs again elsewhere;
//! - `b`: 1,000,000 replicas onto 5,000 simulated nodes (Nomad's C1M shape);
//! - `deploy`: deploy → first replica running over 100 deploys with `skiff dev`;
//! - `containers`: deploy → container running with `skiff dev` (runc, CNI)
//!   against a bare `runc run -d` of the same bundle, alternating (see
//!   `containers.rs`);
//! - `http`: one `wasi:http` component behind a skiff ingress against `wasmtime
//!   serve` and against a native hyper server answering the same body, under
//!   the same `wrk` load (see `http.rs`); `http-big`: the same with a big
//!   componentize-py handler;
//! - `cold`: the first request to a Wasm HTTP deployment scaled to zero, with
//!   its artifact compiled on the node and the first time there (see `cold.rs`);
//! - `containers-cold`: the first request to nginx scaled to zero against a
//!   bare `runc run` of its bundle plus nginx's readiness (see `containers.rs`);
//! - `density`: 100,000 HTTP Wasm deployments at zero on a server and one node,
//!   10,000 cold requests to random names, RSS per warm replica (see `density.rs`);
//! - `routes`: requests through the ingress with 10 names routed, then 100,000
//!   (see `routes.rs`);
//! - `idle`: a node's memory per idle Wasm HTTP replica, with 10,000 of them
//!   (see `idle.rs`).

mod cold;
mod containers;
mod density;
mod http;
mod idle;
mod jobs;
mod native;
mod procs;
mod report;
mod routes;
mod split;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use procs::{Proc, TempDir, cpu_seconds, peak_rss};
use serde_json::{Value, json};
use skiff_api::tls::CaFingerprint;
use skiff_api::{ApplyRequest, Client, Deployment};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "skiff-bench", about = "skiff's benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run benchmarks and write bench/results/<time>.json
    Run(Box<RunArgs>),
    /// Regenerate the README's benchmark table from bench/results/
    Report(report::ReportArgs),
    /// Serve one fixed response with plain hyper (the http scenario's limit)
    #[command(hide = true)]
    ServeNative(native::NativeArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The skiff binary to benchmark (a release build)
    #[arg(long, default_value = "target/release/skiff")]
    skiff: PathBuf,
    /// A long-running Wasm workload for the deploy scenario
    #[arg(long, default_value = "target/wasm32-wasip2/release/examples/worker.wasm")]
    wasm: PathBuf,
    /// Where result files go
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Scenarios to run: a, quota-cost (a, a-ns-free and a-ns interleaved, timed
    /// by the scheduler's placements), a-ns (a again, its deployments spread over 100
    /// namespaces with quotas), a-ns-free (the same without quotas), failover (runs a first), b, deploy, containers,
    /// http, http-big, routes, cold, containers-cold, density, idle
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "a,quota-cost,failover,b,deploy,containers,http,http-big,routes,cold,containers-cold,density,idle"
    )]
    scenarios: Vec<String>,
    /// Rounds of the quota-cost scenario (each runs a, a-ns-free and a-ns)
    #[arg(long, default_value_t = 3)]
    quota_rounds: usize,
    /// Simulated nodes in scenarios a and b
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Replicas in scenario a
    #[arg(long, default_value_t = 50_000)]
    replicas: u32,
    /// Replicas in scenario b
    #[arg(long, default_value_t = 1_000_000)]
    c1m_replicas: u32,
    /// Deploys in the deploy scenario
    #[arg(long, default_value_t = 100)]
    deploys: usize,
    /// Deploys (and as many bare runc runs) in the containers scenario
    #[arg(long, default_value_t = 20)]
    container_deploys: usize,
    /// Longest a scenario may take before its partial figures are recorded
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The wasmtime CLI for the http scenario (same wasmtime version as skiff's)
    #[arg(long, default_value = "/var/cache/skiff-bench-tools/bin/wasmtime")]
    wasmtime: PathBuf,
    /// The wasi:http component for the http scenario
    #[arg(long, default_value = "target/wasm32-wasip2/release/examples/hello_http.wasm")]
    component: PathBuf,
    /// A big wasi:http component for the http-big scenario (scripts/real-apps.sh's
    /// componentize-py app; `make bench` passes it)
    #[arg(long, env = "SKIFF_REAL_PYTHON")]
    big_component: Option<PathBuf>,
    /// An nginx image archive for the containers-cold scenario (scripts/real-apps.sh's)
    #[arg(long, env = "SKIFF_REAL_NGINX")]
    nginx: Option<PathBuf>,
    /// Cold requests timed in the cold scenario
    #[arg(long, default_value_t = 200)]
    cold_starts: usize,
    /// Deployments at zero in the density scenario
    #[arg(long, default_value_t = 100_000)]
    density_deployments: u32,
    /// Cold requests (to distinct random names) in the density scenario
    #[arg(long, default_value_t = 10_000)]
    density_cold: u32,
    /// Deployments warm (one replica each) at the end of the density scenario
    #[arg(long, default_value_t = 10_000)]
    density_warm: u32,
    /// Names routed in the routes scenario
    #[arg(long, default_value_t = 100_000)]
    route_names: u32,
    /// Connections wrk keeps open in the http scenario
    #[arg(long, default_value_t = 32)]
    http_connections: u32,
    /// Seconds of each wrk run in the http scenario
    #[arg(long, default_value_t = 10)]
    http_seconds: u32,
    /// Idle replicas on one node in the idle scenario
    #[arg(long, default_value_t = 10_000)]
    idle_replicas: u32,
    /// The jobs scenario (not in the default list: `--scenarios jobs`): Wasm
    /// runs, container runs, runs at once, and the job_worker core module
    #[arg(long, default_value_t = 10_000)]
    job_runs: u32,
    #[arg(long, default_value_t = 1_000)]
    container_job_runs: u32,
    #[arg(long, default_value_t = 500)]
    job_parallelism: u32,
    #[arg(long, default_value = "target/wasm32-wasip1/release/examples/job_worker.wasm")]
    job_worker: PathBuf,
    /// Simulated nodes and runs at once in the jobs-sim scenario (`--scenarios jobs-sim`)
    #[arg(long, default_value_t = 1_000)]
    job_sim_nodes: usize,
    #[arg(long, default_value_t = 2_000)]
    job_sim_parallelism: u32,
    /// The scheduler's store in scenarios a, failover, b and deploy: `sqlite`, or
    /// `etcd` (one etcd member from Debian's etcd-server, started by the bench)
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "etcd"])]
    store: String,
    /// `--store etcd://...` of the etcd the bench started
    #[arg(skip)]
    store_url: Option<String>,
}

impl RunArgs {
    /// The arguments that put the server (or `skiff dev`) of `scenario` on the
    /// store benchmarked (on etcd, under a prefix of its own: each is a new cluster).
    fn store_args(&self, scenario: &str) -> Vec<String> {
        match &self.store_url {
            Some(url) => vec!["--store".into(), format!("{url}/bench-{scenario}")],
            None => vec![],
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Report(args) => report::run(args),
        Cmd::ServeNative(args) => native::run(args),
        Cmd::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run(*args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Deployments created at once in scenario a.
const SUBMIT_CONCURRENCY: usize = 16;

/// The smallest valid WebAssembly module: simulated nodes never run it, but the
/// scheduler checks that a deployment's artifact is Wasm.
const EMPTY_WASM: &[u8] = b"\0asm\x01\0\0\0";

async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    procs::raise_fd_limit();
    if !args.skiff.exists() {
        bail!("{} not found; build it with `cargo build --release -p skiff-cli`", args.skiff.display());
    }
    let _etcd = match args.store.as_str() {
        "etcd" => {
            let (etcd, url) = procs::Etcd::start().await?;
            println!("store: one etcd member at {url}");
            args.store_url = Some(url);
            Some(etcd)
        }
        _ => None,
    };
    let started = now_rfc3339();
    let machine = procs::machine();
    let mut scenarios = serde_json::Map::new();
    let want = |s: &str| args.scenarios.iter().any(|x| x == s);
    // A scenario that fails is recorded with its error: a failure is a result too.
    let failed = |e: anyhow::Error| {
        eprintln!("  failed: {e:#}");
        json!({ "error": format!("{e:#}") })
    };
    // Written again after every scenario, so that a run stopped part-way (a
    // scenario that never ends, a timeout) keeps what it measured so far.
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let file = args.out.join(format!("{}.json", started.replace(':', "-")));
    let commit = procs::commit();
    let save = |scenarios: &serde_json::Map<String, Value>| -> anyhow::Result<()> {
        let result = json!({
            "date": started,
            "machine": machine,
            "commit": commit,
            "skiff": args.skiff.display().to_string(),
            "store": args.store,
            "scenarios": scenarios,
        });
        std::fs::write(&file, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("writing {}", file.display()))
    };
    if want("a") || want("failover") {
        match scenario_a(&args, want("failover"), 0, true).await {
            Ok((a, failover)) => {
                scenarios.insert("a".into(), a);
                if let Some(f) = failover {
                    scenarios.insert("failover".into(), f);
                }
            }
            Err(e) => {
                scenarios.insert("a".into(), failed(e));
            }
        }
        save(&scenarios)?;
    }
    // What quota checks cost (#20): scenario a with its deployments spread
    // over 100 namespaces, each with a quota on every resource.
    // a-ns-free: the same namespaces without quotas, which tells the quota
    // checks' cost from that of namespaces (and of polling 100 lists).
    for (flag, key, quotas) in [("a-ns-free", "a_namespaces_no_quota", false), ("a-ns", "a_namespaces", true)] {
        if !want(flag) {
            continue;
        }
        let mut r = scenario_a(&args, false, A_NAMESPACES, quotas).await.map(|(a, _)| a).unwrap_or_else(failed);
        let rate = |v: &Value| v["placements_per_s"].as_f64();
        for (base, field) in [("a", "placements_per_s_vs_a"), ("a_namespaces_no_quota", "placements_per_s_vs_no_quota")]
        {
            if let (Some(with), Some(without)) = (rate(&r), scenarios.get(base).and_then(rate)) {
                r[field] = json!((with / without.max(1e-9) * 1000.0).round() / 1000.0);
            }
        }
        scenarios.insert(key.into(), r);
        save(&scenarios)?;
    }
    if want("quota-cost") {
        scenarios.insert("quota_cost".into(), scenario_quota_cost(&args).await.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("deploy") {
        scenarios.insert("deploy".into(), scenario_deploy(&args).await.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("containers") {
        let c = containers::scenario_containers(&args.skiff, args.container_deploys).await;
        scenarios.insert("containers".into(), c.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("http") {
        let h = http::HttpArgs {
            skiff: &args.skiff,
            wasmtime: &args.wasmtime,
            component: &args.component,
            connections: args.http_connections,
            seconds: args.http_seconds,
            name: "hello",
            memory: "64Mi",
            ready_timeout: Duration::from_secs(60),
        };
        scenarios.insert("http".into(), http::scenario_http(h).await.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("http-big") {
        let big = match &args.big_component {
            Some(component) => {
                let h = http::HttpArgs {
                    skiff: &args.skiff,
                    wasmtime: &args.wasmtime,
                    component,
                    connections: args.http_connections,
                    seconds: args.http_seconds,
                    name: "python",
                    memory: "256Mi",
                    // It compiles first, in skiff and in wasmtime serve.
                    ready_timeout: Duration::from_secs(600),
                };
                http::scenario_http(h).await.unwrap_or_else(failed)
            }
            None => failed(anyhow::anyhow!(
                "no big component: pass --big-component or SKIFF_REAL_PYTHON (`make real-apps` builds it)"
            )),
        };
        scenarios.insert("http_big".into(), big);
        save(&scenarios)?;
    }
    // #18's canary split overhead (opt-in: `--scenarios split`).
    if want("split") {
        let r = split::scenario_split(&args.skiff, &args.component, args.http_connections, args.http_seconds).await;
        scenarios.insert("split".into(), r.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("routes") {
        let r = routes::RoutesArgs {
            skiff: &args.skiff,
            component: &args.component,
            names: args.route_names,
            connections: args.http_connections,
            seconds: args.http_seconds,
        };
        scenarios.insert("routes".into(), routes::scenario_routes(r).await.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("cold") {
        let c = cold::ColdArgs {
            skiff: &args.skiff,
            component: &args.component,
            big_component: args.big_component.as_deref(),
            cold_starts: args.cold_starts,
        };
        scenarios.insert("cold".into(), cold::scenario_cold(c).await.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("containers-cold") {
        let c = match &args.nginx {
            Some(archive) => containers::scenario_containers_cold(&args.skiff, archive, args.container_deploys)
                .await
                .unwrap_or_else(failed),
            None => {
                failed(anyhow::anyhow!("no nginx image: pass --nginx or SKIFF_REAL_NGINX (`make real-apps` builds it)"))
            }
        };
        scenarios.insert("containers_cold".into(), c);
        save(&scenarios)?;
    }
    if want("density") {
        let d = density::DensityArgs {
            skiff: &args.skiff,
            component: &args.component,
            deployments: args.density_deployments,
            cold: args.density_cold,
            warm: args.density_warm,
        };
        scenarios.insert("density".into(), density::scenario_density(d).await.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("jobs") {
        let j = jobs::JobsArgs {
            skiff: &args.skiff,
            worker: args.job_worker.clone(),
            runs: args.job_runs,
            container_runs: args.container_job_runs,
            parallelism: args.job_parallelism,
            container_parallelism: args.job_parallelism.min(50),
            timeout: Duration::from_secs(args.timeout_secs),
        };
        scenarios.insert("jobs".into(), jobs::scenario_jobs(j).await.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("jobs-sim") {
        let (runs, timeout) = (args.job_runs, Duration::from_secs(args.timeout_secs));
        let (nodes, parallelism) = (args.job_sim_nodes, args.job_sim_parallelism);
        let s = jobs::scenario_jobs_sim(&args.skiff, &args.job_worker, runs, nodes, parallelism, timeout).await;
        scenarios.insert("jobs_sim".into(), s.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    if want("idle") {
        let idle = idle::scenario_idle(&args.skiff, &args.component, args.idle_replicas).await;
        scenarios.insert("idle".into(), idle.unwrap_or_else(failed));
        save(&scenarios)?;
    }
    // The longest, last.
    if want("b") {
        scenarios.insert("b".into(), scenario_b(&args).await.unwrap_or_else(failed));
    }
    save(&scenarios)?;
    println!("results in {}", file.display());
    Ok(())
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

/// A `skiff server` with simulated-node processes around it.
pub(crate) struct Cluster {
    pub(crate) dir: TempDir,
    pub(crate) server: Proc,
    pub(crate) sims: Vec<Proc>,
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) api: Client,
}

impl Cluster {
    /// CPU seconds the simulated-node processes have used so far (0 for one
    /// whose figure cannot be read).
    fn sims_cpu_seconds(&self) -> f64 {
        self.sims.iter().map(|s| cpu_seconds(s.pid()).unwrap_or(0.0)).sum()
    }

    async fn start(skiff: &Path, name: &str, extra: &[&str]) -> anyhow::Result<Cluster> {
        let dir = TempDir::new(name)?;
        let data = dir.path().join("server");
        let mut server_args = vec!["server", "--listen", "127.0.0.1:0", "--data-dir"];
        let data_str = data.display().to_string();
        server_args.push(&data_str);
        server_args.extend_from_slice(extra);
        let server = Proc::spawn(skiff, &server_args, &dir.path().join("server.log"))?;
        let url_file = data.join("server.url");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(u) = std::fs::read_to_string(&url_file)
                && !u.trim().is_empty()
            {
                break u.trim().to_string();
            }
            server.check_alive()?;
            if Instant::now() > deadline {
                bail!("skiff server wrote no {} within 30s", url_file.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let token = std::fs::read_to_string(data.join("join-token"))?.trim().to_string();
        let api = user_client(&url, &data);
        Ok(Cluster { dir, server, sims: Vec::new(), url, token, api })
    }

    /// Starts one real `skiff node` named `name` offering `cpu` millicores and
    /// `memory`, with its data in `node/`, its API and ingress on loopback
    /// ports of its choice and its log in `node.log`; `extra` are more flags.
    pub(crate) fn real_node(
        &self,
        skiff: &Path,
        name: &str,
        cpu: &str,
        memory: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let node_dir = self.dir.path().join("node").display().to_string();
        let token_file = self.dir.path().join("server").join("join-token").display().to_string();
        let mut args = vec![
            "node",
            "--server",
            &self.url,
            "--token-file",
            &token_file,
            "--name",
            name,
            "--cpu",
            cpu,
            "--memory",
            memory,
            "--data-dir",
            &node_dir,
            "--listen",
            "127.0.0.1:0",
            "--ingress",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Proc::spawn(skiff, &args, &self.dir.path().join("node.log"))
    }

    /// Starts a process of `count` simulated nodes named `prefix-NNNNN`.
    fn simulate(&mut self, skiff: &Path, count: usize, prefix: &str) -> anyhow::Result<()> {
        let n = count.to_string();
        let args = [
            "node",
            "--simulate",
            &n,
            "--name-prefix",
            prefix,
            "--server",
            &self.url,
            "--token",
            &self.token,
            "--cpu",
            "4",
            "--memory",
            "16Gi",
        ];
        let log = self.dir.path().join(format!("sim-{prefix}.log"));
        self.sims.push(Proc::spawn(skiff, &args, &log)?);
        Ok(())
    }

    pub(crate) async fn wait_ready_nodes(&self, want: usize) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            self.server.check_alive()?;
            for s in &self.sims {
                s.check_alive()?;
            }
            if let Ok(nodes) = self.api.nodes().await {
                let ready = nodes.iter().filter(|n| n.state == skiff_api::NodeState::Ready).count();
                if ready >= want {
                    return Ok(t0.elapsed());
                }
            }
            if t0.elapsed() > Duration::from_secs(180) {
                bail!("fewer than {want} nodes ready after 180s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) async fn upload(&self, bytes: &[u8]) -> anyhow::Result<String> {
        upload(&self.api, bytes.to_vec()).await
    }
}

/// Uploads `bytes` as a blob through `api`; returns its digest.
async fn upload(api: &Client, bytes: Vec<u8>) -> anyhow::Result<String> {
    use sha2::Digest;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    api.put_blob(&digest, bytes).await?;
    Ok(digest)
}

/// A client of the user API, with the server's admin token when it keeps one and
/// trusting its CA (`ca.crt`).
fn user_client(url: &str, data_dir: &Path) -> Client {
    let ca = std::fs::read(data_dir.join("ca.crt")).ok().and_then(|pem| CaFingerprint::of_pem(&pem).ok());
    let client = match ca {
        Some(ca) => Client::new(url).with_ca(ca),
        None => Client::new(url),
    };
    match std::fs::read_to_string(data_dir.join("admin-token")) {
        Ok(t) if !t.trim().is_empty() => client.with_token(t.trim()),
        _ => client,
    }
}

fn apply_request(digest: &str, replicas: u32, cpu_m: u64, mem_mi: u64, env: &[(&str, &str)]) -> ApplyRequest {
    let resources = json!({ "cpu": format!("{cpu_m}m"), "memory": format!("{mem_mi}Mi") });
    let mut req = apply_request_with(digest, replicas, resources);
    req.spec.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    req
}

/// An apply request for Wasm blob `digest` with `resources` as JSON. Built from
/// JSON so that fields other issues add to the spec keep their defaults here.
pub(crate) fn apply_request_with(digest: &str, replicas: u32, resources: Value) -> ApplyRequest {
    let spec = json!({ "workload": { "wasm": digest }, "resources": resources });
    serde_json::from_value(json!({ "replicas": replicas, "spec": spec })).expect("a well-formed apply request")
}

/// What a poll of the deployments saw first, per deployment.
#[derive(Default)]
struct Progress {
    created: HashMap<String, Instant>,
    all_assigned: HashMap<String, Instant>,
    all_running: HashMap<String, Instant>,
}

/// Polls `GET /v1/deployments` every `every` until every deployment of `plan`
/// is fully assigned and running, or `timeout` passes. Returns whether it finished
/// and the last counts (assigned, running).
/// Polls the deployments of `plan` through `apis` (one client per namespace
/// the plan is spread over) until all run or `timeout`.
async fn watch_plan(
    apis: &[Client],
    plan: &[(String, u32)],
    progress: &Mutex<Progress>,
    every: Duration,
    timeout: Duration,
    server: &Proc,
) -> anyhow::Result<(bool, u64, u64)> {
    let t0 = Instant::now();
    let wanted: HashMap<&str, u32> = plan.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    let mut last = (0u64, 0u64);
    loop {
        server.check_alive()?;
        // One after the other on one connection: at once, each poll would open
        // (and TLS-handshake) a connection per namespace, on the scheduler's cores.
        let mut all = Some(Vec::new());
        for api in apis {
            match (api.deployments().await, &mut all) {
                (Ok(ds), Some(all)) => all.extend(ds),
                _ => all = None,
            }
        }
        if let Some(ds) = all {
            let now = Instant::now();
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            let (mut assigned, mut running) = (0u64, 0u64);
            for d in &ds {
                let Some(&want) = wanted.get(d.name.as_str()) else { continue };
                let s = d.status;
                let placed = s.total.saturating_sub(s.pending);
                assigned += placed as u64;
                running += s.running as u64;
                if placed >= want && s.total == want {
                    p.all_assigned.entry(d.name.clone()).or_insert(now);
                }
                if s.running >= want {
                    p.all_running.entry(d.name.clone()).or_insert(now);
                }
            }
            last = (assigned, running);
            if p.all_running.len() == plan.len() {
                return Ok((true, assigned, running));
            }
        }
        let elapsed = t0.elapsed();
        if elapsed > timeout {
            return Ok((false, last.0, last.1));
        }
        // Progress once every 10 s: when the next poll crosses a multiple of 10.
        if elapsed.as_secs() / 10 != (elapsed + every).as_secs() / 10 {
            println!("  {:>4.0} s: {} assigned, {} running", elapsed.as_secs_f64(), last.0, last.1);
        }
        tokio::time::sleep(every).await;
    }
}

/// Replicas the scheduler has placed since it started (its
/// `skiff_scheduler_placements_total`): more than a scenario's replicas means
/// some were placed again (nodes declared down while alive, say).
async fn placements_total(api: &Client) -> Option<u64> {
    let text = api.metrics().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("skiff_scheduler_placements_total ")).and_then(|v| v.trim().parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Scenario a's deployments: sizes from 1 to 1,000 replicas and requests from
/// 50m/32Mi to 500m/256Mi, in a fixed order, summing to `total`.
fn plan_a(total: u32) -> Vec<(String, u32, u64, u64)> {
    const SIZES: [u32; 9] = [1, 5, 10, 20, 50, 100, 200, 500, 1000];
    const CPU: [u64; 5] = [50, 100, 200, 250, 500];
    const MEM: [u64; 4] = [32, 64, 128, 256];
    let mut plan = Vec::new();
    let mut left = total;
    let mut i = 0usize;
    while left > 0 {
        let n = SIZES[i % SIZES.len()].min(left);
        plan.push((format!("a{i:04}"), n, CPU[i % CPU.len()], MEM[i % MEM.len()]));
        left -= n;
        i += 1;
    }
    plan
}

/// Namespaces of scenario a-ns.
const A_NAMESPACES: usize = 100;

/// The namespace of scenario a's `i`th deployment: round-robin over
/// `namespaces` (`bench-000`, ...), none without namespaces.
fn a_space(namespaces: usize, i: usize) -> Option<String> {
    (namespaces > 0).then(|| format!("bench-{:03}", i % namespaces))
}

/// Scenario a's cluster, its nodes ready, the artifact uploaded and, with
/// `namespaces` > 0, that many namespaces made (see [`scenario_a`]).
struct ReadyA {
    c: Cluster,
    victims: usize,
    join: Duration,
    digest: String,
    plan: Vec<(String, u32, u64, u64)>,
}

/// `server` is added to the server's arguments.
async fn prepare_a(
    args: &RunArgs,
    failover: bool,
    namespaces: usize,
    quotas: bool,
    server: &[&str],
) -> anyhow::Result<ReadyA> {
    let store = args.store_args(if namespaces > 0 { "a-ns" } else { "a" });
    let mut extra: Vec<&str> = store.iter().map(String::as_str).collect();
    extra.extend_from_slice(server);
    let mut c = Cluster::start(&args.skiff, "a", &extra).await?;
    // Two processes, so that failover can kill 10% of the nodes at once.
    let victims = if failover { args.nodes / 10 } else { 0 };
    c.simulate(&args.skiff, args.nodes - victims, "sa")?;
    if victims > 0 {
        c.simulate(&args.skiff, victims, "sb")?;
    }
    let join = c.wait_ready_nodes(args.nodes).await?;
    println!("  {} nodes ready after {:.1}s", args.nodes, join.as_secs_f64());
    let digest = c.upload(EMPTY_WASM).await?;
    let plan = plan_a(args.replicas);
    if namespaces > 0 && !quotas {
        for i in 0..namespaces {
            let name = a_space(namespaces, i).unwrap_or_default();
            let req = skiff_api::namespace::NamespaceRequest::default();
            c.api.put_namespace(&name, &req).await.with_context(|| format!("making namespace {name}"))?;
        }
    } else if namespaces > 0 {
        // Per namespace: (deployments, replicas, cpu millis, memory MiB) of its share.
        let mut share = vec![(0u64, 0u64, 0u64, 0u64); namespaces];
        for (i, (_, replicas, cpu, mem)) in plan.iter().enumerate() {
            let s = &mut share[i % namespaces];
            let r = u64::from(*replicas);
            *s = (s.0 + 1, s.1 + r, s.2 + cpu * r, s.3 + mem * r);
        }
        for (i, (deployments, replicas, cpu, mem)) in share.into_iter().enumerate() {
            let req: skiff_api::namespace::NamespaceRequest = serde_json::from_value(json!({ "quota": {
                "cpu": format!("{}m", 2 * cpu.max(1)),
                "memory": format!("{}Mi", 2 * mem.max(1)),
                "replicas": 2 * replicas.max(1),
                "deployments": 2 * deployments.max(1),
                "volumes": 1,
            }}))?;
            let name = a_space(namespaces, i).unwrap_or_default();
            c.api.put_namespace(&name, &req).await.with_context(|| format!("making namespace {name}"))?;
        }
    }
    Ok(ReadyA { c, victims, join, digest, plan })
}

/// Applies `plan` through `api`, [`SUBMIT_CONCURRENCY`] at once, each
/// deployment in its namespace (see [`a_space`]); the task ends, with the time
/// of the last answer, once every apply has been answered.
fn submit_plan(
    api: Client,
    plan: Vec<(String, u32, u64, u64)>,
    digest: String,
    namespaces: usize,
    progress: Arc<Mutex<Progress>>,
) -> tokio::task::JoinHandle<anyhow::Result<Instant>> {
    tokio::spawn(async move {
        // Several clients at once, as a busy cluster's users would be; the
        // scheduler's own rate is what is measured, not one client's round trips.
        let mut inflight = tokio::task::JoinSet::new();
        for (i, (name, replicas, cpu, mem)) in plan.into_iter().enumerate() {
            if inflight.len() >= SUBMIT_CONCURRENCY
                && let Some(done) = inflight.join_next().await
            {
                done??;
            }
            let (mut api, progress, digest) = (api.clone(), progress.clone(), digest.clone());
            if let Some(ns) = a_space(namespaces, i) {
                api = api.with_namespace(&ns);
            }
            inflight.spawn(async move {
                progress.lock().unwrap_or_else(|e| e.into_inner()).created.insert(name.clone(), Instant::now());
                api.apply(&name, &apply_request(&digest, replicas, cpu, mem, &[])).await?;
                Ok::<(), anyhow::Error>(())
            });
        }
        while let Some(done) = inflight.join_next().await {
            done??;
        }
        Ok::<Instant, anyhow::Error>(Instant::now())
    })
}

/// Scenario a; with `namespaces` > 0 its deployments go round-robin into that
/// many namespaces (`bench-000`, ...), each with a quota on every resource at
/// twice what its share of the plan asks, so that every apply is checked
/// against a quota and none is refused.
async fn scenario_a(
    args: &RunArgs,
    failover: bool,
    namespaces: usize,
    quotas: bool,
) -> anyhow::Result<(Value, Option<Value>)> {
    println!("scenario a: {} nodes, {} replicas, {namespaces} namespaces", args.nodes, args.replicas);
    let ReadyA { mut c, victims, join, digest, plan } = prepare_a(args, failover, namespaces, quotas, &[]).await?;
    let names: Vec<(String, u32)> = plan.iter().map(|(n, r, _, _)| (n.clone(), *r)).collect();
    let space = move |i: usize| a_space(namespaces, i);
    let progress = Arc::new(Mutex::new(Progress::default()));
    let cpu0 = cpu_seconds(c.server.pid())?;
    let sim_cpu0 = c.sims_cpu_seconds();
    let t0 = Instant::now();
    let submit = submit_plan(c.api.clone(), plan, digest, namespaces, progress.clone());
    let timeout = Duration::from_secs(args.timeout_secs);
    let poll = Duration::from_millis(50);
    // With namespaces, one list per namespace each poll (an unprefixed list is
    // default's only): 100 small requests instead of one big one.
    let watchers: Vec<Client> = match namespaces {
        0 => vec![c.api.clone()],
        n => (0..n).filter_map(space).map(|ns| c.api.clone().with_namespace(&ns)).collect(),
    };
    let (done, assigned, running) = watch_plan(&watchers, &names, &progress, poll, timeout, &c.server).await?;
    let submitted = submit.await??;
    let cpu = cpu_seconds(c.server.pid())? - cpu0;
    let sim_cpu = c.sims_cpu_seconds() - sim_cpu0;
    let placements = placements_total(&c.api).await;
    // The lock is released before any await below.
    let a = {
        let p = progress.lock().unwrap_or_else(|e| e.into_inner());
        let last_assigned = p.all_assigned.values().max().copied().unwrap_or(t0);
        let last_running = p.all_running.values().max().copied().unwrap_or(t0);
        let mut lat: Vec<f64> =
            names.iter().filter_map(|(n, _)| Some(ms(*p.all_running.get(n)? - *p.created.get(n)?))).collect();
        lat.sort_by(f64::total_cmp);
        let mut lat_assigned: Vec<f64> =
            names.iter().filter_map(|(n, _)| Some(ms(*p.all_assigned.get(n)? - *p.created.get(n)?))).collect();
        lat_assigned.sort_by(f64::total_cmp);
        let assign_secs = (last_assigned - t0).as_secs_f64();
        json!({
            "nodes": args.nodes,
            "replicas": args.replicas,
            "deployments": names.len(),
            "namespaces": namespaces,
            "namespaces_with_quotas": if quotas { namespaces } else { 0 },
            "finished": done,
            "assigned": assigned,
            "running": running,
            "nodes_join_s": join.as_secs_f64(),
            "submit_s": (submitted - t0).as_secs_f64(),
            "all_assigned_s": assign_secs,
            "all_running_s": (last_running - t0).as_secs_f64(),
            "placements_per_s": (assigned as f64 / assign_secs.max(1e-9)).round(),
            "create_to_running_ms": { "p50": percentile(&lat, 50.0), "p99": percentile(&lat, 99.0), "max": lat.last() },
            "create_to_assigned_ms": { "p50": percentile(&lat_assigned, 50.0), "p99": percentile(&lat_assigned, 99.0) },
            "poll_interval_ms": poll.as_millis() as u64,
            "submit_concurrency": SUBMIT_CONCURRENCY,
            "scheduler_cpu_s": cpu,
            "simulated_nodes_cpu_s": sim_cpu,
            "placements_total": placements,
            "scheduler_peak_rss_bytes": peak_rss(c.server.pid())?,
            "sim_peak_rss_bytes": peak_rss(c.sims[0].pid())?,
            "server_flags": "defaults (heartbeat 1s, node grace 3s, binpack)",
        })
    };
    println!("  {a}");
    let f = if victims > 0 && done {
        Some(scenario_failover(&mut c, victims, &names).await.unwrap_or_else(|e| json!({ "error": format!("{e:#}") })))
    } else {
        None
    };
    if let Some(f) = &f {
        println!("  failover: {f}");
    }
    Ok((a, f))
}

/// The quota-cost scenario's server flags: 5,000 simulated nodes on a loaded
/// 2-core machine missed the 3 s grace (a run placed 59,217 for 50,000
/// replicas), and a node declared down alive makes its replicas placed twice;
/// what is measured is the cost of quota checks, not failure detection.
const QUOTA_SERVER: &[&str] = &["--node-grace", "60s"];

/// The variants of the quota-cost scenario: (name, namespaces, quotas).
const QUOTA_VARIANTS: [(&str, usize, bool); 3] =
    [("a", 0, false), ("a_ns_free", A_NAMESPACES, false), ("a_ns", A_NAMESPACES, true)];

/// What quota checks cost (#20), measured so that the observer costs nothing:
/// scenario a (no namespaces), a-ns-free (100 namespaces without quotas) and
/// a-ns (the same with quotas), interleaved over `rounds` rounds (each round
/// starting at the next variant, so that none always runs first). Each run's
/// rate is the scheduler's own: replicas placed over the time from the first
/// apply sent to the end of the scheduler's last placing pass
/// (`skiff_scheduler_last_placement_timestamp_seconds`, same machine clock),
/// read once at the end; the bench meanwhile only reads the placement counter
/// every 500 ms, the same small request in every variant (the lists scenario
/// a-ns polls, 100 per 50 ms, competed with the scheduler on 2 cores). The
/// ratios are per round and their median is the figure.
async fn scenario_quota_cost(args: &RunArgs) -> anyhow::Result<Value> {
    let rounds = args.quota_rounds.max(1);
    let mut runs = Vec::new();
    let mut ratios: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut cpu_ratios: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut work_ratios: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        let mut rates: HashMap<&str, (f64, f64, f64)> = HashMap::new();
        for k in 0..QUOTA_VARIANTS.len() {
            let (name, namespaces, quotas) = QUOTA_VARIANTS[(round + k) % QUOTA_VARIANTS.len()];
            println!("quota-cost round {}/{rounds}: {name}", round + 1);
            let mut r = quota_cost_run(args, namespaces, quotas).await?;
            println!("  {r}");
            if r["clean"] == json!(true)
                && let (Some(rate), Some(cpu), Some(work)) =
                    (r["placements_per_s"].as_f64(), r["scheduler_cpu_s"].as_f64(), r["scheduler_work_cpu_s"].as_f64())
            {
                rates.insert(name, (rate, cpu, work));
            }
            r["variant"] = json!(name);
            r["round"] = json!(round + 1);
            runs.push(r);
        }
        for (pair, (with, without)) in [("a_ns_vs_a", ("a_ns", "a")), ("a_ns_vs_a_ns_free", ("a_ns", "a_ns_free"))] {
            if let (Some(w), Some(wo)) = (rates.get(with), rates.get(without)) {
                ratios.entry(pair).or_default().push(w.0 / wo.0.max(1e-9));
                cpu_ratios.entry(pair).or_default().push(w.1 / wo.1.max(1e-9));
                work_ratios.entry(pair).or_default().push(w.2 / wo.2.max(1e-9));
            }
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let mut summary = serde_json::Map::new();
    for (name, _, _) in QUOTA_VARIANTS {
        let mut rates: Vec<f64> = runs
            .iter()
            .filter(|r| r["variant"] == json!(name) && r["clean"] == json!(true))
            .filter_map(|r| r["placements_per_s"].as_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        summary.insert(format!("{name}_placements_per_s_median"), json!(median(&rates).map(f64::round)));
    }
    for pair in ["a_ns_vs_a", "a_ns_vs_a_ns_free"] {
        let v = ratios.get(pair).cloned().unwrap_or_default();
        summary.insert(format!("{pair}_median"), json!(median(&v).map(round3)));
        summary.insert(format!("{pair}_each"), json!(v.iter().map(|x| round3(*x)).collect::<Vec<_>>()));
        let c = cpu_ratios.get(pair).cloned().unwrap_or_default();
        summary.insert(format!("{pair}_scheduler_cpu_median"), json!(median(&c).map(round3)));
        let w = work_ratios.get(pair).cloned().unwrap_or_default();
        summary.insert(format!("{pair}_scheduler_work_cpu_median"), json!(median(&w).map(round3)));
        summary
            .insert(format!("{pair}_scheduler_work_cpu_each"), json!(w.iter().map(|x| round3(*x)).collect::<Vec<_>>()));
    }
    // The scheduler's own time in the apply handler and in placement passes,
    // median per variant (less sensitive to the bench and the machine than
    // the end-to-end rate).
    for field in ["apply_handler_s", "placement_passes_s", "scheduler_cpu_s", "scheduler_work_cpu_s"] {
        for (name, _, _) in QUOTA_VARIANTS {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r["variant"] == json!(name) && r["clean"] == json!(true))
                .filter_map(|r| r[field].as_f64())
                .collect();
            summary.insert(format!("{name}_{field}_median"), json!(median(&v).map(round3)));
        }
    }
    Ok(json!({
        "nodes": args.nodes,
        "replicas": args.replicas,
        "namespaces": A_NAMESPACES,
        "rounds": rounds,
        "summary": summary,
        "runs": runs,
        "server_flags": QUOTA_SERVER.join(" "),
        "measured": "placements/s = replicas / (scheduler's last placing pass − first apply sent); ratios per round, median over clean rounds (a run is clean when the scheduler placed each replica once)",
    }))
}

/// One run of the quota-cost scenario (see [`scenario_quota_cost`]).
async fn quota_cost_run(args: &RunArgs, namespaces: usize, quotas: bool) -> anyhow::Result<Value> {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let ReadyA { c, join, digest, plan, .. } = prepare_a(args, false, namespaces, quotas, QUOTA_SERVER).await?;
    let placed0 = placements_total(&c.api).await.unwrap_or(0);
    // The scheduler's CPU with nothing to do but the 5,000 nodes' heartbeats,
    // so that what the run's work took is told from what its length cost.
    let idle0 = cpu_seconds(c.server.pid())?;
    let idle_t = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rate = (cpu_seconds(c.server.pid())? - idle0) / idle_t.elapsed().as_secs_f64();
    let cpu0 = cpu_seconds(c.server.pid())?;
    let progress = Arc::new(Mutex::new(Progress::default()));
    let t0 = Instant::now();
    let t0_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let submit = submit_plan(c.api.clone(), plan, digest, namespaces, progress);
    let timeout = Duration::from_secs(args.timeout_secs);
    let want = u64::from(args.replicas);
    let mut placed = 0;
    while placed < want && t0.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.server.check_alive()?;
        placed = placements_total(&c.api).await.unwrap_or(0).saturating_sub(placed0);
    }
    let submitted = submit.await??;
    // Once the counter says every replica is placed: a later pass would only
    // be a re-placement (then the run is not clean).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = c.api.metrics().await?;
    let metric =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    let placed_total = (metric("skiff_scheduler_placements_total").unwrap_or(0.0) as u64).saturating_sub(placed0);
    let last = metric("skiff_scheduler_last_placement_timestamp_seconds")
        .context("the scheduler does not export skiff_scheduler_last_placement_timestamp_seconds (an older skiff?)")?;
    let cpu = cpu_seconds(c.server.pid())? - cpu0;
    let work_cpu = cpu - idle_rate * t0.elapsed().as_secs_f64();
    let secs = last - t0_unix;
    // The scheduler's own time in the two places quotas are checked or could
    // cost: the apply handler (PUT /v1/deployments/{name}, namespaced ones
    // included: they are mapped onto it) and the placement passes.
    let sum_of = |name: &str, labels: &[&str]| {
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let apply_s = sum_of(
        "skiff_scheduler_api_request_duration_seconds_sum",
        &["method=\"PUT\"", "route=\"/v1/deployments/{name}\""],
    );
    let placing_s = sum_of("skiff_scheduler_placement_duration_seconds_sum", &[]);
    Ok(json!({
        "namespaces": namespaces,
        "namespaces_with_quotas": if quotas { namespaces } else { 0 },
        "finished": placed >= want,
        "clean": placed_total == want,
        "placements_total": placed_total,
        "nodes_join_s": join.as_secs_f64(),
        "submit_s": (submitted - t0).as_secs_f64(),
        "placed_s": secs,
        "placements_per_s": (want as f64 / secs.max(1e-9)).round(),
        "scheduler_cpu_s": cpu,
        "scheduler_idle_cpu_per_s": idle_rate,
        "scheduler_work_cpu_s": work_cpu,
        "apply_handler_s": apply_s,
        "placement_passes_s": placing_s,
        "loadavg_before": load_before,
        "loadavg_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    }))
}

async fn scenario_failover(c: &mut Cluster, victims: usize, plan: &[(String, u32)]) -> anyhow::Result<Value> {
    println!("failover: killing {victims} simulated nodes");
    let nodes = c.api.nodes().await?;
    let lost: u64 = nodes.iter().filter(|n| n.name.starts_with("sb-")).map(|n| n.replicas as u64).sum();
    let total: u64 = plan.iter().map(|(_, r)| *r as u64).sum();
    let mut victim = c.sims.pop().context("no victim process")?;
    let t0 = Instant::now();
    victim.kill();
    let timeout = Duration::from_secs(120);
    let detected = loop {
        let nodes = c.api.nodes().await?;
        let down = nodes.iter().filter(|n| n.name.starts_with("sb-") && n.state == skiff_api::NodeState::Down).count();
        if down == victims {
            break t0.elapsed();
        }
        if t0.elapsed() > timeout {
            bail!("only {down} of {victims} killed nodes marked down after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovered = loop {
        let ds: Vec<Deployment> = c.api.deployments().await?;
        let running: u64 = ds.iter().map(|d| d.status.running as u64).sum();
        if running >= total {
            break t0.elapsed();
        }
        if t0.elapsed() > timeout {
            bail!("only {running} of {total} replicas running {timeout:?} after the failure");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(json!({
        "killed_nodes": victims,
        "lost_replicas": lost,
        "all_down_s": detected.as_secs_f64(),
        "all_running_again_s": recovered.as_secs_f64(),
        "server_flags": "defaults (heartbeat 1s, node grace 3s)",
    }))
}

async fn scenario_b(args: &RunArgs) -> anyhow::Result<Value> {
    println!("scenario b: {} nodes, {} replicas", args.nodes, args.c1m_replicas);
    let store = args.store_args("b");
    let mut c = Cluster::start(&args.skiff, "b", &store.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    c.simulate(&args.skiff, args.nodes, "sc")?;
    let join = c.wait_ready_nodes(args.nodes).await?;
    let digest = c.upload(EMPTY_WASM).await?;
    let per = 10_000u32;
    let mut names = Vec::new();
    let mut left = args.c1m_replicas;
    while left > 0 {
        let n = per.min(left);
        names.push((format!("b{:03}", names.len()), n));
        left -= n;
    }
    let progress = Mutex::new(Progress::default());
    let cpu0 = cpu_seconds(c.server.pid())?;
    let sim_cpu0 = c.sims_cpu_seconds();
    let t0 = Instant::now();
    for (name, n) in &names {
        progress.lock().unwrap_or_else(|e| e.into_inner()).created.insert(name.clone(), Instant::now());
        c.api.apply(name, &apply_request(&digest, *n, 10, 16, &[])).await?;
    }
    let submitted = t0.elapsed();
    let timeout = Duration::from_secs(args.timeout_secs);
    let poll = Duration::from_millis(1000);
    let (done, assigned, running) =
        watch_plan(std::slice::from_ref(&c.api), &names, &progress, poll, timeout, &c.server).await?;
    let elapsed = t0.elapsed();
    let placements = placements_total(&c.api).await;
    let sim_cpu = c.sims_cpu_seconds() - sim_cpu0;
    let p = progress.lock().unwrap_or_else(|e| e.into_inner());
    let last_assigned = p.all_assigned.values().max().map(|t| (*t - t0).as_secs_f64());
    let b = json!({
        "nodes": args.nodes,
        "replicas": args.c1m_replicas,
        "deployments": names.len(),
        "finished": done,
        "assigned": assigned,
        "running": running,
        "nodes_join_s": join.as_secs_f64(),
        "submit_s": submitted.as_secs_f64(),
        "all_assigned_s": if done { last_assigned } else { None },
        "all_running_s": if done { Some(elapsed.as_secs_f64()) } else { None },
        "elapsed_s": elapsed.as_secs_f64(),
        "poll_interval_ms": poll.as_millis() as u64,
        "scheduler_cpu_s": cpu_seconds(c.server.pid())? - cpu0,
        "simulated_nodes_cpu_s": sim_cpu,
        "placements_total": placements,
        "scheduler_peak_rss_bytes": peak_rss(c.server.pid())?,
        "sim_peak_rss_bytes": peak_rss(c.sims[0].pid())?,
        "server_flags": "defaults (heartbeat 1s, node grace 3s, binpack)",
    });
    println!("  {b}");
    Ok(b)
}

async fn scenario_deploy(args: &RunArgs) -> anyhow::Result<Value> {
    println!("deploy: {} deploys on skiff dev", args.deploys);
    let wasm = std::fs::read(&args.wasm)
        .with_context(|| format!("reading {} (build the examples with `make wasm`)", args.wasm.display()))?;
    let dir = TempDir::new("deploy")?;
    let store = args.store_args("deploy");
    let dev = dev_cluster(&args.skiff, &dir, &store.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let (api, node) = (&dev.api, &dev.node);
    let digest = dev.upload(wasm).await?;
    let http = reqwest::Client::new();
    let node_replicas = format!("{}/v1/replicas", node.address.trim_end_matches('/'));
    // One deploy first, not counted: it compiles the module into the node's cache.
    let mut cold = None;
    let (mut on_node, mut on_scheduler) = (Vec::new(), Vec::new());
    for i in 0..=args.deploys {
        let name = format!("lat-{i}");
        let prefix = format!("{name}-");
        let t = Instant::now();
        api.apply(&name, &apply_request(&digest, 1, 10, 64, &[("INTERVAL_MS", "600000")])).await?;
        let (mut node_seen, mut sched_seen) = (None, None);
        while node_seen.is_none() || sched_seen.is_none() {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("deploy {name}: replica not running after 30s");
            }
            if node_seen.is_none()
                && let Ok(resp) = http.get(&node_replicas).send().await
                && let Ok(list) = resp.json::<Vec<skiff_api::ReplicaStatus>>().await
                && list.iter().any(|r| r.id.starts_with(&prefix) && r.state == skiff_api::ReplicaState::Running)
            {
                node_seen = Some(t.elapsed());
            }
            if sched_seen.is_none()
                && let Ok(d) = api.deployment(&name).await
                && d.status.running >= 1
            {
                sched_seen = Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (n, s) = (node_seen.unwrap_or_default(), sched_seen.unwrap_or_default());
        if i == 0 {
            cold = Some((ms(n), ms(s)));
        } else {
            on_node.push(ms(n));
            on_scheduler.push(ms(s));
        }
        api.delete(&name).await?;
    }
    on_node.sort_by(f64::total_cmp);
    on_scheduler.sort_by(f64::total_cmp);
    let d = json!({
        "deploys": args.deploys,
        "workload": args.wasm.display().to_string(),
        "running_on_node_ms": { "p50": percentile(&on_node, 50.0), "p99": percentile(&on_node, 99.0) },
        "running_at_scheduler_ms": { "p50": percentile(&on_scheduler, 50.0), "p99": percentile(&on_scheduler, 99.0) },
        "cold_first_deploy_ms": cold.map(|(n, s)| json!({ "on_node": n, "at_scheduler": s })),
        "note": "on node: the node API lists the replica running; at scheduler: its next heartbeat reported it",
    });
    println!("  {d}");
    drop(dev);
    Ok(d)
}

/// A `skiff dev` (scheduler and one node in one process) in `dir`, with its
/// node ready.
pub(crate) struct DevCluster {
    pub proc: Proc,
    pub data: PathBuf,
    pub api: Client,
    pub node: skiff_api::Node,
}

impl DevCluster {
    /// Uploads `bytes` as a blob; returns its digest.
    pub async fn upload(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        upload(&self.api, bytes).await
    }
}

/// Starts `skiff dev` with data in `dir` and `extra` arguments; waits for its node.
pub(crate) async fn dev_cluster(skiff: &Path, dir: &TempDir, extra: &[&str]) -> anyhow::Result<DevCluster> {
    let data = dir.path().join("dev");
    let data_str = data.display().to_string();
    let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--data-dir", &data_str];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(skiff, &args, &dir.path().join("dev.log"))?;
    let url_file = data.join("server.url");
    let t0 = Instant::now();
    let url = loop {
        // The server writes its URL before it makes the admin token.
        if let Ok(u) = std::fs::read_to_string(&url_file)
            && !u.trim().is_empty()
            && data.join("admin-token").exists()
        {
            break u.trim().to_string();
        }
        proc.check_alive()?;
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("skiff dev wrote no {} within 30s", url_file.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let api = user_client(&url, &data);
    let node = loop {
        if let Ok(n) = api.node("dev").await
            && n.state == skiff_api::NodeState::Ready
        {
            break n;
        }
        proc.check_alive()?;
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the dev node did not become ready within 30s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(DevCluster { proc, data, api, node })
}

/// Milliseconds from a wrk latency such as `412.00us`, `1.20ms` or `1.05s`.
pub(crate) fn ms_from_wrk(v: &str) -> anyhow::Result<f64> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("no unit in latency {v:?}")
    };
    Ok(num.parse::<f64>().with_context(|| format!("latency {v:?}"))? * scale)
}
