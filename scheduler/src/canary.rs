//! Canary analysis (#18). Nodes count, per HTTP replica, the requests their
//! ingress passed to it, the 5xx answers and a latency histogram
//! (`ReplicaStatus.requests`, `errors`, `latency`, cumulative); [`Meter`]
//! turns each heartbeat's counters of the replicas of deployments under a
//! canary into increments (without the state lock), and [`pass`] (every
//! second, from the controllers) adds them up per revision and, at each
//! `analysis.interval` of a step under way, [`judge`]s the canary against
//! the analysis and against the stable revision over the same interval:
//! failing aborts (`State::canary_abort`), passing is recorded and moves the
//! step on (`State::canary_passed`).

use crate::Core;
use crate::error::ApiError;
use skiff_api::{Analysis, LATENCY_BUCKETS_MS, ReplicaStatus, RevisionFigures};
use std::collections::{HashMap, HashSet};

/// Request counts of one replica or revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    /// Per bucket of `LATENCY_BUCKETS_MS`, then one for slower.
    pub buckets: Vec<u64>,
}

impl Counts {
    fn of(r: &ReplicaStatus) -> Counts {
        Counts { requests: r.requests, errors: r.errors, buckets: r.latency.clone() }
    }

    /// `self − before`; a counter that went down (the replica's node
    /// restarted it) counts from zero.
    fn since(&self, before: &Counts) -> Counts {
        if self.requests < before.requests {
            return self.clone();
        }
        let buckets = (0..self.buckets.len())
            .map(|i| self.buckets[i].saturating_sub(before.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        Counts { requests: self.requests - before.requests, errors: self.errors.saturating_sub(before.errors), buckets }
    }

    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (i, n) in other.buckets.iter().enumerate() {
            self.buckets[i] += n;
        }
    }

    /// The 99th percentile latency: the upper bound of the bucket it falls in
    /// (slower than the last bound: twice that bound).
    pub fn p99_ms(&self) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = (total * 99).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENCY_BUCKETS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 1] * 2);
            }
        }
        0
    }

    pub fn figures(&self, revision: u64) -> RevisionFigures {
        RevisionFigures { revision, requests: self.requests, errors: self.errors, p99_ms: self.p99_ms() }
    }
}

/// The interval under way of one canary.
#[derive(Debug, Default)]
struct Window {
    /// The step it belongs to (`CanaryStatus.step_started_ms`).
    step_started_ms: u64,
    started_ms: u64,
    stable: Counts,
    canary: Counts,
}

/// Counters of the replicas of deployments under a canary, from heartbeats.
#[derive(Debug, Default)]
pub struct Meter {
    /// `NAME` of each deployment watched (replica ids are `NAME-xxxxxx`).
    watched: HashSet<String>,
    /// Replica id → counters last reported.
    last: HashMap<String, Counts>,
    /// Replica id → increments not yet taken by the pass.
    fresh: HashMap<String, Counts>,
    windows: HashMap<String, Window>,
}

fn deployment_of(id: &str) -> &str {
    id.rsplit_once('-').map_or(id, |(d, _)| d)
}

impl Meter {
    /// Keeps the increments of the watched replicas a heartbeat reports. A
    /// replica seen for the first time counts from there.
    pub fn observe(&mut self, replicas: &[ReplicaStatus]) {
        if self.watched.is_empty() {
            return;
        }
        for r in replicas.iter().filter(|r| self.watched.contains(deployment_of(&r.id))) {
            let now = Counts::of(r);
            let delta = match self.last.get(&r.id) {
                Some(before) => now.since(before),
                None => Counts::default(),
            };
            if delta.requests > 0 {
                self.fresh.entry(r.id.clone()).or_default().add(&delta);
            }
            self.last.insert(r.id.clone(), now);
        }
    }
}

/// What an interval's figures say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Too few requests to judge: the figures carry over.
    Wait,
    Pass,
    /// Failed, with the figures.
    Fail(String),
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p != 0.0 && p < 0.1 { format!("{p:.2}%") } else { format!("{p:.1}%") }
}

