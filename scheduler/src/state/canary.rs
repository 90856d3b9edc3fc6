//! Canary rollouts (#18): the new revision runs beside the stable one at its
//! step's share of the replicas, the ingresses split requests by the step's
//! weight (`Endpoints.splits`), and `crate::canary::pass` judges what they
//! measured at each analysis interval: a failing interval aborts, the last
//! step passing promotes. Where a canary stands (`Rollout.canary`) is stored
//! with the deployment, so a restarted or newly elected leader resumes the
//! same step; promotion and abort are each one transaction that checks the
//! stored state first, so neither happens twice.

use super::deployments::not_found_deployment;
use super::*;

/// The canary a new rollout from revision `from` to `to` starts with: one
/// when the strategy asks for it and there is a stable revision to compare
/// with (a first revision simply rolls out).
pub(super) fn start(strategy: &UpdateStrategy, from: u64, to: u64) -> Option<CanaryStatus> {
    if strategy.canary.is_none() && strategy.blue_green.is_none() {
        return None;
    }
    if from == 0 || from == to {
        return None;
    }
    Some(CanaryStatus {
        stable: RevisionFigures { revision: from, ..RevisionFigures::default() },
        canary: RevisionFigures { revision: to, ..RevisionFigures::default() },
        ..CanaryStatus::default()
    })
}

/// The stable revision of a canary under way and not promoted: a newer
/// revision applied meanwhile replaces the canary, not the stable one.
pub(super) fn stable_during(r: &Rollout) -> Option<u64> {
    let c = r.canary.as_ref()?;
    (r.state == RolloutState::Progressing && c.aborted.is_none() && !c.promoted).then_some(r.from_revision)
}

/// The canary of rollout `r` when it is under way (its split applies).
pub fn active(r: &Rollout) -> Option<&CanaryStatus> {
    let c = r.canary.as_ref()?;
    (r.state == RolloutState::Progressing && c.aborted.is_none()).then_some(c)
}

/// Canary replicas for a step of `weight` percent of `desired`: at least one.
pub fn replicas_for(desired: usize, weight: u32) -> usize {
    (desired * weight as usize).div_ceil(100).clamp(1, desired.max(1))
}

/// A canary under way, as the analysis pass reads it.
#[derive(Debug, Clone)]
pub struct Running {
    pub name: String,
    pub status: CanaryStatus,
    /// The canary's steps and analysis (none for blue/green).
    pub spec: Option<Canary>,
    pub blue_green: Option<BlueGreen>,
}

impl Mem {
    /// Every canary under way.
    pub fn canaries(&self) -> Vec<Running> {
        self.canaried
            .iter()
            .filter_map(|name| self.deployments.get(name))
            .filter_map(|e| {
                let status = active(&e.d.rollout)?.clone();
                let (spec, blue_green) = (e.d.strategy.canary.clone(), e.d.strategy.blue_green);
                Some(Running { name: e.d.name.clone(), status, spec, blue_green })
            })
            .collect()
    }

    /// The split of deployment `name`'s requests, while a canary is under way.
    pub fn split(&self, name: &str) -> Option<Split> {
        let e = self.deployments.get(name)?;
        let c = active(&e.d.rollout)?;
        let preview = e.d.strategy.blue_green.is_some_and(|b| b.preview);
        Some(Split { stable: e.d.rollout.from_revision, canary: e.d.rollout.to_revision, weight: c.weight, preview })
    }

