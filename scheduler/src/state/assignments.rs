//! A node's desired set (its assignments), and the per-node log of changes that
//! lets a node behind by a few changes get only those.

use super::*;

/// The recent changes of one node's desired set.
#[derive(Debug, Default)]
pub(super) struct NodeChanges {
    /// Every change after this index is in `entries`.
    pub(super) since: u64,
    /// (index, replica) in index order.
    pub(super) entries: std::collections::VecDeque<(u64, String)>,
}

/// Most changes kept per node (about 50 bytes each); a node further behind
/// gets its whole set.
pub(super) const MAX_NODE_CHANGES: usize = 512;

impl State {
    /// Node `name`'s desired set, with the values of the secrets its replicas use.
    pub fn assignments(&self, name: &str) -> Result<Assignments, Error> {
        let mut a = self.mem.assignments(name);
        self.complete(&mut a)?;
        Ok(a)
    }

    /// Adds to an answer of node assignments the volume lease and the secrets.
    pub(super) fn complete(&self, a: &mut Assignments) -> Result<(), Error> {
        // A node with a leased volume stops its writer once it has not reached us
        // for as long as we wait before counting it down (`volumes::Lease`).
        a.lease_ms = u64::try_from(self.policy.node_grace(self.mem.nodes.len()).as_millis()).unwrap_or(u64::MAX);
        for asg in &mut a.replicas {
            for r in &asg.spec.secrets {
                if asg.secrets.contains_key(&r.secret) {
                    continue;
                }
                let Some((_, sealed)) = self.mem.secrets.get(&r.secret) else { continue };
                let values = self.keyring.open_sealed(&r.secret, sealed).map_err(|e| Error::Internal(e.to_string()))?;
                asg.secrets.insert(r.secret.clone(), values);
            }
            if asg.registry_auth.is_none()
                && let Workload::Image(image) = &asg.spec.workload
            {
                asg.registry_auth = self.registry_credential(image)?;
            }
        }
        Ok(())
    }

    /// What changed in node `name`'s desired set since `index` (the index of
    /// the set it holds), with the values of the secrets its changed replicas
    /// use; `None` when only the whole set can say it.
    pub fn assignment_changes(&mut self, name: &str, index: u64) -> Result<Option<Assignments>, Error> {
        let Some(mut a) = self.mem.assignment_changes(name, index) else { return Ok(None) };
        self.complete(&mut a)?;
        Ok(Some(a))
    }
}

impl Mem {
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

    pub(super) fn assignment(&self, r: &Replica) -> Option<Assignment> {
        let mut spec = self.revisions.get(&(r.deployment.clone(), r.revision))?.clone();
        // A job's run: which index it is (`jobs.rs`).
        if let Some(env) = self.run_env(r) {
            spec.env.extend(env);
        }
        // A namespace with `isolation: namespace` (#20): its HTTP components'
        // outbound calls reach only its own namespace (`node/src/http/outbound.rs`).
        // Set last, so a spec cannot say otherwise; read at a replica's start.
        if self.isolated(skiff_api::namespace::of(&r.deployment)) {
            spec.env.insert(skiff_api::namespace::ISOLATION_ENV.into(), "namespace".into());
        }
        Some(Assignment {
            replica: r.id.clone(),
            deployment: r.deployment.clone(),
            revision: r.revision,
            generation: r.generation,
            spec,
            secrets: BTreeMap::new(),
            registry_auth: None,
        })
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
    pub(super) fn tell(&mut self, node: String, id: String) {
        self.fx.touched.insert(node.clone());
        self.fx.changed.push((node, id));
    }

    /// Node `node` must hear its whole desired set again (registered anew, back
    /// from down): its long poll wakes and its change log starts over.
    pub(super) fn tell_whole(&mut self, node: String) {
        self.fx.touched.insert(node.clone());
        self.fx.whole.insert(node);
    }

    /// Logs this transaction's changes of node sets at the new index.
    pub(super) fn log_changes(&mut self, whole: BTreeSet<String>, changed: Vec<(String, String)>) {
        let index = self.index;
        for node in whole {
            self.changes.insert(node, NodeChanges { since: index, entries: Default::default() });
        }
        for (node, id) in changed {
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
}
