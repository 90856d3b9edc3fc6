//! The objects of a skiff cluster and the messages the scheduler, nodes and CLI
//! exchange. Everything here is serialised as JSON on the wire; field names are
//! part of the API.

use crate::quantity::{Cpu, Memory};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

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

/// A node's place in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating; takes new replicas.
    Ready,
    /// Heartbeating but takes no new replicas.
    Draining,
    /// Missed its heartbeats past the grace period; its replicas were replaced.
    Down,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        })
    }
}

/// A machine that runs replicas, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    /// Unique name (a DNS label).
    pub name: String,
    /// Base URL of the node's own API (logs), such as `http://10.0.0.2:7071`.
    pub address: String,
    /// Labels that deployment constraints match against.
    pub labels: BTreeMap<String, String>,
    /// What the node offers to replicas.
    pub capacity: Resources,
    /// What the replicas assigned to it request in total.
    pub allocated: Resources,
    /// The runtimes it can run.
    pub runtimes: Vec<Runtime>,
    /// Its state.
    pub state: NodeState,
    /// Number of live replicas assigned to it.
    pub replicas: u32,
    /// When it registered first.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub registered_ms: Millis,
    /// When its last heartbeat arrived (0 if none since the scheduler started).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub last_heartbeat_ms: Millis,
    /// Base URL of the node's ingress (`http://10.0.0.2:8080`), if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
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
        text.parse().map_err(|e: String| crate::manifest::refuse(&text, e))
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

/// A named volume, as the scheduler knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// The node that holds its data, once a replica using it was placed.
    pub node: Option<String>,
    /// The size hint it was created with.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "1Gi"))]
    pub size: Option<Memory>,
    /// Deployments that mount it now.
    pub deployments: Vec<String>,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
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

/// A secret as the API shows it: names of its keys, never their values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Secret {
    /// Unique name (a DNS label).
    pub name: String,
    /// The keys it holds.
    pub keys: Vec<String>,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
    /// When its values last changed.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub updated_ms: Millis,
}

/// `PUT /v1/secrets/{name}`: create a secret, or replace its values with `overwrite`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretRequest {
    /// Key → value (UTF-8).
    pub data: BTreeMap<String, String>,
    /// Replace the values of an existing secret instead of refusing.
    #[serde(default)]
    pub overwrite: bool,
}

/// Counts of a deployment's replicas by what they are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentStatus {
    /// Live replicas (neither stopped nor lost).
    pub total: u32,
    /// Waiting for a node.
    pub pending: u32,
    /// Running on their node.
    pub running: u32,
    /// Passing readiness: `ready`, or running when their revision has no
    /// readiness probe (running is then all there is to know).
    #[serde(default)]
    pub ready: u32,
    /// Ready for at least the strategy's `min_ready_seconds`.
    #[serde(default)]
    pub available: u32,
    /// Exited or failed (waiting for a restart, or done for good).
    pub failed: u32,
    /// Restarts summed over live replicas.
    pub restarts: u32,
}

/// Scaling by load: the scheduler keeps the replica count between `min` and
/// `max` so that the usage the nodes report meets the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// Fewest replicas (at least 1).
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

    /// Checks the bounds and that exactly one target is set, with a usable value.
    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 || self.min > self.max {
            return Err(format!("autoscale needs 1 <= min <= max, got min {} and max {}", self.min, self.max));
        }
        if self.max > crate::manifest::MAX_REPLICAS {
            return Err(format!("autoscale max must be at most {}, got {}", crate::manifest::MAX_REPLICAS, self.max));
        }
        match (self.target_cpu_percent, self.target_requests_per_second) {
            (Some(0), _) => Err("autoscale target_cpu_percent must be above 0".into()),
            (None, Some(r)) if !(r.is_finite() && r > 0.0) => {
                Err("autoscale target_requests_per_second must be above 0".into())
            }
            (Some(_), None) | (None, Some(_)) => {
                if self.window_seconds == 0 {
                    Err("autoscale window_seconds must be above 0".into())
                } else {
                    Ok(())
                }
            }
            _ => Err("autoscale needs one target: target_cpu_percent or target_requests_per_second".into()),
        }
    }
}

