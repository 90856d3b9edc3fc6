//! Cordon, drain and rebalance: replicas leave a node the way a rollout replaces
//! an old revision's, the replacement first.
//!
//! A cordoned node (`Node::unschedulable`, kept in its stored body) takes no new
//! replica (`placement` turns it away) and keeps what it runs. A drain
//! (`Node::drain`, stored too, so it survives the CLI going away and a scheduler
//! restart) cordons the node and marks each replica on it that can run elsewhere
//! as *leaving* (`Moves::leaving`). The deployment controller treats a leaving
//! replica as one of an old revision (`Mem::reconcile`, `rollout::plan`): it
//! creates the replacement (placement sends it elsewhere), waits until it is
//! available — ready, when the leaving one was ready, so that it is in the
//! endpoints table before the old one leaves it — and only then stops the old
//! one, within the deployment's `maxSurge`/`maxUnavailable`. Replicas that
//! cannot move (a volume on this node, constraints no other node meets) stay
//! and are reported (`NodeDrain::stuck`) unless the drain is forced, which
//! stops them.
//!
//! Rebalancing uses the same path: a deployment with `rebalance: true` (or named
//! by `skiff rebalance`) whose replicas are spread worse than they could be over
//! the nodes that can take them gets one replica marked leaving at a time
//! ([`choose_move`], pure), at most `Policy::rebalance_per_minute` in the whole
//! cluster, each with a `Rebalancing` event that says why.
//!
//! The leaving marks live in memory: after a restart a drain marks its node's
//! replicas again at the next pass, and a rebalance move is chosen anew (a
//! replacement that had started is then one too many, and the reconcile scales
//! it down like any surplus).

use super::*;
use std::collections::VecDeque;

/// Replicas on their way off their node, and what the rebalancer remembers.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    /// Replicas the reconcile replaces elsewhere before it stops them, by id.
    pub(super) leaving: BTreeMap<String, Leaving>,
    /// Deployments to rebalance once (`skiff rebalance`), until even.
    pub(super) once: BTreeSet<String>,
    /// When the rebalance moves of the last minute started.
    pub(super) recent: VecDeque<Millis>,
    /// Leaving replicas out of the endpoints table, waiting for every ingress
    /// to hold a table without them before they stop.
    pub(super) unrouted: BTreeMap<String, Unrouted>,
    /// The endpoints index each node's ingress holds: the index it last asked
    /// with (it asks again as soon as it has applied an answer).
    pub(super) acks: HashMap<String, u64>,
}

/// A leaving replica taken out of the endpoints table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unrouted {
    pub(super) since_ms: Millis,
    /// The first endpoints index without it, once its transaction committed.
    pub(super) index: Option<u64>,
}

/// Longest a replica out of the endpoints table waits for every ingress to
/// confirm it has the table without it (a node that does not answer is soon
/// down; until then another ingress passes a stray request on, one hop).
const UNROUTE_WAIT_MS: u64 = 2000;

/// A replica leaving its node.
#[derive(Debug, Clone)]
pub(super) struct Leaving {
    pub(super) deployment: String,
    pub(super) node: String,
    /// The reason its stop records: `moved off node n1 (draining)`.
    pub(super) why: String,
}

impl Moves {
    /// Whether replica `id` is to be replaced elsewhere and then stopped.
    pub(super) fn is_leaving(&self, id: &str) -> bool {
        !self.leaving.is_empty() && self.leaving.contains_key(id)
    }

    /// Whether a replica of `deployment` is leaving its node.
    pub(super) fn leaves_from(&self, deployment: &str) -> bool {
        self.leaving.values().any(|l| l.deployment == deployment)
    }

    /// Deployments with a replica leaving its node.
    pub(super) fn leaving_deployments(&self) -> std::collections::HashSet<&str> {
        self.leaving.values().map(|l| l.deployment.as_str()).collect()
    }

    /// Why replica `id` stops, if it stops because it is leaving.
    pub(super) fn why(&self, id: &str) -> Option<String> {
        self.leaving.get(id).map(|l| l.why.clone())
    }

    /// Whether replica `id` is out of the endpoints table, on its way to stop.
    pub(super) fn is_unrouted(&self, id: &str) -> bool {
        !self.unrouted.is_empty() && self.unrouted.contains_key(id)
    }
}

/// A node as the rebalancer weighs it for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub node: String,
    /// Replicas of the deployment it holds.
    pub held: u32,
    /// Whether it has room for one more.
    pub room: bool,
}

/// A rebalance move: one replica from `slots[from]` to `slots[to]`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub from: usize,
    pub to: usize,
    /// `spread: n1 held 4 of 6, n3 had 0`.
    pub why: String,
}

