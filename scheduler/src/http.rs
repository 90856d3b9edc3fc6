//! The HTTP/JSON API under `/v1/`, served with axum, and its OpenAPI
//! description (`GET /v1/openapi.json`).
//!
//! Routes and their description come from one list, [`api`]: every handler is
//! annotated with `#[utoipa::path]` and added with `routes!`, which registers the
//! route with axum and its operation in the description together. Nothing adds a
//! route any other way, so no route is undescribed (the e2e auth test walks the
//! description, checks every route's access, and that an undescribed path is a
//! 404 and an undescribed method a 405).

use crate::Core;
use crate::auth::Caller;
use crate::blobs::{MAX_BLOB_BYTES, parse_digest};
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, FromRequest, FromRequestParts, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use skiff_api::*;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use utoipa::{IntoParams, IntoResponses};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

type Shared = State<Arc<Core>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// Largest JSON request body.
const MAX_JSON_BYTES: usize = 1 << 20;
/// Largest heartbeat: room for 100,000 replica statuses on one node.
const MAX_HEARTBEAT_BYTES: usize = 32 << 20;

pub fn router(core: Arc<Core>) -> Router {
    let (routes, _) = api().split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1/ (GET /v1/openapi.json)") })
        .layer(axum::middleware::from_fn_with_state(core.clone(), crate::auth::check))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(core)
}

/// Every route of the API with its description. Add routes here, with `routes!`
/// on a handler annotated with `#[utoipa::path]`, and classify them in
/// `auth::need`.
pub(crate) fn api() -> OpenApiRouter<Arc<Core>> {
    use crate::{auth, dashboard, endpoints, images, metrics};
    let json_routes = OpenApiRouter::with_openapi(<Description as utoipa::OpenApi>::openapi())
        .routes(routes!(list_nodes))
        .routes(routes!(register))
        .routes(routes!(get_node, remove_node))
        // A heartbeat reports every replica of its node: ~300 bytes each, so a
        // node of 10,000 replicas sends ~3 MiB (a bench found the 1 MiB cap
        // silencing such a node, which was then declared down).
        .routes(routes!(heartbeat).layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BYTES)))
        .routes(routes!(assignments))
        .routes(routes!(endpoints::watch))
        .routes(routes!(list_deployments))
        .routes(routes!(apply, get_deployment, delete_deployment))
        .routes(routes!(scale))
        .routes(routes!(revisions))
        .routes(routes!(rollback))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(logs))
        .routes(routes!(list_replicas))
        .routes(routes!(events))
        .routes(routes!(servers))
        .routes(routes!(images::list_images, images::put_image))
        .routes(routes!(list_volumes))
        .routes(routes!(delete_volume))
        .routes(routes!(list_secrets))
        .routes(routes!(put_secret, delete_secret))
        .routes(routes!(auth::list_tokens, auth::create_token))
        .routes(routes!(auth::delete_token))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES));
    let blob_routes = OpenApiRouter::new()
        .routes(routes!(put_blob, get_blob, head_blob))
        .layer(DefaultBodyLimit::max(MAX_BLOB_BYTES as usize));
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::asset))
        .routes(routes!(metrics::serve))
        .routes(routes!(metrics::targets))
        .routes(routes!(dashboard::watch))
        .routes(routes!(openapi_json))
        .merge(json_routes)
        .merge(blob_routes)
}

/// The description's frame: what the routes' operations do not say themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "skiff scheduler API",
        description = "The API of a skiff scheduler (`skiff server`): what the CLI, the nodes and the dashboard use. \
            Every call but /healthz, / and /assets/* takes a bearer token (see `security` per operation); \
            a failed call answers a 4xx or 5xx status with `{\"error\": \"one line\"}`."
    ),
    components(schemas(ErrorBody)),
    security(("bearer" = [])),
    modifiers(&BearerAuth)
)]
struct Description;

