//! Blobs by digest: digest names checked before they become file names, the
//! sha256 of bytes, the one atomic file write of the node, and the blob cache
//! that Wasm commands and HTTP components share (`<data>/blobs/<hex>`).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use skiff_api::Client;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The hex part of `sha256:<64 hex>`, checked (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, String> {
    let hex =
        digest.strip_prefix("sha256:").ok_or_else(|| format!("blob digest {digest:?} must start with sha256:"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("blob digest {digest:?} must be sha256: followed by 64 lowercase hex digits"));
    }
    Ok(hex)
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A name no other temporary file of this process has: the process id and a
/// counter (not random: unique is all a temporary name needs).
pub fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Writes `bytes` to `path` whole or not at all: to a temporary file beside it,
/// then renamed into place, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", unique_suffix()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Downloads blob `digest` from the scheduler, when there is one.
pub fn fetcher(client: Option<Client>, digest: &str) -> impl FnOnce() -> BoxedFetch {
    let digest = digest.to_string();
    move || -> BoxedFetch {
        Box::pin(async move {
            match client {
                Some(c) => c.get_blob(&digest).await.map_err(|e| format!("cannot fetch blob {digest}: {e}")),
                None => Err(format!("blob {digest} is not on this node and there is no scheduler to fetch it from")),
            }
        })
    }
}

/// The download [`fetcher`] makes.
pub type BoxedFetch = std::pin::Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

/// The node's blob cache of Wasm artifacts.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// The cache in `data_dir/blobs`, created if missing.
    pub fn new(data_dir: &Path) -> anyhow::Result<Blobs> {
        let dir = data_dir.join("blobs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create the blob cache in {}: {e}", data_dir.display()))?;
        Ok(Blobs { dir })
    }

    /// The bytes of blob `hex`, from disk or fetched (and verified) once.
    pub async fn get<F, Fut>(&self, hex: &str, fetch: F) -> Result<Bytes, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, String>>,
    {
        let path = self.dir.join(hex);
        if let Ok(bytes) = tokio::fs::read(&path).await {
            if sha256_hex(&bytes) == hex {
                return Ok(bytes.into());
            }
            tracing::warn!(blob = %path.display(), "cached blob does not match its digest; fetching it again");
        }
        let bytes = fetch().await?;
        let got = sha256_hex(&bytes);
        if got != hex {
            return Err(format!("downloaded blob sha256:{hex} has digest sha256:{got}"));
        }
        write_atomic(&path, &bytes).map_err(|e| format!("cannot store blob in {}: {e}", path.display()))?;
        Ok(bytes)
    }
}
