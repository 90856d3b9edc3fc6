//! What a deployment asks for: the workload template (`WorkloadSpec`) and its
//! parts (resources, ports, probes, volumes, secrets, stop grace period), and how
//! it is rolled out and scaled (`UpdateStrategy`, `Autoscale`). Serialised as JSON
//! on the wire and read from YAML manifests; field names are part of the API.

use crate::quantity::{Cpu, Memory};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of workload a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A WebAssembly module or component, run by wasmtime inside the node daemon.
    Wasm,
    /// A Linux container from an OCI image, run by an OCI runtime.
    Container,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Wasm => "wasm",
            Runtime::Container => "container",
        })
    }
}

/// CPU and memory, as requested by a replica or offered by a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// CPU in millicores.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "500m", pattern = "^[0-9]+(\\.[0-9]{1,3})?m?$"))]
    pub cpu: Cpu,
    /// Memory in bytes.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "64Mi", pattern = "^[0-9]+(\\.[0-9]{1,3})?(k|K|M|G|T|Ki|Mi|Gi|Ti)?$"))]
    pub memory: Memory,
}

impl Resources {
    /// Resources of `cpu` millicores and `memory` bytes.
    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Resources { cpu: Cpu(cpu_millis), memory: Memory(memory_bytes) }
    }

    /// Adds `other`, saturating.
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources::new(self.cpu.0.saturating_add(other.cpu.0), self.memory.0.saturating_add(other.memory.0))
    }

    /// Subtracts `other`, saturating at zero.
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources::new(self.cpu.0.saturating_sub(other.cpu.0), self.memory.0.saturating_sub(other.memory.0))
    }

    /// Whether `self` is at least `other` in every dimension.
    pub fn covers(self, other: Resources) -> bool {
        self.cpu >= other.cpu && self.memory >= other.memory
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {}, memory {}", self.cpu, self.memory)
    }
}

/// What to do when a replica's process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status (the default: services).
    #[default]
    Always,
    /// Restart only after a non-zero exit or a trap (batch work that may fail).
    OnFailure,
    /// Never restart.
    Never,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

/// The artifact a replica runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// A WebAssembly module or component, by the digest of its blob (`sha256:<hex>`).
    Wasm(String),
    /// An OCI image, by reference or digest.
    Image(String),
}

impl Workload {
    /// The runtime that runs this workload.
    pub fn runtime(&self) -> Runtime {
        match self {
            Workload::Wasm(_) => Runtime::Wasm,
            Workload::Image(_) => Runtime::Container,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Wasm(d) => write!(f, "wasm {d}"),
            Workload::Image(i) => write!(f, "image {i}"),
        }
    }
}

/// The template every replica of a deployment is made from. Any change to it makes
/// a new revision; the replica count is not part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkloadSpec {
    /// What to run.
    pub workload: Workload,
    /// What each replica requests; the memory is also its hard limit.
    pub resources: Resources,
    /// Environment variables; a replica sees these and no others.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// What to do when a replica exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Node labels a node must carry to receive replicas (all must match).
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Secrets the replicas read, as environment variables or files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
    /// Hosts a replica may send outbound HTTP requests to (`api.example.com`,
    /// `api.example.com:8080`, `*.example.com`); anything else is refused. Other
    /// deployments (`NAME.skiff.local`) are always reachable through the node's ingress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Named node-local volumes the replicas mount. A replica with a volume is
    /// pinned to the node that holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Health checks.
    #[serde(default, skip_serializing_if = "Probes::is_empty")]
    pub probes: Probes,
    /// The port a container serves HTTP on: a running replica counts as ready once
    /// it accepts connections there (or its readiness probe passes), and the
    /// ingress routes `NAME.skiff.local` to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// Ports a container listens on; those with a `host_port` are reachable at
    /// that port of its node (at most one replica per node can hold a host port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// A container's network: its own namespace (default) or the node's.
    #[serde(default, skip_serializing_if = "NetworkMode::is_default")]
    pub network: NetworkMode,
    /// How long a stopped container gets between SIGTERM and SIGKILL (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "10s"))]
    pub stop_grace_period: Option<GracePeriod>,
    /// Hold read-write volumes under a lease: a node that has not reached the
    /// scheduler for [`Assignments::lease_ms`] (the scheduler's node grace) stops
    /// the replica, so a node cut off from the scheduler stops writing by the time
    /// the scheduler counts the replica lost. Needs a read-write volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volume_lease: bool,
    /// Move replicas, one at a time and surge first, when a node joins or comes
    /// back and the deployment's spread over the nodes is worse than it could be.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebalance: bool,
}

