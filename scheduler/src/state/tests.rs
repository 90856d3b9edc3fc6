//! The working set's tests.

use super::scheduling::SCHEDULE_BATCH;
use super::*;

#[test]
fn heartbeats_slow_down_and_grace_grows_past_the_rate_limit() {
    let p = Policy::default();
    assert_eq!(p.heartbeat_interval(1), Duration::from_secs(1));
    assert_eq!(p.heartbeat_interval(5000), Duration::from_secs(1));
    assert_eq!(p.node_grace(5000), Duration::from_secs(3));
    assert_eq!(p.heartbeat_interval(20_000), Duration::from_secs(4));
    assert_eq!(p.node_grace(20_000), Duration::from_secs(12));
    let long = Policy { node_grace: Duration::from_secs(30), ..p };
    assert_eq!(long.node_grace(20_000), Duration::from_secs(120));
    let quick = Policy { node_grace: Duration::from_millis(1500), ..p };
    assert_eq!(quick.node_grace(100), Duration::from_millis(1500));
}

/// Every legal and illegal transition of the replica state machine, written out.
#[test]
fn replica_state_machine() {
    use ReplicaState::*;
    let mut out = String::new();
    for from in ReplicaState::ALL {
        let to: Vec<String> =
            ReplicaState::ALL.iter().filter(|&&t| t != from && from.can_become(t)).map(|t| t.to_string()).collect();
        out.push_str(&format!("{from:>8} -> {}\n", if to.is_empty() { "(none)".into() } else { to.join(" ") }));
    }
    expect_test::expect![[r#"
        pending -> assigned stopped
        assigned -> starting running ready exited failed lost stopped
        starting -> running ready exited failed lost stopped
        running -> starting ready exited failed lost stopped
        ready -> starting running exited failed lost stopped
        exited -> starting running ready failed lost stopped
        failed -> starting running ready exited lost stopped
        lost -> stopped
        stopped -> (none)
    "#]]
    .assert_eq(&out);
    assert_eq!(Lost.become_(Running), Err(IllegalTransition { from: Lost, to: Running }));
    assert_eq!(Stopped.become_(Pending).unwrap_err().to_string(), "replica cannot go from stopped to pending");
    assert!(Pending.become_(Pending).is_ok(), "a repeated report is not a transition");
}

fn state() -> (State, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let store = Store::open(&dir.0.join("state.db")).unwrap();
    let keys = Keyring::open(&dir.0).unwrap();
    let st = State::load(store, keys, Policy::default()).unwrap();
    (st, dir)
}

/// A directory for one test, removed when dropped, even when the test fails.
pub(crate) mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("skiff-test-{}-{}", std::process::id(), fastrand::u64(..)));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn node(name: &str, mem_mi: u64) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        address: "http://127.0.0.1:1".into(),
        labels: BTreeMap::new(),
        capacity: Resources::new(4000, mem_mi << 20),
        runtimes: vec![Runtime::Wasm],
        ingress: None,
    }
}

fn spec(mem_mi: u64) -> WorkloadSpec {
    WorkloadSpec {
        workload: Workload::Wasm("sha256:00".into()),
        resources: Resources::new(100, mem_mi << 20),
        env: BTreeMap::new(),
        args: vec![],
        restart: RestartPolicy::Always,
        constraints: BTreeMap::new(),
        secrets: vec![],
        allowed_hosts: vec![],
        volumes: vec![],
        probes: Default::default(),
        http_port: None,
        ports: vec![],
        network: Default::default(),
        stop_grace_period: None,
        volume_lease: false,
        rebalance: false,
    }
}

fn per_node(st: &State) -> Vec<(String, u32, u64)> {
    st.mem().nodes().iter().map(|n| (n.name.clone(), n.replicas, n.allocated.memory.0 >> 20)).collect()
}

/// Each deployment's spread counts, recounted from its placed replicas.
fn spread_recounted(mem: &Mem) -> BTreeMap<String, BTreeMap<usize, u32>> {
    let mut out: BTreeMap<String, BTreeMap<usize, u32>> = BTreeMap::new();
    for r in mem.replicas.values().filter(|r| r.state.is_placed()) {
        if let Some(&i) = r.node.as_ref().and_then(|n| mem.node_idx.get(n)) {
            *out.entry(r.deployment.clone()).or_default().entry(i).or_default() += 1;
        }
    }
    out
}

