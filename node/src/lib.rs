//! skiff-node: the node daemon. It registers with the scheduler, heartbeats,
//! watches its assignments and converges to them, running each replica's
//! WebAssembly guest under a supervisor, with its logs on disk and served by the
//! node's own HTTP API.
//!
//! Modules: [`agent`] (scheduler conversation and convergence), [`supervisor`]
//! (one per replica: restart policy, backoff, status), [`wasm`] (wasmtime engine,
//! caches, running guests), [`logs`] (per-replica rotating logs), [`api`] (the
//! node API: `/healthz`, `/v1/replicas`, `/v1/replicas/{id}/logs`).

pub mod agent;
pub mod api;
pub mod logs;
pub mod supervisor;
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
    /// Join token.
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
}

/// How often old replica logs are looked for, and how old they must be to go.
const LOG_GC_EVERY: Duration = Duration::from_secs(300);
const LOG_MAX_AGE: Duration = Duration::from_secs(3600);

/// Runs the node daemon until a fatal error (a rejected join token, a port that
/// cannot be bound). Dropping the future stops every replica.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    skiff_api::manifest::validate_name(&config.name).map_err(|e| anyhow::anyhow!("invalid node name: {e}"))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
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

    let wasm = Arc::new(wasm::WasmRuntime::new(&config.data_dir)?);
    let client = skiff_api::Client::new(&config.server).with_token(&config.token);
    let ctx = Arc::new(supervisor::Context { wasm, client: Some(client.clone()), data_dir: config.data_dir.clone() });
    let identity = agent::Identity { name: config.name.clone(), address, labels: config.labels.clone(), capacity };
    let agent = Arc::new(agent::Agent::new(identity, client, ctx));

    let api_state = Arc::new(api::ApiState {
        data_dir: config.data_dir.clone(),
        replicas: Box::new({
            let agent = Arc::downgrade(&agent);
            move || agent.upgrade().map(|a| a.statuses()).unwrap_or_default()
        }),
    });
    tracing::info!(node = %config.name, api = %local_url, data_dir = %config.data_dir.display(), "node api listening");

    // Every task lives in this set: dropping `run` aborts them all, and with
    // them the agent, its supervisors and their guests.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { axum::serve(listener, api::router(api_state)).await.context("the node api stopped") });
    {
        let agent = agent.clone();
        tasks.spawn(async move {
            agent.register(0).await?;
            let watcher = agent.clone();
            tokio::try_join!(agent.heartbeat_loop(), watcher.watch_loop())?;
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

    match tasks.join_next().await {
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
