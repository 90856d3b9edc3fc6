//! The web dashboard: static assets built into the binary (from `web/`), the
//! live stream it draws from (`GET /v1/watch`, server-sent events carrying a
//! snapshot of the cluster after every change), the replicas' usage as the
//! nodes report it, and the long poll behind `skiff events -f`.
//!
//! Live means pushed: the stream waits on the change signal that
//! `State::transact` raises after each committed change (and on usage arriving
//! in heartbeats), never on a client polling.

use crate::Core;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::Path;
use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;
use skiff_api::namespace::{self as ns, Namespace};
use skiff_api::{Deployment, Event, Node, Replica, ReplicaStatus, now_ms};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");
const FAVICON_SVG: &str = include_str!("../../web/favicon.svg");

/// Events in each snapshot.
const SNAPSHOT_EVENTS: u32 = 100;
/// Snapshots of one stream come at most this often, however busy the cluster.
const MIN_SNAPSHOT_GAP: Duration = Duration::from_millis(500);
/// A waiting `GET /v1/events?after=` reads the events table at most this often.
const EVENTS_POLL_GAP: Duration = Duration::from_millis(250);
/// A snapshot is sent at least this often (carries nothing new, keeps ages fresh).
const MAX_SNAPSHOT_GAP: Duration = Duration::from_secs(15);

/// A node's usage samples kept for the dashboard's charts.
const HISTORY_SAMPLES: usize = 60;
/// One sample per node at most this often: 60 of them span five minutes.
const HISTORY_EVERY_MS: u64 = 5_000;

/// Usage of the replicas as their nodes last reported it.
#[derive(Default)]
pub struct Live {
    /// Node → (replica id → (cpu seconds, memory bytes)), replaced whole by each
    /// full heartbeat, so a replica a node no longer reports is forgotten with it.
    usage: Mutex<HashMap<String, NodeUsage>>,
    /// Node → its recent (time ms, cpu seconds, memory bytes) totals, so that a
    /// page opened now draws the last minutes at once. Per node only: bounded by
    /// the cluster's size, whereas a history per replica would grow with it.
    history: Mutex<HashMap<String, VecDeque<Sample>>>,
}

/// A node's (time ms, cpu seconds, memory bytes) at one instant.
type Sample = (u64, f64, u64);

/// Replica id → (cpu seconds, memory bytes) of one node.
type NodeUsage = HashMap<String, (f64, u64)>;

impl Live {
    /// Keeps what a node's heartbeat says its replicas use: all of them, or
    /// with `delta` only those it reports (the others kept as they were).
    pub fn record(&self, node: &str, replicas: &[ReplicaStatus], delta: bool) {
        let entries = replicas.iter().map(|r| (r.id.clone(), (r.cpu_seconds, r.memory_bytes)));
        let (cpu, memory) = {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            let map = usage.entry(node.to_string()).or_default();
            if !delta {
                map.clear();
            }
            map.extend(entries);
            map.values().fold((0.0, 0), |(c, m), &(rc, rm)| (c + rc, m + rm))
        };
        self.sample(node, now_ms(), cpu, memory);
        // Usage is not state (it is not stored), but the dashboard draws it.
        crate::metrics::changed();
    }

    /// Adds a node's totals to its history, at most one sample per
    /// `HISTORY_EVERY_MS`, keeping the last `HISTORY_SAMPLES`.
    fn sample(&self, node: &str, t: u64, cpu_seconds: f64, memory_bytes: u64) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let h = history.entry(node.to_string()).or_default();
        if h.back().is_some_and(|&(last, _, _)| t < last + HISTORY_EVERY_MS) {
            return;
        }
        if h.len() == HISTORY_SAMPLES {
            h.pop_front();
        }
        h.push_back((t, cpu_seconds, memory_bytes));
    }

    /// Every node's history.
    fn history(&self) -> HashMap<String, Vec<Sample>> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.iter().map(|(k, v)| (k.clone(), v.iter().copied().collect())).collect()
    }

    /// What replica `replica` on `node` uses, as last reported.
    fn usage_of(&self, node: &str, replica: &str) -> (f64, u64) {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        usage.get(node).and_then(|m| m.get(replica)).copied().unwrap_or((0.0, 0))
    }
}

