//! The working set: every node, deployment and live replica held in memory, with
//! the indexes placement needs (allocation per node, replicas of a deployment per
//! node, the pending queue), kept in step with the store.
//!
//! Invariant: every change goes through [`State::transact`], which writes it to the
//! store in one transaction; if the commit fails the working set is reloaded from
//! the store, so memory never holds what the disk does not. A replica's indexes are
//! changed only by [`Mem::update`], which removes its old contribution and adds the
//! new one, so allocations can never drift from the replicas that make them.
//!
//! One file per concern: `transaction` (the store-first commit), `indexes` (what a
//! replica adds to the working set's counts, and the one place that changes a
//! replica), `nodes` (registration, heartbeats, liveness), `deployments`
//! (apply, scale, reconcile and rollouts), `volumes`, `secrets`, `assignments`
//! (a node's desired set and its change log) and `scheduling` (placement passes).

use crate::placement::{self, Scoring, Snapshot};
use crate::rollout;
use crate::secrets::{Keyring, Sealed};
use crate::store::{Store, StoreError, Tx};
use skiff_api::manifest::{MAX_REPLICAS, validate_name};
use skiff_api::quantity::{format_cpu, format_memory};
use skiff_api::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod artifacts;
mod assignments;
pub(crate) mod canary;
pub(crate) mod cron;
mod deployments;
mod drain;
mod indexes;
pub(crate) mod jobs;
pub(crate) mod namespaces;
mod nodes;
mod registries;
mod scheduling;
mod secrets;
#[cfg(test)]
pub(crate) mod tests;
mod transaction;
mod volumes;

use assignments::NodeChanges;
pub use drain::REBALANCE_PER_MINUTE;
use indexes::{DeploymentEntry, serves};
pub use nodes::Liveness;
use nodes::NodeLive;
use transaction::Effects;

/// What the controllers are told about time and policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub scoring: Scoring,
    pub node_grace: Duration,
    /// How often nodes heartbeat in a small cluster.
    pub heartbeat_interval: Duration,
    /// Most heartbeats per second the scheduler asks for: past this many nodes
    /// the interval (and with it the grace) grows with the cluster, as Nomad's
    /// `max_heartbeats_per_second` does.
    pub max_heartbeats_per_second: u32,
    /// Most replicas rebalancing moves a minute in the whole cluster.
    pub rebalance_per_minute: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            scoring: Scoring::BinPack,
            node_grace: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            max_heartbeats_per_second: 5000,
            rebalance_per_minute: drain::REBALANCE_PER_MINUTE,
        }
    }
}

impl Policy {
    /// The heartbeat interval for a cluster of `nodes`.
    pub fn heartbeat_interval(&self, nodes: usize) -> Duration {
        let rate = f64::from(self.max_heartbeats_per_second.max(1));
        self.heartbeat_interval.max(Duration::from_secs_f64(nodes as f64 / rate))
    }

    /// How long a node of a cluster of `nodes` may stay silent before it is
    /// declared down: the configured grace, grown in step with the interval.
    pub fn node_grace(&self, nodes: usize) -> Duration {
        let base = self.heartbeat_interval.as_secs_f64();
        if base <= 0.0 {
            return self.node_grace;
        }
        self.node_grace.mul_f64((self.heartbeat_interval(nodes).as_secs_f64() / base).max(1.0))
    }
}

