//! `/v1/replicas`, and the relay behind `skiff exec` and `skiff port-forward`.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ReplicaQuery {
    /// Only this deployment's replicas.
    deployment: Option<String>,
    /// Only the replicas on this node.
    node: Option<String>,
}

#[utoipa::path(get, path = "/v1/replicas", tag = "replicas", params(ReplicaQuery), responses((status = 200, description = "Live replicas", body = Vec<Replica>), Failures))]
pub(super) async fn list_replicas(
    State(core): Shared,
    Query(q): Query<ReplicaQuery>,
    space: Option<Extension<super::namespaces::Ns>>,
    caller: Option<Extension<Caller>>,
) -> ApiResult<Vec<Replica>> {
    let node_wide = q.node.is_some() && space.is_none();
    let space = super::namespaces::listing(space, caller).filter(|_| !node_wide).or_else(|| {
        // Without a node, the namespace of the route (`default` unprefixed).
        q.node.is_none().then(|| skiff_api::namespace::DEFAULT.to_string())
    });
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
    // A namespace's replicas (#20); a node's listing (`?node=`) shows every one.
    if let Some(space) = &space {
        out.retain(|r| skiff_api::namespace::of(&r.deployment) == space);
        out.iter_mut().for_each(|r| r.deployment = skiff_api::namespace::plain(&r.deployment));
    }
    out.sort_by(|a, b| (&a.deployment, a.created_ms, &a.id).cmp(&(&b.deployment, b.created_ms, &b.id)));
    Ok(Json(out))
}

// ---- exec and port-forward: the relay to the replica's node ----
//
// The CLI asks for an HTTP/1.1 upgrade (`Upgrade: skiff-relay`); this server
// asks the replica's node for one in turn, at the address the node registered
// (as `skiff logs` does), signing the request with a grant only that node can
// check (`skiff_api::relay`); once both agreed it splices the two connections.

/// The query of `POST /v1/replicas/{id}/exec`, as described; read by
/// `skiff_api::relay::ExecRequest::from_query`, since `command` repeats.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // described here, parsed there
pub(super) struct ExecQuery {
    /// The program and then its arguments, one `command` parameter each, in order.
    command: Vec<String>,
    /// Run it on a terminal (`skiff exec -t`).
    tty: Option<bool>,
    /// Pass the client's stdin (`skiff exec -i`); without, the command's stdin is empty.
    stdin: Option<bool>,
    /// The terminal's width.
    cols: Option<u16>,
    /// The terminal's height.
    rows: Option<u16>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ForwardQuery {
    /// The replica's port: a container's port on its bridge address (an HTTP
    /// component serves every request on the connection, whatever the port).
    port: u16,
    /// Only check that the replica can be forwarded to, without an upgrade (204).
    #[serde(default)]
    check: bool,
}

/// Where a replica runs, for the relay.
struct Located {
    node: String,
    address: String,
    wasm: bool,
}

fn locate(core: &Core, id: &str) -> Result<Located, ApiError> {
    let st = core.state();
    let mem = st.mem();
    let r = mem
        .replica(id)
        .ok_or_else(|| ApiError::not_found(format!("replica {id:?} not found; `skiff get replicas` lists them")))?;
    let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, m);
    if !matches!(r.state, ReplicaState::Running | ReplicaState::Ready) {
        return Err(conflict(format!("replica {id} is {}, not running", r.state)));
    }
    let node =
        r.node.as_deref().and_then(|n| mem.node(n)).ok_or_else(|| conflict(format!("replica {id} is on no node")))?;
    if node.state == NodeState::Down {
        return Err(conflict(format!("replica {id}'s node {} is down", node.name)));
    }
    let wasm = mem.revision_spec(&r.deployment, r.revision).is_some_and(|s| s.workload.runtime() == Runtime::Wasm);
    Ok(Located { node: node.name.clone(), address: node.address.trim_end_matches('/').to_string(), wasm })
}

/// Refuses a request that did not come straight from a client asking for the
/// relay's upgrade.
fn check_upgrade(req: &axum::extract::Request, what: &str) -> Result<(), ApiError> {
    let connection = req.headers().get(header::CONNECTION).and_then(|v| v.to_str().ok()).unwrap_or("");
    if req.headers().contains_key("x-skiff-forwarded") && !connection.to_ascii_lowercase().contains("upgrade") {
        // Passed on by a follower that forwards bodies, not upgrades.
        return Err(ApiError::bad_request(format!(
            "{what} cannot pass through a follower server; give --server the leader's URL (`skiff get servers` shows it)"
        )));
    }
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade != Some(skiff_api::relay::PROTOCOL) {
        return Err(ApiError::bad_request(format!(
            "{what} streams over an HTTP upgrade (Connection: upgrade, Upgrade: {}); use `skiff {what}`",
            skiff_api::relay::PROTOCOL
        )));
    }
    Ok(())
}

/// The name of the token that made `req`.
fn token_name(core: &Core, req: &axum::extract::Request) -> String {
    crate::auth::bearer(req.headers())
        .and_then(|t| core.auth.token_name(t.trim()))
        .unwrap_or_else(|| "(unknown)".to_string())
}

