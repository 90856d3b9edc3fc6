//! A replica's status as its runtime and supervisor change it, the backoff
//! between restarts, and the signal that wakes the heartbeat when a state
//! changes. A leaf: the supervisor, the runtimes and the probes all write a
//! replica's status through [`Status`], and none of them needs the others for it.

use skiff_api::{ReplicaState, ReplicaStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// First delay before a restart.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest delay before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run at least this long resets the backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// Exponential backoff between restarts: 250 ms, doubling, capped at 10 s, back
/// to the start after a run of 10 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt, after a run that lasted `ran_for`.
    pub fn after_run(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= BACKOFF_RESET_AFTER {
            self.next = BACKOFF_INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Wakes the heartbeat loop when a replica changes state, so the scheduler hears
/// of a start or a crash at once rather than at the next periodic heartbeat.
pub(crate) static STATE_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The status of replica `id` of `generation` in `state`, before anything
/// happened to it: no restarts, no reason, no usage.
pub fn fresh(id: &str, generation: u64, state: ReplicaState) -> ReplicaStatus {
    ReplicaStatus {
        id: id.to_string(),
        generation,
        state,
        restarts: 0,
        reason: None,
        exit_code: None,
        cpu_seconds: 0.0,
        memory_bytes: 0,
        requests: 0,
        errors: 0,
        latency: Vec::new(),
    }
}

/// The status of one replica, shared by its supervisor, its runtime's run and
/// the heartbeat that reports it.
#[derive(Debug, Clone)]
pub struct Status(Arc<Mutex<ReplicaStatus>>);

impl Status {
    /// A replica `id` of `generation`, starting.
    pub fn new(id: &str, generation: u64) -> Status {
        Status(Arc::new(Mutex::new(fresh(id, generation, ReplicaState::Starting))))
    }

    /// Its status now (usage as last written, which the supervisor fills in).
    pub fn get(&self) -> ReplicaStatus {
        self.lock().clone()
    }

    /// Moves the replica to `state`, waking the heartbeat if that is a change.
    pub fn set(&self, state: ReplicaState, reason: Option<String>, exit_code: Option<i32>) {
        let mut st = self.lock();
        if st.state != state {
            STATE_CHANGED.notify_one();
        }
        if let Err(e) = st.state.become_(state) {
            // Our own transitions are all legal; say so loudly if that ever changes.
            tracing::warn!(replica = %st.id, "{e}");
        }
        st.state = state;
        st.reason = reason;
        st.exit_code = exit_code;
    }

    /// Changes only the reason (a replica still not ready says why).
    pub fn set_reason(&self, reason: Option<String>) {
        self.lock().reason = reason;
    }

    /// Counts one restart.
    pub fn add_restart(&self) {
        self.lock().restarts += 1;
    }

    /// Whether the replica is `state` now.
    pub fn is(&self, state: ReplicaState) -> bool {
        self.lock().state == state
    }

    fn lock(&self) -> MutexGuard<'_, ReplicaStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Status {
    fn default() -> Self {
        Status::new("", 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_millis(10);
        let got: Vec<Duration> = (0..8).map(|_| b.after_run(short)).collect();
        let ms: Vec<u128> = got.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(b.after_run(Duration::from_secs(11)), BACKOFF_INITIAL);
        assert_eq!(b.after_run(short), Duration::from_millis(500));
    }
}