/// How a new revision replaces the old one: a rolling update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            max_surge: 1,
            max_unavailable: 0,
            min_ready_seconds: 0,
            progress_deadline_seconds: 120,
            auto_rollback: true,
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Every replica runs the current revision and is available.
    #[default]
    Complete,
    /// Replicas of an older revision are being replaced.
    Progressing,
    /// The rollout failed and was rolled back to the last good revision.
    RolledBack,
    /// The rollout failed and stays where it is (automatic rollback is off).
    Failed,
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutState::Complete => "complete",
            RolloutState::Progressing => "progressing",
            RolloutState::RolledBack => "rolled-back",
            RolloutState::Failed => "failed",
        })
    }
}

/// The latest rollout of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Rollout {
    /// Where it stands.
    pub state: RolloutState,
    /// The revision it started from (the last good one).
    pub from_revision: u64,
    /// The revision it rolls out (or rolled out and gave up on).
    pub to_revision: u64,
    /// When it started.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub started_ms: Millis,
    /// When an old replica was last replaced by an available new one.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub progress_ms: Millis,
    /// Paused: no replica is created or stopped for the rollout until resumed.
    pub paused: bool,
    /// Why it is where it is.
    pub message: String,
}

/// One revision of a deployment, for `skiff rollout history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevisionInfo {
    /// The revision number.
    pub revision: u64,
    /// Its template.
    pub spec: WorkloadSpec,
    /// Whether the deployment runs it now.
    pub current: bool,
}

/// `POST /v1/deployments/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackRequest {
    /// The revision to go back to; the previous one when absent.
    #[serde(default)]
    pub to_revision: Option<u64>,
}

/// A named set of identical replicas that the scheduler keeps at its count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// Unique name (a DNS label).
    pub name: String,
    /// Desired number of replicas.
    pub replicas: u32,
    /// The current revision, starting at 1.
    pub revision: u64,
    /// The current revision's template.
    pub spec: WorkloadSpec,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
    /// When its spec or count last changed.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub updated_ms: Millis,
    /// What its replicas are doing.
    pub status: DeploymentStatus,
    /// How a new revision replaces the old one.
    #[serde(default)]
    pub strategy: UpdateStrategy,
    /// Where the latest rollout stands.
    #[serde(default)]
    pub rollout: Rollout,
    /// Scaling by load, when set: the scheduler then owns `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

/// The lifecycle of a replica. Transitions are explicit: see [`ReplicaState::can_become`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Waiting for a node with room for it.
    Pending,
    /// Placed on a node, which has not reported it yet.
    Assigned,
    /// The node is preparing it (fetching, compiling, instantiating).
    Starting,
    /// Its process runs.
    Running,
    /// Running and passing its readiness check.
    Ready,
    /// Ended with exit status 0.
    Exited,
    /// Ended with a non-zero status, a trap, or could not start.
    Failed,
    /// Its node went down; replaced elsewhere.
    Lost,
    /// Stopped on purpose (scale down, delete, replaced).
    Stopped,
}

/// A transition the replica state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The state it was in.
    pub from: ReplicaState,
    /// The state asked for.
    pub to: ReplicaState,
}

impl ReplicaState {
    /// Every state, in lifecycle order.
    pub const ALL: [ReplicaState; 9] = [
        ReplicaState::Pending,
        ReplicaState::Assigned,
        ReplicaState::Starting,
        ReplicaState::Running,
        ReplicaState::Ready,
        ReplicaState::Exited,
        ReplicaState::Failed,
        ReplicaState::Lost,
        ReplicaState::Stopped,
    ];

    /// Whether the replica is gone for good (it no longer counts toward its deployment).
    pub fn is_terminal(self) -> bool {
        matches!(self, ReplicaState::Lost | ReplicaState::Stopped)
    }

    /// Whether the replica holds resources on a node.
    pub fn is_placed(self) -> bool {
        !matches!(self, ReplicaState::Pending) && !self.is_terminal()
    }

    /// Whether a replica in this state may move to `next`. Staying in the same state
    /// is always allowed (a repeated report).
    pub fn can_become(self, next: ReplicaState) -> bool {
        use ReplicaState::*;
        if self == next {
            return true;
        }
        match self {
            Pending => matches!(next, Assigned | Stopped),
            Assigned => matches!(next, Starting | Running | Ready | Exited | Failed | Lost | Stopped),
            Starting => matches!(next, Running | Ready | Exited | Failed | Lost | Stopped),
            // A restart between two heartbeats shows as Running → Starting.
            Running | Ready => matches!(next, Running | Ready | Starting | Exited | Failed | Lost | Stopped),
            Exited | Failed => matches!(next, Starting | Running | Ready | Exited | Failed | Lost | Stopped),
            Lost => matches!(next, Stopped),
            Stopped => false,
        }
    }

