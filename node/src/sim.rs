//! Simulated nodes (Kubernetes' hollow nodes, Nomad's nodesim): one process runs
//! many lightweight fake nodes that speak the real protocol through
//! [`skiff_api::Client`] — register with the join token, heartbeat at the
//! interval the scheduler gives, long-poll their assignments — and acknowledge
//! every assignment by reporting it running in their next heartbeat. They run no
//! workload: they exist to load the scheduler as thousands of real nodes would.
//!
//! All nodes share one HTTP client, so one connection pool: every long-poll holds
//! a connection, heartbeats reuse the idle ones. A process of N nodes keeps about
//! N to 2N sockets open; the caller raises `RLIMIT_NOFILE` to match.

use skiff_api::{
    Assignments, Client, ClientError, Heartbeat, RegisterRequest, ReplicaState, ReplicaStatus, Resources, Runtime,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a set of simulated nodes is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Scheduler base URL.
    pub server: String,
    /// Join token.
    pub token: String,
    /// How many nodes to simulate.
    pub count: usize,
    /// Node names are `<prefix>-<number>` (numbers zero-padded to five digits).
    pub name_prefix: String,
    /// What each node offers.
    pub capacity: Resources,
    /// Labels every node carries.
    pub labels: BTreeMap<String, String>,
}

/// How long one assignments query may block on the scheduler.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// Delay between attempts while the scheduler does not answer.
const RETRY: Duration = Duration::from_secs(1);
/// At most this many registrations in flight: thousands of nodes joining at once
/// would only queue on the scheduler's lock and time out.
const REGISTER_CONCURRENCY: usize = 64;
/// Least time between two heartbeats of a node that reports new replicas early.
const EARLY_REPORT_GAP: Duration = Duration::from_millis(250);
/// Longest wait for a register or heartbeat answer; generous, since the point is
/// to load the scheduler, not to give up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a simulated job run "runs" before it is reported exited with 0
/// (an assignment whose env holds `SKIFF_JOB_INDEX` is a job's run).
const JOB_RUN: Duration = Duration::from_millis(100);

/// One simulated node.
struct SimNode {
    name: String,
    req: RegisterRequest,
    /// This node's own client (sharing the connection pool): it carries the
    /// join token to register, then the node's credential.
    client: Client,
    join_token: String,
    /// The desired set as last received, reported back as running.
    running: Mutex<Running>,
    /// Raised when the set took in something to report.
    changed: tokio::sync::Notify,
    heartbeat_ms: AtomicU64,
    /// Bumped on every registration, so the watcher restarts from index 0.
    registered: tokio::sync::watch::Sender<u64>,
}

/// What a simulated node "runs", and what it has still to report. Kept as
/// changes, not compared whole at each heartbeat (`agent::Reports`): a node of
/// hundreds of replicas heartbeats every second and changes seldom.
#[derive(Default)]
struct Running {
    /// Every replica of the desired set, reported running.
    all: HashMap<String, ReplicaStatus>,
    /// Replicas (with their generation) that no answered heartbeat carried yet.
    unsent: HashMap<String, u64>,
    /// Job runs (id, generation) and when they end, soonest first.
    ends: std::collections::VecDeque<(Instant, String, u64)>,
}

/// Counters shared by every node, logged every few seconds.
#[derive(Default)]
struct Stats {
    registered: AtomicU64,
    heartbeats: AtomicU64,
    answers: AtomicU64,
    errors: AtomicU64,
}

/// Name of simulated node `i` (0-based) of a set with `prefix`.
pub fn sim_node_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

