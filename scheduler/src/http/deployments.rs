//! `/v1/deployments`: apply (a Wasm artifact checked once per digest), scale,
//! revisions, rollback, pause and resume, delete, and the logs of its replicas.

use super::*;
use axum::extract::rejection::JsonRejection;

#[utoipa::path(get, path = "/v1/deployments", tag = "deployments", responses((status = 200, description = "Every deployment", body = Vec<Deployment>), Failures))]
pub(super) async fn list_deployments(
    State(core): Shared,
    space: Option<Extension<namespaces::Ns>>,
) -> ApiResult<Vec<Deployment>> {
    let space = namespaces::of(space);
    let st = core.state();
    let mem = st.mem();
    if !mem.namespace_exists(&space) {
        return Err(ApiError::not_found(format!("namespace {space:?} not found; `skiff namespace ls` lists them")));
    }
    Ok(Json(mem.deployments_in(&space).filter_map(|n| mem.deployment(n)).map(namespaces::present).collect()))
}

#[utoipa::path(get, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The deployment", body = Deployment), Failures))]
pub(super) async fn get_deployment(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    core.state().mem().deployment(&name).map(namespaces::present).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("deployment {name:?} not found; `skiff get deployments` lists them"))
    })
}

#[utoipa::path(put, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = ApplyRequest, responses((status = 200, description = "Created, updated or unchanged", body = ApplyResponse), Failures))]
pub(super) async fn apply(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(mut req): JsonBody<ApplyRequest>,
) -> ApiResult<ApplyResponse> {
    if let Workload::Wasm(digest) = &req.spec.workload {
        core.check_wasm(digest).await?;
        let zero = req.scale_to_zero.is_some() || req.autoscale.is_some_and(|a| a.min == 0);
        if zero && !core.is_http_component(digest).await? {
            return Err(ApiError::bad_request(format!(
                "artifact {digest} is not an HTTP component (it exports no wasi:http/incoming-handler); only HTTP deployments scale to zero"
            )));
        }
    }
    // An image reference is pinned to its manifest digest now, so that nodes
    // fetch exactly what was imported and a re-tag changes nothing running.
    if let Workload::Image(reference) = &req.spec.workload {
        req.spec.workload = Workload::Image(crate::images::resolve(&core, reference).await?);
    }
    let mut resp = core.state().apply(&name, req)?;
    resp.deployment = namespaces::present(resp.deployment);
    core.wake();
    Ok(Json(resp))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/scale", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = ScaleRequest, responses((status = 200, description = "Scaled", body = Deployment), Failures))]
pub(super) async fn scale(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> ApiResult<Deployment> {
    let d = core.state().scale(&name, req.replicas)?;
    core.wake();
    Ok(Json(namespaces::present(d)))
}

#[utoipa::path(get, path = "/v1/deployments/{name}/revisions", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Its revisions", body = Vec<RevisionInfo>), Failures))]
pub(super) async fn revisions(State(core): Shared, Path(name): Path<String>) -> ApiResult<Vec<RevisionInfo>> {
    Ok(Json(core.state().revisions(&name)?))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/rollback", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body(content = Option<RollbackRequest>, description = "Optional: without a body, the previous revision"), responses((status = 200, description = "Rolled back", body = Deployment), Failures))]
pub(super) async fn rollback(
    State(core): Shared,
    Path(name): Path<String>,
    body: Result<Option<Json<Option<RollbackRequest>>>, JsonRejection>,
) -> ApiResult<Deployment> {
    // No body, `null` and `{}` all mean the previous revision.
    let to = body?.and_then(|Json(b)| b?.to_revision);
    let d = core.state().rollback(&name, to)?;
    core.wake();
    Ok(Json(d))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/pause", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Its rollout is paused", body = Deployment), Failures))]
pub(super) async fn pause(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    Ok(Json(core.state().set_paused(&name, true)?))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/resume", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Its rollout goes on", body = Deployment), Failures))]
pub(super) async fn resume(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    let d = core.state().set_paused(&name, false)?;
    core.wake();
    Ok(Json(d))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/promote", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Its canary is promoted: the remaining steps are skipped", body = Deployment), Failures))]
pub(super) async fn promote(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    let d = core.state().canary_promote(&name)?;
    core.wake();
    Ok(Json(d))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/abort", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Its canary is aborted: back to the stable revision", body = Deployment), Failures))]
