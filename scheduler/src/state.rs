//! The working set: every node, deployment and live replica held in memory, with
//! the indexes placement needs (allocation per node, replicas of a deployment per
//! node, the pending queue), kept in step with the store.
//!
//! Invariant: every change goes through [`State::transact`], which writes it to the
//! store in one transaction; if the commit fails the working set is reloaded from
//! the store, so memory never holds what the disk does not. A replica's indexes are
//! changed only by [`Mem::update`], which removes its old contribution and adds the
//! new one, so allocations can never drift from the replicas that make them.

use crate::error::ApiError;
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
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            scoring: Scoring::BinPack,
            node_grace: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            max_heartbeats_per_second: 5000,
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

struct DeploymentEntry {
    d: Deployment,
    /// Placed replicas of this deployment per node, by the node's index in
    /// `Mem::nodes` (for spreading).
    spread: crate::placement::Spread,
    /// Its live replicas counted by state, kept by `index_replica` and
    /// `unindex_replica`: a status read (`GET /v1/deployments`, polled by
    /// watchers) must not walk every replica under the lock.
    counts: Counts,
    /// Its live replicas per revision (same keeper): a deployment at its count
    /// with all of them on the current revision and no rollout under way has
    /// nothing to reconcile, without a walk of its replicas.
    by_revision: BTreeMap<u64, u32>,
}

impl DeploymentEntry {
    /// Deployment `d`, before any replica of it is indexed.
    fn new(d: Deployment) -> DeploymentEntry {
        DeploymentEntry { d, spread: Default::default(), counts: Counts::default(), by_revision: BTreeMap::new() }
    }
}

/// A deployment's live replicas by what its status reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    total: u32,
    pending: u32,
    running: u32,
    failed: u32,
    restarts: u32,
    /// Passing readiness (`Mem::serving`).
    serving: u32,
}

impl Counts {
    /// Adds (`add`) or takes away one replica `r`, `serving` or not.
    fn count(&mut self, r: &Replica, serving: bool, add: bool) {
        let step = |c: &mut u32, n: u32| *c = if add { c.saturating_add(n) } else { c.saturating_sub(n) };
        step(&mut self.total, 1);
        step(&mut self.restarts, r.restarts);
        match r.state {
            ReplicaState::Pending => step(&mut self.pending, 1),
            ReplicaState::Running | ReplicaState::Ready => step(&mut self.running, 1),
            ReplicaState::Failed | ReplicaState::Exited => step(&mut self.failed, 1),
            _ => {}
        }
        if serving {
            step(&mut self.serving, 1);
        }
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
    /// Nodes whose desired set changed in the current transaction.
    touched: BTreeSet<String>,
    /// Replicas placed on or taken off a node in the current transaction, as
    /// (node, replica): what `changes` logs.
    changed: Vec<(String, String)>,
    /// Nodes that must get their whole set again (registered, back from down).
    whole: BTreeSet<String>,
    /// Replicas reported running for the first time in this transaction, by
    /// deployment, as (replica, node): one `Started` event each deployment.
    started: BTreeMap<String, Vec<(String, String)>>,
    /// Per node, which replicas changed at which index: what an answer of
    /// only the changes since a node's index holds (`Mem::assignment_changes`).
    /// In memory only: a reloaded working set answers with whole sets.
    changes: HashMap<String, NodeChanges>,
    /// Whether this transaction changed anything in memory.
    mutated: bool,
    /// Whether placement should run again (capacity or demand changed).
    pub sched_dirty: bool,
    /// Deployments in a rollout whose replicas changed state: the controllers
    /// reconcile them at their next pass rather than at the 2 s full pass, so a
    /// rollout moves on as soon as a new replica runs.
    pub reconcile_due: BTreeSet<String>,
    /// Whether the endpoints table (ready replicas, deployments, node ingresses)
    /// may have changed in this transaction.
    pub endpoints_dirty: bool,
    /// Secrets, sealed; opened only to hand values to the node that needs them.
    secrets: BTreeMap<String, (Secret, Sealed)>,
    /// Named volumes (with `deployments` left empty: computed when listed).
    volumes: BTreeMap<String, Volume>,
    /// Volumes deleted by the user whose node has still to delete the data.
    purging: BTreeSet<String>,
}

struct NodeLive {
    tx: watch::Sender<u64>,
}

/// The recent changes of one node's desired set.
#[derive(Debug, Default)]
struct NodeChanges {
    /// Every change after this index is in `entries`.
    since: u64,
    /// (index, replica) in index order.
    entries: std::collections::VecDeque<(u64, String)>,
}

/// Most changes kept per node (about 50 bytes each); a node further behind
/// gets its whole set.
const MAX_NODE_CHANGES: usize = 512;

/// When each registered node last heartbeated. It lives outside the state lock:
/// a heartbeat counts the moment its request arrives, however long the
/// controllers hold the lock, so a busy scheduler never declares a live node
/// down for its own delay.
#[derive(Default)]
pub struct Liveness(std::sync::Mutex<HashMap<String, Beat>>);

/// A node's last heartbeat, and what the working set already holds of it.
#[derive(Debug, Clone, Copy)]
struct Beat {
    at: Instant,
    at_ms: Millis,
    /// The capacity the working set holds for the node while it is up; `None`
    /// when it is down (or not yet confirmed), so that its next heartbeat must
    /// reach the working set.
    applied: Option<Resources>,
}

impl Liveness {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Beat>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat of node `name` now; `None` if it is not registered.
    /// `Some(true)` when it needs nothing more: a sign of life only (`capacity`
    /// given: a delta heartbeat without statuses) whose capacity the working set
    /// already holds, of a node that is up.
    pub fn beat(&self, name: &str, capacity: Option<Resources>) -> Option<bool> {
        let mut map = self.map();
        let b = map.get_mut(name)?;
        b.at = Instant::now();
        b.at_ms = now_ms();
        Some(capacity.is_some() && b.applied == capacity)
    }

    /// Counts node `name` alive as of `at` (`at_ms`, 0 when it has not
    /// heartbeated yet).
    fn set(&self, name: &str, at: Instant, at_ms: Millis, applied: Option<Resources>) {
        self.map().insert(name.to_string(), Beat { at, at_ms, applied });
    }

    /// Records what the working set now holds of node `name` (`None`: down).
    fn applied(&self, name: &str, capacity: Option<Resources>) {
        if let Some(b) = self.map().get_mut(name) {
            b.applied = capacity;
        }
    }

    fn remove(&self, name: &str) {
        self.map().remove(name);
    }

    fn last(&self, name: &str) -> Option<Instant> {
        self.map().get(name).map(|b| b.at)
    }
}

/// Below this many live nodes every silent node is declared down; from it on,
/// more than half of them falling silent at once is taken for the scheduler's
/// own trouble (a stall, its network), as Kubernetes' node lifecycle controller
/// stops evicting when most of a large zone looks unhealthy.
const MASS_SILENCE_MIN_NODES: usize = 10;

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
    /// Most deployments, secrets and volumes each (`--max-objects`).
    pub max_objects: usize,
    /// Notified when the working set may hold what the store refused (it could
    /// not be reloaded after a failed transaction): a leader on etcd steps down,
    /// and whoever leads next loads the store afresh.
    pub resign: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// Default of [`State::max_objects`].
pub const MAX_OBJECTS: usize = 10_000;

/// The error for one object too many of `kind`.
fn too_many(kind: &str, max: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        format!("the cluster holds its limit of {max} {kind}; delete some first (the server's --max-objects)"),
    )
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::from(e)
}

