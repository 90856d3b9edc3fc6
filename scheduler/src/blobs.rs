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

impl Blobs {
    /// Marks blob `digest` as just used (its mtime to now), so that the blob
    /// collection's grace period counts from here: a client that found the
    /// blob stored (HEAD, or an upload of bytes already here) is about to
    /// refer to it.
    pub fn touch(&self, digest: &str) {
        if let Ok(path) = self.path(digest)
            && let Ok(f) = std::fs::File::options().append(true).open(&path)
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }
}

/// The blob collection: deletes blobs that nothing refers to (no revision of
/// any deployment, kept history included, and no imported image) once they
/// have been unreferenced, and unmodified, for the grace period.
///
/// Roots are the digests `State::referenced_blobs` names and every imported
/// image's manifest; a manifest reaches its config and layers. A blob is
/// deleted only when a pass finds it unreferenced and both its mtime (an
/// upload, or `Blobs::touch` by a client that found it) and the first pass
/// that found it unreferenced are older than `grace`: an upload followed by
/// the apply that names it is never collected in between.
pub struct Collector {
    blobs: Blobs,
    grace: std::time::Duration,
    /// hex → when a pass first found it unreferenced.
    unreferenced_since: std::collections::HashMap<String, std::time::Instant>,
}

/// What one collection pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs deleted, and their bytes.
    pub deleted: usize,
    pub freed_bytes: u64,
    /// Bytes still held.
    pub held_bytes: u64,
}

/// Upload temporaries older than this are leftovers of an interrupted server.
const TMP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

impl Collector {
    pub fn new(blobs: Blobs, grace: std::time::Duration) -> Collector {
        Collector { blobs, grace, unreferenced_since: Default::default() }
    }

    /// One pass, given the root digests. Blocking (reads manifests, lists and
    /// deletes files).
    pub fn collect(&mut self, roots: impl IntoIterator<Item = String>) -> Collected {
        use std::time::{Instant, SystemTime};
        let mut keep: std::collections::HashSet<String> = Default::default();
        for digest in roots {
            let Ok(hex) = parse_digest(&digest).map(str::to_owned) else { continue };
            // A manifest names its config and layers; anything else names nothing.
            if let Ok(bytes) = std::fs::read(self.blobs.dir.join(&hex))
                && let Ok(m) = serde_json::from_slice::<ManifestRefs>(&bytes)
            {
                for d in m.config.into_iter().chain(m.layers) {
                    if let Ok(h) = parse_digest(&d.digest) {
                        keep.insert(h.to_string());
                    }
                }
            }
            keep.insert(hex);
        }
        let now = Instant::now();
        let mut out = Collected::default();
        let Ok(entries) = std::fs::read_dir(&self.blobs.dir) else { return out };
        let mut seen = std::collections::HashSet::new();
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else { continue };
            let Ok(meta) = e.metadata() else { continue };
            if parse_digest(&format!("sha256:{name}")).is_err() {
                continue;
            }
            if keep.contains(&name) {
                out.held_bytes += meta.len();
                continue;
            }
            seen.insert(name.clone());
            let since = *self.unreferenced_since.entry(name.clone()).or_insert(now);
            let idle = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
            if now.duration_since(since) < self.grace || idle < self.grace {
                out.held_bytes += meta.len();
                continue;
            }
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!("blob collection: deleted sha256:{name} ({} bytes), unreferenced", meta.len());
                    out.deleted += 1;
                    out.freed_bytes += meta.len();
                    seen.remove(&name);
                }
                Err(err) => {
                    tracing::warn!("blob collection: cannot delete sha256:{name}: {err}");
                    out.held_bytes += meta.len();
                }
            }
        }
        // Forget what is referenced again or gone.
        self.unreferenced_since.retain(|hex, _| seen.contains(hex));
        let tmp = self.blobs.dir.parent().map(|p| p.join("tmp"));
        for e in tmp.iter().flat_map(std::fs::read_dir).flatten().flatten() {
            let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| m.elapsed().ok());
            if old.is_some_and(|age| age > TMP_MAX_AGE) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        out
    }
}

#[derive(serde::Deserialize)]
struct Descriptor {
    digest: String,
}

/// The blobs an image manifest names (an index's `manifests` are not followed:
/// the store holds single-platform images only).
#[derive(serde::Deserialize)]
struct ManifestRefs {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Runs the blob collection every [`collect_every`] for as long as the task
/// lives (the leader's, on etcd: a follower's copies are left alone).
pub(crate) async fn run_collection(core: std::sync::Arc<crate::Core>, grace: std::time::Duration) {
    let mut gc = Some(Collector::new(core.blobs.clone(), grace));
    loop {
        tokio::time::sleep(collect_every(grace)).await;
        let mut roots: Vec<String> = core.state().referenced_blobs().into_iter().collect();
        match core.state().store().images() {
            Ok(images) => roots.extend(images.into_iter().map(|i| i.digest)),
            // Without the image table nothing can be said unreferenced.
            Err(e) => {
                tracing::warn!("blob collection skipped: cannot read the images: {e}");
                continue;
            }
        }
        let Some(mut collector) = gc.take() else { return };
        let Ok((collector, done)) = tokio::task::spawn_blocking(move || {
            let done = collector.collect(roots);
            (collector, done)
        })
        .await
        else {
            tracing::warn!("the blob collection task failed");
            return;
        };
        gc = Some(collector);
        crate::metrics::METRICS.blob_bytes.set(i64::try_from(done.held_bytes).unwrap_or(i64::MAX));
        crate::metrics::METRICS.blob_freed_bytes.inc_by(done.freed_bytes);
    }
}

/// How often the collection runs for a grace period: often enough that a blob
/// goes soon after its grace ends.
pub fn collect_every(grace: std::time::Duration) -> std::time::Duration {
    (grace / 4).clamp(std::time::Duration::from_millis(500), std::time::Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, bytes: &[u8]) -> String {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    #[test]
    fn unreferenced_blobs_go_after_the_grace_and_manifests_keep_their_layers() {
        let dir = std::env::temp_dir().join(format!("skiff-blobgc-{}-{}", std::process::id(), fastrand::u64(..)));
        let blobs = Blobs::open(&dir).unwrap();
        let layer = put(&dir, b"layer");
        let config = put(&dir, b"config");
        let manifest = put(
            &dir,
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#)
                .as_bytes(),
        );
        let wasm = put(&dir, b"wasm");
        let orphan = put(&dir, b"orphan");
        let mut gc = Collector::new(blobs.clone(), std::time::Duration::ZERO);
        let done = gc.collect([manifest.clone(), wasm.clone()]);
        assert_eq!(done.deleted, 1, "{done:?}");
        assert!(blobs.size(&orphan).unwrap().is_none());
        for kept in [&layer, &config, &manifest, &wasm] {
            assert!(blobs.size(kept).unwrap().is_some(), "{kept} deleted");
        }

        // Within the grace nothing goes, and a touched blob starts it anew.
        let mut gc = Collector::new(blobs.clone(), std::time::Duration::from_secs(3600));
        assert_eq!(gc.collect([]).deleted, 0);
        blobs.touch(&wasm);
        assert_eq!(gc.collect([]).deleted, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
