//! `/v1/secrets`: keys only, never values.

use super::*;

#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, description = "Every secret (keys, never values)", body = Vec<Secret>), Failures))]
pub(super) async fn list_secrets(
    State(core): Shared,
    space: Option<Extension<super::namespaces::Ns>>,
) -> ApiResult<Vec<Secret>> {
    let space = super::namespaces::of(space);
    let mut all = core.state().secrets();
    all.retain(|s| skiff_api::namespace::of(&s.name) == space);
    all.iter_mut().for_each(|s| s.name = skiff_api::namespace::plain(&s.name));
    Ok(Json(all))
}

#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = SecretRequest, responses((status = 200, description = "Stored", body = Secret), Failures))]
pub(super) async fn put_secret(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SecretRequest>,
) -> ApiResult<Secret> {
    let mut secret = core.state().put_secret(&name, req)?;
    secret.name = skiff_api::namespace::plain(&secret.name);
    core.wake();
    Ok(Json(secret))
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Deleted"), Failures))]
pub(super) async fn delete_secret(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_secret(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