impl State {
    /// Loads the working set from `store`.
    pub fn load(store: Store, keyring: Keyring, policy: Policy) -> Result<State, StoreError> {
        let mem = Mem::load(&store)?;
        let now = Instant::now();
        // A restarted scheduler gives every node a full grace period before it
        // counts as down: the nodes kept running while it was away.
        let live = mem.nodes.iter().map(|n| (n.name.clone(), NodeLive { tx: watch::Sender::new(mem.index) })).collect();
        let liveness = std::sync::Arc::new(Liveness::default());
        for n in &mem.nodes {
            liveness.set(&n.name, now, 0, None);
        }
        Ok(State {
            store,
            keyring,
            mem,
            live,
            liveness,
            policy,
            endpoints: watch::Sender::new(now_ms()),
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
        self.endpoints.send_modify(|i| *i += 1);
        crate::metrics::changed();
    }

    /// Runs `f` on the working set inside one store transaction; commits, then wakes
    /// the nodes whose desired set changed. On any failure the working set is
    /// reloaded from the store.
    pub fn transact<T>(&mut self, f: impl FnOnce(&mut Mem, &Tx) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let _timer = crate::metrics::METRICS.store_tx_seconds.start_timer();
        let tx = self.store.tx().map_err(store_err)?;
        self.mem.mutated = false;
        self.mem.touched.clear();
        self.mem.changed.clear();
        self.mem.whole.clear();
        self.mem.started.clear();
        let result = f(&mut self.mem, &tx).and_then(|v| {
            if !self.mem.touched.is_empty() {
                self.mem.index += 1;
                tx.set_meta("index", &self.mem.index.to_string()).map_err(store_err)?;
                // A failed commit reloads the working set, changes and all.
                self.mem.log_changes();
            }
            Ok(v)
        });
        let result = result.and_then(|v| self.store.commit(tx).map(|_| v).map_err(store_err));
        match result {
            Ok(v) => {
                let index = self.mem.index;
                for name in std::mem::take(&mut self.mem.touched) {
                    if let Some(l) = self.live.get(&name) {
                        l.tx.send_replace(index);
                    }
                }
                if std::mem::take(&mut self.mem.endpoints_dirty) {
                    self.endpoints.send_modify(|i| *i += 1);
                }
                if self.mem.mutated {
                    // The dashboard's live stream and `skiff events -f` wait on this.
                    crate::metrics::changed();
                }
                Ok(v)
            }
            Err(e) => {
                if self.mem.mutated {
                    // The working set must not keep what the store refused: try
                    // again for a while (an etcd member just lost, say).
                    let mut reloaded = false;
                    for attempt in 0..10 {
                        match Mem::load(&self.store) {
                            Ok(mem) => {
                                self.mem = mem;
                                reloaded = true;
                                break;
                            }
                            Err(le) => {
                                tracing::error!("reloading state after a failed transaction (try {attempt}): {le}");
                                std::thread::sleep(std::time::Duration::from_millis(200));
                            }
                        }
                    }
                    if !reloaded && let Some(resign) = &self.resign {
                        tracing::error!("the working set may differ from the store: stepping down");
                        resign.notify_one();
                    }
                    self.mem.sched_dirty = true;
                    self.endpoints.send_modify(|i| *i += 1);
                }
                self.mem.endpoints_dirty = false;
                Err(e)
            }
        }
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

    // ---- nodes ----

    pub fn register(&mut self, req: RegisterRequest) -> Result<RegisterResponse, ApiError> {
        validate_name(&req.name).map_err(ApiError::bad_request)?;
        let now = now_ms();
        let node = self.transact(|mem, tx| mem.register(tx, req, now))?;
        let index = self.mem.index;
        self.live.entry(node.name.clone()).or_insert_with(|| NodeLive { tx: watch::Sender::new(index) });
        self.liveness.set(&node.name, Instant::now(), now, Some(node.capacity));
        Ok(RegisterResponse { node, heartbeat_interval_ms: 0, credential: None })
    }

    /// One heartbeat on its own (the server batches them: [`State::heartbeats`]).
    #[cfg(test)]
    pub fn heartbeat(&mut self, name: &str, hb: Heartbeat) -> Result<(), ApiError> {
        self.liveness.beat(name, None);
        self.heartbeats(vec![(name.to_string(), hb)]).pop().unwrap_or(Ok(()))
    }

    /// Many heartbeats in one transaction (group commit, see `heartbeats.rs`), with
    /// one result per heartbeat. If the batch fails, each is applied again on its
    /// own, so that one bad report fails only its own node. Their arrival, the
    /// sign of life, was recorded in [`Liveness`] when each request came in, not
    /// when the lock let it through.
    pub fn heartbeats(&mut self, batch: Vec<(String, Heartbeat)>) -> Vec<Result<(), ApiError>> {
        let mut results: Vec<Result<(), ApiError>> = batch
            .iter()
            .map(|(name, _)| match self.live.contains_key(name) {
                true => Ok(()),
                false => Err(ApiError::not_found(format!("node {name:?} is not registered; register it first"))),
            })
            .collect();
        let now = now_ms();
        let together = self.transact(|mem, tx| {
            for ((name, hb), r) in batch.iter().zip(&results) {
                if r.is_ok() {
                    mem.heartbeat(tx, name, hb, now)?;
                }
            }
            mem.record_started(tx, now)
        });
        if together.is_err() {
            for ((name, hb), r) in batch.iter().zip(results.iter_mut()) {
                if r.is_ok() {
                    *r = self.transact(|mem, tx| {
                        mem.heartbeat(tx, name, hb, now)?;
                        mem.record_started(tx, now)
                    });
                }
            }
        }
        // From now on a sign of life alone from these nodes needs no lock.
        for ((name, _), r) in batch.iter().zip(&results) {
            if r.is_ok()
                && let Some(n) = self.mem.node(name)
            {
                self.liveness.applied(name, (n.state != NodeState::Down).then_some(n.capacity));
            }
        }
        results
    }

    /// Copies each node's last heartbeat time into the working set (node
    /// listings show it): a sign of life alone never takes the state lock.
    pub fn note_heartbeat_times(&mut self) {
        let map = self.liveness.map();
        for n in &mut self.mem.nodes {
            if let Some(b) = map.get(&n.name) {
                n.last_heartbeat_ms = n.last_heartbeat_ms.max(b.at_ms);
            }
        }
    }

    /// A receiver that changes when node `name`'s desired set does.
    pub fn watch(&self, name: &str) -> Result<watch::Receiver<u64>, ApiError> {
        self.live
            .get(name)
            .map(|l| l.tx.subscribe())
            .ok_or_else(|| ApiError::not_found(format!("node {name:?} is not registered; register it first")))
    }

    /// Marks nodes that missed their heartbeats as down and replaces their replicas.
    pub fn check_nodes(&mut self) -> Result<(), ApiError> {
        let grace = self.policy.node_grace(self.mem.nodes.len());
        let up = self.mem.nodes.iter().filter(|n| n.state != NodeState::Down);
        let up_count = up.clone().count();
        let dead: Vec<String> = up
            .filter(|n| self.liveness.last(&n.name).is_none_or(|t| t.elapsed() > grace))
            .map(|n| n.name.clone())
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        if up_count >= MASS_SILENCE_MIN_NODES && dead.len() * 2 > up_count {
            tracing::warn!(
                "{} of {up_count} nodes missed their heartbeats at once; taking it for the scheduler's own trouble \
                 and declaring none down until fewer are silent",
                dead.len()
            );
            return Ok(());
        }
        let now = now_ms();
        let why = format!("no heartbeat for {} ms", grace.as_millis());
        // Their next heartbeat, even a sign of life alone, must reach the
        // working set to bring them back.
        for name in &dead {
            self.liveness.applied(name, None);
        }
        self.transact(|mem, tx| mem.nodes_down(tx, &dead, &why, now))
    }

    /// Removes node `name` (`skiff node rm`): its replicas are replaced as a dead
    /// node's are, then the node is forgotten.
    pub fn remove_node(&mut self, name: &str) -> Result<(), ApiError> {
        if self.mem.node(name).is_none() {
            return Err(ApiError::not_found(format!("node {name:?} not found; `skiff get nodes` lists them")));
        }
        let now = now_ms();
        self.transact(|mem, tx| mem.remove_node(tx, name, now))?;
        self.live.remove(name);
        self.liveness.remove(name);
        Ok(())
    }

    /// Places pending replicas; returns how many were placed.
    pub fn schedule(&mut self) -> Result<usize, ApiError> {
        if !self.mem.sched_dirty {
            return Ok(0);
        }
        let scoring = self.policy.scoring;
        let now = now_ms();
        let (placed, more) = self.transact(|mem, tx| mem.schedule(tx, scoring, now, SCHEDULE_BATCH))?;
        // A pass stops after a batch so that heartbeats and watchers get the lock
        // between batches; the controllers run again at once while more remain.
        self.mem.sched_dirty = more;
        Ok(placed)
    }

    /// Brings every deployment to its count (the periodic, level-triggered pass).
    pub fn reconcile_all(&mut self) -> Result<(), ApiError> {
        let now = now_ms();
        self.mem.reconcile_due.clear();
        self.transact(|mem, tx| {
            let names: Vec<String> = mem.deployments.keys().cloned().collect();
            for name in names {
                mem.reconcile(tx, &name, now)?;
            }
            Ok(())
        })
    }

    /// Reconciles the deployments whose rollout a heartbeat may have moved on.
    pub fn reconcile_due(&mut self) -> Result<(), ApiError> {
        if self.mem.reconcile_due.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let names = std::mem::take(&mut self.mem.reconcile_due);
        self.transact(|mem, tx| {
            for name in &names {
                if mem.deployments.contains_key(name) {
                    mem.reconcile(tx, name, now)?;
                }
            }
            Ok(())
        })
    }

    // ---- secrets ----

    /// Every secret, without values.
    pub fn secrets(&self) -> Vec<Secret> {
        self.mem.secrets.values().map(|(s, _)| s.clone()).collect()
    }

    /// Creates secret `name`, or replaces its values when `req.overwrite`.
    pub fn put_secret(&mut self, name: &str, req: SecretRequest) -> Result<Secret, ApiError> {
        skiff_api::manifest::validate_secret(name, &req).map_err(ApiError::bad_request)?;
        let now = now_ms();
        let existing = self.mem.secrets.get(name).map(|(s, _)| s.created_ms);
        if existing.is_none() && self.mem.secrets.len() >= self.max_objects {
            return Err(too_many("secrets", self.max_objects));
        }
        if existing.is_some() && !req.overwrite {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("secret {name} already exists; pass --overwrite to replace its values"),
            ));
        }
        let sealed = self.keyring.seal(name, &req.data).map_err(|e| ApiError::internal(e.to_string()))?;
        let secret = Secret {
            name: name.to_string(),
            keys: req.data.keys().cloned().collect(),
            created_ms: existing.unwrap_or(now),
            updated_ms: now,
        };
        self.transact(|mem, tx| {
            tx.put_secret(&secret, &sealed)?;
            let verb = if existing.is_some() { "Updated" } else { "Created" };
            let msg = format!("secret with keys {}", secret.keys.join(", "));
            tx.event(now, &format!("secret/{name}"), verb, &msg)?;
            mem.secrets.insert(name.to_string(), (secret.clone(), sealed));
            mem.mutated = true;
            // Replicas may be pending for want of it.
            mem.sched_dirty = true;
            // The nodes running replicas that use it get their assignments
            // again, with the new values (for the replicas' next start).
            let placed: Vec<(String, String)> = mem
                .secret_users(name)
                .flat_map(|d| mem.replicas_of(d))
                .filter(|r| r.state.is_placed())
                .filter_map(|r| Some((r.node.clone()?, r.id.clone())))
                .collect();
            for (node, id) in placed {
                mem.tell(node, id);
            }
            Ok(())
        })?;
        Ok(secret)
    }

    /// Deletes secret `name`, unless a deployment uses it.
    pub fn delete_secret(&mut self, name: &str) -> Result<(), ApiError> {
        if !self.mem.secrets.contains_key(name) {
            return Err(ApiError::not_found(format!("secret {name:?} not found; `skiff secret ls` lists them")));
        }
        let users: Vec<&str> = self.mem.secret_users(name).collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("secret {name} is used by deployments {}; change or delete them first", users.join(", ")),
            ));
        }
        let now = now_ms();
        self.transact(|mem, tx| {
            tx.delete_secret(name)?;
            tx.event(now, &format!("secret/{name}"), "Deleted", "secret deleted")?;
            mem.secrets.remove(name);
            mem.mutated = true;
            Ok(())
        })
    }

    /// Re-seals every secret under a new key, then forgets the old keys.
    pub fn rotate_secret_key(&mut self) -> anyhow::Result<usize> {
        self.keyring.add_key()?;
        let mut resealed = Vec::new();
        for (name, (secret, sealed)) in &self.mem.secrets {
            let values = self.keyring.open_sealed(name, sealed)?;
            resealed.push((secret.clone(), self.keyring.seal(name, &values)?));
        }
        let n = resealed.len();
        self.transact(|mem, tx| {
            for (secret, sealed) in resealed {
                tx.put_secret(&secret, &sealed)?;
                mem.secrets.insert(secret.name.clone(), (secret, sealed));
            }
            mem.mutated = true;
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.keyring.drop_old_keys()?;
        Ok(n)
    }

    /// Node `name`'s desired set, with the values of the secrets its replicas use.
    pub fn assignments(&self, name: &str) -> Result<Assignments, ApiError> {
        let mut a = self.mem.assignments(name);
        self.complete(&mut a)?;
        Ok(a)
    }

    /// Adds to an answer of node assignments the volume lease and the secrets.
    fn complete(&self, a: &mut Assignments) -> Result<(), ApiError> {
        // A node with a leased volume stops its writer once it has not reached us
        // for as long as we wait before counting it down (`volumes::Lease`).
        a.lease_ms = u64::try_from(self.policy.node_grace(self.mem.nodes.len()).as_millis()).unwrap_or(u64::MAX);
        for asg in &mut a.replicas {
            for r in &asg.spec.secrets {
                if asg.secrets.contains_key(&r.secret) {
                    continue;
                }
                let Some((_, sealed)) = self.mem.secrets.get(&r.secret) else { continue };
                let values =
                    self.keyring.open_sealed(&r.secret, sealed).map_err(|e| ApiError::internal(e.to_string()))?;
                asg.secrets.insert(r.secret.clone(), values);
            }
        }
        Ok(())
    }

    /// What changed in node `name`'s desired set since `index` (the index of
    /// the set it holds), with the values of the secrets its changed replicas
    /// use; `None` when only the whole set can say it.
    pub fn assignment_changes(&mut self, name: &str, index: u64) -> Result<Option<Assignments>, ApiError> {
        let Some(mut a) = self.mem.assignment_changes(name, index) else { return Ok(None) };
        self.complete(&mut a)?;
        Ok(Some(a))
    }

    // ---- deployments ----

    pub fn apply(&mut self, name: &str, mut req: ApplyRequest) -> Result<ApplyResponse, ApiError> {
        req.replicas = Some(self.mem.apply_count(name, &req));
        skiff_api::manifest::validate_apply(name, &req).map_err(ApiError::bad_request)?;
        if !self.mem.deployments.contains_key(name) && self.mem.deployments.len() >= self.max_objects {
            return Err(too_many("deployments", self.max_objects));
        }
        let new_volumes = req.spec.volumes.iter().filter(|m| !self.mem.volumes.contains_key(&m.name)).count();
        if new_volumes > 0 && self.mem.volumes.len() + new_volumes > self.max_objects {
            return Err(too_many("volumes", self.max_objects));
        }
        let now = now_ms();
        let outcome = self.transact(|mem, tx| mem.apply(tx, name, req, now))?;
        let deployment = self.mem.deployment(name).ok_or_else(|| ApiError::internal("deployment vanished"))?;
        let warnings = self.mem.size_warnings(&deployment.spec);
        Ok(ApplyResponse { outcome, deployment, warnings })
    }

    pub fn scale(&mut self, name: &str, replicas: u32) -> Result<Deployment, ApiError> {
        if replicas > MAX_REPLICAS {
            return Err(ApiError::bad_request(format!("replicas must be at most {MAX_REPLICAS}, got {replicas}")));
        }
        if let Some(a) = self.mem.deployments.get(name).and_then(|e| e.d.autoscale) {
            let msg = format!(
                "deployment {name:?} scales by load between {} and {} replicas; change its autoscale min and max, or apply it without autoscale to scale it by hand",
                a.min, a.max
            );
            return Err(ApiError::new(axum::http::StatusCode::CONFLICT, msg));
        }
        let now = now_ms();
        self.transact(|mem, tx| {
            let e = mem.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
            skiff_api::manifest::validate_volumes(&e.d.spec.volumes, replicas).map_err(ApiError::bad_request)?;
            if e.d.replicas != replicas {
                let from = e.d.replicas;
                e.d.replicas = replicas;
                e.d.updated_ms = now;
                tx.put_deployment(&e.d)?;
                tx.event(
                    now,
                    &format!("deployment/{name}"),
                    "Scaled",
                    &format!("scaled from {from} to {replicas} replicas"),
                )?;
                mem.mutated = true;
                mem.reconcile(tx, name, now)?;
            }
            Ok(())
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }

    /// Sets the count of autoscaled deployment `name` to `replicas`, saying `why`.
    pub fn autoscale(&mut self, name: &str, replicas: u32, why: &str) -> Result<(), ApiError> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let Some(e) = mem.deployments.get_mut(name) else { return Ok(()) };
            if e.d.replicas == replicas || e.d.autoscale.is_none() {
                return Ok(());
            }
            let from = e.d.replicas;
            e.d.replicas = replicas;
            e.d.updated_ms = now;
            tx.put_deployment(&e.d)?;
            let msg = format!("autoscaled from {from} to {replicas} replicas: {why}");
            tx.event(now, &format!("deployment/{name}"), "Scaled", &msg)?;
            mem.mutated = true;
            mem.reconcile(tx, name, now)
        })
    }

    /// Every revision of `name`, oldest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<RevisionInfo>, ApiError> {
        let d = self.mem.deployments.get(name).ok_or_else(|| not_found_deployment(name))?;
        let mut out: Vec<RevisionInfo> = self
            .mem
            .revisions
            .iter()
            .filter(|((dep, _), _)| dep == name)
            .map(|((_, rev), spec)| RevisionInfo { revision: *rev, spec: spec.clone(), current: *rev == d.d.revision })
            .collect();
        out.sort_by_key(|r| r.revision);
        Ok(out)
    }

    /// Rolls `name` back to revision `to` (by default the one before the current),
    /// as a rollout like any other.
    pub fn rollback(&mut self, name: &str, to: Option<u64>) -> Result<Deployment, ApiError> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let e = mem.deployments.get(name).ok_or_else(|| not_found_deployment(name))?;
            let current = e.d.revision;
            let target = match to {
                Some(t) => t,
                None => mem
                    .revisions
                    .keys()
                    .filter(|(d, r)| d == name && *r < current)
                    .map(|(_, r)| *r)
                    .max()
                    .ok_or_else(|| ApiError::bad_request(format!("{name} has no revision before {current}")))?,
            };
            if target == current {
                return Err(ApiError::bad_request(format!("{name} already runs revision {target}")));
            }
            let spec = mem.revisions.get(&(name.to_string(), target)).cloned().ok_or_else(|| {
                ApiError::not_found(format!(
                    "{name} has no revision {target}; `skiff rollout history {name}` lists them"
                ))
            })?;
            let e = mem.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
            e.d.revision = target;
            e.d.spec = spec;
            e.d.updated_ms = now;
            e.d.rollout = Rollout {
                state: RolloutState::Progressing,
                from_revision: current,
                to_revision: target,
                started_ms: now,
                progress_ms: now,
                paused: false,
                message: format!("rolling back from revision {current} to {target}"),
            };
            tx.put_deployment(&e.d)?;
            tx.event(now, &format!("deployment/{name}"), "Rollback", &e.d.rollout.message)?;
            mem.mutated = true;
            mem.reconcile(tx, name, now)
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }

    /// Pauses or resumes the rollout of `name`.
    pub fn set_paused(&mut self, name: &str, paused: bool) -> Result<Deployment, ApiError> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let e = mem.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
            if e.d.rollout.paused != paused {
                e.d.rollout.paused = paused;
                // Time spent paused is not a lack of progress.
                e.d.rollout.progress_ms = now;
                tx.put_deployment(&e.d)?;
                let (reason, msg) = if paused { ("Paused", "rollout paused") } else { ("Resumed", "rollout resumed") };
                tx.event(now, &format!("deployment/{name}"), reason, msg)?;
                mem.mutated = true;
                mem.reconcile(tx, name, now)?;
            }
            Ok(())
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }

    /// Deletes deployment `name`; its volumes stay unless `purge_volumes` (then
    /// those no other deployment mounts go, with their data).
    pub fn delete(&mut self, name: &str, purge_volumes: bool) -> Result<(), ApiError> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let Some(e) = mem.deployments.get(name) else {
                return Err(not_found_deployment(name));
            };
            let volumes: Vec<String> = e.d.spec.volumes.iter().map(|v| v.name.clone()).collect();
            let ids: Vec<String> = mem.by_deployment.get(name).map(|s| s.iter().cloned().collect()).unwrap_or_default();
            for id in ids {
                mem.update(tx, &id, |r| {
                    r.state = ReplicaState::Stopped;
                    r.reason = Some("deployment deleted".into());
                })?;
            }
            mem.deployments.remove(name);
            mem.by_deployment.remove(name);
            mem.revisions.retain(|(d, _), _| d != name);
            tx.delete_deployment(name)?;
            tx.event(now, &format!("deployment/{name}"), "Deleted", "deployment deleted; its replicas are stopping")?;
            mem.mutated = true;
            mem.endpoints_dirty = true;
            if purge_volumes {
                for v in volumes {
                    let used = mem.deployments.values().any(|e| e.d.spec.volumes.iter().any(|m| m.name == v));
                    if !used {
                        mem.purge_volume(tx, &v, now)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Every volume.
    pub fn volumes(&self) -> Vec<Volume> {
        self.mem.volumes()
    }

    /// Deletes volume `name` and its data, unless a deployment mounts it.
    pub fn delete_volume(&mut self, name: &str) -> Result<(), ApiError> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let Some(v) = mem.volumes().into_iter().find(|v| v.name == name) else {
                return Err(ApiError::not_found(format!("volume {name:?} not found; `skiff volume ls` lists them")));
            };
            if !v.deployments.is_empty() {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    format!("volume {name} is mounted by deployments {}; delete them first", v.deployments.join(", ")),
                ));
            }
            mem.purge_volume(tx, name, now)
        })
    }
}