/// The in-memory working set.
#[derive(Default)]
pub struct Mem {
    nodes: Vec<Node>,
    node_idx: HashMap<String, usize>,
    deployments: BTreeMap<String, DeploymentEntry>,
    revisions: HashMap<(String, u64), WorkloadSpec>,
    replicas: HashMap<String, Replica>,
    by_deployment: HashMap<String, BTreeSet<String>>,
    by_node: HashMap<String, BTreeSet<String>>,
    /// Node ports held by the replicas placed on each node (for placement).
    ports_in_use: HashMap<String, BTreeMap<skiff_api::HostPort, u32>>,
    /// Pending replicas, oldest first.
    pending: BTreeSet<(Millis, String)>,
    next_generation: u64,
    /// Increases whenever some node's desired set changes.
    index: u64,
    /// Per node, which replicas changed at which index: what an answer of
    /// only the changes since a node's index holds (`Mem::assignment_changes`).
    /// In memory only: a reloaded working set answers with whole sets.
    changes: HashMap<String, NodeChanges>,
    /// What the transaction under way did besides its writes: made anew by
    /// each [`State::transact`] and consumed by it.
    fx: Effects,
    /// Whether placement should run again (capacity or demand changed).
    pub sched_dirty: bool,
    /// Deployments in a rollout whose replicas changed state: the controllers
    /// reconcile them at their next pass rather than at the 2 s full pass, so a
    /// rollout moves on as soon as a new replica runs. Also the owners
    /// (`job:NAME`) of job runs that ended: they only wake the controllers,
    /// whose every pass reconciles jobs.
    pub reconcile_due: BTreeSet<String>,
    /// Secrets, sealed; opened only to hand values to the node that needs them.
    secrets: BTreeMap<String, (Secret, Sealed)>,
    /// Named volumes (with `deployments` left empty: computed when listed).
    volumes: BTreeMap<String, Volume>,
    /// Volumes deleted by the user whose node has still to delete the data.
    purging: BTreeSet<String>,
    /// Jobs (`jobs.rs`) and crons (`cron.rs`), by name.
    jobs: BTreeMap<String, jobs::JobEntry>,
    crons: BTreeMap<String, cron::CronEntry>,
    /// Replicas leaving their node (drains, rebalancing) and the rebalancer's memory.
    moves: drain::Moves,
    /// Deployments that scale to zero and have replicas now: the only ones
    /// the idle check looks at (`autoscale::pass`), so deployments at zero
    /// cost it nothing however many there are.
    awake: BTreeSet<String>,
    /// Deployments a rollout started a canary for since the working set was
    /// loaded (a superset of those with one under way: `canaries` checks
    /// each), so that the endpoints table's splits, written with every change
    /// of it, do not walk 100,000 deployments (23% of the scheduler's CPU
    /// while cold requests arrived one after another at that density).
    canaried: BTreeSet<String>,
    /// Namespaces (#20, `namespaces.rs`), by name; `default` always.
    namespaces: BTreeMap<String, namespaces::Stored>,
}

