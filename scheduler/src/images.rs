//! Imported OCI images: `name:tag` → the digest of an image manifest whose blobs
//! (manifest, config, layers) are in the blob store. The CLI uploads the blobs
//! of an archive by digest, then records the tag here; `apply` pins an image
//! reference to its manifest digest, so a later re-import of the tag changes
//! nothing that already runs.

use crate::Core;
use crate::blobs::parse_digest;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use skiff_api::{Image, ImageRequest, now_ms};
use std::sync::Arc;

/// The OCI and Docker media types of an image manifest.
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, description = "Every imported image", body = Vec<Image>), crate::http::Failures))]
pub(crate) async fn list_images(State(core): State<Arc<Core>>) -> Result<Json<Vec<Image>>, ApiError> {
    let images = core.state().store().images().map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(images))
}

#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImageRequest, responses((status = 200, description = "Recorded", body = Image), crate::http::Failures))]
pub(crate) async fn put_image(
    State(core): State<Arc<Core>>,
    crate::http::JsonBody(req): crate::http::JsonBody<ImageRequest>,
) -> Result<Json<Image>, ApiError> {
    validate_name(&req.name)?;
    validate_tag(&req.tag)?;
    parse_digest(&req.digest)?;
    let size = check_manifest(&core, &req.digest).await?;
    let image = Image { name: req.name, tag: req.tag, digest: req.digest, size, created_ms: now_ms() };
    core.state().store().put_image(&image).map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!("image {}:{} → {}", image.name, image.tag, image.digest);
    Ok(Json(image))
}

/// `DELETE /v1/images?name=&tag=`: which image.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImageQuery {
    /// Repository name, such as `busybox` or `example.com/team/app`.
    name: String,
    /// Tag [default: latest].
    tag: Option<String>,
}

#[utoipa::path(delete, path = "/v1/images", tag = "images", params(ImageQuery), responses((status = 204, description = "Forgotten; its blobs go with the blob collection once nothing else refers to them"), crate::http::Failures))]
pub(crate) async fn delete_image(
    State(core): State<Arc<Core>>,
    crate::http::Query(q): crate::http::Query<ImageQuery>,
) -> Result<axum::http::StatusCode, ApiError> {
    let tag = q.tag.as_deref().unwrap_or("latest");
    // Under the state lock, so no apply pins the image between the check and the delete.
    let state = core.state();
    let users = state.image_users(&q.name, tag);
    if !users.is_empty() {
        let named: Vec<String> = users
            .iter()
            .map(|u| match u.split_once('/') {
                Some((kind, name)) => format!("{kind} {name}"),
                None => format!("deployment {u}"),
            })
            .collect();
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!(
                "image {}:{tag} is used by {}; delete {} or deploy another image first",
                q.name,
                named.join(", "),
                if named.len() == 1 { "it" } else { "them" }
            ),
        ));
    }
    let found = state.store().delete_image(&q.name, tag).map_err(|e| ApiError::internal(e.to_string()))?;
    if !found {
        return Err(ApiError::not_found(format!(
            "image {}:{tag} is not imported; `skiff image ls` lists images",
            q.name
        )));
    }
    tracing::info!("image {}:{tag} removed", q.name);
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Checks the manifest blob is an image manifest whose config and layers are all
/// stored with their declared sizes; returns the image's total size.
async fn check_manifest(core: &Core, digest: &str) -> Result<u64, ApiError> {
    let path = core.blobs.path(digest)?;
    // About to be referred to: the blob collection's grace starts anew.
    core.blobs.touch(digest);
    let bytes = tokio::fs::read(&path).await.map_err(|_| {
        ApiError::bad_request(format!(
            "manifest {digest} is not uploaded; upload its blob first (skiff image import does)"
        ))
    })?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("blob {digest} is not an OCI image manifest: {e}")))?;
    if m.schema_version != 2 {
        return Err(ApiError::bad_request(format!(
            "manifest {digest} has schemaVersion {}, expected 2",
            m.schema_version
        )));
    }
    if let Some(t) = m.media_type.as_deref()
        && !MANIFEST_TYPES.contains(&t)
    {
        return Err(ApiError::bad_request(format!(
            "blob {digest} has media type {t}, not an image manifest; import a single-platform image"
        )));
    }
    let mut total = bytes.len() as u64;
    for d in std::iter::once(&m.config).chain(&m.layers) {
        match core.blobs.size(&d.digest)? {
            Some(size) if size == d.size => total += size,
            Some(size) => {
                return Err(ApiError::bad_request(format!(
                    "blob {} of manifest {digest} is {size} bytes, the manifest says {}",
                    d.digest, d.size
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "blob {} of manifest {digest} is not uploaded; upload it first",
                    d.digest
                )));
            }
        }
    }
    Ok(total)
}

