//! The agent loop: register with the scheduler, heartbeat the node's capacity
//! and replica statuses, watch the node's assignments with a blocking query and
//! converge the running replicas to them.
//!
//! Control is level-triggered: each answer is the full desired set, so a lost
//! answer or a partition costs nothing but time. While the scheduler is
//! unreachable the replicas keep running (but those with a `volume_lease`, once
//! the lease runs out: `lease_loop`) and the agent retries every second,
//! logging once per change of state rather than once per attempt.

use crate::supervisor::{Context, Replica};
use skiff_api::{Assignment, Client, ClientError, Heartbeat, RegisterRequest, ReplicaStatus, Resources, Runtime};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one assignments query may block on the scheduler.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// How soon to ask again while a volume to purge is still held by a stopping replica.
const PURGE_RETRY: Duration = Duration::from_millis(500);
/// Delay between attempts while the scheduler is unreachable.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait for an answer to a register or heartbeat call: a partition that
/// drops packets must not stall the loop for the TCP retransmission timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The node's credential from the scheduler, in the data dir (0600): a restarted
/// daemon carries on with it instead of joining anew.
pub const CREDENTIAL_FILE: &str = "node-credential";
/// Heartbeat interval until the scheduler says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// How often the lease on replicas with a `volume_lease` is checked.
const LEASE_CHECK: Duration = Duration::from_millis(100);
/// Every this many heartbeats one reports every replica; the others carry only
/// what changed. A full one repairs whatever an answered delta failed to do
/// (a scheduler that died before applying it, say).
pub(crate) const FULL_EVERY: u32 = 10;

/// When a heartbeat must report every replica: after each registration and
/// every [`FULL_EVERY`]; the others are deltas. Real nodes ([`Reports`]) and
/// simulated ones (`sim.rs`) keep the same rhythm.
#[derive(Default)]
pub(crate) struct Cadence {
    /// Heartbeats answered since the last full one; `None`: send a full one next.
    since_full: Option<u32>,
    /// The registration the answers were given to.
    registration: u64,
}

impl Cadence {
    /// Whether the next heartbeat, to a scheduler that knows the node as of
    /// registration `registration`, is a full one.
    pub(crate) fn full(&self, registration: u64) -> bool {
        registration != self.registration || self.since_full.is_none_or(|n| n + 1 >= FULL_EVERY)
    }

    /// Records that a heartbeat (`delta` or full) to `registration` was answered.
    pub(crate) fn answered(&mut self, delta: bool, registration: u64) {
        self.since_full = Some(if delta { self.since_full.unwrap_or(0) + 1 } else { 0 });
        self.registration = registration;
    }
}

/// What the scheduler has been told of the node's replicas, so that a heartbeat
/// carries only what changed since the last answered one (most carry nothing:
/// a sign of life the scheduler takes without its state lock).
#[derive(Default)]
pub(crate) struct Reports {
    /// Each replica as the last answered heartbeat left it.
    answered: HashMap<String, ReplicaStatus>,
    cadence: Cadence,
}

impl Reports {
    /// The heartbeat that reports `statuses` to a scheduler that knows the node
    /// as of registration `registration`: a full one every `FULL_EVERY` and
    /// after each registration, else a delta. A delta carries the replicas
    /// whose status or usage changed since the last answered heartbeat: an
    /// idle replica's counters stay as they were, and the scheduler's
    /// autoscaler takes a replica left out as unchanged (`autoscale::measure`).
    /// Until #17 every running replica went in each delta: with 10,000 idle
    /// ones on a node, parsing them was 17% of the scheduler's CPU.
    pub(crate) fn heartbeat(&self, capacity: Resources, statuses: &[ReplicaStatus], registration: u64) -> Heartbeat {
        let full = self.cadence.full(registration);
        let replicas = match full {
            true => statuses.to_vec(),
            false => statuses.iter().filter(|s| self.answered.get(&s.id) != Some(*s)).cloned().collect(),
        };
        Heartbeat { capacity, replicas, delta: !full }
    }

    /// Records that the scheduler answered `hb`, sent for `statuses`.
    pub(crate) fn answered(&mut self, hb: &Heartbeat, statuses: Vec<ReplicaStatus>, registration: u64) {
        self.answered = statuses.into_iter().map(|s| (s.id.clone(), s)).collect();
        self.cadence.answered(hb.delta, registration);
    }
}

/// The desired set as the scheduler's answers built it: a whole set, then the
/// changes to it (`Assignments::delta`), so that a node of hundreds of replicas
/// is not sent all of them whenever one changes.
#[derive(Default)]
pub(crate) struct Desired(HashMap<String, Assignment>);

