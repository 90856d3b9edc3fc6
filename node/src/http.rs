//! HTTP components: replicas whose component exports `wasi:http/incoming-handler`
//! (the `wasi:http/proxy` world) are not run as a process-like command but served
//! by the node's ingress, with a fresh instance per request.
//!
//! They have an engine of their own, with the pooling allocator: instantiation
//! from a slot takes microseconds, which is what makes an instance per request
//! affordable, while command replicas keep the on-demand allocator of
//! [`crate::wasm`] (a long-running command would pin a pool slot forever and could
//! not have a memory limit above the slot size). The pool's per-memory size is
//! lowered to [`POOL_MEMORY`] so that its slots fit the address space several times
//! over; an admission semaphore in front of it answers 503 when every slot is busy
//! rather than letting instantiation fail.
//!
//! Each request runs under a deadline (epoch interruption makes a spinning guest
//! yield every tick, so the deadline fires and its neighbours keep running), the
//! replica's memory limit (capped at [`POOL_MEMORY`]) and the replica's env. Its
//! outbound HTTP goes only to the deployment's `allowed_hosts`, or to another
//! deployment by name (`http://NAME.skiff.local`) through the node's own ingress.

use crate::logs::{LogSink, Stream};
use crate::supervisor::{Backoff, Context, set_state};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use skiff_api::quantity::format_memory;
use skiff_api::{Assignment, ReplicaState, ReplicaStatus};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Largest linear memory of an HTTP instance (the pool's slot size).
pub const POOL_MEMORY: u64 = 1 << 30;
/// Instances that may run at once on a node (the pool's size and the admission limit).
pub const DEFAULT_CONCURRENCY: u32 = 1000;
/// How long one request may run, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The host suffix that names a deployment, by default.
pub const DEFAULT_SUFFIX: &str = "skiff.local";

/// Freed pool slots decommitted together.
const DECOMMIT_BATCH: usize = 16;

/// Errors of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the ingress sends.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A response of one line of text, such as the ingress's own errors.
pub fn text(status: StatusCode, line: &str) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(format!("{line}\n"))).map_err(|e| match e {}).boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// How HTTP components are served on this node.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Longest a request may run (its handler and its response body).
    pub request_timeout: Duration,
    /// Instances that may run at once.
    pub concurrency: u32,
    /// Host suffix naming deployments (`NAME.<suffix>`).
    pub suffix: String,
    /// The node's ingress, where a guest's requests for `NAME.<suffix>` go.
    pub ingress: Option<SocketAddr>,
    /// Root certificates (PEM) that guests' outbound HTTPS trusts besides the
    /// system's (`--outbound-ca-file`).
    pub outbound_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            suffix: DEFAULT_SUFFIX.to_string(),
            ingress: None,
            outbound_ca_file: None,
        }
    }
}

