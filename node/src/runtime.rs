//! The one place where runtimes differ. A supervisor has its replica's runtime
//! prepare the workload once (fetch, compile or unpack) and then run it as many
//! times as the restart policy says; it never knows whether it runs a Wasm
//! command, an HTTP component or a container.
//!
//! A run ends with an [`Outcome`] however the workload ends: a command or a
//! container exits, and a replica that serves (an HTTP component, a container
//! with probes) ends its run when its liveness or startup probe fails. Only the
//! supervisor decides what happens next and counts it.
//!
//! This module is a leaf of the node's module graph: the runtimes implement the
//! trait with its types from here, and nothing here names them.

use crate::logs::LogSink;
use crate::metrics::Usage;
use crate::routes::IngressLink;
use crate::state::Status;
use skiff_api::quantity::format_memory;
use skiff_api::{Assignment, Client, Probes, Workload};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, as trait methods returning futures need them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What runs replicas of one kind of workload.
pub trait Runtime: Send + Sync {
    /// The workload made ready to run, once per assignment.
    type Prepared: Send + Sync;

    /// Fetches what `a` needs from the scheduler through `client` and makes it
    /// ready to run. [`ArtifactError::Transient`] is retried by the caller.
    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<Self::Prepared, ArtifactError>>;

    /// Runs the prepared workload once, to its end. Dropping the future stops it
    /// and releases whatever the run held.
    fn run(self: Arc<Self>, prepared: &Self::Prepared, spec: RunSpec, log: Arc<LogSink>)
    -> BoxFuture<'static, Outcome>;
}

/// Why an artifact could not be made ready to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    /// Worth retrying: the blob could not be fetched or stored.
    #[error("{0}")]
    Transient(String),
    /// Never going to work for this digest: not Wasm, does not compile or link.
    #[error("{0}")]
    Invalid(String),
}

/// The blob digest of a Wasm workload (commands and HTTP components alike).
pub fn wasm_digest(a: &Assignment) -> Result<&str, ArtifactError> {
    match &a.spec.workload {
        Workload::Wasm(digest) => Ok(digest),
        other => Err(ArtifactError::Invalid(format!("{other} is not a wasm workload"))),
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The workload exited with this status (0 when `_start`/`run` returned normally).
    Exited(i32),
    /// The workload tried to grow a memory past its limit (in bytes).
    MemoryExceeded(u64),
    /// The guest trapped, could not be started, or failed a liveness or startup
    /// probe (the message).
    Failed(String),
}

impl Outcome {
    /// Whether the run counts as a success (for the on-failure policy).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// The exit status, if the workload exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited(c) => Some(*c),
            _ => None,
        }
    }

    /// A short explanation: `exited with status 3`, `memory limit of 64Mi exceeded`.
    pub fn reason(&self) -> String {
        match self {
            Outcome::Exited(c) => format!("exited with status {c}"),
            Outcome::MemoryExceeded(limit) => {
                format!("memory limit of {} exceeded", format_memory(*limit))
            }
            Outcome::Failed(msg) => msg.clone(),
        }
    }

    /// The `reason` label of `skiff_node_replica_exits_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Outcome::Exited(0) => "success",
            Outcome::Exited(_) => "error",
            Outcome::MemoryExceeded(_) => "memory_limit",
            Outcome::Failed(_) => "trap",
        }
    }
}

/// What a run sees of its replica.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Deployment name (also `argv[0]`).
    pub deployment: String,
    /// Replica id.
    pub replica: String,
    /// Deployment revision.
    pub revision: u64,
    /// Declared environment, with the secrets named as env.
    pub env: BTreeMap<String, String>,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Memory limit per linear memory (Wasm) or of the container, in bytes; 0
    /// means none.
    pub memory_limit: u64,
    /// Where the workload's cpu time, memory and requests are counted.
    pub usage: Arc<Usage>,
    /// Host directories the workload sees, and nothing else of the filesystem.
    pub preopens: Vec<Preopen>,
    /// Health checks of a replica that serves.
    pub probes: Probes,
    /// The port a container serves HTTP on, routed by the ingress.
    pub http_port: Option<u16>,
    /// Hosts an HTTP component may call.
    pub allowed_hosts: Vec<String>,
    /// The replica's status, where a run reports readiness.
    pub status: Status,
    /// The node's ingress, for a run that serves HTTP behind it.
    pub ingress: Option<Arc<IngressLink>>,
}

impl RunSpec {
    /// The spec of a run of `a`, env and preopens as given.
    pub fn of(a: &Assignment, env: BTreeMap<String, String>, preopens: Vec<Preopen>) -> RunSpec {
        RunSpec {
            deployment: a.deployment.clone(),
            replica: a.replica.clone(),
            revision: a.revision,
            env,
            args: a.spec.args.clone(),
            memory_limit: a.spec.resources.memory.0,
            usage: Arc::default(),
            preopens,
            probes: a.spec.probes.clone(),
            http_port: a.spec.http_port,
            allowed_hosts: a.spec.allowed_hosts.clone(),
            status: Status::default(),
            ingress: None,
        }
    }
}

/// A host directory a workload sees at `guest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the node.
    pub host: PathBuf,
    /// Where the workload sees it, an absolute path.
    pub guest: String,
    /// Whether the workload may write.
    pub writable: bool,
}