#[derive(Serialize)]
struct NodeView {
    #[serde(flatten)]
    node: Node,
    /// CPU seconds used by its replicas so far.
    cpu_seconds: f64,
    /// Memory its replicas hold now.
    memory_bytes: u64,
}

#[derive(Serialize)]
struct ReplicaView {
    #[serde(flatten)]
    replica: Replica,
    cpu_seconds: f64,
    memory_bytes: u64,
}

/// What the dashboard draws: the whole cluster at one instant, or for a token
/// scoped to a namespace (#20) that namespace's part of it. Objects go by their
/// keys (`NAME` in `default`, `NS/NAME` elsewhere), deployments with their
/// `namespace` set, so that the page can tell namespaces apart.
#[derive(Serialize)]
struct Snapshot {
    time_ms: u64,
    /// The one namespace the token sees; absent for a cluster-wide token.
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    /// The namespaces the token sees, each with its quota and use.
    namespaces: Vec<Namespace>,
    /// Empty for a token scoped to a namespace: nodes are the cluster's
    /// (`GET /v1/nodes` is refused to it as well).
    nodes: Vec<NodeView>,
    deployments: Vec<Deployment>,
    replicas: Vec<ReplicaView>,
    events: Vec<Event>,
    /// Per node, recent `[time ms, cpu seconds, memory bytes]` samples: only in
    /// the first snapshot of a stream, to seed the page's charts.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_history: Option<HashMap<String, Vec<Sample>>>,
}

/// The snapshot as the caller may see it: everything, or with `only` the
/// objects of that namespace alone (deployments, replicas, their events and the
/// namespace's quota), and no nodes.
fn snapshot(core: &Core, with_history: bool, only: Option<&str>) -> Result<String, ApiError> {
    let seen = |key: &str| only.is_none_or(|o| ns::of(key) == o);
    let snap = {
        let st = core.state();
        let mem = st.mem();
        let mut replicas: Vec<ReplicaView> = mem
            .all_replicas()
            .filter(|r| seen(&r.deployment))
            .map(|r| {
                let (cpu_seconds, memory_bytes) =
                    r.node.as_deref().map(|n| core.live.usage_of(n, &r.id)).unwrap_or((0.0, 0));
                ReplicaView { replica: r.clone(), cpu_seconds, memory_bytes }
            })
            .collect();
        replicas.sort_by(|a, b| {
            (&a.replica.deployment, a.replica.created_ms, &a.replica.id).cmp(&(
                &b.replica.deployment,
                b.replica.created_ms,
                &b.replica.id,
            ))
        });
        let mut per_node: HashMap<&str, (f64, u64)> = HashMap::new();
        for r in &replicas {
            if let Some(n) = r.replica.node.as_deref() {
                let e = per_node.entry(n).or_default();
                e.0 += r.cpu_seconds;
                e.1 += r.memory_bytes;
            }
        }
        let nodes = mem
            .nodes()
            .iter()
            .filter(|_| only.is_none())
            .map(|n| {
                let (cpu_seconds, memory_bytes) = per_node.get(n.name.as_str()).copied().unwrap_or((0.0, 0));
                NodeView { node: n.clone(), cpu_seconds, memory_bytes }
            })
            .collect();
        let deployments = mem
            .deployment_names()
            .filter(|n| seen(n))
            .filter_map(|n| mem.deployment(n))
            .map(|mut d| {
                d.namespace = ns::of(&d.name).to_string();
                d
            })
            .collect();
        let mut events = st.store().events(None, SNAPSHOT_EVENTS)?;
        if only.is_some() {
            // As `GET /v1/events` keeps them for a scoped token: those about
            // objects of its namespace, never a node's. (Fewer than
            // SNAPSHOT_EVENTS then, in a busy cluster.)
            events.retain(|e| event_namespace(mem, &e.object) == only);
        }
        let mut namespaces = st.namespaces();
        namespaces.retain(|n| only.is_none_or(|o| n.name == o));
        let node_history = (with_history && only.is_none()).then(|| core.live.history());
        Snapshot {
            time_ms: now_ms(),
            namespace: only.map(str::to_string),
            namespaces,
            nodes,
            deployments,
            replicas,
            events,
            node_history,
        }
    };
    serde_json::to_string(&snap).map_err(|e| ApiError::internal(format!("encoding the snapshot: {e}")))
}

