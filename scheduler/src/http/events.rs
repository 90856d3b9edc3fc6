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
pub(super) async fn events(State(core): Shared, Query(q): Query<EventQuery>) -> ApiResult<Vec<Event>> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    if let Some(after) = q.after {
        let wait = Duration::from_millis(q.wait.min(60_000));
        return Ok(Json(crate::dashboard::events_after(&core, q.object.as_deref(), after, wait, limit).await?));
    }
    Ok(Json(core.state().store().events(q.object.as_deref(), limit)?))
}
