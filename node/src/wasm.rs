//! The Wasm runtime: one shared wasmtime [`Engine`], an epoch ticker, a tokio
//! runtime of its own for guests, and the blob and compiled-code caches.
//!
//! Guests run on their own multi-thread runtime so that a guest spinning in a
//! loop can never starve the agent (heartbeats) or the node API: epoch
//! interruption makes every guest yield each tick, and the agent's runtime never
//! polls guest code at all.
//!
//! Two shapes are run: core modules against WASI preview 1 (`_start`) and
//! components against WASI 0.2 (`wasi:cli/run`). Guests get no preopened
//! directories, no network and only the environment their spec declares.

use crate::logs::{LogSink, Stream};
use sha2::{Digest, Sha256};
use skiff_api::quantity::format_memory;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How often the epoch advances; a busy guest yields this often.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Worker threads of the guests' runtime.
const GUEST_WORKERS: usize = 2;

/// Why an artifact could not be made ready to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// Worth retrying: the blob could not be fetched or stored.
    #[error("{0}")]
    Transient(String),
    /// Never going to work for this digest: not Wasm, does not compile or link.
    #[error("{0}")]
    Invalid(String),
}

/// A compiled artifact, ready to instantiate.
pub enum Compiled {
    /// A core module, run with WASI preview 1.
    Module(InstancePre<P1State>),
    /// A component, run as a `wasi:cli/command`.
    Component(CommandPre<P2State>),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited with this status (0 when `_start`/`run` returned normally).
    Exited(i32),
    /// The guest tried to grow a memory past its limit (in bytes).
    MemoryExceeded(u64),
    /// The guest trapped (the message) or could not be instantiated.
    Failed(String),
}

impl Outcome {
    /// Whether the run counts as a success (for the on-failure policy).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// The exit status, if the guest exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited(c) => Some(*c),
            _ => None,
        }
    }

    /// A short explanation: `exited with status 3`, `memory limit of 64Mi exceeded`.
    pub fn reason(&self) -> String {
        match self {
            Outcome::Exited(c) => format!("exited with status {c}"),
            Outcome::MemoryExceeded(limit) => {
                format!("memory limit of {} exceeded", format_memory(*limit))
            }
            Outcome::Failed(msg) => msg.clone(),
        }
    }
}

/// What a guest sees of its replica.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Deployment name (also `argv[0]`).
    pub deployment: String,
    /// Replica id.
    pub replica: String,
    /// Deployment revision.
    pub revision: u64,
    /// Declared environment.
    pub env: BTreeMap<String, String>,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Memory limit per linear memory in bytes; 0 means none.
    pub memory_limit: u64,
    /// Where the guest's cpu time and memory are counted.
    pub usage: Arc<crate::metrics::Usage>,
    /// Host directories the guest sees, and nothing else of the filesystem.
    pub preopens: Vec<Preopen>,
}

/// A host directory a guest sees at `guest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the node.
    pub host: PathBuf,
    /// Where the guest sees it, an absolute path.
    pub guest: String,
    /// Whether the guest may write.
    pub writable: bool,
}

/// The tokio runtime guests run on, apart from the daemon's own so that a busy
/// guest never starves heartbeats or the node API.
pub(crate) fn guest_runtime(thread_name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(GUEST_WORKERS)
        .thread_name(thread_name)
        // Under load every poll of a busy guest lasts a whole epoch tick
        // (10 ms). Tokio's defaults (61 polls between looks at the global
        // queue and at timers/IO) would then let a newly started guest or a
        // sleeping one's timer wait ~600 ms; look far more often instead.
        .global_queue_interval(4)
        .event_interval(8)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the guest runtime {thread_name}: {e}"))
}

/// Starts the one epoch ticker of `engine` (a ticker per store once cost
/// `wasmtime serve` orders of magnitude in throughput). It stops when the
/// returned flag is set or the engine is gone.
pub(crate) fn spawn_epoch_ticker(engine: &Engine, thread_name: &str) -> anyhow::Result<Arc<AtomicBool>> {
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let stop = ticker_stop.clone();
    let weak = engine.weak();
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker {thread_name}: {e}"))?;
    Ok(ticker_stop)
}

/// The node's Wasm runtime. Dropping it stops the ticker and every guest.
pub struct WasmRuntime {
    compiler: Arc<Compiler>,
    data_dir: PathBuf,
    guests: GuestRuntime,
    /// Digest hex → compiled artifact (or why it can never be), so that N
    /// replicas of one blob compile once.
    compiled: Mutex<HashMap<String, Arc<CompileCell>>>,
    ticker_stop: Arc<AtomicBool>,
}