fn not_found_deployment(name: &str) -> ApiError {
    ApiError::not_found(format!("deployment {name:?} not found; `skiff get deployments` lists them"))
}

/// Most replicas one scheduling pass places (one transaction, one hold of the
/// lock): about 50 ms of work at 5,000 nodes.
const SCHEDULE_BATCH: usize = 2048;

/// Orders replicas for removal on scale-down: those doing least first, newest first.
fn removal_rank(r: &Replica) -> (u8, std::cmp::Reverse<Millis>) {
    let rank = match r.state {
        ReplicaState::Pending => 0,
        ReplicaState::Failed | ReplicaState::Exited => 1,
        ReplicaState::Assigned | ReplicaState::Starting => 2,
        _ => 3,
    };
    (rank, std::cmp::Reverse(r.created_ms))
}

fn new_replica_id(deployment: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..6).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    // Replica ids are DNS labels too: keep them within 63 characters.
    let prefix = &deployment[..deployment.len().min(56)];
    format!("{prefix}-{suffix}")
}

/// One event for a deployment's placements in a pass (`what`: "placed"), or
/// for its replicas reported running by a batch of heartbeats ("running"): a
/// row per replica cost as much as the placement itself at scale.
fn replicas_message(list: &[(String, String)], what: &str) -> String {
    const SHOWN: usize = 10;
    if let [(id, node)] = list {
        return format!("replica {id} {what} on {node}");
    }
    let shown: Vec<String> = list.iter().take(SHOWN).map(|(id, node)| format!("{id} on {node}")).collect();
    let rest = list.len().saturating_sub(SHOWN);
    let more = if rest > 0 { format!(" and {rest} more") } else { String::new() };
    format!("{} replicas {what}: {}{more}", list.len(), shown.join(", "))
}

/// Whether a replica in `state` serves: ready, or running when its revision
/// has no readiness probe (`probed` asked only then). Spelled once for
/// `Mem::serving` and the reconcile's walk, which knows its current revision's
/// spec without a lookup.
fn serves(state: ReplicaState, probed: impl FnOnce() -> bool) -> bool {
    match state {
        ReplicaState::Ready => true,
        ReplicaState::Running => !probed(),
        _ => false,
    }
}

/// A seed from a replica id: the same replica gets the same placement order.
fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

impl Mem {
    fn load(store: &Store) -> Result<Mem, StoreError> {
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
                _ => {}
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
            mem.deployments.insert(d.name.clone(), DeploymentEntry::new(d));
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
        for r in loaded.replicas {
            mem.next_generation = mem.next_generation.max(r.generation + 1);
            mem.index_replica(&r);
            mem.replicas.insert(r.id.clone(), r);
        }
        mem.touched.clear();
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

    pub fn deployment(&self, name: &str) -> Option<Deployment> {
        let e = self.deployments.get(name)?;
        let mut d = e.d.clone();
        let c = e.counts;
        let min_ready_ms = d.strategy.min_ready_seconds as u64 * 1000;
        // Available depends on the clock: counted only when it differs from ready.
        let available = match min_ready_ms {
            0 => c.serving,
            _ => {
                let now = now_ms();
                let ok = |r: &&Replica| self.serving(r) && now.saturating_sub(r.updated_ms) >= min_ready_ms;
                self.replicas_of(name).filter(ok).count() as u32
            }
        };
        d.status = DeploymentStatus {
            total: c.total,
            pending: c.pending,
            running: c.running,
            ready: c.serving,
            available,
            failed: c.failed,
            restarts: c.restarts,
        };
        Some(d)
    }

    /// Whether a replica passes readiness: it is ready, or running when its
    /// revision has no readiness probe (then running is all there is to know).
    /// Available is serving for `min_ready_seconds`.
    fn serving(&self, r: &Replica) -> bool {
        serves(r.state, || {
            // Without its spec, not known to serve.
            self.revisions.get(&(r.deployment.clone(), r.revision)).is_none_or(|s| s.probes.readiness.is_some())
        })
    }

    /// The desired set of node `name`.
    pub fn assignments(&self, name: &str) -> Assignments {
        let replicas = self.replicas_on(name).filter_map(|r| self.assignment(r)).collect();
        Assignments {
            index: self.index,
            replicas,
            purge_volumes: self.purge_volumes(name),
            lease_ms: 0,
            delta: false,
            removed: Vec::new(),
        }
    }

    fn assignment(&self, r: &Replica) -> Option<Assignment> {
        let spec = self.revisions.get(&(r.deployment.clone(), r.revision))?;
        Some(Assignment {
            replica: r.id.clone(),
            deployment: r.deployment.clone(),
            revision: r.revision,
            generation: r.generation,
            spec: spec.clone(),
            secrets: BTreeMap::new(),
        })
    }

    fn purge_volumes(&self, name: &str) -> Vec<String> {
        self.purging
            .iter()
            .filter(|v| self.volumes.get(*v).and_then(|v| v.node.as_deref()) == Some(name))
            .cloned()
            .collect()
    }

    /// What changed in node `name`'s desired set since `index`, the index of
    /// the set the node holds: the replicas placed or changed since, and those
    /// taken off. `None` when the log does not reach back that far (or the node
    /// has none: registered anew, back from down, a reloaded working set). The
    /// changes up to `index` are forgotten: the node has them.
    pub fn assignment_changes(&mut self, name: &str, index: u64) -> Option<Assignments> {
        let log = self.changes.get_mut(name)?;
        if index == 0 || index < log.since || index > self.index {
            return None;
        }
        while log.entries.front().is_some_and(|(i, _)| *i <= index) {
            log.entries.pop_front();
        }
        log.since = index;
        let ids: BTreeSet<String> = log.entries.iter().map(|(_, id)| id.clone()).collect();
        let on_node = self.by_node.get(name);
        let (mut replicas, mut removed) = (Vec::new(), Vec::new());
        for id in ids {
            match self.replicas.get(&id).filter(|_| on_node.is_some_and(|s| s.contains(&id))) {
                Some(r) => replicas.extend(self.assignment(r)),
                None => removed.push(id),
            }
        }
        let purge_volumes = self.purge_volumes(name);
        Some(Assignments { index: self.index, replicas, purge_volumes, lease_ms: 0, delta: true, removed })
    }

    /// Node `node` must hear of replica `id` again (its assignment changed):
    /// its long poll wakes and its change log gets the replica.
    fn tell(&mut self, node: String, id: String) {
        self.touched.insert(node.clone());
        self.changed.push((node, id));
    }

    /// Node `node` must hear its whole desired set again (registered anew, back
    /// from down): its long poll wakes and its change log starts over.
    fn tell_whole(&mut self, node: String) {
        self.touched.insert(node.clone());
        self.whole.insert(node);
    }

    /// The deployments whose spec names secret `name`.
    fn secret_users<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.deployments
            .values()
            .filter(move |e| e.d.spec.secrets.iter().any(|r| r.secret == name))
            .map(|e| e.d.name.as_str())
    }