/// A port a container listens on, and the node port that forwards to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The port inside the container.
    pub container_port: u16,
    /// The node's port (on every address of the node) that forwards to it; none:
    /// reachable only on the container's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// `tcp` (default) or `udp`.
    #[serde(default, skip_serializing_if = "Protocol::is_default")]
    pub protocol: Protocol,
}

/// A port's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn is_default(&self) -> bool {
        *self == Protocol::Tcp
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A node port held by a replica: `8081` (tcp) or `53/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// The port number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::Tcp => write!(f, "{}", self.port),
            p => write!(f, "{}/{p}", self.port),
        }
    }
}

/// The node ports that `ports` hold in `network`: the published ones, or on the
/// host network every one.
pub fn host_ports(ports: &[PortMapping], network: NetworkMode) -> Vec<HostPort> {
    ports
        .iter()
        .filter_map(|p| {
            let port = match network {
                NetworkMode::Host => Some(p.host_port.unwrap_or(p.container_port)),
                NetworkMode::Bridge => p.host_port,
            };
            port.map(|port| HostPort { port, protocol: p.protocol })
        })
        .collect()
}

/// Which network namespace a container runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace: an address on the node's bridge (or loopback only, on a
    /// node without the CNI plugins).
    #[default]
    Bridge,
    /// The node's own namespace: its ports are the node's ports.
    Host,
}

impl NetworkMode {
    fn is_default(&self) -> bool {
        *self == NetworkMode::Bridge
    }
}

/// A stop grace period: how long a stopped container may take to end after
/// SIGTERM before it gets SIGKILL. Written `10s`, `500ms`, `2m` or a number of
/// seconds; at most [`GracePeriod::MAX_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GracePeriod(pub u64);

impl GracePeriod {
    /// The default, 5 seconds.
    pub const DEFAULT: GracePeriod = GracePeriod(5_000);
    /// The longest allowed, 10 minutes.
    pub const MAX_MS: u64 = 600_000;

    /// The period as a duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl std::str::FromStr for GracePeriod {
    type Err = String;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(end);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid stop grace period {input:?}: expected a whole number with a unit, such as 10s or 500ms")
        })?;
        let ms = match unit {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            other => {
                return Err(format!("invalid stop grace period {input:?}: unknown unit {other:?}; use ms, s or m"));
            }
        };
        match ms {
            Some(ms) if ms <= Self::MAX_MS => Ok(GracePeriod(ms)),
            _ => Err(format!("stop grace period {input:?} is too long; at most 10m")),
        }
    }
}

impl fmt::Display for GracePeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) { write!(f, "{}s", self.0 / 1000) } else { write!(f, "{}ms", self.0) }
    }
}

impl Serialize for GracePeriod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GracePeriod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Seconds(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        // The message quotes the text, which is how a manifest finds its place.
        text.parse().map_err(|e: String| serde::de::Error::custom(e))
    }
}

/// A replica's health checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Probes {
    /// Failing it restarts the replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    /// While it fails the replica gets no traffic and does not count as available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Until it passes the other two wait; failing it restarts the replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
}

impl Probes {
    /// Whether no probe is set.
    pub fn is_empty(&self) -> bool {
        self.liveness.is_none() && self.readiness.is_none() && self.startup.is_none()
    }
}

/// One health check and its timing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// An HTTP GET that must answer `status` (Wasm HTTP components: through their
    /// handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// A TCP connection that must open (containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// A command that must exit 0 (containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Seconds between checks (default 5).
    #[serde(default = "Probe::default_period")]
    pub period_seconds: u32,
    /// Seconds a check may take (default 1).
    #[serde(default = "Probe::default_timeout")]
    pub timeout_seconds: u32,
    /// Consecutive failures that make the check fail (default 3).
    #[serde(default = "Probe::default_threshold")]
    pub failure_threshold: u32,
    /// Seconds after start before the first check (default 0).
    #[serde(default)]
    pub initial_delay_seconds: u32,
}

