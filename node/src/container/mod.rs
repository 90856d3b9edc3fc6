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
//!   With bridge networking the CNI plugins connect the container's namespace
//!   while the runtime creates the container, which waits at the bundle's
//!   `network-gate` FIFO until the node writes `ok` (or fails on anything else).
//! - When a run ends or is dropped, the container is stopped (SIGTERM, the spec's
//!   stop grace period, SIGKILL) and deleted, the rootfs unmounted and the
//!   bundle and cgroup removed.
//! - A node daemon that was killed leaves its containers running. The next one
//!   ([`ContainerRuntime::start`]) keeps those that still run, with their bundle,
//!   for adoption and removes everything else; the first run of a replica the
//!   scheduler still assigns adopts its container (same pid, cgroup, network
//!   namespace), and the agent's first converge releases the ones no assignment
//!   wants. Output survives the restart because the runtime writes it into FIFOs
//!   in the bundle that it also holds open for reading (so a write never fails
//!   when the daemon is gone; it blocks once the pipe's 64 KiB are full), and the
//!   exit status is written to a file by the shell the runtime runs under.

pub mod bundle;
pub mod cni;
pub mod health;
pub mod oci;
pub mod registry;
pub mod serve;
pub mod unpack;

use crate::blobs::{digest_hex, sha256_hex};
use crate::logs::{LogSink, Stream};
use crate::runtime::{ArtifactError, BoxFuture, Outcome, RunSpec, Runtime};
use oci::Oci;
use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest, Sha256};
use skiff_api::quantity::format_memory;
use skiff_api::{Assignment, Client, Workload};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Parent of every container's cgroup, under each hierarchy.
const CGROUP_PARENT: &str = "skiff";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How often cgroup usage is read while a container runs.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often an adopted container (not our child) is checked for its end.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// In a bundle: what adoption and teardown need to know about the container.
const RECORD_FILE: &str = "skiff.json";
/// In a bundle: the exit status, written when the runtime exits.
const EXIT_FILE: &str = "exit-status";
/// In a bundle: the FIFO the runtime waits on until the network is connected
/// (`bundle::BundleSpec::network_gate`).
const NETWORK_GATE: &str = "network-gate";
/// Where `crate::secrets` keeps secret files (cleared when a daemon starts).
const SECRETS_TMPFS: &str = "/dev/shm/";

/// What a run records in its bundle (`skiff.json`) so that a restarted node
/// daemon can adopt the container, or tear down its network, without its spec.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Record {
    /// Its address on the bridge (`10.89.0.2/16`); `127.0.0.1` on the host network.
    address: Option<String>,
    /// Its published ports (portmap's DEL needs them).
    ports: Vec<skiff_api::PortMapping>,
    /// Its stop grace period, milliseconds.
    stop_grace_ms: u64,
    /// Whether it sees secret files: those live on tmpfs, which a restarted
    /// daemon clears before it starts, so such a container is not adopted (it
    /// would see its secrets vanish) but started afresh.
    #[serde(default)]
    secret_files: bool,
    /// Whether its outbound traffic goes through the node's masquerade rule
    /// (`cni::Masquerade`); a container of an older daemon has the bridge
    /// plugin's own rules, which its teardown removes.
    #[serde(default)]
    node_masquerade: bool,
}

impl Record {
    fn read(bundle: &Path) -> Option<Record> {
        serde_json::from_slice(&fs::read(bundle.join(RECORD_FILE)).ok()?).ok()
    }

    fn write(&self, bundle: &Path) -> Result<(), String> {
        let json = serde_json::to_vec(self).map_err(|e| format!("cannot record the container: {e}"))?;
        fs::write(bundle.join(RECORD_FILE), json).map_err(|e| format!("cannot record the container: {e}"))
    }

    fn ip(&self) -> Option<std::net::IpAddr> {
        self.address.as_deref()?.split('/').next()?.parse().ok()
    }
}

