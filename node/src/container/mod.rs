//! The container runtime: OCI images from the scheduler's blob store, run by an
//! OCI runtime (runc or crun) found at start-up.
//!
//! - Blobs (manifest, config, layers) are fetched by digest and verified, kept in
//!   `<data>/blobs/<hex>` beside the Wasm blobs.
//! - Each layer is unpacked once per digest into `<data>/containers/layers/<hex>`
//!   ([`unpack`] treats it as hostile), checked against the config's `diff_id`.
//! - Each run of a replica gets a bundle `<data>/containers/run/<replica>/`: an
//!   overlayfs `rootfs` (the layers below, `upper`/`work` of its own above) and a
//!   `config.json` ([`bundle`]), run in the foreground by the OCI runtime so its
//!   exit status is the container's; stdout and stderr go to the replica's log.
//! - When a run ends or is dropped, the container is killed and deleted, the
//!   rootfs unmounted and the bundle and cgroup removed. A node daemon that was
//!   killed leaves such things behind: [`ContainerRuntime::start`] removes them
//!   before the agent starts, and the scheduler's set then starts what must run.

pub mod bundle;
pub mod cni;
pub mod health;
pub mod oci;
pub mod registry;
pub mod serve;
pub mod unpack;

use crate::logs::{LogSink, Stream};
use crate::runtime::{BoxFuture, Prepared, Runtime};
use crate::wasm::{ArtifactError, Outcome, RunSpec, digest_hex, sha256_hex};
use oci::Oci;
use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest, Sha256};
use skiff_api::quantity::format_memory;
use skiff_api::{Assignment, Client, Workload};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long a stopped container gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Parent of every container's cgroup, under each hierarchy.
const CGROUP_PARENT: &str = "skiff";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How often cgroup usage is read while a container runs.
const STATS_EVERY: Duration = Duration::from_secs(1);

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

/// The node's container runtime.
pub struct ContainerRuntime {
    dir: PathBuf,
    blobs: PathBuf,
    oci: Oci,
    /// Bridge networking; `None`: a private namespace with loopback only.
    cni: Option<cni::Cni>,
    /// One lock per layer digest, so N replicas of an image unpack each layer once.
    unpacking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The bridge address of each running container, for its probes.
    addresses: Addresses,
    /// Registries images are pulled from when the scheduler does not hold them.
    registries: registry::Registries,
}

/// Where an image's blobs come from: the scheduler, and for a reference that
/// names a registry host, that registry.
struct Source<'a> {
    scheduler: &'a Option<Client>,
    registry: Option<oci_client::Reference>,
}

type Addresses = Arc<Mutex<HashMap<String, std::net::IpAddr>>>;

/// An image made ready for one assignment.
#[derive(Debug)]
pub struct Plan {
    /// Unpacked layer directories, bottom first.
    layers: Vec<PathBuf>,
    process: bundle::Process,
    cpu_millis: u64,
    memory: u64,
}

