//! `skiff server`, `skiff node` and `skiff dev`: the daemons, which run until a
//! signal (SIGINT or SIGTERM) or a fatal error.

use super::{parse_duration, parse_labels};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use skiff_api::quantity::{Cpu, Memory};
use skiff_api::tls::{CaFingerprint, JoinToken};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the scheduler ranks the nodes that fit a replica.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScoringArg {
    /// Fill the busiest nodes first (keeps whole nodes free)
    Binpack,
    /// Prefer the emptiest nodes (spreads load)
    Spread,
}

impl From<ScoringArg> for skiff_scheduler::Scoring {
    fn from(s: ScoringArg) -> Self {
        match s {
            ScoringArg::Binpack => skiff_scheduler::Scoring::BinPack,
            ScoringArg::Spread => skiff_scheduler::Scoring::Spread,
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    /// Manage the control plane instead of running a server
    #[command(subcommand)]
    pub action: Option<ServerAction>,
    /// Address of the API and dashboard
    #[arg(long, env = "SKIFF_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the state, blobs and join token live
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "./skiff-data")]
    data_dir: PathBuf,
    /// How to rank nodes that fit a replica
    #[arg(long, value_enum, default_value = "binpack")]
    scoring: ScoringArg,
    /// How often nodes heartbeat (500ms, 1s, ...)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// How long past a missed heartbeat a node is declared down (at least three
    /// heartbeat intervals once the interval grows with the cluster)
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    node_grace: Duration,
    /// How long a blob (an image's or a Wasm artifact's) that no deployment
    /// revision, job, cron or imported image refers to stays before it is deleted
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    blob_gc_grace: Duration,
    /// Heartbeats per second the scheduler asks for at most: in clusters of more
    /// nodes than this, the heartbeat interval grows to keep the rate
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    max_heartbeats_per_second: u32,
    /// Most replicas that rebalancing (`rebalance: true`, `skiff rebalance`)
    /// moves a minute in the whole cluster
    #[arg(long, default_value_t = skiff_scheduler::REBALANCE_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    rebalance_rate: u32,
    /// Re-seal every secret under a new key at start-up and forget the old keys
    #[arg(long)]
    rotate_secret_key: bool,
    /// Serve /metrics and /v1/prometheus/targets without a token (for scrapers)
    #[arg(long)]
    metrics_open: bool,
    /// Most deployments, secrets and volumes the cluster holds, each
    #[arg(long, default_value_t = skiff_scheduler::MAX_OBJECTS)]
    max_objects: usize,
    /// More names (DNS names or IPs) the server certificate is valid for, besides
    /// localhost, 127.0.0.1, the listen address (every interface's if unspecified)
    /// and the host name (repeatable, or comma-separated)
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Serve the API over plain HTTP, not HTTPS: tokens and secrets cross the
    /// network readable (for a trusted network or a TLS-terminating proxy only)
    #[arg(long)]
    insecure_plain_http: bool,
    /// Where the cluster state lives: `sqlite` (DATA_DIR/state.db) or
    /// etcd://HOST:2379,HOST:2379[/PREFIX], shared by several servers, one of which
    /// leads (etcd needs --max-txn-ops 65536 --max-request-bytes 33554432)
    #[arg(long, env = "SKIFF_STORE", default_value = "sqlite", value_name = "URL")]
    store: String,
    /// This server's name among several [default: HOSTNAME-PORT]
    #[arg(long)]
    name: Option<String>,
    /// The URL other servers reach this one at [default: from --listen]
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// Join the cluster already in --store: the join token of one of its servers
    /// (its DATA_DIR/join-token), which opens the CA and keys it shares
    #[arg(long, env = "SKIFF_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
}

