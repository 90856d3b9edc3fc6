//! Nodes: registration, heartbeats, liveness (outside the state lock) and a
//! node going down or removed.

use super::*;

pub(super) struct NodeLive {
    pub(super) tx: watch::Sender<u64>,
}

/// When each registered node last heartbeated. It lives outside the state lock:
/// a heartbeat counts the moment its request arrives, however long the
/// controllers hold the lock, so a busy scheduler never declares a live node
/// down for its own delay.
#[derive(Default)]
pub struct Liveness(std::sync::Mutex<HashMap<String, Beat>>);

/// A node's last heartbeat, and what the working set already holds of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Beat {
    pub(super) at: Instant,
    pub(super) at_ms: Millis,
    /// The capacity the working set holds for the node while it is up; `None`
    /// when it is down (or not yet confirmed), so that its next heartbeat must
    /// reach the working set.
    pub(super) applied: Option<Resources>,
}

impl Liveness {
    pub(super) fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Beat>> {
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
    pub(super) fn set(&self, name: &str, at: Instant, at_ms: Millis, applied: Option<Resources>) {
        self.map().insert(name.to_string(), Beat { at, at_ms, applied });
    }

    /// Records what the working set now holds of node `name` (`None`: down).
    pub(super) fn applied(&self, name: &str, capacity: Option<Resources>) {
        if let Some(b) = self.map().get_mut(name) {
            b.applied = capacity;
        }
    }

    pub(super) fn remove(&self, name: &str) {
        self.map().remove(name);
    }

    pub(super) fn last(&self, name: &str) -> Option<Instant> {
        self.map().get(name).map(|b| b.at)
    }
}

/// Below this many live nodes every silent node is declared down; from it on,
/// more than half of them falling silent at once is taken for the scheduler's
/// own trouble (a stall, its network), as Kubernetes' node lifecycle controller
/// stops evicting when most of a large zone looks unhealthy.
pub(super) const MASS_SILENCE_MIN_NODES: usize = 10;

impl State {
    pub fn register(&mut self, req: RegisterRequest) -> Result<RegisterResponse, Error> {
        validate_name(&req.name).map_err(Error::Invalid)?;
        let now = now_ms();
        let node = self.transact(|mem, tx| mem.register(tx, req, now))?;
        let index = self.mem.index;
        self.live.entry(node.name.clone()).or_insert_with(|| NodeLive { tx: watch::Sender::new(index) });
        self.liveness.set(&node.name, Instant::now(), now, Some(node.capacity));
        Ok(RegisterResponse { node, heartbeat_interval_ms: 0, credential: None })
    }

    /// One heartbeat on its own (the server batches them: [`State::heartbeats`]).
    #[cfg(test)]
    pub fn heartbeat(&mut self, name: &str, hb: Heartbeat) -> Result<(), Error> {
        self.liveness.beat(name, None);
        self.heartbeats(vec![(name.to_string(), hb)]).pop().unwrap_or(Ok(()))
    }

    /// Many heartbeats in one transaction (group commit, see `heartbeats.rs`), with
    /// one result per heartbeat. If the batch fails, each is applied again on its
    /// own, so that one bad report fails only its own node. Their arrival, the
    /// sign of life, was recorded in [`Liveness`] when each request came in, not
    /// when the lock let it through.
    pub fn heartbeats(&mut self, batch: Vec<(String, Heartbeat)>) -> Vec<Result<(), Error>> {
        let mut results: Vec<Result<(), Error>> = batch
            .iter()
            .map(|(name, _)| match self.live.contains_key(name) {
                true => Ok(()),
                false => Err(Error::NotFound(format!("node {name:?} is not registered; register it first"))),
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
    pub fn watch(&self, name: &str) -> Result<watch::Receiver<u64>, Error> {
        self.live
            .get(name)
            .map(|l| l.tx.subscribe())
            .ok_or_else(|| Error::NotFound(format!("node {name:?} is not registered; register it first")))
    }

    /// Marks nodes that missed their heartbeats as down and replaces their replicas.
    pub fn check_nodes(&mut self) -> Result<(), Error> {
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
    pub fn remove_node(&mut self, name: &str) -> Result<(), Error> {
        if self.mem.node(name).is_none() {
            return Err(Error::NotFound(format!("node {name:?} not found; `skiff get nodes` lists them")));
        }
        let now = now_ms();
        self.transact(|mem, tx| mem.remove_node(tx, name, now))?;
        self.live.remove(name);
        self.liveness.remove(name);
        Ok(())
    }
}

impl Mem {
    pub(super) fn register(&mut self, tx: &Tx, req: RegisterRequest, now: Millis) -> Result<Node, Error> {
        self.fx.mutated = true;
        self.sched_dirty = true;
        self.fx.endpoints_dirty = true;
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
                    unschedulable: false,
                    drain: None,
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

    pub(super) fn heartbeat(&mut self, tx: &Tx, name: &str, hb: &Heartbeat, now: Millis) -> Result<(), Error> {
        let Some(&i) = self.node_idx.get(name) else {
            return Err(Error::NotFound(format!("node {name:?} is not registered; register it first")));
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
                self.fx.mutated = true;
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
            let obj = super::jobs::owner_object(&r.deployment);
            if st.state != r.state && matches!(st.state, ReplicaState::Failed) {
                let why = st.reason.clone().unwrap_or_else(|| "no reason given".into());
                tx.event(now, &obj, "ReplicaFailed", &format!("replica {} failed on {name}: {why}", r.id))?;
            }
            if st.state != r.state
                && matches!(st.state, ReplicaState::Running | ReplicaState::Ready)
                && r.state == ReplicaState::Assigned
            {
                // One event per deployment and batch (`Mem::record_started`).
                self.fx.started.entry(r.deployment.clone()).or_default().push((r.id.clone(), name.to_string()));
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
    pub(super) fn record_started(&mut self, tx: &Tx, now: Millis) -> Result<(), Error> {
        for (dep, list) in std::mem::take(&mut self.fx.started) {
            tx.event(now, &super::jobs::owner_object(&dep), "Started", &replicas_message(&list, "running"))?;
        }
        Ok(())
    }

    /// Marks nodes `names` down and their replicas lost, then reconciles the
    /// deployments they held: once each, however many of the nodes going down
    /// at once held them (a reconcile walks every replica of its deployment).
    pub(super) fn nodes_down(&mut self, tx: &Tx, names: &[String], why: &str, now: Millis) -> Result<(), Error> {
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
    pub(super) fn mark_down(
        &mut self,
        tx: &Tx,
        name: &str,
        why: &str,
        now: Millis,
        deployments: &mut BTreeSet<String>,
    ) -> Result<(), Error> {
        let Some(&i) = self.node_idx.get(name) else { return Ok(()) };
        self.nodes[i].state = NodeState::Down;
        tx.put_node(&self.nodes[i])?;
        self.fx.mutated = true;
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
                    &super::jobs::owner_object(&r.deployment),
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

    pub(super) fn remove_node(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), Error> {
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
        self.fx.touched.remove(name);
        self.changes.remove(name);
        self.fx.changed.retain(|(n, _)| n != name);
        self.fx.endpoints_dirty = true;
        tx.delete_node(name)?;
        tx.event(now, &format!("node/{name}"), "NodeRemoved", "removed; it can come back only by joining again")?;
        Ok(())
    }
}