/// The replicas an answer may have changed: converging looks at those only,
/// so a node of 10,000 replicas does not clone and compare all of them each
/// time one starts (that made each cold start of a scaled-to-zero deployment
/// slower by about 2 µs per replica the node ran).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Touched {
    /// A whole set: every replica, held or running.
    All,
    /// The ids an answer's changes named (new, changed or removed).
    Some(Vec<String>),
}

impl Desired {
    /// Takes in answer `a`, a whole set or changes to the one held, and says
    /// which replicas it touched. An assignment with an invalid replica id is
    /// left out.
    pub(crate) fn update(&mut self, a: skiff_api::Assignments) -> Touched {
        if !a.delta {
            self.0.clear();
        }
        let mut touched = Vec::with_capacity(a.removed.len() + a.replicas.len());
        for id in a.removed {
            self.0.remove(&id);
            touched.push(id);
        }
        for asg in a.replicas {
            if let Err(e) = skiff_api::manifest::validate_name(&asg.replica) {
                tracing::warn!("ignoring an assignment with an invalid replica id: {e}");
                continue;
            }
            touched.push(asg.replica.clone());
            self.0.insert(asg.replica.clone(), asg);
        }
        match a.delta {
            true => Touched::Some(touched),
            false => Touched::All,
        }
    }

    /// The whole set.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Assignment> {
        self.0.values()
    }

    /// Replica `id`'s assignment, if it is wanted here.
    pub(crate) fn get(&self, id: &str) -> Option<&Assignment> {
        self.0.get(id)
    }

    /// How many replicas are wanted here.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Who the node is, as it registers.
pub struct Identity {
    /// Node name.
    pub name: String,
    /// Base URL of the node API, as the scheduler should dial it.
    pub address: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// What the node offers.
    pub capacity: Resources,
    /// Base URL of the node's ingress, as other nodes should dial it.
    pub ingress: Option<String>,
}

/// The node's agent: its replicas and its conversation with the scheduler.
pub struct Agent {
    id: Identity,
    client: Client,
    ctx: Arc<Context>,
    replicas: Mutex<HashMap<String, Replica>>,
    heartbeat_ms: AtomicU64,
    /// Bumped on every successful registration; the watcher restarts its
    /// query from index 0 when it changes (the scheduler may have lost its state).
    registered: tokio::sync::watch::Sender<u64>,
    registering: tokio::sync::Mutex<()>,
    /// The token the client was made with: used to register when the node has
    /// no credential (or the scheduler revoked it).
    join_token: String,
    /// The lease on replicas with a `volume_lease` (`volumes::Lease`).
    lease: Mutex<crate::volumes::Lease>,
    /// Raised when the lease holds again after it ran out: the watcher asks for
    /// the whole set anew, which starts the leased replicas still assigned here.
    lease_regained: tokio::sync::Notify,
}

/// Whether the scheduler answers, for logging one line per change.
#[derive(Default)]
struct Link {
    down_since: Option<Instant>,
}

impl Link {
    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display, replicas: usize) {
        if self.down_since.is_none() {
            tracing::warn!("{what} failed: {e}; keeping {replicas} replicas running and retrying");
            self.down_since = Some(Instant::now());
        }
    }

    fn ok(&mut self, what: &str) {
        if let Some(since) = self.down_since.take() {
            tracing::info!("{what} works again after {:.1}s", since.elapsed().as_secs_f64());
        }
    }
}

impl Agent {
    /// An agent for `id` that talks to the scheduler through `client`.
    pub fn new(id: Identity, client: Client, ctx: Arc<Context>) -> Agent {
        let join_token = client.token().unwrap_or_default();
        if let Ok(credential) = std::fs::read_to_string(ctx.data_dir.join(CREDENTIAL_FILE)) {
            let credential = credential.trim();
            if !credential.is_empty() {
                client.set_token(credential);
            }
        }
        Agent {
            join_token,
            id,
            client,
            ctx,
            replicas: Mutex::new(HashMap::new()),
            heartbeat_ms: AtomicU64::new(DEFAULT_HEARTBEAT.as_millis() as u64),
            registered: tokio::sync::watch::channel(0).0,
            registering: tokio::sync::Mutex::new(()),
            lease: Mutex::default(),
            lease_regained: tokio::sync::Notify::new(),
        }
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, crate::volumes::Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Replica>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status of every replica the node runs.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.lock().values().map(Replica::status).collect()
    }