/// A container a previous node daemon started that still runs.
#[derive(Debug, Clone, Copy)]
struct Found {
    /// Host pid of its first process.
    pid: i32,
    /// That process's start time (clock ticks after boot), so a reused pid is
    /// not taken for it.
    started: u64,
}

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
    /// Containers an earlier daemon left running, by replica, until adopted by
    /// their replica's first run or released as unwanted.
    found: Mutex<HashMap<String, Found>>,
}

impl Drop for ContainerRuntime {
    fn drop(&mut self) {
        if let Some(cni) = &self.cni {
            cni.unmasquerade();
        }
    }
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
    stop_grace: Duration,
    ports: Vec<skiff_api::PortMapping>,
    host_network: bool,
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
            found: Mutex::new(HashMap::new()),
        };
        rt.recover();
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

    /// Keeps the containers a previous daemon left running (with what adoption
    /// needs) for adoption; stops and removes every other container, mount,
    /// bundle and cgroup it left, and half-unpacked layers.
    fn recover(&self) {
        let mut ids: Vec<String> = self.oci.list();
        if let Ok(entries) = fs::read_dir(self.dir.join("run")) {
            ids.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
        ids.sort();
        ids.dedup();
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let bundle = self.dir.join("run").join(&id);
            if let Some(f) = self.adoptable(&id, &bundle) {
                tracing::info!(container = %id, pid = f.pid, "found a running container left by an earlier node daemon; adopting it if it is still assigned here");
                found.insert(id, f);
                continue;
            }
            tracing::info!(container = %id, "removing a container left by an earlier node daemon");
            teardown(&self.oci, self.cni.as_ref(), &id, &bundle, Duration::ZERO);
        }
        // The containers kept keep their outbound traffic (a daemon that
        // stopped cleanly took its rule along).
        if !found.is_empty()
            && let Some(cni) = &self.cni
            && let Err(e) = cni.masquerade()
        {
            tracing::warn!("{e}");
        }
        if let Ok(entries) = fs::read_dir(self.dir.join("layers")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(".tmp") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// A container that runs, from a bundle that has what adoption needs (its
    /// record and output FIFOs; a bundle from an older daemon has not).
    fn adoptable(&self, id: &str, bundle: &Path) -> Option<Found> {
        let (status, pid) = self.oci.state(id)?;
        let complete = [RECORD_FILE, "stdout", "stderr", "config.json"].iter().all(|f| bundle.join(f).exists());
        if status != "running" || pid <= 0 || !complete {
            return None;
        }
        if Record::read(bundle).is_none_or(|r| r.secret_files) {
            tracing::info!(container = %id, "not adopting a container with secret files (they went with the old daemon)");
            return None;
        }
        Some(Found { pid, started: process_start(pid)? })
    }

    /// Stops and removes, in the background, the found containers that `wanted`
    /// says no assignment wants. The agent calls it with every desired set.
    pub fn release_unwanted(&self, wanted: impl Fn(&str) -> bool) {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        let unwanted: Vec<String> = found.keys().filter(|id| !wanted(id)).cloned().collect();
        for id in unwanted {
            found.remove(&id);
            tracing::info!(container = %id, "stopping a container left by an earlier node daemon: no longer assigned here");
            let (oci, cni, bundle) = (self.oci.clone(), self.cni.clone(), self.dir.join("run").join(&id));
            let grace = Record::read(&bundle)
                .map_or(skiff_api::GracePeriod::DEFAULT.duration(), |r| Duration::from_millis(r.stop_grace_ms));
            let _ = std::thread::Builder::new()
                .name("skiff-ctr-stop".into())
                .spawn(move || teardown(&oci, cni.as_ref(), &id, &bundle, grace));
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
        Ok(Plan {
            layers,
            process,
            cpu_millis: a.spec.resources.cpu.0,
            memory: a.spec.resources.memory.0,
            stop_grace: a.spec.stop_grace(),
            ports: a.spec.ports.clone(),
            host_network: a.spec.network == skiff_api::NetworkMode::Host,
        })
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
    type Prepared = Arc<Plan>;

    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<Arc<Plan>, ArtifactError>> {
        Box::pin(async move { Ok(Arc::new(self.prepare_image(a, client).await?)) })
    }

    /// One run of the container, under its probes and routed by the ingress
    /// while ready when it serves HTTP (`serve::around`).
    fn run(self: Arc<Self>, plan: &Arc<Plan>, mut spec: RunSpec, log: Arc<LogSink>) -> BoxFuture<'static, Outcome> {
        serve::add_ingress_env(&mut spec, self.bridged());
        let net = Net { oci: self.oci.clone(), cni: self.cni.clone(), addresses: self.addresses.clone() };
        let bundle = self.dir.join("run").join(&spec.replica);
        let found = self.found.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.replica);
        let (plan, run_spec, run_log) = (plan.clone(), spec.clone(), log.clone());
        let run: BoxFuture<'static, Outcome> = match found {
            Some(found) => Box::pin(adopt(net, bundle, plan, run_spec, run_log, found)),
            None => Box::pin(run_container(net, bundle, plan, run_spec, run_log)),
        };
        serve::around(self, run, spec, log)
    }
}