impl ContainerRuntime {
    /// Finds a working OCI runtime (`wanted`, else crun, else runc) and removes
    /// what an earlier daemon left under `data_dir`. Fails, saying why, when the
    /// node cannot run containers (not root, no runtime that works here).
    pub fn start(data_dir: &Path, wanted: Option<&Path>, network: Network) -> Result<ContainerRuntime, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the node does not run as root".into());
        }
        // overlayfs options and runc want absolute paths.
        let data_dir = &fs::canonicalize(data_dir)
            .map_err(|e| format!("cannot resolve the data directory {}: {e}", data_dir.display()))?;
        let dir = data_dir.join("containers");
        for sub in ["layers", "run", "probe"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        let blobs = data_dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(|e| format!("cannot create {}: {e}", blobs.display()))?;
        let root = dir.join("state");
        let probe_dir = dir.join("probe");
        let oci = oci::find(wanted, &root, |oci| probe(oci, &probe_dir))?;
        let cni = match network {
            Network::Loopback => None,
            Network::Bridge => Some(cni::Cni::find(data_dir)?),
            Network::Auto => match cni::Cni::find(data_dir) {
                Ok(c) => Some(c),
                Err(why) => {
                    tracing::warn!("containers get loopback networking only: {why}");
                    None
                }
            },
        };
        let rt = ContainerRuntime {
            dir,
            blobs,
            oci,
            cni,
            unpacking: Mutex::new(HashMap::new()),
            addresses: Addresses::default(),
            registries: registry::Registries::default(),
        };
        rt.clean_leftovers();
        Ok(rt)
    }

    /// Speaks plain HTTP to these registry hosts (`host` or `host:port`) besides
    /// loopback ones.
    pub fn with_insecure_registries(mut self, hosts: Vec<String>) -> ContainerRuntime {
        self.registries = registry::Registries::new(hosts);
        self
    }

    /// The OCI runtime in use.
    pub fn oci(&self) -> &Oci {
        &self.oci
    }

    /// Runs one health check of `probe` against the running container of `replica`.
    pub async fn check(&self, replica: &str, probe: &skiff_api::Probe) -> Result<(), String> {
        let address = self.addresses.lock().unwrap_or_else(|e| e.into_inner()).get(replica).copied();
        health::check(&self.oci, replica, address, probe).await
    }

    /// Whether containers get bridge networking (else loopback only).
    pub fn bridged(&self) -> bool {
        self.cni.is_some()
    }

    /// The bridge address of replica `id`'s container while it runs.
    pub fn address(&self, id: &str) -> Option<std::net::IpAddr> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied()
    }

    /// Stops and removes every container, mount, bundle and cgroup a previous
    /// daemon left, and half-unpacked layers.
    fn clean_leftovers(&self) {
        let mut ids: Vec<String> = self.oci.list();
        if let Ok(entries) = fs::read_dir(self.dir.join("run")) {
            ids.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            tracing::info!(container = %id, "removing a container left by an earlier node daemon");
            teardown(&self.oci, self.cni.as_ref(), &id, &self.dir.join("run").join(&id), Duration::ZERO);
        }
        if let Ok(entries) = fs::read_dir(self.dir.join("layers")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(".tmp") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

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
        let tmp = path.with_extension(format!("tmp.{}", fastrand_u64()));
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
    ) -> Result<PathBuf, ArtifactError> {
        let hex = digest_hex(digest).map_err(ArtifactError::Invalid)?.to_string();
        let dest = self.dir.join("layers").join(&hex);
        let lock = {
            let mut map = self.unpacking.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(hex.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if dest.is_dir() {
            return Ok(dest);
        }
        let gzip = layer_compression(media_type).map_err(ArtifactError::Invalid)?;
        let bytes = self.blob(src, digest).await?;
        let tmp = self.dir.join("layers").join(format!("{hex}.tmp{}", fastrand_u64()));
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
                Ok(dest)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(ArtifactError::Invalid(e))
            }
        }
    }

    async fn prepare_image(&self, a: &Assignment, client: Option<Client>) -> Result<Plan, ArtifactError> {
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
        let mut layers = Vec::new();
        for (i, l) in manifest.layers().iter().enumerate() {
            let media_type = l.media_type().to_string();
            let dir = self.layer(&src, l.digest().as_ref(), &media_type, diff_ids.get(i).map(String::as_str)).await?;
            layers.push(dir);
        }
        let process = bundle::merge_process(config.config().as_ref(), &a.spec.args, &a.spec.env)
            .map_err(ArtifactError::Invalid)?;
        Ok(Plan { layers, process, cpu_millis: a.spec.resources.cpu.0, memory: a.spec.resources.memory.0 })
    }
}