/// Repository names as OCI distribution spells them: lowercase path components
/// of letters and digits joined by `.`, `_`, `__`, `-` and `/`.
fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && part.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && part.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid image name {name:?}: use lowercase letters, digits, '.', '_', '-' and '/' between parts"
        )))
    }
}

fn validate_tag(tag: &str) -> Result<(), ApiError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid image tag {tag:?}: use up to 128 letters, digits, '.', '_' and '-'"
        )))
    }
}

/// Splits `name[:tag][@digest]`; the tag defaults to `latest`. A `:` after the
/// last `/` starts the tag (before it, it is a registry port).
pub(crate) fn split_reference(reference: &str) -> (&str, &str, Option<&str>) {
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], &rest[slash + i + 1..], digest),
        None => (rest, "latest", digest),
    }
}

/// Pins an image reference to the digest of its manifest: `busybox` →
/// `busybox:latest@sha256:…`. A reference that already names a digest must name
/// an uploaded manifest.
pub(crate) async fn resolve(core: &Core, reference: &str) -> Result<String, ApiError> {
    let reference = reference.trim();
    if reference.starts_with("sha256:") {
        check_manifest(core, reference).await?;
        return Ok(reference.to_string());
    }
    let (name, tag, digest) = split_reference(reference);
    let remote = is_remote(name);
    if let Some(d) = digest {
        parse_digest(d)?;
        // A registry's image is pulled by the nodes; anything else must be here.
        if !remote {
            check_manifest(core, d).await?;
        }
        return Ok(reference.to_string());
    }
    // The registry host (`localhost:5000`) is not a repository path component.
    validate_name(if remote { name.split_once('/').map_or(name, |(_, path)| path) } else { name })?;
    validate_tag(tag)?;
    let images = core.state().store().images().map_err(|e| ApiError::internal(e.to_string()))?;
    match images.into_iter().find(|i| i.name == name && i.tag == tag) {
        Some(i) => Ok(format!("{name}:{tag}@{}", i.digest)),
        // Not imported, but named by its registry: the nodes pull it from there.
        None if remote => Ok(format!("{name}:{tag}")),
        None => Err(ApiError::bad_request(format!(
            "image {name}:{tag} is not imported; run `skiff image import FILE.tar` first (`skiff image ls` lists \
             images), or name it with its registry (localhost:5000/{name}:{tag}) to have the nodes pull it"
        ))),
    }
}

/// Whether an image name starts with a registry host (`localhost:5000/app`,
/// `registry.example.com/team/app`): a first path component with a `.` or a
/// `:`, or `localhost`, as Docker reads names.
pub(crate) fn is_remote(name: &str) -> bool {
    match name.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_tag_digest() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest", None));
        assert_eq!(split_reference("busybox:1.36"), ("busybox", "1.36", None));
        assert_eq!(split_reference("localhost:5000/app"), ("localhost:5000/app", "latest", None));
        assert_eq!(split_reference("localhost:5000/app:v2"), ("localhost:5000/app", "v2", None));
        assert_eq!(split_reference("app:v1@sha256:ab"), ("app", "v1", Some("sha256:ab")));
    }

    #[test]
    fn registry_hosts_start_remote_names() {
        assert!(is_remote("localhost:5000/busybox"));
        assert!(is_remote("localhost/busybox"));
        assert!(is_remote("registry.example.com/team/app"));
        assert!(!is_remote("busybox"));
        assert!(!is_remote("team/app"));
    }

    #[test]
    fn names_and_tags_are_checked() {
        assert!(validate_name("busybox").is_ok());
        assert!(validate_name("example.com/team/app-1").is_ok());
        assert!(validate_name("Busybox").is_err());
        assert!(validate_name("a//b").is_err());
        assert!(validate_name("../x").is_err());
        assert!(validate_tag("v1.2_3").is_ok());
        assert!(validate_tag("-x").is_err());
        assert!(validate_tag("").is_err());
    }
}