/// `skiff server migrate`: the verbs on the control plane.
#[derive(Debug, clap::Subcommand)]
pub enum ServerAction {
    /// Copy a stopped SQLite server's cluster (its data dir) into an empty etcd,
    /// with the CA, tokens and secret keys; then start servers with --store on it
    Migrate {
        /// The data dir of the SQLite server (stop it first)
        #[arg(long, value_name = "DATA_DIR")]
        from: PathBuf,
        /// The etcd to copy into: etcd://HOST:2379,...[/PREFIX]
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

/// Runs a server verb.
pub async fn server_action(action: ServerAction) -> anyhow::Result<()> {
    match action {
        ServerAction::Migrate { from, to } => {
            let done = skiff_scheduler::migrate(&from, &to).await?;
            println!("{done}");
            println!(
                "start the servers with: skiff server --store {to} --data-dir {} (the others with --join-token from its join-token file)",
                from.display()
            );
            Ok(())
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// Manage nodes instead of running one
    #[command(subcommand)]
    pub action: Option<NodeAction>,
    /// The join token the server printed at its first start
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the join token (such as the server's DATA_DIR/join-token)
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The node's name [default: the host name]
    #[arg(long)]
    name: Option<String>,
    /// Labels for deployment constraints: k=v,k2=v2
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// CPU offered to replicas, overriding detection (2, 1500m)
    #[arg(long)]
    cpu: Option<Cpu>,
    /// Memory offered to replicas, overriding detection (4Gi, 512Mi)
    #[arg(long)]
    memory: Option<Memory>,
    /// Where the node keeps compiled code, blobs and logs
    #[arg(long, env = "SKIFF_NODE_DATA_DIR", default_value = "./skiff-node")]
    data_dir: PathBuf,
    /// Address of the node's own API (logs, metrics)
    #[arg(long, default_value = "127.0.0.1:7071")]
    listen: SocketAddr,
    /// The URL the scheduler should use to reach this node [default: from --listen]
    #[arg(long)]
    advertise: Option<String>,
    /// The OCI runtime for containers [default: crun, else runc, whichever works here]
    #[arg(long, env = "SKIFF_OCI_RUNTIME", value_name = "PATH")]
    oci_runtime: Option<PathBuf>,
    /// Container networking: bridge (CNI bridge + host-local, needs
    /// containernetworking-plugins), loopback (a private namespace, no network), or
    /// auto (bridge when the plugins are installed)
    #[arg(long, value_enum, default_value = "auto", env = "SKIFF_CONTAINER_NETWORK")]
    container_network: ContainerNetworkArg,
    /// A registry host (HOST or HOST:PORT) to pull images from over plain HTTP;
    /// registries on loopback need no flag, every other one needs HTTPS (repeatable)
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
    /// Address of the ingress that serves HTTP deployments [default: port 8080 on the --listen ip, any free port if --listen has port 0]
    #[arg(long, env = "SKIFF_INGRESS", value_name = "ADDR")]
    ingress: Option<SocketAddr>,
    /// The URL other nodes should use to reach this node's ingress [default: from --ingress]
    #[arg(long, value_name = "URL")]
    ingress_advertise: Option<String>,
    #[command(flatten)]
    http: HttpArgs,
    /// Run N simulated nodes instead of a real one: they register, heartbeat and
    /// acknowledge their assignments but run nothing (for benchmarks)
    #[arg(long, value_name = "N")]
    simulate: Option<usize>,
    /// Names of simulated nodes: PREFIX-00000, PREFIX-00001, ... [default: sim]
    #[arg(long, requires = "simulate")]
    name_prefix: Option<String>,
    /// Stop and remove the node's containers when it stops (SIGINT, SIGTERM).
    /// Without it they keep running, and the next start with this data
    /// directory adopts those still assigned here and removes the rest
    #[arg(long)]
    stop_containers_on_exit: bool,
    /// Remove unpacked image layers, compiled Wasm code and cached blobs that
    /// no replica has used for this long
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    image_gc_after: Duration,
    /// When the data dir's file system is fuller than this, remove the least
    /// recently used unused layers, code and blobs, whatever their age...
    #[arg(long, default_value = "85%", value_parser = skiff_node::gc::parse_percent, value_name = "PERCENT")]
    image_gc_high: f64,
    /// ...until it is no fuller than this
    #[arg(long, default_value = "75%", value_parser = skiff_node::gc::parse_percent, value_name = "PERCENT")]
    image_gc_low: f64,
}

/// `skiff node rm`: the verbs on nodes (the bare `skiff node` runs one).
#[derive(Debug, clap::Subcommand)]
pub enum NodeAction {
    /// Remove a node: its replicas are replaced elsewhere and its credential is
    /// revoked (it can come back only by joining again with the join token)
    #[command(visible_alias = "delete")]
    Rm {
        /// The node's name
        name: String,
    },
    /// Mark a node unschedulable: it takes no new replicas; what it runs keeps running
    Cordon {
        /// The node's name
        name: String,
    },
    /// Let a cordoned or drained node take new replicas again (ends a drain)
    Uncordon {
        /// The node's name
        name: String,
    },
    /// Cordon a node and move its replicas elsewhere, each replacement started
    /// and ready before the old replica stops; waits until the node is empty
    Drain(super::node::DrainArgs),
}

/// Runs a node verb.
pub async fn node_action(action: NodeAction, client: &skiff_api::Client) -> anyhow::Result<()> {
    match action {
        NodeAction::Rm { name } => {
            client.remove_node(&name).await?;
            println!("node {name} removed; its replicas are being replaced");
            Ok(())
        }
        NodeAction::Cordon { name } => super::node::cordon(&name, true, client).await,
        NodeAction::Uncordon { name } => super::node::cordon(&name, false, client).await,
        NodeAction::Drain(args) => super::node::drain(args, client).await,
    }
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address of the API and dashboard
    #[arg(long, env = "SKIFF_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the state lives; the node keeps its data in DATA_DIR/node
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "./.skiff")]
    data_dir: PathBuf,
    /// How to rank nodes that fit a replica
    #[arg(long, value_enum, default_value = "binpack")]
    scoring: ScoringArg,
    /// Address of the ingress that serves HTTP deployments, written to
    /// DATA_DIR/ingress.addr [default: 127.0.0.1:8080, any free port if --listen has port 0]
    #[arg(long, env = "SKIFF_INGRESS", value_name = "ADDR")]
    ingress: Option<SocketAddr>,
    /// Where the cluster state lives: `sqlite` (DATA_DIR/state.db) or
    /// etcd://HOST:2379[/PREFIX] (as `skiff server --store`)
    #[arg(long, env = "SKIFF_STORE", default_value = "sqlite", value_name = "URL")]
    store: String,
    #[command(flatten)]
    http: HttpArgs,
}

/// How a node serves HTTP components.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Host suffix that names deployments at the ingress (Host: NAME.SUFFIX)
    #[arg(long, default_value = skiff_node::http::DEFAULT_SUFFIX, value_name = "SUFFIX")]
    ingress_suffix: String,
    /// Longest an HTTP request may run before it gets a 504 (30s, 500ms, ...)
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Root certificates (PEM) that HTTP components' outbound https trusts
    /// besides the system's (a private CA)
    #[arg(long, value_name = "PATH")]
    outbound_ca_file: Option<PathBuf>,
    /// Longest the ingress holds a request for a deployment scaled to zero
    /// while a replica starts, before it answers 504
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    activation_timeout: Duration,
    /// Most requests the ingress holds per deployment while it starts from
    /// zero; more get 503 with Retry-After
    #[arg(long, default_value_t = skiff_node::activation::DEFAULT_QUEUE, value_name = "N")]
    activation_queue: usize,
}

impl HttpArgs {
    fn config(&self) -> anyhow::Result<skiff_node::http::HttpConfig> {
        let suffix = self.ingress_suffix.trim_matches('.').to_ascii_lowercase();
        if suffix.is_empty() || suffix.split('.').any(|l| skiff_api::manifest::validate_name(l).is_err()) {
            bail!("--ingress-suffix {:?} must be a domain name such as skiff.local", self.ingress_suffix);
        }
        if self.request_timeout.is_zero() {
            bail!("--request-timeout must be more than 0");
        }
        if self.activation_timeout.is_zero() {
            bail!("--activation-timeout must be more than 0");
        }
        if self.activation_queue == 0 {
            bail!("--activation-queue must be at least 1");
        }
        Ok(skiff_node::http::HttpConfig {
            request_timeout: self.request_timeout,
            suffix,
            outbound_ca_file: self.outbound_ca_file.clone(),
            activation_timeout: self.activation_timeout,
            activation_queue: self.activation_queue,
            ..Default::default()
        })
    }
}

/// `dir` made absolute against the working directory, once at start: runc
/// resolves a relative mount source against the container's bundle, overlayfs
/// and the CNI plugins need absolute paths, and a log line should say where
/// the data is wherever it is read.
fn absolute(flag: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("cannot make {flag} {} an absolute path", dir.display()))
}

pub async fn server(mut args: ServerArgs) -> anyhow::Result<()> {
    args.data_dir = absolute("--data-dir", &args.data_dir)?;
    let first_start = !args.data_dir.join("join-token").exists();
    let config = skiff_scheduler::ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        scoring: args.scoring.into(),
        heartbeat_interval: args.heartbeat_interval,
        max_heartbeats_per_second: args.max_heartbeats_per_second,
        rebalance_per_minute: args.rebalance_rate,
        node_grace: args.node_grace,
        rotate_secret_key: args.rotate_secret_key,
        metrics_open: args.metrics_open,
        max_objects: args.max_objects,
        plain_http: args.insecure_plain_http,
        tls_sans: args.tls_san.clone(),
        store: Some(args.store.clone()),
        name: args.name.clone(),
        advertise: args.advertise.clone(),
        join_token: args.join_token.clone(),
        blob_gc_grace: args.blob_gc_grace,
    };
    let server = skiff_scheduler::start(config).await.with_context(|| {
        format!("cannot start the scheduler on {} with data in {}", args.listen, args.data_dir.display())
    })?;
    println!("skiff server: listening at {} (data in {})", server.url, args.data_dir.display());
    if args.insecure_plain_http {
        eprintln!(
            "warning: --insecure-plain-http: the API is plain HTTP; tokens, secrets and node credentials cross the network readable"
        );
    } else {
        println!(
            "CA fingerprint: {} ; trust it elsewhere with: skiff --server {} --ca-fingerprint {} get nodes (or copy {} to ~/.config/skiff/ca.crt)",
            server.ca_fingerprint,
            server.url,
            server.ca_fingerprint,
            args.data_dir.join("ca.crt").display()
        );
    }
    let token_file = args.data_dir.join("join-token");
    println!(
        "admin API token in {} ; use it with: SKIFF_TOKEN=$(cat {}) skiff get nodes",
        args.data_dir.join("admin-token").display(),
        args.data_dir.join("admin-token").display()
    );
    if first_start {
        println!(
            "join token: {} ; start a node with: skiff node --server {} --token {}",
            server.join_token, server.url, server.join_token
        );
    } else {
        println!(
            "join token in {} ; start a node with: skiff node --server {} --token-file {}",
            token_file.display(),
            server.url,
            token_file.display()
        );
    }
    tokio::select! {
        res = server.wait() => res.context("the scheduler stopped"),
        sig = shutdown_signal() => {
            tracing::info!("{sig}: stopping the scheduler");
            Ok(())
        }
    }
}

