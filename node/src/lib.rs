//! skiff-node: the node daemon. It registers with the scheduler, heartbeats,
//! watches its assignments and converges to them, running each replica under a
//! supervisor, with its logs on disk and served by the node's own HTTP API.
//!
//! Modules: [`agent`] (scheduler conversation and convergence), [`supervisor`]
//! (one per replica: the restart loop, backoff, counting restarts and exits),
//! [`runtime`] (the `Runtime` trait and its types), [`runtimes`] (the choice of
//! runtime per workload), [`wasm`] (Wasm commands), [`http`] (HTTP components),
//! [`container`] (OCI containers), [`engine`] (what the two wasmtime engines
//! share), [`blobs`] (digests, the blob cache, atomic writes), [`probes`] (probe
//! timing), [`state`] (a replica's status, backoff), [`routes`] (what the
//! ingress reaches on this node), [`ingress`], [`activation`] (requests held
//! for a deployment at zero), [`secrets`], [`volumes`],
//! [`logs`] (per-replica rotating logs), [`metrics`], [`api`] (the node API:
//! `/healthz`, `/v1/replicas`, `/v1/replicas/{id}/logs`, and the exec and
//! port-forward relay routes, [`exec`]), [`sim`] (simulated
//! nodes for benchmarks: the protocol without workloads).

pub mod activation;
pub mod agent;
pub mod api;
pub mod blobs;
pub mod container;
pub mod engine;
pub mod exec;
pub mod gc;
pub mod http;
pub mod ingress;
pub mod logs;
pub mod metrics;
pub mod probes;
pub mod routes;
pub mod runtime;
pub mod runtimes;
pub mod secrets;
pub mod sim;
pub mod state;
pub mod supervisor;
pub mod volumes;
pub mod wasm;

use anyhow::Context as _;
use skiff_api::Resources;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How a node daemon is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Scheduler base URL, such as `http://127.0.0.1:7070`.
    pub server: String,
    /// Join token: `<secret>.sha256:<CA fingerprint>` as the scheduler prints it
    /// (the fingerprint is what an https server's CA must match), or a bare secret
    /// for a plain-HTTP scheduler.
    pub token: String,
    /// Node name (a DNS label).
    pub name: String,
    /// Labels that deployment constraints match against.
    pub labels: BTreeMap<String, String>,
    /// CPU offered, in millicores; detected (cores × 1000) when `None`.
    pub cpu_millis: Option<u64>,
    /// Memory offered, in bytes; detected (MemTotal) when `None`.
    pub memory_bytes: Option<u64>,
    /// Where blobs, compiled code and logs live.
    pub data_dir: PathBuf,
    /// Address of the node API (port 0 picks one).
    pub listen: SocketAddr,
    /// URL the scheduler uses to reach the node API; by default
    /// `http://<listen ip>:<bound port>` (127.0.0.1 if the ip is unspecified).
    pub advertise: Option<String>,
    /// The OCI runtime binary for containers; found on PATH (crun, then runc) when
    /// `None`. Containers run only when the node is root and the runtime works.
    pub oci_runtime: Option<PathBuf>,
    /// How containers are networked (bridge via CNI, or loopback only).
    pub container_network: container::Network,
    /// Registry hosts (`host` or `host:port`) images may be pulled from over plain
    /// HTTP; registries on loopback always may, every other one needs HTTPS.
    pub insecure_registries: Vec<String>,
    /// Address of the ingress (port 0 picks one); by default port 8080 on the
    /// node API's ip (any free port when the node API's port is 0).
    pub ingress: Option<SocketAddr>,
    /// URL other nodes use to reach the ingress; by default `http://<ingress ip>:<port>`
    /// (127.0.0.1 if the ip is unspecified).
    pub ingress_advertise: Option<String>,
    /// How HTTP components are served (deadline, concurrency, host suffix).
    pub http: http::HttpConfig,
    /// What a clean stop ([`run_until`]) does with the containers: leave them
    /// running for the next daemon to adopt, or stop and remove them.
    pub containers_on_exit: container::OnExit,
    /// When cached layers, compiled code and blobs are removed ([`gc`]).
    pub image_gc: gc::GcConfig,
}

/// How often old replica logs are looked for, and how old they must be to go.
const LOG_GC_EVERY: Duration = Duration::from_secs(300);
const LOG_MAX_AGE: Duration = Duration::from_secs(3600);

/// Runs the node daemon until a fatal error (a rejected join token, a port that
/// cannot be bound). Dropping the future stops every replica.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    run_until(config, std::future::pending()).await
}