/// The store and the working set behind one lock.
pub struct State {
    store: Store,
    keyring: Keyring,
    mem: Mem,
    live: HashMap<String, NodeLive>,
    liveness: std::sync::Arc<Liveness>,
    pub policy: Policy,
    /// The endpoints table's index; starts at the clock so that a restarted
    /// scheduler never answers a node with the index it already holds.
    endpoints: watch::Sender<u64>,
    /// Which deployments each recent index of the endpoints table changed.
    endpoint_changes: crate::endpoints::Changes,
    /// Most deployments, secrets and volumes each (`--max-objects`).
    pub max_objects: usize,
    /// Notified when the working set may hold what the store refused (it could
    /// not be reloaded after a failed transaction): a leader on etcd steps down,
    /// and whoever leads next loads the store afresh.
    pub resign: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// Default of [`State::max_objects`]: room for 100,000 deployments that
/// scale to zero (a deployment at zero is a row and a working-set entry) and
/// as many more.
pub const MAX_OBJECTS: usize = 200_000;

/// Why an operation on the working set failed. The API maps each kind to its
/// HTTP status in one place (`crate::error`); the message is the user's line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such object (the message says how to list them).
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or is in use.
    #[error("{0}")]
    Conflict(String),
    /// The cluster holds its limit of objects of `kind` (`--max-objects`).
    #[error("the cluster holds its limit of {max} {kind}; delete some first (the server's --max-objects)")]
    TooMany { kind: &'static str, max: usize },
    /// The request is wrong (the message says how).
    #[error("{0}")]
    Invalid(String),
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scheduler failed (a broken invariant, a key that does not open).
    #[error("{0}")]
    Internal(String),
}

/// One event for a deployment's placements in a pass (`what`: "placed"), or
/// for its replicas reported running by a batch of heartbeats ("running"): a
/// row per replica cost as much as the placement itself at scale.
pub(super) fn replicas_message(list: &[(String, String)], what: &str) -> String {
    const SHOWN: usize = 10;
    if let [(id, node)] = list {
        return format!("replica {id} {what} on {node}");
    }
    let shown: Vec<String> = list.iter().take(SHOWN).map(|(id, node)| format!("{id} on {node}")).collect();
    let rest = list.len().saturating_sub(SHOWN);
    let more = if rest > 0 { format!(" and {rest} more") } else { String::new() };
    format!("{} replicas {what}: {}{more}", list.len(), shown.join(", "))
}

impl State {
    /// Loads the working set from `store`.
    pub fn load(store: Store, keyring: Keyring, policy: Policy) -> Result<State, StoreError> {
        let mem = Mem::load(&store)?;
        for (kind, key) in mem.stray_keys() {
            let path = format!("/v1/{kind}s/{}", key.replace('/', "%2F"));
            tracing::warn!(
                "{kind} {key:?} is stored under a key no listing shows and no quota counts (made before keys were checked); DELETE {path} with a cluster-wide admin token removes it"
            );
        }
        let now = Instant::now();
        // A restarted scheduler gives every node a full grace period before it
        // counts as down: the nodes kept running while it was away.
        let live = mem.nodes.iter().map(|n| (n.name.clone(), NodeLive { tx: watch::Sender::new(mem.index) })).collect();
        let liveness = std::sync::Arc::new(Liveness::default());
        for n in &mem.nodes {
            liveness.set(&n.name, now, 0, None);
        }
        let start = now_ms();
        Ok(State {
            store,
            keyring,
            mem,
            live,
            liveness,
            policy,
            endpoints: watch::Sender::new(start),
            endpoint_changes: crate::endpoints::Changes::new(start),
            max_objects: MAX_OBJECTS,
            resign: None,
        })
    }

    /// Puts `mem` in place of the working set (a follower's copy, rebuilt from
    /// the store's changes) and wakes what waits for a change.
    pub(crate) fn replace_mem(&mut self, mem: Mem) {
        self.update_copy(|m| *m = mem);
    }

    /// Changes a follower's copy of the working set in place (`f`) and wakes
    /// what waits for a change.
    pub(crate) fn update_copy(&mut self, f: impl FnOnce(&mut Mem)) {
        f(&mut self.mem);
        self.endpoints_changed(None);
        crate::metrics::changed();
    }

    /// The endpoints table changed: the rows of deployments `names` only, or
    /// any row (`None`). Bumps its index and logs the change for the deltas.
    pub(super) fn endpoints_changed(&mut self, names: Option<BTreeSet<String>>) {
        self.endpoints.send_modify(|i| *i += 1);
        let index = *self.endpoints.borrow();
        self.endpoint_changes.record(index, names);
    }

    /// The deployments whose endpoints rows changed after `index` up to the
    /// table's index now, for node `node`; `None` when only the whole table can
    /// say it (the log does not reach back that far, or this scheduler has not
    /// yet answered `node` a whole table: its index may be another's).
    pub fn endpoint_changes(&self, node: &str, index: u64) -> Option<BTreeSet<String>> {
        self.endpoint_changes.since(node, index, *self.endpoints.borrow())
    }

    /// Node `node` got the whole table from this scheduler: deltas may follow.
    pub fn endpoints_whole_sent(&mut self, node: &str) {
        self.endpoint_changes.whole_sent(node);
    }

    pub fn mem(&self) -> &Mem {
        &self.mem
    }

    /// A receiver that changes when the endpoints table may have.
    pub fn endpoints_watch(&self) -> watch::Receiver<u64> {
        self.endpoints.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The nodes' last heartbeats, for the heartbeat route to record without the lock.
    pub fn liveness(&self) -> std::sync::Arc<Liveness> {
        self.liveness.clone()
    }
}

impl Mem {
    pub(super) fn load(store: &Store) -> Result<Mem, StoreError> {
        Ok(Mem::from_loaded(store.load()?))
    }