/// Tears the container down when dropped unless disarmed: the supervisor stops a
/// replica by dropping its future.
struct Running {
    net: Net,
    id: String,
    bundle: PathBuf,
    /// SIGTERM to SIGKILL.
    grace: Duration,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.net.addresses.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        if self.armed {
            let (net, id, bundle, grace) = (self.net.clone(), self.id.clone(), self.bundle.clone(), self.grace);
            // Drop cannot wait; a thread gives the container its grace period.
            let _ = std::thread::Builder::new()
                .name("skiff-ctr-stop".into())
                .spawn(move || teardown(&net.oci, net.cni.as_ref(), &id, &bundle, grace));
        }
    }
}

/// Stops and deletes container `id` (SIGTERM, up to `grace`, SIGKILL) and
/// removes its network, rootfs mount, bundle and cgroups. Blocking; every step
/// tolerates what is already gone.
pub fn teardown(oci: &Oci, cni: Option<&cni::Cni>, id: &str, bundle: &Path, grace: Duration) {
    oci.stop(id, grace);
    if let Some(cni) = cni {
        let (ports, node_masquerade) = Record::read(bundle).map(|r| (r.ports, r.node_masquerade)).unwrap_or_default();
        cni.del(id, &ports, !node_masquerade);
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

fn prepare_bundle(
    bundle: &Path,
    plan: &Plan,
    spec: &RunSpec,
    netns: bundle::NetNs,
    network_gate: Option<PathBuf>,
) -> Result<(), String> {
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
        network_gate,
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
    let guard =
        Running { net: net.clone(), id: id.clone(), bundle: bundle.clone(), grace: plan.stop_grace, armed: true };
    let host_network = plan.host_network;
    let prepared = {
        let (net, id, bundle, plan, spec) = (net.clone(), id.clone(), bundle.clone(), plan.clone(), spec.clone());
        tokio::task::spawn_blocking(move || {
            // What an earlier run left (a crash of this daemon) goes first.
            if bundle.exists() || net.oci.may_know(&id) {
                teardown(&net.oci, net.cni.as_ref(), &id, &bundle, Duration::ZERO);
            }
            fs::create_dir_all(&bundle).map_err(|e| format!("cannot create {}: {e}", bundle.display()))?;
            let published = plan.ports.iter().any(|p| p.host_port.is_some());
            if net.cni.is_none() && !plan.host_network && published {
                return Err("cannot publish host ports: this node runs containers with loopback networking \
                            only (no CNI plugins); use network: host or a node with containernetworking-plugins"
                    .to_string());
            }
            let record = Record {
                address: plan.host_network.then(|| "127.0.0.1".to_string()),
                ports: plan.ports.clone(),
                stop_grace_ms: plan.stop_grace.as_millis() as u64,
                secret_files: spec.preopens.iter().any(|p| p.host.starts_with(SECRETS_TMPFS)),
                node_masquerade: true,
            };
            // Written before anything else can fail: teardown reads the ports from it.
            record.write(&bundle)?;
            // A bridged container's namespace is made now and connected (a
            // plugin run of some 10 ms) while the runtime creates the
            // container, which waits for it at the network gate.
            let (netns, gate) = match (&net.cni, plan.host_network) {
                (_, true) => (bundle::NetNs::Host, None),
                (Some(cni), false) => {
                    cni.create(&id, &plan.ports)?;
                    (bundle::NetNs::Join(cni::Cni::netns(&id)), Some(network_gate(&bundle)?))
                }
                (None, false) => (bundle::NetNs::New, None),
            };
            let gate_path = gate.as_ref().map(|_| bundle.join(NETWORK_GATE));
            prepare_bundle(&bundle, &plan, &spec, netns, gate_path)?;
            Ok((record, gate))
        })
        .await
        .unwrap_or_else(|e| Err(format!("bundle task failed: {e}")))
    };
    let (mut record, gate) = match prepared {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("cannot prepare the container: {e}")),
    };
    let exit_file = bundle.join(EXIT_FILE);
    let (out, err) = match (output_fifo(&bundle, "stdout"), output_fifo(&bundle, "stderr")) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return Outcome::Failed(format!("cannot prepare the container's output: {e}")),
    };
    let pumps = vec![
        tokio::spawn(pump(out.1, log.clone(), Stream::Stdout)),
        tokio::spawn(pump(err.1, log.clone(), Stream::Stderr)),
    ];
    // The command holds the only write ends outside the container: dropped with
    // it, so the pumps see the end when the runtime exits.
    let spawned = oci.run_command(&bundle, &id, &exit_file, out.0, err.0).spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start {}: {e}", oci.bin.display())),
    };
    // Held until the runtime exits: the gate's line stays in the FIFO until
    // its hook has read it.
    let _gate = match (gate, net.cni.clone()) {
        (Some(mut gate), Some(cni)) => {
            let (id, ports) = (id.clone(), plan.ports.clone());
            let connected = tokio::task::spawn_blocking(move || cni.connect(&id, &ports))
                .await
                .unwrap_or_else(|e| Err(format!("network task failed: {e}")));
            let opened = connected.and_then(|address| {
                record.address = Some(address);
                // Recorded before the container can run: adoption reads it.
                record.write(&bundle)?;
                gate.write_all(b"ok\n").map_err(|e| format!("cannot open the network gate: {e}"))
            });
            if let Err(e) = opened {
                let _ = gate.write_all(b"no\n");
                // The runtime gives up at the gate; then the teardown.
                let _ = child.wait().await;
                return Outcome::Failed(format!("cannot prepare the container: {e}"));
            }
            Some(gate)
        }
        _ => None,
    };
    if let Some(address) = &record.address {
        if host_network {
            log.system("network: the node's (network: host)");
        } else {
            log.system(&format!("network: eth0 {address}"));
        }
        if let Some(ip) = record.ip() {
            net.addresses.lock().unwrap_or_else(|e| e.into_inner()).insert(guard.id.clone(), ip);
        }
    }

    // Cgroup usage into the replica's counters while it runs.
    let mut usage = UsageReader::new(&id, &spec);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = tokio::time::sleep(STATS_EVERY) => usage.read(),
        }
    };
    let code = match status {
        Ok(s) => Ok(s.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0))),
        Err(e) => Err(format!("cannot wait for {}: {e}", oci.bin.display())),
    };
    finish(guard, usage, pumps, code, &plan).await
}