/// [`run`] until `stop` resolves too: then the node stops cleanly, its
/// containers left running or removed as `config.containers_on_exit` says.
pub async fn run_until(config: NodeConfig, stop: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
    skiff_api::manifest::validate_name(&config.name).map_err(|e| anyhow::anyhow!("invalid node name: {e}"))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    // Secret files of a previous run (a crash leaves them) go before anything starts.
    secrets::clear_all(&config.data_dir);
    let capacity = Resources::new(
        config.cpu_millis.unwrap_or_else(detect_cpu_millis),
        config.memory_bytes.unwrap_or_else(detect_memory_bytes),
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the node api", config.listen))?;
    let bound = listener.local_addr().context("cannot read the node api's bound address")?;
    let local_ip = if bound.ip().is_unspecified() {
        if bound.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() }
    } else {
        bound.ip()
    };
    let local_url = format!("http://{}", SocketAddr::new(local_ip, bound.port()));
    let address = config.advertise.clone().unwrap_or_else(|| local_url.clone());
    let addr_file = config.data_dir.join("node.addr");
    // Written whole then renamed, so a reader never sees half a URL.
    let tmp = config.data_dir.join("node.addr.tmp");
    std::fs::write(&tmp, &local_url)
        .and_then(|()| std::fs::rename(&tmp, &addr_file))
        .with_context(|| format!("cannot write {}", addr_file.display()))?;

    // The ingress: bound before anything registers, so that its URL is known.
    // A node API on port 0 (tests, several nodes on one host) gets an ingress
    // on any free port too, rather than all of them fighting over 8080.
    let default_port = if config.listen.port() == 0 { 0 } else { 8080 };
    let ingress_addr = config.ingress.unwrap_or_else(|| SocketAddr::new(config.listen.ip(), default_port));
    let ingress_listener = tokio::net::TcpListener::bind(ingress_addr)
        .await
        .with_context(|| format!("cannot listen on {ingress_addr} for the ingress (pass --ingress ADDR)"))?;
    let ingress_bound = ingress_listener.local_addr().context("cannot read the ingress's bound address")?;
    let ingress_local = SocketAddr::new(
        if ingress_bound.ip().is_unspecified() { local_ip } else { ingress_bound.ip() },
        ingress_bound.port(),
    );
    let ingress_url = config.ingress_advertise.clone().unwrap_or_else(|| format!("http://{ingress_local}"));
    let ingress_file = config.data_dir.join("ingress.addr");
    let tmp = config.data_dir.join("ingress.addr.tmp");
    std::fs::write(&tmp, format!("http://{ingress_local}"))
        .and_then(|()| std::fs::rename(&tmp, &ingress_file))
        .with_context(|| format!("cannot write {}", ingress_file.display()))?;
    let http_runtime = Arc::new(http::HttpRuntime::new(
        &config.data_dir,
        http::HttpConfig { ingress: Some(ingress_local), ..config.http.clone() },
    )?);
    // Container replicas serving HTTP, which the ingress routes to like HTTP
    // components.
    let ingress_link = Arc::new(routes::IngressLink {
        upstreams: Arc::default(),
        suffix: http_runtime.config().suffix.clone(),
        addr: Some(ingress_local),
    });
    let ingress = Arc::new(ingress::Ingress::new(&config.name, http_runtime.clone(), ingress_link.upstreams.clone())?);

    let wasm = Arc::new(wasm::WasmRuntime::new(&config.data_dir)?);
    let client = join_client(&config.server, &config.token)?;
    let endpoints_client = client.clone();
    let containers = {
        let (dir, wanted, network) = (config.data_dir.clone(), config.oci_runtime.clone(), config.container_network);
        let (insecure, on_exit) = (config.insecure_registries.clone(), config.containers_on_exit);
        tokio::task::spawn_blocking(move || {
            container::ContainerRuntime::start(&dir, wanted.as_deref(), network)
                .map(|c| c.with_insecure_registries(insecure).with_on_exit(on_exit))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the container runtime's start-up task failed: {e}")))
    };
    let containers = match containers {
        Ok(c) => {
            let network = if c.bridged() { "bridge" } else { "loopback only" };
            tracing::info!(runtime = %c.oci().bin.display(), version = %c.oci().version, network, "containers enabled");
            Some(Arc::new(c))
        }
        Err(why) => {
            tracing::warn!("containers disabled: {why}");
            None
        }
    };
    if let Some(c) = &containers {
        // The ingress names a container calling it by its bridge address
        // (namespace isolation, #20); weak, so it keeps no runtime alive.
        let c = Arc::downgrade(c);
        let outside = ingress::Caller::Outside;
        ingress.set_callers(Box::new(move |peer| c.upgrade().map_or(outside.clone(), |c| c.caller(peer))));
    }
    let exiting = containers.clone();
    let (relay_containers, relay_http) = (containers.clone(), http_runtime.clone());
    let runtimes = runtimes::Runtimes::new(&config.data_dir, wasm, Some(http_runtime), containers)?;
    let ctx = Arc::new(supervisor::Context {
        runtimes: Arc::new(runtimes),
        client: Some(client.clone()),
        data_dir: config.data_dir.clone(),
        ingress: Some(ingress_link),
    });
    let identity = agent::Identity {
        name: config.name.clone(),
        address,
        labels: config.labels.clone(),
        capacity,
        ingress: Some(ingress_url.clone()),
    };
    let agent = Arc::new(agent::Agent::new(identity, client, ctx));

    let api_state = Arc::new(api::ApiState {
        data_dir: config.data_dir.clone(),
        replicas: Box::new({
            let agent = Arc::downgrade(&agent);
            move || agent.upgrade().map(|a| a.statuses()).unwrap_or_default()
        }),
        relay: Some(Arc::new(exec::Relay::new(
            &config.name,
            &config.data_dir,
            relay_containers,
            Some(relay_http),
            Box::new({
                let agent = Arc::downgrade(&agent);
                move |id| {
                    let views = agent.upgrade().map(|a| a.views()).unwrap_or_default();
                    views.into_iter().find(|v| v.status.id == id).map(|v| (v.deployment, v.runtime))
                }
            }),
        ))),
    });
    let metrics_routes = metrics::router(Box::new({
        let agent = Arc::downgrade(&agent);
        move || agent.upgrade().map(|a| a.views()).unwrap_or_default()
    }));
    tracing::info!(node = %config.name, api = %local_url, data_dir = %config.data_dir.display(), "node api listening");
    tracing::info!(node = %config.name, ingress = %ingress_url, "ingress listening");

    // Every task lives in this set: dropping `run` aborts them all, and with
    // them the agent, its supervisors and their guests.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        axum::serve(listener, api::router(api_state).merge(metrics_routes)).await.context("the node api stopped")
    });
    tasks.spawn(ingress.clone().serve(ingress_listener));
    tasks.spawn(ingress.watch(endpoints_client));
    {
        let agent = agent.clone();
        tasks.spawn(async move {
            agent.register(0).await?;
            let watcher = agent.clone();
            tokio::try_join!(agent.heartbeat_loop(), watcher.watch_loop(), watcher.lease_loop())?;
            Ok(())
        });
    }
    {
        let agent = Arc::downgrade(&agent);
        let roots = move || agent.upgrade().map(|a| a.gc_roots()).unwrap_or_default();
        let (dir, gc) = (config.data_dir.clone(), config.image_gc);
        tasks.spawn(async move {
            gc::run(dir, gc, roots).await;
            Ok(())
        });
    }
    {
        let agent = agent.clone();
        let data_dir = config.data_dir.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(LOG_GC_EVERY).await;
                let running = agent.replica_ids();
                let dir = data_dir.clone();
                let _ = tokio::task::spawn_blocking(move || agent::collect_old_logs(&dir, &running, LOG_MAX_AGE)).await;
            }
        });
    }
    drop(agent);

    let ended = tokio::select! {
        ended = tasks.join_next() => ended,
        () = stop => None,
    };
    // The containers' exit holds from before their supervisors go (with the
    // agent, as the tasks end) until every teardown is done.
    if let Some(c) = &exiting {
        c.begin_exit();
    }
    tasks.shutdown().await;
    if let Some(c) = exiting {
        let _ = tokio::task::spawn_blocking(move || c.finish_exit()).await;
    }
    match ended {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(anyhow::anyhow!("a node task failed: {e}")),
        None => Ok(()),
    }
}

fn detect_cpu_millis() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64 * 1000).unwrap_or(1000)
}

fn detect_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| parse_meminfo(&s)).unwrap_or(1 << 30)
}

/// `MemTotal:  16318412 kB` → bytes.
fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests;

/// The scheduler's client for a node joining with `token`: it sends the token's
/// secret and, over HTTPS, trusts only the CA the token names.
pub fn join_client(server: &str, token: &str) -> anyhow::Result<skiff_api::Client> {
    let join: skiff_api::tls::JoinToken = token.parse()?;
    let client = skiff_api::Client::new(server).with_token(&join.secret);
    match join.ca {
        Some(ca) => Ok(client.with_ca(ca)),
        None if server.starts_with("https://") => anyhow::bail!(
            "the scheduler at {server} speaks HTTPS but the join token names no CA: use the whole token the server printed (SECRET.sha256:…) or pass --ca-fingerprint"
        ),
        None => Ok(client),
    }
}
