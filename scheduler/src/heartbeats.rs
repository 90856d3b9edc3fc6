//! Group commit of heartbeats. Thousands of nodes heartbeat every second; one
//! store transaction (and one WAL commit) each was most of the scheduler's work
//! at 5,000 nodes, and the queue behind the state lock made live nodes miss their
//! grace period. Handlers queue their heartbeat here and wait; one task takes
//! everything queued, applies it in one transaction and answers each handler.
//! While a batch is applied the next one gathers, so an idle scheduler answers
//! at once and a busy one commits less often.

use crate::Core;
use crate::error::ApiError;
use crate::state::State;
use skiff_api::Heartbeat;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, oneshot};

type Reply = oneshot::Sender<Result<(), ApiError>>;

/// Heartbeats waiting for the next batch, with when each arrived.
#[derive(Default)]
pub(crate) struct Batcher {
    queue: Mutex<Vec<(String, Heartbeat, Instant, Reply)>>,
    ready: Notify,
}

impl Batcher {
    /// Queues node `name`'s heartbeat and waits until it is applied and committed.
    pub(crate) async fn submit(&self, name: String, hb: Heartbeat) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push((name, hb, Instant::now(), tx));
        self.ready.notify_one();
        rx.await.unwrap_or_else(|_| Err(ApiError::internal("the heartbeat was dropped; the scheduler is stopping")))
    }
}

/// Applies every queued heartbeat with the state lock the caller holds. The
/// controllers call it before they look for dead nodes, so that a node is never
/// declared down for a heartbeat that arrived but waited for the lock.
pub(crate) fn apply_queued(core: &Core, st: &mut State) {
    let items = std::mem::take(&mut *core.heartbeats.queue.lock().unwrap_or_else(|p| p.into_inner()));
    if items.is_empty() {
        return;
    }
    let mut batch = Vec::with_capacity(items.len());
    let mut replies = Vec::with_capacity(items.len());
    for (name, hb, arrived, reply) in items {
        batch.push((name, hb, arrived));
        replies.push(reply);
    }
    for (reply, result) in replies.into_iter().zip(st.heartbeats(batch)) {
        let _ = reply.send(result);
    }
}

/// Applies queued heartbeats in batches, forever.
pub(crate) async fn run(core: Arc<Core>) {
    loop {
        core.heartbeats.ready.notified().await;
        let dirty = {
            let mut st = core.state();
            apply_queued(&core, &mut st);
            st.mem().sched_dirty
        };
        if dirty {
            core.wake();
        }
    }
}
