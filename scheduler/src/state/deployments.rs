//! Deployments: apply, scale, rollback, pause, delete, and the reconcile that
//! keeps each at its count and moves its rollout on.

use super::*;

impl State {
    /// Brings every deployment to its count (the periodic, level-triggered pass).
    pub fn reconcile_all(&mut self) -> Result<(), Error> {
        let now = now_ms();
        self.mem.reconcile_due.clear();
        let names = self.mem.unsettled();
        if names.is_empty() {
            return Ok(());
        }
        self.transact(|mem, tx| {
            for name in names {
                mem.reconcile(tx, &name, now)?;
            }
            Ok(())
        })
    }

    /// Reconciles the deployments whose rollout a heartbeat may have moved on.
    pub fn reconcile_due(&mut self) -> Result<(), Error> {
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

    pub fn apply(&mut self, name: &str, mut req: ApplyRequest) -> Result<ApplyResponse, Error> {
        req.replicas = Some(self.mem.apply_count(name, &req));
        // A key `NS/NAME` (#20): the key is the canonical one, the name is
        // checked, the namespace must exist, and the spec's secrets and
        // volumes are that namespace's.
        let (namespace, plain) = namespaces::canonical(name)?;
        skiff_api::manifest::validate_apply(plain, &req).map_err(Error::Invalid)?;
        if !self.mem.namespace_exists(namespace) {
            return Err(Error::NotFound(format!(
                "namespace {namespace:?} not found; `skiff namespace create {namespace}` makes it"
            )));
        }
        namespaces::keyed_spec(namespace, &mut req.spec);
        if !self.mem.deployments.contains_key(name) && self.mem.deployments.len() >= self.max_objects {
            return Err(Error::TooMany { kind: "deployments", max: self.max_objects });
        }
        {
            let to = req.replicas.unwrap_or(1);
            let (from, old) = match self.mem.deployments.get(name) {
                Some(e) => (e.d.replicas, Some(&e.d.spec.resources)),
                None => (0, None),
            };
            let before = |per: u64| old.map_or(0, |_| per * from as u64);
            let mut ask = namespaces::Ask {
                cpu: (req.spec.resources.cpu.0 * to as u64).saturating_sub(before(old.map_or(0, |r| r.cpu.0))),
                memory: (req.spec.resources.memory.0 * to as u64).saturating_sub(before(old.map_or(0, |r| r.memory.0))),
                replicas: to.saturating_sub(from) as u64,
                deployments: old.is_none() as u64,
                volumes: 0,
            };
            ask.volumes = req.spec.volumes.iter().filter(|m| !self.mem.volumes.contains_key(&m.name)).count() as u64;
            self.mem.check_quota(namespace, ask).map_err(Error::Conflict)?;
        }
        let new_volumes = req.spec.volumes.iter().filter(|m| !self.mem.volumes.contains_key(&m.name)).count();
        if new_volumes > 0 && self.mem.volumes.len() + new_volumes > self.max_objects {
            return Err(Error::TooMany { kind: "volumes", max: self.max_objects });
        }
        let now = now_ms();
        let outcome = self.transact(|mem, tx| mem.apply(tx, name, req, now))?;
        let deployment = self.mem.deployment(name).ok_or_else(|| Error::Internal("deployment vanished".into()))?;
        let warnings = self.mem.size_warnings(&deployment.spec);
        Ok(ApplyResponse { outcome, deployment, warnings })
    }

    pub fn scale(&mut self, name: &str, replicas: u32) -> Result<Deployment, Error> {
        if replicas > MAX_REPLICAS {
            return Err(Error::Invalid(format!("replicas must be at most {MAX_REPLICAS}, got {replicas}")));
        }
        if let Some(a) = self.mem.deployments.get(name).and_then(|e| e.d.autoscale) {
            let msg = format!(
                "deployment {name:?} scales by load between {} and {} replicas; change its autoscale min and max, or apply it without autoscale to scale it by hand",
                a.min, a.max
            );
            return Err(Error::Conflict(msg));
        }
        if let Some(e) = self.mem.deployments.get(name) {
            let ask = namespaces::replicas_ask(&e.d.spec, e.d.replicas, replicas);
            self.mem.check_quota(skiff_api::namespace::of(name), ask).map_err(Error::Conflict)?;
        }
        let now = now_ms();
        self.transact(|mem, tx| {
            let e = mem.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
            let mut plain = e.d.spec.clone();
            namespaces::plain_spec(&mut plain);
            skiff_api::manifest::validate_volumes(&plain.volumes, replicas).map_err(Error::Invalid)?;
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
                mem.fx.mutated = true;
                mem.reconcile(tx, name, now)?;
            }
            Ok(())
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }

    /// Sets the count of autoscaled deployment `name` to `replicas`, saying `why`.
    pub fn autoscale(&mut self, name: &str, replicas: u32, why: &str) -> Result<(), Error> {
        let now = now_ms();
        // Held at the namespace's quota (#20), with an event saying so.
        let room = self.mem.quota_room(name);
        let held = match self.mem.deployments.get(name) {
            Some(e) if replicas > e.d.replicas && replicas > room => {
                let ask = namespaces::replicas_ask(&e.d.spec, e.d.replicas, replicas);
                let line = self.mem.check_quota(skiff_api::namespace::of(name), ask).err();
                Some((room.max(e.d.replicas), line.unwrap_or_default()))
            }
            _ => None,
        };
        let replicas = held.as_ref().map_or(replicas, |(r, _)| *r);
        self.transact(|mem, tx| {
            let Some(e) = mem.deployments.get_mut(name) else { return Ok(()) };
            if let Some((at, line)) = &held {
                let msg = format!("autoscaler held at {at} replicas: {line}");
                if e.d.rollout.message != msg {
                    tx.event(now, &format!("deployment/{name}"), "QuotaHeld", &msg)?;
                }
            }
            if e.d.replicas == replicas || e.d.autoscale.is_none() {
                return Ok(());
            }
            let from = e.d.replicas;
            e.d.replicas = replicas;
            e.d.updated_ms = now;
            tx.put_deployment(&e.d)?;
            let msg = format!("autoscaled from {from} to {replicas} replicas: {why}");
            tx.event(now, &format!("deployment/{name}"), "Scaled", &msg)?;
            mem.fx.mutated = true;
            mem.reconcile(tx, name, now)
        })
    }

    /// Starts deployment `name`, which scales to zero, for a request an
    /// ingress holds (`req`, at node `node`'s ingress): from zero to one
    /// replica, with a `ScaledFromZero` event naming the request. A deployment
    /// that has replicas already (another request or another node was first)
    /// is left as it is: concurrent activations place one replica, never two.
    /// Returns whether this call scaled it, and its count.
    pub fn activate(&mut self, name: &str, req: &ActivateRequest, node: Option<&str>) -> Result<(bool, u32), Error> {
        let e = self.mem.deployments.get(name).ok_or_else(|| not_found_deployment(name))?;
        if e.d.idle_seconds().is_none() {
            return Err(Error::Conflict(format!(
                "deployment {name:?} does not scale to zero; apply it with scale_to_zero to have requests start it"
            )));
        }
        if e.d.replicas > 0 {
            return Ok((false, e.d.replicas));
        }
        let now = now_ms();
        let request = format!("{} {}{}", clip(&req.method, 16), clip(&req.host, 253), clip(&req.path, 512));
        let at = node.map(|n| format!(" at node {n}'s ingress")).unwrap_or_default();
        self.transact(|mem, tx| {
            let e = mem.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
            e.d.replicas = 1;
            e.d.updated_ms = now;
            tx.put_deployment(&e.d)?;
            let msg = format!("scaled from 0 to 1 replica for {request} (held{at})");
            tx.event(now, &format!("deployment/{name}"), "ScaledFromZero", &msg)?;
            mem.fx.mutated = true;
            mem.reconcile(tx, name, now)
        })?;
        Ok((true, 1))
    }

    /// Scales deployment `name` to zero replicas after `idle_seconds` without
    /// a request (the idle check in `autoscale::pass` decides), with a
    /// `ScaledToZero` event. Does nothing to one that no longer scales to zero
    /// or is at zero already.
    pub fn scale_to_zero(&mut self, name: &str, idle_seconds: u32) -> Result<(), Error> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let Some(e) = mem.deployments.get_mut(name) else { return Ok(()) };
            if e.d.replicas == 0 || e.d.idle_seconds().is_none() {
                return Ok(());
            }
            let from = e.d.replicas;
            e.d.replicas = 0;
            e.d.updated_ms = now;
            tx.put_deployment(&e.d)?;
            let msg = format!(
                "scaled from {from} to 0 replicas: no request for {idle_seconds}s; the next request starts one"
            );
            tx.event(now, &format!("deployment/{name}"), "ScaledToZero", &msg)?;
            mem.fx.mutated = true;
            mem.reconcile(tx, name, now)
        })
    }

    /// Every revision of `name`, oldest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<RevisionInfo>, Error> {
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
    pub fn rollback(&mut self, name: &str, to: Option<u64>) -> Result<Deployment, Error> {
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
                    .ok_or_else(|| Error::Invalid(format!("{name} has no revision before {current}")))?,
            };
            if target == current {
                return Err(Error::Invalid(format!("{name} already runs revision {target}")));
            }
            let spec = mem.revisions.get(&(name.to_string(), target)).cloned().ok_or_else(|| {
                Error::NotFound(format!("{name} has no revision {target}; `skiff rollout history {name}` lists them"))
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
                canary: None,
            };
            tx.put_deployment(&e.d)?;
            tx.event(now, &format!("deployment/{name}"), "Rollback", &e.d.rollout.message)?;
            mem.fx.mutated = true;
            mem.reconcile(tx, name, now)
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }

    /// Pauses or resumes the rollout of `name`.
    pub fn set_paused(&mut self, name: &str, paused: bool) -> Result<Deployment, Error> {
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
                mem.fx.mutated = true;
                mem.reconcile(tx, name, now)?;
            }
            Ok(())
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }

    /// Deletes deployment `name`; its volumes stay unless `purge_volumes` (then
    /// those no other deployment mounts go, with their data).
    pub fn delete(&mut self, name: &str, purge_volumes: bool) -> Result<(), Error> {
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
            mem.awake.remove(name);
            mem.by_deployment.remove(name);
            mem.revisions.retain(|(d, _), _| d != name);
            tx.delete_deployment(name)?;
            tx.event(now, &format!("deployment/{name}"), "Deleted", "deployment deleted; its replicas are stopping")?;
            mem.fx.mutated = true;
            mem.fx.endpoint_names.insert(name.to_string());
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
}