fn spread_kept(mem: &Mem) -> BTreeMap<String, BTreeMap<usize, u32>> {
    mem.deployments
        .iter()
        .filter(|(_, e)| !e.spread.is_empty())
        .map(|(name, e)| (name.clone(), e.spread.iter().map(|(&i, &c)| (i, c)).collect()))
        .collect()
}

#[test]
fn spread_counts_follow_nodes_moved_by_a_removal() {
    let (mut st, _dir) = state();
    for i in 0..4 {
        st.register(node(&format!("n{i}"), 1024)).unwrap();
    }
    for d in ["a", "b"] {
        st.apply(
            d,
            ApplyRequest { replicas: Some(6), spec: spec(1), strategy: None, autoscale: None, scale_to_zero: None },
        )
        .unwrap();
    }
    st.schedule().unwrap();
    assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()));
    assert_eq!(spread_kept(st.mem()).len(), 2, "both deployments are placed");
    // The first node goes: the last one takes its index.
    st.remove_node("n0").unwrap();
    assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()), "after removing n0");
    st.schedule().unwrap();
    assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()), "after replacing n0's replicas");
    st.remove_node("n2").unwrap();
    st.schedule().unwrap();
    assert_eq!(spread_kept(st.mem()), spread_recounted(st.mem()), "after removing n2");
}

#[test]
fn a_scheduling_pass_places_one_batch_and_leaves_the_rest_for_the_next() {
    let (mut st, _dir) = state();
    // 40 replicas of 100m fit a 4-cpu node: 60 nodes hold more than a batch.
    for i in 0..60 {
        st.register(node(&format!("n{i}"), 1024)).unwrap();
    }
    let total = SCHEDULE_BATCH + 52;
    st.apply(
        "big",
        ApplyRequest {
            replicas: Some(total as u32),
            spec: spec(1),
            strategy: None,
            autoscale: None,
            scale_to_zero: None,
        },
    )
    .unwrap();
    assert_eq!(st.schedule().unwrap(), SCHEDULE_BATCH);
    assert!(st.mem().sched_dirty, "a full batch leaves the rest for the next pass");
    assert_eq!(st.schedule().unwrap(), 52);
    assert!(!st.mem().sched_dirty);
    assert!(st.mem().replicas_of("big").all(|r| r.state == ReplicaState::Assigned));
    // One event per deployment and pass, naming the first placements.
    let events = st.store().events(Some("deployment/big"), 10).unwrap();
    let scheduled: Vec<&str> = events.iter().filter(|e| e.reason == "Scheduled").map(|e| e.message.as_str()).collect();
    assert_eq!(scheduled.len(), 2, "{scheduled:?}");
    assert!(scheduled[0].starts_with(&format!("{SCHEDULE_BATCH} replicas placed: big-")), "{}", scheduled[0]);
    assert!(scheduled[0].ends_with(&format!(" and {} more", SCHEDULE_BATCH - 10)), "{}", scheduled[0]);
}

/// Deployment `name`'s status counted by walking its replicas, as
/// `Mem::deployment` did before it kept counts.
fn recount(st: &State, name: &str) -> DeploymentStatus {
    let mem = st.mem();
    let mut s = DeploymentStatus::default();
    for r in mem.replicas_of(name) {
        s.total += 1;
        s.restarts += r.restarts;
        match r.state {
            ReplicaState::Pending => s.pending += 1,
            ReplicaState::Running | ReplicaState::Ready => s.running += 1,
            ReplicaState::Failed | ReplicaState::Exited => s.failed += 1,
            _ => {}
        }
        if mem.serving(r) {
            s.ready += 1;
            s.available += 1;
        }
    }
    s
}

fn status(name: &str, state: ReplicaState, generation: u64, restarts: u32) -> ReplicaStatus {
    ReplicaStatus {
        id: name.into(),
        generation,
        state,
        restarts,
        reason: None,
        exit_code: None,
        cpu_seconds: 0.0,
        memory_bytes: 0,
        requests: 0,
        errors: 0,
        latency: Vec::new(),
    }
}

