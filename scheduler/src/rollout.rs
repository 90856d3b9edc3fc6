//! The deployment controller's decision, as a pure function: from the replicas a
//! deployment has and the count and strategy it wants, which replicas to create
//! and which to stop. A rolling update keeps at least `desired − maxUnavailable`
//! replicas available and at most `desired + maxSurge` in all; only a replica
//! that has been available for `minReadySeconds` lets an old one go.

use skiff_api::{Millis, UpdateStrategy};

/// One live replica as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    /// Whether it runs the deployment's current revision.
    pub current: bool,
    /// Serving: running (and ready, when it has a readiness check) long enough.
    pub available: bool,
    /// Failed for good or crash-looping: a new revision with such replicas has failed.
    pub failing: bool,
    /// Removal order: lower goes first.
    pub rank: (u8, std::cmp::Reverse<Millis>),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// New replicas of the current revision to create.
    pub create: usize,
    /// Replicas to stop, with why.
    pub stop: Vec<(String, &'static str)>,
    /// Whether replicas of an older revision remain (a rollout is under way).
    pub rolling: bool,
    /// Replicas of the current revision that are failing.
    pub failing: usize,
    /// Available replicas of the current revision.
    pub available_new: usize,
}

/// Decides the next step for a deployment wanting `desired` replicas.
pub fn plan(desired: usize, strategy: &UpdateStrategy, paused: bool, seen: &[Seen]) -> Plan {
    let mut new: Vec<&Seen> = seen.iter().filter(|s| s.current).collect();
    let mut old: Vec<&Seen> = seen.iter().filter(|s| !s.current).collect();
    new.sort_by_key(|s| s.rank);
    old.sort_by_key(|s| s.rank);
    let mut p = Plan {
        rolling: !old.is_empty(),
        failing: new.iter().filter(|s| s.failing).count(),
        available_new: new.iter().filter(|s| s.available).count(),
        ..Plan::default()
    };
    // Too many of the current revision: scale down, least useful first.
    if new.len() > desired {
        for s in &new[..new.len() - desired] {
            p.stop.push((s.id.clone(), "scaled down"));
        }
        new.truncate(desired);
    }
    if old.is_empty() {
        p.create = desired - new.len();
        return p;
    }
    if paused {
        return p;
    }
    // Both zero would never make progress: allow one extra.
    let surge = if strategy.max_surge == 0 && strategy.max_unavailable == 0 { 1 } else { strategy.max_surge as usize };
    let max_total = desired + surge;

    // Old replicas that serve nothing can go at once; they count for nothing.
    let (idle, serving): (Vec<&Seen>, Vec<&Seen>) = old.iter().partition(|s| !s.available);
    for s in idle {
        p.stop.push((s.id.clone(), "replaced by a new revision"));
    }
    let min_available = desired.saturating_sub(strategy.max_unavailable as usize);
    // Serving old replicas go as far as availability allows.
    let mut available = new.iter().filter(|s| s.available).count() + serving.len();
    for s in serving {
        if available <= min_available {
            break;
        }
        p.stop.push((s.id.clone(), "replaced by a new revision"));
        available -= 1;
    }
    // New replicas fill the room the stops above make, in the same step (as a
    // Deployment scales its new ReplicaSet up and the old one down in one sync).
    let total = new.len() + old.len() - p.stop.iter().filter(|(id, _)| old.iter().any(|o| &o.id == id)).count();
    p.create = (desired - new.len()).min(max_total.saturating_sub(total));
    p
}

