//! Scaling by load. Nodes report each replica's counters (cpu seconds, HTTP
//! requests) in their heartbeats; [`Window`] keeps recent samples of the
//! replicas of autoscaled deployments. Every second the controller asks it for
//! each such deployment's count:
//!
//! - [`recommend`]: the total rate over `window_seconds` (cpu cores, or requests
//!   per second, summed over the replicas measured) divided by what one replica
//!   should carry, rounded up, within `min..=max`; within 10 % of the target the
//!   count stays.
//! - [`desired`]: stabilized — scaling down takes the highest recommendation of
//!   the last `stabilization_seconds` (so a short dip does not remove replicas),
//!   scaling up the lowest of the last `scale_up_stabilization_seconds` (0: at once).
//!
//! Samples live in memory only: after a restart the scheduler waits for a full
//! window of fresh usage before it changes any count.
//!
//! Scaling to zero ([`Idle`]): a deployment that scales to zero and has
//! replicas is idle once no replica's request counter has moved for its
//! `idle_seconds` (nor was it activated meanwhile); the pass then sets it to
//! zero (`State::scale_to_zero`, a `ScaledToZero` event). Only such
//! deployments are looked at (`Mem::awake`): one at zero costs the pass
//! nothing. The autoscaler itself never goes below one replica; zero is the
//! idle check's alone, and a deployment at zero is left to its next request.

use skiff_api::{Autoscale, ReplicaStatus};
use std::collections::{HashMap, HashSet, VecDeque};

/// Longest window or stabilization kept, in seconds (an apply asking for more is refused).
pub const MAX_WINDOW_SECONDS: u32 = skiff_api::manifest::MAX_AUTOSCALE_WINDOW_SECONDS;
/// A replica's samples are kept at most this often.
const SAMPLE_EVERY_MS: u64 = 500;
/// A replica's last sample older than this (more than a heartbeat ago): a
/// heartbeat has left it out since, so its counters have not changed.
const OMITTED_AFTER_MS: u64 = 1500;
/// Within this fraction of the target the count does not change.
const TOLERANCE: f64 = 0.1;

/// A replica's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub cpu_seconds: f64,
    pub requests: u64,
}

/// The load of a deployment over a window, summed over the replicas measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Replicas measured (see [`measure`]).
    pub replicas: usize,
    /// Cpu cores in use.
    pub cpu_cores: f64,
    /// Requests per second.
    pub requests_per_second: f64,
}

/// A count to set and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    pub why: String,
}

/// The rates of `series` (one per replica) from `from_ms` to `now_ms`; `None`
/// when no replica is measured. A heartbeat carries a running replica only
/// when its counters changed since the last one the scheduler answered, so a
/// replica whose last sample is older than [`OMITTED_AFTER_MS`] was left out
/// of a heartbeat since: its counters are unchanged as of now (and since
/// `from_ms` when that sample is older still). A replica with one sample just
/// taken is not measured yet.
pub fn measure<'a>(series: impl Iterator<Item = &'a VecDeque<Sample>>, from_ms: u64, now_ms: u64) -> Option<Measured> {
    let mut m = Measured { replicas: 0, cpu_cores: 0.0, requests_per_second: 0.0 };
    for s in series {
        let Some(last) = s.back() else { continue };
        let first = match s.iter().find(|x| x.at_ms >= from_ms) {
            Some(first) => *first,
            None => Sample { at_ms: from_ms, ..*last },
        };
        let last_at = if now_ms >= last.at_ms + OMITTED_AFTER_MS { now_ms } else { last.at_ms };
        if last_at <= first.at_ms {
            continue;
        }
        let secs = (last_at - first.at_ms) as f64 / 1000.0;
        m.replicas += 1;
        m.cpu_cores += (last.cpu_seconds - first.cpu_seconds).max(0.0) / secs;
        m.requests_per_second += last.requests.saturating_sub(first.requests) as f64 / secs;
    }
    (m.replicas > 0).then_some(m)
}