/// Judges a canary's interval against `a` and the stable revision's figures
/// over the same interval.
pub fn judge(a: &Analysis, stable: &RevisionFigures, canary: &RevisionFigures) -> Verdict {
    if canary.requests < a.min_requests.max(1) {
        return Verdict::Wait;
    }
    let vs = if stable.requests > 0 {
        format!(
            "; stable revision {}: {} over {} requests, p99 {} ms",
            stable.revision,
            pct(stable.error_rate()),
            stable.requests,
            stable.p99_ms
        )
    } else {
        format!("; stable revision {} served none", stable.revision)
    };
    if let Some(max) = a.max_error_rate {
        // When the stable revision fails as much (a shared cause, such as a
        // database down), the canary is judged by how much worse it does.
        let stable_bad = stable.requests >= a.min_requests.max(1) && stable.error_rate() > max;
        let limit = if stable_bad { stable.error_rate() + max } else { max };
        if canary.error_rate() > limit {
            let over = if stable_bad { format!("{} (stable's rate + {})", pct(limit), pct(max)) } else { pct(max) };
            return Verdict::Fail(format!(
                "error rate {} > {over} over {} requests{vs}",
                pct(canary.error_rate()),
                canary.requests
            ));
        }
    }
    if let Some(max) = a.max_p99_ms {
        let stable_slow = stable.requests >= a.min_requests.max(1) && stable.p99_ms > max;
        // As slow as the stable revision is not the canary's fault; twice as slow is.
        let limit = if stable_slow { stable.p99_ms * 2 } else { max };
        if canary.p99_ms > limit {
            return Verdict::Fail(format!(
                "p99 {} ms > {limit} ms over {} requests{vs}",
                canary.p99_ms, canary.requests
            ));
        }
    }
    Verdict::Pass
}