/// A follower's copy applies changed replicas in place (`Mem::apply_replicas`)
/// and must end as a working set loaded from the store would.
#[test]
fn replicas_applied_in_place_match_the_store_loaded_anew() {
    let (mut st, _dir) = state();
    st.register(node("a", 1024)).unwrap();
    st.register(node("b", 1024)).unwrap();
    let apply = |n, mem| ApplyRequest {
        replicas: Some(n),
        spec: spec(mem),
        strategy: None,
        autoscale: None,
        scale_to_zero: None,
    };
    st.apply("web", apply(8, 100)).unwrap();
    st.apply("api", apply(1, 50)).unwrap();
    let mut copy = Mem::load(st.store()).unwrap();
    let ids = |m: &Mem| m.all_replicas().map(|r| r.id.clone()).collect::<BTreeSet<String>>();
    let mut seen = ids(&copy);
    // Placed, reported running with restarts, scaled down and up.
    st.schedule().unwrap();
    let on_a: Vec<Replica> = st.mem().replicas_on("a").cloned().collect();
    let reports = on_a.iter().map(|r| status(&r.id, ReplicaState::Running, r.generation, 1)).collect();
    st.heartbeat("a", Heartbeat { capacity: Resources::new(4000, 1024 << 20), replicas: reports, delta: false })
        .unwrap();
    st.scale("web", 3).unwrap();
    st.scale("api", 4).unwrap();
    st.schedule().unwrap();
    let fresh = Mem::load(st.store()).unwrap();
    // What the watch delivers for the replicas: each one as it is now, or deleted.
    seen.extend(ids(&fresh));
    let changes = seen.into_iter().map(|id| (id.clone(), fresh.replicas.get(&id).cloned())).collect();
    copy.apply_replicas(changes);
    let view = |m: &Mem| {
        let nodes: Vec<(String, u32, Resources)> =
            m.nodes().iter().map(|n| (n.name.clone(), n.replicas, n.allocated)).collect();
        let deployments: Vec<_> = ["web", "api"].iter().map(|d| m.deployment(d).map(|d| d.status)).collect();
        let pending: Vec<_> = m.pending.iter().cloned().collect();
        (nodes, deployments, ids(m), pending, m.by_node.clone(), m.ports_in_use.clone())
    };
    assert_eq!(view(&copy), view(&fresh));
    let running = fresh.all_replicas().filter(|r| r.state == ReplicaState::Running).count();
    assert!(running > 0 && fresh.pending.is_empty(), "nothing much changed: {running} running");
}

#[test]
fn deployment_counts_follow_every_change_and_a_reload() {
    let (mut st, dir) = state();
    st.register(node("a", 1024)).unwrap();
    st.register(node("b", 1024)).unwrap();
    let apply = |replicas| ApplyRequest {
        replicas: Some(replicas),
        spec: spec(100),
        strategy: None,
        autoscale: None,
        scale_to_zero: None,
    };
    st.apply("web", apply(12)).unwrap();
    st.schedule().unwrap();
    let check = |st: &State| {
        assert_eq!(st.mem().deployment("web").unwrap().status, recount(st, "web"));
        let mut by_revision: BTreeMap<u64, u32> = BTreeMap::new();
        for r in st.mem().replicas_of("web") {
            *by_revision.entry(r.revision).or_default() += 1;
        }
        assert_eq!(st.mem().deployments["web"].by_revision, by_revision);
    };
    check(&st);
    // Reports from a: running, failed with restarts, ready; a delta carries some.
    let on_a: Vec<Replica> = st.mem().replicas_on("a").cloned().collect();
    let states = [ReplicaState::Running, ReplicaState::Failed, ReplicaState::Ready];
    let reports: Vec<ReplicaStatus> =
        on_a.iter().enumerate().map(|(i, r)| status(&r.id, states[i % 3], r.generation, (i % 2) as u32)).collect();
    let hb = Heartbeat { capacity: Resources::new(4000, 1024 << 20), replicas: reports, delta: false };
    st.heartbeat("a", hb).unwrap();
    check(&st);
    let first = on_a.first().unwrap();
    let hb = Heartbeat {
        capacity: Resources::new(4000, 1024 << 20),
        replicas: vec![status(&first.id, ReplicaState::Exited, first.generation, 4)],
        delta: true,
    };
    st.heartbeat("a", hb).unwrap();
    check(&st);
    st.scale("web", 5).unwrap();
    check(&st);
    // A new revision rolls out beside the old one.
    let update =
        ApplyRequest { replicas: Some(5), spec: spec(101), strategy: None, autoscale: None, scale_to_zero: None };
    st.apply("web", update).unwrap();
    st.schedule().unwrap();
    check(&st);
    assert_eq!(st.mem().deployments["web"].by_revision.len(), 2, "both revisions live");
    st.policy.node_grace = Duration::from_millis(1);
    st.liveness.set("a", Instant::now() + Duration::from_secs(60), now_ms(), None);
    std::thread::sleep(Duration::from_millis(5));
    st.check_nodes().unwrap();
    check(&st);
    let before = st.mem().deployment("web").unwrap().status;
    let st =
        State::load(Store::open(&dir.0.join("state.db")).unwrap(), Keyring::open(&dir.0).unwrap(), Policy::default())
            .unwrap();
    check(&st);
    assert_eq!(st.mem().deployment("web").unwrap().status, before);
}

