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

use super::ContainerRuntime;
use crate::http::{HttpRuntime, Upstream};
use crate::logs::LogSink;
use crate::runtime::BoxFuture;
use crate::wasm::Outcome;
use skiff_api::{Probe, Probes, ReplicaState, ReplicaStatus, TcpProbe};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
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

/// Runs one run of a container serving HTTP on `port` under `probes` (see
/// [`probes_for`]), routed by the node's ingress while it is ready.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    containers: &Arc<ContainerRuntime>,
    http: &Arc<HttpRuntime>,
    run: BoxFuture<'static, Outcome>,
    probes: &Probes,
    port: u16,
    a: &skiff_api::Assignment,
    status: &Mutex<ReplicaStatus>,
    log: &Option<Arc<LogSink>>,
) -> Outcome {
    let watched = crate::probes::run_container(containers, run, probes, &a.replica, status, log);
    // The route (inside `follow`) is dropped as soon as the run ends.
    tokio::select! {
        outcome = watched => outcome,
        never = follow(containers, http, port, a, status, log) => match never {},
    }
}

/// Routes the replica while its state is `ready`, forever.
async fn follow(
    containers: &Arc<ContainerRuntime>,
    http: &Arc<HttpRuntime>,
    port: u16,
    a: &skiff_api::Assignment,
    status: &Mutex<ReplicaStatus>,
    log: &Option<Arc<LogSink>>,
) -> std::convert::Infallible {
    let mut route = None;
    loop {
        let ready = status.lock().unwrap_or_else(|e| e.into_inner()).state == ReplicaState::Ready;
        match (ready, &route, containers.address(&a.replica)) {
            (true, None, Some(ip)) => {
                let upstream = Arc::new(Upstream {
                    id: a.replica.clone(),
                    deployment: a.deployment.clone(),
                    addr: SocketAddr::new(ip, port),
                });
                if let Some(l) = log {
                    l.system(&format!(
                        "serving http: {}.{} and /d/{}/ on every node's ingress, from {}",
                        a.deployment,
                        http.config().suffix,
                        a.deployment,
                        upstream.addr
                    ));
                }
                route = Some(http.route_upstream(upstream));
            }
            (false, Some(_), _) | (_, Some(_), None) => route = None,
            _ => {}
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
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