    /// The plan for deployment `name` while a canary is under way (`None`:
    /// plan it as a rolling update). Starts a step's weight once the canary
    /// has its replicas for it available, and 100% once promoted and at the
    /// full count.
    pub(super) fn canary_plan(
        &mut self,
        tx: &Tx,
        name: &str,
        desired: usize,
        seen: &[rollout::Seen],
        now: Millis,
    ) -> Result<Option<rollout::Plan>, Error> {
        let Some(e) = self.deployments.get_mut(name) else { return Ok(None) };
        let spec = e.d.strategy.canary.as_ref();
        let bg = e.d.strategy.blue_green;
        if spec.is_none() && bg.is_none() {
            return Ok(None);
        }
        let revision = e.d.revision;
        let r = &mut e.d.rollout;
        if r.state != RolloutState::Progressing || r.to_revision != revision {
            return Ok(None);
        }
        let paused = r.paused;
        let Some(c) = r.canary.as_mut().filter(|c| c.aborted.is_none()) else { return Ok(None) };
        let steps = spec.map_or(0, |s| s.steps.len());
        // Blue/green: the new revision in full, and no request to it (but at
        // its preview name) until promoted.
        let step_weight =
            if bg.is_some() { 0 } else { spec.and_then(|s| s.steps.get(c.step as usize)).map_or(100, |s| s.weight) };
        let target = if c.promoted || bg.is_some() { desired } else { replicas_for(desired, step_weight) };
        let from = r.from_revision;
        let available_new = seen.iter().filter(|s| s.current && s.available).count();
        let mut said = None;
        if c.promoted {
            if available_new >= desired && c.weight != 100 {
                c.weight = 100;
                c.step_started_ms = now;
                let msg = match bg {
                    Some(b) => format!(
                        "revision {revision} takes all requests; revision {from} stays up for {}s (an instant rollback: skiff rollout undo {name})",
                        b.scale_down_delay.0
                    ),
                    None => format!("revision {revision} takes 100% of requests; the old replicas go"),
                };
                said = Some(("CanaryPromoted", msg));
            }
        } else if c.step_started_ms == 0 && !paused && available_new >= target {
            c.weight = step_weight;
            c.step_started_ms = now;
            c.passed = 0;
            said = Some(match bg {
                Some(b) => {
                    let preview = if b.preview { format!(", at {name}--preview") } else { String::new() };
                    let msg = format!(
                        "revision {revision} is up in full ({available_new} replicas) beside revision {from}{preview}; skiff rollout promote {name} switches"
                    );
                    ("PreviewReady", msg)
                }
                None => {
                    let msg = format!(
                        "step {}/{steps}: {step_weight}% of requests to revision {revision} ({available_new} of {desired} replicas)",
                        c.step + 1
                    );
                    ("CanaryStep", msg)
                }
            });
        }
        // A step under way is progress: its analysis, not the progress
        // deadline, decides how it ends.
        if c.step_started_ms > 0 {
            r.progress_ms = now;
        }
        // Blue/green keeps the old revision up for its scale-down delay
        // after the switch (the full reconcile every 2 s looks again).
        let delay_ms = bg.map_or(0, |b| b.scale_down_delay.0 * 1000);
        let promote_now = c.promoted && c.weight == 100 && now.saturating_sub(c.step_started_ms) >= delay_ms;
        if let Some((reason, msg)) = said {
            tx.put_deployment(&e.d)?;
            tx.event(now, &format!("deployment/{name}"), reason, &msg)?;
            self.fx.mutated = true;
            self.fx.endpoint_names.insert(name.to_string());
        }
        Ok(Some(rollout::canary_plan(desired, target, promote_now, seen)))
    }
}