/// `name:tag@sha256:…` or `sha256:…` → the manifest digest.
fn manifest_digest(reference: &str) -> Result<&str, String> {
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

impl Runtime for ContainerRuntime {
    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<Prepared, ArtifactError>> {
        Box::pin(async move { Ok(Arc::new(self.prepare_image(a, client).await?) as Prepared) })
    }

    fn run(&self, prepared: Prepared, spec: RunSpec, log: Arc<LogSink>) -> BoxFuture<'static, Outcome> {
        let Ok(plan) = prepared.downcast::<Plan>() else {
            return Box::pin(async { Outcome::Failed("internal error: not a container plan".into()) });
        };
        let net = Net { oci: self.oci.clone(), cni: self.cni.clone(), addresses: self.addresses.clone() };
        let bundle = self.dir.join("run").join(&spec.replica);
        Box::pin(run_container(net, bundle, plan, spec, log))
    }
}

/// Tears the container down when dropped unless disarmed: the supervisor stops a
/// replica by dropping its future.
struct Running {
    net: Net,
    id: String,
    bundle: PathBuf,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.net.addresses.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        if self.armed {
            let (net, id, bundle) = (self.net.clone(), self.id.clone(), self.bundle.clone());
            // Drop cannot wait; a thread gives the container its grace period.
            let _ = std::thread::Builder::new()
                .name("skiff-ctr-stop".into())
                .spawn(move || teardown(&net.oci, net.cni.as_ref(), &id, &bundle, STOP_GRACE));
        }
    }
}

/// Stops and deletes container `id` and removes its network, rootfs mount,
/// bundle and cgroups. Blocking; every step tolerates what is already gone.
pub fn teardown(oci: &Oci, cni: Option<&cni::Cni>, id: &str, bundle: &Path, grace: Duration) {
    oci.stop(id, grace);
    if let Some(cni) = cni {
        cni.del(id);
    }
    let rootfs = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
        && e != nix::errno::Errno::EINVAL
        && e != nix::errno::Errno::ENOENT
    {
        tracing::warn!(container = id, "cannot unmount {}: {e}", rootfs.display());
    }
    if bundle.exists()
        && let Err(e) = fs::remove_dir_all(bundle)
    {
        tracing::warn!(container = id, "cannot remove {}: {e}", bundle.display());
    }
    for dir in cgroup_dirs(id) {
        let _ = fs::remove_dir(dir);
    }
}

/// The container's cgroup directory in every hierarchy where it may exist.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(CGROUP_ROOT) {
        for e in entries.flatten() {
            let p = e.path().join(CGROUP_PARENT).join(id);
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    let v2 = Path::new(CGROUP_ROOT).join(CGROUP_PARENT).join(id);
    if v2.is_dir() {
        out.push(v2);
    }
    out
}

