//! skiff-scheduler: the control plane. It keeps the cluster's desired state in
//! SQLite, places replicas on nodes with a pure placement function, runs the
//! level-triggered controllers (deployments at their count, dead nodes replaced)
//! and serves the HTTP API that nodes and the CLI use.

mod auth;
mod autoscale;
mod blobs;
mod canary;
mod cluster;
mod dashboard;
mod endpoints;
mod error;
pub mod etcd;
mod files;
mod follow;
mod heartbeats;
mod http;
mod images;
mod metrics;
pub mod placement;
mod rollout;
mod secrets;
mod state;
pub mod store;
pub mod tls;

pub use placement::Scoring;
pub use state::MAX_OBJECTS;
pub use state::REBALANCE_PER_MINUTE;

use anyhow::Context;
use skiff_api::tls::{CaFingerprint, JoinToken};
use state::{Policy, State};
use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the API, dashboard and metrics; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the state file, blobs and join token live.
    pub data_dir: PathBuf,
    /// Resource scoring of placement.
    pub scoring: Scoring,
    /// How often nodes heartbeat (in clusters of up to `max_heartbeats_per_second` nodes).
    pub heartbeat_interval: Duration,
    /// Heartbeats per second the scheduler asks for at most; in larger clusters
    /// the interval grows, and the grace with it (at least three intervals).
    pub max_heartbeats_per_second: u32,
    /// Most replicas rebalancing moves a minute in the whole cluster.
    pub rebalance_per_minute: u32,
    /// How long a node may miss heartbeats before it is down and its replicas are
    /// replaced.
    pub node_grace: Duration,
    /// Re-seal every secret under a new key at start-up, then forget the old keys.
    pub rotate_secret_key: bool,
    /// Serve `/metrics` and `/v1/prometheus/targets` without a token, for scrapers.
    pub metrics_open: bool,
    /// Most deployments, secrets and volumes each.
    pub max_objects: usize,
    /// Serve the API over plain HTTP instead of HTTPS (`--insecure-plain-http`).
    pub plain_http: bool,
    /// More names (DNS names or IPs) for the server certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// The store: `None` (or `sqlite`) for `state.db` in the data dir, or
    /// `etcd://host:2379,...` to share one with other servers (`--store`).
    pub store: Option<String>,
    /// This server's name among several (`--name`) [default: host name-port].
    pub name: Option<String>,
    /// The URL other servers use to reach this one (`--advertise`) [default: from the listen address].
    pub advertise: Option<String>,
    /// The join token of the cluster a server on etcd joins (`--join-token`); it
    /// opens the CA and keys the first server sealed into the store.
    pub join_token: Option<String>,
    /// How long a blob no deployment revision or imported image refers to
    /// stays before the blob collection deletes it (`--blob-gc-grace`).
    pub blob_gc_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("skiff-data"),
            scoring: Scoring::BinPack,
            heartbeat_interval: Duration::from_secs(1),
            max_heartbeats_per_second: 5000,
            rebalance_per_minute: state::REBALANCE_PER_MINUTE,
            node_grace: Duration::from_secs(3),
            rotate_secret_key: false,
            metrics_open: false,
            max_objects: state::MAX_OBJECTS,
            plain_http: false,
            tls_sans: Vec::new(),
            store: None,
            name: None,
            advertise: None,
            join_token: None,
            blob_gc_grace: Duration::from_secs(600),
        }
    }
}

/// What the routes and controllers share.
pub(crate) struct Core {
    state: Mutex<State>,
    wake: Notify,
    blobs: blobs::Blobs,
    /// API tokens, node credentials and the join token.
    auth: auth::Auth,
    config: ServerConfig,
    http: reqwest::Client,
    /// Digests already validated as WebAssembly.
    valid_wasm: Mutex<HashSet<String>>,
    /// Replica usage from heartbeats, for the dashboard.
    live: dashboard::Live,
    /// Recent usage of autoscaled replicas, from heartbeats.
    autoscale: Mutex<autoscale::Window>,
    /// Canary replicas' request figures, from heartbeats (#18).
    canary: Mutex<canary::Meter>,
    /// Heartbeats waiting to be applied together.
    heartbeats: heartbeats::Batcher,
    /// When each node last heartbeated, recorded without the state lock.
    liveness: Arc<state::Liveness>,
    /// The other servers, when the store is shared (etcd).
    cluster: Option<Arc<cluster::Cluster>>,
}