impl Probe {
    fn default_period() -> u32 {
        5
    }
    fn default_timeout() -> u32 {
        1
    }
    fn default_threshold() -> u32 {
        3
    }
}

/// `http:` of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// The path to GET, such as `/healthz`.
    pub path: String,
    /// The status that passes (default 200).
    #[serde(default = "HttpProbe::default_status")]
    pub status: u16,
    /// The port to GET on the container's address (containers only; a Wasm
    /// component is checked through its handler and ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl HttpProbe {
    fn default_status() -> u16 {
        200
    }
}

/// `tcp:` of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// The port that must accept a connection.
    pub port: u16,
}

/// A deployment's use of a named volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The volume's name (a DNS label), unique in the cluster.
    pub name: String,
    /// Where the replica sees it, an absolute directory path.
    pub path: String,
    /// Mounted read-only (any number of replicas) rather than read-write (one).
    #[serde(default)]
    pub read_only: bool,
    /// How large it is expected to grow (a hint; not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "1Gi"))]
    pub size: Option<Memory>,
}

impl WorkloadSpec {
    /// Whether a replica mounts a volume read-write: at most one may run at a time.
    pub fn has_writable_volume(&self) -> bool {
        self.volumes.iter().any(|v| !v.read_only)
    }

    /// The node ports a replica holds: its published ports, or with `network:
    /// host` every port it listens on.
    pub fn host_ports(&self) -> Vec<HostPort> {
        host_ports(&self.ports, self.network)
    }

    /// The stop grace period, or the default.
    pub fn stop_grace(&self) -> std::time::Duration {
        self.stop_grace_period.unwrap_or(GracePeriod::DEFAULT).duration()
    }
}

/// A deployment's use of one secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name.
    pub secret: String,
    /// Environment variables to set from the secret's keys: `VAR: key`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A directory in the replica where every key of the secret is a read-only file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Scaling by load: the scheduler keeps the replica count between `min` and
/// `max` so that the usage the nodes report meets the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// Fewest replicas; 0 lets an HTTP deployment go to zero when idle (after
    /// `scale_to_zero.idle_seconds`, by default 300).
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Target average cpu use per replica, in percent of its cpu request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_percent: Option<u32>,
    /// Target requests per second per replica (HTTP components, counted by the ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_requests_per_second: Option<f64>,
    /// Seconds of usage averaged for each decision (default 30).
    #[serde(default = "Autoscale::default_window")]
    pub window_seconds: u32,
    /// Seconds the load must have stayed low before scaling down: the count is
    /// the highest recommended over this window (default 30).
    #[serde(default = "Autoscale::default_stabilization")]
    pub stabilization_seconds: u32,
    /// The same before scaling up: the lowest recommended over it (default 0, at once).
    #[serde(default)]
    pub scale_up_stabilization_seconds: u32,
}

impl Autoscale {
    fn default_window() -> u32 {
        30
    }
    fn default_stabilization() -> u32 {
        30
    }
}

/// `scale_to_zero:` of an HTTP deployment: after `idle_seconds` without a
/// request it goes to 0 replicas; its name stays routable, and the next request
/// is held at the ingress while one replica starts, then served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScaleToZero {
    /// Seconds without a request before the deployment goes to zero (at least 1).
    pub idle_seconds: u32,
}

impl ScaleToZero {
    /// The idle time of a deployment that scales to zero only through
    /// `autoscale: {min: 0}`.
    pub const DEFAULT_IDLE_SECONDS: u32 = 300;
}

/// How a new revision replaces the old one: a rolling update, or with
/// `canary`, a canary whose share of the traffic grows step by step while
/// its measured errors and latency pass `canary.analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct UpdateStrategy {
    /// Replicas allowed above the desired count during a rollout (default 1).
    pub max_surge: u32,
    /// Replicas allowed to be unavailable during a rollout (default 0: capacity
    /// never drops).
    pub max_unavailable: u32,
    /// How long a new replica must run (and be ready) before it counts as available.
    pub min_ready_seconds: u32,
    /// A rollout that makes no progress for this long has failed (default 120).
    pub progress_deadline_seconds: u32,
    /// Roll a failed rollout back to the last good revision (default true).
    pub auto_rollback: bool,
    /// Roll a new revision out as a canary: weighted traffic, measured, then
    /// promoted or aborted (progressive delivery, #18).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Roll a new revision out blue/green: in full beside the old, reachable
    /// only at `NAME--preview` until promoted, then all requests at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
}