#[test]
fn a_node_behind_by_a_few_changes_gets_only_those() {
    let (mut st, dir) = state();
    st.register(node("a", 1024)).unwrap();
    let apply =
        |n| ApplyRequest { replicas: Some(n), spec: spec(10), strategy: None, autoscale: None, scale_to_zero: None };
    st.apply("web", apply(3)).unwrap();
    st.schedule().unwrap();
    let first = st.assignments("a").unwrap();
    assert_eq!((first.replicas.len(), first.delta), (3, false));
    // Its own reports change no assignment: nothing to wake it for.
    let reports = first.replicas.iter().map(|a| status(&a.replica, ReplicaState::Running, a.generation, 0)).collect();
    st.heartbeat("a", Heartbeat { capacity: Resources::new(4000, 1024 << 20), replicas: reports, delta: true })
        .unwrap();
    assert_eq!(st.mem().index, first.index, "a report is no change of the set");
    st.apply("web", apply(2)).unwrap();
    st.apply("api", apply(1)).unwrap();
    st.schedule().unwrap();
    let changes = st.assignment_changes("a", first.index).unwrap().expect("the log reaches back");
    let whole = st.assignments("a").unwrap();
    assert!(changes.delta && changes.index == whole.index);
    assert_eq!(changes.replicas.iter().map(|a| a.deployment.as_str()).collect::<Vec<_>>(), ["api"]);
    assert_eq!(changes.removed.len(), 1);
    // Applied to the first set, the changes make the whole set.
    let mut ids: BTreeSet<String> = first.replicas.iter().map(|a| a.replica.clone()).collect();
    ids.retain(|id| !changes.removed.contains(id));
    ids.extend(changes.replicas.iter().map(|a| a.replica.clone()));
    assert_eq!(ids, whole.replicas.iter().map(|a| a.replica.clone()).collect());
    // Caught up: nothing new. Index 0, a future index, or a reloaded
    // working set (no log) get the whole set.
    let now = st.assignment_changes("a", whole.index).unwrap().unwrap();
    assert!(now.replicas.is_empty() && now.removed.is_empty());
    assert!(st.assignment_changes("a", 0).unwrap().is_none());
    assert!(st.assignment_changes("a", whole.index + 1).unwrap().is_none());
    assert!(st.assignment_changes("a", first.index).unwrap().is_none(), "forgotten once the node has it");
    let mut st =
        State::load(Store::open(&dir.0.join("state.db")).unwrap(), Keyring::open(&dir.0).unwrap(), Policy::default())
            .unwrap();
    assert!(st.assignment_changes("a", whole.index).unwrap().is_none());
    // Registering again starts over with the whole set.
    st.register(node("a", 1024)).unwrap();
    let index = st.mem().index;
    assert!(st.assignment_changes("a", index - 1).unwrap().is_none());
}

