//! The HTTP/JSON API under `/v1/`, served with axum.

use crate::Core;
use crate::auth::Caller;
use crate::blobs::{MAX_BLOB_BYTES, parse_digest};
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use skiff_api::*;
use std::sync::Arc;
use std::time::Duration;

type Shared = State<Arc<Core>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// Largest JSON request body.
const MAX_JSON_BYTES: usize = 1 << 20;
/// Largest heartbeat: room for 100,000 replica statuses on one node.
const MAX_HEARTBEAT_BYTES: usize = 32 << 20;

pub fn router(core: Arc<Core>) -> Router {
    let json_routes = Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/register", post(register))
        .route("/v1/nodes/{name}", get(get_node).delete(remove_node))
        // A heartbeat reports every replica of its node: ~300 bytes each, so a
        // node of 10,000 replicas sends ~3 MiB (a bench found the 1 MiB cap
        // silencing such a node, which was then declared down).
        .route("/v1/nodes/{name}/heartbeat", post(heartbeat).layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BYTES)))
        .route("/v1/nodes/{name}/assignments", get(assignments))
        .route("/v1/endpoints", get(crate::endpoints::watch))
        .route("/v1/deployments", get(list_deployments))
        .route("/v1/deployments/{name}", put(apply).get(get_deployment).delete(delete_deployment))
        .route("/v1/deployments/{name}/scale", post(scale))
        .route("/v1/deployments/{name}/revisions", get(revisions))
        .route("/v1/deployments/{name}/rollback", post(rollback))
        .route("/v1/deployments/{name}/pause", post(pause))
        .route("/v1/deployments/{name}/resume", post(resume))
        .route("/v1/deployments/{name}/logs", get(logs))
        .route("/v1/replicas", get(list_replicas))
        .route("/v1/events", get(events))
        .route("/v1/images", get(crate::images::list_images).post(crate::images::put_image))
        .route("/v1/volumes", get(list_volumes))
        .route("/v1/volumes/{name}", axum::routing::delete(delete_volume))
        .route("/v1/secrets", get(list_secrets))
        .route("/v1/secrets/{name}", put(put_secret).delete(delete_secret))
        .route("/v1/tokens", get(crate::auth::list_tokens).post(crate::auth::create_token))
        .route("/v1/tokens/{name}", axum::routing::delete(crate::auth::delete_token))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES));
    let blob_routes = Router::new()
        .route("/v1/blobs/{digest}", put(put_blob).get(get_blob).head(head_blob))
        .layer(DefaultBodyLimit::max(MAX_BLOB_BYTES as usize));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(crate::dashboard::index))
        .route("/assets/{file}", get(crate::dashboard::asset))
        .route("/metrics", get(crate::metrics::serve))
        .route("/v1/prometheus/targets", get(crate::metrics::targets))
        .route("/v1/watch", get(crate::dashboard::watch))
        .merge(json_routes)
        .merge(blob_routes)
        .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1/") })
        .layer(axum::middleware::from_fn_with_state(core.clone(), crate::auth::check))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(core)
}

async fn list_nodes(State(core): Shared) -> ApiResult<Vec<Node>> {
    Ok(Json(core.state().mem().nodes().to_vec()))
}

async fn get_node(State(core): Shared, Path(name): Path<String>) -> ApiResult<Node> {
    core.state()
        .mem()
        .node(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {name:?} not found; `skiff get nodes` lists them")))
}

/// Registers a node: with the join token it gets a new credential (replacing any
/// it had); with its own credential (a restarted node daemon) it keeps that one.
/// Removes a node: its replicas are replaced as a dead node's are and its
/// credential is revoked; it can come back only by joining again.
async fn remove_node(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    {
        let mut st = core.state();
        st.remove_node(&name)?;
        core.auth.revoke_node(st.store(), &name)?;
    }
    core.wake();
    tracing::info!("node {name} removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn register(
    State(core): Shared,
    Extension(caller): Extension<Caller>,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    if let Caller::Node(n) = &caller
        && *n != req.name
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "a node credential can only register its own node"));
    }
    let name = req.name.clone();
    let resp = {
        let mut st = core.state();
        let mut resp = st.register(req)?;
        if caller == Caller::Join {
            resp.credential = Some(core.auth.issue_node(st.store(), &name)?);
        }
        // Grows with the cluster past --max-heartbeats-per-second nodes.
        let interval = st.policy.heartbeat_interval(st.mem().nodes().len());
        resp.heartbeat_interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        resp
    };
    core.wake();
    tracing::info!("node {} registered from {}", resp.node.name, resp.node.address);
    Ok(Json(resp))
}

async fn heartbeat(
    State(core): Shared,
    Path(name): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    // `auth::check` let only this node's credential through. Alive as of now,
    // before anything waits for the state lock.
    if !core.liveness.beat(&name) {
        return Err(ApiError::not_found(format!("node {name:?} is not registered; register it first")));
    }
    core.live.record(&name, &hb.replicas);
    core.autoscale.lock().unwrap_or_else(|p| p.into_inner()).observe(&hb.replicas, skiff_api::now_ms());
    // Applied with the other heartbeats that arrive meanwhile, in one transaction.
    core.heartbeats.submit(name, hb);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    wait: u64,
}