pub async fn node(mut args: NodeArgs, server: String, ca: Option<CaFingerprint>) -> anyhow::Result<()> {
    args.data_dir = absolute("--data-dir", &args.data_dir)?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the join token from {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!(
            "a join token is needed: pass --token TOKEN (or SKIFF_TOKEN) or --token-file PATH; the server printed it at its first start and keeps it in its DATA_DIR/join-token"
        ),
    };
    if token.is_empty() {
        bail!("the join token is empty; pass the one the server printed (or its DATA_DIR/join-token)");
    }
    let mut join: JoinToken = token.parse().context("the join token")?;
    if let Some(flag) = ca {
        match join.ca {
            Some(named) if named != flag => {
                bail!("the join token names the CA {named} but --ca-fingerprint says {flag}: give one of them")
            }
            _ => join.ca = Some(flag),
        }
    }
    if join.ca.is_some() && server.starts_with("http://") {
        tracing::warn!("{server} is plain HTTP: the CA fingerprint is not checked");
    }
    let token = join.to_string();
    if let Some(count) = args.simulate {
        return simulate(args, count, server, token).await;
    }
    let name = match args.name {
        Some(n) => n,
        None => host_name(),
    };
    skiff_api::manifest::validate_name(&name).map_err(anyhow::Error::msg).context("node name (set --name)")?;
    let labels = parse_labels("--labels", &args.labels)?;
    if args.image_gc_low > args.image_gc_high {
        bail!("--image-gc-low ({}%) must not be above --image-gc-high ({}%)", args.image_gc_low, args.image_gc_high);
    }
    let image_gc = skiff_node::gc::GcConfig {
        after: args.image_gc_after,
        high_percent: args.image_gc_high,
        low_percent: args.image_gc_low,
    };
    let config = skiff_node::NodeConfig {
        server: server.clone(),
        token,
        name: name.clone(),
        labels,
        cpu_millis: args.cpu.map(|c| c.0),
        memory_bytes: args.memory.map(|m| m.0),
        data_dir: args.data_dir,
        listen: args.listen,
        advertise: args.advertise,
        oci_runtime: args.oci_runtime,
        container_network: args.container_network.into(),
        insecure_registries: args.insecure_registry,
        ingress: args.ingress,
        ingress_advertise: args.ingress_advertise,
        http: args.http.config()?,
        containers_on_exit: if args.stop_containers_on_exit {
            skiff_node::container::OnExit::Stop
        } else {
            skiff_node::container::OnExit::Keep
        },
        image_gc,
    };
    tracing::info!("node {name} joining {server}");
    let stop = async {
        let sig = shutdown_signal().await;
        tracing::info!("{sig}: stopping node {name}");
    };
    skiff_node::run_until(config, stop).await.with_context(|| format!("node {name} stopped"))
}

