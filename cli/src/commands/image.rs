//! `skiff image import` and `skiff image ls`: OCI images from archives into the
//! scheduler's blob store.
//!
//! Two archive shapes are read: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`, as `skopeo copy … oci-archive:` writes) and a `docker save`
//! archive (`manifest.json` naming a config and layer tars). A docker archive
//! has no OCI manifest of its own, so one is written from its `manifest.json`.
//! Every blob is checked against its digest before it is uploaded, and the
//! scheduler checks again.

mod archive;

use crate::output::{self, Table};
use anyhow::{Context, bail};
use archive::{digest_of, split_name_tag};
use clap::{Args, Subcommand};
use skiff_api::{Client, ImageRequest};
use std::path::PathBuf;

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
    /// Forget an imported image (refused while a deployment runs it); its
    /// blobs are deleted by the scheduler's blob collection once nothing else
    /// refers to them
    #[command(visible_alias = "delete")]
    Rm {
        /// NAME[:TAG] (the tag defaults to latest)
        image: String,
    },
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
        ImageCommand::Rm { image } => {
            let (name, tag) = split_name_tag(&image);
            client.delete_image(&name, &tag).await?;
            println!("image {name}:{tag} removed");
            Ok(())
        }
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

async fn import(args: ImportArgs, client: &Client) -> anyhow::Result<()> {
    let path = &args.file;
    let what = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {what}"))?;
    let files = archive::read_archive(std::io::BufReader::new(file), &what)?;
    let found = archive::images(&files, &what)?;
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