/// At most `max` bytes of `s` (cut at a character boundary), with control
/// characters dropped: what a client sent, fit for an event line.
fn clip(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

pub(super) fn not_found_deployment(name: &str) -> Error {
    Error::NotFound(format!("deployment {name:?} not found; `skiff get deployments` lists them"))
}

/// Orders replicas for removal on scale-down: those doing least first, newest first.
pub(super) fn removal_rank(r: &Replica) -> (u8, std::cmp::Reverse<Millis>) {
    let rank = match r.state {
        ReplicaState::Pending => 0,
        ReplicaState::Failed | ReplicaState::Exited => 1,
        ReplicaState::Assigned | ReplicaState::Starting => 2,
        _ => 3,
    };
    (rank, std::cmp::Reverse(r.created_ms))
}

pub(super) fn new_replica_id(deployment: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..6).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    // Replica ids are DNS labels too: keep them within 63 characters.
    // A namespaced deployment's key `NS/NAME` (#20) becomes `NS-NAME`.
    let flat = deployment.replace('/', "-");
    let deployment = flat.as_str();
    let prefix = &deployment[..deployment.len().min(56)];
    format!("{prefix}-{suffix}")
}

impl Mem {
    /// Keeps `name` in [`Mem::awake`] while it scales to zero and has replicas.
    pub(super) fn note_awake(&mut self, name: &str) {
        match self.deployments.get(name) {
            Some(e) if e.d.replicas > 0 && e.d.idle_seconds().is_some() => {
                if !self.awake.contains(name) {
                    self.awake.insert(name.to_string());
                }
            }
            _ => {
                self.awake.remove(name);
            }
        }
    }

