//! The scheduler's Prometheus metrics (`/metrics`), the http_sd target list
//! (`/v1/prometheus/targets`) and the change signal the dashboard's live stream
//! and `skiff events -f` wait on.
//!
//! Counters and histograms are recorded where things happen (the request
//! middleware, the controllers loop, `State::transact`). Gauges of the cluster as
//! it is now (nodes, replicas, pending reasons, deployments) are computed from the
//! working set at each scrape, so they can never drift from it. Names are
//! documented in `docs/metrics.md`.

use crate::Core;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::Serialize;
use skiff_api::{JobState, NodeState, ReplicaState, RunOutcome};
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// The scheduler's metrics.
pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    api_seconds: HistogramVec,
    /// Replicas placed on a node.
    pub placements: IntCounter,
    /// Time of one placement pass (every pending replica considered once).
    pub placement_seconds: Histogram,
    /// When the last pass that placed a replica ended (Unix seconds): with
    /// `placements`, a placement rate read once afterwards, from the
    /// scheduler's own clock (the bench's quota-cost scenario does).
    pub last_placement: Gauge,
    /// Time of one store transaction, commit included.
    pub store_tx_seconds: Histogram,
    /// 1 while this server leads (always, on SQLite).
    pub leader: IntGauge,
    /// Bytes in the blob store (set by each blob collection, `blobs::collect`).
    pub blob_bytes: IntGauge,
    /// Bytes of blobs the blob collection deleted.
    pub blob_freed_bytes: IntCounter,
    nodes: IntGaugeVec,
    replicas: IntGaugeVec,
    pending: IntGaugeVec,
    deployments: IntGauge,
    desired: IntGaugeVec,
    running: IntGaugeVec,
    rollouts: IntGaugeVec,
    /// A canary's step (from 1) and weight, per deployment under one (#18).
    canary_step: IntGaugeVec,
    canary_weight: IntGaugeVec,
    /// Scrapes rebuild the gauges: one at a time.
    scrape: Mutex<()>,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    // Every name below is distinct; a duplicate would be a bug seen at once.
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!("registering a metric: {e}");
    }
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    registered(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
}

/// Fast operations: from 100 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
}

/// The scheduler metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    Metrics {
        api_requests: registered(
            &r,
            IntCounterVec::new(
                Opts::new("skiff_scheduler_api_requests_total", "API requests by route, method and status"),
                &["route", "method", "status"],
            )
            .expect("valid metric"),
        ),
        api_seconds: registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "skiff_scheduler_api_request_duration_seconds",
                    "API request latency by route and method (long polls and streams last as long as they wait)",
                )
                .buckets(latency_buckets()),
                &["route", "method"],
            )
            .expect("valid metric"),
        ),
        placements: registered(
            &r,
            IntCounter::new("skiff_scheduler_placements_total", "Replicas placed on a node").expect("valid metric"),
        ),
        placement_seconds: histogram(
            &r,
            "skiff_scheduler_placement_duration_seconds",
            "Time of one placement pass over the pending replicas",
            latency_buckets(),
        ),
        last_placement: registered(
            &r,
            Gauge::new(
                "skiff_scheduler_last_placement_timestamp_seconds",
                "When the last placement pass that placed a replica ended (Unix time)",
            )
            .expect("valid metric"),
        ),
        store_tx_seconds: histogram(
            &r,
            "skiff_scheduler_store_transaction_duration_seconds",
            "Time of one state store transaction, commit included",
            latency_buckets(),
        ),
        leader: registered(
            &r,
            IntGauge::new("skiff_scheduler_leader", "1 while this server leads the control plane")
                .expect("valid metric"),
        ),
        blob_bytes: registered(
            &r,
            IntGauge::new("skiff_scheduler_blob_bytes", "Bytes held in the blob store (images and Wasm artifacts)")
                .expect("valid metric"),
        ),
        blob_freed_bytes: registered(
            &r,
            IntCounter::new(
                "skiff_scheduler_blob_gc_freed_bytes_total",
                "Bytes of blobs deleted because nothing referred to them for the grace period",
            )
            .expect("valid metric"),
        ),
        nodes: gauge_vec(&r, "skiff_scheduler_nodes", "Nodes by state", &["state"]),
        replicas: gauge_vec(&r, "skiff_scheduler_replicas", "Live replicas by state", &["state"]),
        pending: gauge_vec(
            &r,
            "skiff_scheduler_pending_replicas",
            "Pending replicas by why they are not placed",
            &["reason"],
        ),
        deployments: registered(&r, IntGauge::new("skiff_scheduler_deployments", "Deployments").expect("valid metric")),
        desired: gauge_vec(
            &r,
            "skiff_scheduler_deployment_replicas_desired",
            "Replicas a deployment asks for",
            &["deployment"],
        ),
        running: gauge_vec(
            &r,
            "skiff_scheduler_deployment_replicas_running",
            "Replicas of a deployment running (or ready)",
            &["deployment"],
        ),
        rollouts: gauge_vec(
            &r,
            "skiff_scheduler_rollouts",
            "Deployments by the state of their latest rollout",
            &["state"],
        ),
        canary_step: gauge_vec(
            &r,
            "skiff_scheduler_canary_step",
            "The step (from 1) of a deployment's canary under way",
            &["deployment"],
        ),
        canary_weight: gauge_vec(
            &r,
            "skiff_scheduler_canary_weight_percent",
            "Percent of a deployment's requests the ingresses send to its canary",
            &["deployment"],
        ),
        scrape: Mutex::new(()),
        registry: r,
    }
});

