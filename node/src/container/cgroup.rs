//! The containers' cgroups (made by the OCI runtime under `skiff/<replica>` in
//! each hierarchy): where they are, what they count, and their usage read into
//! the replica's counters.

use super::RunSpec;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Parent of every container's cgroup, under each hierarchy.
pub(super) const CGROUP_PARENT: &str = "skiff";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a container's killed processes may take to leave its cgroups.
const CGROUP_REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the container's cgroups. Its processes were killed, but a cgroup
/// cannot go while one of them is still exiting (thousands, for a fork loop
/// held at its pids limit): tried again for up to [`CGROUP_REMOVE_TIMEOUT`].
pub(super) fn remove_cgroups(id: &str) {
    let deadline = std::time::Instant::now() + CGROUP_REMOVE_TIMEOUT;
    loop {
        let left: Vec<(PathBuf, std::io::Error)> =
            cgroup_dirs(id).into_iter().filter_map(|d| fs::remove_dir(&d).err().map(|e| (d, e))).collect();
        match left.first() {
            None => return,
            Some((dir, e)) if std::time::Instant::now() >= deadline => {
                tracing::warn!(container = id, "cannot remove the cgroup {}: {e}", dir.display());
                return;
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The container's cgroup directory in every hierarchy where it may exist.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(CGROUP_ROOT) {
        for e in entries.flatten() {
            let p = e.path().join(CGROUP_PARENT).join(id);
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    let v2 = Path::new(CGROUP_ROOT).join(CGROUP_PARENT).join(id);
    if v2.is_dir() {
        out.push(v2);
    }
    out
}

/// OOM kills recorded in the container's memory cgroup (v1 `memory.oom_control`,
/// v2 `memory.events`).
pub(super) fn oom_kills(id: &str) -> u64 {
    let candidates = [
        Path::new(CGROUP_ROOT).join("memory").join(CGROUP_PARENT).join(id).join("memory.oom_control"),
        Path::new(CGROUP_ROOT).join(CGROUP_PARENT).join(id).join("memory.events"),
    ];
    for p in candidates {
        if let Ok(text) = fs::read_to_string(&p) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// (cpu nanoseconds, memory bytes) used by the container's cgroup now (v1).
fn cgroup_usage(id: &str) -> Option<(u64, u64)> {
    let read = |ctrl: &str, file: &str| -> Option<u64> {
        let p = Path::new(CGROUP_ROOT).join(ctrl).join(CGROUP_PARENT).join(id).join(file);
        fs::read_to_string(p).ok()?.trim().parse().ok()
    };
    Some((read("cpuacct", "cpuacct.usage")?, read("memory", "memory.usage_in_bytes")?))
}

/// Counts a container's cgroup usage into its replica's counters.
pub(super) struct UsageReader {
    id: String,
    usage: Arc<crate::metrics::Usage>,
    cpu: u64,
    memory: u64,
}

impl UsageReader {
    pub(super) fn new(id: &str, spec: &RunSpec) -> UsageReader {
        UsageReader { id: id.to_string(), usage: spec.usage.clone(), cpu: 0, memory: 0 }
    }

    pub(super) fn read(&mut self) {
        if let Some((cpu, mem)) = cgroup_usage(&self.id) {
            self.usage.add_cpu(Duration::from_nanos(cpu.saturating_sub(self.cpu)));
            self.usage.add_memory(mem as i64 - self.memory as i64);
            (self.cpu, self.memory) = (cpu, mem);
        }
    }

    /// The container's memory is no longer held.
    pub(super) fn release(self) {
        self.usage.add_memory(-(self.memory as i64));
    }
}