/// One analysis pass over every canary under way.
pub(crate) fn pass(core: &Core) -> Result<(), ApiError> {
    let now = skiff_api::now_ms();
    let mut st = core.state();
    let canaries = st.mem().canaries();
    let mut decisions = Vec::new();
    let mut promote = Vec::new();
    {
        let mut meter = core.canary.lock().unwrap_or_else(|p| p.into_inner());
        meter.watched = canaries.iter().map(|c| c.name.clone()).collect();
        if meter.watched.is_empty() {
            *meter = Meter::default();
            return Ok(());
        }
        let watched = meter.watched.clone();
        meter.last.retain(|id, _| watched.contains(deployment_of(id)));
        meter.windows.retain(|name, _| watched.contains(name));
        let fresh = std::mem::take(&mut meter.fresh);
        for c in &canaries {
            let w = meter.windows.entry(c.name.clone()).or_default();
            if w.step_started_ms != c.status.step_started_ms {
                *w = Window { step_started_ms: c.status.step_started_ms, started_ms: now, ..Window::default() };
            }
        }
        for (id, counts) in fresh {
            let Some(r) = st.mem().replica(&id) else { continue };
            let Some(c) = canaries.iter().find(|c| c.name == r.deployment) else { continue };
            let Some(w) = meter.windows.get_mut(&c.name) else { continue };
            if r.revision == c.status.canary.revision {
                w.canary.add(&counts);
            } else if r.revision == c.status.stable.revision {
                w.stable.add(&counts);
            }
        }
        for c in &canaries {
            // Blue/green: promoted by itself after `auto_promote_seconds`
            // of the new revision up in full (a failing one is rolled back).
            if let Some(b) = c.blue_green {
                let up_ms = now.saturating_sub(c.status.step_started_ms);
                if b.auto_promote_seconds > 0
                    && c.status.step_started_ms > 0
                    && !c.status.promoted
                    && up_ms >= b.auto_promote_seconds * 1000
                {
                    promote.push(c.name.clone());
                }
                continue;
            }
            let Some(spec) = &c.spec else { continue };
            // Judged only while a step's weight applies, and until promoted.
            if c.status.step_started_ms == 0 || c.status.promoted {
                continue;
            }
            let Some(w) = meter.windows.get_mut(&c.name) else { continue };
            if now.saturating_sub(w.started_ms) < spec.analysis.interval.0 * 1000 {
                continue;
            }
            let stable = w.stable.figures(c.status.stable.revision);
            let canary = w.canary.figures(c.status.canary.revision);
            let verdict = judge(&spec.analysis, &stable, &canary);
            if verdict != Verdict::Wait {
                *w = Window { step_started_ms: w.step_started_ms, started_ms: now, ..Window::default() };
            }
            decisions.push((c.clone(), verdict, stable, canary));
        }
    }
    for name in promote {
        if let Err(e) = st.canary_promote(&name) {
            tracing::warn!("cannot promote {name}: {e}");
        }
    }
    for (c, verdict, stable, canary) in decisions {
        match verdict {
            Verdict::Wait => {}
            Verdict::Pass => st.canary_passed(&c.name, c.status.step_started_ms, stable, canary)?,
            Verdict::Fail(why) => {
                let step = c.spec.as_ref().and_then(|s| s.steps.get(c.status.step as usize)).map_or(100, |s| s.weight);
                let why = format!("at step {} ({step}%): {why}", c.status.step + 1);
                if let Err(e) = st.canary_abort(&c.name, &why, Some((stable, canary))) {
                    tracing::warn!("cannot abort the canary of {}: {e}", c.name);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::Seconds;

    fn f(revision: u64, requests: u64, errors: u64, p99_ms: u64) -> RevisionFigures {
        RevisionFigures { revision, requests, errors, p99_ms }
    }

    #[test]
    fn judges_errors_and_latency_against_the_analysis_and_the_stable() {
        let a =
            Analysis { max_error_rate: Some(0.01), max_p99_ms: Some(250), min_requests: 100, interval: Seconds(10) };
        assert_eq!(judge(&a, &f(1, 900, 0, 10), &f(2, 99, 50, 10)), Verdict::Wait);
        assert_eq!(judge(&a, &f(1, 900, 0, 10), &f(2, 412, 1, 10)), Verdict::Pass);
        assert_eq!(
            judge(&a, &f(1, 3702, 0, 10), &f(2, 412, 20, 10)),
            Verdict::Fail(
                "error rate 4.9% > 1.0% over 412 requests; stable revision 1: 0.0% over 3702 requests, p99 10 ms"
                    .into()
            )
        );
        // The stable fails as much: a shared cause, not the canary's.
        assert_eq!(judge(&a, &f(1, 1000, 50, 10), &f(2, 412, 20, 10)), Verdict::Pass);
        assert!(
            matches!(judge(&a, &f(1, 1000, 0, 50), &f(2, 412, 0, 300)), Verdict::Fail(w) if w.starts_with("p99 300 ms > 250 ms"))
        );
        // As slow as a slow stable passes; twice as slow fails.
        assert_eq!(judge(&a, &f(1, 1000, 0, 300), &f(2, 412, 0, 300)), Verdict::Pass);
        assert!(matches!(judge(&a, &f(1, 1000, 0, 300), &f(2, 412, 0, 1000)), Verdict::Fail(_)));
    }

    #[test]
    fn counters_become_increments_and_percentiles() {
        let mut m = Meter::default();
        m.watched.insert("web".into());
        let st = |id: &str, requests: u64, errors: u64, buckets: Vec<u64>| ReplicaStatus {
            requests,
            errors,
            latency: buckets,
            ..serde_json::from_value(serde_json::json!({"id": id, "generation": 0, "state": "ready", "restarts": 0}))
                .expect("status")
        };
        m.observe(&[st("web-aaaaaa", 10, 0, vec![10]), st("api-bbbbbb", 5, 0, vec![5])]);
        assert!(m.fresh.is_empty(), "a first report is the baseline");
        m.observe(&[st("web-aaaaaa", 110, 3, vec![60, 0, 0, 0, 50])]);
        let c = &m.fresh["web-aaaaaa"];
        assert_eq!((c.requests, c.errors), (100, 3));
        // Half at <= 1 ms, half at <= 20 ms (the fifth bound): p99 is 20.
        assert_eq!(c.p99_ms(), 20);
        assert!(!m.last.contains_key("api-bbbbbb"));
    }
}