impl Core {
    /// The working set. Never held across an `.await`.
    ///
    /// When the controllers hold it, an async handler that waited here would
    /// stall one of the runtime's few workers and every request queued on it
    /// (heartbeats included); the wait is handed to `block_in_place` instead,
    /// which moves the worker's other tasks to another thread.
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every
        // change is a transaction that reloads on failure. Carry on.
        match self.state.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let multi_thread = tokio::runtime::Handle::try_current()
                    .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
                let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
                if multi_thread { tokio::task::block_in_place(lock) } else { lock() }
            }
        }
    }

    /// Asks the controllers to run now.
    fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A running scheduler.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its base URL.
    pub url: String,
    /// The token nodes join with: `<secret>.sha256:<CA fingerprint>` (see
    /// `skiff_api::tls::JoinToken`).
    pub join_token: String,
    /// The fingerprint of the scheduler's CA, which clients pin.
    pub ca_fingerprint: CaFingerprint,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Runs until the server fails.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.serve.await.context("server task")?.context("serving the API")
    }
}

/// Reads the join token from `data_dir`, making its secret (0600) at first start.
/// The file holds the whole token, the CA's fingerprint included; it is rewritten
/// when the CA changed (or the file predates TLS), the secret kept.
fn join_token(data_dir: &Path, ca: CaFingerprint) -> anyhow::Result<JoinToken> {
    let path = data_dir.join("join-token");
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    if let Ok(t) = stored.trim().parse::<JoinToken>()
        && t.ca == Some(ca)
    {
        return Ok(t);
    }
    let secret = match stored.trim().split_once('.').map_or(stored.trim(), |(s, _)| s) {
        "" => {
            let mut raw = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .context("reading /dev/urandom for the join token")?;
            format!("skj_{}", hex::encode(raw))
        }
        kept => kept.to_string(),
    };
    let token = JoinToken { secret, ca: Some(ca) };
    files::write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Connections the kernel queues before the server accepts them. The default
/// (128) overflows when thousands of nodes connect at once (a scheduler restart,
/// a cluster joining): dropped SYNs are retried after 1 s and 3 s, long enough
/// for live nodes to miss their grace period. The kernel caps it at somaxconn.
const LISTEN_BACKLOG: u32 = 8192;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Opens the data dir, binds the listener and starts the API and controllers.
pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let etcd = match config.store.as_deref() {
        None | Some("sqlite") | Some("") => None,
        Some(url) => Some(url.parse::<etcd::Endpoints>()?),
    };
    let names = tls::names(config.listen, &config.tls_sans)?;
    let etcd_client = match &etcd {
        Some(ep) => {
            let client = etcd::connect(ep).await.with_context(|| format!("connecting to {ep}"))?;
            cluster::bootstrap(&client, ep, &config.data_dir, config.join_token.as_deref(), || {
                let tls = tls::open(&config.data_dir, &names)?;
                join_token(&config.data_dir, tls.fingerprint)?;
                auth::admin_token(&config.data_dir)?;
                secrets::Keyring::open(&config.data_dir)?;
                Ok(())
            })
            .await
            .with_context(|| format!("sharing the cluster's CA and keys through {ep}"))?;
            Some(client)
        }
        None => None,
    };
    let tls = tls::open(&config.data_dir, &names).context("opening the API's CA and certificate")?;
    let token = join_token(&config.data_dir, tls.fingerprint)?;
    let listener = bind(config.listen).with_context(|| {
        format!("binding {} (is another skiff server running? pick another with --listen)", config.listen)
    })?;
    let addr = listener.local_addr()?;
    let url = if config.plain_http { format!("http://{addr}") } else { format!("https://{addr}") };
    // `server.url` is the sign, for tools and tests, that the server is up: what
    // a client reads from the data dir (the CA, the admin token) exists before
    // it, and it is written whole. (Written first, a reader polling for it could
    // find no admin token yet, or half a URL.)
    auth::admin_token(&config.data_dir)?;
    files::write_atomic(&config.data_dir.join("server.url"), format!("{url}\n").as_bytes(), 0o644)?;
    let plain_http = config.plain_http;
    let app = match (etcd, etcd_client) {
        (Some(ep), Some(client)) => {
            let advertise = match &config.advertise {
                Some(a) => a.trim_end_matches('/').to_string(),
                None if addr.ip().is_unspecified() => {
                    anyhow::bail!(
                        "--listen {addr} is every interface: say with --advertise how other servers reach this one"
                    )
                }
                None => url.clone(),
            };
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let name = config.name.clone().unwrap_or_else(|| format!("{}-{}", host.trim(), addr.port()));
            skiff_api::manifest::validate_name(&name).map_err(|e| anyhow::anyhow!("server name {name:?}: {e}"))?;
            let me = skiff_api::ServerInfo { name, url: advertise, started_ms: skiff_api::now_ms(), leader: false };
            let admin = auth::admin_token(&config.data_dir)?;
            let blobs = blobs::Blobs::open(&config.data_dir).context("opening the blob store")?;
            let cluster =
                Arc::new(cluster::Cluster::new(client.clone(), ep.clone(), me, tls.fingerprint, admin, blobs)?);
            let (client2, ep2, config2, secret) = (client.clone(), ep.clone(), config.clone(), token.secret.clone());
            let follow: cluster::Follow = Arc::new(move |cluster| {
                // The same API on a store that refuses writes; only reads reach it.
                let config = ServerConfig { rotate_secret_key: false, ..config2.clone() };
                let backend = etcd::Etcd::reader(client2.clone(), &ep2.prefix);
                let core = core(config, store::Store::new(Box::new(backend)), &secret, Some(cluster))?;
                follow::Reads::start(core.clone(), http::router(core), client2.clone(), &ep2.prefix)
            });
            let secret = token.secret.clone();
            let lead: cluster::Lead = Arc::new(move |fence, cluster| {
                let backend = etcd::Etcd::open(client.clone(), &ep.prefix, Some(fence))?;
                let resign = cluster.resign();
                let core = core(config.clone(), store::Store::new(Box::new(backend)), &secret, Some(cluster))?;
                core.state().resign = Some(resign);
                let tasks = vec![
                    tokio::spawn(controllers(core.clone())).abort_handle(),
                    tokio::spawn(heartbeats::run(core.clone())).abort_handle(),
                    tokio::spawn(blobs::run_collection(core.clone(), config.blob_gc_grace)).abort_handle(),
                ];
                Ok((http::router(core), tasks))
            });
            tokio::spawn(cluster.clone().run(lead, follow));
            axum::Router::new().fallback(move |req: axum::extract::Request| cluster.clone().serve(req))
        }
        _ => {
            let db = config.data_dir.join("state.db");
            let store = store::Store::open(&db).with_context(|| format!("opening {}", db.display()))?;
            let grace = config.blob_gc_grace;
            let core = core(config, store, &token.secret, None)?;
            metrics::METRICS.leader.set(1);
            tokio::spawn(controllers(core.clone()));
            tokio::spawn(heartbeats::run(core.clone()));
            tokio::spawn(blobs::run_collection(core.clone(), grace));
            http::router(core)
        }
    };
    let serve = if plain_http {
        tracing::warn!(
            "serving the API over plain HTTP (--insecure-plain-http): tokens and secrets cross the network readable"
        );
        tokio::spawn(async move { axum::serve(listener, app).await })
    } else {
        let listener = tls::TlsListener::new(listener, tls.config)?;
        tokio::spawn(async move { axum::serve(listener, app).await })
    };
    tracing::info!("skiff server listening on {url}");
    Ok(Server { addr, url, join_token: token.to_string(), ca_fingerprint: tls.fingerprint, serve })
}