/// The bearer token security scheme.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token (admin: DATA_DIR/admin-token or `skiff token create`; read-only: `skiff token create \
                 --read-only`), the join token (registration only) or a node's credential (its own routes, the \
                 endpoints table and blob downloads)",
            ))
            .build();
        api.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The failures any call may answer with: a status and [`ErrorBody`]'s one line.
#[derive(IntoResponses)]
#[allow(dead_code)] // never built: it only describes `ApiError`'s answers
pub(crate) enum Failures {
    /// The input is wrong; the line says how.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or one the server does not know.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token may not make this call.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such object (or route).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// It exists already, or is in use.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than the route takes.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// A JSON body without `Content-Type: application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// JSON of the wrong shape.
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// The scheduler failed; nothing was changed.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The store is unavailable for now; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The scheduler's data directory is full; nothing was changed.
    #[response(status = 507)]
    InsufficientStorage(ErrorBody),
}

/// The description as JSON, made once.
static DESCRIPTION: LazyLock<String> =
    LazyLock::new(|| api().into_openapi().to_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This description (OpenAPI 3.1)", body = Object), Failures))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DESCRIPTION.as_str()).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "The server answers", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// A JSON body; a bad one is refused with one line of [`ErrorBody`], as every
/// other failure.
pub(crate) struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    /// Parsed with serde_json alone; only a body that fails is parsed again by
    /// `axum::Json`, for its refusal that names where the body went wrong. Its
    /// path tracking costs an allocation per key, and parsing heartbeats was
    /// ~8% of the scheduler in a profile of scenario B (#7; the change alone
    /// did not move B beyond its noise).
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let plain_json = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/json") && matches!(v.get(16), None | Some(b';'))
        });
        if !plain_json {
            // Other JSON types (`+json`), and axum's refusal of the rest.
            return Ok(JsonBody(Json::<T>::from_request(req, state).await?.0));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), one_line(&e.body_text())))?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(JsonBody(v)),
            Err(_) => Ok(JsonBody(Json::<T>::from_bytes(&bytes)?.0)),
        }
    }
}

/// A path parameter, refused as [`JsonBody`] is.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub T);

/// Query parameters, refused as [`JsonBody`] is.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), one_line(&r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(r.status(), one_line(&r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(r.status(), one_line(&r.body_text()))
    }
}

/// `text` on one line, starting lowercase as the API's other errors do.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = line.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

const NAME: &str = "The object's name (a DNS label)";

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", responses((status = 200, description = "Every node", body = Vec<Node>), Failures))]
async fn list_nodes(State(core): Shared) -> ApiResult<Vec<Node>> {
    Ok(Json(core.state().mem().nodes().to_vec()))
}

#[utoipa::path(get, path = "/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The node", body = Node), Failures))]
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
#[utoipa::path(delete, path = "/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Removed; its replicas are replaced and its credential revoked"), Failures))]
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