/// Whether `bytes` is a component that exports `wasi:http/incoming-handler`.
pub fn is_http_component(bytes: &[u8]) -> bool {
    use wasmtime::wasmparser::{Parser, Payload};
    if !Parser::is_component(bytes) {
        return false;
    }
    // Only the outermost component's exports count: nested modules and
    // components come in the same stream, each closed by its own `End`.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return false };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name.starts_with("wasi:http/incoming-handler") {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// The compiled handler of one digest once ready, or why it never can be.
type PreCell = OnceCell<Result<ProxyPre<HttpState>, String>>;

/// The node's HTTP component runtime and its local routing table.
pub struct HttpRuntime {
    engine: Engine,
    linker: Linker<HttpState>,
    cache_dir: PathBuf,
    pooling: bool,
    compiled: Mutex<HashMap<String, Arc<PreCell>>>,
    guests: GuestRuntime,
    admission: Arc<Semaphore>,
    config: HttpConfig,
    local: Mutex<HashMap<String, Vec<Arc<HttpReplica>>>>,
    /// Local container replicas serving HTTP, reached at their address.
    upstreams: Mutex<HashMap<String, Vec<Arc<Upstream>>>>,
    ticker_stop: Arc<AtomicBool>,
    /// TLS for guests' outbound HTTPS, built once (the trust store is read here).
    tls: tokio_native_tls::TlsConnector,
}

impl HttpRuntime {
    /// A runtime keeping its compiled code under `data_dir/cache`.
    pub fn new(data_dir: &Path, config: HttpConfig) -> anyhow::Result<HttpRuntime> {
        let (engine, pooling) = match Engine::new(&engine_config(Some(config.concurrency))) {
            Ok(e) => (e, true),
            Err(e) => {
                // A host with a small address space (ulimit -v, 32-bit) cannot
                // reserve the pool; serve with on-demand allocation instead.
                tracing::warn!("cannot reserve the http instance pool ({e}); allocating instances on demand");
                let engine = Engine::new(&engine_config(None))
                    .map_err(|e| anyhow::anyhow!("cannot create the http wasm engine: {e}"))?;
                (engine, false)
            }
        };
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = hex::encode(hasher.0.finalize());
        let cache_dir = data_dir.join("cache").join(format!("http-{}", &compat[..32]));
        std::fs::create_dir_all(&cache_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the compile cache {}: {e}", cache_dir.display()))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi 0.2 for http components: {e}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi:http: {e}"))?;

        let guests = crate::wasm::guest_runtime("skiff-http-guest")?;
        let tls = outbound_tls(config.outbound_ca_file.as_deref())?;

        // One ticker for the engine, never one per request.
        let ticker_stop = crate::wasm::spawn_epoch_ticker(&engine, "skiff-http-epoch")?;
        let admission = Arc::new(Semaphore::new(config.concurrency as usize));
        crate::metrics::METRICS.watch_pool(&admission, config.concurrency);

        Ok(HttpRuntime {
            engine,
            linker,
            cache_dir,
            pooling,
            compiled: Mutex::new(HashMap::new()),
            guests: GuestRuntime(Some(guests)),
            admission,
            config,
            local: Mutex::new(HashMap::new()),
            upstreams: Mutex::new(HashMap::new()),
            ticker_stop,
            tls,
        })
    }

    /// The runtime HTTP guests run on (the ingress serves its connections there).
    pub(crate) fn guest_handle(&self) -> tokio::runtime::Handle {
        self.guests.handle()
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// How HTTP components are served.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// The handler of blob `hex`, compiled (or loaded from disk) once per node.
    pub async fn prepare(&self, hex: &str, bytes: Bytes) -> Result<ProxyPre<HttpState>, String> {
        let cell = {
            let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(hex.to_string()).or_default().clone()
        };
        cell.get_or_init(|| async {
            let engine = self.engine.clone();
            let linker = self.linker.clone();
            let path = self.cache_dir.join(format!("{hex}.cwasm"));
            self.guests
                .handle()
                .spawn_blocking(move || compile(&engine, &linker, &path, &bytes))
                .await
                .unwrap_or_else(|e| Err(format!("compiler task failed: {e}")))
        })
        .await
        .clone()
    }

    /// Replicas of `deployment` served by this node.
    pub fn local(&self, deployment: &str) -> Vec<Arc<HttpReplica>> {
        self.lock_local().get(deployment).cloned().unwrap_or_default()
    }

    fn lock_local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<HttpReplica>>>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Container replicas of `deployment` on this node that serve HTTP now.
    pub fn upstreams(&self, deployment: &str) -> Vec<Arc<Upstream>> {
        self.lock_upstreams().get(deployment).cloned().unwrap_or_default()
    }

    fn lock_upstreams(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Upstream>>>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes requests for a container replica's deployment to its address until
    /// the guard drops.
    pub(crate) fn route_upstream(self: &Arc<Self>, upstream: Arc<Upstream>) -> UpstreamRoute {
        self.lock_upstreams().entry(upstream.deployment.clone()).or_default().push(upstream.clone());
        UpstreamRoute { runtime: self.clone(), upstream }
    }

    /// Routes requests for the replica's deployment to it until the guard drops.
    pub(crate) fn route(self: &Arc<Self>, replica: Arc<HttpReplica>) -> Route {
        self.lock_local().entry(replica.deployment.clone()).or_default().push(replica.clone());
        Route { runtime: self.clone(), replica }
    }

    fn store(&self, replica: &HttpReplica) -> Store<HttpState> {
        let mut b = WasiCtxBuilder::new();
        b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if let Some(log) = &replica.log {
            b.stdout(log.guest_stream(Stream::Stdout)).stderr(log.guest_stream(Stream::Stderr));
        }
        b.arg(&replica.deployment);
        for (k, v) in &replica.env {
            b.env(k, v);
        }
        b.env("SKIFF_DEPLOYMENT", &replica.deployment)
            .env("SKIFF_REPLICA", &replica.id)
            .env("SKIFF_REVISION", replica.revision.to_string());
        for p in &replica.preopens {
            let perms = if p.writable { wasmtime_wasi::FsPerms::ReadWrite } else { wasmtime_wasi::FsPerms::ReadOnly };
            if let Err(e) = b.preopened_dir(&p.host, &p.guest, perms)
                && let Some(log) = &replica.log
            {
                log.system(&format!("cannot give the guest {} ({}): {e}", p.guest, p.host.display()));
            }
        }
        let state = HttpState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outbound {
                allowed: replica.allowed_hosts.clone(),
                suffix: self.config.suffix.clone(),
                ingress: self.config.ingress,
                tls: self.tls.clone(),
            },
            limits: Limiter::new(replica.memory_limit),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// Whether the replica's handler instantiates (what "ready" means for it).
    async fn check_instantiable(&self, replica: &HttpReplica) -> Result<(), String> {
        // Takes a pool slot like a request, so it waits for one rather than fail.
        let _permit = self.admission.acquire().await.map_err(|e| format!("the instance pool is closed: {e}"))?;
        let mut store = self.store(replica);
        let pre = replica.pre.clone();
        self.guests
            .handle()
            .spawn(async move { pre.instantiate_async(&mut store).await.map(|_| ()).map_err(|e| first_line(&e)) })
            .await
            .unwrap_or_else(|e| Err(format!("instantiation task failed: {e}")))
    }

    /// Serves one request with a fresh instance of `replica`.
    pub async fn handle<B>(&self, replica: &Arc<HttpReplica>, req: http::Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            crate::metrics::METRICS.admission_rejections.inc();
            let mut resp = text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("node is serving its limit of {} concurrent requests; retry", self.config.concurrency),
            );
            resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return resp;
        };
        replica.inflight.fetch_add(1, Ordering::Relaxed);
        let _inflight = InFlight(replica.clone());
        let mut store = self.store(replica);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prepared = (|| {
            let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            Ok::<_, wasmtime::Error>((req, out))
        })();
        let (req, out) = match prepared {
            Ok(v) => v,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot pass the request on: {}", first_line(&e))),
        };
        let pre = replica.pre.clone();
        let deadline = self.config.request_timeout;
        let deployment = replica.deployment.clone();
        let usage = replica.usage.clone();
        // The task outlives this call when the guest streams its body after
        // the headers; the deadline bounds it either way.
        let task = self.guests.handle().spawn(async move {
            let _permit = permit;
            // Re-bound after the permit so that it is dropped first: the pool
            // slot must be free again before the permit says so.
            let mut store = store;
            // The instance's CPU time (instantiation, the handler and the body it
            // writes) is the replica's, as a command guest's is.
            let run = crate::metrics::Metered::new(
                async {
                    let started = std::time::Instant::now();
                    let proxy = pre.instantiate_async(&mut store).await?;
                    crate::metrics::METRICS.http_instantiate_seconds.observe(started.elapsed().as_secs_f64());
                    proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
                },
                usage,
            );
            let metrics = &crate::metrics::METRICS;
            match tokio::time::timeout(deadline, run).await {
                Err(_) => {
                    metrics.deadline_interruptions.with_label_values(&[deployment.as_str()]).inc();
                    Failure::Timeout(deadline)
                }
                Ok(Ok(())) => Failure::NoResponse,
                Ok(Err(e)) if store.data().limits.exceeded => {
                    drop(e);
                    metrics.memory_limit_traps.with_label_values(&[deployment.as_str()]).inc();
                    Failure::Memory(store.data().limits.limit)
                }
                Ok(Err(e)) => Failure::Trap(first_line(&e)),
            }
        });
        match rx.await {
            Ok(Ok(resp)) => resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            Ok(Err(code)) => text(StatusCode::BAD_GATEWAY, &format!("the handler failed: {code:?}")),
            Err(_) => {
                let failure = task.await.unwrap_or_else(|e| Failure::Trap(format!("the handler task failed: {e}")));
                let (status, line) = match failure {
                    Failure::Timeout(d) => (
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("{} did not answer within {}s", replica.deployment, d.as_secs_f64()),
                    ),
                    Failure::Memory(limit) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{} exceeded its memory limit of {}", replica.deployment, format_memory(limit)),
                    ),
                    Failure::Trap(msg) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, format!("{} failed: {msg}", replica.deployment))
                    }
                    Failure::NoResponse => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{} returned without a response", replica.deployment),
                    ),
                };
                if let Some(log) = &replica.log {
                    log.system(&format!("request failed: {line}"));
                }
                text(status, &line)
            }
        }
    }
}

