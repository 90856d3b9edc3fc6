//! Named volumes on the node: directories under `<data_dir>/volumes/<name>`,
//! preopened into Wasm replicas. A volume mounted read-write is held by one
//! replica at a time on this node: a replica waits for the previous holder (an
//! old revision still stopping, say) to let go before it starts. The scheduler
//! pins every replica of a volume to this node, so no other node can write it.

use crate::wasm::Preopen;
use skiff_api::Assignment;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    data_dir.join("volumes").join(name)
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
        if skiff_api::manifest::validate_name(name).is_err() || in_use(name) {
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
