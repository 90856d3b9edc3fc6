//! What a live replica adds to the working set's indexes (deployment and node
//! sets, allocations, spread, ports, status counts), and [`Mem::update`], the one
//! place that changes a replica.

use super::*;

pub(super) struct DeploymentEntry {
    pub(super) d: Deployment,
    /// Placed replicas of this deployment per node, by the node's index in
    /// `Mem::nodes` (for spreading).
    pub(super) spread: crate::placement::Spread,
    /// Its live replicas counted by state, kept by `index_replica` and
    /// `unindex_replica`: a status read (`GET /v1/deployments`, polled by
    /// watchers) must not walk every replica under the lock.
    pub(super) counts: Counts,
    /// Its live replicas per revision (same keeper): a deployment at its count
    /// with all of them on the current revision and no rollout under way has
    /// nothing to reconcile, without a walk of its replicas.
    pub(super) by_revision: BTreeMap<u64, u32>,
}

impl DeploymentEntry {
    /// Deployment `d`, before any replica of it is indexed.
    pub(super) fn new(d: Deployment) -> DeploymentEntry {
        DeploymentEntry { d, spread: Default::default(), counts: Counts::default(), by_revision: BTreeMap::new() }
    }
}

/// A deployment's live replicas by what its status reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) total: u32,
    pub(super) pending: u32,
    pub(super) running: u32,
    pub(super) failed: u32,
    pub(super) restarts: u32,
    /// Passing readiness (`Mem::serving`).
    pub(super) serving: u32,
}

impl Counts {
    /// Adds (`add`) or takes away one replica `r`, `serving` or not.
    pub(super) fn count(&mut self, r: &Replica, serving: bool, add: bool) {
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

/// Whether a replica in `state` serves: ready, or running when its revision
/// has no readiness probe (`probed` asked only then). Spelled once for
/// `Mem::serving` and the reconcile's walk, which knows its current revision's
/// spec without a lookup.
pub(super) fn serves(state: ReplicaState, probed: impl FnOnce() -> bool) -> bool {
    match state {
        ReplicaState::Ready => true,
        ReplicaState::Running => !probed(),
        _ => false,
    }
}

impl Mem {
    /// Whether a replica passes readiness: it is ready, or running when its
    /// revision has no readiness probe (then running is all there is to know).
    /// Available is serving for `min_ready_seconds`.
    pub(super) fn serving(&self, r: &Replica) -> bool {
        serves(r.state, || {
            // Without its spec, not known to serve.
            self.revisions.get(&(r.deployment.clone(), r.revision)).is_none_or(|s| s.probes.readiness.is_some())
        })
    }

    pub(super) fn resources_of(&self, r: &Replica) -> Resources {
        self.revisions.get(&(r.deployment.clone(), r.revision)).map(|s| s.resources).unwrap_or_default()
    }

    pub(super) fn host_ports_of(&self, r: &Replica) -> Vec<skiff_api::HostPort> {
        self.revisions.get(&(r.deployment.clone(), r.revision)).map(|s| s.host_ports()).unwrap_or_default()
    }

    pub(super) fn index_replica(&mut self, r: &Replica) {
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
                } else if let Some(spread) = self.job_spread_mut(&r.deployment) {
                    *spread.entry(i).or_default() += 1;
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

    pub(super) fn unindex_replica(&mut self, r: &Replica) {
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
                let spread = match self.deployments.get_mut(&r.deployment) {
                    Some(e) => Some(&mut e.spread),
                    None => self.job_spread_mut(&r.deployment),
                };
                if let Some(spread) = spread
                    && let Some(c) = spread.get_mut(&i)
                {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        spread.remove(&i);
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
    pub(super) fn update(&mut self, tx: &Tx, id: &str, f: impl FnOnce(&mut Replica)) -> Result<(), Error> {
        let Some(old) = self.replicas.get(id).cloned() else {
            return Ok(());
        };
        let mut new = old.clone();
        f(&mut new);
        if let Err(e) = old.state.become_(new.state) {
            return Err(Error::Internal(format!("replica {id}: {e}")));
        }
        if new == old {
            return Ok(());
        }
        if new.state != old.state {
            new.updated_ms = now_ms();
        }
        self.fx.mutated = true;
        // A job's run that ended: its job moves on at the controllers' next
        // pass, which this wakes (`heartbeats::run` wakes them for a non-empty
        // `reconcile_due`), rather than at their 250 ms tick.
        if new.state != old.state
            && matches!(new.state, ReplicaState::Exited | ReplicaState::Failed)
            && super::jobs::job_of(&new.deployment).is_some()
        {
            self.reconcile_due.insert(new.deployment.clone());
        }
        if old.state == ReplicaState::Ready || new.state == ReplicaState::Ready {
            self.fx.endpoint_names.insert(new.deployment.clone());
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
}