pub(super) async fn abort(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    let d = core.state().canary_abort(&name, "aborted by hand (skiff rollout abort)", None)?;
    core.wake();
    Ok(Json(d))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ActivateQuery {
    /// Milliseconds to wait for a ready endpoint (at most 60,000; 0: answer at once).
    #[serde(default)]
    wait: u64,
}

/// Longest an activation call waits for a ready endpoint.
const MAX_ACTIVATE_WAIT: Duration = Duration::from_secs(60);

/// An ingress holds a request for a deployment that scales to zero and has no
/// ready replica: scales it from zero to one replica if it is at zero (once:
/// a deployment with replicas is left as it is, so concurrent calls from any
/// number of ingresses place one), then answers its ready endpoints as soon
/// as it has one, or none when `wait` ends. Nodes call it with their
/// credential; an admin may too (to wake a deployment by hand).
#[utoipa::path(post, path = "/v1/deployments/{name}/activate", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ActivateQuery), request_body = ActivateRequest, responses((status = 200, description = "Its replica count and ready endpoints", body = ActivateResponse), Failures))]
pub(super) async fn activate(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<ActivateQuery>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ActivateRequest>,
) -> ApiResult<ActivateResponse> {
    let node = match &caller {
        Caller::Node(n) => Some(n.as_str()),
        _ => None,
    };
    // Subscribed before the change, so that no endpoint can become ready unseen.
    let mut rx = core.state().endpoints_watch();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait).min(MAX_ACTIVATE_WAIT);
    let mut activated = false;
    loop {
        rx.borrow_and_update();
        // A held request is a request: the deployment is busy while one waits,
        // so a replica slower to start than `idle_seconds` is not taken away
        // from the requests waiting for it. At zero (scaled down meanwhile by
        // hand) it is started again.
        core.autoscale.lock().unwrap_or_else(|p| p.into_inner()).idle.touch(&name, now_ms());
        let (endpoints, replicas) = {
            let mut st = core.state();
            let (now_activated, replicas) = st.activate(&name, &req, node)?;
            if now_activated {
                activated = true;
                core.wake();
            }
            (crate::endpoints::of(st.mem(), &name), replicas)
        };
        if !endpoints.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(ActivateResponse { activated, replicas, endpoints }));
        }
        let next = deadline.min(tokio::time::Instant::now() + TOUCH_EVERY);
        if tokio::time::timeout_at(next, rx.changed()).await.is_ok_and(|r| r.is_err()) {
            // The state is gone (this server stopped leading): answer with none.
            return Ok(Json(ActivateResponse { activated, replicas, endpoints: Vec::new() }));
        }
    }
}

/// How often a waiting activation marks its deployment busy.
const TOUCH_EVERY: Duration = Duration::from_millis(250);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    /// Also delete the data of the volumes only it mounts.
    #[serde(default)]
    purge_volumes: bool,
}

#[utoipa::path(delete, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), DeleteQuery), responses((status = 204, description = "Deleted; its replicas stop"), Failures))]
pub(super) async fn delete_deployment(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    core.state().delete(&name, q.purge_volumes)?;
    core.wake();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Only this replica's log.
    replica: Option<String>,
    /// Keep streaming new lines.
    #[serde(default)]
    follow: bool,
    /// Start this many lines from the end.
    tail: Option<u32>,
}

/// Streams the logs of a deployment's replicas from their nodes, one line at a
/// time, each prefixed with its replica when there are several.
#[utoipa::path(get, path = "/v1/deployments/{name}/logs", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), LogQuery), responses((status = 200, description = "Log lines, streamed", body = String, content_type = "text/plain"), Failures))]
pub(super) async fn logs(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
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

pub(super) fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Core {
    /// Checks a Wasm artifact is uploaded and is valid WebAssembly, once per digest.
    pub(super) async fn check_wasm(&self, digest: &str) -> Result<(), ApiError> {
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

/// Whether Wasm artifact `digest` is an HTTP component, once per digest (the
/// answer is the content's, so one cache serves every server of the process).
static HTTP_COMPONENTS: LazyLock<std::sync::Mutex<std::collections::HashMap<String, bool>>> =
    LazyLock::new(Default::default);

impl Core {
    pub(super) async fn is_http_component(&self, digest: &str) -> Result<bool, ApiError> {
        if let Some(&known) = HTTP_COMPONENTS.lock().unwrap_or_else(|p| p.into_inner()).get(digest) {
            return Ok(known);
        }
        let path = self.blobs.path(digest)?;
        let bytes = tokio::fs::read(&path).await.map_err(|_| {
            ApiError::bad_request(format!("artifact {digest} is not uploaded; upload it first (skiff deploy does)"))
        })?;
        let http = tokio::task::spawn_blocking(move || is_http_component(&bytes))
            .await
            .map_err(|e| ApiError::internal(format!("reading {digest}: {e}")))?;
        HTTP_COMPONENTS.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.to_string(), http);
        Ok(http)
    }
}

/// Whether `bytes` is a component that exports `wasi:http/incoming-handler`
/// (its outermost component: nested ones come in the same stream, each closed
/// by its own `End`), as the node decides to serve it.
pub(super) fn is_http_component(bytes: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    if !Parser::is_component(bytes) {
        return false;
    }
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
            Payload::ComponentExportSection(exports)
                if depth == 0
                    && exports
                        .clone()
                        .into_iter()
                        .flatten()
                        .any(|e| e.name.name.starts_with("wasi:http/incoming-handler")) =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

pub(super) fn validate_wasm(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(b"\0asm") {
        return Err("it does not start with the \\0asm magic number".into());
    }
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator.validate_all(bytes).map(|_| ()).map_err(|e| e.to_string())
}
