//! Health checks of Wasm HTTP replicas, run through their own handler: a startup
//! probe gates the others; a failing readiness probe takes the replica out of
//! routing (state `running`, not `ready`) until it passes again; a failing
//! liveness or startup probe restarts the replica (a fresh start, counted, with
//! backoff and the reason in its log and status).
//!
//! Wasm command workloads have no network: their liveness is the process being
//! alive, which the supervisor already watches. TCP and exec probes are for
//! containers.

use crate::http::{HttpReplica, HttpRuntime};
use crate::logs::LogSink;
use crate::supervisor::{Backoff, set_state};
use bytes::Bytes;
use skiff_api::{Probe, Probes, ReplicaState, ReplicaStatus};
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

    /// Runs the check if due; `Some(Err)` once it failed `failure_threshold` times
    /// in a row, `Some(Ok)` when it passed, `None` when not due or not yet failed enough.
    async fn tick(&mut self, runtime: &Arc<HttpRuntime>, replica: &Arc<HttpReplica>) -> Option<Result<(), String>> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + Duration::from_secs(self.probe.period_seconds.into());
        match check(runtime, replica, self.probe).await {
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
    let step = Duration::from_millis(100);
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        set_state(status, ReplicaState::Running, None, None);
        let why = 'run: {
            if let Some(p) = &probes.startup {
                let mut t = Tracker::new(p, started);
                loop {
                    match t.tick(&runtime, &replica).await {
                        Some(Ok(())) => break,
                        Some(Err(why)) => break 'run format!("startup probe failed: {why}"),
                        None => tokio::time::sleep(step).await,
                    }
                }
            }
            let mut live = probes.liveness.as_ref().map(|p| Tracker::new(p, Instant::now()));
            let mut ready = probes.readiness.as_ref().map(|p| Tracker::new(p, Instant::now()));
            // Without a readiness probe the replica serves from the start.
            let mut route = ready.is_none().then(|| runtime.route(replica.clone()));
            if route.is_some() {
                set_state(status, ReplicaState::Ready, None, None);
            }
            loop {
                if let Some(t) = &mut live
                    && let Some(Err(why)) = t.tick(&runtime, &replica).await
                {
                    break 'run format!("liveness probe failed: {why}");
                }
                if let Some(t) = &mut ready {
                    match t.tick(&runtime, &replica).await {
                        Some(Ok(())) if route.is_none() => {
                            route = Some(runtime.route(replica.clone()));
                            set_state(status, ReplicaState::Ready, None, None);
                            say("ready: readiness probe passed");
                        }
                        Some(Err(why)) if route.is_some() => {
                            // Dropping the route takes it out of this node's routing;
                            // the scheduler's table follows from the next heartbeat.
                            route = None;
                            let reason = format!("not ready: readiness probe failed: {why}");
                            say(&reason);
                            set_state(status, ReplicaState::Running, Some(reason), None);
                        }
                        Some(Err(why)) => {
                            let reason = format!("not ready: readiness probe failed: {why}");
                            let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
                            st.reason = Some(reason);
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(step).await;
            }
        };
        // A failed liveness or startup probe: restart it as a crash would be.
        say(&format!("{why}; restarting"));
        tracing::info!(replica = %replica.id, "{why}; restarting");
        set_state(status, ReplicaState::Failed, Some(why), None);
        tokio::time::sleep(backoff.after_run(started.elapsed())).await;
        status.lock().unwrap_or_else(|e| e.into_inner()).restarts += 1;
    }
}
