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
//!
//! Files: [`compile`] (the engine, the compiled-code cache, what counts as an
//! HTTP component), [`serve`] (one request: its store, instance, deadline and
//! failures), [`outbound`] (a guest's own HTTP requests), [`run`] (the
//! [`crate::runtime::Runtime`] of HTTP components: a replica routed while ready,
//! under its probes).

mod compile;
mod outbound;
mod run;
mod serve;
#[cfg(test)]
mod tests;

pub use compile::is_http_component;
pub use outbound::host_allowed;
pub use serve::{Body, BoxError, HttpReplica, HttpState, text};

use crate::blobs::Blobs;
use crate::engine::GuestRuntime;
use crate::routes::Table;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Largest linear memory of an HTTP instance (the pool's slot size).
pub const POOL_MEMORY: u64 = 1 << 30;
/// Instances that may run at once on a node (the pool's size and the admission limit).
pub const DEFAULT_CONCURRENCY: u32 = 1000;
/// How long one request may run, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The host suffix that names a deployment, by default.
pub const DEFAULT_SUFFIX: &str = "skiff.local";

/// An HTTP component compiled and linked, ready to instantiate per request.
pub type HttpHandler = ProxyPre<HttpState>;

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
    /// Longest the ingress holds a request for a deployment at zero while a
    /// replica starts (`--activation-timeout`; then 504).
    pub activation_timeout: Duration,
    /// Most requests held per deployment while it starts (`--activation-queue`;
    /// more get 503 with `Retry-After`).
    pub activation_queue: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            suffix: DEFAULT_SUFFIX.to_string(),
            ingress: None,
            outbound_ca_file: None,
            activation_timeout: crate::activation::DEFAULT_TIMEOUT,
            activation_queue: crate::activation::DEFAULT_QUEUE,
        }
    }
}

/// The compiled handler of one digest once ready, or why it never can be.
type HandlerCell = OnceCell<Result<HttpHandler, String>>;

/// The node's HTTP component runtime.
pub struct HttpRuntime {
    engine: Engine,
    linker: Linker<HttpState>,
    cache_dir: PathBuf,
    pooling: bool,
    blobs: Blobs,
    compiled: Mutex<HashMap<String, Arc<HandlerCell>>>,
    guests: GuestRuntime,
    admission: Arc<Semaphore>,
    config: HttpConfig,
    /// The replicas served here, where the ingress finds them.
    local: Arc<Table<HttpReplica>>,
    ticker_stop: Arc<AtomicBool>,
    /// TLS for guests' outbound HTTPS, built once (the trust store is read here).
    tls: tokio_native_tls::TlsConnector,
}

impl HttpRuntime {
    /// A runtime keeping its compiled code under `data_dir/cache`.
    pub fn new(data_dir: &Path, config: HttpConfig) -> anyhow::Result<HttpRuntime> {
        let (engine, pooling) = match Engine::new(&compile::engine_config(Some(config.concurrency))) {
            Ok(e) => (e, true),
            Err(e) => {
                // A host with a small address space (ulimit -v, 32-bit) cannot
                // reserve the pool; serve with on-demand allocation instead.
                tracing::warn!("cannot reserve the http instance pool ({e}); allocating instances on demand");
                let engine = Engine::new(&compile::engine_config(None))
                    .map_err(|e| anyhow::anyhow!("cannot create the http wasm engine: {e}"))?;
                (engine, false)
            }
        };
        let cache_dir = crate::engine::cache_dir(&engine, data_dir, "http-")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi 0.2 for http components: {e}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot set up wasi:http: {e}"))?;

        let guests = crate::engine::guest_runtime("skiff-http-guest")?;
        let tls = outbound::outbound_tls(config.outbound_ca_file.as_deref())?;

        // One ticker for the engine, never one per request.
        let ticker_stop = crate::engine::spawn_epoch_ticker(&engine, "skiff-http-epoch")?;
        let admission = Arc::new(Semaphore::new(config.concurrency as usize));
        crate::metrics::METRICS.watch_pool(&admission, config.concurrency);

        Ok(HttpRuntime {
            engine,
            linker,
            cache_dir,
            pooling,
            blobs: Blobs::new(data_dir)?,
            compiled: Mutex::new(HashMap::new()),
            guests,
            admission,
            config,
            local: Arc::default(),
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

    /// Replicas of `deployment` served by this node, ready.
    pub fn local(&self, deployment: &str) -> Vec<Arc<HttpReplica>> {
        self.local.get(deployment)
    }

    /// A receiver that changes whenever a replica here becomes routable.
    pub fn local_additions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.local.additions()
    }
}

impl Drop for HttpRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
