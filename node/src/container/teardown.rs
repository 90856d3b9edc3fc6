//! Tearing containers down: the guard a run holds, the one function that stops
//! a container and removes everything it held, and what happens to the
//! containers when the node daemon stops ([`OnExit`]).
//!
//! Work on one container is serialized ([`Lifecycle::lock`]): a run's setup,
//! the teardown of a run that failed or was stopped (on a thread of its own,
//! since dropping a run cannot wait) and the next run's setup never overlap,
//! so a teardown can never miss what a setup was still making, nor remove
//! what the next run made.

use super::ContainerRuntime;
use super::adopt::Record;
use super::cgroup::remove_cgroups;
use super::cni;
use super::oci::Oci;
use super::run::Net;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// What a clean stop of the node daemon (SIGINT, SIGTERM) does with its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExit {
    /// Leaves them running: the next daemon with the same data directory
    /// adopts those still assigned to it and removes the rest (as containerd's
    /// live-restore does). `skiff node`'s default.
    #[default]
    Keep,
    /// Stops and removes them: processes, network namespaces, mounts, cgroups.
    /// `skiff dev`, and `skiff node --stop-containers-on-exit`.
    Stop,
}

/// Shared by the runtime and every run: the per-container locks, the count of
/// runs and teardowns not yet done, and whether the daemon is leaving.
#[derive(Clone, Default)]
pub(super) struct Lifecycle(Arc<Shared>);

#[derive(Default)]
struct Shared {
    on_exit: OnExit,
    exiting: AtomicBool,
    locks: Mutex<HashMap<String, Weak<Mutex<()>>>>,
    busy: Mutex<usize>,
    idle: Condvar,
}

/// A run or a teardown not yet done; the daemon's exit waits for none to be left.
pub(super) struct Busy(Lifecycle);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut n = self.0.0.busy.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.0.0.idle.notify_all();
    }
}

impl Lifecycle {
    pub(super) fn new(on_exit: OnExit) -> Lifecycle {
        Lifecycle(Arc::new(Shared { on_exit, ..Shared::default() }))
    }

    pub(super) fn on_exit(&self) -> OnExit {
        self.0.on_exit
    }

    /// The lock of container `id`: held while its bundle and network are made,
    /// and while it is torn down.
    pub(super) fn lock(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.0.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = locks.get(id).and_then(Weak::upgrade) {
            return l;
        }
        locks.retain(|_, l| l.strong_count() > 0);
        let l = Arc::new(Mutex::new(()));
        locks.insert(id.to_string(), Arc::downgrade(&l));
        l
    }

    pub(super) fn busy(&self) -> Busy {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Busy(self.clone())
    }

    /// The daemon is stopping: no container starts from now on.
    pub(super) fn begin_exit(&self) {
        self.0.exiting.store(true, Ordering::SeqCst);
    }

    pub(super) fn exiting(&self) -> bool {
        self.0.exiting.load(Ordering::SeqCst)
    }