    /// Logs this transaction's changes of node sets at the new index.
    fn log_changes(&mut self) {
        let index = self.index;
        for node in std::mem::take(&mut self.whole) {
            self.changes.insert(node, NodeChanges { since: index, entries: Default::default() });
        }
        for (node, id) in std::mem::take(&mut self.changed) {
            let log =
                self.changes.entry(node).or_insert_with(|| NodeChanges { since: index - 1, ..Default::default() });
            log.entries.push_back((index, id));
            if log.entries.len() > MAX_NODE_CHANGES
                && let Some((i, _)) = log.entries.pop_front()
            {
                log.since = log.since.max(i);
            }
        }
    }

    /// Warns when no registered node could ever hold one replica of `spec`.
    fn size_warnings(&self, spec: &WorkloadSpec) -> Vec<String> {
        let need = spec.resources;
        let runtime = spec.workload.runtime();
        let capable: Vec<&Node> = self.nodes.iter().filter(|n| n.runtimes.contains(&runtime)).collect();
        if self.nodes.is_empty() {
            return vec!["no nodes are registered yet; replicas stay pending until one joins".into()];
        }
        if capable.is_empty() {
            return vec![format!("no registered node runs {runtime} workloads; replicas stay pending until one joins")];
        }
        if capable.iter().any(|n| n.capacity.covers(need)) {
            return Vec::new();
        }
        let max_cpu = capable.iter().map(|n| n.capacity.cpu.0).max().unwrap_or(0);
        let max_mem = capable.iter().map(|n| n.capacity.memory.0).max().unwrap_or(0);
        vec![format!(
            "no node is large enough: each replica requests cpu {}, memory {}; the largest nodes have cpu {}, memory {}; replicas stay pending until a larger node joins",
            need.cpu,
            need.memory,
            format_cpu(max_cpu),
            format_memory(max_mem)
        )]
    }

    fn resources_of(&self, r: &Replica) -> Resources {
        self.revisions.get(&(r.deployment.clone(), r.revision)).map(|s| s.resources).unwrap_or_default()
    }

    fn host_ports_of(&self, r: &Replica) -> Vec<skiff_api::HostPort> {
        self.revisions.get(&(r.deployment.clone(), r.revision)).map(|s| s.host_ports()).unwrap_or_default()
    }

    fn index_replica(&mut self, r: &Replica) {
        if r.state.is_terminal() {
            return;
        }
        self.by_deployment.entry(r.deployment.clone()).or_default().insert(r.id.clone());
        let serving = self.serving(r);
        if let Some(e) = self.deployments.get_mut(&r.deployment) {
            e.counts.count(r, serving, true);
            *e.by_revision.entry(r.revision).or_default() += 1;
        }
        if r.state == ReplicaState::Pending {
            self.pending.insert((r.created_ms, r.id.clone()));
        }
        if let (true, Some(node)) = (r.state.is_placed(), &r.node) {
            let res = self.resources_of(r);
            self.by_node.entry(node.clone()).or_default().insert(r.id.clone());
            if let Some(&i) = self.node_idx.get(node) {
                let n = &mut self.nodes[i];
                n.allocated = n.allocated.saturating_add(res);
                n.replicas += 1;
                if let Some(e) = self.deployments.get_mut(&r.deployment) {
                    *e.spread.entry(i).or_default() += 1;
                }
            }
            let ports = self.host_ports_of(r);
            if !ports.is_empty() {
                let used = self.ports_in_use.entry(node.clone()).or_default();
                for p in ports {
                    *used.entry(p).or_default() += 1;
                }
            }
        }
    }