/// The compiled artifact of one digest once ready, or why it never can be.
type CompileCell = OnceCell<Result<Arc<Compiled>, String>>;

/// What compiling needs; shared with the blocking compile tasks.
struct Compiler {
    engine: Engine,
    cache_dir: PathBuf,
    p1_linker: Linker<P1State>,
    p2_linker: wasmtime::component::Linker<P2State>,
    compilations: AtomicU64,
}

impl WasmRuntime {
    /// A runtime that keeps blobs and compiled code under `data_dir`.
    pub fn new(data_dir: &Path) -> anyhow::Result<WasmRuntime> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot create the wasm engine: {e}"))?;

        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = hex::encode(hasher.0.finalize());
        let cache_dir = data_dir.join("cache").join(&compat[..32]);
        fs::create_dir_all(&cache_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the compile cache {}: {e}", cache_dir.display()))?;
        fs::create_dir_all(data_dir.join("blobs"))
            .map_err(|e| anyhow::anyhow!("cannot create the blob cache in {}: {e}", data_dir.display()))?;

        let guests = guest_runtime("skiff-guest")?;

        let mut p1_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, p1_ctx)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi preview 1: {e}"))?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi 0.2: {e}"))?;

        let ticker_stop = spawn_epoch_ticker(&engine, "skiff-epoch")?;

        Ok(WasmRuntime {
            compiler: Arc::new(Compiler { engine, cache_dir, p1_linker, p2_linker, compilations: AtomicU64::new(0) }),
            data_dir: data_dir.to_path_buf(),
            guests: GuestRuntime(Some(guests)),
            compiled: Mutex::new(HashMap::new()),
            ticker_stop,
        })
    }

    /// The directory of compiled code for this engine.
    pub fn cache_dir(&self) -> &Path {
        &self.compiler.cache_dir
    }

    /// How many times code was compiled (not loaded from the cache).
    pub fn compilations(&self) -> u64 {
        self.compiler.compilations.load(Ordering::Relaxed)
    }

    fn guest_handle(&self) -> tokio::runtime::Handle {
        self.guests.handle()
    }

    /// The compiled artifact of blob `digest`, compiling it at most once per node
    /// (and once per engine version on disk). `fetch` downloads the blob when it
    /// is not on disk yet.
    pub async fn artifact<F, Fut>(&self, digest: &str, fetch: F) -> Result<Arc<Compiled>, ArtifactError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bytes::Bytes, String>>,
    {
        let hex = digest_hex(digest).map_err(ArtifactError::Invalid)?.to_string();
        let cell = {
            let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(hex.clone()).or_default().clone()
        };
        let result = cell
            .get_or_try_init(|| async {
                let bytes = self.blob(&hex, fetch).await?;
                let compiler = self.compiler.clone();
                let hex = hex.clone();
                let compiled = self
                    .guest_handle()
                    .spawn_blocking(move || compiler.compile(&hex, &bytes))
                    .await
                    .map_err(|e| format!("compiler task failed: {e}"))?;
                Ok::<_, String>(compiled.map(Arc::new))
            })
            .await
            .map_err(ArtifactError::Transient)?;
        result.clone().map_err(ArtifactError::Invalid)
    }

    /// The blob bytes, from disk or fetched (and verified) once.
    pub async fn blob<F, Fut>(&self, hex: &str, fetch: F) -> Result<bytes::Bytes, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bytes::Bytes, String>>,
    {
        let path = self.data_dir.join("blobs").join(hex);
        if let Ok(bytes) = tokio::fs::read(&path).await {
            if sha256_hex(&bytes) == hex {
                return Ok(bytes.into());
            }
            tracing::warn!(blob = %path.display(), "cached blob does not match its digest; fetching it again");
        }
        let bytes = fetch().await?;
        let got = sha256_hex(&bytes);
        if got != hex {
            return Err(format!("downloaded blob sha256:{hex} has digest sha256:{got}"));
        }
        write_atomic(&path, &bytes).map_err(|e| format!("cannot store blob in {}: {e}", path.display()))?;
        Ok(bytes)
    }

    /// Runs one guest to its end on the guests' runtime. Dropping the returned
    /// future stops the guest (at its next epoch tick at the latest).
    pub fn run(
        &self,
        compiled: Arc<Compiled>,
        spec: RunSpec,
        log: Arc<LogSink>,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let engine = self.compiler.engine.clone();
        let usage = spec.usage.clone();
        let guest = crate::metrics::Metered::new(run_guest(engine, compiled, spec, log), usage);
        let task = AbortOnDrop(self.guest_handle().spawn(guest));
        async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => Outcome::Failed("the guest's host task panicked".into()),
                Err(_) => Outcome::Failed("the guest was stopped".into()),
            }
        }
    }

    /// Compiles (or loads from the disk cache) and links `bytes`, blocking; the
    /// in-memory map is bypassed (tests use this to check the disk cache).
    pub fn compile_blocking(&self, hex: &str, bytes: &[u8]) -> Result<Compiled, String> {
        self.compiler.compile(hex, bytes)
    }
}