/// OOM kills recorded in the container's memory cgroup (v1 `memory.oom_control`,
/// v2 `memory.events`).
fn oom_kills(id: &str) -> u64 {
    let candidates = [
        Path::new(CGROUP_ROOT).join("memory").join(CGROUP_PARENT).join(id).join("memory.oom_control"),
        Path::new(CGROUP_ROOT).join(CGROUP_PARENT).join(id).join("memory.events"),
    ];
    for p in candidates {
        if let Ok(text) = fs::read_to_string(&p) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// (cpu nanoseconds, memory bytes) used by the container's cgroup now (v1).
fn cgroup_usage(id: &str) -> Option<(u64, u64)> {
    let read = |ctrl: &str, file: &str| -> Option<u64> {
        let p = Path::new(CGROUP_ROOT).join(ctrl).join(CGROUP_PARENT).join(id).join(file);
        fs::read_to_string(p).ok()?.trim().parse().ok()
    };
    Some((read("cpuacct", "cpuacct.usage")?, read("memory", "memory.usage_in_bytes")?))
}

fn prepare_bundle(bundle: &Path, plan: &Plan, spec: &RunSpec, netns: Option<PathBuf>) -> Result<(), String> {
    let ctx = |what: &str, p: &Path, e: &dyn std::fmt::Display| format!("cannot {what} {}: {e}", p.display());
    let rootfs = bundle.join("rootfs");
    let upper = bundle.join("upper");
    let work = bundle.join("work");
    let empty = bundle.join("empty");
    for d in [&rootfs, &upper, &work, &empty] {
        fs::create_dir_all(d).map_err(|e| ctx("create", d, &e))?;
    }
    let mut lower: Vec<&Path> = plan.layers.iter().rev().map(PathBuf::as_path).collect();
    if lower.is_empty() {
        lower.push(&empty);
    }
    for p in lower.iter().chain([&upper.as_path(), &work.as_path()]) {
        let s = p.to_string_lossy();
        if s.contains([',', ':']) {
            return Err(format!("overlayfs cannot use {s}: the node's data directory must not contain ',' or ':'"));
        }
    }
    let lowerdir: Vec<String> = lower.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let opts = format!("lowerdir={},upperdir={},workdir={}", lowerdir.join(":"), upper.display(), work.display());
    nix::mount::mount(Some("overlay"), &rootfs, Some("overlay"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
        .map_err(|e| ctx("mount the overlay rootfs at", &rootfs, &e))?;

    let mut process = plan.process.clone();
    // The env in the spec (with secrets) overrides the image's.
    for (k, v) in &spec.env {
        process.env.retain(|kv| kv.split_once('=').map_or(kv.as_str(), |(key, _)| key) != k);
        process.env.push(format!("{k}={v}"));
    }
    let b = bundle::BundleSpec {
        hostname: spec.replica.clone(),
        process,
        cgroups_path: format!("/{CGROUP_PARENT}/{}", spec.replica),
        memory: plan.memory,
        cpu_millis: plan.cpu_millis,
        netns,
        binds: spec.preopens.iter().map(|p| (p.host.clone(), p.guest.clone(), p.writable)).collect(),
    };
    let config = bundle::spec(&b)?;
    let json = serde_json::to_vec_pretty(&config).map_err(|e| format!("cannot write config.json: {e}"))?;
    let path = bundle.join("config.json");
    fs::write(&path, json).map_err(|e| ctx("write", &path, &e))
}

async fn pump(mut from: impl tokio::io::AsyncRead + Unpin, log: Arc<LogSink>, stream: Stream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.write(stream, &buf[..n]),
        }
    }
}

/// The OCI runtime and the network setup, as a run needs them.
#[derive(Clone)]
struct Net {
    oci: Oci,
    cni: Option<cni::Cni>,
    addresses: Addresses,
}

async fn run_container(net: Net, bundle: PathBuf, plan: Arc<Plan>, spec: RunSpec, log: Arc<LogSink>) -> Outcome {
    let id = spec.replica.clone();
    let oci = net.oci.clone();
    let mut guard = Running { net: net.clone(), id: id.clone(), bundle: bundle.clone(), armed: true };
    {
        let (net, id, bundle, plan, spec) = (net.clone(), id.clone(), bundle.clone(), plan.clone(), spec.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            // What an earlier run left (a crash of this daemon) goes first.
            if bundle.exists() || net.oci.status(&id).is_some() {
                teardown(&net.oci, net.cni.as_ref(), &id, &bundle, Duration::ZERO);
            }
            let address = match &net.cni {
                Some(cni) => Some(cni.add(&id)?),
                None => None,
            };
            let netns = net.cni.as_ref().map(|_| cni::Cni::netns(&id));
            prepare_bundle(&bundle, &plan, &spec, netns).map(|()| address)
        })
        .await
        .unwrap_or_else(|e| Err(format!("bundle task failed: {e}")));
        match prepared {
            Ok(Some(address)) => {
                log.system(&format!("network: eth0 {address}"));
                let ip = address.split('/').next().and_then(|a| a.parse().ok());
                if let Some(ip) = ip {
                    net.addresses.lock().unwrap_or_else(|e| e.into_inner()).insert(guard.id.clone(), ip);
                }
            }
            Ok(None) => {}
            Err(e) => return Outcome::Failed(format!("cannot prepare the container: {e}")),
        }
    }
    let mut child = match oci.run_command(&bundle, &id).spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start {}: {e}", oci.bin.display())),
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, log.clone(), Stream::Stdout)));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, log.clone(), Stream::Stderr)));
    }

    // Cgroup usage into the replica's counters while it runs.
    let (mut last_cpu, mut last_mem) = (0u64, 0u64);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = tokio::time::sleep(STATS_EVERY) => {
                if let Some((cpu, mem)) = cgroup_usage(&id) {
                    spec.usage.add_cpu(Duration::from_nanos(cpu.saturating_sub(last_cpu)));
                    spec.usage.add_memory(mem as i64 - last_mem as i64);
                    (last_cpu, last_mem) = (cpu, mem);
                }
            }
        }
    };
    spec.usage.add_memory(-(last_mem as i64));
    net.addresses.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    let ooms = oom_kills(&id);

    guard.armed = false;
    {
        let (net, id, bundle) = (net.clone(), id.clone(), bundle.clone());
        let _ = tokio::task::spawn_blocking(move || teardown(&net.oci, net.cni.as_ref(), &id, &bundle, Duration::ZERO))
            .await;
    }
    // The container is gone, so its pipes are closed: the pumps end.
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    drop(guard);

    let status = match status {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("cannot wait for {}: {e}", oci.bin.display())),
    };
    let code = status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
    if ooms > 0 {
        return Outcome::Failed(format!(
            "OOMKilled: memory limit of {} exceeded (exit status {code})",
            format_memory(plan.memory)
        ));
    }
    Outcome::Exited(code)
}

