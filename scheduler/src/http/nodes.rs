//! `/v1/nodes`: registration, heartbeats, a node's assignments, removal.

use super::*;

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", responses((status = 200, description = "Every node", body = Vec<Node>), Failures))]
pub(super) async fn list_nodes(State(core): Shared) -> ApiResult<Vec<Node>> {
    Ok(Json(core.state().mem().nodes().to_vec()))
}

#[utoipa::path(get, path = "/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The node", body = Node), Failures))]
pub(super) async fn get_node(State(core): Shared, Path(name): Path<String>) -> ApiResult<Node> {
    core.state()
        .mem()
        .node(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {name:?} not found; `skiff get nodes` lists them")))
}

/// Removes a node: its replicas are replaced as a dead node's are and its
/// credential is revoked; it can come back only by joining again.
#[utoipa::path(delete, path = "/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Removed; its replicas are replaced and its credential revoked"), Failures))]
pub(super) async fn remove_node(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    {
        let mut st = core.state();
        st.remove_node(&name)?;
        core.auth.revoke_node(st.store(), &name)?;
    }
    core.wake();
    tracing::info!("node {name} removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Registers a node: with the join token it gets a new credential (replacing any
/// it had); with its own credential (a restarted node daemon) it keeps that one.
#[utoipa::path(post, path = "/v1/nodes/register", tag = "nodes", request_body = RegisterRequest, responses((status = 200, description = "Registered (join token: with a new credential)", body = RegisterResponse), Failures))]
pub(super) async fn register(
    State(core): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<RegisterRequest>,
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

#[utoipa::path(post, path = "/v1/nodes/{name}/heartbeat", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = Heartbeat, responses((status = 204, description = "Taken"), Failures))]
pub(super) async fn heartbeat(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(hb): JsonBody<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    // `auth::check` let only this node's credential through.
    crate::heartbeats::receive(&core, name, hb)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WatchQuery {
    /// The index of the set the node has: the answer waits while it is current.
    #[serde(default)]
    index: u64,
    /// Milliseconds to wait for a change (at most 60,000; 0: answer at once).
    #[serde(default)]
    wait: u64,
    /// Answer with only what changed since `index` when the scheduler can
    /// (`Assignments.delta`), else with the whole set.
    #[serde(default)]
    delta: bool,
}

#[utoipa::path(get, path = "/v1/nodes/{name}/assignments", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), WatchQuery), responses((status = 200, description = "The node's desired set", body = Assignments), Failures))]
pub(super) async fn assignments(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
) -> ApiResult<Assignments> {
    // A placement pass wakes the watchers of thousands of nodes at once, and
    // each comes straight back for the next change; each waiting for the state
    // lock would hold a thread (`Core::state` hands the wait to
    // `block_in_place`): 236–456 threads in scenario A (#7). A few wait for
    // the lock; the rest wait here, threadless, to subscribe as to answer.
    // (16 at a time was worse in scenario B: 55,000 replicas placed again
    // after nodes went unanswered long enough to be declared down.)
    static ANSWERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    let turn = || async { ANSWERING.acquire().await.map_err(|e| ApiError::internal(e.to_string())) };
    // Only this node's credential gets here: assignments carry its secrets.
    let mut rx = {
        let _turn = turn().await?;
        core.state().watch(&name)?
    };
    if *rx.borrow_and_update() <= q.index && q.wait > 0 {
        let wait = Duration::from_millis(q.wait.min(60_000));
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
    let _turn = turn().await?;
    let mut st = core.state();
    if q.delta
        && let Some(changes) = st.assignment_changes(&name, q.index)?
    {
        return Ok(Json(changes));
    }
    Ok(Json(st.assignments(&name)?))
}

/// Cordons a node: it takes no new replicas; what it runs keeps running.
#[utoipa::path(post, path = "/v1/nodes/{name}/cordon", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Cordoned", body = Node), Failures))]
pub(super) async fn cordon(State(core): Shared, Path(name): Path<String>) -> ApiResult<Node> {
    let node = core.state().cordon(&name, true)?;
    core.wake();
    Ok(Json(node))
}

/// Uncordons a node: it takes new replicas again, and a drain of it ends.
#[utoipa::path(post, path = "/v1/nodes/{name}/uncordon", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Uncordoned", body = Node), Failures))]
pub(super) async fn uncordon(State(core): Shared, Path(name): Path<String>) -> ApiResult<Node> {
    let node = core.state().cordon(&name, false)?;
    core.wake();
    Ok(Json(node))
}

/// Drains a node: cordons it and moves its replicas elsewhere, each
/// deployment's replacement first. The scheduler carries the drain on (the
/// node's `drain` says where it stands) until the node is uncordoned.
#[utoipa::path(post, path = "/v1/nodes/{name}/drain", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = DrainRequest, responses((status = 200, description = "Draining", body = Node), Failures))]
pub(super) async fn drain(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<DrainRequest>,
) -> ApiResult<Node> {
    let node = core.state().drain(&name, req.force)?;
    core.wake();
    tracing::info!("node {name} draining{}", if req.force { " (forced)" } else { "" });
    Ok(Json(node))
}

/// Rebalances once, as `rebalance: true` would: deployments spread worse than
/// they could be over the nodes get their replicas moved, one at a time each,
/// the replacement first.
#[utoipa::path(post, path = "/v1/rebalance", tag = "nodes", request_body = RebalanceRequest, responses((status = 200, description = "The deployments to rebalance, with why", body = RebalanceResponse), Failures))]
pub(super) async fn rebalance(
    State(core): Shared,
    JsonBody(req): JsonBody<RebalanceRequest>,
) -> ApiResult<RebalanceResponse> {
    let uneven = core.state().rebalance_once(req.deployment.as_deref())?;
    core.wake();
    Ok(Json(RebalanceResponse { uneven }))
}
