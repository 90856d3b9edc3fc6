//! The node's own HTTP API: health, replica statuses, replica logs (which the
//! scheduler proxies to `skiff logs`), and the relay routes behind `skiff exec`
//! and `skiff port-forward` (HTTP upgrades the scheduler makes with a grant
//! signed for this node; see `crate::exec`).

use crate::logs;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use skiff_api::{ErrorBody, ReplicaStatus};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often a follower polls the log file.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Lines sent when `tail` is not given.
const DEFAULT_TAIL: usize = 100;
/// Most lines one request may ask for.
const MAX_TAIL: usize = 100_000;

/// What the handlers need.
pub struct ApiState {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The statuses of the replicas the node runs now.
    pub replicas: Box<dyn Fn() -> Vec<ReplicaStatus> + Send + Sync>,
    /// Exec and port-forward; `None`: the routes answer 404.
    pub relay: Option<Arc<crate::exec::Relay>>,
}

/// The node API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/replicas", get(list_replicas))
        .route("/v1/replicas/{id}/logs", get(replica_logs))
        .route("/v1/replicas/{id}/exec", post(exec))
        .route("/v1/replicas/{id}/port-forward", post(port_forward))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ErrorBody { error: message })).into_response()
}

async fn list_replicas(State(state): State<Arc<ApiState>>) -> Response {
    let mut list = (state.replicas)();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    axum::Json(list).into_response()
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    follow: Option<String>,
    tail: Option<String>,
}

async fn replica_logs(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    // The id becomes a path: check it before it touches the file system.
    if let Err(e) = skiff_api::manifest::validate_name(&id) {
        return error(StatusCode::BAD_REQUEST, format!("invalid replica id: {e}"));
    }
    let follow = match q.follow.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return error(StatusCode::BAD_REQUEST, format!("follow must be true or false, not {other:?}"));
        }
    };
    let tail = match q.tail.as_deref() {
        None => DEFAULT_TAIL,
        Some(t) => match t.parse::<usize>() {
            Ok(n) => n.min(MAX_TAIL),
            Err(_) => {
                return error(StatusCode::BAD_REQUEST, format!("tail must be a number of lines, not {t:?}"));
            }
        },
    };
    let dir = logs::replica_dir(&state.data_dir, &id);
    if !dir.is_dir() {
        return error(StatusCode::NOT_FOUND, format!("replica {id} has no logs on this node"));
    }
    let read = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || logs::tail(&dir, tail)
    })
    .await;
    let (head, pos) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the logs of {id}: {e}"));
        }
        Err(e) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the logs of {id}: {e}"));
        }
    };
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        return (text_plain, head).into_response();
    }
    // Follow: the tail first, then whatever is appended, until the client leaves
    // (hyper drops the body, which drops this stream).
    let first = Some(head);
    let follower = Follower::new();
    let stream = futures_util::stream::unfold((first, pos, dir), |(first, mut pos, mut dir)| async move {
        if let Some(head) = first {
            return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(head)), (None, pos, dir)));
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let read = tokio::task::spawn_blocking(move || {
                let r = logs::read_new(&dir, &mut pos);
                (r, pos, dir)
            })
            .await;
            let (res, new_pos, d) = read.ok()?;
            (pos, dir) = (new_pos, d);
            match res {
                Ok(chunk) if chunk.is_empty() => {
                    // The replica's logs were removed: nothing more will come.
                    if !dir.is_dir() {
                        return None;
                    }
                }
                Ok(chunk) => return Some((Ok(bytes::Bytes::from(chunk)), (None, pos, dir))),
                Err(e) => return Some((Err(e), (None, pos, dir))),
            }
        }
    });
    let stream = futures_util::StreamExt::map(stream, move |item| {
        let _alive = &follower;
        item
    });
    (text_plain, Body::from_stream(stream)).into_response()
}

static FOLLOWERS: AtomicUsize = AtomicUsize::new(0);

/// Counts open `follow=true` streams, so a test (or a metric) can see that a
/// stream ends when its client goes away.
struct Follower;

impl Follower {
    fn new() -> Follower {
        FOLLOWERS.fetch_add(1, Ordering::Relaxed);
        Follower
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        FOLLOWERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many log streams are being followed now.
pub fn followers() -> usize {
    FOLLOWERS.load(Ordering::Relaxed)
}

/// The relay of this node and the checks every relay route makes first: the
/// scheduler's grant, then that the caller asks for the upgrade.
fn relay_for(state: &ApiState, req: &axum::extract::Request) -> Result<Arc<crate::exec::Relay>, Box<Response>> {
    let Some(relay) = state.relay.clone() else {
        return Err(Box::new(error(StatusCode::NOT_FOUND, "this node serves no exec or port-forward".into())));
    };
    let path_and_query = req.uri().path_and_query().map_or("", |p| p.as_str());
    let grant = req.headers().get(skiff_api::relay::GRANT_HEADER).and_then(|v| v.to_str().ok());
    relay.authorize(req.method().as_str(), path_and_query, grant).map_err(|r| Box::new(refusal(r)))?;
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade != Some(skiff_api::relay::PROTOCOL) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("this route streams over an HTTP upgrade (Upgrade: {})", skiff_api::relay::PROTOCOL),
        )));
    }
    Ok(relay)
}

fn refusal(r: crate::exec::Refusal) -> Response {
    error(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), r.message)
}

fn switching() -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, skiff_api::relay::PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `POST /v1/replicas/{id}/exec?command=…&tty=…`: runs a command in the
/// replica's container, its streams as relay frames on the upgraded connection.
async fn exec(State(state): State<Arc<ApiState>>, Path(id): Path<String>, mut req: axum::extract::Request) -> Response {
    let relay = match relay_for(&state, &req) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let ask = match skiff_api::relay::ExecRequest::from_query(req.uri().query().unwrap_or("")) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let started = match relay.start_exec(&id, &ask).await {
        Ok(e) => e,
        Err(r) => return refusal(r),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        // Not upgraded (the caller left): dropping `started` kills the command.
        if let Ok(conn) = upgrade.await {
            started.run(hyper_util::rt::TokioIo::new(conn)).await;
        }
    });
    switching()
}

#[derive(Debug, Deserialize)]
struct ForwardQuery {
    port: u16,
}

/// `POST /v1/replicas/{id}/port-forward?port=P`: the upgraded connection
/// carries one TCP connection to the replica's port.
async fn port_forward(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<ForwardQuery>,
    mut req: axum::extract::Request,
) -> Response {
    let relay = match relay_for(&state, &req) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let target = match relay.target(&id, q.port).await {
        Ok(t) => t,
        Err(r) => return refusal(r),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(conn) = upgrade.await {
            crate::exec::forward(target, conn).await;
        }
    });
    switching()
}
