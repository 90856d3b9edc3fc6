//! Scheduling passes: pending replicas placed in batches (`placement::place`).

use super::*;

/// Most replicas one scheduling pass places (one transaction, one hold of the
/// lock): about 50 ms of work at 5,000 nodes.
pub(super) const SCHEDULE_BATCH: usize = 2048;

/// A seed from a replica id: the same replica gets the same placement order.
pub(super) fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

impl State {
    /// Places pending replicas; returns how many were placed.
    pub fn schedule(&mut self) -> Result<usize, Error> {
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
}

impl Mem {
    /// Places every pending replica that fits somewhere; records why the others don't.
    /// Places at most `limit`; says whether placeable replicas may remain.
    pub(super) fn schedule(
        &mut self,
        tx: &Tx,
        scoring: Scoring,
        now: Millis,
        limit: usize,
    ) -> Result<(usize, bool), Error> {
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
                    // A deployment's replica, or a job's run (spread among the job's runs).
                    let spread = match self.deployments.get(&r.deployment) {
                        Some(e) => Some(&e.spread),
                        None => self.job_spread(&r.deployment),
                    };
                    let (Some(spec), Some(spread)) = (self.revisions.get(&key), spread) else {
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
                        spread,
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
            tx.event(now, &jobs::owner_object(&dep), "Unschedulable", &format!("{what}: {why}"))?;
        }
        if placed > 0 {
            tx.set_meta("next_generation", &self.next_generation.to_string())?;
        }
        for (dep, list) in scheduled {
            tx.event(now, &jobs::owner_object(&dep), "Scheduled", &replicas_message(&list, "placed"))?;
        }
        Ok((placed, more))
    }
}