/// Takes over a container an earlier node daemon started (see the module doc):
/// its address, its output from the FIFOs, its end from the exit file.
async fn adopt(net: Net, bundle: PathBuf, plan: Arc<Plan>, spec: RunSpec, log: Arc<LogSink>, found: Found) -> Outcome {
    let id = spec.replica.clone();
    let record = Record::read(&bundle).unwrap_or_default();
    let grace = Duration::from_millis(record.stop_grace_ms);
    let guard = Running { net: net.clone(), id: id.clone(), bundle: bundle.clone(), grace, armed: true };
    if let Some(ip) = record.ip() {
        net.addresses.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), ip);
    }
    log.system(&format!("adopted the running container (pid {}) after the node daemon restarted", found.pid));
    let mut pumps = Vec::new();
    for (name, stream) in [("stdout", Stream::Stdout), ("stderr", Stream::Stderr)] {
        match tokio::net::unix::pipe::OpenOptions::new().open_receiver(bundle.join(name)) {
            Ok(rx) => pumps.push(tokio::spawn(pump(rx, log.clone(), stream))),
            Err(e) => log.system(&format!("cannot resume capturing the container's {name}: {e}")),
        }
    }
    let exit_file = bundle.join(EXIT_FILE);
    let mut usage = UsageReader::new(&id, &spec);
    let mut gone_since: Option<std::time::Instant> = None;
    let mut ticks = 0u32;
    let code = loop {
        tokio::time::sleep(ADOPTED_POLL).await;
        ticks += 1;
        if ticks.is_multiple_of(4) {
            usage.read();
        }
        if let Some(code) = fs::read_to_string(&exit_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            break Ok(code);
        }
        // The runtime's shell writes the status just after the container ends;
        // if it never does (it was killed too), the status is unknown.
        if process_start(found.pid) != Some(found.started) {
            let since = *gone_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break Err("the adopted container ended and its exit status is unknown".to_string());
            }
        }
    };
    finish(guard, usage, pumps, code, &plan).await
}