/// `skiff server migrate`: copies the cluster in `data_dir` (SQLite) into the
/// empty etcd at `to`, with the CA, tokens and keys the servers on etcd share.
/// Returns what was copied, in words.
pub async fn migrate(data_dir: &Path, to: &str) -> anyhow::Result<String> {
    let ep: etcd::Endpoints = to.parse()?;
    let db = data_dir.join("state.db");
    if !db.exists() {
        anyhow::bail!("{} holds no state.db; give --from the data dir of a skiff server", data_dir.display());
    }
    let client = etcd::connect(&ep).await.with_context(|| format!("connecting to {ep}"))?;
    let (mut c, prefix) = (client.clone(), ep.prefix.clone());
    let found =
        etcd::run(
            async move { c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await },
        )
        .await?;
    if found.count() > 0 {
        anyhow::bail!(
            "{ep} already holds {} keys under {}; migrate only into an empty prefix",
            found.count(),
            ep.prefix
        );
    }
    let sqlite = store::Store::open(&db).with_context(|| format!("opening {}", db.display()))?;
    let mut to_store = store::Store::new(Box::new(etcd::Etcd::open(client.clone(), &ep.prefix, None)?));
    let (events, images, tokens, creds) =
        (sqlite.events(None, 100_000)?, sqlite.images()?, sqlite.tokens()?, sqlite.node_credentials()?);
    let loaded = sqlite.load()?;
    let summary = format!(
        "{} nodes, {} deployments, {} replicas, {} secrets, {} volumes, {} images, {} tokens, {} events",
        loaded.nodes.len(),
        loaded.deployments.len(),
        loaded.replicas.len(),
        loaded.secrets.len(),
        loaded.volumes.len(),
        images.len(),
        tokens.len(),
        events.len()
    );
    let mut ops = loaded.into_ops();
    ops.extend(events.into_iter().map(|e| store::Op::Event {
        time_ms: e.time_ms,
        object: e.object,
        reason: e.reason,
        message: e.message,
    }));
    // In pieces: the prefix is empty and no server uses it yet; a failure
    // part-way says to empty it and run again.
    let total = ops.len();
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(5_000));
        let piece = std::mem::replace(&mut ops, rest);
        let tx = to_store.tx()?;
        tx.extend(piece);
        to_store.commit(tx).with_context(|| {
            format!("copying into {ep} (empty its prefix with `etcdctl del --prefix {}` and run again)", ep.prefix)
        })?;
    }
    for i in &images {
        to_store.put_image(i)?;
    }
    for (name, hash, role, created) in &tokens {
        to_store.put_token(name, hash, role, *created)?;
    }
    for (node, hash) in &creds {
        to_store.put_node_credential(node, hash, skiff_api::now_ms())?;
    }
    cluster::bootstrap(&client, &ep, data_dir, None, || Ok(())).await?;
    Ok(format!("{summary} ({total} writes) copied from {} into {ep}", db.display()))
}

