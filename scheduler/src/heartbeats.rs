//! Group commit of heartbeats. Thousands of nodes heartbeat every second; one
//! store transaction (and one WAL commit) each was most of the scheduler's work
//! at 5,000 nodes. Handlers record the node's sign of life (the state's
//! `Liveness`, no lock), queue the report here and answer at once; one task
//! applies everything queued in one transaction. While a batch is applied the
//! next one gathers, so an idle scheduler applies at once and a busy one commits
//! less often.
//!
//! Answering before the report is applied is what keeps a busy scheduler from
//! declaring live nodes down: a node sends its next heartbeat only after the
//! answer to the last, so an answer that waited behind a long placement batch
//! delayed the next sign of life past the grace period. The queue holds at
//! most one report per node: a full report replaces what was queued, a delta
//! (only the statuses that changed since the node's last answered heartbeat) is
//! merged into it. A report that fails to apply is logged and superseded by the
//! node's next full one.
//!
//! Most heartbeats of a steady cluster are deltas with nothing in them: a sign
//! of life, recorded in the state's `Liveness` and answered without touching
//! any other lock (`receive`).

use crate::Core;
use crate::error::ApiError;
use crate::state::State;
use skiff_api::Heartbeat;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Each node's latest heartbeat not yet applied.
#[derive(Default)]
pub(crate) struct Batcher {
    queue: Mutex<HashMap<String, Heartbeat>>,
    ready: Notify,
}

impl Batcher {
    /// Queues node `name`'s heartbeat: a full one replaces an older one not yet
    /// applied, a delta is merged into it (its statuses win).
    pub(crate) fn submit(&self, name: String, hb: Heartbeat) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            match queue.get_mut(&name) {
                Some(queued) if hb.delta => {
                    queued.capacity = hb.capacity;
                    // By id, not a search of the queued list per status: a
                    // full report holds every replica of the node (thousands).
                    let mut at: HashMap<String, usize> =
                        queued.replicas.iter().enumerate().map(|(i, q)| (q.id.clone(), i)).collect();
                    for st in hb.replicas {
                        match at.get(&st.id) {
                            Some(&i) => queued.replicas[i] = st,
                            None => {
                                at.insert(st.id.clone(), queued.replicas.len());
                                queued.replicas.push(st);
                            }
                        }
                    }
                }
                _ => {
                    queue.insert(name, hb);
                }
            }
        }
        self.ready.notify_one();
    }
}

/// Takes node `name`'s heartbeat (its credential checked by `auth`): alive as
/// of now, before anything waits for the state lock; the report, if it says
/// anything the working set does not hold, is queued.
pub(crate) fn receive(core: &Core, name: String, hb: Heartbeat) -> Result<(), ApiError> {
    let sign_of_life = (hb.delta && hb.replicas.is_empty()).then_some(hb.capacity);
    match core.liveness.beat(&name, sign_of_life) {
        None => Err(ApiError::not_found(format!("node {name:?} is not registered; register it first"))),
        Some(true) => Ok(()),
        Some(false) => {
            core.live.record(&name, &hb.replicas, hb.delta);
            core.autoscale.lock().unwrap_or_else(|p| p.into_inner()).observe(&hb.replicas, skiff_api::now_ms());
            core.canary.lock().unwrap_or_else(|p| p.into_inner()).observe(&hb.replicas);
            core.heartbeats.submit(name, hb);
            Ok(())
        }
    }
}

/// Applies every queued heartbeat with the state lock the caller holds. The
/// controllers call it before they look for dead nodes and place replicas, so
/// that they decide on the latest reports.
pub(crate) fn apply_queued(core: &Core, st: &mut State) {
    st.note_heartbeat_times();
    let items = std::mem::take(&mut *core.heartbeats.queue.lock().unwrap_or_else(|p| p.into_inner()));
    if items.is_empty() {
        return;
    }
    let batch: Vec<(String, Heartbeat)> = items.into_iter().collect();
    let names: Vec<String> = batch.iter().map(|(name, _)| name.clone()).collect();
    for (name, result) in names.into_iter().zip(st.heartbeats(batch)) {
        if let Err(e) = result {
            tracing::warn!("heartbeat of node {name} not applied: {e}");
        }
    }
}

/// Applies queued heartbeats in batches, forever. Each batch waits for the
/// state lock on a blocking thread, never on one of the few async workers that
/// serve the API.
pub(crate) async fn run(core: Arc<Core>) {
    loop {
        core.heartbeats.ready.notified().await;
        let c = core.clone();
        let dirty = tokio::task::spawn_blocking(move || {
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            apply_queued(&c, &mut st);
            st.mem().sched_dirty || !st.mem().reconcile_due.is_empty()
        })
        .await
        .unwrap_or(true);
        if dirty {
            core.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::{ReplicaState, ReplicaStatus, Resources};

    fn st(id: &str, requests: u64) -> ReplicaStatus {
        ReplicaStatus {
            id: id.into(),
            generation: 1,
            state: ReplicaState::Ready,
            restarts: 0,
            reason: None,
            exit_code: None,
            cpu_seconds: 0.0,
            memory_bytes: 0,
            requests,
            errors: 0,
            latency: Vec::new(),
        }
    }

    fn hb(delta: bool, replicas: Vec<ReplicaStatus>) -> Heartbeat {
        Heartbeat { capacity: Resources::default(), replicas, delta }
    }

    #[test]
    fn a_delta_merges_into_the_queued_report_by_id() {
        let b = Batcher::default();
        b.submit("n1".into(), hb(false, vec![st("a", 1), st("b", 1)]));
        b.submit("n1".into(), hb(true, vec![st("b", 2), st("c", 1)]));
        b.submit("n1".into(), hb(true, vec![st("c", 3)]));
        let queue = b.queue.lock().unwrap();
        let q = &queue["n1"];
        assert!(!q.delta, "a merged delta keeps the full report full");
        let got: Vec<(&str, u64)> = q.replicas.iter().map(|s| (s.id.as_str(), s.requests)).collect();
        assert_eq!(got, [("a", 1), ("b", 2), ("c", 3)]);
        drop(queue);
        // A full report replaces whatever was queued.
        b.submit("n1".into(), hb(false, vec![st("d", 1)]));
        assert_eq!(b.queue.lock().unwrap()["n1"].replicas.len(), 1);
    }
}