/// Bumped after every committed change of the cluster state.
static CHANGES: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Says the cluster state changed.
pub fn changed() {
    CHANGES.send_modify(|v| *v = v.wrapping_add(1));
}

/// A receiver that wakes at the next change.
pub fn subscribe() -> watch::Receiver<u64> {
    CHANGES.subscribe()
}

/// The pending reason as a bounded label: the placement message names counts and
/// sizes, which would make a series per message.
pub fn pending_reason(reason: Option<&str>) -> &'static str {
    let Some(r) = reason else { return "not_yet_scheduled" };
    if r.contains("insufficient memory") {
        "insufficient_memory"
    } else if r.contains("insufficient cpu") {
        "insufficient_cpu"
    } else if r.contains("missing") {
        "constraints"
    } else if r.contains("runtime") {
        "no_runtime"
    } else if r.starts_with("0/0") || r.contains("no nodes") {
        "no_nodes"
    } else if r.contains("node ") {
        "nodes_not_ready"
    } else {
        "other"
    }
}

/// Counts every request by its route pattern (never the raw path: ids and names
/// in paths would make unbounded series).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &*METRICS;
    m.api_seconds.with_label_values(&[route.as_str(), method.as_str()]).observe(start.elapsed().as_secs_f64());
    m.api_requests.with_label_values(&[route.as_str(), method.as_str(), resp.status().as_str()]).inc();
    resp
}

impl Metrics {
    /// The text exposition, gauges computed from `core`'s working set now.
    fn render(&self, core: &Core) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for g in [
            &self.nodes,
            &self.replicas,
            &self.pending,
            &self.desired,
            &self.running,
            &self.rollouts,
            &self.canary_step,
            &self.canary_weight,
        ] {
            g.reset();
        }
        // Every state appears, at 0 when empty, so that queries and alerts on
        // "down" or "pending" always find a series.
        for s in [NodeState::Ready, NodeState::Draining, NodeState::Down] {
            self.nodes.with_label_values(&[s.to_string().as_str()]).set(0);
        }
        // Live states only: terminal replicas are deleted, never counted.
        for s in ReplicaState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            self.replicas.with_label_values(&[s.to_string().as_str()]).set(0);
        }
        {
            let st = core.state();
            let mem = st.mem();
            for n in mem.nodes() {
                self.nodes.with_label_values(&[n.state.to_string().as_str()]).inc();
            }
            for r in mem.all_replicas() {
                self.replicas.with_label_values(&[r.state.to_string().as_str()]).inc();
                if r.state == ReplicaState::Pending {
                    self.pending.with_label_values(&[pending_reason(r.reason.as_deref())]).inc();
                }
            }
            let mut count = 0;
            for name in mem.deployment_names() {
                if let Some(d) = mem.deployment(name) {
                    count += 1;
                    self.desired.with_label_values(&[name.as_str()]).set(i64::from(d.replicas));
                    self.running.with_label_values(&[name.as_str()]).set(i64::from(d.status.running));
                    self.rollouts.with_label_values(&[d.rollout.state.to_string().as_str()]).inc();
                }
            }
            self.deployments.set(count);
            for c in mem.canaries() {
                self.canary_step.with_label_values(&[c.name.as_str()]).set(i64::from(c.status.step) + 1);
                self.canary_weight.with_label_values(&[c.name.as_str()]).set(i64::from(c.status.weight));
            }
        }
        JOBS.set_gauges(core);
        NAMESPACES.set_gauges(core);
        let mut families = self.registry.gather();
        families.extend(JOBS.registry.gather());
        families.extend(NAMESPACES.registry.gather());
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Jobs, runs and crons (`state/jobs.rs`, `state/cron.rs`): a registry of
/// their own, gathered with the others at each scrape.
pub struct JobMetrics {
    registry: Registry,
    jobs: IntGaugeVec,
    runs: prometheus::IntCounterVec,
    run_seconds: Histogram,
    cron_lag: Histogram,
}

