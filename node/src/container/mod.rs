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
//! - A clean stop of the daemon applies [`OnExit`]: keep the started
//!   containers for the next daemon to adopt (as above), or stop and remove
//!   them all ([`ContainerRuntime::finish_exit`]).

mod adopt;
pub mod bundle;
mod cgroup;
pub mod cni;
pub mod health;
mod image;
pub mod oci;
pub mod registry;
mod run;
pub mod serve;
mod teardown;
pub mod unpack;

use crate::logs::LogSink;
use crate::runtime::{ArtifactError, BoxFuture, Outcome, RunSpec, Runtime};
use adopt::{Found, adopt};
use cgroup::CGROUP_PARENT;
use oci::Oci;
use run::{Net, run_container};
use skiff_api::{Assignment, Client};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use teardown::OnExit;
use teardown::{Lifecycle, teardown};

/// In a bundle: what adoption and teardown need to know about the container.
const RECORD_FILE: &str = "skiff.json";
/// In a bundle: the exit status, written when the runtime exits.
const EXIT_FILE: &str = "exit-status";
/// In a bundle: the FIFO the runtime waits on until the network is connected
/// (`bundle::BundleSpec::network_gate`).
const NETWORK_GATE: &str = "network-gate";
/// Where `crate::secrets` keeps secret files (cleared when a daemon starts).
const SECRETS_TMPFS: &str = "/dev/shm/";

/// The node's container runtime.
pub struct ContainerRuntime {
    dir: PathBuf,
    blobs: PathBuf,
    oci: Oci,
    /// Bridge networking; `None`: a private namespace with loopback only.
    cni: Option<cni::Cni>,
    /// One lock per layer digest, so N replicas of an image unpack each layer once.
    unpacking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The bridge address of each running container, for its probes and to
    /// name the caller of a request to the ingress.
    addresses: Addresses,
    /// Registries images are pulled from when the scheduler does not hold them.
    registries: registry::Registries,
    /// Containers an earlier daemon left running, by replica, until adopted by
    /// their replica's first run or released as unwanted.
    found: Mutex<HashMap<String, Found>>,
    /// Per-container locks, runs and teardowns in flight, and what the
    /// daemon's exit does with its containers.
    life: Lifecycle,
}

impl Drop for ContainerRuntime {
    fn drop(&mut self) {
        if let Some(cni) = &self.cni {
            cni.unmasquerade();
        }
    }
}

/// Who calls the ingress, as [`ContainerRuntime::caller`] tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Not a container on this node's bridge: the host, a host-network
    /// container, another machine, another node's ingress.
    Outside,
    /// The running container of `replica`, of `deployment` (a key).
    Container { replica: String, deployment: String },
    /// An address on the bridge that is no running container's.
    Unknown(std::net::IpAddr),
}

/// The bridge's interface index (IPv6 link-local peers carry it as their
/// scope), while it exists.
fn bridge_index() -> Option<u32> {
    let name = std::ffi::CString::new(cni::BRIDGE).ok()?;
    // SAFETY: if_nametoindex(3) reads the NUL-terminated name and nothing else.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Running containers' addresses by replica.
type Addresses = Arc<Mutex<HashMap<String, Address>>>;

/// Where a running container is, and whose it is.
#[derive(Debug, Clone)]
pub(super) struct Address {
    /// On the bridge; `127.0.0.1` on the host network.
    pub(super) ip: std::net::IpAddr,
    /// Its replica's deployment (key: `NS/NAME`, `job:NAME`, …).
    pub(super) deployment: String,
}

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
    /// Keeps the layers from the image collection while the replica lives.
    _holds: Vec<crate::gc::Hold>,
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
            life: Lifecycle::default(),
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

    /// What a clean stop of the daemon does with its containers (the default:
    /// [`OnExit::Keep`]).
    pub fn with_on_exit(mut self, on_exit: OnExit) -> ContainerRuntime {
        self.life = Lifecycle::new(on_exit);
        self
    }

    /// What a run needs of the runtime.
    fn net(&self) -> Net {
        Net { oci: self.oci.clone(), cni: self.cni.clone(), addresses: self.addresses.clone(), life: self.life.clone() }
    }

    /// The OCI runtime in use.
    pub fn oci(&self) -> &Oci {
        &self.oci
    }

    /// Runs one health check of `probe` against the running container of `replica`.
    pub async fn check(&self, replica: &str, probe: &skiff_api::Probe) -> Result<(), String> {
        let address = self.addresses.lock().unwrap_or_else(|e| e.into_inner()).get(replica).map(|a| a.ip);
        health::check(&self.oci, replica, address, probe).await
    }

    /// Whether containers get bridge networking (else loopback only).
    pub fn bridged(&self) -> bool {
        self.cni.is_some()
    }

    /// The bridge address of replica `id`'s container while it runs.
    pub fn address(&self, id: &str) -> Option<std::net::IpAddr> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner()).get(id).map(|a| a.ip)
    }

    /// Who is at `peer`, the other end of a connection to the ingress: a
    /// container of this node's bridge (named by its address), or not.
    ///
    /// A container cannot send from another's address: it lacks
    /// `CAP_NET_ADMIN` (to change its own) and `CAP_NET_RAW` (to forge packets
    /// or answer ARP for another), see `bundle.rs`; the bridge plugin gave it
    /// the one address it has. Traffic from a container to a node address is
    /// delivered locally, never masqueraded, so the peer is that address.
    /// Host-network containers call from the node's own addresses: outside.
    pub fn caller(&self, peer: std::net::SocketAddr) -> Caller {
        if !self.bridged() {
            return Caller::Outside;
        }
        name_caller(peer, bridge_index(), |ip| {
            let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
            addresses.iter().find(|(_, a)| a.ip == ip).map(|(id, a)| (id.clone(), a.deployment.clone()))
        })
    }
}

/// Who is at `peer` on a node whose bridge has interface index `bridge`:
/// `running` finds the running container (replica, deployment) at a bridge
/// address.
fn name_caller(
    peer: std::net::SocketAddr,
    bridge: Option<u32>,
    running: impl Fn(std::net::IpAddr) -> Option<(String, String)>,
) -> Caller {
    use std::net::{IpAddr, SocketAddr};
    let ip = match peer {
        SocketAddr::V4(a) => IpAddr::V4(*a.ip()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // Containers get no IPv6 address of ours, but the kernel gives
            // their eth0 a link-local one: a call over the bridge by it (an
            // ingress listening on `[::]`) cannot be named.
            None if (a.ip().segments()[0] & 0xffc0) == 0xfe80 && bridge.is_some_and(|b| b == a.scope_id()) => {
                return Caller::Unknown(peer.ip());
            }
            None => return Caller::Outside,
        },
    };
    if ip == serve::BRIDGE_GATEWAY || !cni::in_subnet(ip) {
        return Caller::Outside;
    }
    match running(ip) {
        Some((replica, deployment)) => Caller::Container { replica, deployment },
        None => Caller::Unknown(ip),
    }
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
        let net = self.net();
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
            startup_boost: false,
            netns: bundle::NetNs::New,
            binds,
            network_gate: None,
            isolated: false,
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

#[cfg(test)]
mod tests;
