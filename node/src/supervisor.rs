//! One supervisor per replica: fetch and compile its artifact, run it, and when
//! it ends decide by its restart policy whether to run it again, with
//! exponential backoff. It keeps the replica's status for the heartbeat and
//! explains each decision in the replica's log.

use crate::logs::{self, LogSink};
use crate::metrics::{METRICS, Usage, exit_reason};
use crate::runtime::Runtime;
use crate::wasm::{ArtifactError, Outcome, RunSpec, WasmRuntime};
use skiff_api::{Assignment, ReplicaState, ReplicaStatus, RestartPolicy, Workload};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// First delay before a restart.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest delay before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run at least this long resets the backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// Exponential backoff between restarts: 250 ms, doubling, capped at 10 s, back
/// to the start after a run of 10 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt, after a run that lasted `ran_for`.
    pub fn after_run(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= BACKOFF_RESET_AFTER {
            self.next = BACKOFF_INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// What every supervisor on the node shares.
pub struct Context {
    /// The Wasm runtime.
    pub wasm: Arc<WasmRuntime>,
    /// The container runtime, when the node can run containers.
    pub containers: Option<Arc<crate::container::ContainerRuntime>>,
    /// Where blobs come from; `None` runs only blobs already on disk.
    pub client: Option<skiff_api::Client>,
    /// The node's data directory (logs live under it).
    pub data_dir: PathBuf,
    /// Serves HTTP components; `None` runs every component as a command.
    pub http: Option<Arc<crate::http::HttpRuntime>>,
}

/// A supervised replica. Dropping it stops the replica.
pub struct Replica {
    assignment: Assignment,
    status: Arc<Mutex<ReplicaStatus>>,
    usage: Arc<Usage>,
    log: Option<Arc<LogSink>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Starts supervising `assignment` on the current tokio runtime.
    pub fn start(ctx: Arc<Context>, assignment: Assignment) -> Replica {
        let status = Arc::new(Mutex::new(ReplicaStatus {
            id: assignment.replica.clone(),
            generation: assignment.generation,
            state: ReplicaState::Starting,
            restarts: 0,
            reason: None,
            exit_code: None,
            cpu_seconds: 0.0,
            memory_bytes: 0,
            requests: 0,
        }));
        let usage = Arc::new(Usage::default());
        let log = match LogSink::open(logs::replica_dir(&ctx.data_dir, &assignment.replica)) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(replica = %assignment.replica, "cannot open the replica's log: {e}");
                None
            }
        };
        let task = tokio::spawn(supervise(ctx, assignment.clone(), status.clone(), usage.clone(), log.clone()));
        Replica { assignment, status, usage, log, task }
    }

    /// What the replica was started from.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Its status now.
    pub fn status(&self) -> ReplicaStatus {
        let mut st = lock(&self.status).clone();
        st.cpu_seconds = self.usage.cpu_seconds();
        st.memory_bytes = self.usage.memory_bytes();
        st.requests = self.usage.requests();
        st
    }

    /// Stops the guest for good, saying why in its log.
    pub fn stop(self, why: &str) {
        if let Some(log) = &self.log {
            log.system(&format!("stopping: {why}"));
        }
        // Drop aborts the task, which drops the guest's future, which aborts the
        // guest's task on the guest runtime (it yields every epoch tick).
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(status: &Mutex<ReplicaStatus>) -> std::sync::MutexGuard<'_, ReplicaStatus> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wakes the heartbeat loop when a replica changes state, so the scheduler hears
/// of a start or a crash at once rather than at the next periodic heartbeat.
pub(crate) static STATE_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

pub(crate) fn set_state(
    status: &Mutex<ReplicaStatus>,
    state: ReplicaState,
    reason: Option<String>,
    exit_code: Option<i32>,
) {
    let mut st = lock(status);
    if st.state != state {
        STATE_CHANGED.notify_one();
    }
    if let Err(e) = st.state.become_(state) {
        // Our own transitions are all legal; say so loudly if that ever changes.
        tracing::warn!(replica = %st.id, "{e}");
    }
    st.state = state;
    st.reason = reason;
    st.exit_code = exit_code;
}

/// Pretty delay for log lines: `250ms`, `1s`, `2.5s`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

async fn supervise(
    ctx: Arc<Context>,
    a: Assignment,
    status: Arc<Mutex<ReplicaStatus>>,
    usage: Arc<Usage>,
    log: Option<Arc<LogSink>>,
) {
    let say = |msg: &str| {
        if let Some(l) = &log {
            l.system(msg);
        }
    };
    let id = a.replica.clone();
    let runtime: Arc<dyn Runtime> = match (&a.spec.workload, &ctx.containers) {
        (Workload::Wasm(_), _) => ctx.wasm.clone(),
        (Workload::Image(_), Some(containers)) => containers.clone(),
        (Workload::Image(image), None) => {
            let reason = format!("image {image} needs the container runtime, which this node does not have");
            say(&format!("cannot run: {reason}"));
            set_state(&status, ReplicaState::Failed, Some(reason), None);
            return;
        }
    };
    say(&format!(
        "starting replica {id} of {} revision {} (generation {}, {})",
        a.deployment, a.revision, a.generation, a.spec.workload
    ));
    // An HTTP component is served by the ingress (an instance per request)
    // until this supervisor is stopped, rather than run to its end.
    if let Workload::Wasm(digest) = &a.spec.workload
        && crate::http::supervise_if_http(&ctx, &a, digest, &status, &usage, &log).await
    {
        return;
    }

    // Fetch and compile; a scheduler we cannot reach is retried, an artifact
    // that is not runnable never will be.
    let mut retry = Backoff::default();
    let mut last_error: Option<String> = None;
    let compiled = loop {
        match runtime.prepare(&a, ctx.client.clone()).await {
            Ok(c) => break c,
            Err(ArtifactError::Invalid(reason)) => {
                say(&format!("cannot run: {reason}"));
                tracing::warn!(replica = %id, "cannot run: {reason}");
                set_state(&status, ReplicaState::Failed, Some(reason), None);
                return;
            }
            Err(ArtifactError::Transient(reason)) => {
                if last_error.as_deref() != Some(reason.as_str()) {
                    say(&format!("{reason} (retrying)"));
                    tracing::warn!(replica = %id, "{reason} (retrying)");
                }
                set_state(&status, ReplicaState::Starting, Some(reason.clone()), None);
                last_error = Some(reason);
                tokio::time::sleep(retry.after_run(Duration::ZERO)).await;
            }
        }
    };

    // Secret values live on tmpfs for as long as this supervisor runs (dropped,
    // and the files removed, when the replica stops).
    let secrets = match crate::secrets::materialize(&ctx.data_dir, &a) {
        Ok(s) => s,
        Err(reason) => {
            say(&format!("cannot run: {reason}"));
            set_state(&status, ReplicaState::Failed, Some(reason), None);
            return;
        }
    };
    let mut preopens = secrets.preopens.clone();
    match crate::volumes::preopens(&ctx.data_dir, &a) {
        Ok(v) => preopens.extend(v),
        Err(reason) => {
            say(&format!("cannot run: {reason}"));
            set_state(&status, ReplicaState::Failed, Some(reason), None);
            return;
        }
    }
    // A read-write volume has one writer: wait until an older replica lets go.
    let _volumes = loop {
        match crate::volumes::LOCKS.acquire(&ctx.data_dir, &a) {
            Ok(held) => break held,
            Err(reason) => {
                set_state(&status, ReplicaState::Starting, Some(reason), None);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut env = a.spec.env.clone();
    env.extend(secrets.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // A container reaches other deployments by name through the node's ingress.
    if let (Workload::Image(_), Some(c), Some(ingress)) =
        (&a.spec.workload, &ctx.containers, ctx.http.as_ref().and_then(|h| h.config().ingress))
    {
        env.entry("SKIFF_INGRESS".into())
            .or_insert_with(|| crate::container::serve::ingress_for_containers(ingress, c.bridged()));
    }
    let spec = RunSpec {
        deployment: a.deployment.clone(),
        replica: id.clone(),
        revision: a.revision,
        env,
        args: a.spec.args.clone(),
        memory_limit: a.spec.resources.memory.0,
        usage,
        preopens,
    };
    let mut backoff = Backoff::default();
    // Why the previous run ended, kept as the reason of the restarted replica so
    // that the scheduler's `Restarted` event can say why.
    let mut last_exit: Option<String> = None;
    loop {
        set_state(&status, ReplicaState::Running, last_exit.clone(), None);
        let started = Instant::now();
        let Some(sink) = log.clone().or_else(|| LogSink::open(logs::replica_dir(&ctx.data_dir, &id)).ok()) else {
            let reason = "cannot open the replica's log".to_string();
            set_state(&status, ReplicaState::Failed, Some(reason), None);
            return;
        };
        let run = runtime.run(compiled.clone(), spec.clone(), sink);
        let outcome = match (&ctx.containers, &a.spec.workload) {
            (Some(c), Workload::Image(_)) if a.spec.http_port.is_some() => {
                let port = a.spec.http_port.unwrap_or_default();
                let probes = crate::container::serve::probes_for(&a.spec.probes, port);
                match &ctx.http {
                    Some(http) => crate::container::serve::run(c, http, run, &probes, port, &a, &status, &log).await,
                    None => crate::probes::run_container(c, run, &probes, &id, &status, &log).await,
                }
            }
            (Some(c), Workload::Image(_)) if !a.spec.probes.is_empty() => {
                crate::probes::run_container(c, run, &a.spec.probes, &id, &status, &log).await
            }
            _ => run.await,
        };
        let reason = outcome.reason();
        METRICS.exits.with_label_values(&[a.deployment.as_str(), exit_reason(&outcome)]).inc();
        if matches!(outcome, Outcome::MemoryExceeded(_)) {
            METRICS.memory_limit_traps.with_label_values(&[a.deployment.as_str()]).inc();
        }
        let state = if outcome.is_success() { ReplicaState::Exited } else { ReplicaState::Failed };
        set_state(&status, state, Some(reason.clone()), outcome.exit_code());
        tracing::info!(replica = %id, "{reason}");

        let restart = match a.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !outcome.is_success(),
            RestartPolicy::Never => false,
        };
        if !restart {
            say(&format!("{reason}; not restarting (restart policy {})", a.spec.restart));
            return;
        }
        let delay = backoff.after_run(started.elapsed());
        say(&format!("restarting after {} (backoff {})", describe_for_restart(&outcome), human(delay)));
        tokio::time::sleep(delay).await;
        last_exit = Some(format!("last exit: {}", describe_for_restart(&outcome)));
        set_state(&status, ReplicaState::Starting, last_exit.clone(), None);
        lock(&status).restarts += 1;
        METRICS.restarts.with_label_values(&[a.deployment.as_str()]).inc();
    }
}

/// `exit status 3`, `memory limit of 64Mi exceeded`, `trapped: ...`.
fn describe_for_restart(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited(c) => format!("exit status {c}"),
        other => other.reason(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_millis(10);
        let got: Vec<Duration> = (0..8).map(|_| b.after_run(short)).collect();
        let ms: Vec<u128> = got.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(b.after_run(Duration::from_secs(11)), BACKOFF_INITIAL);
        assert_eq!(b.after_run(short), Duration::from_millis(500));
    }

    #[test]
    fn delays_read_well() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(2500)), "2.5s");
    }
}