impl Drop for HttpRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Why a request got no response from its handler.
enum Failure {
    Timeout(Duration),
    Memory(u64),
    Trap(String),
    NoResponse,
}

struct InFlight(Arc<HttpReplica>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn engine_config(pool: Option<u32>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    // Smaller reservations than the 4 GiB default: memories past this size move
    // (bounds-checked code instead of guard pages), and a pool of them fits.
    config.memory_reservation(POOL_MEMORY);
    config.memory_guard_size(32 << 20);
    if let Some(n) = pool {
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .max_memory_size(POOL_MEMORY as usize)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(32)
            // Freed slots are returned to the kernel (madvise) a batch at a
            // time: one call and one TLB shootdown per batch, not per request.
            .decommit_batch_size(DECOMMIT_BATCH);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    config
}

/// Compiles (or loads from the disk cache) and links a handler. Blocking.
fn compile(
    engine: &Engine,
    linker: &Linker<HttpState>,
    path: &Path,
    bytes: &[u8],
) -> Result<ProxyPre<HttpState>, String> {
    let component = match path.exists() {
        // SAFETY: files in the cache directory are written only below, by an
        // engine whose `precompile_compatibility_hash` names the directory, and
        // renamed into place whole; nothing else writes there.
        true => match unsafe { Component::deserialize_file(engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %path.display(), "discarding unusable compiled code: {}", first_line(&e));
                let _ = std::fs::remove_file(path);
                None
            }
        },
        false => None,
    };
    let component = match component {
        Some(c) => c,
        None => {
            let code = engine
                .precompile_component(bytes)
                .map_err(|e| format!("not a valid WebAssembly component: {}", first_line(&e)))?;
            write_atomic(path, &code).map_err(|e| format!("cannot store compiled code in {}: {e}", path.display()))?;
            // SAFETY: as above: our own output, just written.
            unsafe { Component::deserialize_file(engine, path) }
                .map_err(|e| format!("cannot load compiled code: {}", first_line(&e)))?
        }
    };
    let pre = linker.instantiate_pre(&component).map_err(|e| format!("cannot link component: {}", first_line(&e)))?;
    ProxyPre::new(pre).map_err(|e| format!("component is not a wasi:http proxy: {}", first_line(&e)))
}

/// One HTTP replica on this node: what each of its instances is made from.
pub struct HttpReplica {
    /// Replica id.
    pub id: String,
    /// Its deployment.
    pub deployment: String,
    revision: u64,
    pre: ProxyPre<HttpState>,
    env: Vec<(String, String)>,
    /// Secret and volume directories each request's instance sees.
    preopens: Vec<crate::wasm::Preopen>,
    /// Where the ingress counts the requests it passes on.
    usage: Arc<crate::metrics::Usage>,
    memory_limit: u64,
    allowed_hosts: Arc<Vec<String>>,
    log: Option<Arc<LogSink>>,
    inflight: AtomicUsize,
}

impl HttpReplica {
    /// Counts a request from the ingress (not a probe's) toward its usage.
    pub fn count_request(&self) {
        self.usage.add_request();
    }

    /// Requests it is serving now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Keeps a replica routed; unroutes it when dropped (the replica stops). Requests
/// already in flight hold their own reference and finish.
pub(crate) struct Route {
    runtime: Arc<HttpRuntime>,
    replica: Arc<HttpReplica>,
}

impl Drop for Route {
    fn drop(&mut self) {
        let mut local = self.runtime.lock_local();
        if let Some(list) = local.get_mut(&self.replica.deployment) {
            list.retain(|r| !Arc::ptr_eq(r, &self.replica));
            if list.is_empty() {
                local.remove(&self.replica.deployment);
            }
        }
    }
}

/// A container replica on this node that serves HTTP at `addr`.
#[derive(Debug)]
pub struct Upstream {
    /// Replica id.
    pub id: String,
    /// Its deployment.
    pub deployment: String,
    /// Its bridge address and HTTP port.
    pub addr: SocketAddr,
}

/// Keeps a container replica routed; unroutes it when dropped.
pub(crate) struct UpstreamRoute {
    runtime: Arc<HttpRuntime>,
    upstream: Arc<Upstream>,
}

impl Drop for UpstreamRoute {
    fn drop(&mut self) {
        let mut map = self.runtime.lock_upstreams();
        if let Some(list) = map.get_mut(&self.upstream.deployment) {
            list.retain(|u| !Arc::ptr_eq(u, &self.upstream));
            if list.is_empty() {
                map.remove(&self.upstream.deployment);
            }
        }
    }
}

/// Runs the replica as an HTTP service if its artifact is an HTTP component:
/// fetches and checks the blob, compiles, proves it instantiates, routes it and
/// reports it ready, then holds it until the supervisor is stopped. Returns
/// `false`, having done nothing visible, when the artifact is something else.
pub(crate) async fn supervise_if_http(
    ctx: &Arc<Context>,
    a: &Assignment,
    digest: &str,
    status: &Arc<Mutex<ReplicaStatus>>,
    usage: &Arc<crate::metrics::Usage>,
    log: &Option<Arc<LogSink>>,
) -> bool {
    let Some(runtime) = ctx.http.clone() else { return false };
    let Ok(hex) = crate::wasm::digest_hex(digest) else { return false };
    let say = |msg: &str| {
        if let Some(l) = log {
            l.system(msg);
        }
    };
    let mut retry = Backoff::default();
    let mut last_error: Option<String> = None;
    let bytes = loop {
        let client = ctx.client.clone();
        let d = digest.to_string();
        let fetch = || async move {
            match client {
                Some(c) => c.get_blob(&d).await.map_err(|e| format!("cannot fetch blob {d}: {e}")),
                None => Err(format!("blob {d} is not on this node and there is no scheduler to fetch it from")),
            }
        };
        match ctx.wasm.blob(hex, fetch).await {
            Ok(b) => break b,
            Err(reason) => {
                if last_error.as_deref() != Some(reason.as_str()) {
                    say(&format!("{reason} (retrying)"));
                    tracing::warn!(replica = %a.replica, "{reason} (retrying)");
                }
                set_state(status, ReplicaState::Starting, Some(reason.clone()), None);
                last_error = Some(reason);
                tokio::time::sleep(retry.after_run(Duration::ZERO)).await;
            }
        }
    };
    if !is_http_component(&bytes) {
        return false;
    }
    let fail = |reason: String| {
        say(&format!("cannot serve: {reason}"));
        tracing::warn!(replica = %a.replica, "cannot serve: {reason}");
        set_state(status, ReplicaState::Failed, Some(reason), None);
    };
    let pre = match runtime.prepare(hex, bytes).await {
        Ok(pre) => pre,
        Err(reason) => {
            fail(reason);
            return true;
        }
    };
    // Secret files live on tmpfs, and a read-write volume has one writer, for as
    // long as this replica is served (the guards live until the supervisor drops).
    let secrets = match crate::secrets::materialize(&ctx.data_dir, a) {
        Ok(s) => s,
        Err(reason) => {
            fail(reason);
            return true;
        }
    };
    let mut preopens = secrets.preopens.clone();
    match crate::volumes::preopens(&ctx.data_dir, a) {
        Ok(v) => preopens.extend(v),
        Err(reason) => {
            fail(reason);
            return true;
        }
    }
    let _volumes = loop {
        match crate::volumes::LOCKS.acquire(&ctx.data_dir, a) {
            Ok(held) => break held,
            Err(reason) => {
                set_state(status, ReplicaState::Starting, Some(reason), None);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut env = a.spec.env.clone();
    env.extend(secrets.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let limit = a.spec.resources.memory.0;
    let replica = Arc::new(HttpReplica {
        id: a.replica.clone(),
        deployment: a.deployment.clone(),
        revision: a.revision,
        pre,
        env: env.into_iter().collect(),
        preopens,
        usage: usage.clone(),
        memory_limit: if limit == 0 { POOL_MEMORY } else { limit.min(POOL_MEMORY) },
        allowed_hosts: Arc::new(a.spec.allowed_hosts.clone()),
        log: log.clone(),
        inflight: AtomicUsize::new(0),
    });
    if let Err(e) = runtime.check_instantiable(&replica).await {
        fail(format!("the component does not instantiate: {e}"));
        return true;
    }
    let probes = a.spec.probes.clone();
    say(&format!(
        "serving http: {} and /d/{}/ on every node's ingress ({} per request, {} instances)",
        format_args!("{}.{}", a.deployment, runtime.config.suffix),
        a.deployment,
        format_args!("deadline {}s", runtime.config.request_timeout.as_secs_f64()),
        if runtime.pooling { "pooled" } else { "on-demand" },
    ));
    // Served until the supervisor is dropped, which drops the route.
    crate::probes::serve(runtime, replica, probes, status, log).await;
    true
}

// ---- store state ----

/// Store data of one HTTP request.
pub struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    limits: Limiter,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// The memory limit of one instance, remembering whether it was hit.
struct Limiter {
    inner: StoreLimits,
    limit: u64,
    exceeded: bool,
}

impl Limiter {
    fn new(limit: u64) -> Limiter {
        let bytes = usize::try_from(limit).unwrap_or(usize::MAX);
        Limiter {
            inner: StoreLimitsBuilder::new().memory_size(bytes).trap_on_grow_failure(true).build(),
            limit,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.exceeded = true;
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

/// Outbound requests of a guest: to another deployment through the node's
/// ingress, to an allowed host directly (HTTPS verified against the system's
/// roots and `--outbound-ca-file`), and nowhere else.
struct Outbound {
    allowed: Arc<Vec<String>>,
    suffix: String,
    ingress: Option<SocketAddr>,
    tls: tokio_native_tls::TlsConnector,
}

/// The TLS client for guests' outbound HTTPS: the system's trust store (OpenSSL's
/// default paths, as `update-ca-certificates` maintains them) plus the
/// certificates in `ca_file`, if given.
fn outbound_tls(ca_file: Option<&Path>) -> anyhow::Result<tokio_native_tls::TlsConnector> {
    use tokio_native_tls::native_tls;
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the outbound CA file {}: {e}", path.display()))?;
        let certs = native_tls::Certificate::stack_from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("the outbound CA file {} is not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("the outbound CA file {} holds no PEM certificate", path.display());
        }
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    let connector = builder.build().map_err(|e| anyhow::anyhow!("cannot set up TLS for outbound https: {e}"))?;
    Ok(tokio_native_tls::TlsConnector::from(connector))
}

/// A connection to send one request over: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Whether `host` (and `port`) matches one of `allowed`: `host`, `host:port`,
/// or `*.domain` (any subdomain).
pub fn host_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim().to_ascii_lowercase();
        let (name, want_port) = match pattern.rsplit_once(':') {
            Some((n, p)) => match p.parse::<u16>() {
                Ok(p) => (n.to_string(), Some(p)),
                Err(_) => return false,
            },
            None => (pattern.clone(), None),
        };
        if want_port.is_some_and(|p| p != port) {
            return false;
        }
        match name.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == name,
        }
    })
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    Response<WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        use wasmtime_wasi_http::Error;
        let uri = request.uri().clone();
        let host = uri.host().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let internal = host.ends_with(&format!(".{}", self.suffix));
        let target: Result<String, Error> = if internal {
            // Inside the cluster: plain HTTP to the node's own ingress whatever
            // the scheme; the ingress routes it on like any request.
            match self.ingress {
                Some(addr) => Ok(addr.to_string()),
                None => Err(Error::DestinationUnavailable),
            }
        } else if !host_allowed(&self.allowed, &host, port) {
            tracing::debug!(%host, port, "outbound request refused: host not in allowed_hosts");
            Err(Error::HttpRequestDenied)
        } else {
            Ok(format!("{host}:{port}"))
        };
        let tls = (https && !internal).then(|| self.tls.clone());
        // The name the certificate must carry (an IPv6 literal without brackets).
        let tls_name = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(Duration::from_secs(10));
        let first_byte_timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(60));
        Box::new(async move {
            let target = target?;
            let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&target))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Connect)?;
            let stream: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(tls) => {
                    let handshake = tokio::time::timeout(connect_timeout, tls.connect(&tls_name, stream))
                        .await
                        .map_err(|_| Error::ConnectionTimeout)?;
                    Box::new(handshake.map_err(|e| {
                        tracing::debug!(%host, port, "outbound TLS handshake failed: {e}");
                        // OpenSSL says "certificate verify failed" for an untrusted
                        // or misnamed certificate; the guest gets that as its own code.
                        if e.to_string().contains("certificate") {
                            Error::TlsCertificateError
                        } else {
                            Error::TlsProtocolError
                        }
                    })?)
                }
            };
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                .await
                .map_err(Error::from)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("outbound connection ended: {e}");
                }
            });
            let mut request = request;
            // Origin form on the wire; the Host header (set by wasmtime) keeps
            // the name, which is what routes `NAME.skiff.local` at the ingress.
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
            *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
            let resp = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(Error::from)?;
            let resp = resp.map(|b| b.map_err(Error::from).boxed_unsync());
            Ok((resp, Box::new(async { Ok(()) }) as Box<dyn std::future::Future<Output = _> + Send>))
        })
    }
}