#[test]
fn a_sign_of_life_needs_the_working_set_only_while_it_does_not_hold_the_node() {
    let (mut st, _dir) = state();
    let capacity = Resources::new(4000, 1024 << 20);
    st.register(node("a", 1024)).unwrap();
    let live = st.liveness();
    assert_eq!(live.beat("a", Some(capacity)), Some(true), "registered: the working set holds it");
    assert_eq!(live.beat("a", Some(Resources::new(2000, 1024 << 20))), Some(false), "a new capacity");
    assert_eq!(live.beat("a", None), Some(false), "statuses to apply");
    assert_eq!(live.beat("x", Some(capacity)), None, "not registered");
    // Down: its next heartbeat, even without statuses, must bring it back.
    st.policy.node_grace = Duration::from_millis(1);
    std::thread::sleep(Duration::from_millis(5));
    st.check_nodes().unwrap();
    assert_eq!(st.mem().node("a").unwrap().state, NodeState::Down);
    assert_eq!(live.beat("a", Some(capacity)), Some(false));
    st.heartbeats(vec![("a".into(), Heartbeat { capacity, replicas: vec![], delta: true })]);
    assert_eq!(st.mem().node("a").unwrap().state, NodeState::Ready);
    assert_eq!(live.beat("a", Some(capacity)), Some(true));
    // Its time reaches the node listing without a report applied.
    let before = st.mem().node("a").unwrap().last_heartbeat_ms;
    std::thread::sleep(Duration::from_millis(5));
    live.beat("a", Some(capacity));
    st.note_heartbeat_times();
    assert!(st.mem().node("a").unwrap().last_heartbeat_ms > before);
}

#[test]
fn places_by_resources_reloads_intact_and_replaces_a_dead_node() {
    let (mut st, dir) = state();
    st.register(node("a", 300)).unwrap();
    st.register(node("b", 200)).unwrap();
    st.register(node("c", 100)).unwrap();
    let resp = st
        .apply(
            "web",
            ApplyRequest { replicas: Some(6), spec: spec(100), strategy: None, autoscale: None, scale_to_zero: None },
        )
        .unwrap();
    assert_eq!(resp.outcome, ApplyOutcome::Created);
    assert_eq!(st.schedule().unwrap(), 6);
    let expected = vec![("a".into(), 3, 300), ("b".into(), 2, 200), ("c".into(), 1, 100)];
    assert_eq!(per_node(&st), expected);

    // Applying the same thing again changes nothing.
    let again = st
        .apply(
            "web",
            ApplyRequest { replicas: Some(6), spec: spec(100), strategy: None, autoscale: None, scale_to_zero: None },
        )
        .unwrap();
    assert_eq!(again.outcome, ApplyOutcome::Unchanged);

    // A seventh replica fits nowhere and says why.
    st.scale("web", 7).unwrap();
    st.schedule().unwrap();
    let pending: Vec<_> = st.mem().replicas_of("web").filter(|r| r.state == ReplicaState::Pending).collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].reason.as_deref(), Some("0/3 nodes fit: 3 insufficient memory"));

    // Reload from disk: the same objects and allocations.
    let before: BTreeMap<String, Replica> = st.mem().all_replicas().map(|r| (r.id.clone(), r.clone())).collect();
    drop(st);
    let store = Store::open(&dir.0.join("state.db")).unwrap();
    let keys = Keyring::open(&dir.0).unwrap();
    let mut st = State::load(store, keys, Policy { node_grace: Duration::ZERO, ..Policy::default() }).unwrap();
    let after: BTreeMap<String, Replica> = st.mem().all_replicas().map(|r| (r.id.clone(), r.clone())).collect();
    assert_eq!(before, after);
    assert_eq!(per_node(&st), expected);

    // Node c stops heartbeating (grace zero): its replica is lost, replaced, and
    // with c gone the pending one still fits nowhere.
    st.heartbeat("a", Heartbeat { capacity: Resources::new(4000, 300 << 20), replicas: vec![], delta: false }).unwrap();
    st.heartbeat("b", Heartbeat { capacity: Resources::new(4000, 200 << 20), replicas: vec![], delta: false }).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    st.policy.node_grace = Duration::from_millis(1);
    // Keep a and b fresh; only c misses.
    for n in ["a", "b"] {
        st.liveness.set(n, Instant::now() + Duration::from_secs(60), now_ms(), None);
    }
    st.check_nodes().unwrap();
    st.schedule().unwrap();
    assert_eq!(st.mem().node("c").unwrap().state, NodeState::Down);
    assert_eq!(st.mem().replicas_of("web").count(), 7);
    assert_eq!(st.mem().replicas_of("web").filter(|r| r.state == ReplicaState::Pending).count(), 2);

    // Scale down to 2: pending replicas go first.
    st.scale("web", 2).unwrap();
    assert!(st.mem().replicas_of("web").all(|r| r.state == ReplicaState::Assigned));
    st.delete("web", false).unwrap();
    assert_eq!(st.mem().all_replicas().count(), 0);
    assert!(st.mem().nodes().iter().all(|n| n.allocated == Resources::default()));
}