    /// Applies replicas changed in the store, `(id, the replica now or None:
    /// deleted)`, as a follower's copy receives them: the indexes move with them.
    pub(crate) fn apply_replicas(&mut self, changes: Vec<(String, Option<Replica>)>) {
        for (id, now) in changes {
            if let Some(old) = self.replicas.remove(&id)
                && !old.state.is_terminal()
            {
                self.unindex_replica(&old);
            }
            if let Some(r) = now {
                self.next_generation = self.next_generation.max(r.generation + 1);
                self.index_replica(&r);
                self.replicas.insert(id, r);
            }
        }
    }

    /// The working set of `loaded` (a follower's copy is rebuilt this way).
    pub(crate) fn from_loaded(loaded: crate::store::Loaded) -> Mem {
        let mut mem = Mem::default();
        for (k, v) in &loaded.meta {
            match k.as_str() {
                "index" => mem.index = v.parse().unwrap_or(0),
                "next_generation" => mem.next_generation = v.parse().unwrap_or(0),
                _ => mem.load_namespace(k, v),
            }
        }
        for mut n in loaded.nodes {
            n.allocated = Resources::default();
            n.replicas = 0;
            n.last_heartbeat_ms = 0;
            mem.node_idx.insert(n.name.clone(), mem.nodes.len());
            mem.nodes.push(n);
        }
        for (d, rev, spec) in loaded.revisions {
            mem.revisions.insert((d, rev), spec);
        }
        for d in loaded.deployments {
            let name = d.name.clone();
            if d.rollout.canary.is_some() {
                mem.canaried.insert(name.clone());
            }
            mem.deployments.insert(name.clone(), DeploymentEntry::new(d));
            mem.note_awake(&name);
        }
        for (v, purge) in loaded.volumes {
            if purge {
                mem.purging.insert(v.name.clone());
            }
            mem.volumes.insert(v.name.clone(), v);
        }
        for (secret, sealed) in loaded.secrets {
            mem.secrets.insert(secret.name.clone(), (secret, sealed));
        }
        // Before the replicas: a run's indexes need its job's template.
        mem.load_jobs(loaded.jobs, loaded.runs);
        mem.load_crons(loaded.crons);
        for r in loaded.replicas {
            mem.next_generation = mem.next_generation.max(r.generation + 1);
            mem.index_replica(&r);
            mem.replicas.insert(r.id.clone(), r);
        }
        mem.sched_dirty = true;
        mem
    }

    /// Every node, in a stable order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.node_idx.get(name).map(|&i| &self.nodes[i])
    }

    /// Live replicas of a deployment.
    pub fn replicas_of(&self, deployment: &str) -> impl Iterator<Item = &Replica> {
        self.by_deployment.get(deployment).into_iter().flatten().filter_map(|id| self.replicas.get(id))
    }

    /// Live replicas assigned to a node.
    pub fn replicas_on(&self, node: &str) -> impl Iterator<Item = &Replica> {
        self.by_node.get(node).into_iter().flatten().filter_map(|id| self.replicas.get(id))
    }

    /// Live replica `id`.
    pub fn replica(&self, id: &str) -> Option<&Replica> {
        self.replicas.get(id)
    }

    /// The spec of `deployment`'s revision `revision`.
    pub fn revision_spec(&self, deployment: &str, revision: u64) -> Option<&WorkloadSpec> {
        self.revisions.get(&(deployment.to_string(), revision))
    }

    pub fn all_replicas(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.values()
    }

    pub fn deployment_names(&self) -> impl Iterator<Item = &String> {
        self.deployments.keys()
    }

    /// Deployment `name` with its status counted.
    /// Deployments that scale by load (`autoscale.rs`).
    pub fn autoscaled(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values().map(|e| &e.d).filter(|d| d.autoscale.is_some())
    }
}