/// Runs a minimal container: an empty rootfs with the host's /usr, /bin and
/// libraries bound read-only, `true` as the program, and the same namespaces and
/// cgroup limits as a real one. A runtime that cannot do this here (crun on a
/// hybrid cgroup layout) is not used.
fn probe(oci: &Oci, dir: &Path) -> Result<(), String> {
    let id = format!("skiff-probe-{}", std::process::id());
    let bundle = dir.join(&id);
    let result = (|| {
        let rootfs = bundle.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(|e| format!("cannot create {}: {e}", rootfs.display()))?;
        let binds: Vec<(PathBuf, String, bool)> = ["/usr", "/bin", "/lib", "/lib64"]
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| (PathBuf::from(p), p.to_string(), false))
            .collect();
        let truth = ["/bin/true", "/usr/bin/true"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("/bin/true");
        let b = bundle::BundleSpec {
            hostname: id.clone(),
            process: bundle::Process {
                args: vec![truth.to_string()],
                env: vec!["PATH=/usr/bin:/bin".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
            },
            cgroups_path: format!("/{CGROUP_PARENT}/{id}"),
            memory: 32 << 20,
            cpu_millis: 100,
            netns: None,
            binds,
        };
        let config = bundle::spec(&b)?;
        let json = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
        fs::write(bundle.join("config.json"), json).map_err(|e| format!("cannot write the probe bundle: {e}"))?;
        let out = std::process::Command::new(&oci.bin)
            .arg("--root")
            .arg(&oci.root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", oci.bin.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            Err(format!("{} (exit status {:?})", line, out.status.code()))
        }
    })();
    teardown(oci, None, &id, &bundle, Duration::ZERO);
    result
}

/// How containers are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Bridge networking when the CNI plugins are installed, else loopback only.
    #[default]
    Auto,
    /// Bridge networking (CNI bridge + host-local); containers are disabled
    /// without the plugins.
    Bridge,
    /// A private network namespace with loopback only.
    Loopback,
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

fn fastrand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    (u64::from(std::process::id()) << 32) ^ n
}

#[cfg(test)]
mod tests;
