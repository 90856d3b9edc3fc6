//! Reading an image archive: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`, as `skopeo copy … oci-archive:` writes) or a `docker save`
//! archive (`manifest.json` naming a config and layer tars), into the images it
//! holds. Pure (bytes in, manifests and blob paths out), so `fuzz/` builds this
//! file as it is; it must not name anything else of the CLI.

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest archive read (it is held in memory while uploading).
const MAX_ARCHIVE: u64 = 4 << 30;
/// Most layers one image may have (Docker stops at 127; overlayfs mounts of
/// hundreds of lower layers fail anyway). Also bounds the work a hostile
/// `manifest.json` naming one layer many times can cause.
pub const MAX_LAYERS: usize = 256;
/// Most images (tags) one archive may hold.
pub const MAX_IMAGES: usize = 1024;

/// One image found in an archive, ready to upload.
#[derive(Debug)]
pub struct Found {
    /// `name:tag` from the archive, if it names one.
    pub reference: Option<String>,
    pub manifest: Vec<u8>,
    /// Blobs the manifest refers to: digest → path in the archive.
    pub blobs: Vec<(String, String)>,
}

/// Every regular file of the archive by its normalised path. `what` names the
/// archive in errors.
pub fn read_archive(reader: impl Read, what: &str) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let mut archive = tar::Archive::new(reader);
    let mut files = HashMap::new();
    let mut total = 0u64;
    // The tar crate's own messages ("numeric field was not a number…") help nobody.
    let not_tar = || anyhow::anyhow!("{what} is not a tar archive; give an OCI image layout or `docker save` tar");
    for entry in archive.entries().map_err(|_| not_tar())? {
        let mut entry = entry.map_err(|_| not_tar())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().with_context(|| format!("{what} has an unreadable entry name"))?;
        let name = name.to_string_lossy().trim_start_matches("./").to_string();
        total += entry.size();
        if total > MAX_ARCHIVE {
            bail!("{what} is larger than {} GiB", MAX_ARCHIVE >> 30);
        }
        // The size is the header's word, not bytes read yet: reserve at most
        // 1 MiB on it (a 30-byte header claiming 4 GiB must not allocate 4 GiB).
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 20) as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("cannot read {name} in {what}"))?;
        files.insert(name, bytes);
    }
    Ok(files)
}

/// The images of an archive's files, by its shape.
pub fn images(files: &HashMap<String, Vec<u8>>, what: &str) -> anyhow::Result<Vec<Found>> {
    let found = if files.contains_key("manifest.json") {
        docker_images(files)
    } else if files.contains_key("index.json") {
        oci_images(files)
    } else {
        bail!("{what} is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)")
    }
    .with_context(|| format!("cannot read image archive {what}"))?;
    if found.len() > MAX_IMAGES {
        bail!("{what} holds {} images; at most {MAX_IMAGES} are imported at once", found.len());
    }
    Ok(found)
}

/// `busybox:1.36` → (busybox, 1.36); `busybox` → (busybox, latest); `latest` as
/// an OCI ref name (no name part) is handled by the caller; a `:` before the
/// last `/` is a registry port, not a tag.
pub fn split_name_tag(reference: &str) -> (String, String) {
    let reference = reference.split('@').next().unwrap_or(reference);
    // Docker Hub's implied prefixes are noise in a local store.
    let reference = reference.strip_prefix("docker.io/").unwrap_or(reference);
    let reference = reference.strip_prefix("library/").unwrap_or(reference);
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (reference[..slash + i].to_string(), reference[slash + i + 1..].to_string()),
        None => (reference.to_string(), "latest".to_string()),
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn blob_path(digest: &str) -> anyhow::Result<String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{digest:?} is not a sha256 digest");
    }
    Ok(format!("blobs/sha256/{hex}"))
}

fn get<'a>(files: &'a HashMap<String, Vec<u8>>, path: &str) -> anyhow::Result<&'a [u8]> {
    files.get(path).map(Vec::as_slice).with_context(|| format!("the archive lacks {path}"))
}

fn check_layers(n: usize) -> anyhow::Result<()> {
    if n > MAX_LAYERS {
        bail!("an image has {n} layers; at most {MAX_LAYERS} are supported");
    }
    Ok(())
}