    /// Waits until no run or teardown is left, or `timeout`; whether none is.
    pub(super) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.0.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self.0.idle.wait_timeout(n, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// [`teardown`] under the container's lock. Blocking.
    pub(super) fn teardown(&self, oci: &Oci, cni: Option<&cni::Cni>, id: &str, bundle: &Path, grace: Duration) {
        let lock = self.lock(id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        teardown(oci, cni, id, bundle, grace);
    }

    /// Tears container `id` down on a thread of its own (a drop cannot wait),
    /// counted as busy until done.
    pub(super) fn teardown_in_background(&self, net: &Net, id: &str, bundle: &Path, grace: Duration) {
        let busy = self.busy();
        let (life, net, id, bundle) = (self.clone(), net.clone(), id.to_string(), bundle.to_path_buf());
        let spawned = std::thread::Builder::new().name("skiff-ctr-stop".into()).spawn(move || {
            life.teardown(&net.oci, net.cni.as_ref(), &id, &bundle, grace);
            drop(busy);
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread to stop a container: {e}");
        }
    }
}

/// Longest the daemon's exit waits for its runs to end and their teardowns
/// (each bounded by its container's stop grace period) to finish.
const EXIT_WAIT: Duration = Duration::from_secs(60);

impl ContainerRuntime {
    /// The node daemon is stopping: no container starts from now on, and with
    /// [`OnExit::Keep`] the runs dropped from now on leave their containers
    /// running. Call it before the supervisors go.
    pub fn begin_exit(&self) {
        self.life.begin_exit();
    }

    /// After the supervisors went: waits for their runs and teardowns; then,
    /// with [`OnExit::Stop`], stops and removes every container still here
    /// (found ones not adopted, anything under `run/` or known to the OCI
    /// runtime), or with [`OnExit::Keep`] says in the log what it leaves
    /// running and keeps their masquerade rule. Blocking.
    pub fn finish_exit(&self) {
        self.life.begin_exit();
        if !self.life.wait_idle(EXIT_WAIT) {
            tracing::warn!("runs of containers still had not ended after {EXIT_WAIT:?}");
        }
        let mut ids = self.oci.list();
        if let Ok(entries) = fs::read_dir(self.dir.join("run")) {
            ids.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
        ids.extend(self.found.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(id, _)| id));
        ids.sort();
        ids.dedup();
        match self.life.on_exit() {
            OnExit::Keep => {
                if !ids.is_empty() {
                    if let Some(cni) = &self.cni {
                        cni.keep_masquerade();
                    }
                    tracing::info!(
                        "left {} container(s) running: `skiff node` with this data directory adopts those still \
                         assigned to it and removes the rest (`--stop-containers-on-exit` stops them instead)",
                        ids.len()
                    );
                }
            }
            OnExit::Stop => {
                let net = self.net();
                let threads: Vec<_> = ids
                    .iter()
                    .map(|id| {
                        let (net, id, bundle) = (net.clone(), id.clone(), self.dir.join("run").join(id));
                        std::thread::spawn(move || {
                            let grace = Record::grace(&bundle);
                            net.life.teardown(&net.oci, net.cni.as_ref(), &id, &bundle, grace);
                        })
                    })
                    .collect();
                for t in threads {
                    let _ = t.join();
                }
                let left = self.oci.list();
                if left.is_empty() {
                    tracing::info!("stopped and removed every container of this node");
                } else {
                    tracing::warn!("containers {left:?} could not be removed");
                }
            }
        }
    }
}

/// Tears the container down when dropped unless disarmed: the supervisor stops a
/// replica by dropping its future. Counts as busy while it lives.
pub(super) struct Running {
    pub(super) net: Net,
    pub(super) id: String,
    pub(super) bundle: PathBuf,
    /// SIGTERM to SIGKILL.
    pub(super) grace: Duration,
    pub(super) armed: bool,
    /// Whether the OCI runtime was started: a daemon leaving its containers
    /// running ([`OnExit::Keep`]) still removes one that never started.
    pub(super) started: bool,
    /// Set when the guard drops: the run's preparation, a blocking task that
    /// dropping the future cannot stop, checks it under the container's lock,
    /// so that it makes no bundle after this teardown has already run.
    pub(super) dropped: Arc<AtomicBool>,
    pub(super) _busy: Busy,
}

impl Running {
    pub(super) fn new(net: &Net, id: &str, bundle: &Path, grace: Duration) -> Running {
        Running {
            net: net.clone(),
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            grace,
            armed: true,
            started: false,
            dropped: Arc::new(AtomicBool::new(false)),
            _busy: net.life.busy(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.net.addresses.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        if !self.armed {
            return;
        }
        let life = &self.net.life;
        if self.started && life.exiting() && life.on_exit() == OnExit::Keep {
            tracing::info!(container = %self.id, "leaving the container running for the next node daemon");
            return;
        }
        life.teardown_in_background(&self.net, &self.id, &self.bundle, self.grace);
    }
}

/// Stops and deletes container `id` (SIGTERM, up to `grace`, SIGKILL) and
/// removes its network, rootfs mount, bundle and cgroups. Blocking; every step
/// tolerates what is already gone. Callers other than a daemon's start-up hold
/// the container's lock ([`Lifecycle::teardown`]).
pub(super) fn teardown(oci: &Oci, cni: Option<&cni::Cni>, id: &str, bundle: &Path, grace: Duration) {
    oci.stop(id, grace);
    if let Some(cni) = cni {
        let (ports, node_masquerade) = Record::read(bundle).map(|r| (r.ports, r.node_masquerade)).unwrap_or_default();
        cni.del(id, &ports, !node_masquerade);
    }
    let rootfs = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
        && e != nix::errno::Errno::EINVAL
        && e != nix::errno::Errno::ENOENT
    {
        tracing::warn!(container = id, "cannot unmount {}: {e}", rootfs.display());
    }
    if bundle.exists()
        && let Err(e) = fs::remove_dir_all(bundle)
    {
        tracing::warn!(container = id, "cannot remove {}: {e}", bundle.display());
    }
    remove_cgroups(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_on_one_container_waits_for_the_work_before_it() {
        let life = Lifecycle::new(OnExit::Stop);
        let held = life.lock("a");
        let guard = held.lock().expect("lock");
        // Another container's lock is free; the same container's is this one.
        assert!(life.lock("b").try_lock().is_ok());
        assert!(life.lock("a").try_lock().is_err());
        drop(guard);
        assert!(life.lock("a").try_lock().is_ok());
    }

    #[test]
    fn the_exit_waits_for_every_run_and_teardown() {
        let life = Lifecycle::new(OnExit::Stop);
        assert!(life.wait_idle(Duration::ZERO));
        let busy = life.busy();
        assert!(!life.wait_idle(Duration::from_millis(20)));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(busy);
        });
        assert!(life.wait_idle(Duration::from_secs(5)));
        t.join().expect("thread");
    }
}