/// Which replica to move, if any: from the node holding most to the one with
/// room holding fewest, when they differ by two or more (moving one then makes
/// the spread better; a difference of one is as even as the count allows).
/// `slots` are the nodes that could run the deployment: ready, not cordoned,
/// its runtime and labels. Ties go to the first slot, so the caller's order
/// (by name) decides.
pub fn choose_move(slots: &[Slot]) -> Option<Move> {
    let total: u32 = slots.iter().map(|s| s.held).sum();
    let from = (0..slots.len()).rev().max_by_key(|&i| slots[i].held)?;
    let to = (0..slots.len()).filter(|&i| slots[i].room).min_by_key(|&i| slots[i].held)?;
    let (a, b) = (&slots[from], &slots[to]);
    (a.held >= b.held + 2).then(|| Move {
        from,
        to,
        why: format!("spread: {} held {} of {total}, {} had {}", a.node, a.held, b.node, b.held),
    })
}

/// Most rebalance moves a minute in the whole cluster by default (`--rebalance-rate`).
pub const REBALANCE_PER_MINUTE: u32 = 10;

impl State {
    /// Cordons node `name` (`on`), or uncordons it, which also ends its drain.
    pub fn cordon(&mut self, name: &str, on: bool) -> Result<Node, Error> {
        let now = now_ms();
        self.transact(|mem, tx| mem.cordon(tx, name, on, now))
    }

    /// Drains node `name`: cordons it and moves its replicas elsewhere (see the
    /// module's comment). Again on a draining node, `force` is added to it.
    pub fn drain(&mut self, name: &str, force: bool) -> Result<Node, Error> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let i = mem.node_index(name)?;
            let n = &mut mem.nodes[i];
            let first = n.drain.is_none();
            let mut d = n.drain.clone().unwrap_or(NodeDrain { started_ms: now, ..NodeDrain::default() });
            let forced = force && !d.force;
            d.force |= force;
            n.drain = Some(d);
            n.unschedulable = true;
            tx.put_node(n)?;
            let held = n.replicas;
            mem.fx.mutated = true;
            let obj = format!("node/{name}");
            if first {
                let msg =
                    format!("draining: its {} move elsewhere{}", replicas(held), if force { "; forced" } else { "" });
                tx.event(now, &obj, "DrainStarted", &msg)?;
            } else if forced {
                tx.event(now, &obj, "DrainForced", "the drain now stops what cannot move")?;
            }
            mem.drain_step(tx, name, now)?;
            mem.node(name).cloned().ok_or_else(|| not_found_node(name))
        })
    }

    /// Marks deployment `only` (every deployment when `None`) for one rebalance
    /// and says which are uneven now, and why.
    pub fn rebalance_once(&mut self, only: Option<&str>) -> Result<BTreeMap<String, String>, Error> {
        if let Some(d) = only
            && !self.mem.deployments.contains_key(d)
        {
            return Err(super::deployments::not_found_deployment(d));
        }
        let names: Vec<String> = match only {
            Some(d) => vec![d.to_string()],
            None => self.mem.deployments.keys().cloned().collect(),
        };
        let mut uneven = BTreeMap::new();
        for name in names {
            if let Some((_, m)) = self.mem.rebalance_choice(&name) {
                uneven.insert(name.clone(), m.why);
                self.mem.moves.once.insert(name);
            }
        }
        Ok(uneven)
    }

    /// Records that node `node`'s ingress holds endpoints table `index` (it
    /// asks for the next change with it).
    pub fn endpoints_held(&mut self, node: &str, index: u64) {
        if self.mem.moves.acks.get(node) != Some(&index) {
            self.mem.moves.acks.insert(node.to_string(), index);
        }
    }

    /// The replicas out of the endpoints table that may stop now: every live
    /// node with an ingress holds a table without them, or they waited
    /// `UNROUTE_WAIT_MS`.
    /// With each, the nodes whose ingress did not confirm in time.
    fn unrouted_done(&mut self, now: Millis) -> Vec<(String, Vec<String>)> {
        let index = *self.endpoints.borrow();
        let moves = &mut self.mem.moves;
        // A transaction that took a replica out has committed by now, and
        // bumped the index: the current one is at least the first without it.
        for u in moves.unrouted.values_mut() {
            u.index.get_or_insert(index);
        }
        let ingresses: Vec<&str> = self
            .mem
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Down && n.ingress.is_some())
            .map(|n| n.name.as_str())
            .collect();
        moves
            .unrouted
            .iter()
            .filter_map(|(id, u)| {
                let behind: Vec<String> = ingresses
                    .iter()
                    .filter(|n| moves.acks.get(**n).is_none_or(|a| Some(*a) < u.index))
                    .map(|n| n.to_string())
                    .collect();
                let done = behind.is_empty() || now.saturating_sub(u.since_ms) >= UNROUTE_WAIT_MS;
                done.then(|| (id.clone(), behind))
            })
            .collect()
    }

    /// The drains' and rebalances' part of a controllers pass: moves each
    /// draining node's replicas on; with `full` (every 2 s), also looks for
    /// deployments to rebalance.
    pub fn moves_pass(&mut self, full: bool) -> Result<(), Error> {
        let draining: Vec<String> =
            self.mem.nodes.iter().filter(|n| n.drain.is_some()).map(|n| n.name.clone()).collect();
        let moving = !self.mem.moves.leaving.is_empty();
        let rebalance =
            full && (!self.mem.moves.once.is_empty() || self.mem.deployments.values().any(|e| e.d.spec.rebalance));
        if draining.is_empty() && !moving && !rebalance {
            return Ok(());
        }
        let now = now_ms();
        let per_minute = self.policy.rebalance_per_minute;
        let unrouted = self.unrouted_done(now);
        self.transact(|mem, tx| {
            mem.forget_gone_moves();
            for (id, behind) in &unrouted {
                mem.stop_unrouted(tx, id, behind, now)?;
            }
            for name in &draining {
                mem.drain_step(tx, name, now)?;
            }
            // Moves under way: the reconcile stops the old replica as soon as
            // its replacement is available.
            let moving: BTreeSet<String> = mem.moves.leaving.values().map(|l| l.deployment.clone()).collect();
            for d in moving {
                mem.reconcile(tx, &d, now)?;
            }
            if rebalance {
                mem.rebalance_step(tx, now, per_minute)?;
            }
            Ok(())
        })
    }
}