/// The job metrics of this process.
pub static JOBS: LazyLock<JobMetrics> = LazyLock::new(|| {
    let r = Registry::new();
    JobMetrics {
        jobs: gauge_vec(&r, "skiff_scheduler_jobs", "Jobs by state", &["state"]),
        runs: registered(
            &r,
            prometheus::IntCounterVec::new(
                Opts::new("skiff_scheduler_job_runs_total", "Job runs ended, by outcome"),
                &["outcome"],
            )
            .expect("valid metric"),
        ),
        run_seconds: histogram(
            &r,
            "skiff_scheduler_job_run_duration_seconds",
            "How long job runs ran, start to end",
            vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0],
        ),
        cron_lag: histogram(
            &r,
            "skiff_scheduler_cron_lag_seconds",
            "Start of a cron's job minus its scheduled time",
            vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        ),
        registry: r,
    }
});

impl JobMetrics {
    fn set_gauges(&self, core: &Core) {
        self.jobs.reset();
        for s in [JobState::Pending, JobState::Running, JobState::Succeeded, JobState::Failed] {
            self.jobs.with_label_values(&[s.to_string().as_str()]).set(0);
        }
        let st = core.state();
        for j in st.mem().jobs() {
            self.jobs.with_label_values(&[j.state.to_string().as_str()]).inc();
        }
    }
}

/// Namespaces' quotas and use (#20): `skiff_namespace_quota` and
/// `skiff_namespace_used` by namespace and resource (cpu in cores, memory in
/// bytes, replicas, deployments, volumes); a quota only where one is set.
pub struct NamespaceMetrics {
    registry: Registry,
    quota: prometheus::GaugeVec,
    used: prometheus::GaugeVec,
}

/// The namespace metrics of this process.
pub static NAMESPACES: LazyLock<NamespaceMetrics> = LazyLock::new(|| {
    let r = Registry::new();
    let vec = |name: &str, help: &str| {
        registered(
            &r,
            prometheus::GaugeVec::new(Opts::new(name, help), &["namespace", "resource"]).expect("valid metric"),
        )
    };
    NamespaceMetrics {
        quota: vec("skiff_namespace_quota", "A namespace's quota, by resource (cpu in cores, memory in bytes)"),
        used: vec("skiff_namespace_used", "What a namespace's deployments ask, by resource, as its quota counts it"),
        registry: r,
    }
});

impl NamespaceMetrics {
    fn set_gauges(&self, core: &Core) {
        self.quota.reset();
        self.used.reset();
        let namespaces = core.state().namespaces();
        for n in namespaces {
            let (q, u) = (n.quota, n.usage);
            let rows = [
                ("cpu", q.cpu.map(|c| c.0 as f64 / 1000.0), u.cpu.0 as f64 / 1000.0),
                ("memory", q.memory.map(|m| m.0 as f64), u.memory.0 as f64),
                ("replicas", q.replicas.map(|v| v as f64), u.replicas as f64),
                ("deployments", q.deployments.map(|v| v as f64), u.deployments as f64),
                ("volumes", q.volumes.map(|v| v as f64), u.volumes as f64),
            ];
            for (resource, quota, used) in rows {
                if let Some(quota) = quota {
                    self.quota.with_label_values(&[n.name.as_str(), resource]).set(quota);
                }
                self.used.with_label_values(&[n.name.as_str(), resource]).set(used);
            }
        }
    }
}

