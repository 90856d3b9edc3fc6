//! What the node's two wasmtime engines share: the one for commands
//! ([`crate::wasm`]) and the pooled one for HTTP components ([`crate::http`]).
//! Each has a tokio runtime of its own for guests, one epoch ticker, and a cache
//! of compiled code on disk in a directory named by the engine's compatibility
//! hash, so code compiled by another wasmtime version or configuration is never
//! loaded.

use crate::blobs::write_atomic;
use crate::logs::{LogSink, Stream};
use crate::metrics::METRICS;
use crate::runtime::Preopen;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::{Engine, PoolingAllocationConfig};
use wasmtime_wasi::WasiCtxBuilder;

/// How often the epoch advances; a busy guest yields this often.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Worker threads of each guests' runtime.
const GUEST_WORKERS: usize = 2;

/// Freed pool slots decommitted together: one `madvise` call and one TLB
/// shootdown per batch, not per request.
const POOL_DECOMMIT_BATCH: usize = 16;

/// The pooling allocator of the HTTP engine, for `instances` concurrent
/// instances whose memories grow to at most `max_memory` bytes.
///
/// A fresh instance per request is cheap because a slot keeps what the last
/// instance of the same module set up: the copy-on-write mapping of its memory
/// image (`Config::memory_init_cow`, wasmtime's default, mapped from the
/// compiled file on disk), so instantiation maps nothing and only the pages a
/// request writes are copied.
///
/// Tried for big guests (#17) and not kept: keeping memory resident between
/// instances (`linear_memory_keep_resident` 16 MiB, `table_keep_resident` 1
/// MiB, no decommit batching). Under `wasmtime serve` on this machine, at a
/// load average near 2, it took an 18 MB componentize-py handler from ~255 to
/// ~930 req/s (8 MiB: ~470; 32 MiB and more: no better; with `pagemap_scan`
/// ~320-350: the scan finds at most 32 dirty regions and decommits the rest).
/// In skiff, measured at a load average of 6-9 (five other builds running),
/// it did not show: `make bench`'s http-big went from 375 to 282 req/s (1.07x
/// to 0.85x `wasmtime serve`), and three alternating 8 s runs of two `skiff dev`
/// gave 341/194/201 req/s without it against 240/154/258 with it. It also
/// resets (copies) the whole kept region on every instance's end, which costs
/// a small guest such as hello a megabyte of writes per request. Left for a
/// measurement on a quiet machine.
pub(crate) fn http_pool(instances: u32, max_memory: usize) -> PoolingAllocationConfig {
    let n = instances;
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .max_memory_size(max_memory)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_core_instances_per_component(32)
        .decommit_batch_size(POOL_DECOMMIT_BATCH);
    p
}

/// The tokio runtime guests run on, apart from the daemon's own so that a busy
/// guest never starves heartbeats or the node API.
pub(crate) fn guest_runtime(thread_name: &str) -> anyhow::Result<GuestRuntime> {
    let rt = tokio::runtime::Builder::new_multi_thread()
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
        .map_err(|e| anyhow::anyhow!("cannot start the guest runtime {thread_name}: {e}"))?;
    Ok(GuestRuntime(Some(rt)))
}

/// The guests' tokio runtime; shut down without blocking when dropped, which
/// may happen inside another runtime.
pub(crate) struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
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

/// The compiled-code directory of `engine` under `data_dir/cache`, created:
/// `<prefix><first 32 hex digits of the compatibility hash>`.
pub(crate) fn cache_dir(engine: &Engine, data_dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let compat = hex::encode(hasher.0.finalize());
    let dir = data_dir.join("cache").join(format!("{prefix}{}", &compat[..32]));
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create the compile cache {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Feeds `Hash` output into sha256, to name the cache directory by the engine's
/// compatibility hash stably across processes (std's hasher is seeded per process).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A wasmtime error and its causes on one line, as a log line or a reason wants it.
pub(crate) fn first_line(e: &wasmtime::Error) -> String {
    let msgs: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    msgs.join(": ").lines().next().unwrap_or("").to_string()
}

/// The compiled code of blob `hex`, kept at `path`: loaded from there when a
/// usable file is there, else compiled by `compile`, stored and loaded. `load`
/// reads the file; its error means the file is unusable (it is discarded and
/// the code compiled again). Blocking.
///
/// Both outcomes are visible: a load counts in
/// `skiff_node_wasm_compiled_code_loads_total`, a compile is timed in
/// `skiff_node_wasm_compile_duration_seconds`, and each says so in the node's log.
pub(crate) fn load_or_compile<T>(
    path: &Path,
    hex: &str,
    load: impl Fn(&Path) -> Result<T, String>,
    compile: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<T, String> {
    if path.exists() {
        match load(path) {
            Ok(loaded) => {
                METRICS.compiled_code_loads.inc();
                tracing::info!("loaded compiled code for sha256:{hex} from cache");
                return Ok(loaded);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "discarding unusable compiled code: {e}");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let started = Instant::now();
    let code = compile();
    let took = started.elapsed();
    METRICS.compile_seconds.observe(took.as_secs_f64());
    let code = code?;
    tracing::info!("compiled sha256:{hex} in {} ms", took.as_millis());
    write_atomic(path, &code).map_err(|e| format!("cannot store compiled code in {}: {e}", path.display()))?;
    load(path).map_err(|e| format!("cannot load compiled code: {e}"))
}

/// What a guest sees of its replica, commands and HTTP instances alike: no
/// network, the deployment's name as `argv[0]` then `args`, `env` and the
/// `SKIFF_*` names, the preopened directories, and its output in the log.
pub(crate) fn wasi_builder<'a>(
    (deployment, replica, revision): (&str, &str, u64),
    args: &[String],
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
    preopens: &[Preopen],
    log: Option<&Arc<LogSink>>,
) -> WasiCtxBuilder {
    let mut b = WasiCtxBuilder::new();
    // No ambient authority: these are wasmtime-wasi's defaults, said out loud so
    // that a default changing upstream cannot open the network to guests.
    b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    if let Some(log) = log {
        b.stdout(log.guest_stream(Stream::Stdout)).stderr(log.guest_stream(Stream::Stderr));
    }
    b.arg(deployment);
    b.args(args);
    for (k, v) in env {
        b.env(k, v);
    }
    b.env("SKIFF_DEPLOYMENT", deployment).env("SKIFF_REPLICA", replica).env("SKIFF_REVISION", revision.to_string());
    for p in preopens {
        let perms = if p.writable { wasmtime_wasi::FsPerms::ReadWrite } else { wasmtime_wasi::FsPerms::ReadOnly };
        if let Err(e) = b.preopened_dir(&p.host, &p.guest, perms)
            && let Some(log) = log
        {
            // The supervisor made the directory just before; say so if it vanished.
            log.system(&format!("cannot give the guest {} ({}): {e}", p.guest, p.host.display()));
        }
    }
    b
}