#[test]
fn an_apply_without_autoscale_turns_it_off_and_keeps_the_count_unless_told() {
    let (mut st, _dir) = state();
    let auto = skiff_api::Autoscale {
        min: 1,
        max: 5,
        target_cpu_percent: Some(50),
        target_requests_per_second: None,
        window_seconds: 10,
        stabilization_seconds: 10,
        scale_up_stabilization_seconds: 0,
    };
    let req = |replicas: Option<u32>, autoscale: Option<skiff_api::Autoscale>| ApplyRequest {
        replicas,
        spec: spec(10),
        strategy: None,
        autoscale,
        scale_to_zero: None,
    };
    let count = |st: &State| st.mem().deployment("web").map(|d| (d.replicas, d.autoscale.is_some()));
    st.apply("web", req(Some(2), Some(auto))).unwrap();
    st.autoscale("web", 4, "busy").unwrap();
    assert_eq!(count(&st), Some((4, true)));
    // While it autoscales, `replicas` in an apply changes nothing.
    assert_eq!(st.apply("web", req(Some(1), Some(auto))).unwrap().outcome, ApplyOutcome::Unchanged);
    assert!(st.scale("web", 2).is_err());

    // Applied without autoscale or a count: off, at the count it had.
    assert_eq!(st.apply("web", req(None, None)).unwrap().outcome, ApplyOutcome::Updated);
    assert_eq!(count(&st), Some((4, false)));
    let events = st.store().events(Some("deployment/web"), 20).unwrap();
    assert!(events.iter().any(|e| e.reason == "AutoscaleOff" && e.message == "autoscale off; 4 replicas until scaled"));
    assert_eq!(st.apply("web", req(None, None)).unwrap().outcome, ApplyOutcome::Unchanged);
    // The autoscaler no longer moves it; a hand does.
    st.autoscale("web", 1, "idle").unwrap();
    assert_eq!(count(&st), Some((4, false)));
    st.scale("web", 3).unwrap();
    assert_eq!(count(&st), Some((3, false)));
    assert_eq!(st.mem().replicas_of("web").count(), 3);

    // On again (the count kept within the bounds), then off with a count: that count.
    st.apply("web", req(None, Some(auto))).unwrap();
    assert_eq!(count(&st), Some((3, true)));
    st.apply("web", req(Some(1), None)).unwrap();
    assert_eq!(count(&st), Some((1, false)));
    // A new deployment without a count gets one replica.
    st.apply(
        "api",
        ApplyRequest { replicas: None, spec: spec(10), strategy: None, autoscale: None, scale_to_zero: None },
    )
    .unwrap();
    assert_eq!(st.mem().deployment("api").map(|d| d.replicas), Some(1));
}

