//! Named volumes on the node: directories under `<data_dir>/volumes/<name>`,
//! preopened into Wasm replicas. A volume mounted read-write is held by one
//! replica at a time on this node: a replica waits for the previous holder (an
//! old revision still stopping, say) to let go before it starts. The scheduler
//! pins every replica of a volume to this node, so no other node can write it.
//!
//! A deployment with `volume_lease` also holds its volumes under a [`Lease`]: the
//! node stops such a replica once it has not reached the scheduler for the
//! scheduler's node grace, so a node cut off from the scheduler has stopped
//! writing by the time the scheduler counts the replica lost (the agent does
//! the stopping; the timing lives here).

use crate::runtime::Preopen;
use skiff_api::Assignment;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The holds of every node in this process (keyed by directory, so nodes with
/// different data dirs never meet).
pub static LOCKS: std::sync::LazyLock<Arc<Locks>> = std::sync::LazyLock::new(Arc::default);

/// Which replica holds each read-write volume, by volume directory.
#[derive(Debug, Default)]
pub struct Locks {
    held: Mutex<HashMap<PathBuf, String>>,
}

/// A replica's hold on its read-write volumes; dropping it lets them go.
#[derive(Debug)]
pub struct Held {
    locks: Arc<Locks>,
    dirs: Vec<PathBuf>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.dirs {
            held.remove(d);
        }
    }
}

/// Where volume `name` lives on this node.
pub fn dir(data_dir: &Path, name: &str) -> PathBuf {
    // A namespaced volume's key `NS/NAME` (#20) is `NS.NAME` here: no name holds
    // a `.`, so it never lands inside `default`'s volume `NS`.
    data_dir.join("volumes").join(name.replace('/', "."))
}

impl Locks {
    /// Takes every read-write volume of `a` for its replica, or says which
    /// replica still holds one.
    pub fn acquire(self: &Arc<Self>, data_dir: &Path, a: &Assignment) -> Result<Held, String> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let dirs: Vec<PathBuf> =
            a.spec.volumes.iter().filter(|v| !v.read_only).map(|v| dir(data_dir, &v.name)).collect();
        for (d, v) in dirs.iter().zip(a.spec.volumes.iter().filter(|v| !v.read_only)) {
            if let Some(other) = held.get(d)
                && *other != a.replica
            {
                return Err(format!("waiting for replica {other} to release volume {}", v.name));
            }
        }
        for d in &dirs {
            held.insert(d.clone(), a.replica.clone());
        }
        Ok(Held { locks: self.clone(), dirs })
    }
}

/// Creates the volume directories of `a` and says how the guest sees them.
pub fn preopens(data_dir: &Path, a: &Assignment) -> Result<Vec<Preopen>, String> {
    a.spec
        .volumes
        .iter()
        .map(|v| {
            let host = dir(data_dir, &v.name);
            std::fs::create_dir_all(&host)
                .map_err(|e| format!("cannot create volume {} at {}: {e}", v.name, host.display()))?;
            Ok(Preopen { host, guest: v.path.clone(), writable: !v.read_only })
        })
        .collect()
}

/// Deletes the data of volumes the scheduler purged, unless a replica here still
/// mounts one (then the next answer asks again).
pub fn purge(data_dir: &Path, names: &[String], in_use: impl Fn(&str) -> bool) {
    for name in names {
        let valid =
            name.split('/').count() <= 2 && name.split('/').all(|p| skiff_api::manifest::validate_name(p).is_ok());
        if !valid || in_use(name) {
            continue;
        }
        let d = dir(data_dir, name);
        if d.exists() {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => tracing::info!("volume {name} purged"),
                Err(e) => tracing::warn!("cannot purge volume {name} at {}: {e}", d.display()),
            }
        }
    }
}

/// Whether volume `name`'s data is still on this node.
pub fn exists(data_dir: &Path, name: &str) -> bool {
    skiff_api::manifest::validate_name(name).is_ok() && dir(data_dir, name).exists()
}

/// Whether `a` runs under the node's lease: it asked for one and it writes a volume.
pub fn leased(a: &Assignment) -> bool {
    a.spec.volume_lease && a.spec.has_writable_volume()
}

/// The lease ends this much before the length the scheduler gives: room for the
/// agent's periodic check (every 100 ms) and for a Wasm guest to stop (at its
/// next epoch tick), so the replica has stopped, not just been told to, when
/// the scheduler gives up on the node.
const LEASE_MARGIN: Duration = Duration::from_millis(250);

/// The node's lease on its leased replicas. Every answer from the scheduler
/// confirms it, dated when its call was *sent*: the scheduler heard the node
/// then or later, so a lease as long as the scheduler's node grace (less
/// [`LEASE_MARGIN`]) runs out before the scheduler gives up on the node.
#[derive(Debug, Default)]
pub struct Lease {
    length: Option<Duration>,
    confirmed: Option<Instant>,
}

impl Lease {
    /// Sets the length the scheduler gives (`Assignments::lease_ms`; 0: none).
    pub fn set_length(&mut self, ms: u64) {
        self.length = (ms > 0).then(|| Duration::from_millis(ms));
    }

    /// Records an answer to a call sent at `sent`; a late answer to an older
    /// call does not move the lease back.
    pub fn confirm(&mut self, sent: Instant) {
        self.confirmed = self.confirmed.max(Some(sent));
    }

    /// The lease's length, once the scheduler gave one.
    pub fn length(&self) -> Option<Duration> {
        self.length
    }

    /// When the lease runs out; `None` while there is none.
    pub fn deadline(&self) -> Option<Instant> {
        Some(self.confirmed? + self.length?.saturating_sub(LEASE_MARGIN))
    }

    /// Whether leased replicas must not run at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_last_confirmed_call_and_never_outlasts_the_grace() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut lease = Lease::default();
        lease.confirm(t0);
        assert!(!lease.expired(t0 + s(3600)), "no length from the scheduler yet: no lease");
        lease.set_length(3000);
        let ms = Duration::from_millis;
        assert_eq!(lease.deadline(), Some(t0 + ms(2750)), "the length less the margin");
        assert!(!lease.expired(t0 + ms(2749)));
        assert!(lease.expired(t0 + ms(2750)));
        // A heartbeat sent at 2 s and answered: the lease runs on from there. A
        // long poll sent at 1 s that answers late does not shorten it.
        lease.confirm(t0 + s(2));
        lease.confirm(t0 + s(1));
        assert_eq!(lease.deadline(), Some(t0 + ms(4750)));
        assert!(!lease.expired(t0 + s(4)) && lease.expired(t0 + s(5)));

        // The scheduler counts the node down `grace` after it last *received* a
        // heartbeat; that heartbeat was sent no later than received, so with the
        // lease as long as the grace the node's writer has stopped (margin and
        // all) before then.
        let grace = s(3);
        for (sent, received) in [(s(10), s(10)), (s(10), ms(10_250)), (s(10), s(14))] {
            let mut lease = Lease::default();
            lease.set_length(3000);
            lease.confirm(t0 + sent);
            let node_down_at = t0 + received + grace;
            assert!(lease.deadline().is_some_and(|d| d + LEASE_MARGIN <= node_down_at));
        }
        lease.set_length(0);
        assert!(!lease.expired(t0 + s(3600)), "a scheduler that gives no lease");
    }
}