/// Decides the next step of a canary rollout (#18): the new revision is kept
/// at `canary` replicas (its step's share of `desired`, at least one) beside
/// `desired` replicas of the old, which go only once `promote` says the new
/// ones carry all requests (at `desired`, all available, weight 100).
pub fn canary_plan(desired: usize, canary: usize, promote: bool, seen: &[Seen]) -> Plan {
    let mut new: Vec<&Seen> = seen.iter().filter(|s| s.current).collect();
    let mut old: Vec<&Seen> = seen.iter().filter(|s| !s.current).collect();
    new.sort_by_key(|s| s.rank);
    old.sort_by_key(|s| s.rank);
    let mut p = Plan {
        rolling: !old.is_empty(),
        failing: new.iter().filter(|s| s.failing).count(),
        available_new: new.iter().filter(|s| s.available).count(),
        ..Plan::default()
    };
    let target = if promote { desired } else { canary.min(desired.max(1)) };
    if new.len() > target {
        for s in &new[..new.len() - target] {
            p.stop.push((s.id.clone(), "scaled down"));
        }
    }
    p.create = target.saturating_sub(new.len());
    let keep_old = if promote { 0 } else { desired };
    if old.len() > keep_old {
        for s in &old[..old.len() - keep_old] {
            p.stop.push((s.id.clone(), "replaced by a new revision"));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    /// `spec` is one letter per replica: N/n = new available/not, O/o = old
    /// available/not, F = new failing.
    fn check(desired: usize, surge: u32, unavailable: u32, spec: &str, expected: Expect) {
        let seen: Vec<Seen> = spec
            .chars()
            .enumerate()
            .map(|(i, c)| Seen {
                id: format!("{c}{i}"),
                current: matches!(c, 'N' | 'n' | 'F'),
                available: matches!(c, 'N' | 'O'),
                failing: c == 'F',
                rank: (0, std::cmp::Reverse(i as u64)),
            })
            .collect();
        let strategy = UpdateStrategy { max_surge: surge, max_unavailable: unavailable, ..UpdateStrategy::default() };
        let p = plan(desired, &strategy, false, &seen);
        let stops: Vec<&str> = p.stop.iter().map(|(id, _)| id.as_str()).collect();
        expected
            .assert_eq(&format!("create {} stop {:?} rolling {} failing {}", p.create, stops, p.rolling, p.failing));
    }

    #[test]
    fn steady_state_and_scaling() {
        check(3, 1, 0, "NNN", expect![[r#"create 0 stop [] rolling false failing 0"#]]);
        check(3, 1, 0, "N", expect![[r#"create 2 stop [] rolling false failing 0"#]]);
        check(1, 1, 0, "NNN", expect![[r#"create 0 stop ["N2", "N1"] rolling false failing 0"#]]);
    }

    #[test]
    fn rolling_with_surge_one_never_drops_capacity() {
        // Start: three old. One new is made, none stopped.
        check(3, 1, 0, "OOO", expect![[r#"create 1 stop [] rolling true failing 0"#]]);
        // The new one is not available yet: wait.
        check(3, 1, 0, "OOOn", expect![[r#"create 0 stop [] rolling true failing 0"#]]);
        // It is: one old goes (capacity stays at 3) and the next new one takes its room at once.
        check(3, 1, 0, "OOON", expect![[r#"create 1 stop ["O2"] rolling true failing 0"#]]);
        check(3, 1, 0, "OON", expect![[r#"create 1 stop [] rolling true failing 0"#]]);
        check(3, 1, 0, "ONN", expect![[r#"create 1 stop [] rolling true failing 0"#]]);
        check(3, 1, 0, "ONNN", expect![[r#"create 0 stop ["O0"] rolling true failing 0"#]]);
    }

    #[test]
    fn unavailable_old_replicas_go_at_once_and_failures_are_counted() {
        check(3, 1, 0, "OoOF", expect![[r#"create 1 stop ["o1"] rolling true failing 1"#]]);
        check(2, 0, 1, "OO", expect![[r#"create 1 stop ["O1"] rolling true failing 0"#]]);
        check(2, 0, 1, "O", expect![[r#"create 1 stop [] rolling true failing 0"#]]);
        check(2, 0, 0, "OO", expect![[r#"create 1 stop [] rolling true failing 0"#]]);
    }

    #[test]
    fn a_canary_runs_beside_the_old_until_promoted() {
        let seen = |spec: &str| -> Vec<Seen> {
            spec.chars()
                .enumerate()
                .map(|(i, c)| Seen {
                    id: format!("{c}{i}"),
                    current: matches!(c, 'N' | 'n'),
                    available: matches!(c, 'N' | 'O'),
                    failing: false,
                    rank: (0, std::cmp::Reverse(i as u64)),
                })
                .collect()
        };
        let show =
            |p: Plan| format!("create {} stop {:?}", p.create, p.stop.iter().map(|s| s.0.as_str()).collect::<Vec<_>>());
        // Step of 10% of 4: one canary, every old one stays.
        assert_eq!(show(canary_plan(4, 1, false, &seen("OOOO"))), "create 1 stop []");
        assert_eq!(show(canary_plan(4, 1, false, &seen("OOOON"))), "create 0 stop []");
        // Step of 50%: two.
        assert_eq!(show(canary_plan(4, 2, false, &seen("OOOON"))), "create 1 stop []");
        // Promoted, not all available yet: the old stay.
        assert_eq!(show(canary_plan(4, 4, false, &seen("OOOONNnn"))), "create 0 stop []");
        // Carrying 100%: the old go.
        assert_eq!(show(canary_plan(4, 4, true, &seen("OOOONNNN"))), r#"create 0 stop ["O3", "O2", "O1", "O0"]"#);
    }
}
