//! The node's own HTTP API: health, replica statuses and replica logs (which the
//! scheduler proxies to `skiff logs`).

use crate::logs;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
}

/// The node API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/replicas", get(list_replicas))
        .route("/v1/replicas/{id}/logs", get(replica_logs))
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