/// The namespace of event object `object` (`KIND/KEY`): its key's, a
/// replica's deployment's (a replica's id is flat: `NS-NAME-xxxxxx`), a
/// namespace's its own, none for a node or a replica that is gone (shown to
/// cluster-wide tokens only).
pub(crate) fn event_namespace<'a>(mem: &'a crate::state::Mem, object: &'a str) -> Option<&'a str> {
    match object.split_once('/') {
        Some(("node", _)) | None => None,
        Some(("replica", id)) => mem.replica(id).map(|r| ns::of(&r.deployment)),
        Some(("namespace", name)) => Some(name),
        Some((_, key)) => Some(ns::of(key)),
    }
}

/// `GET /v1/watch`: a `snapshot` event now and after every change.
#[utoipa::path(get, path = "/v1/watch", tag = "dashboard", params(("token" = Option<String>, Query, description = "The token, for a browser's EventSource (which sends no headers)")), responses((status = 200, description = "Server-sent `snapshot` events: the whole cluster now and after each change", body = String, content_type = "text/event-stream"), crate::http::Failures))]
pub async fn watch(
    State(core): State<Arc<Core>>,
    caller: Option<Extension<Caller>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = crate::metrics::subscribe();
    // A token scoped to a namespace sees that namespace's part only (#20).
    let only: Option<Arc<str>> = caller.and_then(|Extension(c)| c.namespace().map(Arc::from));
    let stream = futures_util::stream::unfold((core, rx, true), move |(core, mut rx, first)| {
        let only = only.clone();
        async move {
            if !first {
                tokio::time::sleep(MIN_SNAPSHOT_GAP).await;
                let _ = tokio::time::timeout(MAX_SNAPSHOT_GAP, rx.changed()).await;
            }
            rx.borrow_and_update();
            let event = match snapshot(&core, first, only.as_deref()) {
                Ok(json) => SseEvent::default().event("snapshot").data(json),
                Err(e) => SseEvent::default().event("error").data(e.to_string()),
            };
            Some((Ok(event), (core, rx, false)))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Events newer than `after`, waiting up to `wait` for the first one.
pub async fn events_after(
    core: &Core,
    object: Option<&str>,
    after: u64,
    wait: Duration,
    limit: u32,
) -> Result<Vec<Event>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut rx = crate::metrics::subscribe();
    loop {
        rx.borrow_and_update();
        let mut events = core.state().store().events(object, limit)?;
        events.retain(|e| e.id > after);
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(events);
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            return Ok(Vec::new());
        }
        // Heartbeats change state many times a second in a big cluster: look at
        // the events table at most every 250 ms, whatever the rate of changes.
        tokio::time::sleep(EVENTS_POLL_GAP).await;
    }
}

/// `GET /`: the dashboard page.
#[utoipa::path(get, path = "/", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard", body = String, content_type = "text/html")))]
pub async fn index() -> Response {
    asset_response("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/{file}`.
#[utoipa::path(get, path = "/assets/{file}", tag = "dashboard", security(()), params(("file" = String, Path, description = "app.js, app.css or favicon.svg")), responses((status = 200, description = "The file", body = String, content_type = "text/plain"), crate::http::Failures))]
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset_response("text/javascript; charset=utf-8", APP_JS),
        "app.css" => asset_response("text/css; charset=utf-8", APP_CSS),
        "favicon.svg" => asset_response("image/svg+xml", FAVICON_SVG),
        _ => ApiError::not_found(format!("no dashboard asset {file:?}")).into_response(),
    }
}

fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Assets change with the binary; no stale page after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_history_is_sampled_and_bounded() {
        let live = Live::default();
        for i in 0..200u64 {
            // Every second: only one in five becomes a sample.
            live.sample("n1", 1_000_000 + i * 1_000, i as f64, i);
        }
        let h = live.history().remove("n1").unwrap_or_default();
        assert_eq!(h.len(), 40, "200 s at one sample per 5 s");
        for i in 200..1000u64 {
            live.sample("n1", 1_000_000 + i * 1_000, i as f64, i);
        }
        let h = live.history().remove("n1").unwrap_or_default();
        assert_eq!(h.len(), HISTORY_SAMPLES);
        assert_eq!(h.last().map(|s| s.0), Some(1_000_000 + 995_000));
        assert!(h.windows(2).all(|w| w[1].0 - w[0].0 == HISTORY_EVERY_MS));
    }
}