/// The scheduler's shared parts on `store`: tokens, secret keys, the working set
/// and the blob store.
fn core(
    config: ServerConfig,
    store: store::Store,
    join_secret: &str,
    cluster: Option<Arc<cluster::Cluster>>,
) -> anyhow::Result<Arc<Core>> {
    let auth = auth::Auth::open(&config.data_dir, &store, join_secret, config.metrics_open)
        .context("opening the API tokens")?;
    let policy = Policy {
        scoring: config.scoring,
        node_grace: config.node_grace,
        heartbeat_interval: config.heartbeat_interval,
        max_heartbeats_per_second: config.max_heartbeats_per_second,
        rebalance_per_minute: config.rebalance_per_minute,
    };
    let keyring = secrets::Keyring::open(&config.data_dir).context("opening the secret keys")?;
    let mut state = State::load(store, keyring, policy).context("loading the state")?;
    let liveness = state.liveness();
    state.max_objects = config.max_objects;
    if config.rotate_secret_key {
        let n = state.rotate_secret_key().context("rotating the secret key")?;
        tracing::info!("secret key rotated; {n} secrets re-sealed");
    }
    let blobs = blobs::Blobs::open(&config.data_dir).context("opening the blob store")?;
    Ok(Arc::new(Core {
        state: Mutex::new(state),
        wake: Notify::new(),
        blobs,
        auth,
        config,
        http: reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).build()?,
        valid_wasm: Mutex::new(HashSet::new()),
        live: dashboard::Live::default(),
        autoscale: Mutex::default(),
        canary: Mutex::default(),
        heartbeats: heartbeats::Batcher::default(),
        liveness,
        cluster,
    }))
}

