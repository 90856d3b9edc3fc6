//! `/v1/registries`: private registry credentials (hosts and users; a password
//! goes in, never out).

use super::*;

const HOST: &str = "Registry host as image references name it: `registry.example.com`, `localhost:5000`";

#[utoipa::path(get, path = "/v1/registries", tag = "registries", responses((status = 200, description = "Every stored registry credential (host and user, never the password)", body = Vec<Registry>), Failures))]
pub(super) async fn list_registries(State(core): Shared) -> ApiResult<Vec<Registry>> {
    Ok(Json(core.state().registries()?))
}

#[utoipa::path(put, path = "/v1/registries/{host}", tag = "registries", params(("host" = String, Path, description = HOST)), request_body = RegistryLogin, responses((status = 200, description = "Stored, sealed", body = Registry), Failures))]
pub(super) async fn registry_login(
    State(core): Shared,
    Path(host): Path<String>,
    JsonBody(req): JsonBody<RegistryLogin>,
) -> ApiResult<Registry> {
    let registry = core.state().registry_login(&host, req)?;
    core.wake();
    Ok(Json(registry))
}

#[utoipa::path(delete, path = "/v1/registries/{host}", tag = "registries", params(("host" = String, Path, description = HOST)), responses((status = 204, description = "Deleted"), Failures))]
pub(super) async fn registry_logout(State(core): Shared, Path(host): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().registry_logout(&host)?;
    core.wake();
    Ok(StatusCode::NO_CONTENT)
}
