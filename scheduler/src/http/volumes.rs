//! `/v1/volumes`.

use super::*;

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", responses((status = 200, description = "Every volume", body = Vec<Volume>), Failures))]
pub(super) async fn list_volumes(
    State(core): Shared,
    space: Option<Extension<super::namespaces::Ns>>,
) -> ApiResult<Vec<Volume>> {
    let space = super::namespaces::of(space);
    let mut all = core.state().volumes();
    all.retain(|v| skiff_api::namespace::of(&v.name) == space);
    for v in &mut all {
        v.name = skiff_api::namespace::plain(&v.name);
        v.deployments.iter_mut().for_each(|d| *d = skiff_api::namespace::plain(d));
    }
    Ok(Json(all))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Deleted, its data purged on its node"), Failures))]
pub(super) async fn delete_volume(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_volume(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
