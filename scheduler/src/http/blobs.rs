//! `/v1/blobs/{digest}`: content-addressed uploads, shared between servers.

use super::*;

#[utoipa::path(head, path = "/v1/blobs/{digest}", tag = "blobs", params(("digest" = String, Path, description = "`sha256:` and 64 lowercase hex digits", pattern = "^sha256:[0-9a-f]{64}$")), responses((status = 200, description = "Stored; Content-Length is its size"), Failures))]
pub(super) async fn head_blob(State(core): Shared, Path(digest): Path<String>) -> Result<Response, ApiError> {
    fetch_missing_blob(&core, &digest).await?;
    match core.blobs.size(&digest)? {
        // Whoever asks is about to refer to it: the blob collection's grace starts anew.
        Some(size) => {
            core.blobs.touch(&digest);
            Ok(([(header::CONTENT_LENGTH, size.to_string())], StatusCode::OK).into_response())
        }
        None => Err(ApiError::not_found(format!("blob {digest} not stored"))),
    }
}

/// A blob this server lacks is fetched from another server (several servers on etcd).
pub(super) async fn fetch_missing_blob(core: &Core, digest: &str) -> Result<(), ApiError> {
    if let Some(cluster) = &core.cluster
        && core.blobs.size(digest)?.is_none()
    {
        cluster.fetch_blob(&core.blobs, digest).await;
    }
    Ok(())
}

/// With several servers, an upload counts only once another server holds it too.
pub(super) async fn replicate_blob(core: &Core, digest: &str) -> Result<(), ApiError> {
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
pub(super) async fn get_blob(State(core): Shared, Path(digest): Path<String>) -> Result<Response, ApiError> {
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
pub(super) async fn put_blob(State(core): Shared, Path(digest): Path<String>, body: Body) -> ApiResult<BlobInfo> {
    parse_digest(&digest)?;
    if let Some(size) = core.blobs.size(&digest)? {
        // Same bytes: nothing to store, but read the body to its end. Answering
        // while the client still sends makes the server drop the connection, and
        // the client (a browser uploading from the dashboard) sees a reset.
        let mut rest = body.into_data_stream();
        while let Some(Ok(_)) = rest.next().await {}
        core.blobs.touch(&digest);
        replicate_blob(&core, &digest).await?;
        return Ok(Json(BlobInfo { digest, size }));
    }
    let size = core.blobs.put(&digest, body).await?;
    replicate_blob(&core, &digest).await?;
    Ok(Json(BlobInfo { digest, size }))
}