/// After a container's end: OOM kills read, everything torn down, the output
/// drained, the outcome told.
async fn finish(
    mut guard: Running,
    usage: UsageReader,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    code: Result<i32, String>,
    plan: &Plan,
) -> Outcome {
    let id = guard.id.clone();
    usage.release();
    guard.net.addresses.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    let ooms = oom_kills(&id);
    guard.armed = false;
    {
        let (net, id, bundle) = (guard.net.clone(), id.clone(), guard.bundle.clone());
        let _ = tokio::task::spawn_blocking(move || teardown(&net.oci, net.cni.as_ref(), &id, &bundle, Duration::ZERO))
            .await;
    }
    // The container is gone, so its pipes are closed: the pumps end.
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    drop(guard);
    let code = match code {
        Ok(c) => c,
        Err(e) if ooms == 0 => return Outcome::Failed(e),
        Err(_) => 137,
    };
    if ooms > 0 {
        return Outcome::Failed(format!(
            "OOMKilled: memory limit of {} exceeded (exit status {code})",
            format_memory(plan.memory)
        ));
    }
    Outcome::Exited(code)
}

/// Counts a container's cgroup usage into its replica's counters.
struct UsageReader {
    id: String,
    usage: Arc<crate::metrics::Usage>,
    cpu: u64,
    memory: u64,
}

impl UsageReader {
    fn new(id: &str, spec: &RunSpec) -> UsageReader {
        UsageReader { id: id.to_string(), usage: spec.usage.clone(), cpu: 0, memory: 0 }
    }

    fn read(&mut self) {
        if let Some((cpu, mem)) = cgroup_usage(&self.id) {
            self.usage.add_cpu(Duration::from_nanos(cpu.saturating_sub(self.cpu)));
            self.usage.add_memory(mem as i64 - self.memory as i64);
            (self.cpu, self.memory) = (cpu, mem);
        }
    }

    /// The container's memory is no longer held.
    fn release(self) {
        self.usage.add_memory(-(self.memory as i64));
    }
}

/// Makes the FIFO `bundle/name` for the container's output; returns the end the
/// runtime writes to (opened read-write, so the runtime itself keeps it open
/// for reading and a write never fails while no daemon reads) and ours.
fn output_fifo(bundle: &Path, name: &str) -> Result<(fs::File, tokio::net::unix::pipe::Receiver), String> {
    let path = bundle.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
    // The write end first: a FIFO read end opened with no writer reads as ended.
    let writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok((writer, reader))
}

/// Makes the network gate FIFO in `bundle` and opens it read-write: the open
/// waits for no reader, and a line written stays in the pipe while it is open.
fn network_gate(bundle: &Path) -> Result<fs::File, String> {
    let path = bundle.join(NETWORK_GATE);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// The start time of process `pid` (clock ticks after boot), while it lives and
/// is not a zombie.
fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold anything: the fields start after its last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    // Field 22 of proc(5); `fields` began at field 3.
    fields.nth(18)?.parse().ok()
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
            netns: bundle::NetNs::New,
            binds,
            network_gate: None,
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