/// Asks the node for the relay's upgrade of `path_and_query` (signed for it).
async fn dial_node(core: &Core, at: &Located, path_and_query: &str) -> Result<reqwest::Upgraded, ApiError> {
    let key = core.auth.node_key(&at.node).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {} holds no credential from this server yet; retry once it registered", at.node),
        )
    })?;
    let nonce = crate::auth::random_token("").map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let grant = skiff_api::relay::grant(&key, &at.node, "POST", path_and_query, now_ms(), &nonce);
    let url = format!("{}{path_and_query}", at.address);
    let sent = core
        .http
        .post(&url)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, skiff_api::relay::PROTOCOL)
        .header(skiff_api::relay::GRANT_HEADER, grant)
        .send()
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("cannot reach node {} at {}: {e}", at.node, at.address))
        })?;
    if sent.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let status = sent.status().as_u16();
        let text = sent.text().await.unwrap_or_default();
        let line =
            serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or_else(|_| text.trim().to_string());
        // The node's refusals of the caller's request keep their status; its
        // refusal of this server (a grant it does not take) is a bad gateway.
        let status = match status {
            400 | 404 | 409 => StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            _ => StatusCode::BAD_GATEWAY,
        };
        return Err(ApiError::new(status, format!("node {}: {line}", at.node)));
    }
    sent.upgrade().await.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("node {}: {e}", at.node)))
}

/// Answers 101 and, once the client's connection is upgraded, splices it to
/// the node's until both ends are done.
fn splice(mut req: axum::extract::Request, mut node: reqwest::Upgraded) -> Response {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(client) = upgrade.await {
            let mut client = hyper_util::rt::TokioIo::new(client);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, skiff_api::relay::PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

fn record(core: &Core, id: &str, reason: &str, message: &str) -> Result<(), ApiError> {
    let object = format!("replica/{id}");
    core.state().transact(|_, tx| tx.event(now_ms(), &object, reason, message).map_err(crate::state::Error::Store))?;
    Ok(())
}

/// Runs a command in a container replica (`skiff exec`): an HTTP upgrade to the
/// relay protocol, whose frames carry stdin, stdout, stderr, window sizes and
/// the command's exit code. Admin only; each exec is an `Exec` event naming
/// the token.
#[utoipa::path(post, path = "/v1/replicas/{id}/exec", tag = "replicas",
    params(("id" = String, Path, description = "The replica's id"), ExecQuery),
    responses((status = 101, description = "Upgraded to `skiff-relay`: frames both ways until the command's exit code"), Failures))]
pub(super) async fn exec(
    State(core): Shared,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let ask =
        skiff_api::relay::ExecRequest::from_query(req.uri().query().unwrap_or("")).map_err(ApiError::bad_request)?;
    let at = locate(&core, &id)?;
    if at.wasm {
        return Err(ApiError::bad_request(format!("replica {id} is a Wasm replica: it has no shell to exec into")));
    }
    check_upgrade(&req, "exec")?;
    let mut shown: String = ask.command.join(" ");
    if shown.chars().count() > 200 {
        shown = shown.chars().take(200).collect::<String>() + "…";
    }
    let tty = if ask.tty { " on a terminal" } else { "" };
    let token = token_name(&core, &req);
    // Recorded before the node is asked: no exec goes unrecorded.
    record(&core, &id, "Exec", &format!("token {token} ran `{shown}`{tty} in replica {id} on node {}", at.node))?;
    let node = dial_node(&core, &at, &format!("/v1/replicas/{id}/exec?{}", ask.to_query())).await?;
    Ok(splice(req, node))
}

/// A token's name, a replica and a port.
type ForwardKey = (String, String, u16);
/// When each (token, replica, port) last had a connection.
static FORWARD_EVENTS: LazyLock<std::sync::Mutex<std::collections::HashMap<ForwardKey, std::time::Instant>>> =
    LazyLock::new(Default::default);
/// A token, replica and port with no connection in this long get a new `PortForward` event.
const FORWARD_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Forwards one TCP connection to a replica's port (`skiff port-forward`): an
/// HTTP upgrade to the relay protocol whose bytes are the connection's. A
/// container is reached at its bridge address; an HTTP component's replica
/// serves the requests sent on it. Admin only; a `PortForward` event names the
/// token (once per token, replica and port until a minute passes without a
/// connection of theirs).
#[utoipa::path(post, path = "/v1/replicas/{id}/port-forward", tag = "replicas",
    params(("id" = String, Path, description = "The replica's id"), ForwardQuery),
    responses((status = 101, description = "Upgraded to `skiff-relay`: the connection's bytes both ways"),
        (status = 204, description = "With check=true: the replica can be forwarded to"), Failures))]
pub(super) async fn port_forward(
    State(core): Shared,
    Path(id): Path<String>,
    Query(q): Query<ForwardQuery>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    if q.port == 0 {
        return Err(ApiError::bad_request("port must be between 1 and 65535"));
    }
    let at = locate(&core, &id)?;
    if q.check {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    check_upgrade(&req, "port-forward")?;
    let token = token_name(&core, &req);
    let due = {
        let mut seen = FORWARD_EVENTS.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| at.elapsed() < FORWARD_EVENT_EVERY);
        seen.insert((token.clone(), id.clone(), q.port), std::time::Instant::now()).is_none()
    };
    if due {
        let msg =
            format!("token {token} forwarded a connection to port {} of replica {id} on node {}", q.port, at.node);
        record(&core, &id, "PortForward", &msg)?;
    }
    let node = dial_node(&core, &at, &format!("/v1/replicas/{id}/port-forward?port={}", q.port)).await?;
    Ok(splice(req, node))
}
