//! `/v1/events`, and its long poll.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventQuery {
    /// Only events about this object (`deployment/NAME`, `node/NAME`, `replica/ID`).
    object: Option<String>,
    /// At most this many (default 200, at most 10,000).
    limit: Option<u32>,
    /// Only events with a larger id; with `wait` (ms), blocks until one exists.
    after: Option<u64>,
    /// Milliseconds to wait for an event after `after` (at most 60,000).
    #[serde(default)]
    wait: u64,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery), responses((status = 200, description = "Events, newest last", body = Vec<Event>), Failures))]
pub(super) async fn events(
    State(core): Shared,
    Query(q): Query<EventQuery>,
    space: Option<Extension<super::namespaces::Ns>>,
    caller: Option<Extension<Caller>>,
) -> ApiResult<Vec<Event>> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    let mut out = match q.after {
        Some(after) => {
            let wait = Duration::from_millis(q.wait.min(60_000));
            crate::dashboard::events_after(&core, q.object.as_deref(), after, wait, limit).await?
        }
        None => core.state().store().events(q.object.as_deref(), limit)?,
    };
    // A namespace's events are those of its objects (`KIND/KEY`, #20).
    if let Some(space) = super::namespaces::listing(space, caller) {
        // A replica's namespace is its deployment's, a namespace's its own
        // (neither is in the key: replica ids are flat).
        let st = core.state();
        out.retain(|e| crate::dashboard::event_namespace(st.mem(), &e.object) == Some(space.as_str()));
        drop(st);
        for e in &mut out {
            if let Some((kind, key)) = e.object.split_once('/') {
                e.object = format!("{kind}/{}", skiff_api::namespace::plain(key));
            }
        }
    }
    Ok(Json(out))
}
