//! Health checks: a startup probe gates the others; a failing readiness probe
//! takes the replica out of routing and availability (state `running`, not
//! `ready`) until it passes again; a failing liveness or startup probe restarts
//! the replica (counted, with backoff and the reason in its log and status).
//!
//! [`watch`] holds the timing and threshold logic for any kind of check: Wasm
//! HTTP replicas are checked through their own handler ([`serve`]), containers by
//! HTTP or TCP to their address or by `exec` in them (`container::health`). Wasm
//! command workloads have no network: their liveness is the process being alive,
//! which the supervisor already watches.

use crate::http::{HttpReplica, HttpRuntime};
use crate::logs::LogSink;
use crate::supervisor::{Backoff, set_state};
use bytes::Bytes;
use skiff_api::{Probe, Probes, ReplicaState, ReplicaStatus};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One check through the replica's handler.
async fn check(runtime: &Arc<HttpRuntime>, replica: &Arc<HttpReplica>, probe: &Probe) -> Result<(), String> {
    let Some(h) = &probe.http else {
        return Err("only http probes can check a Wasm component (tcp and exec are for containers)".into());
    };
    let req = http::Request::builder()
        .uri(h.path.as_str())
        .header("host", "probe.skiff.local")
        .header("user-agent", "skiff-probe")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("bad probe path {}: {e}", h.path))?;
    let timeout = Duration::from_secs(probe.timeout_seconds.into());
    match tokio::time::timeout(timeout, runtime.handle(replica, req)).await {
        Ok(resp) if resp.status().as_u16() == h.status => Ok(()),
        Ok(resp) => Err(format!("GET {} answered {}, expected {}", h.path, resp.status().as_u16(), h.status)),
        Err(_) => Err(format!("GET {} took longer than {timeout:?}", h.path)),
    }
}

/// Counts consecutive failures of one probe against its threshold.
struct Tracker<'a> {
    probe: &'a Probe,
    failures: u32,
    next: Instant,
}

impl<'a> Tracker<'a> {
    fn new(probe: &'a Probe, started: Instant) -> Self {
        Tracker { probe, failures: 0, next: started + Duration::from_secs(probe.initial_delay_seconds.into()) }
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
                Some(Ok(()))
            }
            Err(why) => {
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
    let step = Duration::from_millis(100);
    if let Some(p) = &probes.startup {
        let mut t = Tracker::new(p, Instant::now());
        loop {
            match t.tick(&check).await {
                Some(Ok(())) => break,
                Some(Err(why)) => return format!("startup probe failed: {why}"),
                None => tokio::time::sleep(step).await,
            }
        }
    }
    let mut live = probes.liveness.as_ref().map(|p| Tracker::new(p, Instant::now()));
    let mut readiness = probes.readiness.as_ref().map(|p| Tracker::new(p, Instant::now()));
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
        tokio::time::sleep(step).await;
    }
}

/// Applies a [`Readiness`] report to the replica's status and log.
pub(crate) fn report(status: &Mutex<ReplicaStatus>, log: &Option<Arc<LogSink>>, r: &Readiness) {
    match r {
        Readiness::Ready => {
            set_state(status, ReplicaState::Ready, None, None);
            if let Some(l) = log {
                l.system("ready");
            }
        }
        Readiness::Lost(reason) => {
            if let Some(l) = log {
                l.system(reason);
            }
            set_state(status, ReplicaState::Running, Some(reason.clone()), None);
        }
        Readiness::Still(reason) => {
            status.lock().unwrap_or_else(|e| e.into_inner()).reason = Some(reason.clone());
        }
    }
}

/// Serves `replica` under its probes until the supervisor is dropped.
pub(crate) async fn serve(
    runtime: Arc<HttpRuntime>,
    replica: Arc<HttpReplica>,
    probes: Probes,
    status: &Arc<Mutex<ReplicaStatus>>,
    log: &Option<Arc<LogSink>>,
) {
    let say = |msg: &str| {
        if let Some(l) = log {
            l.system(msg);
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        set_state(status, ReplicaState::Running, None, None);
        let mut route = None;
        let why = watch(
            &probes,
            |p: &Probe| {
                let (runtime, replica, p) = (runtime.clone(), replica.clone(), p.clone());
                async move { check(&runtime, &replica, &p).await }
            },
            |r| {
                match &r {
                    Readiness::Ready => route = Some(runtime.route(replica.clone())),
                    // Dropping the route takes it out of this node's routing;
                    // the scheduler's table follows from the next heartbeat.
                    Readiness::Lost(_) => route = None,
                    Readiness::Still(_) => {}
                }
                report(status, log, &r);
            },
        )
        .await;
        drop(route);
        // A failed liveness or startup probe: restart it as a crash would be.
        say(&format!("{why}; restarting"));
        tracing::info!(replica = %replica.id, "{why}; restarting");
        set_state(status, ReplicaState::Failed, Some(why), None);
        tokio::time::sleep(backoff.after_run(started.elapsed())).await;
        status.lock().unwrap_or_else(|e| e.into_inner()).restarts += 1;
    }
}

/// Runs one run of a container under its probes: readiness into its status, and
/// a failed liveness or startup probe kills the container (the run tears it down
/// as after any exit) and ends the run as failed with the reason.
pub(crate) async fn run_container(
    containers: &Arc<crate::container::ContainerRuntime>,
    mut run: crate::runtime::BoxFuture<'static, crate::wasm::Outcome>,
    probes: &Probes,
    id: &str,
    status: &Mutex<ReplicaStatus>,
    log: &Option<Arc<LogSink>>,
) -> crate::wasm::Outcome {
    let check = |p: &Probe| {
        let (c, id, p) = (containers.clone(), id.to_string(), p.clone());
        async move { c.check(&id, &p).await }
    };
    let watching = watch(probes, check, |r| report(status, log, &r));
    tokio::select! {
        outcome = &mut run => outcome,
        why = watching => {
            let (oci, id) = (containers.oci().clone(), id.to_string());
            let _ = tokio::task::spawn_blocking(move || oci.kill(&id, "KILL")).await;
            let _ = run.await;
            crate::wasm::Outcome::Failed(why)
        }
    }
}
