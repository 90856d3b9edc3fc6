//! The request and answer bodies of the API that are not objects themselves:
//! applies, scaling, registration, heartbeats, assignments, the endpoints table,
//! secrets, images and tokens.

use crate::objects::*;
use crate::spec::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// `POST /v1/deployments/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackRequest {
    /// The revision to go back to; the previous one when absent.
    #[serde(default)]
    pub to_revision: Option<u64>,
}

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
    /// Going to zero replicas when idle (HTTP deployments only); when absent, it
    /// does not (an apply without it turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZero>,
}

/// `POST /v1/nodes/{name}/drain`: cordon the node and move its replicas away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrainRequest {
    /// Also stop the replicas that cannot move (pinned to a volume on the node,
    /// or fitting no other node).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/rebalance`: rebalance once, as `rebalance: true` would.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebalanceRequest {
    /// Only this deployment (default: every deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// Answer to [`RebalanceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebalanceResponse {
    /// The deployments whose spread is worse than it could be, each with why
    /// (`spread: n1 held 4 of 6, n3 had 0`); their replicas move one at a time.
    pub uneven: BTreeMap<String, String>,
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
    /// Of them, those answered with a 5xx status (canary analysis).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors: u64,
    /// Their latency to the response head, as cumulative counts per bucket of
    /// [`LATENCY_BUCKETS_MS`] (then one for slower); empty before any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
}

/// Upper bounds, in milliseconds, of the latency histogram a node keeps per
/// HTTP replica (`ReplicaStatus.latency`); a last bucket counts the slower.
pub const LATENCY_BUCKETS_MS: [u64; 16] = [1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2500, 10000];

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
    /// The credential for the registry an image workload is pulled from
    /// (`skiff registry login`), when one is stored for its host. Sent only to
    /// the node the replica is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryCredential>,
}

/// A registry credential as a node receives it to pull an image.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryCredential {
    /// Registry host (`host[:port]`).
    pub host: String,
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

/// Never prints the password (assignments are logged at debug level).
impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `PUT /v1/registries/{host}`: store the credential the nodes pull from the
/// registry at `host` with (`skiff registry login`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryLogin {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin").field("username", &self.username).field("password", &"<redacted>").finish()
    }
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
    /// The deployment revision it runs (0 from a scheduler that did not say).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
}

/// How an ingress splits a deployment's requests between two revisions
/// during a canary or blue/green rollout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Split {
    /// The revision that served before the rollout.
    pub stable: u64,
    /// The revision being rolled out.
    pub canary: u64,
    /// Percent of requests to `canary` (0..=100); a request with header
    /// `x-skiff-revision: N` naming either goes to that one.
    pub weight: u32,
    /// Blue/green with a preview: `NAME--preview` reaches `canary` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preview: bool,
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
    /// Deployments that scale to zero: a request finding none of their
    /// replicas ready is held while one starts (`POST
    /// /v1/deployments/{name}/activate`) rather than answered 503.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub scale_to_zero: std::collections::BTreeSet<String>,
    /// Deployments whose requests are split between two revisions (canary).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub splits: BTreeMap<String, Split>,
    /// Set in an answer to `delta=true`: only what changed since the caller's
    /// index. `deployments` then holds the changed deployments (each with all
    /// its endpoints), `scale_to_zero` those of them that scale to zero,
    /// `removed` those deleted; `splits` is whole. Unset: the whole table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// In a delta: deployments deleted since the caller's index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Namespaces with `isolation: namespace` (#20): an ingress refuses (403)
    /// a call from a container of one of them to another namespace's
    /// deployment. Whole in a delta too, as `splits`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub isolated: std::collections::BTreeSet<String>,
}

impl Endpoints {
    /// Applies `delta` (an answer with `delta` set) to this table in place:
    /// O(changed deployments), however many the table holds.
    pub fn apply(&mut self, delta: Endpoints) {
        for name in delta.removed {
            self.deployments.remove(&name);
            self.scale_to_zero.remove(&name);
        }
        for (name, eps) in delta.deployments {
            if delta.scale_to_zero.contains(&name) {
                self.scale_to_zero.insert(name.clone());
            } else {
                self.scale_to_zero.remove(&name);
            }
            self.deployments.insert(name, eps);
        }
        self.splits = delta.splits;
        self.isolated = delta.isolated;
        self.index = delta.index;
    }
}

/// `POST /v1/deployments/{name}/activate`: an ingress holds a request for a
/// deployment with no ready replica and asks for one. The request's own line
/// goes into the `ScaledFromZero` event when this call scales it from zero.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ActivateRequest {
    /// The held request's method, such as `GET`.
    pub method: String,
    /// Its host (`NAME.skiff.local`, or the ingress's address for `/d/NAME/`).
    pub host: String,
    /// Its path, as the client sent it.
    pub path: String,
}

/// Answer to [`ActivateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActivateResponse {
    /// Whether this call scaled the deployment from zero (else it had replicas
    /// already: another request, or another node, started one).
    pub activated: bool,
    /// The deployment's replica count now.
    pub replicas: u32,
    /// Its ready endpoints: at once when it has some, else when one is ready or
    /// the call's `wait` ends (then empty).
    pub endpoints: Vec<Endpoint>,
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
    /// The namespace it may act in; absent or `*`: every one (#20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
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
