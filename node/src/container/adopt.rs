//! Adoption: what a run records in its bundle, and how a node daemon started
//! after one that was killed finds the containers it left running, keeps those
//! it can adopt, removes the rest ([`ContainerRuntime::recover`]), takes over a
//! found container at its replica's first run ([`adopt`]) and releases those no
//! assignment wants ([`ContainerRuntime::release_unwanted`]).

use super::cgroup::UsageReader;
use super::run::{Net, finish, pump};
use super::teardown::{Running, teardown};
use super::{ContainerRuntime, EXIT_FILE, Plan, RECORD_FILE};
use super::{Outcome, RunSpec};
use crate::logs::{LogSink, Stream};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often an adopted container (not our child) is checked for its end.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// What a run records in its bundle (`skiff.json`) so that a restarted node
/// daemon can adopt the container, or tear down its network, without its spec.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Record {
    /// Its address on the bridge (`10.89.0.2/16`); `127.0.0.1` on the host network.
    pub(super) address: Option<String>,
    /// Its published ports (portmap's DEL needs them).
    pub(super) ports: Vec<skiff_api::PortMapping>,
    /// Its stop grace period, milliseconds.
    pub(super) stop_grace_ms: u64,
    /// Whether it sees secret files: those live on tmpfs, which a restarted
    /// daemon clears before it starts, so such a container is not adopted (it
    /// would see its secrets vanish) but started afresh.
    #[serde(default)]
    pub(super) secret_files: bool,
    /// Whether its outbound traffic goes through the node's masquerade rule
    /// (`cni::Masquerade`); a container of an older daemon has the bridge
    /// plugin's own rules, which its teardown removes.
    #[serde(default)]
    pub(super) node_masquerade: bool,
}

impl Record {
    pub(super) fn read(bundle: &Path) -> Option<Record> {
        serde_json::from_slice(&fs::read(bundle.join(RECORD_FILE)).ok()?).ok()
    }

    pub(super) fn write(&self, bundle: &Path) -> Result<(), String> {
        let json = serde_json::to_vec(self).map_err(|e| format!("cannot record the container: {e}"))?;
        fs::write(bundle.join(RECORD_FILE), json).map_err(|e| format!("cannot record the container: {e}"))
    }

    /// The stop grace period recorded in `bundle`, else the default.
    pub(super) fn grace(bundle: &Path) -> Duration {
        Record::read(bundle)
            .map_or(skiff_api::GracePeriod::DEFAULT.duration(), |r| Duration::from_millis(r.stop_grace_ms))
    }

    pub(super) fn ip(&self) -> Option<std::net::IpAddr> {
        self.address.as_deref()?.split('/').next()?.parse().ok()
    }
}

/// A container a previous node daemon started that still runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Found {
    /// Host pid of its first process.
    pub(super) pid: i32,
    /// That process's start time (clock ticks after boot), so a reused pid is
    /// not taken for it.
    pub(super) started: u64,
}

