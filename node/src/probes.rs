//! Health checks: a startup probe gates the others; a failing readiness probe
//! takes the replica out of routing and availability (state `running`, not
//! `ready`) until it passes again; a failing liveness or startup probe restarts
//! the replica (counted, with backoff and the reason in its log and status).
//!
//! [`watch`] holds the timing and threshold logic for any kind of check: Wasm
//! HTTP replicas are checked through their own handler (`http::run`), containers
//! by HTTP or TCP to their address or by `exec` in them (`container::health`).
//! Wasm command workloads have no network: their liveness is the process being
//! alive, which the supervisor already watches. `watch` returns when a liveness
//! or startup probe failed; the runtime then ends its run with that reason and
//! the supervisor restarts it like any other failed run.

use crate::logs::LogSink;
use crate::state::Status;
use skiff_api::{Probe, Probes, ReplicaState};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How soon a readiness probe that has not passed yet is tried again: a
/// replica waiting to serve its first request (a scale from zero, a rollout's
/// new replica) should not wait out a whole `period_seconds` after a server
/// that was a few milliseconds from listening.
const EAGER_RETRY: Duration = Duration::from_millis(20);

/// Counts consecutive failures of one probe against its threshold.
struct Tracker<'a> {
    probe: &'a Probe,
    failures: u32,
    next: Instant,
    /// Retries every [`EAGER_RETRY`] until the probe first passes (readiness
    /// only: a startup or liveness probe's period is its time budget).
    eager: bool,
}

impl<'a> Tracker<'a> {
    fn new(probe: &'a Probe, started: Instant) -> Self {
        Tracker {
            probe,
            failures: 0,
            next: started + Duration::from_secs(probe.initial_delay_seconds.into()),
            eager: false,
        }
    }

    fn eager(mut self) -> Self {
        self.eager = true;
        self
    }

    /// Runs `check` if due; `Some(Err)` once it failed `failure_threshold` times
    /// in a row, `Some(Ok)` when it passed, `None` when not due or not yet failed enough.
    async fn tick<F, Fut>(&mut self, check: &F) -> Option<Result<(), String>>
    where
        F: Fn(&Probe) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + Duration::from_secs(self.probe.period_seconds.into());
        match check(self.probe).await {
            Ok(()) => {
                self.failures = 0;
                self.eager = false;
                Some(Ok(()))
            }
            Err(why) => {
                if self.eager {
                    self.next = Instant::now() + EAGER_RETRY;
                }
                self.failures += 1;
                (self.failures >= self.probe.failure_threshold)
                    .then(|| Err(format!("{why} ({} times in a row)", self.failures)))
            }
        }
    }
}

/// What [`watch`] tells its caller about readiness.
pub(crate) enum Readiness {
    /// The replica became ready (at once without a readiness probe).
    Ready,
    /// The replica was ready and its readiness probe failed.
    Lost(String),
    /// The replica is still not ready, for this reason.
    Still(String),
}

/// Runs `probes` with `check` from now on, telling `ready` about readiness, and
/// returns only when a liveness or startup probe failed, saying why (the caller
/// restarts the replica).
pub(crate) async fn watch<F, Fut>(probes: &Probes, check: F, mut ready: impl FnMut(Readiness)) -> String
where
    F: Fn(&Probe) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    if let Some(p) = &probes.startup {
        let mut t = Tracker::new(p, Instant::now());
        loop {
            match t.tick(&check).await {
                Some(Ok(())) => break,
                Some(Err(why)) => return format!("startup probe failed: {why}"),
                None => tokio::time::sleep_until(t.next.into()).await,
            }
        }
    }
    let mut live = probes.liveness.as_ref().map(|p| Tracker::new(p, Instant::now()));
    let mut readiness = probes.readiness.as_ref().map(|p| Tracker::new(p, Instant::now()).eager());
    // Without a readiness probe the replica serves from the start.
    let mut is_ready = readiness.is_none();
    if is_ready {
        ready(Readiness::Ready);
    }
    loop {
        if let Some(t) = &mut live
            && let Some(Err(why)) = t.tick(&check).await
        {
            return format!("liveness probe failed: {why}");
        }
        if let Some(t) = &mut readiness {
            match t.tick(&check).await {
                Some(Ok(())) if !is_ready => {
                    is_ready = true;
                    ready(Readiness::Ready);
                }
                Some(Err(why)) => {
                    let reason = format!("not ready: readiness probe failed: {why}");
                    ready(if is_ready { Readiness::Lost(reason) } else { Readiness::Still(reason) });
                    is_ready = false;
                }
                _ => {}
            }
        }
        // Sleep until the next probe is due; with none (the common HTTP
        // replica without probes) never wake again: a timer per replica every
        // few milliseconds is what 10,000 idle replicas would cost otherwise.
        let due = [live.as_ref(), readiness.as_ref()].into_iter().flatten().map(|t| t.next).min();
        match due {
            Some(due) => tokio::time::sleep_until(due.max(Instant::now() + Duration::from_millis(1)).into()).await,
            None => std::future::pending::<()>().await,
        }
    }
}

/// Applies a [`Readiness`] report to the replica's status and log.
pub(crate) fn report(status: &Status, log: &Arc<LogSink>, r: &Readiness) {
    match r {
        Readiness::Ready => {
            status.set(ReplicaState::Ready, None, None);
            log.system("ready");
        }
        Readiness::Lost(reason) => {
            log.system(reason);
            status.set(ReplicaState::Running, Some(reason.clone()), None);
        }
        Readiness::Still(reason) => status.set_reason(Some(reason.clone())),
    }
}