async fn assignments(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
) -> ApiResult<Assignments> {
    // Only this node's credential gets here: assignments carry its secrets.
    let mut rx = core.state().watch(&name)?;
    if *rx.borrow_and_update() <= q.index && q.wait > 0 {
        let wait = Duration::from_millis(q.wait.min(60_000));
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
    Ok(Json(core.state().assignments(&name)?))
}

async fn list_deployments(State(core): Shared) -> ApiResult<Vec<Deployment>> {
    let st = core.state();
    let mem = st.mem();
    Ok(Json(mem.deployment_names().filter_map(|n| mem.deployment(n)).collect()))
}

async fn get_deployment(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    core.state().mem().deployment(&name).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("deployment {name:?} not found; `skiff get deployments` lists them"))
    })
}

async fn apply(
    State(core): Shared,
    Path(name): Path<String>,
    Json(mut req): Json<ApplyRequest>,
) -> ApiResult<ApplyResponse> {
    if let Workload::Wasm(digest) = &req.spec.workload {
        core.check_wasm(digest).await?;
    }
    // An image reference is pinned to its manifest digest now, so that nodes
    // fetch exactly what was imported and a re-tag changes nothing running.
    if let Workload::Image(reference) = &req.spec.workload {
        req.spec.workload = Workload::Image(crate::images::resolve(&core, reference).await?);
    }
    let resp = core.state().apply(&name, req)?;
    core.wake();
    Ok(Json(resp))
}

async fn scale(State(core): Shared, Path(name): Path<String>, Json(req): Json<ScaleRequest>) -> ApiResult<Deployment> {
    let d = core.state().scale(&name, req.replicas)?;
    core.wake();
    Ok(Json(d))
}

async fn revisions(State(core): Shared, Path(name): Path<String>) -> ApiResult<Vec<RevisionInfo>> {
    Ok(Json(core.state().revisions(&name)?))
}

async fn rollback(
    State(core): Shared,
    Path(name): Path<String>,
    body: Option<Json<RollbackRequest>>,
) -> ApiResult<Deployment> {
    let to = body.and_then(|Json(b)| b.to_revision);
    let d = core.state().rollback(&name, to)?;
    core.wake();
    Ok(Json(d))
}

async fn pause(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    Ok(Json(core.state().set_paused(&name, true)?))
}

async fn resume(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    let d = core.state().set_paused(&name, false)?;
    core.wake();
    Ok(Json(d))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge_volumes: bool,
}

async fn delete_deployment(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    core.state().delete(&name, q.purge_volumes)?;
    core.wake();
    Ok(StatusCode::NO_CONTENT)
}

async fn list_volumes(State(core): Shared) -> ApiResult<Vec<Volume>> {
    Ok(Json(core.state().volumes()))
}