    /// Every replica the node runs, with its deployment and runtime (for metrics).
    pub fn views(&self) -> Vec<crate::metrics::ReplicaView> {
        self.lock()
            .values()
            .map(|r| crate::metrics::ReplicaView {
                deployment: r.assignment().deployment.clone(),
                runtime: r.assignment().spec.workload.runtime(),
                status: r.status(),
            })
            .collect()
    }

    /// What the replicas the node runs use by digest (for the image collection).
    pub fn gc_roots(&self) -> crate::gc::Roots {
        crate::gc::Roots::of(self.lock().values().map(|r| &r.assignment().spec.workload))
    }

    /// Ids of the replicas the node runs.
    pub fn replica_ids(&self) -> HashSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// Registers unless someone registered since `seen` (the registration count
    /// the caller knew). Retries until the scheduler answers; a rejected join
    /// token is fatal.
    pub async fn register(&self, seen: u64) -> anyhow::Result<()> {
        self.register_as(seen, false).await
    }

    /// Registers with the join token, dropping the node's credential (which the
    /// scheduler refused: the node was removed, or its state was lost).
    async fn rejoin(&self, seen: u64) -> anyhow::Result<()> {
        self.register_as(seen, true).await
    }

    fn has_credential(&self) -> bool {
        self.client.token().is_some_and(|t| t != self.join_token)
    }

    fn forget_credential(&self) {
        let _ = std::fs::remove_file(self.ctx.data_dir.join(CREDENTIAL_FILE));
        self.client.set_token(&self.join_token);
    }