/// Runs `config.count` simulated nodes until a fatal error (a rejected join
/// token, an invalid name). Dropping the future stops them all.
pub async fn simulate(config: SimConfig) -> anyhow::Result<()> {
    if config.count == 0 {
        anyhow::bail!("--simulate needs at least one node");
    }
    let last = sim_node_name(&config.name_prefix, config.count - 1);
    skiff_api::manifest::validate_name(&last)
        .map_err(|e| anyhow::anyhow!("simulated node names are invalid (change --name-prefix): {e}"))?;
    let client = crate::join_client(&config.server, &config.token)?;
    let join_secret = client.token().unwrap_or_default();
    let stats = Arc::new(Stats::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(REGISTER_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.count {
        let name = sim_node_name(&config.name_prefix, i);
        let node = Arc::new(SimNode {
            req: RegisterRequest {
                name: name.clone(),
                // Nothing listens there: the scheduler dials a node only for logs,
                // and a simulated node has none.
                address: "http://127.0.0.1:9".into(),
                labels: config.labels.clone(),
                capacity: config.capacity,
                runtimes: vec![Runtime::Wasm],
                ingress: None,
            },
            name,
            client: client.clone().with_token(&join_secret),
            join_token: join_secret.clone(),
            running: Mutex::new(Running::default()),
            changed: tokio::sync::Notify::new(),
            heartbeat_ms: AtomicU64::new(1000),
            registered: tokio::sync::watch::channel(0).0,
        });
        let (stats, gate) = (stats.clone(), gate.clone());
        tasks.spawn(async move {
            {
                let _permit = gate.acquire().await;
                node.register(&stats).await?;
            }
            tokio::try_join!(node.heartbeat_loop(&stats), node.watch_loop(&stats))?;
            Ok::<(), anyhow::Error>(())
        });
    }
    tracing::info!(nodes = config.count, server = %config.server, "simulating nodes");
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(Ok(()))) | None => return Ok(()),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => anyhow::bail!("a simulated node task failed: {e}"),
            },
            _ = report.tick() => tracing::info!(
                registered = stats.registered.load(Ordering::Relaxed),
                heartbeats = stats.heartbeats.load(Ordering::Relaxed),
                assignment_answers = stats.answers.load(Ordering::Relaxed),
                errors = stats.errors.load(Ordering::Relaxed),
                "simulated nodes"
            ),
        }
    }
}