/// The count the load `m` asks for, and the reason in words.
pub fn recommend(current: u32, m: &Measured, spec: &Autoscale, cpu_request_millis: u64) -> (u32, String) {
    let window = spec.window_seconds;
    let (ratio, total_over_target, why) = if let Some(target) = spec.target_cpu_percent {
        let per_replica = cpu_request_millis.max(1) as f64 / 1000.0;
        let percent = m.cpu_cores / m.replicas as f64 / per_replica * 100.0;
        let wanted = m.cpu_cores / (per_replica * target as f64 / 100.0);
        (percent / target as f64, wanted, format!("cpu {percent:.0}% of request over {window}s"))
    } else {
        let target = spec.target_requests_per_second.unwrap_or(1.0).max(f64::MIN_POSITIVE);
        let per = m.requests_per_second / m.replicas as f64;
        let why = format!("{:.1} requests/s ({per:.1} per replica) over {window}s", m.requests_per_second);
        (per / target, m.requests_per_second / target, why)
    };
    let target = match (spec.target_cpu_percent, spec.target_requests_per_second) {
        (Some(t), _) => format!("target {t}%"),
        (None, Some(r)) => format!("target {r}/s per replica"),
        (None, None) => "no target".into(),
    };
    let n = if (ratio - 1.0).abs() <= TOLERANCE { current } else { total_over_target.ceil() as u32 };
    let n = n.clamp(spec.min, spec.max);
    let cmp = if ratio > 1.0 + TOLERANCE {
        ">"
    } else if ratio < 1.0 - TOLERANCE {
        "<"
    } else {
        "≈"
    };
    (n, format!("{why} {cmp} {target}"))
}

/// The stabilized count from past recommendations (time ms, count), oldest first,
/// the newest being now's. Scaling down waits until the recommendations have
/// been lower for the whole stabilization window (and the history covers it).
pub fn desired(current: u32, history: &VecDeque<(u64, u32)>, spec: &Autoscale, now_ms: u64) -> u32 {
    let within = |secs: u32| {
        let from = now_ms.saturating_sub(u64::from(secs) * 1000);
        history.iter().filter(move |(t, _)| *t >= from).map(|(_, n)| *n)
    };
    let Some(&(oldest, _)) = history.front() else { return current.clamp(spec.min, spec.max) };
    let up = within(spec.scale_up_stabilization_seconds).min().unwrap_or(current);
    let covers = |secs: u32| oldest + u64::from(secs) * 1000 <= now_ms;
    if up > current && covers(spec.scale_up_stabilization_seconds) {
        return up.min(spec.max);
    }
    let down = within(spec.stabilization_seconds).max().unwrap_or(current);
    if down < current && covers(spec.stabilization_seconds) {
        return down.max(spec.min);
    }
    current.clamp(spec.min, spec.max)
}

/// Recent samples of the replicas of autoscaled deployments, and the
/// recommendations made for each deployment.
#[derive(Debug, Default)]
pub struct Window {
    /// Deployments that autoscale (only their replicas are sampled).
    watched: HashSet<String>,
    samples: HashMap<String, VecDeque<Sample>>,
    recommended: HashMap<String, VecDeque<(u64, u32)>>,
    /// When the deployments that may scale to zero last served.
    pub idle: Idle,
}

/// When each deployment that scales to zero (and has replicas) last had a
/// request, from the request counters of its replicas.
#[derive(Debug, Default)]
pub struct Idle {
    /// Replica id prefixes (`NAME-`, as replica ids begin) of the watched
    /// deployments: what a heartbeat's statuses are filtered by without the
    /// state lock.
    prefixes: HashSet<String>,
    /// Replica id → (requests last reported, when that count was first seen).
    counts: HashMap<String, (u64, u64)>,
    /// Deployment → when it last served or was activated.
    last: HashMap<String, u64>,
}