/// `1 replica`, `3 replicas`.
pub(crate) fn replicas(n: u32) -> String {
    if n == 1 { "1 replica".into() } else { format!("{n} replicas") }
}

pub(super) fn not_found_node(name: &str) -> Error {
    Error::NotFound(format!("node {name:?} not found; `skiff get nodes` lists them"))
}

impl Mem {
    fn node_index(&self, name: &str) -> Result<usize, Error> {
        self.node_idx.get(name).copied().ok_or_else(|| not_found_node(name))
    }

    fn cordon(&mut self, tx: &Tx, name: &str, on: bool, now: Millis) -> Result<Node, Error> {
        let i = self.node_index(name)?;
        let n = &mut self.nodes[i];
        let was_draining = n.drain.is_some();
        if n.unschedulable == on && !was_draining {
            return Ok(n.clone());
        }
        n.unschedulable = on;
        if !on {
            n.drain = None;
        }
        tx.put_node(n)?;
        let held = n.replicas;
        let node = n.clone();
        self.fx.mutated = true;
        // Freed for placement (uncordoned), or no longer a target.
        self.sched_dirty = true;
        let obj = format!("node/{name}");
        if on {
            let msg = format!("cordoned: it takes no new replicas; its {} keep running", replicas(held));
            tx.event(now, &obj, "Cordoned", &msg)?;
        } else {
            // Replacements already started stay; the reconcile scales the surplus down.
            self.moves.leaving.retain(|_, l| l.node != name);
            let leaving = &self.moves.leaving;
            self.moves.unrouted.retain(|id, _| leaving.contains_key(id));
            self.fx.endpoints_dirty = true;
            let msg = if was_draining {
                "uncordoned: the drain is over; it takes new replicas"
            } else {
                "uncordoned: it takes new replicas"
            };
            tx.event(now, &obj, "Uncordoned", msg)?;
        }
        Ok(node)
    }

    /// Forgets leaving marks of replicas that are gone or no longer on the node
    /// they were leaving.
    fn forget_gone_moves(&mut self) {
        let replicas = &self.replicas;
        self.moves.leaving.retain(|id, l| {
            replicas.get(id).is_some_and(|r| r.node.as_deref() == Some(l.node.as_str()) && r.state.is_placed())
        });
        let leaving = &self.moves.leaving;
        self.moves.unrouted.retain(|id, _| leaving.contains_key(id));
    }

    /// Whether replica `id` is out of the endpoints table on its way to stop:
    /// every ingress is told to drop it before it stops.
    pub fn routed_out(&self, id: &str) -> bool {
        self.moves.is_unrouted(id)
    }

    /// For the reconcile about to stop leaving replica `id`: takes it out of
    /// the endpoints table first if it is in it (ready), and says so (`true`:
    /// do not stop it yet; `stop_unrouted` does once every ingress dropped it).
    pub(super) fn unroute_first(&mut self, id: &str, now: Millis) -> bool {
        if self.moves.is_unrouted(id) {
            return true;
        }
        let Some(r) = self.replicas.get(id).filter(|r| r.state == ReplicaState::Ready) else {
            return false;
        };
        self.fx.endpoint_names.insert(r.deployment.clone());
        self.moves.unrouted.insert(id.to_string(), Unrouted { since_ms: now, index: None });
        self.fx.mutated = true;
        true
    }

