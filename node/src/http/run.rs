//! HTTP components as a [`Runtime`]: prepare compiles the handler (once per
//! node) and proves it instantiates under the replica's memory limit; a run
//! routes the replica on this node's ingress while it is ready and checks it
//! through its own handler, and ends, with the reason, when its liveness or
//! startup probe fails. The supervisor restarts it like any other failed run.

use super::{HttpHandler, HttpReplica, HttpRuntime, POOL_MEMORY};
use crate::logs::LogSink;
use crate::probes::{Readiness, report, watch};
use crate::runtime::{ArtifactError, BoxFuture, Outcome, RunSpec, Runtime, wasm_digest};
use bytes::Bytes;
use skiff_api::{Assignment, Client, Probe};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

impl HttpReplica {
    /// A replica of `spec` whose instances are made from `pre`.
    pub(super) fn new(spec: &RunSpec, pre: HttpHandler, log: Option<Arc<LogSink>>) -> HttpReplica {
        let limit = spec.memory_limit;
        HttpReplica {
            id: spec.replica.clone(),
            deployment: spec.deployment.clone(),
            revision: spec.revision,
            pre,
            env: spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            preopens: spec.preopens.clone(),
            usage: spec.usage.clone(),
            memory_limit: if limit == 0 { POOL_MEMORY } else { limit.min(POOL_MEMORY) },
            allowed_hosts: Arc::new(spec.allowed_hosts.clone()),
            log,
            inflight: AtomicUsize::new(0),
        }
    }
}

impl Runtime for HttpRuntime {
    type Prepared = HttpHandler;

    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<HttpHandler, ArtifactError>> {
        Box::pin(async move {
            let digest = wasm_digest(a)?;
            let handler = self.handler(digest, client).await?;
            // A handler that does not instantiate under the replica's memory
            // limit never will: the replica fails for good, as a blob that does
            // not compile does.
            let trial = HttpReplica::new(&RunSpec::of(a, a.spec.env.clone(), Vec::new()), handler.clone(), None);
            self.check_instantiable(&trial)
                .await
                .map_err(|e| ArtifactError::Invalid(format!("the component does not instantiate: {e}")))?;
            Ok(handler)
        })
    }

    fn run(self: Arc<Self>, handler: &HttpHandler, spec: RunSpec, log: Arc<LogSink>) -> BoxFuture<'static, Outcome> {
        let replica = Arc::new(HttpReplica::new(&spec, handler.clone(), Some(log.clone())));
        log.system(&format!(
            "serving http: {}.{} and /d/{}/ on every node's ingress (deadline {}s per request, {} instances)",
            spec.deployment,
            self.config.suffix,
            spec.deployment,
            self.config.request_timeout.as_secs_f64(),
            if self.pooling { "pooled" } else { "on-demand" },
        ));
        Box::pin(async move {
            let mut route = None;
            let why = watch(
                &spec.probes,
                |p: &Probe| {
                    let (runtime, replica, p) = (self.clone(), replica.clone(), p.clone());
                    async move { check(&runtime, &replica, &p).await }
                },
                |r| {
                    match &r {
                        Readiness::Ready => route = Some(self.local.add(replica.clone())),
                        // Dropping the route takes it out of this node's routing;
                        // the scheduler's table follows from the next heartbeat.
                        Readiness::Lost(_) => route = None,
                        Readiness::Still(_) => {}
                    }
                    report(&spec.status, &log, &r);
                },
            )
            .await;
            drop(route);
            Outcome::Failed(why)
        })
    }
}

/// One check of `probe` through the replica's handler.
async fn check(runtime: &HttpRuntime, replica: &Arc<HttpReplica>, probe: &Probe) -> Result<(), String> {
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