// ---- plumbing ----

/// The HTTP guests' tokio runtime; shut down without blocking when dropped.
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the guest runtime lives as long as its owner"),
        }
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn first_line(e: &wasmtime::Error) -> String {
    let msgs: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    msgs.join(": ").lines().next().unwrap_or("").to_string()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), fastrand_u64()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn fastrand_u64() -> u64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Feeds `Hash` output into sha256, to name the cache directory stably.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_match_names_ports_and_wildcards() {
        let allowed: Vec<String> = ["api.example.com", "db.internal:8080", "*.svc.test"].map(String::from).to_vec();
        assert!(host_allowed(&allowed, "api.example.com", 80));
        assert!(host_allowed(&allowed, "API.example.com.", 443));
        assert!(!host_allowed(&allowed, "evil.example.com", 80));
        assert!(host_allowed(&allowed, "db.internal", 8080));
        assert!(!host_allowed(&allowed, "db.internal", 80));
        assert!(host_allowed(&allowed, "a.svc.test", 80));
        assert!(!host_allowed(&allowed, "svc.test", 80));
        assert!(!host_allowed(&[], "api.example.com", 80));
    }

    /// The SDK's `hello_http` example, when it has been built (`make wasm`).
    fn hello_http() -> Option<Vec<u8>> {
        example("hello_http")
    }

    /// An SDK example component, when it has been built (`make wasm`).
    fn example(name: &str) -> Option<Vec<u8>> {
        let dir = std::env::var_os("SKIFF_WASM_P2").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/examples")
        });
        let bytes = std::fs::read(dir.join(format!("{name}.wasm"))).ok();
        // Under `make test` (which sets the variable) a missing example is a failure.
        assert!(bytes.is_some() || std::env::var_os("SKIFF_WASM_P2").is_none(), "SKIFF_WASM_P2 lacks {name}");
        bytes
    }

    async fn call(rt: &HttpRuntime, replica: &Arc<HttpReplica>, path: &str) -> (u16, String) {
        let req = http::Request::builder()
            .uri(path)
            .header("host", "web.skiff.local")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let resp = rt.handle(replica, req).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Replica `NAME-1` of deployment `name`, 64Mi per instance, no log.
    fn test_replica(
        name: &str,
        pre: ProxyPre<HttpState>,
        env: Vec<(String, String)>,
        allowed_hosts: Vec<String>,
    ) -> Arc<HttpReplica> {
        Arc::new(HttpReplica {
            id: format!("{name}-1"),
            deployment: name.into(),
            revision: 1,
            pre,
            env,
            preopens: Vec::new(),
            usage: Default::default(),
            memory_limit: 64 << 20,
            allowed_hosts: Arc::new(allowed_hosts),
            log: None,
            inflight: AtomicUsize::new(0),
        })
    }

    /// Polls `done` until it holds; a test that waits must never wait forever.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_get_fresh_instances_deadlines_limits_and_admission() {
        let Some(bytes) = hello_http() else {
            eprintln!("skipping: hello_http not built (make wasm)");
            return;
        };
        assert!(is_http_component(&bytes));
        let data = std::env::temp_dir().join(format!("skiff-http-test-{}", std::process::id()));
        let config = HttpConfig { request_timeout: Duration::from_millis(500), concurrency: 2, ..Default::default() };
        let rt = Arc::new(HttpRuntime::new(&data, config).expect("runtime"));
        let hex = crate::wasm::sha256_hex(&bytes);
        let pre = rt.prepare(&hex, Bytes::from(bytes)).await.expect("prepare");
        let replica = test_replica("web", pre, vec![("GREETING".into(), "hi".into())], vec!["example.com".into()]);
        rt.check_instantiable(&replica).await.expect("instantiable");
        let metrics = &crate::metrics::METRICS;
        let interrupted = || metrics.deadline_interruptions.with_label_values(&["web"]).get();
        let (interrupted_before, rejected_before) = (interrupted(), metrics.admission_rejections.get());
        assert_eq!(call(&rt, &replica, "/").await, (200, "hi from web-1\n".into()));
        // The answer can arrive before its handler task has let go of its
        // admission permit; on a loaded machine that lag is long enough for
        // a spinner below to be turned away. Wait until both slots are free.
        let all_free = || rt.admission.available_permits() == 2;
        wait_until("the first request's slot to come back", all_free).await;

        // Two handlers spin: the pool of two is full, so a third request is
        // turned away at once; the spinners get 504 at the deadline.
        let spin =
            |rt: Arc<HttpRuntime>, r: Arc<HttpReplica>| tokio::spawn(async move { call(&rt, &r, "/spin").await });
        let (a, b) = (spin(rt.clone(), replica.clone()), spin(rt.clone(), replica.clone()));
        wait_until("both spinners to be in flight", || replica.inflight() == 2 || a.is_finished() || b.is_finished())
            .await;
        assert!(!a.is_finished() && !b.is_finished(), "a spinner ended before the other started");
        let (status, body) = call(&rt, &replica, "/").await;
        assert_eq!((status, body.as_str()), (503, "node is serving its limit of 2 concurrent requests; retry\n"));
        for spun in [a.await.expect("spinner"), b.await.expect("spinner")] {
            assert_eq!(spun, (504, "web did not answer within 0.5s\n".into()));
        }
        assert_eq!(interrupted() - interrupted_before, 2, "both spinners counted as interrupted at the deadline");
        assert!(metrics.admission_rejections.get() > rejected_before, "the turned-away request counted");
        // The slots are back.
        wait_until("the spinners' slots to come back", all_free).await;
        assert_eq!(call(&rt, &replica, "/").await.0, 200);

        assert_eq!(call(&rt, &replica, "/grow").await, (500, "web exceeded its memory limit of 64Mi\n".into()));
        let (status, body) = call(&rt, &replica, "/call/127.0.0.1:9/").await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("HttpRequestDenied"), "{body}");
        drop(rt);
        let _ = std::fs::remove_dir_all(&data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_charges_its_cpu_time_to_the_replica() {
        let Some(bytes) = hello_http() else {
            eprintln!("skipping: hello_http not built (make wasm)");
            return;
        };
        let data = std::env::temp_dir().join(format!("skiff-http-cpu-test-{}", std::process::id()));
        let config = HttpConfig { request_timeout: Duration::from_millis(800), concurrency: 2, ..Default::default() };
        let rt = Arc::new(HttpRuntime::new(&data, config).expect("runtime"));
        let hex = crate::wasm::sha256_hex(&bytes);
        let pre = rt.prepare(&hex, Bytes::from(bytes)).await.expect("prepare");
        let replica = test_replica("cpu", pre, Vec::new(), Vec::new());
        let cpu = || replica.usage.cpu_seconds();
        assert_eq!(call(&rt, &replica, "/").await.0, 200);
        let after_one = cpu();
        assert!(after_one > 0.0, "an answered request is charged some cpu");

        // The spinner runs until its 0.8 s deadline. It is charged its thread's
        // CPU time: never more than the wall time it ran, and (the bound is
        // loose, for a loaded machine) at least a tenth of it.
        let started = std::time::Instant::now();
        assert_eq!(call(&rt, &replica, "/spin").await.0, 504);
        let wall = started.elapsed().as_secs_f64();
        let spun = cpu() - after_one;
        eprintln!("one request: {after_one:.4}s of cpu; the spinner: {spun:.3}s of cpu in {wall:.3}s");
        assert!(spun <= wall + 0.01, "charged {spun:.3}s of cpu in {wall:.3}s");
        assert!(spun >= 0.08, "charged only {spun:.3}s of cpu for a 0.8s spin");
        drop(rt);
        let _ = std::fs::remove_dir_all(&data);
    }

    /// A test CA and a certificate it signed for `localhost` and 127.0.0.1: the
    /// CA's PEM, the server's certificate PEM and its PKCS#8 key PEM.
    fn test_pki() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::pkey::{PKey, Private};
        use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
        use openssl::x509::{X509, X509Name, X509NameBuilder};
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
        let key = || -> PKey<Private> { PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey") };
        let name = |cn: &str| -> X509Name {
            let mut n = X509NameBuilder::new().expect("name");
            n.append_entry_by_text("CN", cn).expect("cn");
            n.build()
        };
        let cert = |serial: u32, subject: &X509Name, issuer: &X509Name, key: &PKey<Private>| {
            let mut b = X509::builder().expect("x509");
            b.set_version(2).expect("version");
            b.set_serial_number(&BigNum::from_u32(serial).and_then(|n| n.to_asn1_integer()).expect("serial"))
                .expect("serial");
            b.set_subject_name(subject).expect("subject");
            b.set_issuer_name(issuer).expect("issuer");
            b.set_pubkey(key).expect("pubkey");
            b.set_not_before(&Asn1Time::days_from_now(0).expect("time")).expect("not before");
            b.set_not_after(&Asn1Time::days_from_now(2).expect("time")).expect("not after");
            b
        };
        let (ca_key, ca_name) = (key(), name("skiff test CA"));
        let mut ca = cert(1, &ca_name, &ca_name, &ca_key);
        ca.append_extension(BasicConstraints::new().critical().ca().build().expect("bc")).expect("ext");
        ca.append_extension(KeyUsage::new().critical().key_cert_sign().build().expect("ku")).expect("ext");
        ca.sign(&ca_key, MessageDigest::sha256()).expect("sign");
        let ca = ca.build();
        let server_key = key();
        let mut server = cert(2, &name("localhost"), &ca_name, &server_key);
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&server.x509v3_context(Some(&ca), None))
            .expect("san");
        server.append_extension(san).expect("ext");
        server.sign(&ca_key, MessageDigest::sha256()).expect("sign");
        let server = server.build();
        (ca.to_pem().expect("pem"), server.to_pem().expect("pem"), server_key.private_key_to_pem_pkcs8().expect("pem"))
    }

    /// Outbound HTTPS from a guest (the `caller` example) to an allowed host on
    /// loopback: verified against `--outbound-ca-file`, refused as a certificate
    /// error without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outbound_https_trusts_the_system_roots_and_the_ca_file() {
        let Some(bytes) = example("caller") else {
            eprintln!("skipping: caller not built (make wasm)");
            return;
        };
        let (ca, cert, key) = test_pki();
        let identity = tokio_native_tls::native_tls::Identity::from_pkcs8(&cert, &key).expect("identity");
        let acceptor = tokio_native_tls::TlsAcceptor::from(
            tokio_native_tls::native_tls::TlsAcceptor::new(identity).expect("acceptor"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // Serves until the test ends; a client that refuses the
            // certificate just ends its connection.
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nsecure\n";
                let _ = tls.write_all(answer).await;
                let _ = tls.shutdown().await;
            }
        });

        let data = std::env::temp_dir().join(format!("skiff-https-test-{}", std::process::id()));
        std::fs::create_dir_all(&data).expect("data dir");
        let ca_file = data.join("ca.pem");
        std::fs::write(&ca_file, &ca).expect("write the CA");
        let hex = crate::wasm::sha256_hex(&bytes);
        let fetch = format!("/fetch?url=https://localhost:{port}/hello");
        for trusted in [true, false] {
            let config =
                HttpConfig { concurrency: 2, outbound_ca_file: trusted.then(|| ca_file.clone()), ..Default::default() };
            let rt = HttpRuntime::new(&data, config).expect("runtime");
            let pre = rt.prepare(&hex, Bytes::from(bytes.clone())).await.expect("prepare");
            let replica = test_replica("caller", pre, Vec::new(), vec![format!("localhost:{port}")]);
            let (status, body) = call(&rt, &replica, &fetch).await;
            if trusted {
                let want =
                    format!("{{\"body\":\"secure\\n\",\"status\":200,\"url\":\"https://localhost:{port}/hello\"}}\n");
                assert_eq!((status, body), (200, want));
            } else {
                assert_eq!(status, 502, "{body}");
                assert!(body.contains("TlsCertificateError"), "{body}");
            }
        }
        // A CA file that cannot be used is one clear line at start.
        let err = outbound_tls(Some(&data.join("missing.pem"))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("cannot read the outbound CA file"), "{err}");
        std::fs::write(data.join("empty.pem"), "nothing here\n").expect("write");
        let err = outbound_tls(Some(&data.join("empty.pem"))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("holds no PEM certificate") || err.contains("is not PEM"), "{err}");
        server.abort();
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn only_components_exporting_the_handler_are_http() {
        let module = wat::parse_str("(module)").expect("wat");
        assert!(!is_http_component(&module));
        let plain = wat::parse_str("(component)").expect("wat");
        assert!(!is_http_component(&plain));
        assert!(!is_http_component(b"not wasm"));
    }
}
