//! When a revision counts as up, for `deploy --wait`, `apply --wait` and
//! `rollout status`. A deployment that serves (an HTTP component, `http_port`,
//! or a readiness probe) is up when its replicas are `ready` and in the
//! endpoints table the ingresses route by; any other when they run. Either way
//! the count must hold for [`SETTLE`] with no replica failing, exiting or
//! restarting: a replica that crashes a second after it started is a failure to
//! report, not a success.

use anyhow::bail;
use skiff_api::{Client, Millis, Replica, ReplicaState, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long the wanted count must hold. A crash is seen by the scheduler at the
/// node's next heartbeat (every second), after a restart backoff of about 250 ms.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Whether a workload compiled from `wasm` is an HTTP component: it exports
/// `wasi:http/incoming-handler` (the name is in its export section as text).
pub fn is_http_component(wasm: &[u8]) -> bool {
    const EXPORT: &[u8] = b"wasi:http/incoming-handler";
    wasm.windows(EXPORT.len()).any(|w| w == EXPORT)
}

/// Whether replicas of `spec` are meant to serve: routed by the ingress or
/// gated by a readiness probe. `http_component`: the Wasm file is one.
pub fn serves(spec: &WorkloadSpec, http_component: bool) -> bool {
    http_component || spec.http_port.is_some() || spec.probes.readiness.is_some()
}

/// What to wait for.
pub struct Target<'a> {
    /// The deployment.
    pub name: &'a str,
    /// The revision whose replicas count.
    pub revision: u64,
    /// How many must be up.
    pub want: u32,
    /// Up means ready and routable, not just running.
    pub serves: bool,
    /// Replicas created since (scheduler time) are new: any restart of theirs is
    /// a failure. Older ones count only restarts after the wait began.
    pub since_ms: Millis,
}

impl Target<'_> {
    /// The word the output uses for "up".
    pub fn up(&self) -> &'static str {
        if self.serves { "ready (routable)" } else { "running" }
    }
}

/// Where the replicas stand at one look.
pub struct Look {
    /// Replicas of the revision that are up.
    pub up: u32,
    /// The others, with what they are doing.
    pub waiting: Vec<String>,
}

/// Watches one target across looks: the restart counts older replicas had.
#[derive(Default)]
pub struct Watch {
    restarts: BTreeMap<String, u32>,
}

impl Watch {
    /// One look: how many are up, or an error naming the replica that failed.
    pub async fn look(&mut self, client: &Client, t: &Target<'_>) -> anyhow::Result<Look> {
        let replicas = client.replicas(Some(t.name), None).await?;
        let current: Vec<&Replica> =
            replicas.iter().filter(|r| r.revision == t.revision && !r.state.is_terminal()).collect();
        for r in &current {
            let before =
                if r.created_ms >= t.since_ms { 0 } else { *self.restarts.entry(r.id.clone()).or_insert(r.restarts) };
            if matches!(r.state, ReplicaState::Failed | ReplicaState::Exited) || r.restarts > before {
                bail!("deployment {}: {} (see `skiff logs {}`)", t.name, failure(r), t.name);
            }
        }
        let routed: BTreeSet<String> = if t.serves {
            // The table is keyed `NS/NAME` outside `default` (#20); a token scoped
            // to a namespace may not read it (it names every namespace's
            // deployments): then a ready replica counts as routed.
            let key = skiff_api::namespace::key(client.namespace(), t.name);
            match client.endpoints(0, Duration::ZERO).await {
                Ok(table) => table.deployments.get(&key).into_iter().flatten().map(|e| e.replica.clone()).collect(),
                Err(e) if e.status() == Some(403) => {
                    replicas.iter().filter(|r| r.state == ReplicaState::Ready).map(|r| r.id.clone()).collect()
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            BTreeSet::new()
        };
        let is_up = |r: &Replica| {
            if t.serves {
                r.state == ReplicaState::Ready && routed.contains(&r.id)
            } else {
                matches!(r.state, ReplicaState::Running | ReplicaState::Ready)
            }
        };
        let up = current.iter().filter(|r| is_up(r)).count() as u32;
        let waiting = current
            .iter()
            .filter(|r| !is_up(r))
            .map(|r| match &r.reason {
                Some(reason) => format!("{} {}: {reason}", r.id, r.state),
                None if r.state == ReplicaState::Ready => format!("{} ready, not yet routed", r.id),
                None => format!("{} {}", r.id, r.state),
            })
            .collect();
        Ok(Look { up, waiting })
    }
}

/// A replica that failed, in one phrase: what happened and why.
fn failure(r: &Replica) -> String {
    let mut s = match r.state {
        ReplicaState::Failed | ReplicaState::Exited => format!("replica {} {}", r.id, r.state),
        _ => format!("replica {} restarted ({} so far, now {})", r.id, r.restarts, r.state),
    };
    if let Some(code) = r.exit_code {
        s.push_str(&format!(", exit status {code}"));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!(": {reason}"));
    }
    s
}

/// Waits until `t.want` replicas are up and stay up for [`SETTLE`]; fails at
/// once when one fails, or at `deadline` saying what the others wait for.
pub async fn until_up(
    client: &Client,
    t: &Target<'_>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    if t.want == 0 {
        println!("deployment {}: 0 replicas wanted", t.name);
        return Ok(());
    }
    let mut watch = Watch::default();
    let mut up_since: Option<tokio::time::Instant> = None;
    loop {
        let look = watch.look(client, t).await?;
        let now = tokio::time::Instant::now();
        if look.up >= t.want {
            let since = *up_since.get_or_insert(now);
            if now.duration_since(since) >= SETTLE {
                println!("deployment {}: {}/{} replicas {}", t.name, look.up, t.want, t.up());
                return Ok(());
            }
        } else {
            up_since = None;
        }
        if now >= deadline {
            let detail = if look.waiting.is_empty() {
                "no replica of this revision yet".to_string()
            } else {
                look.waiting.join("; ")
            };
            bail!(
                "deployment {}: only {}/{} replicas {} after {}: {detail} (see `skiff describe deployment {}`)",
                t.name,
                look.up,
                t.want,
                t.up(),
                humantime::format_duration(timeout),
                t.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_components_are_told_by_their_export() {
        assert!(super::is_http_component(b"\0asm\x0d\0\x01\0....wasi:http/incoming-handler@0.2.0..."));
        assert!(!super::is_http_component(b"\0asm\x01\0\0\0wasi:cli/run@0.2.0"));
    }
}