impl Idle {
    /// Keeps the request counters a heartbeat reports for watched replicas; a
    /// counter that moved (or a first report of served requests) is activity.
    pub fn observe(&mut self, replicas: &[ReplicaStatus], now_ms: u64) {
        if self.prefixes.is_empty() {
            return;
        }
        for r in replicas.iter().filter(|r| self.prefixes.contains(deployment_of(&r.id))) {
            match self.counts.get_mut(&r.id) {
                Some((n, at)) if *n != r.requests => (*n, *at) = (r.requests, now_ms),
                Some(_) => {}
                None => {
                    let at = if r.requests > 0 { now_ms } else { 0 };
                    self.counts.insert(r.id.clone(), (r.requests, at));
                }
            }
        }
    }

    /// Deployment `name` was just activated (or otherwise asked for): it is
    /// busy as of now.
    pub fn touch(&mut self, name: &str, now_ms: u64) {
        self.last.insert(name.to_string(), now_ms);
    }

    /// The deployments of `awake` (name, idle seconds, replica ids) that have
    /// had no request for their idle seconds. A deployment seen for the first
    /// time (newly started, or after a restart of the scheduler) counts from
    /// now. Forgets what is no longer awake.
    pub fn idle(&mut self, awake: &[(String, u32, Vec<String>)], now_ms: u64) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (name, idle_seconds, ids) in awake {
            let last = self.last.entry(name.clone()).or_insert(now_ms);
            for id in ids {
                if let Some(&(_, at)) = self.counts.get(id) {
                    *last = (*last).max(at);
                }
            }
            if now_ms.saturating_sub(*last) >= u64::from(*idle_seconds) * 1000 {
                out.push((name.clone(), *idle_seconds));
            }
        }
        let names: HashSet<&str> = awake.iter().map(|(n, _, _)| n.as_str()).collect();
        let ids: HashSet<&str> = awake.iter().flat_map(|(_, _, ids)| ids.iter().map(String::as_str)).collect();
        self.last.retain(|n, _| names.contains(n.as_str()));
        self.counts.retain(|id, _| ids.contains(id.as_str()));
        self.prefixes =
            awake.iter().flat_map(|(_, _, ids)| ids.iter().map(|id| deployment_of(id).to_string())).collect();
        // A deployment with no replica yet: its first replica's id will start
        // with (at most 56 characters of) its name.
        self.prefixes.extend(awake.iter().map(|(n, _, _)| n[..n.len().min(56)].to_string()));
        out
    }
}

/// The deployment of replica `id` (`NAME-xxxxxx`).
fn deployment_of(id: &str) -> &str {
    id.rsplit_once('-').map_or(id, |(d, _)| d)
}

impl Window {
    /// Keeps the counters a heartbeat reports.
    pub fn observe(&mut self, replicas: &[ReplicaStatus], now_ms: u64) {
        self.idle.observe(replicas, now_ms);
        for r in replicas.iter().filter(|r| self.watched.contains(deployment_of(&r.id))) {
            let s = self.samples.entry(r.id.clone()).or_default();
            if s.back().is_some_and(|b| now_ms < b.at_ms + SAMPLE_EVERY_MS) {
                continue;
            }
            s.push_back(Sample { at_ms: now_ms, cpu_seconds: r.cpu_seconds, requests: r.requests });
        }
    }

    /// Sets which deployments autoscale and forgets what is older than any window.
    pub fn retain(&mut self, watched: HashSet<String>, now_ms: u64) {
        let from = now_ms.saturating_sub(u64::from(MAX_WINDOW_SECONDS) * 1000);
        self.samples.retain(|id, s| {
            while s.front().is_some_and(|x| x.at_ms < from) {
                s.pop_front();
            }
            !s.is_empty() && watched.contains(deployment_of(id))
        });
        self.recommended.retain(|d, _| watched.contains(d));
        self.watched = watched;
    }