async fn delete_volume(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_volume(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_secrets(State(core): Shared) -> ApiResult<Vec<Secret>> {
    Ok(Json(core.state().secrets()))
}

async fn put_secret(
    State(core): Shared,
    Path(name): Path<String>,
    Json(req): Json<SecretRequest>,
) -> ApiResult<Secret> {
    let secret = core.state().put_secret(&name, req)?;
    core.wake();
    Ok(Json(secret))
}

async fn delete_secret(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_secret(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ReplicaQuery {
    deployment: Option<String>,
    node: Option<String>,
}

async fn list_replicas(State(core): Shared, Query(q): Query<ReplicaQuery>) -> ApiResult<Vec<Replica>> {
    let st = core.state();
    let mem = st.mem();
    let mut out: Vec<Replica> = match (&q.deployment, &q.node) {
        (Some(d), _) => mem.replicas_of(d).cloned().collect(),
        (None, Some(n)) => mem.replicas_on(n).cloned().collect(),
        (None, None) => mem.all_replicas().cloned().collect(),
    };
    if let Some(n) = &q.node {
        out.retain(|r| r.node.as_deref() == Some(n));
    }
    out.sort_by(|a, b| (&a.deployment, a.created_ms, &a.id).cmp(&(&b.deployment, b.created_ms, &b.id)));
    Ok(Json(out))
}

#[derive(Deserialize)]
struct EventQuery {
    object: Option<String>,
    limit: Option<u32>,
    /// Only events with a larger id; with `wait` (ms), blocks until one exists.
    after: Option<u64>,
    #[serde(default)]
    wait: u64,
}

async fn events(State(core): Shared, Query(q): Query<EventQuery>) -> ApiResult<Vec<Event>> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    if let Some(after) = q.after {
        let wait = Duration::from_millis(q.wait.min(60_000));
        return Ok(Json(crate::dashboard::events_after(&core, q.object.as_deref(), after, wait, limit).await?));
    }
    Ok(Json(core.state().store().events(q.object.as_deref(), limit)?))
}

async fn head_blob(State(core): Shared, Path(digest): Path<String>) -> Result<Response, ApiError> {
    match core.blobs.size(&digest)? {
        Some(size) => Ok(([(header::CONTENT_LENGTH, size.to_string())], StatusCode::OK).into_response()),
        None => Err(ApiError::not_found(format!("blob {digest} not stored"))),
    }
}

async fn get_blob(State(core): Shared, Path(digest): Path<String>) -> Result<Response, ApiError> {
    let path = core.blobs.path(&digest)?;
    let file =
        tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found(format!("blob {digest} not stored")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response())
}

async fn put_blob(State(core): Shared, Path(digest): Path<String>, body: Body) -> ApiResult<BlobInfo> {
    parse_digest(&digest)?;
    if let Some(size) = core.blobs.size(&digest)? {
        // Same bytes: nothing to store, but read the body to its end. Answering
        // while the client still sends makes the server drop the connection, and
        // the client (a browser uploading from the dashboard) sees a reset.
        let mut rest = body.into_data_stream();
        while let Some(Ok(_)) = rest.next().await {}
        return Ok(Json(BlobInfo { digest, size }));
    }
    let size = core.blobs.put(&digest, body).await?;
    Ok(Json(BlobInfo { digest, size }))
}

#[derive(Deserialize)]
struct LogQuery {
    replica: Option<String>,
    #[serde(default)]
    follow: bool,
    tail: Option<u32>,
}

/// Streams the logs of a deployment's replicas from their nodes, one line at a
/// time, each prefixed with its replica when there are several.
async fn logs(State(core): Shared, Path(name): Path<String>, Query(q): Query<LogQuery>) -> Result<Response, ApiError> {
    let targets: Vec<(String, String)> = {
        let st = core.state();
        let mem = st.mem();
        if mem.deployment(&name).is_none() {
            return Err(ApiError::not_found(format!(
                "deployment {name:?} not found; `skiff get deployments` lists them"
            )));
        }
        let mut targets = Vec::new();
        for r in mem.replicas_of(&name) {
            if q.replica.as_deref().is_some_and(|id| id != r.id) {
                continue;
            }
            if let Some(node) = r.node.as_deref().and_then(|n| mem.node(n)) {
                targets.push((r.id.clone(), node.address.clone()));
            }
        }
        targets.sort();
        targets
    };
    if targets.is_empty() {
        let what = match &q.replica {
            Some(id) => format!("replica {id} of {name} is not running on any node"),
            None => format!("no replica of {name} is on a node yet; `skiff describe deployment {name}` says why"),
        };
        return Err(ApiError::not_found(what));
    }
    let prefix = targets.len() > 1;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
    for (id, address) in targets {
        let tx = tx.clone();
        let http = core.http.clone();
        let mut url = format!("{address}/v1/replicas/{id}/logs?follow={}", q.follow);
        if let Some(t) = q.tail {
            url.push_str(&format!("&tail={t}"));
        }
        tokio::spawn(async move {
            let send_line = |line: String| {
                let tx = tx.clone();
                async move { tx.send(Ok(bytes::Bytes::from(line))).await.is_ok() }
            };
            let resp = match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let _ = send_line(format!("[{id}] skiff: node answered {} for its logs\n", r.status())).await;
                    return;
                }
                Err(e) => {
                    let _ = send_line(format!("[{id}] skiff: cannot reach its node for logs: {e}\n")).await;
                    return;
                }
            };
            let mut stream = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line);
                    let out = if prefix { format!("[{id}] {text}") } else { text.into_owned() };
                    if !send_line(out).await {
                        return; // the client went away
                    }
                }
            }
            if !buf.is_empty() {
                let text = String::from_utf8_lossy(&buf);
                let _ = send_line(if prefix { format!("[{id}] {text}\n") } else { format!("{text}\n") }).await;
            }
        });
    }
    drop(tx);
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Core {
    /// Checks a Wasm artifact is uploaded and is valid WebAssembly, once per digest.
    async fn check_wasm(&self, digest: &str) -> Result<(), ApiError> {
        let path = self.blobs.path(digest)?;
        if self.valid_wasm.lock().unwrap_or_else(|p| p.into_inner()).contains(digest) {
            return Ok(());
        }
        let bytes = tokio::fs::read(&path).await.map_err(|_| {
            ApiError::bad_request(format!("artifact {digest} is not uploaded; upload it first (skiff deploy does)"))
        })?;
        let digest_owned = digest.to_string();
        let checked = tokio::task::spawn_blocking(move || validate_wasm(&bytes))
            .await
            .map_err(|e| ApiError::internal(format!("validating {digest_owned}: {e}")))?;
        checked.map_err(|e| ApiError::bad_request(format!("artifact {digest} is not valid WebAssembly: {e}")))?;
        self.valid_wasm.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.to_string());
        Ok(())
    }
}

fn validate_wasm(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(b"\0asm") {
        return Err("it does not start with the \\0asm magic number".into());
    }
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator.validate_all(bytes).map(|_| ()).map_err(|e| e.to_string())
}
