//! `skiff image import` and `skiff image ls`: OCI images from archives into the
//! scheduler's blob store.
//!
//! Two archive shapes are read: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`, as `skopeo copy … oci-archive:` writes) and a `docker save`
//! archive (`manifest.json` naming a config and layer tars). A docker archive
//! has no OCI manifest of its own, so one is written from its `manifest.json`.
//! Every blob is checked against its digest before it is uploaded, and the
//! scheduler checks again.

use crate::output::{self, Table};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use skiff_api::{Client, ImageRequest};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest archive read (it is held in memory while uploading).
const MAX_ARCHIVE: u64 = 4 << 30;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Upload an image archive (OCI layout or `docker save`) and tag it
    Import(ImportArgs),
    /// List imported images
    #[command(visible_alias = "list")]
    Ls,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The archive: an OCI image layout tar or a `docker save` tar
    file: PathBuf,
    /// Name the image NAME[:TAG] instead of the name in the archive
    #[arg(long, value_name = "NAME[:TAG]")]
    name: Option<String>,
}

pub async fn image(args: ImageArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Import(a) => import(a, client).await,
        ImageCommand::Ls => list(client).await,
    }
}

async fn list(client: &Client) -> anyhow::Result<()> {
    let images = client.images().await?;
    let mut table = Table::new(&["NAME", "TAG", "DIGEST", "SIZE", "AGE"]);
    for i in images {
        let short = i.digest.get(..19).unwrap_or(&i.digest).to_string();
        table.row(vec![i.name, i.tag, short, output::memory(i.size), output::age(i.created_ms)]);
    }
    table.print();
    Ok(())
}

/// One image found in an archive, ready to upload.
#[derive(Debug)]
struct Found {
    /// `name:tag` from the archive, if it names one.
    reference: Option<String>,
    manifest: Vec<u8>,
    /// Blobs the manifest refers to: digest → path in the archive.
    blobs: Vec<(String, String)>,
}

async fn import(args: ImportArgs, client: &Client) -> anyhow::Result<()> {
    let path = &args.file;
    let files = read_archive(path)?;
    let found = if files.contains_key("manifest.json") {
        docker_images(&files)
    } else if files.contains_key("index.json") {
        oci_images(&files)
    } else {
        bail!(
            "{} is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)",
            path.display()
        )
    }
    .with_context(|| format!("cannot read image archive {}", path.display()))?;
    if found.is_empty() {
        bail!("{} holds no image", path.display());
    }
    if args.name.is_some() && found.len() > 1 {
        bail!("{} holds {} images; --name can only name one", path.display(), found.len());
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_else(|| "image".into());
    for image in found {
        let (name, tag) = match (&args.name, &image.reference) {
            (Some(n), _) => split_name_tag(n),
            (None, Some(r)) => split_name_tag(r),
            (None, None) => bail!("{} does not name its image; give one with --name NAME[:TAG]", path.display()),
        };
        // An OCI layout often names only the tag ("latest"): take the name from the file.
        let name = if name.is_empty() { stem.clone() } else { name };
        let total = image.blobs.len() + 1;
        let mut blobs = Vec::with_capacity(total);
        for (digest, entry) in &image.blobs {
            let bytes = files.get(entry).with_context(|| format!("the archive lacks blob {digest} ({entry})"))?;
            blobs.push((digest.clone(), bytes.as_slice()));
        }
        let manifest_digest = digest_of(&image.manifest);
        blobs.push((manifest_digest.clone(), image.manifest.as_slice()));
        let bar = progress_bar(&name, blobs.iter().map(|(_, b)| b.len() as u64).sum());
        for (i, (digest, bytes)) in blobs.iter().enumerate() {
            upload(client, digest, bytes, &format!("[{}/{total}]", i + 1), bar.as_ref()).await?;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let req = ImageRequest { name: name.clone(), tag: tag.clone(), digest: manifest_digest };
        let img = client.put_image(&req).await.with_context(|| format!("cannot record image {name}:{tag}"))?;
        println!("imported {}:{} {} ({})", img.name, img.tag, img.digest, output::memory(img.size));
    }
    Ok(())
}

/// A bar over the bytes of an image's blobs, when stderr is a terminal (a log
/// or a pipe gets one line per blob instead).
fn progress_bar(name: &str, bytes: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let bar = indicatif::ProgressBar::new(bytes).with_style(style).with_message(format!("importing {name}"));
    Some(bar)
}

/// Uploads one blob unless the scheduler has it, checking its digest first.
async fn upload(
    client: &Client,
    digest: &str,
    bytes: &[u8],
    step: &str,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<()> {
    let actual = digest_of(bytes);
    if actual != digest {
        bail!("blob {digest} in the archive has digest {actual}; the archive is corrupt or was tampered with");
    }
    let size = bytes.len() as u64;
    if client.blob_exists(digest).await? {
        match bar {
            Some(bar) => bar.inc(size),
            None => eprintln!("{step} {} already stored", short(digest)),
        }
        return Ok(());
    }
    let sent = match bar {
        Some(bar) => {
            let bar = bar.clone();
            client.put_blob_with_progress(digest, bytes.to_vec(), move |n| bar.inc(n)).await
        }
        None => {
            eprintln!("{step} uploading {} ({})", short(digest), output::memory(size));
            client.put_blob(digest, bytes.to_vec()).await
        }
    };
    sent.with_context(|| format!("cannot upload blob {digest}"))?;
    Ok(())
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `busybox:1.36` → (busybox, 1.36); `busybox` → (busybox, latest); `latest` as
/// an OCI ref name (no name part) is handled by the caller; a `:` before the
/// last `/` is a registry port, not a tag.
fn split_name_tag(reference: &str) -> (String, String) {
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

/// Every regular file of the archive by its normalised path.
fn read_archive(path: &Path) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut files = HashMap::new();
    let mut total = 0u64;
    // The tar crate's own messages ("numeric field was not a number…") help nobody.
    let not_tar =
        || anyhow::anyhow!("{} is not a tar archive; give an OCI image layout or `docker save` tar", path.display());
    for entry in archive.entries().map_err(|_| not_tar())? {
        let mut entry = entry.map_err(|_| not_tar())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().with_context(|| format!("{} has an unreadable entry name", path.display()))?;
        let name = name.to_string_lossy().trim_start_matches("./").to_string();
        total += entry.size();
        if total > MAX_ARCHIVE {
            bail!("{} is larger than {} GiB", path.display(), MAX_ARCHIVE >> 30);
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("cannot read {name} in {}", path.display()))?;
        files.insert(name, bytes);
    }
    Ok(files)
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
        let tags = e.repo_tags.unwrap_or_default();
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
}