    fn keep_credential(&self, credential: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.ctx.data_dir.join(CREDENTIAL_FILE);
        let tmp = path.with_extension("tmp");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| writeln!(f, "{credential}").and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            // Not fatal: the node works on; a restarted daemon joins anew.
            tracing::warn!("cannot keep the node credential in {}: {e}", path.display());
        }
        self.client.set_token(credential);
    }

    async fn register_as(&self, seen: u64, rejoin: bool) -> anyhow::Result<()> {
        let _guard = self.registering.lock().await;
        if *self.registered.borrow() > seen {
            return Ok(());
        }
        if rejoin && self.has_credential() {
            tracing::warn!(node = %self.id.name, "the scheduler refused this node's credential; joining again");
            self.forget_credential();
        }
        let req = RegisterRequest {
            name: self.id.name.clone(),
            address: self.id.address.clone(),
            labels: self.id.labels.clone(),
            capacity: self.id.capacity,
            runtimes: if self.ctx.runtimes.containers.is_some() {
                vec![Runtime::Wasm, Runtime::Container]
            } else {
                vec![Runtime::Wasm]
            },
            ingress: self.id.ingress.clone(),
        };
        let mut link = Link::default();
        loop {
            let answer = tokio::time::timeout(CALL_TIMEOUT, self.client.register(&req)).await;
            let Ok(answer) = answer else {
                link.failed("registering with the scheduler", &timeout_error(), self.lock().len());
                continue;
            };
            match answer {
                Ok(resp) => {
                    if let Some(credential) = &resp.credential {
                        self.keep_credential(credential);
                    }
                    let ms = resp.heartbeat_interval_ms.clamp(100, 60_000);
                    self.heartbeat_ms.store(ms, Ordering::Relaxed);
                    self.registered.send_modify(|n| *n += 1);
                    tracing::info!(
                        node = %self.id.name,
                        server = %self.client.base(),
                        "registered (capacity {}, heartbeat every {ms}ms)",
                        self.id.capacity
                    );
                    return Ok(());
                }
                Err(ClientError::Api { status: 401 | 403, .. }) if self.has_credential() => {
                    tracing::warn!(node = %self.id.name, "the scheduler refused this node's credential; joining again");
                    self.forget_credential();
                }
                Err(e @ ClientError::Api { status: 401 | 403, .. }) => {
                    anyhow::bail!("the scheduler at {} rejected the join token: {e}", self.client.base());
                }
                // Not the server the join token names: retrying will not change it.
                Err(e @ ClientError::Tls { .. }) => anyhow::bail!("{e}"),
                Err(e) => {
                    link.failed("registering with the scheduler", &e, self.lock().len());
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Heartbeats forever; re-registers when the scheduler forgot the node.
    pub async fn heartbeat_loop(&self) -> anyhow::Result<()> {
        let mut link = Link::default();
        let mut reports = Reports::default();
        loop {
            let seen = *self.registered.borrow();
            let statuses = self.statuses();
            let hb = reports.heartbeat(self.id.capacity, &statuses, seen);
            let asked = Instant::now();
            let answer = tokio::time::timeout(CALL_TIMEOUT, self.client.heartbeat(&self.id.name, &hb)).await;
            match answer.unwrap_or_else(|_| Err(timeout_error())) {
                Ok(()) => {
                    reports.answered(&hb, statuses, seen);
                    self.lease().confirm(asked);
                    link.ok("heartbeat");
                }
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!(node = %self.id.name, "the scheduler does not know this node; registering again");
                    self.register(seen).await?;
                    continue;
                }
                Err(ClientError::Api { status: 401 | 403, .. }) => {
                    self.rejoin(seen).await?;
                    continue;
                }
                Err(e) => link.failed("heartbeat", &e, hb.replicas.len()),
            }
            let sent = std::time::Instant::now();
            let interval = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = crate::state::STATE_CHANGED.notified() => {
                    // Report a change early, but gather what changes with it and
                    // never send more than twenty heartbeats a second.
                    tokio::time::sleep(Duration::from_millis(50).saturating_sub(sent.elapsed())).await;
                }
            }
        }
    }

    /// Watches the node's assignments forever and converges to each answer.
    pub async fn watch_loop(&self) -> anyhow::Result<()> {
        let mut registrations = self.registered.subscribe();
        let mut applied: Option<u64> = None;
        // What `applied` stands for; changes come relative to it.
        let mut desired = Desired::default();
        let mut link = Link::default();
        // A volume to purge that a stopping replica still held: ask again soon
        // (the scheduler has no news to wake the long poll with).
        let mut purge_pending = false;
        loop {
            let seen = *registrations.borrow_and_update();
            let index = applied.unwrap_or(0);
            let asked = Instant::now();
            // Right after an outage ask without waiting: the answer both says
            // the link is back and brings any change made meanwhile.
            let wait = if link.down_since.is_some() {
                Duration::ZERO
            } else if purge_pending {
                PURGE_RETRY
            } else {
                WATCH_WAIT
            };
            let answer = tokio::select! {
                // Index 0 (nothing applied) always gets the whole set.
                a = self.client.assignment_changes(&self.id.name, index, wait) => a,
                _ = registrations.changed() => {
                    // Registered anew: the scheduler may have restarted with
                    // fresh indexes, so start over rather than ignore them.
                    applied = None;
                    continue;
                }
                _ = self.lease_regained.notified() => {
                    applied = None;
                    continue;
                }
            };
            match answer {
                Ok(mut a) => {
                    {
                        let mut lease = self.lease();
                        lease.set_length(a.lease_ms);
                        lease.confirm(asked);
                    }
                    link.ok("watching assignments");
                    if applied.is_some_and(|i| a.index < i) {
                        tracing::debug!(index = a.index, "ignoring assignments older than those applied");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                    let (index, purge_volumes) = (a.index, std::mem::take(&mut a.purge_volumes));
                    let touched = desired.update(a);
                    self.converge(&desired, &touched);
                    purge_pending = false;
                    if !purge_volumes.is_empty() {
                        let running = self.lock();
                        let in_use =
                            |v: &str| running.values().any(|r| r.assignment().spec.volumes.iter().any(|m| m.name == v));
                        crate::volumes::purge(&self.ctx.data_dir, &purge_volumes, in_use);
                        // Still there: held by a replica that is stopping, or a
                        // write of its last moments raced the removal. Again soon.
                        purge_pending = purge_volumes.iter().any(|v| crate::volumes::exists(&self.ctx.data_dir, v));
                    }
                    let unchanged = applied == Some(index);
                    applied = Some(index);
                    // A scheduler that answers at once without news must not
                    // turn this loop into a busy one.
                    if unchanged && asked.elapsed() < Duration::from_millis(500) {
                        tokio::time::sleep(RETRY).await;
                    }
                }
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!(node = %self.id.name, "the scheduler does not know this node; registering again");
                    self.register(seen).await?;
                }
                Err(ClientError::Api { status: 401 | 403, .. }) => {
                    self.rejoin(seen).await?;
                }
                Err(e) => {
                    link.failed("watching assignments", &e, self.lock().len());
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Stops the replicas with a `volume_lease` while the node has not reached
    /// the scheduler for the lease's length, and has the watcher ask for the set
    /// anew once it does again.
    pub async fn lease_loop(&self) -> anyhow::Result<()> {
        let mut expired = false;
        loop {
            tokio::time::sleep(LEASE_CHECK).await;
            let (now_expired, length) = {
                let lease = self.lease();
                (lease.expired(Instant::now()), lease.length().unwrap_or_default())
            };
            if now_expired {
                let why = format!("lease expired: no answer from the scheduler for {:.1}s", length.as_secs_f64());
                let mut running = self.lock();
                let leased: Vec<String> = running
                    .iter()
                    .filter(|(_, r)| crate::volumes::leased(r.assignment()))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in leased {
                    if let Some(r) = running.remove(&id) {
                        tracing::warn!(replica = %id, "stopping: {why}");
                        r.stop(&why);
                    }
                }
            } else if expired {
                tracing::info!(node = %self.id.name, "the scheduler answers again; asking for this node's replicas");
                self.lease_regained.notify_one();
            }
            expired = now_expired;
        }
    }

    /// Makes the running replicas exactly `desired`: stops the others (and those
    /// whose generation or spec changed), starts the missing ones. Only the
    /// replicas in `touched` are looked at, unless the counts then disagree
    /// (a replica held back for its lease, say): then every one is.
    pub(crate) fn converge(&self, desired: &Desired, touched: &Touched) {
        // Containers an earlier daemon left running are adopted by the runs of
        // the replicas that want them; the others stop now.
        if let Some(c) = &self.ctx.runtimes.containers {
            c.release_unwanted(|id| desired.get(id).is_some());
            // Registry credentials go to the puller, not into a replica: a
            // changed one restarts nothing (`same_work`), and a pull waiting
            // for one takes it at its next try.
            c.set_registry_credentials(desired.all().filter_map(|a| a.registry_auth.clone()));
        }
        let mut running = self.lock();
        if let Touched::Some(ids) = touched {
            self.settle(&mut running, desired, ids);
            if running.len() == desired.len() {
                return;
            }
        }
        let every: Vec<String> = running.keys().chain(desired.all().map(|a| &a.replica)).cloned().collect();
        self.settle(&mut running, desired, &every);
    }

    /// Converges replicas `ids`: stops those not wanted or wanted otherwise,
    /// then starts the wanted ones not running.
    fn settle(&self, running: &mut HashMap<String, Replica>, desired: &Desired, ids: &[String]) {
        for id in ids {
            let Some(r) = running.get(id) else { continue };
            let why = match desired.get(id) {
                Some(a) if same_work(a, r.assignment()) => continue,
                Some(a) => format!(
                    "reassigned (generation {} → {}, revision {} → {})",
                    r.assignment().generation,
                    a.generation,
                    r.assignment().revision,
                    a.revision
                ),
                None => "no longer assigned to this node".to_string(),
            };
            if let Some(r) = running.remove(id) {
                tracing::info!(replica = %id, "stopping: {why}");
                r.stop(&why);
            }
        }
        // An answer to a call sent before the lease ran out does not renew it:
        // leased replicas wait for a fresh one (`lease_loop` asks for it).
        let lease_expired = self.lease().expired(Instant::now());
        for id in ids {
            let Some(a) = desired.get(id) else { continue };
            if running.contains_key(id) {
                continue;
            }
            if lease_expired && crate::volumes::leased(a) {
                tracing::info!(replica = %id, "not starting until the scheduler confirms its lease");
                continue;
            }
            tracing::info!(replica = %id, deployment = %a.deployment, generation = a.generation, "starting");
            running.insert(id.clone(), Replica::start(self.ctx.clone(), a.clone()));
        }
    }
}

/// Whether two assignments run the same thing: equal but for the registry
/// credential, which only the image pull uses.
fn same_work(a: &Assignment, b: &Assignment) -> bool {
    let Assignment { replica, deployment, revision, generation, spec, secrets, registry_auth: _ } = a;
    *replica == b.replica
        && *deployment == b.deployment
        && *revision == b.revision
        && *generation == b.generation
        && *spec == b.spec
        && *secrets == b.secrets
}

/// A heartbeat that got no answer, as the client would report a server error.
fn timeout_error() -> ClientError {
    ClientError::Api { status: 504, message: format!("no answer within {}s", CALL_TIMEOUT.as_secs()) }
}

/// Removes log directories of replicas that have not run here for `max_age`.
pub fn collect_old_logs(data_dir: &std::path::Path, running: &HashSet<String>, max_age: Duration) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("logs")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if running.contains(&name) {
            continue;
        }
        let current = entry.path().join(crate::logs::CURRENT);
        let age = std::fs::metadata(&current)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or(Duration::MAX);
        let max_age =
            if entry.path().join(crate::logs::JOB_RUN_MARK).exists() { crate::logs::JOB_LOG_MAX_AGE } else { max_age };
        if age >= max_age
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(dir = %entry.path().display(), "cannot remove old replica logs: {e}");
        }
    }
}
