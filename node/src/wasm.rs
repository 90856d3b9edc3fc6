//! The Wasm runtime: one shared wasmtime [`Engine`], an epoch ticker, a tokio
//! runtime of its own for guests, and the compiled-code cache (blobs are
//! [`crate::blobs`]'s, the pieces both wasmtime engines share [`crate::engine`]'s).
//!
//! Guests run on their own multi-thread runtime so that a guest spinning in a
//! loop can never starve the agent (heartbeats) or the node API: epoch
//! interruption makes every guest yield each tick, and the agent's runtime never
//! polls guest code at all.
//!
//! Two shapes are run: core modules against WASI preview 1 (`_start`) and
//! components against WASI 0.2 (`wasi:cli/run`). Guests get no network, and
//! only the directories (secrets, volumes) and environment their spec declares.

use crate::blobs::{Blobs, digest_hex, fetcher};
use crate::engine::{GuestRuntime, first_line, load_or_compile};
use crate::logs::LogSink;
use crate::runtime::{ArtifactError, BoxFuture, Outcome, RunSpec, Runtime, wasm_digest};
use skiff_api::{Assignment, Client};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// A compiled artifact, ready to instantiate.
pub enum Compiled {
    /// A core module, run with WASI preview 1.
    Module(InstancePre<P1State>),
    /// A component, run as a `wasi:cli/command`.
    Component(CommandPre<P2State>),
}

/// The node's Wasm runtime. Dropping it stops the ticker and every guest.
pub struct WasmRuntime {
    compiler: Arc<Compiler>,
    blobs: Blobs,
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

        let cache_dir = crate::engine::cache_dir(&engine, data_dir, "")?;
        let blobs = Blobs::new(data_dir)?;
        let guests = crate::engine::guest_runtime("skiff-guest")?;

        let mut p1_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, p1_ctx)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi preview 1: {e}"))?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi 0.2: {e}"))?;

        let ticker_stop = crate::engine::spawn_epoch_ticker(&engine, "skiff-epoch")?;

        Ok(WasmRuntime {
            compiler: Arc::new(Compiler { engine, cache_dir, p1_linker, p2_linker, compilations: AtomicU64::new(0) }),
            blobs,
            guests,
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
        self.blobs.get(hex, fetch).await
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
        let load = |path: &Path| self.load_cached(path, component);
        let compile = || {
            self.compilations.fetch_add(1, Ordering::Relaxed);
            if component { self.engine.precompile_component(bytes) } else { self.engine.precompile_module(bytes) }
                .map_err(|e| {
                    format!(
                        "not a valid WebAssembly {}: {}",
                        if component { "component" } else { "module" },
                        first_line(&e)
                    )
                })
        };
        // The outer error: the code could not be compiled, stored or loaded; the
        // inner one: it does not link here.
        load_or_compile(&path, hex, load, compile)?
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

/// Wasm commands: modules against WASI preview 1 and `wasi:cli/command` components.
impl Runtime for WasmRuntime {
    type Prepared = Arc<Compiled>;

    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<Arc<Compiled>, ArtifactError>> {
        Box::pin(async move {
            let digest = wasm_digest(a)?;
            self.artifact(digest, fetcher(client, digest)).await
        })
    }

    fn run(self: Arc<Self>, compiled: &Arc<Compiled>, spec: RunSpec, log: Arc<LogSink>) -> BoxFuture<'static, Outcome> {
        Box::pin(WasmRuntime::run(&self, compiled.clone(), spec, log))
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
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
    let who = (spec.deployment.as_str(), spec.replica.as_str(), spec.revision);
    crate::engine::wasi_builder(who, &spec.args, &spec.env, &spec.preopens, Some(log))
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