/// The images of an OCI layout; a multi-platform index contributes its
/// linux/amd64 (or host architecture) image.
fn oci_images(files: &HashMap<String, Vec<u8>>) -> anyhow::Result<Vec<Found>> {
    let index: Index = serde_json::from_slice(get(files, "index.json")?).context("index.json")?;
    let mut out = Vec::new();
    for desc in index.manifests {
        let reference = desc.annotations.get(REF_NAME).cloned();
        let mut desc = desc;
        if desc.media_type == OCI_INDEX || desc.media_type == DOCKER_LIST {
            let nested: Index =
                serde_json::from_slice(get(files, &blob_path(&desc.digest)?)?).context("nested image index")?;
            let arch = host_arch();
            desc = nested
                .manifests
                .into_iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
                .with_context(|| format!("the image index {} has no linux/{arch} image", desc.digest))?;
        }
        if !desc.media_type.is_empty() && desc.media_type != OCI_MANIFEST && desc.media_type != DOCKER_MANIFEST {
            continue; // attestations, signatures and the like
        }
        let manifest_bytes = get(files, &blob_path(&desc.digest)?)?.to_vec();
        if digest_of(&manifest_bytes) != desc.digest {
            bail!("manifest {} does not match its digest; the archive is corrupt or was tampered with", desc.digest);
        }
        let m: Manifest =
            serde_json::from_slice(&manifest_bytes).with_context(|| format!("manifest {}", desc.digest))?;
        check_layers(m.layers.len())?;
        let mut blobs = Vec::new();
        for d in std::iter::once(&m.config).chain(&m.layers) {
            blobs.push((d.digest.clone(), blob_path(&d.digest)?));
        }
        // A ref name with no ':' or '/' is a bare tag ("latest").
        let reference = reference.map(|r| if r.contains([':', '/']) { r } else { format!(":{r}") });
        out.push(Found { reference, manifest: manifest_bytes, blobs });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The images of a `docker save` archive, each with an OCI manifest written from
/// its entry in `manifest.json`.
fn docker_images(files: &HashMap<String, Vec<u8>>) -> anyhow::Result<Vec<Found>> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(get(files, "manifest.json")?).context("manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        check_layers(e.layers.len())?;
        let tags = e.repo_tags.unwrap_or_default();
        if out.len() + tags.len() > MAX_IMAGES {
            bail!("manifest.json names more than {MAX_IMAGES} images");
        }
        let config = get(files, &e.config)?;
        let config_digest = digest_of(config);
        let mut blobs = vec![(config_digest.clone(), e.config.clone())];
        let mut layers = Vec::new();
        for path in &e.layers {
            let bytes = get(files, path)?;
            let digest = digest_of(bytes);
            let media_type = if bytes.starts_with(&[0x1f, 0x8b]) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}));
            blobs.push((digest, path.clone()));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers,
        });
        let manifest = serde_json::to_vec(&manifest).context("cannot write the image manifest")?;
        if tags.is_empty() {
            out.push(Found { reference: None, manifest: manifest.clone(), blobs: blobs.clone() });
        }
        for tag in tags {
            out.push(Found { reference: Some(tag), manifest: manifest.clone(), blobs: blobs.clone() });
        }
    }
    Ok(out)
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        let s = |r: &str| split_name_tag(r);
        assert_eq!(s("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(s("busybox:1.36"), ("busybox".into(), "1.36".into()));
        assert_eq!(s("docker.io/library/busybox:latest"), ("busybox".into(), "latest".into()));
        assert_eq!(s("localhost:5000/app"), ("localhost:5000/app".into(), "latest".into()));
        assert_eq!(s(":latest"), ("".into(), "latest".into()));
    }

    /// A tar of `(path, declared size, bytes)` entries; the size may lie.
    fn tar_of(entries: &[(&str, u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, size, body) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_path(path).expect("path");
            h.set_size(*size);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(body);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    #[test]
    fn a_header_claiming_gigabytes_reserves_nothing_of_the_kind() {
        // Seen while writing fuzz/image_archive: the header's size went straight to Vec::with_capacity.
        let tar = tar_of(&[("manifest.json", 3 << 30, b"[]")]);
        // Reserving 3 GiB here would abort under a memory limit (and the fuzzer's
        // malloc limit); now it is the one-line error of a cut-off archive.
        let e = read_archive(&tar[..], "x.tar").expect_err("short entry");
        assert_eq!(e.to_string(), "x.tar is not a tar archive; give an OCI image layout or `docker save` tar");
    }

    #[test]
    fn layers_and_tags_are_bounded() {
        let layers = vec!["l.tar"; MAX_LAYERS + 1];
        let manifest = serde_json::json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": layers}]).to_string();
        let tar = tar_of(&[
            ("manifest.json", manifest.len() as u64, manifest.as_bytes()),
            ("c.json", 2, b"{}"),
            ("l.tar", 0, b""),
        ]);
        let files = read_archive(&tar[..], "x.tar").expect("tar");
        let e = images(&files, "x.tar").expect_err("too many layers");
        assert_eq!(
            format!("{e:#}"),
            "cannot read image archive x.tar: an image has 257 layers; at most 256 are supported"
        );
        let tags: Vec<String> = (0..=MAX_IMAGES).map(|i| format!("a:{i}")).collect();
        let manifest = serde_json::json!([{"Config": "c.json", "RepoTags": tags, "Layers": ["l.tar"]}]).to_string();
        let tar = tar_of(&[
            ("manifest.json", manifest.len() as u64, manifest.as_bytes()),
            ("c.json", 2, b"{}"),
            ("l.tar", 0, b""),
        ]);
        let files = read_archive(&tar[..], "x.tar").expect("tar");
        let e = images(&files, "x.tar").expect_err("too many tags");
        assert!(format!("{e:#}").ends_with("manifest.json names more than 1024 images"), "{e:#}");
    }
}