    /// Moves to `next`, or says why it cannot.
    pub fn become_(self, next: ReplicaState) -> Result<ReplicaState, IllegalTransition> {
        if self.can_become(next) { Ok(next) } else { Err(IllegalTransition { from: self, to: next }) }
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// One copy of one revision of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Replica {
    /// Unique id, `<deployment>-<suffix>`.
    pub id: String,
    /// The deployment it belongs to.
    pub deployment: String,
    /// The revision of the deployment it runs.
    pub revision: u64,
    /// The node it is assigned to, if any.
    pub node: Option<String>,
    /// Its state.
    pub state: ReplicaState,
    /// Bumped on every (re)assignment; a node never runs an older generation.
    pub generation: u64,
    /// Restarts on its node so far.
    pub restarts: u32,
    /// Why it is in its state: why pending, why it failed.
    pub reason: Option<String>,
    /// Exit status of its last run, if it ended.
    pub exit_code: Option<i32>,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
    /// When its state last changed.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub updated_ms: Millis,
}

/// Something that happened in the cluster, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Increasing id.
    pub id: u64,
    /// When it happened.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub time_ms: Millis,
    /// The object it is about: `deployment/NAME`, `node/NAME`, `replica/ID`.
    pub object: String,
    /// A short CamelCase reason, such as `Scheduled` or `NodeDown`.
    pub reason: String,
    /// A sentence for humans.
    pub message: String,
}

// ---- wire messages ----

/// Error body of every failed API call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// One line that says what was wrong and what to do.
    pub error: String,
}

/// `PUT /v1/deployments/{name}`: create or update a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplyRequest {
    /// Desired number of replicas; when absent, a new deployment gets 1 and an
    /// existing one keeps the count it has (an autoscaled one the autoscaler's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000))]
    pub replicas: Option<u32>,
    /// The template.
    pub spec: WorkloadSpec,
    /// How a new revision replaces the old one; when absent, the deployment keeps
    /// the strategy it has (the default one for a new deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<UpdateStrategy>,
    /// Scaling by load; when absent, the deployment does not scale by load (an
    /// apply without it turns autoscaling off, keeping the current count unless
    /// `replicas` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ApplyOutcome {
    /// The deployment did not exist.
    Created,
    /// The spec or the count changed.
    Updated,
    /// Nothing changed.
    Unchanged,
}

/// Answer to [`ApplyRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplyResponse {
    /// What happened.
    pub outcome: ApplyOutcome,
    /// The deployment as it is now.
    pub deployment: Deployment,
    /// Things the user should know, such as a request no node is large enough for.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `POST /v1/deployments/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScaleRequest {
    /// The new replica count.
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000))]
    pub replicas: u32,
}

/// Answer to a blob upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobInfo {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// `POST /v1/nodes/register`, authenticated with the join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The node's name; re-registering with the same name is the same node.
    pub name: String,
    /// Base URL of the node's own API.
    pub address: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: Resources,
    /// What it can run.
    pub runtimes: Vec<Runtime>,
    /// Base URL of its ingress, where other nodes send requests for its HTTP replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
}

/// Answer to [`RegisterRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The node as registered.
    pub node: Node,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// The node's own credential, given when it registered with the join token:
    /// every later call of the node carries it instead (kept by the node, 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A replica as its node reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaStatus {
    /// The replica.
    pub id: String,
    /// The generation the node runs.
    pub generation: u64,
    /// One of starting, running, exited, failed.
    pub state: ReplicaState,
    /// Restarts so far.
    pub restarts: u32,
    /// Why it ended or failed.
    pub reason: Option<String>,
    /// Exit status of its last run.
    pub exit_code: Option<i32>,
    /// CPU time the replica's guest has used so far, over all its runs, in seconds.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Memory the replica holds now, in bytes (a Wasm guest's linear memories).
    #[serde(default)]
    pub memory_bytes: u64,
    /// HTTP requests the ingress has passed to the replica so far.
    #[serde(default)]
    pub requests: u64,
}

/// `POST /v1/nodes/{name}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    /// What the node offers now.
    pub capacity: Resources,
    /// Every replica the node runs or has run and not yet been told to forget;
    /// with `delta`, only those whose status or usage changed since the node's
    /// last answered heartbeat.
    pub replicas: Vec<ReplicaStatus>,
    /// `replicas` holds only what changed (a delta heartbeat; nodes send a full
    /// one now and then). A delta with no replicas is a sign of life only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

