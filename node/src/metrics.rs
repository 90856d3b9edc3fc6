//! The node's Prometheus metrics, served at `/metrics` on the node API, and the
//! per-replica resource accounting behind them (also sent in heartbeats).
//!
//! Counters and histograms live in one process-wide registry (a process runs one
//! node outside tests). Gauges of what runs now — replicas by state, per-replica
//! cpu and memory — are rebuilt from the agent's replicas at every scrape, so a
//! replica's series disappear with the replica. Names are documented in
//! `docs/metrics.md`.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use skiff_api::{ReplicaStatus, Runtime};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;

/// What one replica uses, updated by the runtime while its guest runs.
#[derive(Debug, Default)]
pub struct Usage {
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
    requests: AtomicU64,
    /// Requests answered with a 5xx status.
    errors: AtomicU64,
    /// Requests by latency to the response head, per bucket of
    /// `skiff_api::LATENCY_BUCKETS_MS` and one for slower.
    latency: [AtomicU64; skiff_api::LATENCY_BUCKETS_MS.len() + 1],
}

impl Usage {
    /// Adds time spent running the guest.
    pub fn add_cpu(&self, d: Duration) {
        self.cpu_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Adds `delta` bytes to the memory held (negative when a run ends).
    pub fn add_memory(&self, delta: i64) {
        if delta >= 0 {
            self.memory_bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let d = delta.unsigned_abs();
            let _ = self.memory_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| Some(m.saturating_sub(d)));
        }
    }

    /// CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Memory held now, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// Counts one HTTP request the ingress passed to the replica.
    pub fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP requests passed to the replica so far (its autoscaling input).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts how a request the ingress passed to the replica was answered
    /// (canary analysis): its status and its time to the response head.
    pub fn add_response(&self, status: u16, elapsed: Duration) {
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        let i = skiff_api::LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b as f64)
            .unwrap_or(skiff_api::LATENCY_BUCKETS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered with a 5xx status so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The latency histogram's cumulative counts; empty before any request.
    pub fn latency(&self) -> Vec<u64> {
        let counts: Vec<u64> = self.latency.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        if counts.iter().all(|n| *n == 0) { Vec::new() } else { counts }
    }
}

/// A future that charges the CPU time its `poll` takes to a replica. A Wasm
/// guest runs only inside `poll` (async wasmtime yields at every epoch tick), so
/// this is the guest's CPU time plus the host calls it makes. The clock is the
/// polling thread's CPU clock, not the wall clock: a poll preempted on a busy
/// machine is charged only what it ran.
pub struct Metered<F> {
    inner: Pin<Box<F>>,
    usage: Arc<Usage>,
}

impl<F: Future> Metered<F> {
    /// Wraps `inner`, charging `usage`.
    pub fn new(inner: F, usage: Arc<Usage>) -> Metered<F> {
        Metered { inner: Box::pin(inner), usage }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // A poll runs on one thread from start to end, so the difference of that
        // thread's CPU clock is what this poll used.
        let start = thread_cpu_time();
        let out = self.inner.as_mut().poll(cx);
        self.usage.add_cpu(thread_cpu_time().saturating_sub(start));
        out
    }
}

/// The CPU time the calling thread has used so far (zero if the clock cannot be
/// read, which Linux never refuses for the calling thread).
fn thread_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from).unwrap_or_default()
}