    fn unindex_replica(&mut self, r: &Replica) {
        if let Some(set) = self.by_deployment.get_mut(&r.deployment)
            && set.remove(&r.id)
        {
            let serving = self.serving(r);
            if let Some(e) = self.deployments.get_mut(&r.deployment) {
                e.counts.count(r, serving, false);
                if let Some(n) = e.by_revision.get_mut(&r.revision) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        e.by_revision.remove(&r.revision);
                    }
                }
            }
        }
        self.pending.remove(&(r.created_ms, r.id.clone()));
        if let (true, Some(node)) = (r.state.is_placed(), &r.node) {
            let res = self.resources_of(r);
            if let Some(set) = self.by_node.get_mut(node) {
                set.remove(&r.id);
            }
            if let Some(&i) = self.node_idx.get(node) {
                let n = &mut self.nodes[i];
                n.allocated = n.allocated.saturating_sub(res);
                n.replicas = n.replicas.saturating_sub(1);
                if let Some(e) = self.deployments.get_mut(&r.deployment)
                    && let Some(c) = e.spread.get_mut(&i)
                {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        e.spread.remove(&i);
                    }
                }
            }
            let ports = self.host_ports_of(r);
            if let Some(used) = self.ports_in_use.get_mut(node) {
                for p in ports {
                    if let Some(c) = used.get_mut(&p) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            used.remove(&p);
                        }
                    }
                }
                if used.is_empty() {
                    self.ports_in_use.remove(node);
                }
            }
        }
    }

    /// Changes replica `id` through `f`, checking the state transition, keeping
    /// every index right and writing the row (deleting it once terminal).
    fn update(&mut self, tx: &Tx, id: &str, f: impl FnOnce(&mut Replica)) -> Result<(), ApiError> {
        let Some(old) = self.replicas.get(id).cloned() else {
            return Ok(());
        };
        let mut new = old.clone();
        f(&mut new);
        if let Err(e) = old.state.become_(new.state) {
            return Err(ApiError::internal(format!("replica {id}: {e}")));
        }
        if new == old {
            return Ok(());
        }
        if new.state != old.state {
            new.updated_ms = now_ms();
        }
        self.mutated = true;
        if old.state == ReplicaState::Ready || new.state == ReplicaState::Ready {
            self.endpoints_dirty = true;
        }
        // A node hears of a replica when its assignment changes (placed on or
        // taken off it, a new generation or revision), not when its own report
        // of it does.
        let assigned = |r: &Replica| match r.state.is_placed() {
            true => r.node.clone().map(|n| (n, r.generation, r.revision)),
            false => None,
        };
        let (was, is) = (assigned(&old), assigned(&new));
        if was != is {
            for (node, _, _) in was.into_iter().chain(is) {
                self.tell(node, id.to_string());
            }
        }
        self.unindex_replica(&old);
        if new.state.is_terminal() {
            self.replicas.remove(id);
            tx.delete_replica(id)?;
            if let Some(node) = &old.node {
                // The node must hear that it should stop it.
                self.tell(node.clone(), id.to_string());
            }
        } else {
            self.index_replica(&new);
            tx.put_replica(&new)?;
            self.replicas.insert(id.to_string(), new);
        }
        if old.state.is_placed() && !self.replicas.get(id).is_some_and(|r| r.state.is_placed()) {
            self.sched_dirty = true; // capacity freed
        }
        Ok(())
    }

    fn register(&mut self, tx: &Tx, req: RegisterRequest, now: Millis) -> Result<Node, ApiError> {
        self.mutated = true;
        self.sched_dirty = true;
        self.endpoints_dirty = true;
        let object = format!("node/{}", req.name);
        let node = match self.node_idx.get(&req.name) {
            Some(&i) => {
                let n = &mut self.nodes[i];
                let was = n.state;
                n.address = req.address;
                n.labels = req.labels;
                n.capacity = req.capacity;
                n.runtimes = req.runtimes;
                n.ingress = req.ingress;
                n.state = NodeState::Ready;
                n.last_heartbeat_ms = now;
                let msg = format!("node re-registered (was {was}) with {}", n.capacity);
                tx.event(now, &object, "Registered", &msg)?;
                n.clone()
            }
            None => {
                let n = Node {
                    name: req.name.clone(),
                    address: req.address,
                    labels: req.labels,
                    capacity: req.capacity,
                    allocated: Resources::default(),
                    runtimes: req.runtimes,
                    state: NodeState::Ready,
                    replicas: 0,
                    registered_ms: now,
                    last_heartbeat_ms: now,
                    ingress: req.ingress,
                };
                tx.event(now, &object, "Registered", &format!("node joined with {}", n.capacity))?;
                self.node_idx.insert(n.name.clone(), self.nodes.len());
                self.nodes.push(n.clone());
                n
            }
        };
        tx.put_node(&node)?;
        // A re-registered node must hear its desired set again.
        self.tell_whole(node.name.clone());
        Ok(node)
    }

    fn heartbeat(&mut self, tx: &Tx, name: &str, hb: &Heartbeat, now: Millis) -> Result<(), ApiError> {
        let Some(&i) = self.node_idx.get(name) else {
            return Err(ApiError::not_found(format!("node {name:?} is not registered; register it first")));
        };
        let node_obj = format!("node/{name}");
        let back = {
            let n = &mut self.nodes[i];
            n.last_heartbeat_ms = now;
            let back = n.state == NodeState::Down;
            if back {
                n.state = NodeState::Ready;
                tx.event(now, &node_obj, "NodeReady", "node is heartbeating again")?;
            }
            let changed = back || n.capacity != hb.capacity;
            n.capacity = hb.capacity;
            if changed {
                tx.put_node(n)?;
                self.mutated = true;
                self.sched_dirty = true;
            }
            back
        };
        if back {
            self.tell_whole(name.to_string());
        }
        for st in &hb.replicas {
            let Some(r) = self.replicas.get(&st.id) else { continue };
            // Only the node a replica is assigned to, at the current generation,
            // may report on it; anything else is stale (after a partition, say).
            if r.node.as_deref() != Some(name) || r.generation != st.generation {
                continue;
            }
            if !matches!(
                st.state,
                ReplicaState::Starting
                    | ReplicaState::Running
                    | ReplicaState::Ready
                    | ReplicaState::Exited
                    | ReplicaState::Failed
            ) {
                continue;
            }
            if r.state == st.state && r.restarts == st.restarts && r.reason == st.reason && r.exit_code == st.exit_code
            {
                continue;
            }
            if !r.state.can_become(st.state) {
                tracing::warn!("node {name} reported replica {} going from {} to {}: ignored", r.id, r.state, st.state);
                continue;
            }
            let obj = format!("deployment/{}", r.deployment);
            if st.state != r.state && matches!(st.state, ReplicaState::Failed) {
                let why = st.reason.clone().unwrap_or_else(|| "no reason given".into());
                tx.event(now, &obj, "ReplicaFailed", &format!("replica {} failed on {name}: {why}", r.id))?;
            }
            if st.state != r.state
                && matches!(st.state, ReplicaState::Running | ReplicaState::Ready)
                && r.state == ReplicaState::Assigned
            {
                // One event per deployment and batch (`Mem::record_started`).
                self.started.entry(r.deployment.clone()).or_default().push((r.id.clone(), name.to_string()));
            }
            if st.restarts > r.restarts {
                tx.event(
                    now,
                    &obj,
                    "Restarted",
                    &format!(
                        "replica {} restarted on {name} ({} restarts){}",
                        r.id,
                        st.restarts,
                        st.reason.as_deref().map(|why| format!("; {why}")).unwrap_or_default()
                    ),
                )?;
            }
            let id = st.id.clone();
            if st.state != r.state
                && self.deployments.get(&r.deployment).is_some_and(|e| e.d.rollout.state == RolloutState::Progressing)
            {
                self.reconcile_due.insert(r.deployment.clone());
            }
            self.update(tx, &id, |r| {
                r.state = st.state;
                r.restarts = st.restarts;
                r.reason = st.reason.clone();
                r.exit_code = st.exit_code;
            })?;
        }
        Ok(())
    }

    /// Records the `Started` events of the replicas this transaction's
    /// heartbeats reported running for the first time.
    fn record_started(&mut self, tx: &Tx, now: Millis) -> Result<(), ApiError> {
        for (dep, list) in std::mem::take(&mut self.started) {
            tx.event(now, &format!("deployment/{dep}"), "Started", &replicas_message(&list, "running"))?;
        }
        Ok(())
    }

    /// Marks nodes `names` down and their replicas lost, then reconciles the
    /// deployments they held: once each, however many of the nodes going down
    /// at once held them (a reconcile walks every replica of its deployment).
    fn nodes_down(&mut self, tx: &Tx, names: &[String], why: &str, now: Millis) -> Result<(), ApiError> {
        let mut deployments = BTreeSet::new();
        for name in names {
            self.mark_down(tx, name, why, now, &mut deployments)?;
        }
        for d in deployments {
            self.reconcile(tx, &d, now)?;
        }
        Ok(())
    }

    /// Marks node `name` down and its replicas lost, adding their deployments
    /// to `deployments` (for `nodes_down` to reconcile).
    fn mark_down(
        &mut self,
        tx: &Tx,
        name: &str,
        why: &str,
        now: Millis,
        deployments: &mut BTreeSet<String>,
    ) -> Result<(), ApiError> {
        let Some(&i) = self.node_idx.get(name) else { return Ok(()) };
        self.nodes[i].state = NodeState::Down;
        tx.put_node(&self.nodes[i])?;
        self.mutated = true;
        let ids: Vec<String> = self.by_node.get(name).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        tx.event(
            now,
            &format!("node/{name}"),
            "NodeDown",
            &format!("{why}; its {} replicas are replaced elsewhere", ids.len()),
        )?;
        tracing::warn!("node {name} down ({why}); replacing {} replicas", ids.len());
        for id in ids {
            if let Some(r) = self.replicas.get(&id) {
                deployments.insert(r.deployment.clone());
                tx.event(
                    now,
                    &format!("deployment/{}", r.deployment),
                    "ReplicaLost",
                    &format!("replica {id} lost with node {name}"),
                )?;
            }
            self.update(tx, &id, |r| {
                r.state = ReplicaState::Lost;
                r.reason = Some(format!("node {name} down"));
            })?;
        }
        self.sched_dirty = true;
        Ok(())
    }

    fn remove_node(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), ApiError> {
        self.nodes_down(tx, &[name.to_string()], "removed by `skiff node rm`", now)?;
        let Some(i) = self.node_idx.remove(name) else { return Ok(()) };
        let last = self.nodes.len() - 1;
        self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.node_idx.insert(moved.name.clone(), i);
        }
        // Spread counts are by node index: the removed node's go (its replicas
        // were taken off it above), the moved node's follow it.
        for e in self.deployments.values_mut() {
            e.spread.remove(&i);
            if let Some(c) = e.spread.remove(&last) {
                e.spread.insert(i, c);
            }
        }
        self.by_node.remove(name);
        self.ports_in_use.remove(name);
        self.touched.remove(name);
        self.changes.remove(name);
        self.changed.retain(|(n, _)| n != name);
        self.endpoints_dirty = true;
        tx.delete_node(name)?;
        tx.event(now, &format!("node/{name}"), "NodeRemoved", "removed; it can come back only by joining again")?;
        Ok(())
    }

    /// The count an apply of `req` gives deployment `name`. An autoscaled
    /// deployment keeps the count the autoscaler gave it (within the bounds):
    /// `replicas` only starts a new one. Otherwise (also when the apply turns
    /// autoscaling off) the count asked for, else the current one, else 1.
    fn apply_count(&self, name: &str, req: &ApplyRequest) -> u32 {
        let current = self.deployments.get(name).map(|e| e.d.replicas);
        match req.autoscale {
            Some(a) => current.or(req.replicas).unwrap_or(a.min).clamp(a.min, a.max),
            None => req.replicas.or(current).unwrap_or(1),
        }
    }

    fn apply(&mut self, tx: &Tx, name: &str, req: ApplyRequest, now: Millis) -> Result<ApplyOutcome, ApiError> {
        let obj = format!("deployment/{name}");
        let replicas = self.apply_count(name, &req);
        self.declare_volumes(tx, name, &req.spec, now)?;
        let outcome = match self.deployments.get_mut(name) {
            None => {
                let d = Deployment {
                    name: name.to_string(),
                    replicas,
                    revision: 1,
                    spec: req.spec.clone(),
                    created_ms: now,
                    updated_ms: now,
                    status: DeploymentStatus::default(),
                    strategy: req.strategy.unwrap_or_default(),
                    autoscale: req.autoscale,
                    // The first rollout completes once its replicas are available.
                    rollout: Rollout {
                        state: RolloutState::Progressing,
                        from_revision: 1,
                        to_revision: 1,
                        started_ms: now,
                        progress_ms: now,
                        paused: false,
                        message: "rolling out revision 1".into(),
                    },
                };
                tx.put_revision(name, 1, &req.spec, now)?;
                tx.put_deployment(&d)?;
                tx.event(
                    now,
                    &obj,
                    "Created",
                    &format!("created with {} replicas of {}", d.replicas, d.spec.workload),
                )?;
                self.revisions.insert((name.to_string(), 1), req.spec);
                self.deployments.insert(name.to_string(), DeploymentEntry::new(d));
                self.endpoints_dirty = true;
                ApplyOutcome::Created
            }
            Some(e)
                if e.d.spec == req.spec
                    && e.d.replicas == replicas
                    && req.strategy.is_none_or(|s| s == e.d.strategy)
                    && req.autoscale == e.d.autoscale =>
            {
                return Ok(ApplyOutcome::Unchanged);
            }
            Some(e) => {
                if let Some(s) = req.strategy {
                    e.d.strategy = s;
                }
                if e.d.autoscale != req.autoscale {
                    e.d.autoscale = req.autoscale;
                    match req.autoscale {
                        Some(a) => {
                            let msg = format!("autoscale between {} and {} replicas", a.min, a.max);
                            tx.event(now, &obj, "AutoscaleSet", &msg)?;
                        }
                        None => {
                            let msg = format!("autoscale off; {replicas} replicas until scaled");
                            tx.event(now, &obj, "AutoscaleOff", &msg)?;
                        }
                    }
                }
                if e.d.spec != req.spec {
                    // After a rollback the current revision is not the newest: number
                    // the new one after every revision there is.
                    let latest = self.revisions.keys().filter(|(d, _)| d == name).map(|(_, r)| *r).max();
                    let from = e.d.revision;
                    e.d.revision = latest.unwrap_or(from).max(from) + 1;
                    e.d.spec = req.spec.clone();
                    e.d.rollout = Rollout {
                        state: RolloutState::Progressing,
                        from_revision: from,
                        to_revision: e.d.revision,
                        started_ms: now,
                        progress_ms: now,
                        paused: e.d.rollout.paused,
                        message: format!("rolling out revision {} to replace {from}", e.d.revision),
                    };
                    tx.put_revision(name, e.d.revision, &req.spec, now)?;
                    tx.event(now, &obj, "NewRevision", &format!("revision {} of {}", e.d.revision, req.spec.workload))?;
                    self.revisions.insert((name.to_string(), e.d.revision), req.spec);
                }
                if e.d.replicas != replicas {
                    tx.event(now, &obj, "Scaled", &format!("scaled from {} to {replicas} replicas", e.d.replicas))?;
                    e.d.replicas = replicas;
                }
                e.d.updated_ms = now;
                tx.put_deployment(&e.d)?;
                ApplyOutcome::Updated
            }
        };
        self.mutated = true;
        self.reconcile(tx, name, now)?;
        Ok(outcome)
    }

    /// Keeps deployment `name` at its count of current-revision replicas, rolling
    /// older revisions out as [`rollout::plan`] decides, and rolls a failing
    /// rollout back to the last good revision.
    fn reconcile(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), ApiError> {
        let Some(e) = self.deployments.get(name) else { return Ok(()) };
        let (desired, revision, mut strategy) = (e.d.replicas as usize, e.d.revision, e.d.strategy);
        // At its count, all of the current revision: the plan would create and
        // stop nothing, and a rollout under way completes once enough serve
        // (counted, when serving is all that available asks).
        if e.counts.total as usize == desired && e.by_revision.keys().all(|r| *r == revision) {
            if e.d.rollout.state != RolloutState::Progressing {
                return Ok(());
            }
            if strategy.min_ready_seconds == 0 {
                let done = e.counts.serving as usize >= desired;
                return if done { self.rollout_complete(tx, name, now) } else { Ok(()) };
            }
        }
        let paused = e.d.rollout.paused;
        let min_ready_ms = strategy.min_ready_seconds as u64 * 1000;
        let probed = e.d.spec.probes.readiness.is_some();
        // Two writers of one volume must never run at once: with a read-write
        // volume, a new revision replaces the old one by stopping it first.
        let mut writable = e.d.spec.has_writable_volume();
        // One walk of the replicas; those of the current revision (most of
        // them) need no lookup of their revision.
        let mut seen: Vec<rollout::Seen> = Vec::with_capacity(self.by_deployment.get(name).map_or(0, BTreeSet::len));
        for r in self.replicas_of(name) {
            let current = r.revision == revision;
            let serving = if current {
                serves(r.state, || probed)
            } else {
                let spec = self.revisions.get(&(r.deployment.clone(), r.revision));
                writable |= spec.is_some_and(WorkloadSpec::has_writable_volume);
                self.serving(r)
            };
            seen.push(rollout::Seen {
                id: r.id.clone(),
                current,
                available: serving && now.saturating_sub(r.updated_ms) >= min_ready_ms,
                failing: matches!(r.state, ReplicaState::Failed | ReplicaState::Exited) || r.restarts >= 3,
                rank: removal_rank(r),
            });
        }
        if writable {
            strategy.max_surge = 0;
            strategy.max_unavailable = strategy.max_unavailable.max(1);
        }
        let plan = rollout::plan(desired, &strategy, paused, &seen);
        if plan.rolling && self.rollout_check(tx, name, &plan, now)? {
            // Rolled back: the next pass plans against the good revision.
            return self.reconcile(tx, name, now);
        }
        let obj = format!("deployment/{name}");
        let scaled_down = plan.stop.iter().filter(|(_, why)| *why == "scaled down").count();
        for (id, why) in &plan.stop {
            let why = if *why == "scaled down" { why.to_string() } else { format!("replaced by revision {revision}") };
            self.update(tx, id, |r| {
                r.state = ReplicaState::Stopped;
                r.reason = Some(why);
            })?;
        }
        if scaled_down > 0 {
            tx.event(now, &obj, "ScaledDown", &format!("stopped {scaled_down} replicas"))?;
        }
        for _ in 0..plan.create {
            // Six random characters collide: among a deployment's 10,000
            // replicas about once in 40 deployments. A taken id would overwrite
            // a live replica and leave its indexes behind.
            let mut id = new_replica_id(name);
            while self.replicas.contains_key(&id) {
                id = new_replica_id(name);
            }
            let r = Replica {
                id,
                deployment: name.to_string(),
                revision,
                node: None,
                state: ReplicaState::Pending,
                generation: 0,
                restarts: 0,
                reason: None,
                exit_code: None,
                created_ms: now,
                updated_ms: now,
            };
            tx.put_replica(&r)?;
            self.index_replica(&r);
            self.replicas.insert(r.id.clone(), r);
            self.mutated = true;
            self.sched_dirty = true;
        }
        // A rollout is complete once no old replica is left and the new ones serve.
        let done = !plan.rolling && plan.stop.iter().all(|(_, w)| *w == "scaled down") && plan.available_new >= desired;
        if done { self.rollout_complete(tx, name, now) } else { Ok(()) }
    }

    /// Marks deployment `name`'s rollout under way complete.
    fn rollout_complete(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), ApiError> {
        let e = self.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
        if e.d.rollout.state == RolloutState::Progressing {
            e.d.rollout.state = RolloutState::Complete;
            e.d.rollout.message = format!("revision {} is rolled out", e.d.revision);
            tx.put_deployment(&e.d)?;
            tx.event(now, &format!("deployment/{name}"), "RolloutComplete", &e.d.rollout.message)?;
            self.mutated = true;
        }
        Ok(())
    }

    /// Watches a rollout under way: records progress, and when its new replicas
    /// keep failing or it makes no progress within its deadline, rolls back to the
    /// revision it started from (or marks it failed when automatic rollback is
    /// off). Returns whether it rolled back.
    fn rollout_check(&mut self, tx: &Tx, name: &str, plan: &rollout::Plan, now: Millis) -> Result<bool, ApiError> {
        let obj = format!("deployment/{name}");
        let Some(e) = self.deployments.get_mut(name) else { return Ok(false) };
        let r = &mut e.d.rollout;
        if r.state != RolloutState::Progressing || r.paused {
            return Ok(false);
        }
        if plan.stop.iter().any(|(_, w)| *w != "scaled down") {
            r.progress_ms = now;
        }
        let deadline_ms = e.d.strategy.progress_deadline_seconds as u64 * 1000;
        let why = if plan.failing > 0 {
            Some(format!("{} replicas of revision {} keep failing", plan.failing, e.d.revision))
        } else if now.saturating_sub(r.progress_ms) > deadline_ms {
            Some(format!("revision {} made no progress in {} s", e.d.revision, e.d.strategy.progress_deadline_seconds))
        } else {
            None
        };
        let Some(why) = why else {
            tx.put_deployment(&e.d)?;
            return Ok(false);
        };
        let good = r.from_revision;
        let spec = self.revisions.get(&(name.to_string(), good)).cloned();
        self.mutated = true;
        match spec {
            Some(spec) if e.d.strategy.auto_rollback && good != e.d.revision => {
                let bad = e.d.revision;
                e.d.revision = good;
                e.d.spec = spec;
                e.d.rollout = Rollout {
                    state: RolloutState::RolledBack,
                    from_revision: good,
                    to_revision: bad,
                    started_ms: e.d.rollout.started_ms,
                    progress_ms: now,
                    paused: false,
                    message: format!("rolled back to revision {good}: {why}"),
                };
                tx.put_deployment(&e.d)?;
                tx.event(now, &obj, "RolledBack", &e.d.rollout.message)?;
                tracing::warn!("deployment {name}: {}", e.d.rollout.message);
                Ok(true)
            }
            _ => {
                e.d.rollout.state = RolloutState::Failed;
                e.d.rollout.message = format!("rollout failed: {why}");
                tx.put_deployment(&e.d)?;
                tx.event(now, &obj, "RolloutFailed", &e.d.rollout.message)?;
                Ok(false)
            }
        }
    }

    /// The node a replica of `spec` must go to because a volume it mounts lives
    /// there; an error when its volumes live on different nodes.
    fn volume_node(&self, spec: &WorkloadSpec) -> Result<Option<String>, String> {
        let mut pinned: Option<&String> = None;
        for m in &spec.volumes {
            let Some(node) = self.volumes.get(&m.name).and_then(|v| v.node.as_ref()) else { continue };
            match pinned {
                Some(p) if p != node => {
                    return Err(format!(
                        "its volumes live on different nodes ({p} and {node}); no node holds them all"
                    ));
                }
                _ => pinned = Some(node),
            }
        }
        Ok(pinned.cloned())
    }

    /// Binds the still unbound volumes of revision `key` to `node`, where its
    /// replica was just placed.
    fn bind_volumes(&mut self, tx: &Tx, key: &(String, u64), node: &str) -> Result<(), ApiError> {
        let Some(spec) = self.revisions.get(key) else { return Ok(()) };
        for m in &spec.volumes {
            if let Some(v) = self.volumes.get_mut(&m.name)
                && v.node.is_none()
            {
                v.node = Some(node.to_string());
                tx.put_volume(v)?;
                tx.event(now_ms(), &format!("volume/{}", v.name), "Bound", &format!("volume lives on node {node}"))?;
                self.mutated = true;
            }
        }
        Ok(())
    }

    /// Records the volumes `spec` names that do not exist yet (unbound: the first
    /// placement decides their node), and refuses a read-write volume that another
    /// deployment mounts.
    fn declare_volumes(&mut self, tx: &Tx, deployment: &str, spec: &WorkloadSpec, now: Millis) -> Result<(), ApiError> {
        for m in &spec.volumes {
            for e in self.deployments.values().filter(|e| e.d.name != deployment) {
                if let Some(other) = e.d.spec.volumes.iter().find(|o| o.name == m.name)
                    && (!other.read_only || !m.read_only)
                {
                    return Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        format!(
                            "volume {} is mounted by deployment {}; a volume mounted read-write belongs to one deployment",
                            m.name, e.d.name
                        ),
                    ));
                }
            }
            if !self.volumes.contains_key(&m.name) || self.purging.contains(&m.name) {
                let v = Volume { name: m.name.clone(), node: None, size: m.size, deployments: vec![], created_ms: now };
                tx.put_volume(&v)?;
                self.purging.remove(&m.name);
                self.volumes.insert(m.name.clone(), v);
                self.mutated = true;
            }
        }
        Ok(())
    }

    /// Every volume, with the deployments that mount it.
    pub fn volumes(&self) -> Vec<Volume> {
        self.volumes
            .values()
            .filter(|v| !self.purging.contains(&v.name))
            .map(|v| {
                let mut v = v.clone();
                v.deployments = self
                    .deployments
                    .values()
                    .filter(|e| e.d.spec.volumes.iter().any(|m| m.name == v.name))
                    .map(|e| e.d.name.clone())
                    .collect();
                v
            })
            .collect()
    }

    /// Forgets volume `name` and tells its node to delete the data.
    fn purge_volume(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), ApiError> {
        let Some(v) = self.volumes.get(name) else { return Ok(()) };
        match v.node.clone() {
            Some(node) => {
                // Kept as a tombstone so the node hears it (and again after a restart).
                tx.put_volume_purge(v)?;
                self.purging.insert(name.to_string());
                self.touched.insert(node);
            }
            None => {
                tx.delete_volume(name)?;
                self.volumes.remove(name);
            }
        }
        tx.event(now, &format!("volume/{name}"), "Purged", "volume deleted with its data")?;
        self.mutated = true;
        Ok(())
    }

    /// Why replicas of `spec` cannot start yet for want of a secret, if they can't.
    fn missing_secret(&self, spec: &WorkloadSpec) -> Option<String> {
        for r in &spec.secrets {
            let Some((secret, _)) = self.secrets.get(&r.secret) else {
                return Some(format!(
                    "secret {:?} not found; create it with `skiff secret create {}`",
                    r.secret, r.secret
                ));
            };
            if let Some(key) = r.env.values().find(|k| !secret.keys.contains(k)) {
                return Some(format!("secret {:?} has no key {key:?}", r.secret));
            }
        }
        None
    }

    /// Places every pending replica that fits somewhere; records why the others don't.
    /// Places at most `limit`; says whether placeable replicas may remain.
    fn schedule(&mut self, tx: &Tx, scoring: Scoring, now: Millis, limit: usize) -> Result<(usize, bool), ApiError> {
        // Replicas of one revision make the same request: once one fits nowhere, the
        // rest of its revision would not either (in this pass).
        let mut unplaceable: HashMap<(String, u64), String> = HashMap::new();
        let mut placed = 0;
        // Placements per deployment, recorded as one event each at the end.
        let mut scheduled: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        // Replicas per deployment that newly cannot be placed, and why: one
        // `Unschedulable` event each, only when the reason changes (not every pass).
        let mut unschedulable: BTreeMap<String, (usize, String)> = BTreeMap::new();
        // Walks the pending queue in place (placing removes entries, recording a
        // reason keeps them) rather than copying a queue that may hold a million ids.
        let mut cursor: Option<(Millis, String)> = None;
        let mut more = false;
        // The nodes' runtimes as placement reads them; no node joins, leaves or
        // changes its runtimes during a pass.
        let mut runtimes: Option<Vec<u8>> = None;
        loop {
            let next = match &cursor {
                None => self.pending.iter().next(),
                Some(c) => self.pending.range((Bound::Excluded(c), Bound::Unbounded)).next(),
            };
            let Some(entry) = next.cloned() else { break };
            if placed >= limit {
                more = true;
                break;
            }
            let id = entry.1.clone();
            cursor = Some(entry);
            let Some(r) = self.replicas.get(&id) else { continue };
            let key = (r.deployment.clone(), r.revision);
            let reason = match unplaceable.get(&key) {
                Some(reason) => Err(reason.clone()),
                None => {
                    let (Some(spec), Some(e)) = (self.revisions.get(&key), self.deployments.get(&r.deployment)) else {
                        continue;
                    };
                    if let Some(missing) = self.missing_secret(spec) {
                        unplaceable.insert(key, missing.clone());
                        if r.reason.as_deref() != Some(missing.as_str()) {
                            self.update(tx, &id, |r| r.reason = Some(missing))?;
                        }
                        continue;
                    }
                    let pinned = match self.volume_node(spec) {
                        Ok(p) => p,
                        Err(why) => {
                            unplaceable.insert(key, why.clone());
                            if r.reason.as_deref() != Some(why.as_str()) {
                                self.update(tx, &id, |r| r.reason = Some(why))?;
                            }
                            continue;
                        }
                    };
                    let host_ports = spec.host_ports();
                    let req = placement::Request {
                        resources: spec.resources,
                        runtime: spec.workload.runtime(),
                        constraints: &spec.constraints,
                        spread: &e.spread,
                        scoring,
                        pinned: pinned.as_deref(),
                        host_ports: &host_ports,
                        ports_in_use: &self.ports_in_use,
                    };
                    let runtimes = runtimes.get_or_insert_with(|| placement::runtime_bits(&self.nodes));
                    let decision = placement::place(Snapshot { nodes: &self.nodes, runtimes }, &req, seed_of(&id));
                    match decision.chosen {
                        Some((i, _)) => Ok(self.nodes[i].name.clone()),
                        None => {
                            let summary = decision.summary(self.nodes.len());
                            unplaceable.insert(key, summary.clone());
                            Err(summary)
                        }
                    }
                }
            };
            match reason {
                Ok(node) => {
                    let generation = self.next_generation.max(1);
                    self.next_generation = generation + 1;
                    let dep = r.deployment.clone();
                    self.bind_volumes(tx, &(dep.clone(), r.revision), &node)?;
                    self.update(tx, &id, |r| {
                        r.state = ReplicaState::Assigned;
                        r.node = Some(node.clone());
                        r.generation = generation;
                        r.reason = None;
                    })?;
                    scheduled.entry(dep).or_default().push((id, node));
                    placed += 1;
                }
                Err(why) => {
                    if r.reason.as_deref() != Some(why.as_str()) {
                        let e = unschedulable.entry(r.deployment.clone()).or_insert((0, why.clone()));
                        e.0 += 1;
                        self.update(tx, &id, |r| r.reason = Some(why))?;
                    }
                }
            }
        }
        for (dep, (n, why)) in unschedulable {
            let what =
                if n == 1 { "1 replica stays pending".to_string() } else { format!("{n} replicas stay pending") };
            tx.event(now, &format!("deployment/{dep}"), "Unschedulable", &format!("{what}: {why}"))?;
        }
        if placed > 0 {
            tx.set_meta("next_generation", &self.next_generation.to_string())?;
        }
        for (dep, list) in scheduled {
            tx.event(now, &format!("deployment/{dep}"), "Scheduled", &replicas_message(&list, "placed"))?;
        }
        Ok((placed, more))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn heartbeats_slow_down_and_grace_grows_past_the_rate_limit() {
        let p = Policy::default();
        assert_eq!(p.heartbeat_interval(1), Duration::from_secs(1));
        assert_eq!(p.heartbeat_interval(5000), Duration::from_secs(1));
        assert_eq!(p.node_grace(5000), Duration::from_secs(3));
        assert_eq!(p.heartbeat_interval(20_000), Duration::from_secs(4));
        assert_eq!(p.node_grace(20_000), Duration::from_secs(12));
        let long = Policy { node_grace: Duration::from_secs(30), ..p };
        assert_eq!(long.node_grace(20_000), Duration::from_secs(120));
        let quick = Policy { node_grace: Duration::from_millis(1500), ..p };
        assert_eq!(quick.node_grace(100), Duration::from_millis(1500));
    }

    /// Every legal and illegal transition of the replica state machine, written out.
    #[test]
    fn replica_state_machine() {
        use ReplicaState::*;
        let mut out = String::new();
        for from in ReplicaState::ALL {
            let to: Vec<String> =
                ReplicaState::ALL.iter().filter(|&&t| t != from && from.can_become(t)).map(|t| t.to_string()).collect();
            out.push_str(&format!("{from:>8} -> {}\n", if to.is_empty() { "(none)".into() } else { to.join(" ") }));
        }
        expect_test::expect![[r#"
            pending -> assigned stopped
            assigned -> starting running ready exited failed lost stopped
            starting -> running ready exited failed lost stopped
            running -> starting ready exited failed lost stopped
            ready -> starting running exited failed lost stopped
            exited -> starting running ready failed lost stopped
            failed -> starting running ready exited lost stopped
            lost -> stopped
            stopped -> (none)
        "#]]
        .assert_eq(&out);
        assert_eq!(Lost.become_(Running), Err(IllegalTransition { from: Lost, to: Running }));
        assert_eq!(Stopped.become_(Pending).unwrap_err().to_string(), "replica cannot go from stopped to pending");
        assert!(Pending.become_(Pending).is_ok(), "a repeated report is not a transition");
    }

    fn state() -> (State, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let store = Store::open(&dir.0.join("state.db")).unwrap();
        let keys = Keyring::open(&dir.0).unwrap();
        let st = State::load(store, keys, Policy::default()).unwrap();
        (st, dir)
    }

    /// A directory for one test, removed when dropped, even when the test fails.
    pub(crate) mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("skiff-test-{}-{}", std::process::id(), fastrand::u64(..)));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn node(name: &str, mem_mi: u64) -> RegisterRequest {
        RegisterRequest {
            name: name.into(),
            address: "http://127.0.0.1:1".into(),
            labels: BTreeMap::new(),
            capacity: Resources::new(4000, mem_mi << 20),
            runtimes: vec![Runtime::Wasm],
            ingress: None,
        }
    }

    fn spec(mem_mi: u64) -> WorkloadSpec {
        WorkloadSpec {
            workload: Workload::Wasm("sha256:00".into()),
            resources: Resources::new(100, mem_mi << 20),
            env: BTreeMap::new(),
            args: vec![],
            restart: RestartPolicy::Always,
            constraints: BTreeMap::new(),
            secrets: vec![],
            allowed_hosts: vec![],
            volumes: vec![],
            probes: Default::default(),
            http_port: None,
            ports: vec![],
            network: Default::default(),
            stop_grace_period: None,
            volume_lease: false,
        }
    }

    fn per_node(st: &State) -> Vec<(String, u32, u64)> {
        st.mem().nodes().iter().map(|n| (n.name.clone(), n.replicas, n.allocated.memory.0 >> 20)).collect()
    }

    /// Each deployment's spread counts, recounted from its placed replicas.
    fn spread_recounted(mem: &Mem) -> BTreeMap<String, BTreeMap<usize, u32>> {
        let mut out: BTreeMap<String, BTreeMap<usize, u32>> = BTreeMap::new();
        for r in mem.replicas.values().filter(|r| r.state.is_placed()) {
            if let Some(&i) = r.node.as_ref().and_then(|n| mem.node_idx.get(n)) {
                *out.entry(r.deployment.clone()).or_default().entry(i).or_default() += 1;
            }
        }
        out
    }

    fn spread_kept(mem: &Mem) -> BTreeMap<String, BTreeMap<usize, u32>> {
        mem.deployments
            .iter()
            .filter(|(_, e)| !e.spread.is_empty())
            .map(|(name, e)| (name.clone(), e.spread.iter().map(|(&i, &c)| (i, c)).collect()))
            .collect()
    }

    #[test]
    fn spread_counts_follow_nodes_moved_by_a_removal() {
        let (mut st, _dir) = state();
        for i in 0..4 {
            st.register(node(&format!("n{i}"), 1024)).unwrap();
        }
        for d in ["a", "b"] {
            st.apply(d, ApplyRequest { replicas: Some(6), spec: spec(1), strategy: None, autoscale: None }).unwrap();
        }
        st.schedule().unwrap();
        assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()));
        assert_eq!(spread_kept(st.mem()).len(), 2, "both deployments are placed");
        // The first node goes: the last one takes its index.
        st.remove_node("n0").unwrap();
        assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()), "after removing n0");
        st.schedule().unwrap();
        assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()), "after replacing n0's replicas");
        st.remove_node("n2").unwrap();
        st.schedule().unwrap();
        assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()), "after removing n2");
    }

    #[test]
    fn a_scheduling_pass_places_one_batch_and_leaves_the_rest_for_the_next() {
        let (mut st, _dir) = state();
        // 40 replicas of 100m fit a 4-cpu node: 60 nodes hold more than a batch.
        for i in 0..60 {
            st.register(node(&format!("n{i}"), 1024)).unwrap();
        }
        let total = SCHEDULE_BATCH + 52;
        st.apply("big", ApplyRequest { replicas: Some(total as u32), spec: spec(1), strategy: None, autoscale: None })
            .unwrap();
        assert_eq!(st.schedule().unwrap(), SCHEDULE_BATCH);
        assert!(st.mem().sched_dirty, "a full batch leaves the rest for the next pass");
        assert_eq!(st.schedule().unwrap(), 52);
        assert!(!st.mem().sched_dirty);
        assert!(st.mem().replicas_of("big").all(|r| r.state == ReplicaState::Assigned));
        // One event per deployment and pass, naming the first placements.
        let events = st.store().events(Some("deployment/big"), 10).unwrap();
        let scheduled: Vec<&str> =
            events.iter().filter(|e| e.reason == "Scheduled").map(|e| e.message.as_str()).collect();
        assert_eq!(scheduled.len(), 2, "{scheduled:?}");
        assert!(scheduled[0].starts_with(&format!("{SCHEDULE_BATCH} replicas placed: big-")), "{}", scheduled[0]);
        assert!(scheduled[0].ends_with(&format!(" and {} more", SCHEDULE_BATCH - 10)), "{}", scheduled[0]);
    }

    /// Deployment `name`'s status counted by walking its replicas, as
    /// `Mem::deployment` did before it kept counts.
    fn recount(st: &State, name: &str) -> DeploymentStatus {
        let mem = st.mem();
        let mut s = DeploymentStatus::default();
        for r in mem.replicas_of(name) {
            s.total += 1;
            s.restarts += r.restarts;
            match r.state {
                ReplicaState::Pending => s.pending += 1,
                ReplicaState::Running | ReplicaState::Ready => s.running += 1,
                ReplicaState::Failed | ReplicaState::Exited => s.failed += 1,
                _ => {}
            }
            if mem.serving(r) {
                s.ready += 1;
                s.available += 1;
            }
        }
        s
    }

    fn status(name: &str, state: ReplicaState, generation: u64, restarts: u32) -> ReplicaStatus {
        ReplicaStatus {
            id: name.into(),
            generation,
            state,
            restarts,
            reason: None,
            exit_code: None,
            cpu_seconds: 0.0,
            memory_bytes: 0,
            requests: 0,
        }
    }

    /// A follower's copy applies changed replicas in place (`Mem::apply_replicas`)
    /// and must end as a working set loaded from the store would.
    #[test]
    fn replicas_applied_in_place_match_the_store_loaded_anew() {
        let (mut st, _dir) = state();
        st.register(node("a", 1024)).unwrap();
        st.register(node("b", 1024)).unwrap();
        let apply = |n, mem| ApplyRequest { replicas: Some(n), spec: spec(mem), strategy: None, autoscale: None };
        st.apply("web", apply(8, 100)).unwrap();
        st.apply("api", apply(1, 50)).unwrap();
        let mut copy = Mem::load(st.store()).unwrap();
        let ids = |m: &Mem| m.all_replicas().map(|r| r.id.clone()).collect::<BTreeSet<String>>();
        let mut seen = ids(&copy);
        // Placed, reported running with restarts, scaled down and up.
        st.schedule().unwrap();
        let on_a: Vec<Replica> = st.mem().replicas_on("a").cloned().collect();
        let reports = on_a.iter().map(|r| status(&r.id, ReplicaState::Running, r.generation, 1)).collect();
        st.heartbeat("a", Heartbeat { capacity: Resources::new(4000, 1024 << 20), replicas: reports, delta: false })
            .unwrap();
        st.scale("web", 3).unwrap();
        st.scale("api", 4).unwrap();
        st.schedule().unwrap();
        let fresh = Mem::load(st.store()).unwrap();
        // What the watch delivers for the replicas: each one as it is now, or deleted.
        seen.extend(ids(&fresh));
        let changes = seen.into_iter().map(|id| (id.clone(), fresh.replicas.get(&id).cloned())).collect();
        copy.apply_replicas(changes);
        let view = |m: &Mem| {
            let nodes: Vec<(String, u32, Resources)> =
                m.nodes().iter().map(|n| (n.name.clone(), n.replicas, n.allocated)).collect();
            let deployments: Vec<_> = ["web", "api"].iter().map(|d| m.deployment(d).map(|d| d.status)).collect();
            let pending: Vec<_> = m.pending.iter().cloned().collect();
            (nodes, deployments, ids(m), pending, m.by_node.clone(), m.ports_in_use.clone())
        };
        assert_eq!(view(&copy), view(&fresh));
        let running = fresh.all_replicas().filter(|r| r.state == ReplicaState::Running).count();
        assert!(running > 0 && fresh.pending.is_empty(), "nothing much changed: {running} running");
    }

    #[test]
    fn deployment_counts_follow_every_change_and_a_reload() {
        let (mut st, dir) = state();
        st.register(node("a", 1024)).unwrap();
        st.register(node("b", 1024)).unwrap();
        let apply =
            |replicas| ApplyRequest { replicas: Some(replicas), spec: spec(100), strategy: None, autoscale: None };
        st.apply("web", apply(12)).unwrap();
        st.schedule().unwrap();
        let check = |st: &State| {
            assert_eq!(st.mem().deployment("web").unwrap().status, recount(st, "web"));
            let mut by_revision: BTreeMap<u64, u32> = BTreeMap::new();
            for r in st.mem().replicas_of("web") {
                *by_revision.entry(r.revision).or_default() += 1;
            }
            assert_eq!(st.mem().deployments["web"].by_revision, by_revision);
        };
        check(&st);
        // Reports from a: running, failed with restarts, ready; a delta carries some.
        let on_a: Vec<Replica> = st.mem().replicas_on("a").cloned().collect();
        let states = [ReplicaState::Running, ReplicaState::Failed, ReplicaState::Ready];
        let reports: Vec<ReplicaStatus> =
            on_a.iter().enumerate().map(|(i, r)| status(&r.id, states[i % 3], r.generation, (i % 2) as u32)).collect();
        let hb = Heartbeat { capacity: Resources::new(4000, 1024 << 20), replicas: reports, delta: false };
        st.heartbeat("a", hb).unwrap();
        check(&st);
        let first = on_a.first().unwrap();
        let hb = Heartbeat {
            capacity: Resources::new(4000, 1024 << 20),
            replicas: vec![status(&first.id, ReplicaState::Exited, first.generation, 4)],
            delta: true,
        };
        st.heartbeat("a", hb).unwrap();
        check(&st);
        st.scale("web", 5).unwrap();
        check(&st);
        // A new revision rolls out beside the old one.
        let update = ApplyRequest { replicas: Some(5), spec: spec(101), strategy: None, autoscale: None };
        st.apply("web", update).unwrap();
        st.schedule().unwrap();
        check(&st);
        assert_eq!(st.mem().deployments["web"].by_revision.len(), 2, "both revisions live");
        st.policy.node_grace = Duration::from_millis(1);
        st.liveness.set("a", Instant::now() + Duration::from_secs(60), now_ms(), None);
        std::thread::sleep(Duration::from_millis(5));
        st.check_nodes().unwrap();
        check(&st);
        let before = st.mem().deployment("web").unwrap().status;
        let st = State::load(
            Store::open(&dir.0.join("state.db")).unwrap(),
            Keyring::open(&dir.0).unwrap(),
            Policy::default(),
        )
        .unwrap();
        check(&st);
        assert_eq!(st.mem().deployment("web").unwrap().status, before);
    }

    #[test]
    fn a_node_behind_by_a_few_changes_gets_only_those() {
        let (mut st, dir) = state();
        st.register(node("a", 1024)).unwrap();
        let apply = |n| ApplyRequest { replicas: Some(n), spec: spec(10), strategy: None, autoscale: None };
        st.apply("web", apply(3)).unwrap();
        st.schedule().unwrap();
        let first = st.assignments("a").unwrap();
        assert_eq!((first.replicas.len(), first.delta), (3, false));
        // Its own reports change no assignment: nothing to wake it for.
        let reports =
            first.replicas.iter().map(|a| status(&a.replica, ReplicaState::Running, a.generation, 0)).collect();
        st.heartbeat("a", Heartbeat { capacity: Resources::new(4000, 1024 << 20), replicas: reports, delta: true })
            .unwrap();
        assert_eq!(st.mem().index, first.index, "a report is no change of the set");
        st.apply("web", apply(2)).unwrap();
        st.apply("api", apply(1)).unwrap();
        st.schedule().unwrap();
        let changes = st.assignment_changes("a", first.index).unwrap().expect("the log reaches back");
        let whole = st.assignments("a").unwrap();
        assert!(changes.delta && changes.index == whole.index);
        assert_eq!(changes.replicas.iter().map(|a| a.deployment.as_str()).collect::<Vec<_>>(), ["api"]);
        assert_eq!(changes.removed.len(), 1);
        // Applied to the first set, the changes make the whole set.
        let mut ids: BTreeSet<String> = first.replicas.iter().map(|a| a.replica.clone()).collect();
        ids.retain(|id| !changes.removed.contains(id));
        ids.extend(changes.replicas.iter().map(|a| a.replica.clone()));
        assert_eq!(ids, whole.replicas.iter().map(|a| a.replica.clone()).collect());
        // Caught up: nothing new. Index 0, a future index, or a reloaded
        // working set (no log) get the whole set.
        let now = st.assignment_changes("a", whole.index).unwrap().unwrap();
        assert!(now.replicas.is_empty() && now.removed.is_empty());
        assert!(st.assignment_changes("a", 0).unwrap().is_none());
        assert!(st.assignment_changes("a", whole.index + 1).unwrap().is_none());
        assert!(st.assignment_changes("a", first.index).unwrap().is_none(), "forgotten once the node has it");
        let mut st = State::load(
            Store::open(&dir.0.join("state.db")).unwrap(),
            Keyring::open(&dir.0).unwrap(),
            Policy::default(),
        )
        .unwrap();
        assert!(st.assignment_changes("a", whole.index).unwrap().is_none());
        // Registering again starts over with the whole set.
        st.register(node("a", 1024)).unwrap();
        let index = st.mem().index;
        assert!(st.assignment_changes("a", index - 1).unwrap().is_none());
    }

    #[test]
    fn a_sign_of_life_needs_the_working_set_only_while_it_does_not_hold_the_node() {
        let (mut st, _dir) = state();
        let capacity = Resources::new(4000, 1024 << 20);
        st.register(node("a", 1024)).unwrap();
        let live = st.liveness();
        assert_eq!(live.beat("a", Some(capacity)), Some(true), "registered: the working set holds it");
        assert_eq!(live.beat("a", Some(Resources::new(2000, 1024 << 20))), Some(false), "a new capacity");
        assert_eq!(live.beat("a", None), Some(false), "statuses to apply");
        assert_eq!(live.beat("x", Some(capacity)), None, "not registered");
        // Down: its next heartbeat, even without statuses, must bring it back.
        st.policy.node_grace = Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(5));
        st.check_nodes().unwrap();
        assert_eq!(st.mem().node("a").unwrap().state, NodeState::Down);
        assert_eq!(live.beat("a", Some(capacity)), Some(false));
        st.heartbeats(vec![("a".into(), Heartbeat { capacity, replicas: vec![], delta: true })]);
        assert_eq!(st.mem().node("a").unwrap().state, NodeState::Ready);
        assert_eq!(live.beat("a", Some(capacity)), Some(true));
        // Its time reaches the node listing without a report applied.
        let before = st.mem().node("a").unwrap().last_heartbeat_ms;
        std::thread::sleep(Duration::from_millis(5));
        live.beat("a", Some(capacity));
        st.note_heartbeat_times();
        assert!(st.mem().node("a").unwrap().last_heartbeat_ms > before);
    }

    #[test]
    fn places_by_resources_reloads_intact_and_replaces_a_dead_node() {
        let (mut st, dir) = state();
        st.register(node("a", 300)).unwrap();
        st.register(node("b", 200)).unwrap();
        st.register(node("c", 100)).unwrap();
        let resp = st
            .apply("web", ApplyRequest { replicas: Some(6), spec: spec(100), strategy: None, autoscale: None })
            .unwrap();
        assert_eq!(resp.outcome, ApplyOutcome::Created);
        assert_eq!(st.schedule().unwrap(), 6);
        let expected = vec![("a".into(), 3, 300), ("b".into(), 2, 200), ("c".into(), 1, 100)];
        assert_eq!(per_node(&st), expected);

        // Applying the same thing again changes nothing.
        let again = st
            .apply("web", ApplyRequest { replicas: Some(6), spec: spec(100), strategy: None, autoscale: None })
            .unwrap();
        assert_eq!(again.outcome, ApplyOutcome::Unchanged);

        // A seventh replica fits nowhere and says why.
        st.scale("web", 7).unwrap();
        st.schedule().unwrap();
        let pending: Vec<_> = st.mem().replicas_of("web").filter(|r| r.state == ReplicaState::Pending).collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].reason.as_deref(), Some("0/3 nodes fit: 3 insufficient memory"));

        // Reload from disk: the same objects and allocations.
        let before: BTreeMap<String, Replica> = st.mem().all_replicas().map(|r| (r.id.clone(), r.clone())).collect();
        drop(st);
        let store = Store::open(&dir.0.join("state.db")).unwrap();
        let keys = Keyring::open(&dir.0).unwrap();
        let mut st = State::load(store, keys, Policy { node_grace: Duration::ZERO, ..Policy::default() }).unwrap();
        let after: BTreeMap<String, Replica> = st.mem().all_replicas().map(|r| (r.id.clone(), r.clone())).collect();
        assert_eq!(before, after);
        assert_eq!(per_node(&st), expected);

        // Node c stops heartbeating (grace zero): its replica is lost, replaced, and
        // with c gone the pending one still fits nowhere.
        st.heartbeat("a", Heartbeat { capacity: Resources::new(4000, 300 << 20), replicas: vec![], delta: false })
            .unwrap();
        st.heartbeat("b", Heartbeat { capacity: Resources::new(4000, 200 << 20), replicas: vec![], delta: false })
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        st.policy.node_grace = Duration::from_millis(1);
        // Keep a and b fresh; only c misses.
        for n in ["a", "b"] {
            st.liveness.set(n, Instant::now() + Duration::from_secs(60), now_ms(), None);
        }
        st.check_nodes().unwrap();
        st.schedule().unwrap();
        assert_eq!(st.mem().node("c").unwrap().state, NodeState::Down);
        assert_eq!(st.mem().replicas_of("web").count(), 7);
        assert_eq!(st.mem().replicas_of("web").filter(|r| r.state == ReplicaState::Pending).count(), 2);

        // Scale down to 2: pending replicas go first.
        st.scale("web", 2).unwrap();
        assert!(st.mem().replicas_of("web").all(|r| r.state == ReplicaState::Assigned));
        st.delete("web", false).unwrap();
        assert_eq!(st.mem().all_replicas().count(), 0);
        assert!(st.mem().nodes().iter().all(|n| n.allocated == Resources::default()));
    }

    #[test]
    fn an_apply_without_autoscale_turns_it_off_and_keeps_the_count_unless_told() {
        let (mut st, _dir) = state();
        let auto = skiff_api::Autoscale {
            min: 1,
            max: 5,
            target_cpu_percent: Some(50),
            target_requests_per_second: None,
            window_seconds: 10,
            stabilization_seconds: 10,
            scale_up_stabilization_seconds: 0,
        };
        let req = |replicas: Option<u32>, autoscale: Option<skiff_api::Autoscale>| ApplyRequest {
            replicas,
            spec: spec(10),
            strategy: None,
            autoscale,
        };
        let count = |st: &State| st.mem().deployment("web").map(|d| (d.replicas, d.autoscale.is_some()));
        st.apply("web", req(Some(2), Some(auto))).unwrap();
        st.autoscale("web", 4, "busy").unwrap();
        assert_eq!(count(&st), Some((4, true)));
        // While it autoscales, `replicas` in an apply changes nothing.
        assert_eq!(st.apply("web", req(Some(1), Some(auto))).unwrap().outcome, ApplyOutcome::Unchanged);
        assert!(st.scale("web", 2).is_err());

        // Applied without autoscale or a count: off, at the count it had.
        assert_eq!(st.apply("web", req(None, None)).unwrap().outcome, ApplyOutcome::Updated);
        assert_eq!(count(&st), Some((4, false)));
        let events = st.store().events(Some("deployment/web"), 20).unwrap();
        assert!(
            events.iter().any(|e| e.reason == "AutoscaleOff" && e.message == "autoscale off; 4 replicas until scaled")
        );
        assert_eq!(st.apply("web", req(None, None)).unwrap().outcome, ApplyOutcome::Unchanged);
        // The autoscaler no longer moves it; a hand does.
        st.autoscale("web", 1, "idle").unwrap();
        assert_eq!(count(&st), Some((4, false)));
        st.scale("web", 3).unwrap();
        assert_eq!(count(&st), Some((3, false)));
        assert_eq!(st.mem().replicas_of("web").count(), 3);

        // On again (the count kept within the bounds), then off with a count: that count.
        st.apply("web", req(None, Some(auto))).unwrap();
        assert_eq!(count(&st), Some((3, true)));
        st.apply("web", req(Some(1), None)).unwrap();
        assert_eq!(count(&st), Some((1, false)));
        // A new deployment without a count gets one replica.
        st.apply("api", ApplyRequest { replicas: None, spec: spec(10), strategy: None, autoscale: None }).unwrap();
        assert_eq!(st.mem().deployment("api").map(|d| d.replicas), Some(1));
    }
}