impl Compiler {
    /// Compiles (or loads from the disk cache) and links `bytes`. Blocking.
    pub fn compile(&self, hex: &str, bytes: &[u8]) -> Result<Compiled, String> {
        use wasmtime::wasmparser::Parser;
        let component = if Parser::is_component(bytes) {
            true
        } else if Parser::is_core_wasm(bytes) {
            false
        } else {
            return Err(
                "not a valid WebAssembly module: the blob does not start with a wasm module or component header".into(),
            );
        };
        let path = self.cache_dir.join(format!("{hex}.cwasm"));
        if path.exists() {
            match self.load_cached(&path, component) {
                Ok(linked) => return linked,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "discarding unusable compiled code: {e}");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let _timer = crate::metrics::METRICS.compile_seconds.start_timer();
        let code =
            if component { self.engine.precompile_component(bytes) } else { self.engine.precompile_module(bytes) }
                .map_err(|e| {
                    format!(
                        "not a valid WebAssembly {}: {}",
                        if component { "component" } else { "module" },
                        first_line(&e)
                    )
                })?;
        write_atomic(&path, &code).map_err(|e| format!("cannot store compiled code in {}: {e}", path.display()))?;
        self.load_cached(&path, component).map_err(|e| format!("cannot load compiled code: {e}"))?
    }

    /// Loads compiled code and links it. The outer error means the file is
    /// unusable (recompile); the inner one that the code cannot run here.
    fn load_cached(&self, path: &Path, component: bool) -> Result<Result<Compiled, String>, String> {
        if component {
            // SAFETY: files in `cache_dir` are written only by `compile` above, by
            // an engine whose `precompile_compatibility_hash` names the directory,
            // and are renamed into place whole; nothing else writes there.
            let c = unsafe { Component::deserialize_file(&self.engine, path) }.map_err(|e| first_line(&e))?;
            Ok(self.link_component(&c))
        } else {
            // SAFETY: as above: our own output, keyed by the engine's compatibility hash.
            let m = unsafe { Module::deserialize_file(&self.engine, path) }.map_err(|e| first_line(&e))?;
            Ok(self.link_module(&m))
        }
    }

    fn link_component(&self, c: &Component) -> Result<Compiled, String> {
        let pre =
            self.p2_linker.instantiate_pre(c).map_err(|e| format!("cannot link component: {}", first_line(&e)))?;
        let pre =
            CommandPre::new(pre).map_err(|e| format!("component is not a wasi:cli command: {}", first_line(&e)))?;
        Ok(Compiled::Component(pre))
    }

    fn link_module(&self, m: &Module) -> Result<Compiled, String> {
        if m.get_export("_start").is_none() {
            return Err("module has no `_start` export: build it as a wasi command".into());
        }
        let pre = self.p1_linker.instantiate_pre(m).map_err(|e| format!("cannot link module: {}", first_line(&e)))?;
        Ok(Compiled::Module(pre))
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The guests' tokio runtime; shut down without blocking when dropped, which
/// may happen inside another runtime.
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

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---- running a guest ----

/// Store data of a core module.
pub struct P1State {
    wasi: WasiP1Ctx,
    limits: Limiter,
}

fn p1_ctx(s: &mut P1State) -> &mut WasiP1Ctx {
    &mut s.wasi
}

/// Store data of a component.
pub struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// [`StoreLimits`] that also remember whether the memory limit was hit, so a
/// replica is reported as out of memory rather than with a raw trap.
struct Limiter {
    inner: StoreLimits,
    limit: Option<usize>,
    exceeded: bool,
    /// The replica's usage, and how many bytes of it this run's memories hold.
    usage: Arc<crate::metrics::Usage>,
    held: u64,
}

impl Limiter {
    fn new(limit: u64, usage: Arc<crate::metrics::Usage>) -> Limiter {
        let limit = (limit > 0).then(|| usize::try_from(limit).unwrap_or(usize::MAX));
        let mut b = StoreLimitsBuilder::new().trap_on_grow_failure(true);
        if let Some(l) = limit {
            b = b.memory_size(l);
        }
        Limiter { inner: b.build(), limit, exceeded: false, usage, held: 0 }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        // The store and its memories are gone with this run.
        self.usage.add_memory(-i64::try_from(self.held).unwrap_or(i64::MAX));
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if self.limit.is_some_and(|l| desired > l) {
            self.exceeded = true;
        }
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            let grown = desired.saturating_sub(current) as u64;
            self.held += grown;
            self.usage.add_memory(i64::try_from(grown).unwrap_or(i64::MAX));
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

fn wasi_builder(spec: &RunSpec, log: &Arc<LogSink>) -> WasiCtxBuilder {
    let mut b = WasiCtxBuilder::new();
    // No ambient authority: these are wasmtime-wasi's defaults, said out loud so
    // that a default changing upstream cannot open the network to guests.
    b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    b.stdout(log.guest_stream(Stream::Stdout)).stderr(log.guest_stream(Stream::Stderr));
    b.arg(&spec.deployment);
    b.args(&spec.args);
    for (k, v) in &spec.env {
        b.env(k, v);
    }
    b.env("SKIFF_DEPLOYMENT", &spec.deployment)
        .env("SKIFF_REPLICA", &spec.replica)
        .env("SKIFF_REVISION", spec.revision.to_string());
    for p in &spec.preopens {
        let perms = if p.writable { wasmtime_wasi::FsPerms::ReadWrite } else { wasmtime_wasi::FsPerms::ReadOnly };
        if let Err(e) = b.preopened_dir(&p.host, &p.guest, perms) {
            // The supervisor made the directory just before; say so if it vanished.
            log.system(&format!("cannot give the guest {} ({}): {e}", p.guest, p.host.display()));
        }
    }
    b
}

async fn run_guest(engine: Engine, compiled: Arc<Compiled>, spec: RunSpec, log: Arc<LogSink>) -> Outcome {
    match &*compiled {
        Compiled::Module(pre) => {
            let state = P1State {
                wasi: wasi_builder(&spec, &log).build_p1(),
                limits: Limiter::new(spec.memory_limit, spec.usage.clone()),
            };
            let mut store = Store::new(&engine, state);
            store.limiter(|s| &mut s.limits);
            store.epoch_deadline_async_yield_and_update(1);
            let result = async {
                let timer = crate::metrics::METRICS.instantiate_seconds.start_timer();
                let instance = pre.instantiate_async(&mut store).await?;
                timer.observe_duration();
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }
            .await;
            classify(result.map(|()| 0), store.data().limits.exceeded, spec.memory_limit)
        }
        Compiled::Component(pre) => {
            let state = P2State {
                ctx: wasi_builder(&spec, &log).build(),
                table: ResourceTable::new(),
                limits: Limiter::new(spec.memory_limit, spec.usage.clone()),
            };
            let mut store = Store::new(&engine, state);
            store.limiter(|s| &mut s.limits);
            store.epoch_deadline_async_yield_and_update(1);
            let result = async {
                let timer = crate::metrics::METRICS.instantiate_seconds.start_timer();
                let command = pre.instantiate_async(&mut store).await?;
                timer.observe_duration();
                command.wasi_cli_run().call_run(&mut store).await
            }
            .await;
            // `run` returning `err` is how a component says "exit status 1".
            let status = result.map(|r| if r.is_ok() { 0 } else { 1 });
            classify(status, store.data().limits.exceeded, spec.memory_limit)
        }
    }
}

fn classify(result: wasmtime::Result<i32>, memory_exceeded: bool, limit: u64) -> Outcome {
    match result {
        Ok(status) => Outcome::Exited(status),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                return Outcome::Exited(exit.0);
            }
            if memory_exceeded {
                return Outcome::MemoryExceeded(limit);
            }
            if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
                return Outcome::Failed(format!("trapped: {trap}"));
            }
            Outcome::Failed(first_line(&e))
        }
    }
}

fn first_line(e: &wasmtime::Error) -> String {
    let msgs: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let joined = msgs.join(": ");
    joined.lines().next().unwrap_or("").to_string()
}

// ---- digests and files ----

/// The hex part of `sha256:<64 hex>`, checked (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, String> {
    let hex =
        digest.strip_prefix("sha256:").ok_or_else(|| format!("blob digest {digest:?} must start with sha256:"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("blob digest {digest:?} must be sha256: followed by 64 lowercase hex digits"));
    }
    Ok(hex)
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Feeds `Hash` output into sha256, to name the cache directory by the engine's
/// compatibility hash stably across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
