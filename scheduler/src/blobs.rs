//! Content-addressed blob store: artifacts stored by the sha256 of their bytes under
//! `<data dir>/blobs/sha256/<hex>`. Uploading the same bytes twice is a no-op; an
//! upload whose bytes do not match its digest is refused and leaves nothing behind.

use crate::error::ApiError;
use axum::body::Body;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Largest artifact accepted.
pub const MAX_BLOB_BYTES: u64 = 512 << 20;

#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

/// Checks `digest` is `sha256:` and 64 lowercase hex digits; returns the hex.
pub fn parse_digest(digest: &str) -> Result<&str, ApiError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(ApiError::bad_request(format!("{digest:?} is not a digest; expected sha256:<64 hex digits>")));
    }
    Ok(hex)
}

impl Blobs {
    pub fn open(data_dir: &Path) -> std::io::Result<Blobs> {
        let dir = data_dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(data_dir.join("blobs").join("tmp"))?;
        Ok(Blobs { dir })
    }

    /// Where blob `digest` lives, if the digest is well-formed.
    pub fn path(&self, digest: &str) -> Result<PathBuf, ApiError> {
        Ok(self.dir.join(parse_digest(digest)?))
    }

    pub fn size(&self, digest: &str) -> Result<Option<u64>, ApiError> {
        Ok(std::fs::metadata(self.path(digest)?).ok().map(|m| m.len()))
    }

    /// Stores `body` as `digest`, checking the bytes hash to it.
    pub async fn put(&self, digest: &str, body: Body) -> Result<u64, ApiError> {
        let final_path = self.path(digest)?;
        let hex = parse_digest(digest)?;
        let tmp = self.dir.parent().unwrap_or(&self.dir).join("tmp").join(format!("{hex}.{}", fastrand::u64(..)));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| io_error("create", &tmp, e))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
                size += chunk.len() as u64;
                if size > MAX_BLOB_BYTES {
                    return Err(ApiError::new(
                        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                        format!("artifact larger than {} MiB", MAX_BLOB_BYTES >> 20),
                    ));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| io_error("write", &tmp, e))?;
            }
            file.sync_all().await.map_err(|e| io_error("sync", &tmp, e))?;
            let actual = hex::encode(hasher.finalize());
            if actual != hex {
                return Err(ApiError::bad_request(format!(
                    "uploaded bytes hash to sha256:{actual}, not {digest}; the upload was corrupted or mislabelled"
                )));
            }
            tokio::fs::rename(&tmp, &final_path).await.map_err(|e| io_error("store", &final_path, e))?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        return ApiError::new(
            axum::http::StatusCode::INSUFFICIENT_STORAGE,
            "the scheduler's data directory is full; the upload was not stored; free space and retry",
        );
    }
    ApiError::internal(format!("blob store: cannot {what} {}: {e}", path.display()))
}