impl ContainerRuntime {
    /// Keeps the containers a previous daemon left running (with what adoption
    /// needs) for adoption; stops and removes every other container, mount,
    /// bundle and cgroup it left, and half-unpacked layers.
    pub(super) fn recover(&self) {
        let mut ids: Vec<String> = self.oci.list();
        if let Ok(entries) = fs::read_dir(self.dir.join("run")) {
            ids.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
        ids.sort();
        ids.dedup();
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let bundle = self.dir.join("run").join(&id);
            if let Some(f) = self.adoptable(&id, &bundle) {
                tracing::info!(container = %id, pid = f.pid, "found a running container left by an earlier node daemon; adopting it if it is still assigned here");
                found.insert(id, f);
                continue;
            }
            tracing::info!(container = %id, "removing a container left by an earlier node daemon");
            teardown(&self.oci, self.cni.as_ref(), &id, &bundle, Duration::ZERO);
        }
        // The containers kept keep their outbound traffic (a daemon that
        // stopped cleanly took its rule along).
        if !found.is_empty()
            && let Some(cni) = &self.cni
            && let Err(e) = cni.masquerade()
        {
            tracing::warn!("{e}");
        }
        if let Ok(entries) = fs::read_dir(self.dir.join("layers")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(".tmp") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// A container that runs, from a bundle that has what adoption needs (its
    /// record and output FIFOs; a bundle from an older daemon has not).
    fn adoptable(&self, id: &str, bundle: &Path) -> Option<Found> {
        let (status, pid) = self.oci.state(id)?;
        let complete = [RECORD_FILE, "stdout", "stderr", "config.json"].iter().all(|f| bundle.join(f).exists());
        if status != "running" || pid <= 0 || !complete {
            return None;
        }
        if Record::read(bundle).is_none_or(|r| r.secret_files) {
            tracing::info!(container = %id, "not adopting a container with secret files (they went with the old daemon)");
            return None;
        }
        Some(Found { pid, started: process_start(pid)? })
    }

    /// Stops and removes, in the background, the found containers that `wanted`
    /// says no assignment wants. The agent calls it with every desired set.
    pub fn release_unwanted(&self, wanted: impl Fn(&str) -> bool) {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        let unwanted: Vec<String> = found.keys().filter(|id| !wanted(id)).cloned().collect();
        for id in unwanted {
            found.remove(&id);
            tracing::info!(container = %id, "stopping a container left by an earlier node daemon: no longer assigned here");
            let bundle = self.dir.join("run").join(&id);
            self.life.teardown_in_background(&self.net(), &id, &bundle, Record::grace(&bundle));
        }
    }
}

/// Takes over a container an earlier node daemon started (see the module doc):
/// its address, its output from the FIFOs, its end from the exit file.
pub(super) async fn adopt(
    net: Net,
    bundle: PathBuf,
    plan: Arc<Plan>,
    spec: RunSpec,
    log: Arc<LogSink>,
    found: Found,
) -> Outcome {
    let id = spec.replica.clone();
    let record = Record::read(&bundle).unwrap_or_default();
    let grace = Duration::from_millis(record.stop_grace_ms);
    let mut guard = Running::new(&net, &id, &bundle, grace);
    guard.started = true;
    if let Some(ip) = record.ip() {
        let a = super::Address { ip, deployment: spec.deployment.clone() };
        net.addresses.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), a);
    }
    log.system(&format!("adopted the running container (pid {}) after the node daemon restarted", found.pid));
    let mut pumps = Vec::new();
    for (name, stream) in [("stdout", Stream::Stdout), ("stderr", Stream::Stderr)] {
        match tokio::net::unix::pipe::OpenOptions::new().open_receiver(bundle.join(name)) {
            Ok(rx) => pumps.push(tokio::spawn(pump(rx, log.clone(), stream))),
            Err(e) => log.system(&format!("cannot resume capturing the container's {name}: {e}")),
        }
    }
    // A container adopted in its start keeps no boost (nothing here watches
    // for its readiness to end it).
    if super::run::boosted(&plan, &spec) {
        super::run::end_boost(&net.oci, &id, &plan, &log).await;
    }
    let exit_file = bundle.join(EXIT_FILE);
    let mut usage = UsageReader::new(&id, &spec);
    let mut gone_since: Option<std::time::Instant> = None;
    let mut ticks = 0u32;
    let code = loop {
        tokio::time::sleep(ADOPTED_POLL).await;
        ticks += 1;
        if ticks.is_multiple_of(4) {
            usage.read();
        }
        if let Some(code) = fs::read_to_string(&exit_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            break Ok(code);
        }
        // The runtime's shell writes the status just after the container ends;
        // if it never does (it was killed too), the status is unknown.
        if process_start(found.pid) != Some(found.started) {
            let since = *gone_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break Err("the adopted container ended and its exit status is unknown".to_string());
            }
        }
    };
    finish(guard, usage, pumps, code, &plan).await
}

/// The start time of process `pid` (clock ticks after boot), while it lives and
/// is not a zombie.
fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold anything: the fields start after its last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    // Field 22 of proc(5); `fields` began at field 3.
    fields.nth(18)?.parse().ok()
}
