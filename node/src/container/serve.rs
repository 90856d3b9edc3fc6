//! Containers behind the ingress: a container deployment that declares its
//! `http_port` is routed by every node's ingress like a Wasm HTTP component.
//!
//! A run counts as ready once its readiness probe passes; without one, a TCP
//! readiness check of the port stands in (the server accepts connections). While
//! ready, the node's ingress routes `NAME.<suffix>` to the container's bridge
//! address and port; the scheduler lists it in the endpoints table (it is `ready`),
//! so other nodes' ingresses send its share to this node. Routing follows the
//! replica's state: it leaves as soon as the replica is no longer ready or its
//! run ends, before the container is torn down.
//!
//! All of this happens inside the container runtime's own run ([`around`]), so
//! the supervisor sees one run that ends, like any other, with an outcome.

use super::ContainerRuntime;
use crate::logs::LogSink;
use crate::probes::{report, watch};
use crate::routes::{IngressLink, Upstream};
use crate::runtime::{BoxFuture, Outcome, RunSpec};
use skiff_api::{Probe, Probes, ReplicaState, TcpProbe};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How often routing looks at the replica's state.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// The address of the node on the container bridge (the `host-local` gateway of
/// [`super::cni::SUBNET`]).
pub const BRIDGE_GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 89, 0, 1));

/// The probes of a container serving HTTP on `port`: its own, with a TCP check of
/// the port as the readiness probe when it has none.
pub fn probes_for(probes: &Probes, port: u16) -> Probes {
    let mut out = probes.clone();
    if out.readiness.is_none() {
        out.readiness = Some(Probe {
            http: None,
            tcp: Some(TcpProbe { port }),
            exec: None,
            period_seconds: 1,
            timeout_seconds: 1,
            failure_threshold: 3,
            initial_delay_seconds: 0,
        });
    }
    out
}

/// The ingress URL a container is given as `SKIFF_INGRESS`: the node's ingress
/// address, or, when that is a loopback or unspecified address (which a container's
/// own namespace cannot reach), the node's address on the bridge at the same port.
pub fn ingress_for_containers(ingress: SocketAddr, bridged: bool) -> String {
    let ip = ingress.ip();
    if bridged && (ip.is_loopback() || ip.is_unspecified()) {
        format!("http://{}", SocketAddr::new(BRIDGE_GATEWAY, ingress.port()))
    } else {
        format!("http://{ingress}")
    }
}

/// Gives a container `SKIFF_INGRESS`, the URL at which it reaches other
/// deployments by name, unless its spec sets it.
pub(crate) fn add_ingress_env(spec: &mut RunSpec, bridged: bool) {
    if let Some(addr) = spec.ingress.as_ref().and_then(|i| i.addr) {
        spec.env.entry("SKIFF_INGRESS".into()).or_insert_with(|| ingress_for_containers(addr, bridged));
    }
}

/// Watches `run`, one run of a container, as its spec asks: under its probes
/// (with a TCP readiness check of `http_port` when it has no readiness probe),
/// and with an `http_port`, routed by the node's ingress while it is ready. A
/// failed liveness or startup probe kills the container (the run tears it down
/// as after any exit) and ends the run as failed with the reason. Without
/// probes or a port, the run is all there is.
pub(crate) fn around(
    containers: Arc<ContainerRuntime>,
    run: BoxFuture<'static, Outcome>,
    spec: RunSpec,
    log: Arc<LogSink>,
) -> BoxFuture<'static, Outcome> {
    let probes = match spec.http_port {
        Some(port) => probes_for(&spec.probes, port),
        None => spec.probes.clone(),
    };
    if probes.is_empty() {
        return run;
    }
    Box::pin(async move {
        // Readiness reports wake the routing at once: a request held for a
        // scale from zero waits for the route, not for the next look.
        let reported = tokio::sync::Notify::new();
        let watched = under_probes(&containers, run, &probes, &spec, &log, &reported);
        let (Some(port), Some(ingress)) = (spec.http_port, spec.ingress.clone()) else {
            return watched.await;
        };
        // The route (inside `follow`) is dropped as soon as the run ends.
        tokio::select! {
            outcome = watched => outcome,
            never = follow(&containers, &ingress, port, &spec, &log, &reported) => match never {},
        }
    })
}

/// Runs `run` under `probes`: readiness into the replica's status, and a failed
/// liveness or startup probe kills the container and ends the run as failed.
async fn under_probes(
    containers: &Arc<ContainerRuntime>,
    mut run: BoxFuture<'static, Outcome>,
    probes: &Probes,
    spec: &RunSpec,
    log: &Arc<LogSink>,
    reported: &tokio::sync::Notify,
) -> Outcome {
    let id = spec.replica.as_str();
    let check = |p: &Probe| {
        let (c, id, p) = (containers.clone(), id.to_string(), p.clone());
        async move { c.check(&id, &p).await }
    };
    let watching = watch(probes, check, |r| {
        report(&spec.status, log, &r);
        reported.notify_one();
    });
    tokio::select! {
        outcome = &mut run => outcome,
        why = watching => {
            let (oci, id) = (containers.oci().clone(), id.to_string());
            let _ = tokio::task::spawn_blocking(move || oci.kill(&id, "KILL")).await;
            let _ = run.await;
            Outcome::Failed(why)
        }
    }
}

/// Routes the replica while its state is `ready`, forever.
async fn follow(
    containers: &ContainerRuntime,
    ingress: &IngressLink,
    port: u16,
    spec: &RunSpec,
    log: &LogSink,
    reported: &tokio::sync::Notify,
) -> std::convert::Infallible {
    let mut route = None;
    loop {
        let ready = spec.status.is(ReplicaState::Ready);
        match (ready, &route, containers.address(&spec.replica)) {
            (true, None, Some(ip)) => {
                let upstream = Arc::new(Upstream {
                    id: spec.replica.clone(),
                    deployment: spec.deployment.clone(),
                    addr: SocketAddr::new(ip, port),
                    usage: spec.usage.clone(),
                });
                log.system(&format!(
                    "serving http: {}.{} and /d/{}/ on every node's ingress, from {}",
                    spec.deployment, ingress.suffix, spec.deployment, upstream.addr
                ));
                route = Some(ingress.upstreams.add(upstream));
            }
            (false, Some(_), _) | (_, Some(_), None) => route = None,
            _ => {}
        }
        // Also look every FOLLOW_EVERY: the bridge address may come after the report.
        tokio::select! {
            _ = reported.notified() => {}
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_without_a_readiness_probe_gets_a_tcp_one() {
        let p = probes_for(&Probes::default(), 8080);
        assert_eq!(p.readiness.as_ref().and_then(|r| r.tcp.as_ref()).map(|t| t.port), Some(8080));
        assert!(p.liveness.is_none() && p.startup.is_none());
        let exec = Probe { exec: Some(vec!["true".into()]), tcp: None, ..p.readiness.clone().expect("readiness") };
        let own = Probes { readiness: Some(exec), ..Default::default() };
        assert_eq!(probes_for(&own, 8080), own, "the spec's own readiness probe is kept");
    }

    #[test]
    fn containers_reach_a_loopback_ingress_through_the_bridge() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(ingress_for_containers(lo, true), "http://10.89.0.1:8080");
        assert_eq!(ingress_for_containers(lo, false), "http://127.0.0.1:8080");
        let lan: SocketAddr = "192.168.1.5:8080".parse().expect("addr");
        assert_eq!(ingress_for_containers(lan, true), "http://192.168.1.5:8080");
    }
}