    /// Deployments that scale to zero and have replicas, with their idle
    /// seconds and the ids of their live replicas (what the idle check reads).
    pub fn awake(&self) -> Vec<(String, u32, Vec<String>)> {
        self.awake
            .iter()
            .filter_map(|name| {
                let idle = self.deployments.get(name)?.d.idle_seconds()?;
                Some((name.clone(), idle, self.replicas_of(name).map(|r| r.id.clone()).collect()))
            })
            .collect()
    }

    /// Every deployment in name order, with whether it has live replicas (only
    /// then can it have endpoints) and whether it scales to zero: what the
    /// endpoints table is written from without a lookup per deployment.
    pub fn endpoint_rows(&self) -> impl Iterator<Item = (&String, bool, bool)> {
        self.deployments.iter().map(|(n, e)| (n, e.counts.total > 0, e.d.idle_seconds().is_some()))
    }

    /// Whether deployment `name` scales to zero (`None`: there is none): its
    /// row of the endpoints table besides its endpoints.
    pub fn deployment_scales_to_zero(&self, name: &str) -> Option<bool> {
        self.deployments.get(name).map(|e| e.d.idle_seconds().is_some())
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

    /// Warns when no registered node could ever hold one replica of `spec`.
    pub(super) fn size_warnings(&self, spec: &WorkloadSpec) -> Vec<String> {
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

    /// The count an apply of `req` gives deployment `name`. An autoscaled
    /// deployment keeps the count the autoscaler gave it (within the bounds):
    /// `replicas` only starts a new one. Otherwise (also when the apply turns
    /// autoscaling off) the count asked for, else the current one, else 1.
    pub(super) fn apply_count(&self, name: &str, req: &ApplyRequest) -> u32 {
        let current = self.deployments.get(name).map(|e| e.d.replicas);
        match req.autoscale {
            Some(a) => current.or(req.replicas).unwrap_or(a.min).clamp(a.min, a.max),
            None => req.replicas.or(current).unwrap_or(1),
        }
    }

    pub(super) fn apply(&mut self, tx: &Tx, name: &str, req: ApplyRequest, now: Millis) -> Result<ApplyOutcome, Error> {
        let obj = format!("deployment/{name}");
        let replicas = self.apply_count(name, &req);
        self.declare_volumes(tx, name, &req.spec, now)?;
        let outcome = match self.deployments.get_mut(name) {
            None => {
                let d = Deployment {
                    name: name.to_string(),
                    namespace: String::new(),
                    replicas,
                    revision: 1,
                    spec: req.spec.clone(),
                    created_ms: now,
                    updated_ms: now,
                    status: DeploymentStatus::default(),
                    strategy: req.strategy.unwrap_or_default(),
                    autoscale: req.autoscale,
                    scale_to_zero: req.scale_to_zero,
                    // The first rollout completes once its replicas are available;
                    // it starts from no revision (0), so it has none to go back to.
                    rollout: Rollout {
                        state: RolloutState::Progressing,
                        from_revision: 0,
                        to_revision: 1,
                        started_ms: now,
                        progress_ms: now,
                        paused: false,
                        message: "rolling out revision 1".into(),
                        canary: None,
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
                self.fx.endpoint_names.insert(name.to_string());
                ApplyOutcome::Created
            }
            Some(e)
                if e.d.spec == req.spec
                    && e.d.replicas == replicas
                    && req.strategy.as_ref().is_none_or(|s| *s == e.d.strategy)
                    && req.autoscale == e.d.autoscale
                    && req.scale_to_zero == e.d.scale_to_zero =>
            {
                return Ok(ApplyOutcome::Unchanged);
            }
            Some(e) => {
                // Whether its name activates a replica is in the endpoints table.
                let scaled_to_zero_before = e.d.idle_seconds().is_some();
                if let Some(s) = req.strategy.clone() {
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
                if e.d.scale_to_zero != req.scale_to_zero {
                    e.d.scale_to_zero = req.scale_to_zero;
                    match req.scale_to_zero {
                        Some(z) => {
                            let msg = format!("scales to zero after {}s without a request", z.idle_seconds);
                            tx.event(now, &obj, "ScaleToZeroSet", &msg)?;
                        }
                        None => tx.event(now, &obj, "ScaleToZeroOff", "no longer scales to zero")?,
                    }
                }
                if e.d.idle_seconds().is_some() != scaled_to_zero_before {
                    self.fx.endpoint_names.insert(name.to_string());
                }
                if e.d.spec != req.spec {
                    // After a rollback the current revision is not the newest: number
                    // the new one after every revision there is.
                    let latest = self.revisions.keys().filter(|(d, _)| d == name).map(|(_, r)| *r).max();
                    let mut from = e.d.revision;
                    // A new revision during a canary replaces the canary: the
                    // stable revision stays the one to compare with.
                    if let Some(stable) = super::canary::stable_during(&e.d.rollout) {
                        from = stable;
                    }
                    e.d.revision = latest.unwrap_or(from).max(e.d.revision) + 1;
                    e.d.spec = req.spec.clone();
                    e.d.rollout = Rollout {
                        state: RolloutState::Progressing,
                        from_revision: from,
                        to_revision: e.d.revision,
                        started_ms: now,
                        progress_ms: now,
                        paused: e.d.rollout.paused,
                        message: format!("rolling out revision {} to replace {from}", e.d.revision),
                        canary: super::canary::start(&e.d.strategy, from, e.d.revision),
                    };
                    if e.d.rollout.canary.is_some() {
                        self.canaried.insert(name.to_string());
                    }
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
        self.fx.mutated = true;
        self.reconcile(tx, name, now)?;
        Ok(outcome)
    }

    /// Keeps deployment `name` at its count of current-revision replicas, rolling
    /// older revisions out as [`rollout::plan`] decides, and rolls a failing
    /// rollout back to the last good revision.
    /// The deployments a reconcile may change anything for: all but those
    /// [`settled`] (what [`Mem::reconcile`] returns early for) whose place in
    /// `awake` is right. One read-only walk, no lookup per deployment: the
    /// full pass every 2 s used to reconcile each of 100,000 deployments
    /// (a clone of its name and its strategy, two lookups) under the state
    /// lock, and a cold request arriving meanwhile waited for all of it.
    pub(super) fn unsettled(&self) -> Vec<String> {
        let leaving = self.moves.leaving_deployments();
        let wants_awake = |e: &DeploymentEntry| e.d.replicas > 0 && e.d.idle_seconds().is_some();
        // Awake and no longer wanting to be (the awake are few).
        let asleep: std::collections::HashSet<&str> = self
            .awake
            .iter()
            .filter(|name| !self.deployments.get(*name).is_some_and(wants_awake))
            .map(String::as_str)
            .collect();
        self.deployments
            .iter()
            .filter(|(name, e)| {
                let settled = settled(e, leaving.contains(name.as_str()));
                let awake_right = match wants_awake(e) {
                    true => self.awake.contains(name.as_str()),
                    false => !asleep.contains(name.as_str()),
                };
                !(settled && awake_right)
            })
            .map(|(name, _)| name.clone())
            .chain(asleep.iter().filter(|n| !self.deployments.contains_key(**n)).map(|n| n.to_string()))
            .collect()
    }

    pub(super) fn reconcile(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), Error> {
        self.note_awake(name);
        let Some(e) = self.deployments.get(name) else { return Ok(()) };
        if settled(e, self.moves.leaves_from(name)) {
            return Ok(());
        }
        let (desired, revision, mut strategy) = (e.d.replicas as usize, e.d.revision, e.d.strategy.clone());
        // A pause holds a new revision back, not a drain or a rebalance.
        let paused = e.d.rollout.paused && e.by_revision.keys().any(|r| *r != revision);
        let min_ready_ms = strategy.min_ready_seconds as u64 * 1000;
        let probed = e.d.spec.probes.readiness.is_some();
        // Two writers of one volume must never run at once: with a read-write
        // volume, a new revision replaces the old one by stopping it first.
        let mut writable = e.d.spec.has_writable_volume();
        // One walk of the replicas; those of the current revision (most of
        // them) need no lookup of their revision.
        let mut seen: Vec<rollout::Seen> = Vec::with_capacity(self.by_deployment.get(name).map_or(0, BTreeSet::len));
        // New replicas that have served without a break for long enough to
        // complete a rollout (`ROLLOUT_SETTLE_MS`).
        let mut settled = 0;
        // A replica leaving its node (drain, rebalance) is replaced as an old
        // revision's is. When it is ready (routed), its replacement counts
        // only once ready too: running, it is not in the endpoints table yet.
        let (mut leaving_ready, mut not_ready) = (false, Vec::new());
        for r in self.replicas_of(name) {
            if self.moves.is_unrouted(&r.id) {
                // Stopping: out of the endpoints table, its stop waits for
                // every ingress to drop it (`Mem::stop_unrouted`).
                continue;
            }
            let leaving = self.moves.is_leaving(&r.id);
            leaving_ready |= leaving && r.state == ReplicaState::Ready && r.revision == revision;
            let current = r.revision == revision && !leaving;
            if current && r.state != ReplicaState::Ready {
                not_ready.push(seen.len());
            }
            let serving = if current {
                serves(r.state, || probed)
            } else {
                let spec = self.revisions.get(&(r.deployment.clone(), r.revision));
                writable |= spec.is_some_and(WorkloadSpec::has_writable_volume);
                self.serving(r)
            };
            let served_ms = now.saturating_sub(r.updated_ms);
            if current && serving && served_ms >= min_ready_ms.max(ROLLOUT_SETTLE_MS) {
                settled += 1;
            }
            seen.push(rollout::Seen {
                id: r.id.clone(),
                current,
                available: serving && served_ms >= min_ready_ms,
                failing: matches!(r.state, ReplicaState::Failed | ReplicaState::Exited) || r.restarts >= 3,
                rank: removal_rank(r),
            });
        }
        if leaving_ready {
            for i in not_ready {
                seen[i].available = false;
            }
        }
        if writable {
            strategy.max_surge = 0;
            strategy.max_unavailable = strategy.max_unavailable.max(1);
        }
        // A quota with no room for a surge, and no unavailability allowed
        // instead, holds the rollout as a pause would (#20).
        let quota_note = self.quota_surge(name, desired, &mut strategy);
        let plan = match self.canary_plan(tx, name, desired, &seen, now)? {
            Some(plan) => plan,
            None => rollout::plan(desired, &strategy, paused || quota_note.is_some(), &seen),
        };
        // A rollout the quota holds says so in its status (#20), until it is not.
        if let Some(e) = self.deployments.get_mut(name) {
            let held = e.d.rollout.message.starts_with(namespaces::SURGE_HELD);
            match quota_note {
                Some(note) if plan.rolling && e.d.rollout.message != note => {
                    tx.event(now, &format!("deployment/{name}"), "QuotaHeld", &note)?;
                    e.d.rollout.message = note;
                    tx.put_deployment(&e.d)?;
                }
                None if held => {
                    e.d.rollout.message = format!("rolling out revision {revision}");
                    tx.put_deployment(&e.d)?;
                }
                _ => {}
            }
        }
        if plan.rolling && self.rollout_check(tx, name, &plan, now)? {
            // Rolled back: the next pass plans against the good revision.
            return self.reconcile(tx, name, now);
        }
        let obj = format!("deployment/{name}");
        let scaled_down = plan.stop.iter().filter(|(_, why)| *why == "scaled down").count();
        for (id, why) in &plan.stop {
            let why = match self.moves.why(id) {
                _ if *why == "scaled down" => why.to_string(),
                Some(moved) => {
                    // A routed replica leaves every ingress's table first.
                    if self.unroute_first(id, now) {
                        continue;
                    }
                    tx.event(now, &obj, "Moved", &format!("replica {id} stopped: {moved}"))?;
                    moved
                }
                None => format!("replaced by revision {revision}"),
            };
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
            self.fx.mutated = true;
            self.sched_dirty = true;
        }
        // A rollout is complete once no old replica is left and the new ones have
        // served for long enough: a replica seen running for an instant between
        // two crashes completes nothing.
        let no_old = !plan.rolling && plan.stop.iter().all(|(_, w)| *w == "scaled down");
        if no_old && settled >= desired {
            return self.rollout_complete(tx, name, now);
        }
        if no_old && plan.available_new >= desired {
            // Serving, not yet for long enough: look again at the next pass
            // rather than at the next full one.
            self.reconcile_due.insert(name.to_string());
        }
        if no_old && self.rollout_overdue(name, now) {
            let why = self.unavailable_why(name, revision, settled, desired);
            if self.give_up(tx, name, why, now)? {
                return self.reconcile(tx, name, now);
            }
        }
        Ok(())
    }

    /// Whether deployment `name`'s rollout under way has run past its progress
    /// deadline (paused time does not count: resuming resets the clock).
    fn rollout_overdue(&self, name: &str, now: Millis) -> bool {
        let Some(e) = self.deployments.get(name) else { return false };
        let r = &e.d.rollout;
        let deadline_ms = e.d.strategy.progress_deadline_seconds as u64 * 1000;
        r.state == RolloutState::Progressing && !r.paused && now.saturating_sub(r.progress_ms) > deadline_ms
    }

    /// Why revision `revision` of `name` is not available by its deadline, with
    /// what one of its replicas says of itself.
    fn unavailable_why(&self, name: &str, revision: u64, settled: usize, desired: usize) -> String {
        let deadline = self.deployments.get(name).map_or(0, |e| e.d.strategy.progress_deadline_seconds);
        let mut why = match settled {
            0 => format!("no replica became available within {deadline}s"),
            n => format!("{n} of {desired} replicas became available within {deadline}s"),
        };
        let current: Vec<&Replica> = self.replicas_of(name).filter(|r| r.revision == revision).collect();
        let failed = current.iter().find(|r| matches!(r.state, ReplicaState::Failed | ReplicaState::Exited));
        let restarted = current.iter().filter(|r| r.restarts > 0).max_by_key(|r| r.restarts);
        let pending = current.iter().find(|r| r.state == ReplicaState::Pending);
        let reason = |r: &Replica| r.reason.clone().unwrap_or_else(|| "no reason given".into());
        if let Some(r) = failed {
            why.push_str(&format!(": replica {} failed: {}", r.id, reason(r)));
        } else if let Some(r) = restarted {
            why.push_str(&format!(": replica {} restarted {} times ({})", r.id, r.restarts, reason(r)));
        } else if let Some(r) = pending {
            why.push_str(&format!(": replica {} is pending: {}", r.id, reason(r)));
        }
        why
    }

    /// Marks deployment `name`'s rollout under way complete.
    pub(super) fn rollout_complete(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), Error> {
        let e = self.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
        if can_complete(&e.d.rollout, e.d.revision) {
            e.d.rollout.state = RolloutState::Complete;
            e.d.rollout.message = format!("revision {} is rolled out", e.d.revision);
            tx.put_deployment(&e.d)?;
            tx.event(now, &format!("deployment/{name}"), "RolloutComplete", &e.d.rollout.message)?;
            self.fx.mutated = true;
        }
        Ok(())
    }

    /// Watches a rollout under way: records progress, and when its new replicas
    /// keep failing or it makes no progress within its deadline, rolls back to the
    /// revision it started from (or marks it failed when automatic rollback is
    /// off). Returns whether it rolled back.
    pub(super) fn rollout_check(
        &mut self,
        tx: &Tx,
        name: &str,
        plan: &rollout::Plan,
        now: Millis,
    ) -> Result<bool, Error> {
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
        self.give_up(tx, name, why, now)
    }

    /// Ends deployment `name`'s rollout under way, which failed (`why`): rolls
    /// back to the revision it started from, or marks it failed when automatic
    /// rollback is off or it started from nothing (a first revision). Returns
    /// whether it rolled back.
    fn give_up(&mut self, tx: &Tx, name: &str, why: String, now: Millis) -> Result<bool, Error> {
        let obj = format!("deployment/{name}");
        let Some(e) = self.deployments.get_mut(name) else { return Ok(false) };
        let good = e.d.rollout.from_revision;
        let spec = self.revisions.get(&(name.to_string(), good)).cloned();
        self.fx.mutated = true;
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
                    canary: None,
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
}

/// How long a new replica must have served without a break before it completes
/// a rollout (at least; `min_ready_seconds` when longer). A replica that
/// crash-loops is reported running for an instant between crashes, and a first
/// revision was shown complete with nothing serving (issue #16).
const ROLLOUT_SETTLE_MS: u64 = 1000;

/// Whether rollout `r` may still complete at `revision`: it is under way, or it
/// failed for want of time (or with automatic rollback off) and its replicas
/// may still come to serve.
/// Whether deployment `e` (with a replica `leaving` its node or not) is
/// settled: at its count, all of the current revision, no rollout that may
/// still complete and nothing leaving, so a reconcile would create and stop
/// nothing. (Completing a rollout takes a walk: it asks how long each new
/// replica has served.)
fn settled(e: &DeploymentEntry, leaving: bool) -> bool {
    e.counts.total == e.d.replicas
        && e.by_revision.keys().all(|r| *r == e.d.revision)
        && !can_complete(&e.d.rollout, e.d.revision)
        && !leaving
}

fn can_complete(r: &Rollout, revision: u64) -> bool {
    r.state == RolloutState::Progressing || (r.state == RolloutState::Failed && r.to_revision == revision)
}