/// A job ended as `state` (counted by the gauge at the next scrape).
pub fn job_finished(_state: JobState) {}

/// A run ended as `outcome` after `duration_ms`.
pub fn run_finished(outcome: RunOutcome, duration_ms: Option<u64>) {
    JOBS.runs.with_label_values(&[outcome.to_string().as_str()]).inc();
    if let Some(ms) = duration_ms {
        JOBS.run_seconds.observe(ms as f64 / 1000.0);
    }
}

/// A cron's job started `late_ms` after its scheduled time.
pub fn cron_lag(late_ms: u64) {
    JOBS.cron_lag.observe(late_ms as f64 / 1000.0);
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "metrics", description = "A read token, or none with `--metrics-open`", responses((status = 200, description = "Prometheus' text format", body = String, content_type = "text/plain"), crate::http::Failures))]
pub async fn serve(State(core): State<Arc<Core>>) -> Response {
    let text = METRICS.render(&core);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// One group of Prometheus' http_sd format.
#[derive(Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// `GET /v1/prometheus/targets`: the scheduler and every ready node's API, for
/// Prometheus' `http_sd_configs`. The scheduler is named by the host the scraper
/// reached it at (the Host header), which is the address that works for it.
#[utoipa::path(get, path = "/v1/prometheus/targets", tag = "metrics", description = "A read token, or none with `--metrics-open`", responses((status = 200, description = "Prometheus http_sd target groups", body = Vec<Object>), crate::http::Failures))]
pub async fn targets(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| core.config.listen.to_string());
    let mut labels = BTreeMap::from([("job".to_string(), "skiff-scheduler".to_string())]);
    if !core.config.plain_http {
        // The scraper needs the CA too (`tls_config: ca_file: DATA_DIR/ca.crt`).
        labels.insert("__scheme__".into(), "https".into());
    }
    let mut groups = match &core.cluster {
        // Several servers: each serves its own metrics (`skiff_scheduler_leader`
        // says which leads).
        Some(cluster) => {
            let mut servers = cluster.servers().await.unwrap_or_default();
            if servers.is_empty() {
                servers.push(cluster.me.clone());
            }
            servers.sort_by(|a, b| a.name.cmp(&b.name));
            servers
                .iter()
                .filter_map(|s| {
                    let mut labels = labels.clone();
                    labels.insert("server".into(), s.name.clone());
                    Some(TargetGroup { targets: vec![host_port(&s.url)?], labels })
                })
                .collect()
        }
        None => vec![TargetGroup { targets: vec![host], labels }],
    };
    let st = core.state();
    for n in st.mem().nodes().iter().filter(|n| n.state == NodeState::Ready) {
        let Some(target) = host_port(&n.address) else {
            continue;
        };
        let labels =
            BTreeMap::from([("job".to_string(), "skiff-node".to_string()), ("node".to_string(), n.name.clone())]);
        groups.push(TargetGroup { targets: vec![target], labels });
    }
    axum::Json(groups).into_response()
}

/// `http://127.0.0.1:7071/` → `127.0.0.1:7071`.
fn host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let hp = rest.split('/').next()?;
    (!hp.is_empty()).then(|| hp.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_reasons_are_bounded() {
        assert_eq!(pending_reason(None), "not_yet_scheduled");
        assert_eq!(pending_reason(Some("0/3 nodes fit: 3 insufficient memory")), "insufficient_memory");
        assert_eq!(pending_reason(Some("0/2 nodes fit: 2 insufficient cpu")), "insufficient_cpu");
        assert_eq!(pending_reason(Some("0/1 nodes fit: 1 label zone=a missing")), "constraints");
        assert_eq!(pending_reason(Some("0/1 nodes fit: 1 no container runtime")), "no_runtime");
        assert_eq!(pending_reason(Some("0/1 nodes fit: 1 node down")), "nodes_not_ready");
    }

    #[test]
    fn targets_are_host_and_port() {
        assert_eq!(host_port("http://127.0.0.1:7071").as_deref(), Some("127.0.0.1:7071"));
        assert_eq!(host_port("http://n1:7071/").as_deref(), Some("n1:7071"));
        assert_eq!(host_port("n1:7071"), None);
    }
}