/// The node's process-wide metrics.
pub struct NodeMetrics {
    registry: Registry,
    /// Restarts by deployment.
    pub restarts: IntCounterVec,
    /// Ended runs by deployment and reason (`success`, `error`, `memory_limit`, `trap`).
    pub exits: IntCounterVec,
    /// Time to compile an artifact, a command's or an HTTP component's (not
    /// counting cache hits).
    pub compile_seconds: Histogram,
    /// Compiled code loaded from the on-disk cache without compiling.
    pub compiled_code_loads: IntCounter,
    /// Bytes the image and artifact caches hold on disk, by kind (`layers`,
    /// `compiled`, `blobs`), as of the last collection (`crate::gc`).
    pub image_gc_held_bytes: IntGaugeVec,
    /// Bytes the collection removed, by kind and reason (`idle`, `disk_pressure`).
    pub image_gc_freed_bytes: IntCounterVec,
    /// Time to instantiate a guest.
    pub instantiate_seconds: Histogram,
    /// Time to instantiate a `wasi:http` guest for one request, from the pool.
    pub http_instantiate_seconds: Histogram,
    /// Memory-limit traps, of command runs and of HTTP requests.
    pub memory_limit_traps: IntCounterVec,
    /// Requests the ingress answered by deployment and status code (the
    /// deployment is empty when the request named none that exists).
    pub ingress_requests: IntCounterVec,
    /// Time from a request's arrival at the ingress to its response head.
    pub ingress_seconds: HistogramVec,
    /// HTTP requests stopped at their deadline (their handler interrupted at its
    /// next epoch tick), by deployment.
    pub deadline_interruptions: IntCounterVec,
    /// Requests turned away because every slot of the instance pool was busy.
    pub admission_rejections: IntCounter,
    /// Calls to another namespace refused under `isolation: namespace` (#20),
    /// by the caller's namespace and runtime (`wasm`: an HTTP component's
    /// outbound request; `container`: the ingress answered 403).
    pub isolation_refusals: IntCounterVec,
    pool_slots: IntGauge,
    pool_in_use: IntGauge,
    /// The HTTP runtime's admission semaphore and its size, read at each scrape.
    pool: Mutex<Option<(Weak<Semaphore>, u32)>>,
    replicas: IntGaugeVec,
    cpu: CounterVec,
    memory: IntGaugeVec,
    /// Scrapes rebuild the per-replica families: one at a time.
    scrape: Mutex<()>,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    // Names are constants checked by the tests: registering cannot fail but for a
    // duplicate, which would be a bug caught at once.
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!("registering a metric: {e}");
    }
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    registered(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
}

/// The node metrics of this process.
pub static METRICS: LazyLock<NodeMetrics> = LazyLock::new(NodeMetrics::new);

impl NodeMetrics {
    /// Every node metric, registered in a registry of its own.
    fn new() -> NodeMetrics {
        let r = Registry::new();
        NodeMetrics {
            restarts: counter_vec(
                &r,
                "skiff_node_replica_restarts_total",
                "Replica restarts by deployment",
                &["deployment"],
            ),
            exits: counter_vec(
                &r,
                "skiff_node_replica_exits_total",
                "Ended replica runs by deployment and reason (success, error, memory_limit, trap)",
                &["deployment", "reason"],
            ),
            compile_seconds: histogram(
                &r,
                "skiff_node_wasm_compile_duration_seconds",
                "Time to compile a Wasm artifact, command or HTTP component (cache misses only)",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            compiled_code_loads: registered(
                &r,
                IntCounter::new(
                    "skiff_node_wasm_compiled_code_loads_total",
                    "Compiled Wasm code loaded from the on-disk cache without compiling (commands and HTTP components)",
                )
                .expect("valid metric"),
            ),
            image_gc_held_bytes: gauge_vec(
                &r,
                "skiff_node_image_gc_held_bytes",
                "Bytes of unpacked layers, compiled Wasm code and blobs cached on the node's disk, by kind",
                &["kind"],
            ),
            image_gc_freed_bytes: counter_vec(
                &r,
                "skiff_node_image_gc_freed_bytes_total",
                "Bytes of cached layers, compiled code and blobs removed, by kind and reason (idle, disk_pressure)",
                &["kind", "reason"],
            ),
            instantiate_seconds: histogram(
                &r,
                "skiff_node_wasm_instantiate_duration_seconds",
                "Time to instantiate a Wasm guest",
                vec![0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5],
            ),
            http_instantiate_seconds: histogram(
                &r,
                "skiff_node_http_instantiate_duration_seconds",
                "Time to instantiate a wasi:http guest for one request (from the pooling allocator)",
                vec![0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.005, 0.05],
            ),
            memory_limit_traps: counter_vec(
                &r,
                "skiff_node_wasm_memory_limit_traps_total",
                "Guests stopped for growing memory past their limit, by deployment",
                &["deployment"],
            ),
            ingress_requests: counter_vec(
                &r,
                "skiff_node_ingress_requests_total",
                "Requests answered by this node's ingress (not those another ingress passed on), by deployment, code and, during a canary or blue/green rollout, the revision chosen",
                &["deployment", "code", "revision"],
            ),
            ingress_seconds: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "skiff_node_ingress_request_duration_seconds",
                        "Time from a request's arrival at the ingress to its response head, by deployment",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["deployment"],
                )
                .expect("valid metric"),
            ),
            deadline_interruptions: counter_vec(
                &r,
                "skiff_node_wasm_deadline_interruptions_total",
                "HTTP requests whose handler was interrupted at the request deadline (504), by deployment",
                &["deployment"],
            ),
            isolation_refusals: counter_vec(
                &r,
                "skiff_node_namespace_isolation_refusals_total",
                "Calls to another namespace's deployment refused because the caller's namespace has isolation: namespace, by the caller's namespace and runtime (wasm, container)",
                &["namespace", "runtime"],
            ),
            admission_rejections: registered(
                &r,
                IntCounter::new(
                    "skiff_node_http_admission_rejections_total",
                    "HTTP requests turned away (503) because every instance slot was busy",
                )
                .expect("valid metric"),
            ),
            pool_slots: registered(
                &r,
                IntGauge::new("skiff_node_http_pool_slots", "Instances of HTTP components that may run at once")
                    .expect("valid metric"),
            ),
            pool_in_use: registered(
                &r,
                IntGauge::new("skiff_node_http_pool_instances_in_use", "Instances of HTTP components running now")
                    .expect("valid metric"),
            ),
            pool: Mutex::new(None),
            replicas: gauge_vec(
                &r,
                "skiff_node_replicas",
                "Replicas on this node by state and runtime",
                &["state", "runtime"],
            ),
            cpu: registered(
                &r,
                CounterVec::new(
                    Opts::new("skiff_node_replica_cpu_seconds_total", "CPU time used by a replica"),
                    &["deployment", "replica"],
                )
                .expect("valid metric"),
            ),
            memory: gauge_vec(
                &r,
                "skiff_node_replica_memory_bytes",
                "Memory a replica holds now (Wasm linear memories)",
                &["deployment", "replica"],
            ),
            scrape: Mutex::new(()),
            registry: r,
        }
    }
}