impl SimNode {
    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers, retrying until the scheduler answers; a rejected token is fatal.
    async fn register(&self, stats: &Stats) -> anyhow::Result<()> {
        // Always join anew: a simulated node keeps no credential across registrations.
        self.client.set_token(&self.join_token);
        loop {
            let answer = tokio::time::timeout(CALL_TIMEOUT, self.client.register(&self.req)).await;
            match answer {
                Ok(Ok(resp)) => {
                    if let Some(credential) = &resp.credential {
                        self.client.set_token(credential);
                    }
                    self.heartbeat_ms.store(resp.heartbeat_interval_ms.clamp(100, 60_000), Ordering::Relaxed);
                    self.registered.send_modify(|n| *n += 1);
                    stats.registered.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(e @ ClientError::Api { status: 401 | 403 | 400, .. })) => {
                    anyhow::bail!("the scheduler refused simulated node {}: {e}", self.name);
                }
                Ok(Err(_)) | Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Heartbeats at the scheduler's interval, reporting every assigned replica
    /// as running; registers again when the scheduler forgot the node.
    async fn heartbeat_loop(&self, stats: &Stats) -> anyhow::Result<()> {
        // Spread the nodes over the interval, as real nodes started at different
        // moments would be, instead of heartbeating in lockstep.
        let interval = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        let spread = self.name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % 1000;
        tokio::time::sleep(interval.mul_f64(spread as f64 / 1000.0)).await;
        // As a real node: a full report after each registration and every
        // `FULL_EVERY`, else only what no answered heartbeat carried.
        let mut cadence = crate::agent::Cadence::default();
        loop {
            let started = Instant::now();
            let next_end = self.finish_runs(started);
            let registration = *self.registered.borrow();
            let full = cadence.full(registration);
            let (replicas, sent) = {
                let r = self.running();
                let sent: Vec<(String, u64)> = match full {
                    true => r.all.values().map(|s| (s.id.clone(), s.generation)).collect(),
                    false => r.unsent.iter().map(|(id, g)| (id.clone(), *g)).collect(),
                };
                (sent.iter().filter_map(|(id, _)| r.all.get(id).cloned()).collect(), sent)
            };
            let hb = Heartbeat { capacity: self.req.capacity, replicas, delta: !full };
            match tokio::time::timeout(CALL_TIMEOUT, self.client.heartbeat(&self.name, &hb)).await {
                Ok(Ok(())) => {
                    let mut r = self.running();
                    for (id, generation) in sent {
                        if r.unsent.get(&id) == Some(&generation) {
                            r.unsent.remove(&id);
                        }
                    }
                    cadence.answered(!full, registration);
                    stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) if e.status() == Some(404) => {
                    self.register(stats).await?;
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            let interval = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
            let mut wait = interval.saturating_sub(started.elapsed());
            if let Some(end) = next_end {
                // A run's end is reported as soon as it comes (a real node's is).
                wait = wait.min(end.saturating_duration_since(Instant::now()).max(EARLY_REPORT_GAP));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => {
                    // Report new replicas early, as a real node reports a change,
                    // but gather what comes with them: thousands of nodes given
                    // replicas by one placement pass must not turn into a
                    // heartbeat storm (at most four a second each).
                    tokio::time::sleep(EARLY_REPORT_GAP.saturating_sub(started.elapsed())).await;
                }
            }
        }
    }

    /// Long-polls the desired set and takes it as what runs.
    async fn watch_loop(&self, stats: &Stats) -> anyhow::Result<()> {
        let mut registrations = self.registered.subscribe();
        let mut applied: Option<u64> = None;
        loop {
            registrations.borrow_and_update();
            let index = applied.unwrap_or(0);
            let asked = Instant::now();
            let answer = tokio::select! {
                a = self.client.assignment_changes(&self.name, index, WATCH_WAIT) => a,
                _ = registrations.changed() => {
                    applied = None;
                    continue;
                }
            };
            match answer {
                Ok(a) => {
                    stats.answers.fetch_add(1, Ordering::Relaxed);
                    if applied.is_some_and(|i| a.index < i) {
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                    let index = a.index;
                    self.converge(a);
                    let unchanged = applied == Some(index);
                    applied = Some(index);
                    if unchanged && asked.elapsed() < Duration::from_millis(500) {
                        tokio::time::sleep(RETRY).await;
                    }
                }
                Err(e) if e.status() == Some(404) => {
                    // The heartbeat loop registers again; the watcher waits for it.
                    tokio::time::sleep(RETRY).await;
                }
                Err(e @ ClientError::Api { status: 401 | 403, .. }) => {
                    anyhow::bail!("the scheduler at {} rejected the join token: {e}", self.client.base());
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Reports the job runs whose time is up as exited with status 0; when
    /// the next one ends.
    fn finish_runs(&self, now: Instant) -> Option<Instant> {
        let mut r = self.running();
        let r = &mut *r;
        while r.ends.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, id, generation)) = r.ends.pop_front() else { break };
            if let Some(s) = r.all.get_mut(&id).filter(|s| s.generation == generation) {
                s.state = ReplicaState::Exited;
                s.exit_code = Some(0);
                s.reason = Some("exited with status 0".into());
                r.unsent.insert(id, generation);
            }
        }
        r.ends.front().map(|(at, _, _)| *at)
    }

    /// "Runs" exactly the desired set `a` gives (whole, or changes to the
    /// last): each replica at its generation, running, with no restarts. What
    /// is no longer assigned is simply not reported again.
    fn converge(&self, a: Assignments) {
        let mut r = self.running();
        let r = &mut *r;
        if !a.delta {
            let keep: std::collections::HashSet<&str> = a.replicas.iter().map(|x| x.replica.as_str()).collect();
            r.all.retain(|id, _| keep.contains(id.as_str()));
            r.unsent.retain(|id, _| keep.contains(id.as_str()));
        }
        for id in &a.removed {
            r.all.remove(id);
            r.unsent.remove(id);
        }
        for asg in a.replicas {
            if r.all.get(&asg.replica).is_some_and(|s| s.generation == asg.generation) {
                continue;
            }
            r.unsent.insert(asg.replica.clone(), asg.generation);
            if asg.spec.env.contains_key("SKIFF_JOB_INDEX") {
                r.ends.push_back((Instant::now() + JOB_RUN, asg.replica.clone(), asg.generation));
            }
            let status = crate::state::fresh(&asg.replica, asg.generation, ReplicaState::Running);
            r.all.insert(asg.replica, status);
        }
        if !r.unsent.is_empty() {
            self.changed.notify_one();
        }
    }
}
