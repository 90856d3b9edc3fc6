//! Images made ready to run: the manifest, config and layers fetched by digest
//! (from the scheduler, or the registry an image is named by) and verified,
//! each layer unpacked once per digest ([`super::unpack`]) and checked against
//! the config's `diff_id`.

use super::{ArtifactError, ContainerRuntime, Plan, bundle, registry, unpack};
use crate::blobs::{digest_hex, sha256_hex, unique_suffix};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest, Sha256};
use skiff_api::{Assignment, Client, Workload};
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

/// A layer media type and whether it is gzip-compressed.
fn layer_compression(media_type: &str) -> Result<bool, String> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Ok(false)
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(true),
        other => Err(format!("layer media type {other} is not supported (only tar and tar+gzip)")),
    }
}

/// Where an image's blobs come from: the scheduler, and for a reference that
/// names a registry host, that registry.
struct Source<'a> {
    scheduler: &'a Option<Client>,
    registry: Option<oci_client::Reference>,
}

impl ContainerRuntime {
    /// Blob `digest`, from disk or fetched, verified either way.
    async fn blob(&self, src: &Source<'_>, digest: &str) -> Result<Vec<u8>, ArtifactError> {
        let hex = digest_hex(digest).map_err(ArtifactError::Invalid)?;
        let path = self.blobs.join(hex);
        if let Ok(bytes) = tokio::fs::read(&path).await
            && sha256_hex(&bytes) == hex
        {
            return Ok(bytes);
        }
        let from_scheduler = match src.scheduler {
            Some(c) => {
                c.get_blob(digest).await.map(|b| b.to_vec()).map_err(|e| format!("cannot fetch blob {digest}: {e}"))
            }
            None => Err(format!("blob {digest} is not on this node and there is no scheduler")),
        };
        // An image named by its registry comes from there unless it was imported.
        let bytes = match (from_scheduler, &src.registry) {
            (Ok(b), _) => b,
            (Err(_), Some(r)) => self.registries.blob(r, digest).await?,
            (Err(e), None) => return Err(ArtifactError::Transient(e)),
        };
        let got = sha256_hex(&bytes);
        if got != hex {
            return Err(ArtifactError::Invalid(format!("blob {digest} has digest sha256:{got}; refusing it")));
        }
        let tmp = path.with_extension(format!("tmp.{}", unique_suffix()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .and(tokio::fs::rename(&tmp, &path).await)
            .map_err(|e| ArtifactError::Transient(format!("cannot store blob in {}: {e}", path.display())))?;
        Ok(bytes)
    }

    /// The unpacked directory of layer `digest`, unpacking it once.
    async fn layer(
        &self,
        src: &Source<'_>,
        digest: &str,
        media_type: &str,
        diff_id: Option<&str>,
    ) -> Result<(PathBuf, crate::gc::Hold), ArtifactError> {
        let hex = digest_hex(digest).map_err(ArtifactError::Invalid)?.to_string();
        let dest = self.dir.join("layers").join(&hex);
        // Held before looking: the image collection either removed it already
        // (it is unpacked again below) or keeps it while the replica lives.
        let hold = crate::gc::hold(&dest);
        let lock = {
            let mut map = self.unpacking.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(hex.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if dest.is_dir() {
            return Ok((dest, hold));
        }
        let gzip = layer_compression(media_type).map_err(ArtifactError::Invalid)?;
        let bytes = self.blob(src, digest).await?;
        let tmp = self.dir.join("layers").join(format!("{hex}.tmp{}", unique_suffix()));
        let diff_id = diff_id.map(str::to_owned);
        let digest_owned = digest.to_string();
        let (tmp2, dest2) = (tmp.clone(), dest.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<unpack::Unpacked, String> {
            fs::create_dir(&tmp2).map_err(|e| format!("cannot create {}: {e}", tmp2.display()))?;
            fs::set_permissions(&tmp2, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| format!("cannot set permissions of {}: {e}", tmp2.display()))?;
            let raw: Box<dyn Read> =
                if gzip { Box::new(flate2::read::GzDecoder::new(&bytes[..])) } else { Box::new(&bytes[..]) };
            let mut hashing = HashingReader { inner: raw, hasher: Sha256::new() };
            let stats = unpack::unpack_layer(&mut hashing, &tmp2).map_err(|e| format!("layer {digest_owned}: {e}"))?;
            // The tar's end padding counts toward the diff id too.
            io::copy(&mut hashing, &mut io::sink()).map_err(|e| format!("layer {digest_owned}: {e}"))?;
            let got = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
            if let Some(want) = diff_id
                && want != got
            {
                return Err(format!("layer {digest_owned} unpacks to {got}, the image config says {want}"));
            }
            fs::rename(&tmp2, &dest2).map_err(|e| format!("cannot move the unpacked layer into place: {e}"))?;
            Ok(stats)
        })
        .await
        .map_err(|e| ArtifactError::Transient(format!("unpacking task failed: {e}")))?;
        match result {
            Ok(stats) => {
                tracing::info!(layer = %digest, entries = stats.entries, skipped = stats.skipped, "unpacked layer");
                Ok((dest, hold))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(ArtifactError::Invalid(e))
            }
        }
    }

    pub(super) async fn prepare_image(&self, a: &Assignment, client: Option<Client>) -> Result<Plan, ArtifactError> {
        let Workload::Image(reference) = &a.spec.workload else {
            return Err(ArtifactError::Invalid(format!("{} is not an image", a.spec.workload)));
        };
        let (src, digest, manifest_bytes) = if registry::is_remote(reference) {
            // Named by its registry: the scheduler has it only if it was imported
            // (then pinned); a tag is resolved by the registry now.
            let r = registry::Registries::parse(reference)?;
            let local = Source { scheduler: &client, registry: None };
            let imported = match manifest_digest(reference) {
                Ok(d) => self.blob(&local, d).await.ok().map(|b| (d.to_string(), b)),
                Err(_) => None,
            };
            let (digest, bytes) = match imported {
                Some(found) => found,
                None => {
                    let (bytes, digest) = self.registries.manifest(&r).await?;
                    (digest, bytes)
                }
            };
            (Source { scheduler: &client, registry: Some(r) }, digest, bytes)
        } else {
            let digest = manifest_digest(reference).map_err(ArtifactError::Invalid)?;
            let src = Source { scheduler: &client, registry: None };
            let bytes = self.blob(&src, digest).await?;
            (src, digest.to_string(), bytes)
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ArtifactError::Invalid(format!("manifest {digest} is not an OCI image manifest: {e}")))?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self.blob(&src, &config_digest).await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| ArtifactError::Invalid(format!("image config {config_digest} is unreadable: {e}")))?;
        let os = config.os().to_string();
        if os != "linux" {
            return Err(ArtifactError::Invalid(format!("the image is for {os}, not linux")));
        }
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ArtifactError::Invalid(format!(
                "the image config lists {} layers, the manifest {}",
                diff_ids.len(),
                manifest.layers().len()
            )));
        }
        let (mut layers, mut holds) = (Vec::new(), Vec::new());
        for (i, l) in manifest.layers().iter().enumerate() {
            let media_type = l.media_type().to_string();
            let (dir, hold) =
                self.layer(&src, l.digest().as_ref(), &media_type, diff_ids.get(i).map(String::as_str)).await?;
            layers.push(dir);
            holds.push(hold);
        }
        let process = bundle::merge_process(config.config().as_ref(), &a.spec.args, &a.spec.env)
            .map_err(ArtifactError::Invalid)?;
        Ok(Plan {
            layers,
            process,
            cpu_millis: a.spec.resources.cpu.0,
            memory: a.spec.resources.memory.0,
            stop_grace: a.spec.stop_grace(),
            ports: a.spec.ports.clone(),
            host_network: a.spec.network == skiff_api::NetworkMode::Host,
            _holds: holds,
        })
    }
}

/// `name:tag@sha256:…` or `sha256:…` → the manifest digest.
pub(super) fn manifest_digest(reference: &str) -> Result<&str, String> {
    let digest = match reference.rsplit_once('@') {
        Some((_, d)) => d,
        None if reference.starts_with("sha256:") => reference,
        None => {
            return Err(format!(
                "image {reference} is not pinned to a digest; apply the deployment again to resolve it"
            ));
        }
    };
    digest_hex(digest)?;
    Ok(digest)
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