/// One replica a node must run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    /// The replica id.
    pub replica: String,
    /// Its deployment.
    pub deployment: String,
    /// The deployment revision.
    pub revision: u64,
    /// The assignment's generation.
    pub generation: u64,
    /// What to run.
    pub spec: WorkloadSpec,
    /// Values of the secrets `spec.secrets` names: secret → key → value. Sent only
    /// to the node the replica is assigned to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// `GET /v1/nodes/{name}/assignments?index=I&wait=MS`: the full desired set of a
/// node's replicas, answered when its index passes `I` or after `wait`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignments {
    /// Pass it back to block until the set changes.
    pub index: u64,
    /// Every replica the node must run; anything else it must stop.
    pub replicas: Vec<Assignment>,
    /// Volumes whose data the node must delete (purged by the user).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purge_volumes: Vec<String>,
    /// How long the node may go without reaching the scheduler before it stops
    /// its replicas with a [`WorkloadSpec::volume_lease`] (0: no lease given).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_ms: u64,
    /// `replicas` holds only the assignments new or changed since the index the
    /// node asked with, and `removed` those it must stop: an answer to a node
    /// that asked for changes (`delta=true`) and whose index the scheduler's log
    /// still reaches. Otherwise the whole set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// With `delta`: replicas taken off the node since its index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One ready HTTP replica, and where to send requests for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoint {
    /// The replica id.
    pub replica: String,
    /// The node it runs on.
    pub node: String,
    /// Base URL of that node's ingress.
    pub ingress: String,
}

/// `GET /v1/endpoints?index=I&wait=MS`: every deployment with its ready HTTP
/// replicas, answered as soon as the table's index differs from `I` or after `wait`.
/// A deployment with no ready replica is listed with none (it exists: 503, not 404).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoints {
    /// Pass it back to block until the table changes.
    pub index: u64,
    /// Deployment name → its ready endpoints.
    pub deployments: BTreeMap<String, Vec<Endpoint>>,
}

/// An OCI image imported into the scheduler's blob store, by name and tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Image {
    /// Repository name, such as `busybox` or `example.com/team/app`.
    pub name: String,
    /// Tag, such as `latest`.
    pub tag: String,
    /// Digest of the image manifest (`sha256:<hex>`).
    pub digest: String,
    /// Bytes of the manifest, config and layers as stored (layers compressed).
    pub size: u64,
    /// When this name:tag was last pointed at `digest`.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
}

/// `POST /v1/images`: point `name:tag` at a manifest whose blobs (the manifest,
/// its config and every layer) are already uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageRequest {
    /// Repository name.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// Digest of the OCI image manifest blob.
    pub digest: String,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TokenRole {
    /// Every call.
    Admin,
    /// Only reads (GET and HEAD).
    ReadOnly,
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRole::Admin => "admin",
            TokenRole::ReadOnly => "read-only",
        })
    }
}

/// An API token as listed (`GET /v1/tokens`); the token itself is never shown again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// Its name, unique.
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// When it was made.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
}

/// `POST /v1/tokens`: make a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRequest {
    /// Its name; the server picks one when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: Option<String>,
    /// What it may do.
    pub role: TokenRole,
}

/// The answer to `POST /v1/tokens`: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// The token as listed.
    pub info: TokenInfo,
    /// The bearer token itself.
    pub token: String,
}

/// One server of the control plane (`GET /v1/servers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerInfo {
    /// Its name (`--name`, else host name and port).
    pub name: String,
    /// The URL other servers, nodes and clients reach it at.
    pub url: String,
    /// When it started.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub started_ms: Millis,
    /// Whether it leads: runs placement and the controllers.
    #[serde(default)]
    pub leader: bool,
}

/// One member of the store behind the servers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreMember {
    /// Where it was asked (`host:port`; the data dir for SQLite).
    pub endpoint: String,
    /// Whether it answered without errors.
    pub healthy: bool,
    /// Whether it is the store's own leader.
    #[serde(default)]
    pub leader: bool,
    /// Its version, when it answered.
    #[serde(default)]
    pub version: String,
    /// Why not, when it is not healthy.
    #[serde(default)]
    pub error: String,
}

/// `GET /v1/servers`: the control plane's servers, its leader and its store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServersInfo {
    /// The store: `sqlite:<path>` or `etcd://...`.
    pub store: String,
    /// The leading server's name, if one leads.
    pub leader: Option<String>,
    /// Every live server.
    pub servers: Vec<ServerInfo>,
    /// The store's members and their health.
    pub members: Vec<StoreMember>,
}