#[utoipa::path(post, path = "/v1/nodes/register", tag = "nodes", request_body = RegisterRequest, responses((status = 200, description = "Registered (join token: with a new credential)", body = RegisterResponse), Failures))]
async fn register(
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
async fn heartbeat(
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
struct WatchQuery {
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
async fn assignments(
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

#[utoipa::path(get, path = "/v1/deployments", tag = "deployments", responses((status = 200, description = "Every deployment", body = Vec<Deployment>), Failures))]
async fn list_deployments(State(core): Shared) -> ApiResult<Vec<Deployment>> {
    let st = core.state();
    let mem = st.mem();
    Ok(Json(mem.deployment_names().filter_map(|n| mem.deployment(n)).collect()))
}

#[utoipa::path(get, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The deployment", body = Deployment), Failures))]
async fn get_deployment(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    core.state().mem().deployment(&name).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("deployment {name:?} not found; `skiff get deployments` lists them"))
    })
}

#[utoipa::path(put, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = ApplyRequest, responses((status = 200, description = "Created, updated or unchanged", body = ApplyResponse), Failures))]
async fn apply(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(mut req): JsonBody<ApplyRequest>,
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

#[utoipa::path(post, path = "/v1/deployments/{name}/scale", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = ScaleRequest, responses((status = 200, description = "Scaled", body = Deployment), Failures))]
async fn scale(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> ApiResult<Deployment> {
    let d = core.state().scale(&name, req.replicas)?;
    core.wake();
    Ok(Json(d))
}

#[utoipa::path(get, path = "/v1/deployments/{name}/revisions", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Its revisions", body = Vec<RevisionInfo>), Failures))]
async fn revisions(State(core): Shared, Path(name): Path<String>) -> ApiResult<Vec<RevisionInfo>> {
    Ok(Json(core.state().revisions(&name)?))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/rollback", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body(content = Option<RollbackRequest>, description = "Optional: without a body, the previous revision"), responses((status = 200, description = "Rolled back", body = Deployment), Failures))]
async fn rollback(
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
async fn pause(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    Ok(Json(core.state().set_paused(&name, true)?))
}

#[utoipa::path(post, path = "/v1/deployments/{name}/resume", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "Its rollout goes on", body = Deployment), Failures))]
async fn resume(State(core): Shared, Path(name): Path<String>) -> ApiResult<Deployment> {
    let d = core.state().set_paused(&name, false)?;
    core.wake();
    Ok(Json(d))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Also delete the data of the volumes only it mounts.
    #[serde(default)]
    purge_volumes: bool,
}

#[utoipa::path(delete, path = "/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), DeleteQuery), responses((status = 204, description = "Deleted; its replicas stop"), Failures))]
async fn delete_deployment(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    core.state().delete(&name, q.purge_volumes)?;
    core.wake();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", responses((status = 200, description = "Every volume", body = Vec<Volume>), Failures))]
async fn list_volumes(State(core): Shared) -> ApiResult<Vec<Volume>> {
    Ok(Json(core.state().volumes()))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Deleted, its data purged on its node"), Failures))]
async fn delete_volume(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_volume(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, description = "Every secret (keys, never values)", body = Vec<Secret>), Failures))]
async fn list_secrets(State(core): Shared) -> ApiResult<Vec<Secret>> {
    Ok(Json(core.state().secrets()))
}

#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = SecretRequest, responses((status = 200, description = "Stored", body = Secret), Failures))]
async fn put_secret(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SecretRequest>,
) -> ApiResult<Secret> {
    let secret = core.state().put_secret(&name, req)?;
    core.wake();
    Ok(Json(secret))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Deleted"), Failures))]
async fn delete_secret(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_secret(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ReplicaQuery {
    /// Only this deployment's replicas.
    deployment: Option<String>,
    /// Only the replicas on this node.
    node: Option<String>,
}

#[utoipa::path(get, path = "/v1/replicas", tag = "replicas", params(ReplicaQuery), responses((status = 200, description = "Live replicas", body = Vec<Replica>), Failures))]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
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
async fn events(State(core): Shared, Query(q): Query<EventQuery>) -> ApiResult<Vec<Event>> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    if let Some(after) = q.after {
        let wait = Duration::from_millis(q.wait.min(60_000));
        return Ok(Json(crate::dashboard::events_after(&core, q.object.as_deref(), after, wait, limit).await?));
    }
    Ok(Json(core.state().store().events(q.object.as_deref(), limit)?))
}

#[utoipa::path(head, path = "/v1/blobs/{digest}", tag = "blobs", params(("digest" = String, Path, description = "`sha256:` and 64 lowercase hex digits", pattern = "^sha256:[0-9a-f]{64}$")), responses((status = 200, description = "Stored; Content-Length is its size"), Failures))]
async fn head_blob(State(core): Shared, Path(digest): Path<String>) -> Result<Response, ApiError> {
    fetch_missing_blob(&core, &digest).await?;
    match core.blobs.size(&digest)? {
        Some(size) => Ok(([(header::CONTENT_LENGTH, size.to_string())], StatusCode::OK).into_response()),
        None => Err(ApiError::not_found(format!("blob {digest} not stored"))),
    }
}

/// A blob this server lacks is fetched from another server (several servers on etcd).
async fn fetch_missing_blob(core: &Core, digest: &str) -> Result<(), ApiError> {
    if let Some(cluster) = &core.cluster
        && core.blobs.size(digest)?.is_none()
    {
        cluster.fetch_blob(&core.blobs, digest).await;
    }
    Ok(())
}

/// With several servers, an upload counts only once another server holds it too.
async fn replicate_blob(core: &Core, digest: &str) -> Result<(), ApiError> {
    if let Some(cluster) = &core.cluster {
        let path = core.blobs.path(digest)?;
        cluster.replicate_blob(digest, &path).await.map_err(|why| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("blob {digest} is on one server only: no other server took a copy ({why}); retry"),
            )
        })?;
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/blobs/{digest}", tag = "blobs", params(("digest" = String, Path, description = "`sha256:` and 64 lowercase hex digits", pattern = "^sha256:[0-9a-f]{64}$")), responses((status = 200, description = "Its bytes", body = String, content_type = "application/octet-stream"), Failures))]
async fn get_blob(State(core): Shared, Path(digest): Path<String>) -> Result<Response, ApiError> {
    fetch_missing_blob(&core, &digest).await?;
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

#[utoipa::path(put, path = "/v1/blobs/{digest}", tag = "blobs", params(("digest" = String, Path, description = "`sha256:` and 64 lowercase hex digits", pattern = "^sha256:[0-9a-f]{64}$")), request_body(content = String, content_type = "application/octet-stream", description = "The bytes, whose SHA-256 must be the digest"), responses((status = 200, description = "Stored", body = BlobInfo), Failures))]
async fn put_blob(State(core): Shared, Path(digest): Path<String>, body: Body) -> ApiResult<BlobInfo> {
    parse_digest(&digest)?;
    if let Some(size) = core.blobs.size(&digest)? {
        // Same bytes: nothing to store, but read the body to its end. Answering
        // while the client still sends makes the server drop the connection, and
        // the client (a browser uploading from the dashboard) sees a reset.
        let mut rest = body.into_data_stream();
        while let Some(Ok(_)) = rest.next().await {}
        replicate_blob(&core, &digest).await?;
        return Ok(Json(BlobInfo { digest, size }));
    }
    let size = core.blobs.put(&digest, body).await?;
    replicate_blob(&core, &digest).await?;
    Ok(Json(BlobInfo { digest, size }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogQuery {
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

/// `GET /v1/servers`: this server alone on SQLite; on etcd, every server, the
/// leader and the store's members.
#[utoipa::path(get, path = "/v1/servers", tag = "servers", responses((status = 200, description = "The servers, the leader and the store", body = ServersInfo), Failures))]
async fn servers(State(core): Shared) -> Json<skiff_api::ServersInfo> {
    if let Some(cluster) = &core.cluster {
        return Json(cluster.info().await);
    }
    let me = skiff_api::ServerInfo {
        name: "local".into(),
        url: std::fs::read_to_string(core.config.data_dir.join("server.url")).unwrap_or_default().trim().to_string(),
        started_ms: 0,
        leader: true,
    };
    let db = core.config.data_dir.join("state.db");
    Json(skiff_api::ServersInfo {
        store: format!("sqlite:{}", db.display()),
        leader: Some(me.name.clone()),
        servers: vec![me],
        members: vec![skiff_api::StoreMember {
            endpoint: db.display().to_string(),
            healthy: true,
            leader: true,
            version: format!("SQLite {}", rusqlite::version()),
            error: String::new(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Need, need};
    use axum::http::{Method, Request};

    /// Every operation of the description: (method, path, its JSON).
    fn operations() -> Vec<(Method, String, serde_json::Value)> {
        let api: serde_json::Value = serde_json::from_str(&DESCRIPTION).expect("the description is JSON");
        let mut out = Vec::new();
        for (path, item) in api["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
                out.push((method, path.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn the_description_is_whole() {
        let ops = operations();
        assert!(ops.len() >= 38, "{} operations", ops.len());
        let api: serde_json::Value = serde_json::from_str(&DESCRIPTION).expect("JSON");
        // Every schema it names is in it.
        let mut refs = Vec::new();
        fn walk(v: &serde_json::Value, refs: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        refs.push(r.to_string());
                    }
                    m.values().for_each(|v| walk(v, refs));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        walk(&api, &mut refs);
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(api["components"]["schemas"].get(name).is_some(), "{r} is not in the description");
        }
        assert_eq!(api["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        // The http_sd list is a list (it was described as an object).
        let targets = &api["paths"]["/v1/prometheus/targets"]["get"]["responses"]["200"]["content"];
        assert_eq!(targets["application/json"]["schema"]["type"], "array", "{targets}");
        for (method, path, op) in ops {
            // What it says of its access is what `auth::check` does: open routes
            // take no token, every other one the bearer token.
            let open = op["security"] == serde_json::json!([{}]);
            assert_eq!(open, need(&method, &path) == Need::Open, "{method} {path}: {op}");
            let codes: Vec<&String> = op["responses"].as_object().expect("responses").keys().collect();
            assert!(codes.iter().any(|c| c.starts_with('2')), "{method} {path} has no success: {codes:?}");
            assert!(open || codes.iter().any(|c| *c == "401"), "{method} {path} does not say 401: {codes:?}");
        }
    }

    /// The description as committed (`scheduler/openapi.json`): a change of the
    /// API shows in review as a change of that file, so that "API changes are
    /// additive" can be checked there (a line taken away is a field, route or
    /// schema removed or renamed). After a deliberate change:
    /// `UPDATE_EXPECT=1 cargo test -p skiff-scheduler the_description_is_as_reviewed`.
    #[test]
    fn the_description_is_as_reviewed() {
        let api: serde_json::Value = serde_json::from_str(&DESCRIPTION).expect("the description is JSON");
        let pretty = serde_json::to_string_pretty(&api).expect("JSON") + "\n";
        expect_test::expect_file!["../openapi.json"].assert_eq(&pretty);
    }

    /// A body the extractor refuses, as the API answers it: (status, error line).
    async fn refused(content_type: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_string()))
            .expect("a request");
        let Err(e) = JsonBody::<ScaleRequest>::from_request(req, &()).await else {
            panic!("{body} was taken");
        };
        (e.status, e.message)
    }

    #[tokio::test]
    async fn bad_json_is_refused_with_one_line_of_json() {
        // axum's own rejections were plain text, not the API's `{"error": ...}`
        // that the description promises.
        let (status, line) = refused("application/json", r#"{"replicas": -1}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{line}");
        assert!(line.starts_with("failed to deserialize") && line.contains("replicas"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        let (status, line) = refused("application/json", "{").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{line}");
        let (status, line) = refused("text/plain", "{}").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{line}");
        let response = ApiError::new(status, line).into_response();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn a_rollback_body_may_be_null() {
        // Its body is optional in the description, so `null` is allowed too
        // (schemathesis sent it and got a 422).
        type RollbackBody = Result<Option<Json<Option<RollbackRequest>>>, JsonRejection>;
        for (body, to) in [("null", None), ("{}", None), (r#"{"to_revision": 3}"#, Some(3))] {
            let req = Request::builder()
                .method(Method::POST)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .expect("a request");
            let got = RollbackBody::from_request(req, &()).await.expect("infallible");
            let got = got.map(|b| b.and_then(|Json(b)| b?.to_revision)).map_err(ApiError::from);
            assert_eq!(got.ok(), Some(to), "{body}");
        }
    }
}
