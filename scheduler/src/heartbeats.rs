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
//! delayed the next sign of life past the grace period. A report says
//! everything about the node (level-triggered), so only each node's latest
//! one is kept, the queue never holds more than one per node, and a report that
//! fails to apply is logged and superseded by the next.

use crate::Core;
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
    /// Queues node `name`'s heartbeat, replacing an older one not yet applied.
    pub(crate) fn submit(&self, name: String, hb: Heartbeat) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).insert(name, hb);
        self.ready.notify_one();
    }
}

/// Applies every queued heartbeat with the state lock the caller holds. The
/// controllers call it before they look for dead nodes and place replicas, so
/// that they decide on the latest reports.
pub(crate) fn apply_queued(core: &Core, st: &mut State) {
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