impl State {
    /// Records an analysis interval of deployment `name`'s canary that
    /// passed, with its figures; moves to the next step when this one has
    /// lasted its pause, and promotes after the last. `step_started_ms`
    /// names the step judged: a step that moved on meanwhile is left alone.
    pub fn canary_passed(
        &mut self,
        name: &str,
        step_started_ms: Millis,
        stable: RevisionFigures,
        canary: RevisionFigures,
    ) -> Result<(), Error> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let Some(e) = mem.deployments.get_mut(name) else { return Ok(()) };
            let Some(spec) = e.d.strategy.canary.clone() else { return Ok(()) };
            let paused = e.d.rollout.paused;
            let revision = e.d.revision;
            let Some(c) = e.d.rollout.canary.as_mut() else { return Ok(()) };
            if e.d.rollout.state != RolloutState::Progressing
                || c.aborted.is_some()
                || c.promoted
                || c.step_started_ms != step_started_ms
            {
                return Ok(());
            }
            c.passed += 1;
            c.stable = stable;
            c.canary = canary;
            let lasted = match spec.steps.get(c.step as usize).map(|s| s.pause) {
                Some(Pause::Seconds(n)) => now.saturating_sub(c.step_started_ms) >= n * 1000,
                Some(Pause::Manual) | None => false,
            };
            let mut said = None;
            if lasted && !paused {
                c.step += 1;
                c.step_started_ms = 0;
                if c.step as usize >= spec.steps.len() {
                    c.promoted = true;
                    said = Some((
                        "CanaryPromoted",
                        format!(
                            "revision {revision} passed all {} steps (last: error rate {:.1}% over {} requests, p99 {} ms): promoted",
                            spec.steps.len(),
                            c.canary.error_rate() * 100.0,
                            c.canary.requests,
                            c.canary.p99_ms
                        ),
                    ));
                }
            }
            tx.put_deployment(&e.d)?;
            if let Some((reason, msg)) = said {
                tx.event(now, &format!("deployment/{name}"), reason, &msg)?;
            }
            mem.fx.mutated = true;
            mem.reconcile(tx, name, now)
        })
    }

    /// Promotes deployment `name`'s canary now (`skiff rollout promote`):
    /// the remaining steps are skipped.
    pub fn canary_promote(&mut self, name: &str) -> Result<Deployment, Error> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let e = mem.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
            let revision = e.d.revision;
            let Some(c) = active(&e.d.rollout) else {
                return Err(Error::Conflict(format!(
                    "deployment {name:?} has no canary under way (rollout {}); `skiff rollout status {name}` shows it",
                    e.d.rollout.state
                )));
            };
            if c.promoted {
                return Ok(());
            }
            let step = c.step + 1;
            if let Some(c) = e.d.rollout.canary.as_mut() {
                c.promoted = true;
            }
            tx.put_deployment(&e.d)?;
            let msg = format!("revision {revision} promoted by hand at step {step}; the remaining steps are skipped");
            tx.event(now, &format!("deployment/{name}"), "CanaryPromoted", &msg)?;
            mem.fx.mutated = true;
            mem.reconcile(tx, name, now)
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }

    /// Aborts deployment `name`'s canary: its weight goes to 0 and the
    /// deployment back to the stable revision, whose replicas never stopped,
    /// so the canary's replicas are stopped at once; a `CanaryAborted` event
    /// says `why`. With `figures`, they are stored as the last judged.
    pub fn canary_abort(
        &mut self,
        name: &str,
        why: &str,
        figures: Option<(RevisionFigures, RevisionFigures)>,
    ) -> Result<Deployment, Error> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let e = mem.deployments.get(name).ok_or_else(|| not_found_deployment(name))?;
            let Some(c) = active(&e.d.rollout) else {
                return Err(Error::Conflict(format!(
                    "deployment {name:?} has no canary under way (rollout {}); `skiff rollout status {name}` shows it",
                    e.d.rollout.state
                )));
            };
            if c.promoted && c.weight == 100 {
                return Err(Error::Conflict(format!(
                    "deployment {name:?}'s canary is promoted and takes all requests; `skiff rollout undo {name}` rolls back"
                )));
            }
            let (stable, bad) = (e.d.rollout.from_revision, e.d.rollout.to_revision);
            let spec = mem.revisions.get(&(name.to_string(), stable)).cloned().ok_or_else(|| {
                Error::Internal(format!("deployment {name:?} has lost its stable revision {stable}"))
            })?;
            let e = mem.deployments.get_mut(name).ok_or_else(|| not_found_deployment(name))?;
            let message = format!("canary revision {bad} aborted: {why}");
            e.d.revision = stable;
            e.d.spec = spec;
            e.d.updated_ms = now;
            e.d.rollout.state = RolloutState::RolledBack;
            e.d.rollout.progress_ms = now;
            e.d.rollout.message = message.clone();
            if let Some(c) = e.d.rollout.canary.as_mut() {
                c.weight = 0;
                c.aborted = Some(why.to_string());
                if let Some((s, k)) = figures {
                    c.stable = s;
                    c.canary = k;
                }
            }
            tx.put_deployment(&e.d)?;
            tx.event(now, &format!("deployment/{name}"), "CanaryAborted", &message)?;
            tracing::warn!("deployment {name}: {message}");
            mem.fx.mutated = true;
            mem.fx.endpoint_names.insert(name.to_string());
            mem.reconcile(tx, name, now)
        })?;
        self.mem.deployment(name).ok_or_else(|| not_found_deployment(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid message")
    }

    fn open(dir: &std::path::Path) -> State {
        let store = crate::store::Store::open(&dir.join("state.db")).expect("store");
        let keys = crate::secrets::Keyring::open(dir).expect("keyring");
        State::load(store, keys, Policy::default()).expect("load")
    }

    /// Every replica on n1 reported ready.
    fn all_ready(st: &mut State) {
        st.schedule().expect("schedule");
        let replicas: Vec<serde_json::Value> = st
            .mem()
            .all_replicas()
            .map(|r| json!({"id": r.id, "generation": r.generation, "state": "ready", "restarts": 0}))
            .collect();
        st.heartbeat("n1", from(json!({"capacity": {"cpu": 8000, "memory": 1u64 << 33}, "replicas": replicas})))
            .expect("heartbeat");
        st.reconcile_all().expect("reconcile");
    }

    fn by_revision(st: &State) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for r in st.mem().replicas_of("web") {
            *out.entry(r.revision).or_default() += 1;
        }
        out
    }

    fn apply(st: &mut State, v: &str) {
        let spec =
            json!({"workload": {"wasm": "sha256:00"}, "resources": {"cpu": 100, "memory": 1 << 20}, "env": {"V": v}});
        let strategy =
            json!({"canary": {"steps": [{"weight": 25, "pause": "manual"}], "analysis": {"interval": "1s"}}});
        st.apply("web", from(json!({"replicas": 4, "spec": spec, "strategy": strategy}))).expect("apply");
    }

    #[test]
    fn a_canary_runs_at_its_weight_survives_a_reload_and_aborts_or_promotes_once() {
        let temp = crate::state::tests::tempdir::Dir::new();
        let mut st = open(&temp.0);
        let node = json!({"name": "n1", "address": "http://127.0.0.1:1", "labels": {},
            "capacity": {"cpu": 8000, "memory": 1u64 << 33}, "runtimes": ["wasm"], "ingress": "http://10.0.0.1:8080"});
        st.register(from(node)).expect("register");
        apply(&mut st, "1");
        all_ready(&mut st);
        assert!(st.mem().split("web").is_none(), "a first revision is no canary");

        apply(&mut st, "2");
        // 25% of 4: one canary beside the four stable replicas; no request to it yet.
        assert_eq!(by_revision(&st), BTreeMap::from([(1, 4), (2, 1)]));
        assert_eq!(st.mem().split("web"), Some(Split { stable: 1, canary: 2, weight: 0, preview: false }));
        all_ready(&mut st);
        assert_eq!(st.mem().split("web"), Some(Split { stable: 1, canary: 2, weight: 25, preview: false }));
        assert_eq!(by_revision(&st), BTreeMap::from([(1, 4), (2, 1)]));
        let table = crate::endpoints::table(st.mem(), 0);
        assert_eq!(table.deployments["web"].iter().filter(|e| e.revision == 2).count(), 1);

        // A new leader (a reload of the store) resumes the same step.
        drop(st);
        let mut st = open(&temp.0);
        let c = st.mem().deployment("web").and_then(|d| d.rollout.canary).expect("canary kept");
        assert_eq!((c.step, c.weight, c.promoted), (0, 25, false));
        st.reconcile_all().expect("reconcile");
        assert_eq!(by_revision(&st), BTreeMap::from([(1, 4), (2, 1)]), "nothing restarts");

        let d = st.canary_abort("web", "error rate 20.0% > 1.0% over 412 requests", None).expect("abort");
        assert_eq!((d.revision, d.rollout.state), (1, RolloutState::RolledBack));
        assert_eq!(by_revision(&st), BTreeMap::from([(1, 4)]), "the canary's replica stops");
        assert!(st.mem().split("web").is_none());
        assert!(st.canary_abort("web", "again", None).is_err(), "an abort happens once");

        // Revision 3, promoted by hand: full count first, then 100% and the old go.
        apply(&mut st, "3");
        all_ready(&mut st);
        st.canary_promote("web").expect("promote");
        assert_eq!(by_revision(&st), BTreeMap::from([(1, 4), (3, 4)]), "the old stay until the new carry all");
        assert_eq!(st.mem().split("web").map(|s| s.weight), Some(25));
        all_ready(&mut st);
        assert_eq!(by_revision(&st), BTreeMap::from([(3, 4)]));
        let d = st.mem().deployment("web").expect("web");
        assert_eq!(d.rollout.canary.map(|c| (c.weight, c.promoted)), Some((100, true)));
        let promoted = st.canary_promote("web");
        assert!(promoted.is_err() || d.rollout.state == RolloutState::Progressing, "{promoted:?}");
    }
}