/// The control loop: wakes on every change and at least every 250 ms, marks dead
/// nodes down, keeps deployments at their counts and places pending replicas.
async fn controllers(core: Arc<Core>) {
    use std::time::Instant;
    let (mut last_full, mut last_prune, mut last_autoscale) = (Instant::now(), Instant::now(), Instant::now());
    loop {
        tokio::select! {
            _ = core.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let full = last_full.elapsed() >= Duration::from_secs(2);
        if full {
            last_full = Instant::now();
        }
        // A pass holds the state lock for a batch of placements: on a blocking
        // thread, so that the async workers keep serving the API meanwhile.
        let c = core.clone();
        let pass = tokio::task::spawn_blocking(move || controller_pass(&c, full));
        let (result, dirty) = pass.await.unwrap_or_else(|e| (Err(state::Error::Internal(e.to_string())), true));
        if let Err(e) = result {
            tracing::error!("controller pass failed: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else if dirty {
            // A batch of placements stopped short, or something changed meanwhile.
            // Go again, but not before the lock's waiters (applies, heartbeat
            // batches, reads) had their turn: released and at once taken again,
            // a std mutex would hand it back to this loop, and an apply behind
            // a long queue of placements would wait for all of them.
            tokio::time::sleep(Duration::from_millis(1)).await;
            core.wake();
        }
        if last_autoscale.elapsed() >= Duration::from_secs(1) {
            last_autoscale = Instant::now();
            if let Err(e) = autoscale::pass(&core) {
                tracing::error!("autoscaling pass failed: {e}");
            }
            if let Err(e) = canary::pass(&core) {
                tracing::error!("canary analysis pass failed: {e}");
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(600) {
            last_prune = Instant::now();
            if let Err(e) = core.state().store().prune_events(100_000) {
                tracing::warn!("pruning events: {e}");
            }
        }
    }
}

/// One pass of the controllers under the state lock: applies queued heartbeats,
/// marks dead nodes down, brings every deployment to its count when `full`, and
/// places a batch of pending replicas. Returns whether placement is still due.
fn controller_pass(core: &Core, full: bool) -> (Result<(), state::Error>, bool) {
    let mut st = core.state.lock().unwrap_or_else(|p| p.into_inner());
    heartbeats::apply_queued(core, &mut st);
    let mut r = st.check_nodes();
    // The full level-triggered pass every 2 s; changes trigger their own.
    if r.is_ok() && full {
        r = st.reconcile_all();
    } else if r.is_ok() {
        r = st.reconcile_due();
    }
    // Jobs and crons every pass: a run that ended is followed by the next at once.
    if r.is_ok() {
        r = st.reconcile_jobs().and_then(|()| st.cron_pass());
    }
    // Drains and rebalance moves: cheap unless one is under way.
    if r.is_ok() {
        r = st.moves_pass(full);
    }
    let r = r.and_then(|_| {
        let dirty = st.mem().sched_dirty;
        let start = std::time::Instant::now();
        let n = st.schedule()?;
        if dirty {
            metrics::METRICS.placement_seconds.observe(start.elapsed().as_secs_f64());
            metrics::METRICS.placements.inc_by(n as u64);
        }
        if n > 0 {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            metrics::METRICS.last_placement.set(now.as_secs_f64());
        }
        if n > 0 {
            tracing::info!("placed {n} replicas");
        }
        Ok(())
    });
    let dirty = st.mem().sched_dirty;
    (r, dirty)
}