    /// Stops leaving replica `id`, which every ingress has dropped (or which
    /// waited long enough), and lets its deployment go on.
    /// `behind`: the nodes whose ingress had not confirmed in time.
    fn stop_unrouted(&mut self, tx: &Tx, id: &str, behind: &[String], now: Millis) -> Result<(), Error> {
        let Some(l) = self.moves.leaving.remove(id) else { return Ok(()) };
        self.moves.unrouted.remove(id);
        let msg = match behind {
            [] => format!("replica {id} stopped, out of every ingress's routes first: {}", l.why),
            nodes => format!(
                "replica {id} stopped {} s after leaving the routes, without the ingress of {} confirming it; they pass a stray request on: {}",
                UNROUTE_WAIT_MS / 1000,
                nodes.join(", "),
                l.why
            ),
        };
        tx.event(now, &format!("deployment/{}", l.deployment), "Moved", &msg)?;
        self.update(tx, id, |r| {
            r.state = ReplicaState::Stopped;
            r.reason = Some(l.why);
        })?;
        self.reconcile(tx, &l.deployment, now)
    }

    /// Why replica `r` of `spec` cannot leave `node`, if it cannot: a volume
    /// there, or no other node could ever run it (its runtime, its labels; room
    /// comes and goes, so it is waited for).
    fn cannot_move(&self, spec: &WorkloadSpec, node: &str) -> Option<String> {
        match self.volume_node(spec) {
            Ok(Some(v)) if v == node => {
                let names: Vec<&str> = spec.volumes.iter().map(|m| m.name.as_str()).collect();
                let kind = if spec.has_writable_volume() { "read-write volume" } else { "volume" };
                return Some(format!("its {kind} {} lives on this node", names.join(", ")));
            }
            Err(why) => return Some(why),
            _ => {}
        }
        let no_ports = HashMap::new();
        let spread = placement::Spread::default();
        let req = placement::Request {
            resources: spec.resources,
            runtime: spec.workload.runtime(),
            constraints: &spec.constraints,
            spread: &spread,
            scoring: Scoring::BinPack,
            pinned: None,
            host_ports: &[],
            ports_in_use: &no_ports,
        };
        let mut rejected = Vec::new();
        let mut others = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name == node {
                continue;
            }
            others += 1;
            match placement::could_take(n, &req) {
                Ok(()) => return None,
                Err(r) => rejected.push((i, r)),
            }
        }
        if others == 0 {
            return Some("no other node is registered".into());
        }
        let d = placement::Decision { chosen: None, rejected, examined: others, feasible: 0 };
        Some(format!("no other node can run it ({})", d.summary(others)))
    }

    /// One step of the drain of node `name`: marks what can move as leaving and
    /// reconciles its deployments, stops what cannot when forced, and records
    /// where the drain stands on the node.
    pub(super) fn drain_step(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), Error> {
        let Some(&i) = self.node_idx.get(name) else { return Ok(()) };
        let Some(drain) = self.nodes[i].drain.clone() else { return Ok(()) };
        let ids: Vec<String> = self.by_node.get(name).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let mut stuck = Vec::new();
        // Job runs finish where they are (they end by themselves); a forced
        // drain stops them and their job runs the index again elsewhere.
        let mut runs = 0u32;
        let mut deployments = BTreeSet::new();
        // Newly leaving and forced stops, by deployment: one event each.
        let mut newly: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut why_not: HashMap<(String, u64), Option<String>> = HashMap::new();
        for id in ids {
            let Some(r) = self.replicas.get(&id) else { continue };
            let (dep, key) = (r.deployment.clone(), (r.deployment.clone(), r.revision));
            if super::jobs::job_of(&dep).is_some() {
                if drain.force {
                    let reason = format!("stopped by the forced drain of node {name}; its index runs again elsewhere");
                    let obj = super::jobs::owner_object(&dep);
                    tx.event(now, &obj, "DrainStopped", &format!("run {id} {reason}"))?;
                    self.update(tx, &id, |r| {
                        r.state = ReplicaState::Stopped;
                        r.reason = Some(reason);
                    })?;
                } else {
                    runs += 1;
                }
                continue;
            }
            let why = match why_not.get(&key) {
                Some(w) => w.clone(),
                None => {
                    let w = self.revisions.get(&key).and_then(|spec| self.cannot_move(spec, name));
                    why_not.insert(key, w.clone());
                    w
                }
            };
            match why {
                Some(why) if drain.force => {
                    let reason = format!("stopped by the forced drain of node {name}: {why}");
                    tx.event(now, &format!("deployment/{dep}"), "DrainStopped", &format!("replica {id} {reason}"))?;
                    self.update(tx, &id, |r| {
                        r.state = ReplicaState::Stopped;
                        r.reason = Some(reason);
                    })?;
                    deployments.insert(dep);
                }
                Some(why) => stuck.push(format!("{id} (deployment {dep}): {why}")),
                None => {
                    if !self.moves.is_leaving(&id) {
                        let why = format!("moved off node {name} (draining)");
                        self.moves
                            .leaving
                            .insert(id.clone(), Leaving { deployment: dep.clone(), node: name.into(), why });
                        newly.entry(dep.clone()).or_default().push(id);
                    }
                    deployments.insert(dep);
                }
            }
        }
        for (dep, ids) in newly {
            let what = match ids.as_slice() {
                [one] => format!("replica {one}"),
                many => format!("{} replicas ({})", many.len(), many.join(", ")),
            };
            let msg = format!("moving {what} off node {name} (draining): each stops once its replacement is available");
            tx.event(now, &format!("deployment/{dep}"), "Draining", &msg)?;
        }
        for dep in &deployments {
            self.reconcile(tx, dep, now)?;
        }
        self.record_drain(tx, name, stuck, runs, now)
    }

    /// Writes where node `name`'s drain stands, with events when it finishes
    /// or finds replicas it cannot move.
    /// `runs`: job runs left to finish on the node.
    fn record_drain(&mut self, tx: &Tx, name: &str, stuck: Vec<String>, runs: u32, now: Millis) -> Result<(), Error> {
        let Some(&i) = self.node_idx.get(name) else { return Ok(()) };
        let remaining = self.by_node.get(name).map_or(0, BTreeSet::len) as u32;
        let moving = remaining.saturating_sub(stuck.len() as u32).saturating_sub(runs);
        let message = if remaining == 0 {
            "drained: the node holds no replica".to_string()
        } else {
            let mut parts = Vec::new();
            if moving > 0 {
                let mut waiting = format!("moving {}", replicas(moving));
                if let Some(why) = self.replacement_pending(name) {
                    waiting.push_str(&format!("; a replacement is pending: {why}"));
                }
                parts.push(waiting);
            }
            if runs > 0 {
                let what = if runs == 1 { "1 job run".to_string() } else { format!("{runs} job runs") };
                parts.push(format!(
                    "waiting for {what} to finish (--force stops them; their job runs them again elsewhere)"
                ));
            }
            if !stuck.is_empty() {
                parts.push(format!("{} cannot move (--force stops them)", stuck.len()));
            }
            parts.join("; ")
        };
        let Some(old) = self.nodes[i].drain.clone() else { return Ok(()) };
        let new = NodeDrain { done: remaining == 0, remaining, stuck, message, ..old.clone() };
        if new == old {
            return Ok(());
        }
        let obj = format!("node/{name}");
        if new.done && !old.done {
            tx.event(now, &obj, "Drained", "drained: the node holds no replica; `skiff node uncordon` opens it again")?;
        }
        if !new.stuck.is_empty() && new.stuck != old.stuck {
            let msg = format!("{} cannot move: {}", replicas(new.stuck.len() as u32), new.stuck.join("; "));
            tx.event(now, &obj, "DrainBlocked", &msg)?;
        }
        self.nodes[i].drain = Some(new);
        tx.put_node(&self.nodes[i])?;
        self.fx.mutated = true;
        Ok(())
    }

    /// Why a replacement for a replica leaving node `name` waits, if one does.
    fn replacement_pending(&self, name: &str) -> Option<String> {
        let deps: BTreeSet<&str> =
            self.moves.leaving.values().filter(|l| l.node == name).map(|l| l.deployment.as_str()).collect();
        deps.into_iter().find_map(|d| {
            self.replicas_of(d)
                .find(|r| r.state == ReplicaState::Pending && r.reason.is_some())
                .map(|r| format!("{d}: {}", r.reason.clone().unwrap_or_default()))
        })
    }

    /// The move that would even deployment `name`'s spread, if one would, with
    /// the deployment's replica to move.
    fn rebalance_choice(&self, name: &str) -> Option<(String, Move)> {
        let e = self.deployments.get(name)?;
        let spec = &e.d.spec;
        if !spec.volumes.is_empty() {
            return None;
        }
        let no_ports = HashMap::new();
        let req = placement::Request {
            resources: spec.resources,
            runtime: spec.workload.runtime(),
            constraints: &spec.constraints,
            spread: &e.spread,
            scoring: Scoring::BinPack,
            pinned: None,
            host_ports: &[],
            ports_in_use: &no_ports,
        };
        let mut slots: Vec<(usize, Slot)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if placement::could_take(n, &req).is_err() {
                continue;
            }
            let free = n.capacity.saturating_sub(n.allocated);
            let room =
                free.covers(spec.resources) && !spec.host_ports().iter().any(|p| self.node_holds_port(&n.name, p));
            slots.push((i, Slot { node: n.name.clone(), held: e.spread.get(&i).copied().unwrap_or(0), room }));
        }
        slots.sort_by(|a, b| a.1.node.cmp(&b.1.node));
        let only: Vec<Slot> = slots.iter().map(|(_, s)| s.clone()).collect();
        let m = choose_move(&only)?;
        let from = &only[m.from].node;
        // The replica to move: one that serves (it is replaced by one that will),
        // the newest of them.
        let id = self
            .replicas_of(name)
            .filter(|r| r.node.as_deref() == Some(from.as_str()) && self.serving(r))
            .max_by_key(|r| (r.created_ms, r.id.clone()))?
            .id
            .clone();
        Some((id, m))
    }

    fn node_holds_port(&self, node: &str, p: &skiff_api::HostPort) -> bool {
        self.ports_in_use.get(node).is_some_and(|used| used.contains_key(p))
    }

    /// Starts rebalance moves: for each deployment that rebalances (always, or
    /// once) and is settled — at its count, every replica of the current
    /// revision and serving, nothing of it moving — one replica, within the
    /// cluster's rate.
    fn rebalance_step(&mut self, tx: &Tx, now: Millis, per_minute: u32) -> Result<(), Error> {
        while self.moves.recent.front().is_some_and(|t| now.saturating_sub(*t) >= 60_000) {
            self.moves.recent.pop_front();
        }
        let candidates: Vec<String> = self
            .deployments
            .values()
            .filter(|e| e.d.spec.rebalance || self.moves.once.contains(&e.d.name))
            .map(|e| e.d.name.clone())
            .collect();
        for name in candidates {
            let Some(e) = self.deployments.get(&name) else { continue };
            let settled = e.counts.total == e.d.replicas
                && e.counts.serving == e.d.replicas
                && e.by_revision.keys().all(|r| *r == e.d.revision)
                && !self.moves.leaves_from(&name);
            if !settled {
                continue;
            }
            let Some((id, m)) = self.rebalance_choice(&name) else {
                self.moves.once.remove(&name);
                continue;
            };
            if self.moves.recent.len() >= per_minute as usize {
                // The rate is spent: the rest wait for a later pass.
                break;
            }
            let from = self.replicas.get(&id).and_then(|r| r.node.clone()).unwrap_or_default();
            let why = format!("moved to even the spread ({})", m.why);
            self.moves.leaving.insert(id.clone(), Leaving { deployment: name.clone(), node: from.clone(), why });
            self.moves.recent.push_back(now);
            let msg = format!("moving replica {id} off node {from}, its replacement first: {}", m.why);
            tx.event(now, &format!("deployment/{name}"), "Rebalancing", &msg)?;
            self.fx.mutated = true;
            self.reconcile(tx, &name, now)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Wire messages from JSON, so the test keeps compiling as fields are added.
    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid message")
    }

    fn open(dir: &std::path::Path) -> State {
        let store = crate::store::Store::open(&dir.join("state.db")).expect("store");
        let keys = crate::secrets::Keyring::open(dir).expect("keyring");
        State::load(store, keys, Policy::default()).expect("load")
    }

    /// Node `node` reports every replica placed on it `ready`.
    fn all_ready(st: &mut State, node: &str) {
        let replicas: Vec<serde_json::Value> = st
            .mem()
            .replicas_on(node)
            .map(|r| json!({"id": r.id, "generation": r.generation, "state": "ready", "restarts": 0}))
            .collect();
        let hb = from(json!({"capacity": {"cpu": 4000, "memory": 1u64 << 32}, "replicas": replicas}));
        st.heartbeat(node, hb).expect("heartbeat");
    }

    /// Replicas of `web` as `node:state`, sorted.
    fn shown(st: &State) -> Vec<String> {
        let mut v: Vec<String> =
            st.mem().replicas_of("web").map(|r| format!("{}:{}", r.node.as_deref().unwrap_or("-"), r.state)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_drain_starts_the_replacement_first_and_survives_a_restart() {
        let temp = crate::state::tests::tempdir::Dir::new();
        let mut st = open(&temp.0);
        for name in ["n1", "n2", "n3"] {
            st.register(from(json!({
                "name": name, "address": "http://127.0.0.1:1", "labels": {},
                "capacity": {"cpu": 4000, "memory": 1u64 << 32}, "runtimes": ["wasm"], "ingress": "http://127.0.0.1:2",
            })))
            .expect("register");
        }
        let spec = json!({"workload": {"wasm": "sha256:00"}, "resources": {"cpu": 100, "memory": 1 << 20}});
        st.apply("web", from(json!({"replicas": 3, "spec": spec}))).expect("apply");
        st.schedule().expect("schedule");
        for n in ["n1", "n2", "n3"] {
            all_ready(&mut st, n);
        }
        st.reconcile_all().expect("reconcile");
        assert_eq!(shown(&st), ["n1:ready", "n2:ready", "n3:ready"]);

        // Draining n1: its replica keeps serving while a replacement is made.
        let n1 = st.drain("n1", false).expect("drain");
        assert!(n1.unschedulable && n1.drain.as_ref().is_some_and(|d| !d.done && d.remaining == 1), "{n1:?}");
        assert_eq!(shown(&st), ["-:pending", "n1:ready", "n2:ready", "n3:ready"]);
        st.schedule().expect("schedule");
        let placed = shown(&st);
        assert!(!placed.contains(&"n1:assigned".to_string()), "placed on the cordoned node: {placed:?}");

        // The scheduler restarts: the drain is on the node, the leaving mark is
        // found again, and the old replica still waits for its replacement.
        drop(st);
        let mut st = open(&temp.0);
        assert!(st.mem().node("n1").is_some_and(|n| n.unschedulable && n.drain.is_some()));
        st.moves_pass(false).expect("pass");
        assert_eq!(st.mem().replicas_of("web").count(), 4, "{:?}", shown(&st));
        assert!(shown(&st).contains(&"n1:ready".to_string()), "stopped before its replacement served");

        // Running is not enough for a replica that replaces a ready one.
        let new_node =
            st.mem().replicas_of("web").find(|r| r.state == ReplicaState::Assigned).and_then(|r| r.node.clone());
        let new_node = new_node.expect("the replacement is placed");
        let running: Vec<serde_json::Value> = st
            .mem()
            .replicas_on(&new_node)
            .map(|r| json!({"id": r.id, "generation": r.generation, "state": if r.state == ReplicaState::Assigned { "running" } else { "ready" }, "restarts": 0}))
            .collect();
        st.heartbeat(&new_node, from(json!({"capacity": {"cpu": 4000, "memory": 1u64 << 32}, "replicas": running})))
            .expect("heartbeat");
        st.moves_pass(false).expect("pass");
        assert!(shown(&st).contains(&"n1:ready".to_string()), "stopped while its replacement was only running");
        all_ready(&mut st, &new_node);
        st.moves_pass(false).expect("pass");
        // Its replacement serves: the old one leaves the endpoints table first
        // and stops once every ingress holds a table without it.
        assert!(shown(&st).contains(&"n1:ready".to_string()), "stopped before the ingresses dropped it");
        let routed = crate::endpoints::of(st.mem(), "web");
        assert!(routed.len() == 3 && routed.iter().all(|e| e.node != "n1"), "{routed:?}");
        // However slowly this test runs, the wait has not run out.
        st.mem.moves.unrouted.values_mut().for_each(|u| u.since_ms = Millis::MAX / 2);
        let index = *st.endpoints_watch().borrow();
        st.endpoints_held("n2", index);
        st.endpoints_held("n3", index);
        st.endpoints_held("n1", index - 1);
        st.moves_pass(false).expect("pass");
        assert!(shown(&st).contains(&"n1:ready".to_string()), "stopped while n1's ingress held an older table");
        st.endpoints_held("n1", index);
        st.moves_pass(false).expect("pass");
        let now = shown(&st);
        assert_eq!(now.len(), 3, "{now:?}");
        assert!(now.iter().all(|r| r.ends_with(":ready") && !r.starts_with("n1:")), "{now:?}");
        let n1 = st.mem().node("n1").cloned().expect("n1");
        assert!(n1.drain.as_ref().is_some_and(|d| d.done && d.remaining == 0), "{n1:?}");

        // An ingress that never answers holds a stop up for UNROUTE_WAIT_MS only.
        // (n2 may hold two replicas; they move one at a time.)
        st.drain("n2", false).expect("drain n2");
        for _ in 0..3 {
            if st.mem().replicas_on("n2").next().is_none() {
                break;
            }
            st.schedule().expect("schedule");
            all_ready(&mut st, "n3");
            st.moves_pass(false).expect("pass");
            assert!(!st.mem.moves.unrouted.is_empty(), "n2's replica is not out of the table: {:?}", shown(&st));
            st.mem.moves.unrouted.values_mut().for_each(|u| u.since_ms = 0);
            st.moves_pass(false).expect("pass");
        }
        assert!(st.mem().replicas_on("n2").next().is_none(), "{:?}", shown(&st));

        // Uncordoned, it takes replicas again.
        let n1 = st.cordon("n1", false).expect("uncordon");
        assert!(!n1.unschedulable && n1.drain.is_none());
        st.scale("web", 4).expect("scale");
        st.schedule().expect("schedule");
        assert!(shown(&st).contains(&"n1:assigned".to_string()), "{:?}", shown(&st));
    }

    fn slots(spec: &[(&str, u32, bool)]) -> Vec<Slot> {
        spec.iter().map(|(n, h, room)| Slot { node: n.to_string(), held: *h, room: *room }).collect()
    }

    fn show(s: &[Slot]) -> String {
        match choose_move(s) {
            Some(m) => format!("{} -> {}: {}", s[m.from].node, s[m.to].node, m.why),
            None => "none".into(),
        }
    }

    #[test]
    fn a_job_run_finishes_on_a_draining_node_unless_forced() {
        let temp = crate::state::tests::tempdir::Dir::new();
        let mut st = open(&temp.0);
        for name in ["n1", "n2"] {
            st.register(from(json!({
                "name": name, "address": "http://127.0.0.1:1", "labels": {},
                "capacity": {"cpu": 4000, "memory": 1u64 << 32}, "runtimes": ["wasm"], "ingress": "http://127.0.0.1:2",
            })))
            .expect("register");
        }
        let template = json!({"workload": {"wasm": "sha256:00"}, "resources": {"cpu": 100, "memory": 1 << 20}});
        st.create_job("batch", from(json!({"template": template}))).expect("job");
        st.reconcile_jobs().expect("jobs");
        st.schedule().expect("schedule");
        let run = st.mem().all_replicas().next().cloned().expect("a run");
        let node = run.node.clone().expect("placed");
        all_ready(&mut st, &node);

        // It is not moved (a job has no replacement to make): the drain waits for it.
        let n = st.drain(&node, false).expect("drain");
        let d = n.drain.expect("draining");
        assert!(!d.done && d.stuck.is_empty() && d.message.contains("waiting for 1 job run to finish"), "{d:?}");
        assert!(!st.mem.moves.is_leaving(&run.id));
        assert!(st.mem().replicas_on(&node).any(|r| r.id == run.id), "the run was stopped");

        // Forced, it stops, and its job runs the index again elsewhere.
        st.drain(&node, true).expect("force");
        assert!(st.mem().replicas_on(&node).next().is_none());
        st.reconcile_jobs().expect("jobs");
        st.schedule().expect("schedule");
        let again: Vec<Replica> = st.mem().all_replicas().cloned().collect();
        assert!(again.len() == 1 && again[0].id != run.id, "{again:?}");
        assert!(again[0].node.as_deref().is_some_and(|n| n != node), "{again:?}");
        st.moves_pass(false).expect("pass");
        assert!(st.mem().node(&node).and_then(|n| n.drain.clone()).is_some_and(|d| d.done));
    }

    #[test]
    fn a_node_back_empty_gets_replicas_from_the_fullest() {
        let s = slots(&[("n1", 3, true), ("n2", 3, true), ("n3", 0, true)]);
        assert_eq!(show(&s), "n1 -> n3: spread: n1 held 3 of 6, n3 had 0");
        // After one move: n1 2, n2 3, n3 1.
        let s = slots(&[("n1", 2, true), ("n2", 3, true), ("n3", 1, true)]);
        assert_eq!(show(&s), "n2 -> n3: spread: n2 held 3 of 6, n3 had 1");
        let s = slots(&[("n1", 2, true), ("n2", 2, true), ("n3", 2, true)]);
        assert_eq!(show(&s), "none");
    }

    #[test]
    fn a_difference_of_one_is_as_even_as_it_gets() {
        assert_eq!(show(&slots(&[("a", 3, true), ("b", 2, true), ("c", 2, true)])), "none");
        assert_eq!(show(&slots(&[("a", 1, true), ("b", 0, true)])), "none");
        assert_eq!(
            show(&slots(&[("a", 4, true), ("b", 2, true), ("c", 0, true)])),
            "a -> c: spread: a held 4 of 6, c had 0"
        );
    }

    #[test]
    fn only_a_node_with_room_takes_one() {
        // c is empty but full of other work: b is the best that can take one.
        let s = slots(&[("a", 4, true), ("b", 1, true), ("c", 0, false)]);
        assert_eq!(show(&s), "a -> b: spread: a held 4 of 5, b had 1");
        assert_eq!(show(&slots(&[("a", 4, true), ("c", 0, false)])), "none");
        assert_eq!(show(&[]), "none");
    }
}