/// `skiff node --simulate N`: N fake nodes in this process (see `skiff_node::sim`).
async fn simulate(args: NodeArgs, count: usize, server: String, token: String) -> anyhow::Result<()> {
    if args.name.is_some() {
        bail!("--name names one real node; simulated nodes are named by --name-prefix");
    }
    let config = skiff_node::sim::SimConfig {
        server: server.clone(),
        token,
        count,
        name_prefix: args.name_prefix.unwrap_or_else(|| "sim".into()),
        capacity: skiff_api::Resources::new(args.cpu.map_or(4000, |c| c.0), args.memory.map_or(16 << 30, |m| m.0)),
        labels: parse_labels("--labels", &args.labels)?,
    };
    tracing::info!("simulating {count} nodes against {server}");
    tokio::select! {
        res = skiff_node::sim::simulate(config) => res.context("simulated nodes stopped"),
        sig = shutdown_signal() => {
            tracing::info!("{sig}: stopping {count} simulated nodes");
            Ok(())
        }
    }
}

/// Raises the soft limit of open files to the hard limit: a scheduler holds one
/// socket per node long-poll, and a process of simulated nodes as many again.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open files limit: {e}"),
    }
}

pub async fn dev(mut args: DevArgs) -> anyhow::Result<()> {
    args.data_dir = absolute("--data-dir", &args.data_dir)?;
    let config = skiff_scheduler::ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        scoring: args.scoring.into(),
        store: Some(args.store.clone()),
        ..Default::default()
    };
    let server = skiff_scheduler::start(config).await.with_context(|| {
        format!(
            "cannot start the scheduler on {} with data in {} (is another skiff already running? pass --listen)",
            args.listen,
            args.data_dir.display()
        )
    })?;
    let node_name = "dev".to_string();
    let node_config = skiff_node::NodeConfig {
        server: server.url.clone(),
        token: server.join_token.clone(),
        name: node_name.clone(),
        labels: Default::default(),
        cpu_millis: None,
        memory_bytes: None,
        data_dir: args.data_dir.join("node"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise: None,
        oci_runtime: None,
        container_network: skiff_node::container::Network::Auto,
        insecure_registries: vec![],
        ingress: Some(
            args.ingress
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], if args.listen.port() == 0 { 0 } else { 8080 }))),
        ),
        ingress_advertise: None,
        http: args.http.config()?,
        // A development tool: nothing it ran outlives it.
        containers_on_exit: skiff_node::container::OnExit::Stop,
        image_gc: Default::default(),
    };
    let url = server.url.clone();
    // The server made them at start-up (admin-token, ca.crt); the CLI run in this
    // directory finds them too.
    let admin_token = std::fs::read_to_string(args.data_dir.join("admin-token")).unwrap_or_default();
    let client = skiff_api::Client::new(&url).with_ca(server.ca_fingerprint).with_token(admin_token.trim());
    let (stop_node, node_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut node_task = tokio::spawn(skiff_node::run_until(node_config, async {
        let _ = node_stopped.await;
    }));
    let mut server_task = tokio::spawn(server.wait());

    // Say "ready" only once the node has registered, so that a script that waits
    // for this line can deploy at once.
    let ready = wait_for_node(client, &node_name);
    tokio::pin!(ready);
    let mut announced = false;
    loop {
        tokio::select! {
            ok = &mut ready, if !announced => {
                announced = true;
                if ok {
                    // The node wrote its ingress address before registering; keep
                    // a copy where a script looks for it.
                    let ingress = std::fs::read_to_string(args.data_dir.join("node").join("ingress.addr")).unwrap_or_default();
                    if let Err(e) = std::fs::write(args.data_dir.join("ingress.addr"), &ingress) {
                        tracing::warn!("cannot write {}: {e}", args.data_dir.join("ingress.addr").display());
                    }
                    // With its token: opened at the bare URL the page has none.
                    // Before the ready line, which scripts wait for.
                    println!("dashboard: {url}/?token={}", admin_token.trim());
                    println!("skiff dev: server at {url}, ingress at {ingress}, node {node_name} ready; try: skiff deploy FILE.wasm --name hello");
                } else {
                    tracing::warn!("node {node_name} has not registered after 30s; still waiting");
                }
            }
            res = &mut server_task => {
                node_task.abort();
                return flatten(res).context("the scheduler stopped");
            }
            res = &mut node_task => {
                server_task.abort();
                return flatten(res).with_context(|| format!("node {node_name} stopped"));
            }
            sig = shutdown_signal() => {
                tracing::info!("{sig}: stopping skiff dev (its containers are stopped and removed)");
                // The node first, while the scheduler still answers it; a
                // second signal does not wait for the containers' grace.
                let _ = stop_node.send(());
                tokio::select! {
                    res = &mut node_task => {
                        if let Err(e) = flatten(res) {
                            tracing::warn!("node {node_name}: {e:#}");
                        }
                    }
                    sig = shutdown_signal() => tracing::warn!("{sig}: stopping at once"),
                }
                node_task.abort();
                server_task.abort();
                return Ok(());
            }
        }
    }
}