/// A blue/green rollout (#18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct BlueGreen {
    /// Serve the new revision at `NAME--preview.<suffix>` and `/d/NAME--preview/`
    /// before promotion (default true).
    pub preview: bool,
    /// Promote by itself this many seconds after the new revision is all
    /// ready, when nothing failed (0, the default: wait for `skiff rollout promote`).
    pub auto_promote_seconds: u64,
    /// How long the old revision stays up after the switch, so that a
    /// rollback is instant (default 30s).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "30s"))]
    pub scale_down_delay: Seconds,
}

impl Default for BlueGreen {
    fn default() -> Self {
        BlueGreen { preview: true, auto_promote_seconds: 0, scale_down_delay: Seconds(30) }
    }
}

/// A canary rollout: the new revision takes each step's share of the requests
/// in turn (then 100%), and is aborted the moment its figures fail `analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The steps, by growing weight (1..=99); after the last the canary is promoted.
    pub steps: Vec<CanaryStep>,
    /// What a step must measure to pass.
    #[serde(default)]
    pub analysis: Analysis,
}

/// One step of a canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of requests sent to the new revision (1..=99).
    pub weight: u32,
    /// How long the step lasts (`60s`, `2m`; at least one analysis interval
    /// with `min_requests` is needed besides), or `manual`: wait for
    /// `skiff rollout promote`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "60s"))]
    pub pause: Pause,
}

/// How long a canary step lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// At least this many seconds (0, the default: as soon as the analysis
    /// passed once).
    Seconds(u64),
    /// Until `skiff rollout promote`.
    Manual,
}

impl Default for Pause {
    fn default() -> Self {
        Pause::Seconds(0)
    }
}

impl Serialize for Pause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pause::Seconds(n) => s.serialize_str(&format!("{n}s")),
            Pause::Manual => s.serialize_str("manual"),
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Seconds::deserialize_any(d, "a duration such as 60s, or manual")? {
            None => Ok(Pause::Manual),
            Some(n) => Ok(Pause::Seconds(n)),
        }
    }
}

/// A duration written `10s`, `2m`, `1h30m` or as a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl Seconds {
    /// Reads a number of seconds or a duration string; `manual` is `None`
    /// (allowed only where `what` says so: the caller checks).
    fn deserialize_any<'de, D: serde::Deserializer<'de>>(d: D, what: &'static str) -> Result<Option<u64>, D::Error> {
        struct V(&'static str);
        impl serde::de::Visitor<'_> for V {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Option<u64>, E> {
                Ok(Some(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Option<u64>, E> {
                u64::try_from(n).map(Some).map_err(|_| E::custom(format!("expected {}, got {n}", self.0)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Option<u64>, E> {
                if s.trim() == "manual" {
                    return Ok(None);
                }
                crate::job::parse_duration_secs(s).map(Some).map_err(E::custom)
            }
        }
        d.deserialize_any(V(what))
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", self.0))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Seconds::deserialize_any(d, "a duration such as 10s")? {
            Some(n) => Ok(Seconds(n)),
            None => Err(serde::de::Error::custom("expected a duration such as 10s, got manual")),
        }
    }
}

/// What a canary's requests must measure, per analysis interval, for a step to pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Analysis {
    /// Highest share of 5xx answers (0.01 = 1%); when the stable revision
    /// itself fails more than this over the same interval, the canary fails
    /// only by exceeding the stable's rate by this much (a shared cause is not
    /// the canary's fault).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Highest 99th percentile latency, in milliseconds (to the response
    /// head), unless the stable revision is as slow over the same interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<u64>,
    /// Requests the canary must have served before an interval is judged
    /// (fewer: the interval's figures carry over to the next).
    pub min_requests: u64,
    /// How often the figures are judged (default 10s).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "10s"))]
    pub interval: Seconds,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis { max_error_rate: Some(0.01), max_p99_ms: None, min_requests: 100, interval: Seconds(10) }
    }
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            max_surge: 1,
            max_unavailable: 0,
            min_ready_seconds: 0,
            progress_deadline_seconds: 120,
            auto_rollback: true,
            canary: None,
            blue_green: None,
        }
    }
}
