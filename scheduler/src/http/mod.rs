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
use axum::extract::{DefaultBodyLimit, Extension, State};
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

mod blobs;
mod deployments;
mod events;
mod extract;
mod jobs;
pub(crate) mod namespaces;
mod nodes;
mod registries;
mod replicas;
mod secrets;
mod servers;
mod volumes;

pub(crate) use extract::{JsonBody, Path, Query};

pub fn router(core: Arc<Core>) -> Router {
    let (routes, _) = api().split_for_parts();
    let inner = routes
        .fallback(|| async { ApiError::not_found("no such route; the API lives under /v1/ (GET /v1/openapi.json)") })
        .layer(axum::middleware::from_fn_with_state(core.clone(), crate::auth::check))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(core.clone());
    // Namespaced paths are mapped onto the routes of `default` before routing
    // (#20); a scoped token's unprefixed ones first onto its namespace's.
    Router::new()
        .fallback_service(inner)
        .layer(axum::middleware::map_request(namespaces::namespaced))
        .layer(axum::middleware::map_request_with_state(core, namespaces::own_namespace))
}

/// Every route of the API with its description. Add routes here, with `routes!`
/// on a handler annotated with `#[utoipa::path]`, and classify them in
/// `auth::need`.
pub(crate) fn api() -> OpenApiRouter<Arc<Core>> {
    use crate::{auth, dashboard, endpoints, images, metrics};
    let json_routes = OpenApiRouter::with_openapi(<Description as utoipa::OpenApi>::openapi())
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(nodes::register))
        .routes(routes!(nodes::get_node, nodes::remove_node))
        // A heartbeat reports every replica of its node: ~300 bytes each, so a
        // node of 10,000 replicas sends ~3 MiB (a bench found the 1 MiB cap
        // silencing such a node, which was then declared down).
        .routes(routes!(nodes::heartbeat).layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BYTES)))
        .routes(routes!(nodes::assignments))
        .routes(routes!(nodes::cordon))
        .routes(routes!(nodes::uncordon))
        .routes(routes!(nodes::drain))
        .routes(routes!(nodes::rebalance))
        .routes(routes!(endpoints::watch))
        .routes(routes!(deployments::list_deployments))
        .routes(routes!(deployments::apply, deployments::get_deployment, deployments::delete_deployment))
        .routes(routes!(deployments::scale))
        .routes(routes!(deployments::activate))
        .routes(routes!(deployments::revisions))
        .routes(routes!(deployments::rollback))
        .routes(routes!(deployments::pause))
        .routes(routes!(deployments::resume))
        .routes(routes!(deployments::promote))
        .routes(routes!(deployments::abort))
        .routes(routes!(deployments::logs))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::put_job, jobs::get_job, jobs::delete_job))
        .routes(routes!(jobs::job_logs))
        .routes(routes!(jobs::list_crons))
        .routes(routes!(jobs::put_cron, jobs::get_cron, jobs::delete_cron))
        .routes(routes!(jobs::trigger_cron))
        .routes(routes!(replicas::list_replicas))
        .routes(routes!(replicas::exec))
        .routes(routes!(replicas::port_forward))
        .routes(routes!(events::events))
        .routes(routes!(servers::servers))
        .routes(routes!(images::list_images, images::put_image, images::delete_image))
        .routes(routes!(registries::list_registries))
        .routes(routes!(registries::registry_login, registries::registry_logout))
        .routes(routes!(volumes::list_volumes))
        .routes(routes!(volumes::delete_volume))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(secrets::put_secret, secrets::delete_secret))
        .routes(routes!(auth::list_tokens, auth::create_token))
        .routes(routes!(auth::delete_token))
        .routes(routes!(namespaces::list_namespaces))
        .routes(routes!(namespaces::get_namespace, namespaces::put_namespace, namespaces::delete_namespace))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES));
    let blob_routes = OpenApiRouter::new()
        .routes(routes!(blobs::put_blob, blobs::get_blob, blobs::head_blob))
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
static DESCRIPTION: LazyLock<String> = LazyLock::new(|| {
    let mut api = api().into_openapi();
    namespaces::describe_namespaced(&mut api);
    api.to_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
});

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

const NAME: &str = "The object's name (a DNS label)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Need, need};
    use axum::extract::FromRequest;
    use axum::extract::rejection::JsonRejection;
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
            // An upgrade (exec, port-forward) succeeds with 101.
            let success = |c: &&String| c.starts_with('2') || c.as_str() == "101";
            assert!(codes.iter().any(success), "{method} {path} has no success: {codes:?}");
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
        expect_test::expect_file!["../../openapi.json"].assert_eq(&pretty);
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
