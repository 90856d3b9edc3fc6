//! The table of ready HTTP endpoints that every node's ingress routes by:
//! each deployment with the replicas that are `ready` on a node with an ingress.
//!
//! Nodes watch it with a blocking query (`GET /v1/endpoints?index=I&wait=MS`, join
//! token), as they watch their assignments. A replica leaves the table in the
//! same transaction that stops it or marks it lost, so a node hears it is gone no
//! later than the node running it hears to stop it; that node unroutes it at once
//! and lets requests in flight finish (see the node's `ingress` module).

use crate::Core;
use crate::error::ApiError;
use crate::state::Mem;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use skiff_api::{Endpoint, Endpoints, NodeState, ReplicaState};
use std::sync::Arc;
use std::time::Duration;

/// Longest a node's query may block.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The table as it is now, with `index`.
pub fn table(mem: &Mem, index: u64) -> Endpoints {
    let mut out = Endpoints { index, deployments: Default::default() };
    for name in mem.deployment_names() {
        let mut eps: Vec<Endpoint> = mem
            .replicas_of(name)
            .filter(|r| r.state == ReplicaState::Ready)
            .filter_map(|r| {
                let node = mem.node(r.node.as_deref()?)?;
                if node.state == NodeState::Down {
                    return None;
                }
                Some(Endpoint { replica: r.id.clone(), node: node.name.clone(), ingress: node.ingress.clone()? })
            })
            .collect();
        eps.sort_by(|a, b| a.replica.cmp(&b.replica));
        out.deployments.insert(name.clone(), eps);
    }
    out
}

#[derive(Deserialize)]
pub(crate) struct WatchQuery {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    wait: u64,
}

/// `GET /v1/endpoints`: answers at once when the table's index differs from the
/// caller's (also after a scheduler restart), else when it changes or `wait` ends.
pub(crate) async fn watch(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Result<Json<Endpoints>, ApiError> {
    crate::http::require_join_token(&core, &headers)?;
    let mut rx = core.state().endpoints_watch();
    if *rx.borrow_and_update() == q.index && q.wait > 0 {
        let wait = Duration::from_millis(q.wait).min(MAX_WAIT);
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
    let st = core.state();
    let index = *st.endpoints_watch().borrow();
    Ok(Json(table(st.mem(), index)))
}