#[test]
fn a_deployment_that_scales_to_zero_is_activated_once_and_keeps_its_setting_across_a_reload() {
    let (mut st, dir) = state();
    let zero = Some(skiff_api::ScaleToZero { idle_seconds: 30 });
    let req =
        |replicas| ApplyRequest { replicas, spec: spec(10), strategy: None, autoscale: None, scale_to_zero: zero };
    st.apply("web", req(Some(2))).unwrap();
    assert_eq!(
        st.mem().awake().iter().map(|(n, s, ids)| (n.as_str(), *s, ids.len())).collect::<Vec<_>>(),
        [("web", 30, 2)]
    );
    // Idle: to zero, with its event, and out of the idle check's sight.
    st.scale_to_zero("web", 30).unwrap();
    let d = st.mem().deployment("web").unwrap();
    assert!(d.scaled_to_zero() && d.status.total == 0, "{d:?}");
    assert!(st.mem().awake().is_empty());
    // A re-apply (a rollout at zero) keeps it there and starts nothing.
    let mut new_spec = req(None);
    new_spec.spec.args = vec!["v2".into()];
    st.apply("web", new_spec).unwrap();
    let d = st.mem().deployment("web").unwrap();
    assert_eq!((d.revision, d.replicas, d.status.total, d.rollout.state), (2, 0, 0, RolloutState::Complete));

    // Many activations at once: the first scales it to one, the others find it there.
    // A control character in the path (a newline) stays out of the event line.
    let line = ActivateRequest { method: "GET".into(), host: "web.skiff.local".into(), path: "/a\nb".into() };
    assert_eq!(st.activate("web", &line, Some("n1")).unwrap(), (true, 1));
    for _ in 0..5 {
        assert_eq!(st.activate("web", &line, Some("n2")).unwrap(), (false, 1));
    }
    assert_eq!(st.mem().replicas_of("web").count(), 1);
    let events = st.store().events(Some("deployment/web"), 50).unwrap();
    let from_zero: Vec<&Event> = events.iter().filter(|e| e.reason == "ScaledFromZero").collect();
    assert_eq!(from_zero.len(), 1);
    assert_eq!(
        from_zero[0].message,
        "scaled from 0 to 1 replica for GET web.skiff.local/ab (held at node n1's ingress)"
    );
    assert!(events.iter().any(|e| e.reason == "ScaledToZero"
        && e.message == "scaled from 2 to 0 replicas: no request for 30s; the next request starts one"));

    // One that does not scale to zero is not activated; an unknown one is not found.
    st.apply(
        "plain",
        ApplyRequest { replicas: Some(0), spec: spec(10), strategy: None, autoscale: None, scale_to_zero: None },
    )
    .unwrap();
    assert!(matches!(st.activate("plain", &line, None), Err(Error::Conflict(_))));
    assert!(matches!(st.activate("nope", &line, None), Err(Error::NotFound(_))));
    st.scale_to_zero("plain", 30).unwrap();
    assert_eq!(st.mem().deployment("plain").map(|d| d.replicas), Some(0));

    // The setting is stored: a reloaded working set has it, and knows what is awake.
    drop(st);
    let store = Store::open(&dir.0.join("state.db")).unwrap();
    let st = State::load(store, Keyring::open(&dir.0).unwrap(), Policy::default()).unwrap();
    assert_eq!(st.mem().deployment("web").and_then(|d| d.scale_to_zero), zero);
    assert_eq!(st.mem().awake().len(), 1);
    let table = crate::endpoints::table(st.mem(), 1);
    let written = crate::endpoints::table_json(st.mem(), 1).unwrap();
    assert_eq!(serde_json::from_slice::<Endpoints>(&written).unwrap(), table);
    assert_eq!(table.scale_to_zero.iter().collect::<Vec<_>>(), ["web"]);
    assert!(table.deployments.contains_key("plain"));
}

#[test]
fn the_full_pass_reconciles_only_the_unsettled_and_they_are_what_it_changes() {
    let (mut st, _dir) = state();
    let req = |replicas, zero: bool| ApplyRequest {
        replicas: Some(replicas),
        spec: spec(10),
        strategy: None,
        autoscale: None,
        scale_to_zero: zero.then_some(skiff_api::ScaleToZero { idle_seconds: 30 }),
    };
    st.apply("a", req(1, false)).unwrap();
    st.apply("b", req(2, false)).unwrap();
    st.apply("c", req(1, true)).unwrap();
    // New deployments' first rollouts may still complete: each is looked at.
    assert_eq!(st.mem().unsettled(), ["a", "b", "c"]);
    for e in st.mem.deployments.values_mut() {
        e.d.rollout.state = RolloutState::Complete;
    }
    assert_eq!(st.mem().unsettled(), Vec::<String>::new(), "at their counts, one revision: nothing to do");
    // Under its count (as if a write had been lost), and awake without being
    // in the idle check's sight: the full pass finds both and mends them.
    st.mem.deployments.get_mut("b").unwrap().d.replicas = 3;
    st.mem.awake.remove("c");
    st.mem.awake.insert("gone".into());
    assert_eq!(st.mem().unsettled(), ["b", "c", "gone"]);
    st.reconcile_all().unwrap();
    assert_eq!(st.mem().replicas_of("b").count(), 3);
    assert_eq!(st.mem().awake().iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(st.mem().unsettled(), Vec::<String>::new());
}
