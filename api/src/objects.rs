//! The objects of a skiff cluster as the API shows them: nodes, deployments and
//! their rollouts, replicas and their state machine, volumes, secrets, images,
//! tokens, events and the servers of the control plane.

use crate::quantity::Memory;
use crate::spec::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
    /// Cordoned (`skiff node cordon`): it takes no new replicas; what it runs
    /// keeps running. Set by a drain too; `skiff node uncordon` clears it.
    #[serde(default)]
    pub unschedulable: bool,
    /// The drain under way or finished (`skiff node drain`), until uncordoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<NodeDrain>,
}

/// A node's drain: the scheduler moves its replicas elsewhere, each as its
/// deployment's rollout strategy allows (the replacement first, then the old
/// replica), until the node holds nothing but what cannot move.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeDrain {
    /// When it started.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub started_ms: Millis,
    /// Also stop the replicas that cannot move (`--force`).
    #[serde(default)]
    pub force: bool,
    /// The node holds no replica any more.
    #[serde(default)]
    pub done: bool,
    /// Replicas still on the node.
    #[serde(default)]
    pub remaining: u32,
    /// Replicas that cannot move, one line each: `REPLICA (deployment D): why`.
    /// They keep running unless the drain is forced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stuck: Vec<String>,
    /// Where it stands, in one line.
    #[serde(default)]
    pub message: String,
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
    /// A canary rollout's step, weight and figures (with `strategy.canary`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// Where a canary stands. Stored with the rollout, so a restarted or newly
/// elected scheduler resumes the same step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CanaryStatus {
    /// The step under way, from 0; `steps.len()` once promoted.
    pub step: u32,
    /// Percent of requests the ingresses send to the canary now (0 until its
    /// replicas for the step are ready, 100 once promoted).
    pub weight: u32,
    /// When the step's weight took effect (0: not yet).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub step_started_ms: Millis,
    /// Analysis intervals judged and passed in this step.
    pub passed: u32,
    /// Promoted (by the last step passing or `skiff rollout promote`): the
    /// canary scales to the full count, then takes 100% and the old go.
    pub promoted: bool,
    /// Aborted: why, with the figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The stable revision's figures over the last judged interval.
    pub stable: RevisionFigures,
    /// The canary's figures over the last judged interval.
    pub canary: RevisionFigures,
}

/// What the ingresses measured of one revision over an interval.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RevisionFigures {
    /// The revision.
    pub revision: u64,
    /// Requests answered.
    pub requests: u64,
    /// Of them, answered with a 5xx status.
    pub errors: u64,
    /// 99th percentile latency to the response head, in milliseconds (the
    /// upper bound of its histogram bucket); 0 with no request.
    pub p99_ms: u64,
}

impl RevisionFigures {
    /// The share of 5xx answers (0 with no request).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }
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

/// A named set of identical replicas that the scheduler keeps at its count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// Unique name (a DNS label) within its namespace.
    pub name: String,
    /// Its namespace (#20; `default` for everything made before namespaces).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
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
    /// Going to zero replicas when idle, when set (an HTTP deployment only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZero>,
}

impl Deployment {
    /// Seconds without a request after which the deployment goes to zero
    /// replicas: `scale_to_zero.idle_seconds`, or by default
    /// [`ScaleToZero::DEFAULT_IDLE_SECONDS`] with `autoscale: {min: 0}`; `None`
    /// when it never does.
    pub fn idle_seconds(&self) -> Option<u32> {
        match (self.scale_to_zero, self.autoscale) {
            (Some(z), _) => Some(z.idle_seconds),
            (None, Some(a)) if a.min == 0 => Some(ScaleToZero::DEFAULT_IDLE_SECONDS),
            _ => None,
        }
    }

    /// Whether it is scaled to zero: it may be, and has no replica asked for.
    /// Its name stays routable; the next request starts a replica.
    pub fn scaled_to_zero(&self) -> bool {
        self.replicas == 0 && self.idle_seconds().is_some()
    }
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

/// A private registry's credential as the API shows it (`skiff registry ls`):
/// the host and user, never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registry {
    /// Registry host as image references name it (`registry.example.com`,
    /// `localhost:5000`).
    pub host: String,
    /// The user the nodes pull as.
    pub username: String,
    /// When the credential was first stored.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
    /// When it was last replaced.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub updated_ms: Millis,
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

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TokenRole {
    /// Every call (in its namespace, for a token scoped to one: also its
    /// tokens and quota).
    Admin,
    /// Only reads (GET and HEAD): objects, logs, events.
    #[serde(alias = "read")]
    ReadOnly,
    /// Reads, and writes deployments, scales, rolls out and manages secrets
    /// and volumes (#20).
    Deploy,
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRole::Admin => "admin",
            TokenRole::ReadOnly => "read-only",
            TokenRole::Deploy => "deploy",
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
    /// The namespace it may act in, or `*`: every one, and what is not in a
    /// namespace (nodes, images, namespaces, servers) (#20).
    #[serde(default = "every_namespace")]
    pub namespace: String,
    /// When it was made.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
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

/// `*`: a token that is not scoped to a namespace.
pub fn every_namespace() -> String {
    "*".to_string()
}
