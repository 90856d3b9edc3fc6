//! `/v1/replicas`.

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
pub(super) async fn list_replicas(State(core): Shared, Query(q): Query<ReplicaQuery>) -> ApiResult<Vec<Replica>> {
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