    /// The count deployment `name` (now `current` replicas `ids`) should have;
    /// `None` when it should stay or nothing is measured yet.
    pub fn decide(
        &mut self,
        name: &str,
        ids: &[String],
        current: u32,
        spec: &Autoscale,
        cpu_request_millis: u64,
        now_ms: u64,
    ) -> Option<Decision> {
        let from = now_ms.saturating_sub(u64::from(spec.window_seconds) * 1000);
        let m = measure(ids.iter().filter_map(|id| self.samples.get(id)), from, now_ms)?;
        let (n, why) = recommend(current, &m, spec, cpu_request_millis);
        let keep = u64::from(spec.stabilization_seconds.max(spec.scale_up_stabilization_seconds)) * 1000;
        let history = self.recommended.entry(name.to_string()).or_default();
        history.push_back((now_ms, n));
        // One entry older than the window stays: it shows the history covers it.
        while history.len() > 1 && history.get(1).is_some_and(|(t, _)| *t + keep < now_ms) {
            history.pop_front();
        }
        let to = desired(current, history, spec, now_ms);
        (to != current).then_some(Decision { replicas: to, why })
    }
}

/// One controller step: every autoscaled deployment whose load asks for another
/// count gets it, with a `Scaled` event saying why; every deployment that
/// scales to zero and has been idle for its idle seconds goes to zero.
pub(crate) fn pass(core: &crate::Core) -> Result<(), crate::error::ApiError> {
    let now = skiff_api::now_ms();
    let mut st = core.state();
    // A deployment at zero is left to its next request; above zero the
    // autoscaler keeps at least one replica (zero is the idle check's).
    let plans: Vec<(String, Vec<String>, u32, Autoscale, u64)> = st
        .mem()
        .autoscaled()
        .filter(|d| d.replicas > 0)
        .filter_map(|d| {
            let ids = st.mem().replicas_of(&d.name).map(|r| r.id.clone()).collect();
            let a = d.autoscale?;
            Some((d.name.clone(), ids, d.replicas, Autoscale { min: a.min.max(1), ..a }, d.spec.resources.cpu.0))
        })
        .collect();
    let awake = st.mem().awake();
    let (decisions, idle) = {
        let mut w = core.autoscale.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(plans.iter().map(|p| p.0.clone()).collect(), now);
        let decisions: Vec<(String, Decision)> = plans
            .iter()
            .filter_map(|(name, ids, current, a, cpu)| {
                Some((name.clone(), w.decide(name, ids, *current, a, *cpu, now)?))
            })
            .collect();
        (decisions, w.idle.idle(&awake, now))
    };
    for (name, d) in decisions {
        st.autoscale(&name, d.replicas, &d.why)?;
    }
    for (name, idle_seconds) in idle {
        st.scale_to_zero(&name, idle_seconds)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Autoscale {
        Autoscale {
            min: 1,
            max: 5,
            target_cpu_percent: Some(50),
            target_requests_per_second: None,
            window_seconds: 10,
            stabilization_seconds: 30,
            scale_up_stabilization_seconds: 0,
        }
    }

    fn series(points: &[(u64, f64, u64)]) -> VecDeque<Sample> {
        points.iter().map(|&(at_ms, cpu_seconds, requests)| Sample { at_ms, cpu_seconds, requests }).collect()
    }

    #[test]
    fn measures_rates_over_the_window_only() {
        // 0.5 cores for 10 s inside the window; an old sample before it is ignored.
        let a = series(&[(0, 0.0, 0), (20_000, 100.0, 0), (30_000, 105.0, 50)]);
        let b = series(&[(29_500, 1.0, 10)]); // one sample just taken: not measured yet
        let m = measure([&a, &b].into_iter(), 20_000, 30_000).expect("measured");
        assert_eq!(m.replicas, 1);
        assert!((m.cpu_cores - 0.5).abs() < 1e-9, "{m:?}");
        assert!((m.requests_per_second - 5.0).abs() < 1e-9, "{m:?}");
        assert_eq!(measure([&b].into_iter(), 0, 30_000), None);
    }

    #[test]
    fn a_replica_left_out_of_heartbeats_is_measured_idle_until_now() {
        // Busy until 30 s, then unchanged (heartbeats leave it out): over a
        // window from 20 s to 40 s its rate halves, and over one after its
        // last sample it is zero, not unmeasured.
        let a = series(&[(20_000, 100.0, 0), (30_000, 105.0, 50)]);
        let m = measure([&a].into_iter(), 20_000, 40_000).expect("measured");
        assert!((m.cpu_cores - 0.25).abs() < 1e-9, "{m:?}");
        assert!((m.requests_per_second - 2.5).abs() < 1e-9, "{m:?}");
        let m = measure([&a].into_iter(), 35_000, 45_000).expect("measured while idle");
        assert_eq!((m.replicas, m.cpu_cores, m.requests_per_second), (1, 0.0, 0.0));
        // Its one sample, taken long enough ago, says the same.
        let b = series(&[(10_000, 1.0, 10)]);
        assert_eq!(measure([&b].into_iter(), 20_000, 30_000).map(|m| m.requests_per_second), Some(0.0));
    }

    #[test]
    fn recommends_from_the_total_load_within_bounds() {
        let s = spec();
        // Two replicas of 100m using 85m each: 85% of request > 50% → 4 replicas.
        let m = Measured { replicas: 2, cpu_cores: 0.17, requests_per_second: 0.0 };
        let (n, why) = recommend(2, &m, &s, 100);
        assert_eq!(n, 4);
        assert_eq!(why, "cpu 85% of request over 10s > target 50%");
        // Far above: capped at max. Idle: down to min.
        let hot = Measured { replicas: 2, cpu_cores: 2.0, requests_per_second: 0.0 };
        assert_eq!(recommend(2, &hot, &s, 100).0, 5);
        let idle = Measured { replicas: 3, cpu_cores: 0.0, requests_per_second: 0.0 };
        assert_eq!(recommend(3, &idle, &s, 100).0, 1);
        // Within the tolerance: stays.
        let near = Measured { replicas: 3, cpu_cores: 0.155, requests_per_second: 0.0 };
        assert_eq!(recommend(3, &near, &s, 100).0, 3);
        // Requests per second.
        let rps = Autoscale { target_cpu_percent: None, target_requests_per_second: Some(5.0), ..s };
        let m = Measured { replicas: 1, cpu_cores: 0.0, requests_per_second: 12.0 };
        let (n, why) = recommend(1, &m, &rps, 100);
        assert_eq!(n, 3);
        assert_eq!(why, "12.0 requests/s (12.0 per replica) over 10s > target 5/s per replica");
    }

    #[test]
    fn scales_up_at_once_and_down_only_after_the_stabilization_window() {
        let s = spec();
        let h = |v: &[(u64, u32)]| v.iter().copied().collect::<VecDeque<_>>();
        assert_eq!(desired(2, &h(&[(0, 4)]), &s, 0), 4, "up at once");
        // Low for 20 s of a 30 s window: stays.
        assert_eq!(desired(4, &h(&[(0, 4), (10_000, 1), (30_000, 1)]), &s, 30_000), 4);
        // Low for the whole window: down to the highest recommendation in it.
        assert_eq!(desired(4, &h(&[(0, 4), (10_000, 2), (40_000, 1)]), &s, 40_000), 2);
        assert_eq!(desired(4, &h(&[(0, 4), (10_000, 1), (41_000, 1)]), &s, 41_000), 1);
        // Fresh history (a restarted scheduler): no scale-down before it covers the window.
        assert_eq!(desired(4, &h(&[(50_000, 1), (60_000, 1)]), &s, 60_000), 4);
        // A scale-up window takes the lowest recommendation over it.
        let slow = Autoscale { scale_up_stabilization_seconds: 10, ..s };
        assert_eq!(desired(1, &h(&[(0, 1), (5_000, 5), (10_000, 5)]), &slow, 10_000), 1);
        assert_eq!(desired(1, &h(&[(0, 3), (5_000, 5), (10_000, 5)]), &slow, 10_000), 3);
        // Bounds changed under it: back within them.
        assert_eq!(desired(9, &h(&[]), &s, 0), 5);
    }

    #[test]
    fn idle_is_no_moved_request_counter_for_the_idle_seconds() {
        let st = |id: &str, requests: u64| ReplicaStatus {
            id: id.into(),
            generation: 1,
            state: skiff_api::ReplicaState::Ready,
            restarts: 0,
            reason: None,
            exit_code: None,
            cpu_seconds: 0.0,
            memory_bytes: 0,
            requests,
            errors: 0,
            latency: Vec::new(),
        };
        let mut idle = Idle::default();
        let awake = |ids: &[&str]| vec![("web".to_string(), 10, ids.iter().map(|s| s.to_string()).collect())];
        // Unwatched until the pass names it: nothing is kept.
        idle.observe(&[st("web-aaaaaa", 5)], 0);
        assert!(idle.counts.is_empty());
        // First seen at 1 s: idle counts from then.
        assert!(idle.idle(&awake(&["web-aaaaaa"]), 1_000).is_empty());
        idle.observe(&[st("web-aaaaaa", 0), st("other-bbbbbb", 3)], 2_000);
        assert!(!idle.counts.contains_key("other-bbbbbb"), "only watched deployments are kept");
        // A counter that moves is activity; one that stays is not.
        idle.observe(&[st("web-aaaaaa", 4)], 6_000);
        idle.observe(&[st("web-aaaaaa", 4)], 9_000);
        assert!(idle.idle(&awake(&["web-aaaaaa"]), 15_000).is_empty(), "served at 6 s: busy until 16 s");
        assert_eq!(idle.idle(&awake(&["web-aaaaaa"]), 16_000), [("web".to_string(), 10)]);
        // An activation is activity too.
        idle.touch("web", 20_000);
        assert!(idle.idle(&awake(&["web-aaaaaa"]), 29_000).is_empty());
        // At zero it is forgotten.
        assert!(idle.idle(&[], 40_000).is_empty());
        assert!(idle.counts.is_empty() && idle.last.is_empty() && idle.prefixes.is_empty());
    }

    #[test]
    fn window_samples_only_autoscaled_deployments_and_decides() {
        let mut w = Window::default();
        w.retain(["web".to_string()].into(), 0);
        let st = |id: &str, cpu: f64| ReplicaStatus {
            id: id.into(),
            generation: 1,
            state: skiff_api::ReplicaState::Running,
            restarts: 0,
            reason: None,
            exit_code: None,
            cpu_seconds: cpu,
            memory_bytes: 0,
            requests: 0,
            errors: 0,
            latency: Vec::new(),
        };
        w.observe(&[st("web-aaaaaa", 0.0), st("other-bbbbbb", 0.0)], 1_000);
        w.observe(&[st("web-aaaaaa", 0.9), st("other-bbbbbb", 0.0)], 2_000);
        assert!(!w.samples.contains_key("other-bbbbbb"));
        let ids = vec!["web-aaaaaa".to_string()];
        let d = w.decide("web", &ids, 1, &spec(), 100, 2_000).expect("a decision");
        assert_eq!(d.replicas, 5);
        assert!(d.why.starts_with("cpu 900% of request over 10s > target 50%"), "{}", d.why);
        w.retain(HashSet::new(), 3_000);
        assert!(w.samples.is_empty() && w.recommended.is_empty());
    }
}