/// One replica as the metrics see it.
pub struct ReplicaView {
    /// Its deployment.
    pub deployment: String,
    /// Its runtime.
    pub runtime: Runtime,
    /// Its status and usage.
    pub status: ReplicaStatus,
}

/// The replicas the node runs now.
pub type ReplicaSource = Box<dyn Fn() -> Vec<ReplicaView> + Send + Sync>;

impl NodeMetrics {
    /// Reports the occupancy of the HTTP instance pool, whose admission
    /// semaphore has `slots` permits, at every scrape (while it exists).
    pub fn watch_pool(&self, admission: &Arc<Semaphore>, slots: u32) {
        *self.pool.lock().unwrap_or_else(|e| e.into_inner()) = Some((Arc::downgrade(admission), slots));
    }

    /// Counts a request the ingress answered, and how long it took to answer.
    /// `revision` is the one a split chose (#18), "" when none did.
    pub fn ingress_request(&self, deployment: &str, status: u16, revision: &str, elapsed: Duration) {
        self.ingress_requests.with_label_values(&[deployment, status.to_string().as_str(), revision]).inc();
        self.ingress_seconds.with_label_values(&[deployment]).observe(elapsed.as_secs_f64());
    }

    /// The text exposition of every node metric, with the gauges of `replicas`.
    pub fn render(&self, replicas: &[ReplicaView]) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.replicas.reset();
        self.cpu.reset();
        self.memory.reset();
        // Every state appears, at 0 when empty, so a query for "running" finds a
        // series even on an idle node.
        for state in ["starting", "running", "ready", "exited", "failed"] {
            self.replicas.with_label_values(&[state, "wasm"]).set(0);
        }
        for r in replicas {
            let runtime = r.runtime.to_string();
            self.replicas.with_label_values(&[r.status.state.to_string().as_str(), runtime.as_str()]).inc();
            let labels = [r.deployment.as_str(), r.status.id.as_str()];
            self.cpu.with_label_values(&labels).inc_by(r.status.cpu_seconds.max(0.0));
            self.memory.with_label_values(&labels).set(i64::try_from(r.status.memory_bytes).unwrap_or(i64::MAX));
        }
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (slots, in_use) = match pool.and_then(|(sem, slots)| Some((sem.upgrade()?, slots))) {
            Some((sem, slots)) => (slots as usize, (slots as usize).saturating_sub(sem.available_permits())),
            None => (0, 0),
        };
        self.pool_slots.set(i64::try_from(slots).unwrap_or(i64::MAX));
        self.pool_in_use.set(i64::try_from(in_use).unwrap_or(i64::MAX));
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `/metrics` for the node API.
pub fn router(replicas: ReplicaSource) -> Router {
    let replicas = Arc::new(replicas);
    Router::new().route("/metrics", get(serve)).with_state(replicas)
}

async fn serve(State(replicas): State<Arc<ReplicaSource>>) -> impl IntoResponse {
    let text = METRICS.render(&replicas());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::ReplicaState;

    #[test]
    fn per_replica_series_go_with_the_replica() {
        let status = |id: &str| ReplicaStatus {
            id: id.into(),
            generation: 1,
            state: ReplicaState::Running,
            restarts: 0,
            reason: None,
            exit_code: None,
            cpu_seconds: 1.5,
            memory_bytes: 65536,
            requests: 0,
            errors: 0,
            latency: Vec::new(),
        };
        let view = |id: &str| ReplicaView { deployment: "web".into(), runtime: Runtime::Wasm, status: status(id) };
        let text = METRICS.render(&[view("web-aaaaaa"), view("web-bbbbbb")]);
        assert!(text.contains(r#"skiff_node_replica_cpu_seconds_total{deployment="web",replica="web-aaaaaa"} 1.5"#));
        assert!(text.contains(r#"skiff_node_replica_memory_bytes{deployment="web",replica="web-bbbbbb"} 65536"#));
        assert!(text.contains(r#"skiff_node_replicas{runtime="wasm",state="running"} 2"#), "{text}");
        let text = METRICS.render(&[view("web-aaaaaa")]);
        assert!(!text.contains("web-bbbbbb"), "a gone replica's series must go: {text}");
        assert!(text.contains(r#"skiff_node_replicas{runtime="wasm",state="running"} 1"#));
    }

    #[test]
    fn pool_occupancy_and_ingress_requests() {
        let m = NodeMetrics::new();
        let text = m.render(&[]);
        // Before an HTTP runtime exists the pool series are there, at 0.
        assert!(text.contains("skiff_node_http_pool_slots 0\n"), "{text}");
        assert!(text.contains("skiff_node_http_admission_rejections_total 0\n"), "{text}");
        let admission = Arc::new(Semaphore::new(4));
        m.watch_pool(&admission, 4);
        let _held = admission.clone().try_acquire_many_owned(3).expect("permits");
        m.ingress_request("web", 200, "", Duration::from_millis(3));
        m.ingress_request("web", 200, "", Duration::from_millis(30));
        m.ingress_request("", 404, "", Duration::from_micros(100));
        let text = m.render(&[]);
        assert!(text.contains("skiff_node_http_pool_slots 4\n"), "{text}");
        assert!(text.contains("skiff_node_http_pool_instances_in_use 3\n"), "{text}");
        assert!(
            text.contains(r#"skiff_node_ingress_requests_total{code="200",deployment="web",revision=""} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"skiff_node_ingress_requests_total{code="404",deployment="",revision=""} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"skiff_node_ingress_request_duration_seconds_bucket{deployment="web",le="0.005"} 1"#));
        assert!(text.contains(r#"skiff_node_ingress_request_duration_seconds_count{deployment="web"} 2"#));
        // A dropped runtime's pool is no longer reported.
        drop(_held);
        drop(admission);
        assert!(m.render(&[]).contains("skiff_node_http_pool_slots 0\n"));
    }

    #[test]
    fn usage_counts_memory_both_ways() {
        let u = Usage::default();
        u.add_memory(1 << 20);
        u.add_memory(-(1 << 19));
        assert_eq!(u.memory_bytes(), 1 << 19);
        u.add_memory(-(1 << 30));
        assert_eq!(u.memory_bytes(), 0);
    }
}