fn flatten(res: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match res {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("task failed: {e}")),
    }
}

/// Polls the scheduler until node `name` is registered and ready, for up to 30 s.
async fn wait_for_node(client: skiff_api::Client, name: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Ok(node) = client.node(name).await
            && node.state == skiff_api::NodeState::Ready
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Resolves on SIGINT or SIGTERM, naming which.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// The host name made into a valid node name (a DNS label), or `node`.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    sanitize_name(raw.trim())
}

fn sanitize_name(raw: &str) -> String {
    // Only the first label of a FQDN: "web1.example.com" → "web1".
    let first = raw.split('.').next().unwrap_or_default();
    let mut name: String =
        first.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(63).collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() { "node".to_string() } else { name }
}

#[cfg(test)]
mod tests {
    use super::sanitize_name;

    #[test]
    fn host_names_become_node_names() {
        assert_eq!(sanitize_name("Web_1.example.com"), "web-1");
        assert_eq!(sanitize_name(""), "node");
        assert_eq!(sanitize_name("--x--"), "x");
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ContainerNetworkArg {
    /// Bridge when the CNI plugins are installed, else loopback
    Auto,
    /// CNI bridge + host-local addresses
    Bridge,
    /// A private network namespace with loopback only
    Loopback,
}

impl From<ContainerNetworkArg> for skiff_node::container::Network {
    fn from(a: ContainerNetworkArg) -> Self {
        match a {
            ContainerNetworkArg::Auto => Self::Auto,
            ContainerNetworkArg::Bridge => Self::Bridge,
            ContainerNetworkArg::Loopback => Self::Loopback,
        }
    }
}
