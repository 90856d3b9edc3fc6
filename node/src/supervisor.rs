//! One supervisor per replica: have its runtime prepare the workload, run it,
//! and when a run ends decide by the restart policy whether to run it again,
//! with exponential backoff. This is the node's only restart loop and the only
//! place that counts restarts and exits; it keeps the replica's status for the
//! heartbeat and explains each decision in the replica's log. It knows the
//! [`Runtime`] trait and nothing of what runs behind it.

use crate::logs::{self, LogSink};
use crate::metrics::{METRICS, Usage};
use crate::routes::IngressLink;
use crate::runtime::{ArtifactError, Outcome, RunSpec, Runtime};
use crate::runtimes::Runtimes;
use crate::state::{Backoff, Status};
use skiff_api::{Assignment, ReplicaState, ReplicaStatus, RestartPolicy};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every supervisor on the node shares.
pub struct Context {
    /// The node's runtimes (one is picked per replica).
    pub runtimes: Arc<Runtimes>,
    /// Where blobs come from; `None` runs only blobs already on disk.
    pub client: Option<skiff_api::Client>,
    /// The node's data directory (logs live under it).
    pub data_dir: PathBuf,
    /// The node's ingress, for replicas that serve HTTP behind it.
    pub ingress: Option<Arc<IngressLink>>,
}

/// A supervised replica. Dropping it stops the replica.
pub struct Replica {
    assignment: Assignment,
    status: Status,
    usage: Arc<Usage>,
    log: Option<Arc<LogSink>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Starts supervising `assignment` on the current tokio runtime.
    pub fn start(ctx: Arc<Context>, assignment: Assignment) -> Replica {
        let status = Status::new(&assignment.replica, assignment.generation);
        let usage = Arc::new(Usage::default());
        let dir = logs::replica_dir(&ctx.data_dir, &assignment.replica);
        let log = match LogSink::open(dir.clone()) {
            Ok(l) => {
                // A job's run: its log outlives it (`agent::collect_old_logs`).
                if assignment.spec.env.contains_key("SKIFF_JOB_INDEX") {
                    let _ = std::fs::write(dir.join(logs::JOB_RUN_MARK), b"");
                }
                Some(l)
            }
            Err(e) => {
                tracing::warn!(replica = %assignment.replica, "cannot open the replica's log: {e}");
                None
            }
        };
        let task = tokio::spawn(supervise(
            ctx.runtimes.clone(),
            ctx,
            assignment.clone(),
            status.clone(),
            usage.clone(),
            log.clone(),
        ));
        Replica { assignment, status, usage, log, task }
    }

    /// What the replica was started from.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Its status now.
    pub fn status(&self) -> ReplicaStatus {
        let mut st = self.status.get();
        st.cpu_seconds = self.usage.cpu_seconds();
        st.memory_bytes = self.usage.memory_bytes();
        st.requests = self.usage.requests();
        st.errors = self.usage.errors();
        st.latency = self.usage.latency();
        st
    }

    /// Stops the guest for good, saying why in its log.
    pub fn stop(self, why: &str) {
        // A run that ended on its own (a job's) has said why already.
        if let Some(log) = self.log.as_ref().filter(|_| !self.task.is_finished()) {
            log.system(&format!("stopping: {why}"));
        }
        // Drop aborts the task, which drops the run's future, which stops the
        // workload (a guest at its next epoch tick, a container torn down).
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
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

async fn supervise<R: Runtime + ?Sized>(
    runtime: Arc<R>,
    ctx: Arc<Context>,
    a: Assignment,
    status: Status,
    usage: Arc<Usage>,
    log: Option<Arc<LogSink>>,
) {
    let say = |msg: &str| {
        if let Some(l) = &log {
            l.system(msg);
        }
    };
    let id = a.replica.clone();
    let cannot_run = |reason: String| {
        say(&format!("cannot run: {reason}"));
        tracing::warn!(replica = %id, "cannot run: {reason}");
        status.set(ReplicaState::Failed, Some(reason), None);
    };
    say(&format!(
        "starting replica {id} of {} revision {} (generation {}, {})",
        a.deployment, a.revision, a.generation, a.spec.workload
    ));

    // Fetch and compile or unpack; a scheduler we cannot reach is retried, an
    // artifact that is not runnable never will be.
    let mut retry = Backoff::default();
    let mut last_error: Option<String> = None;
    let prepared = loop {
        match runtime.prepare(&a, ctx.client.clone()).await {
            Ok(p) => break p,
            Err(ArtifactError::Invalid(reason)) => return cannot_run(reason),
            Err(ArtifactError::Transient(reason)) => {
                if last_error.as_deref() != Some(reason.as_str()) {
                    say(&format!("{reason} (retrying)"));
                    tracing::warn!(replica = %id, "{reason} (retrying)");
                }
                status.set(ReplicaState::Starting, Some(reason.clone()), None);
                last_error = Some(reason);
                tokio::time::sleep(retry.after_run(Duration::ZERO)).await;
            }
        }
    };

    // Secret values live on tmpfs for as long as this supervisor runs (dropped,
    // and the files removed, when the replica stops).
    let secrets = match crate::secrets::materialize(&ctx.data_dir, &a) {
        Ok(s) => s,
        Err(reason) => return cannot_run(reason),
    };
    let mut preopens = secrets.preopens.clone();
    match crate::volumes::preopens(&ctx.data_dir, &a) {
        Ok(v) => preopens.extend(v),
        Err(reason) => return cannot_run(reason),
    }
    // A read-write volume has one writer: wait until an older replica lets go.
    let _volumes = loop {
        match crate::volumes::LOCKS.acquire(&ctx.data_dir, &a) {
            Ok(held) => break held,
            Err(reason) => {
                status.set(ReplicaState::Starting, Some(reason), None);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut env = a.spec.env.clone();
    env.extend(secrets.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec =
        RunSpec { usage, status: status.clone(), ingress: ctx.ingress.clone(), ..RunSpec::of(&a, env, preopens) };
    let mut backoff = Backoff::default();
    // Why the previous run ended, kept as the reason of the restarted replica so
    // that the scheduler's `Restarted` event can say why.
    let mut last_exit: Option<String> = None;
    loop {
        status.set(ReplicaState::Running, last_exit.clone(), None);
        let started = Instant::now();
        let Some(sink) = log.clone().or_else(|| LogSink::open(logs::replica_dir(&ctx.data_dir, &id)).ok()) else {
            let reason = "cannot open the replica's log".to_string();
            status.set(ReplicaState::Failed, Some(reason), None);
            return;
        };
        let outcome = runtime.clone().run(&prepared, spec.clone(), sink).await;
        let reason = outcome.reason();
        METRICS.exits.with_label_values(&[a.deployment.as_str(), outcome.metric_reason()]).inc();
        if matches!(outcome, Outcome::MemoryExceeded(_)) {
            METRICS.memory_limit_traps.with_label_values(&[a.deployment.as_str()]).inc();
        }
        let state = if outcome.is_success() { ReplicaState::Exited } else { ReplicaState::Failed };
        status.set(state, Some(reason.clone()), outcome.exit_code());
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
        status.set(ReplicaState::Starting, last_exit.clone(), None);
        status.add_restart();
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
    fn delays_read_well() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(2500)), "2.5s");
    }
}
