//! Serving one request: a fresh instance of the replica's handler from the
//! pool, under the request deadline and the replica's memory limit, with its
//! env and preopens; a failure of the guest is one line of text to the client
//! and the replica's log.

use super::HttpRuntime;
use super::outbound::Outbound;
use crate::engine::first_line;
use crate::logs::LogSink;
use crate::runtime::Preopen;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use skiff_api::quantity::format_memory;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

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

/// One HTTP replica on this node: what each of its instances is made from.
pub struct HttpReplica {
    /// Replica id.
    pub id: String,
    /// Its deployment.
    pub deployment: String,
    pub(super) revision: u64,
    pub(super) pre: ProxyPre<HttpState>,
    pub(super) env: Vec<(String, String)>,
    /// Secret and volume directories each request's instance sees.
    pub(super) preopens: Vec<Preopen>,
    /// Where the ingress counts the requests it passes on.
    pub(super) usage: Arc<crate::metrics::Usage>,
    pub(super) memory_limit: u64,
    pub(super) allowed_hosts: Arc<Vec<String>>,
    pub(super) log: Option<Arc<LogSink>>,
    pub(super) inflight: AtomicUsize,
}

impl HttpReplica {
    /// Counts a request from the ingress (not a probe's) toward its usage.
    pub fn count_request(&self) {
        self.usage.add_request();
    }

    /// Where the ingress counts its requests and their answers.
    pub fn usage(&self) -> &crate::metrics::Usage {
        &self.usage
    }

    /// Requests it is serving now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

impl crate::routes::Routable for HttpReplica {
    fn deployment(&self) -> &str {
        &self.deployment
    }
}

impl HttpRuntime {
    pub(super) fn store(&self, replica: &HttpReplica) -> Store<HttpState> {
        let who = (replica.deployment.as_str(), replica.id.as_str(), replica.revision);
        let env = replica.env.iter().map(|(k, v)| (k, v));
        let mut b = crate::engine::wasi_builder(who, &[], env, &replica.preopens, replica.log.as_ref());
        let state = HttpState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outbound {
                allowed: replica.allowed_hosts.clone(),
                suffix: self.config.suffix.clone(),
                ingress: self.config.ingress,
                tls: self.tls.clone(),
                isolated: replica
                    .env
                    .iter()
                    .any(|(k, v)| k == skiff_api::namespace::ISOLATION_ENV && v == "namespace")
                    .then(|| skiff_api::namespace::of(&replica.deployment).to_string()),
            },
            limits: Limiter::new(replica.memory_limit),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// Whether the replica's handler instantiates (what "ready" means for it).
    pub(super) async fn check_instantiable(&self, replica: &HttpReplica) -> Result<(), String> {
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
