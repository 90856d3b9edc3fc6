//! One run of a container: its bundle (overlayfs rootfs and `config.json`),
//! its network, the OCI runtime in the foreground with its output into the
//! replica's log, and what follows its end.

use super::adopt::Record;
use super::cgroup::{CGROUP_PARENT, UsageReader, oom_kills};
use super::oci::Oci;
use super::teardown::{Lifecycle, Running, teardown};
use super::{Address, Addresses, EXIT_FILE, NETWORK_GATE, Plan, SECRETS_TMPFS, bundle, cni};
use super::{Outcome, RunSpec};
use crate::logs::{LogSink, Stream};
use skiff_api::quantity::format_memory;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How often cgroup usage is read while a container runs.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The OCI runtime and the network setup, as a run needs them.
#[derive(Clone)]
pub(super) struct Net {
    pub(super) oci: Oci,
    pub(super) cni: Option<cni::Cni>,
    pub(super) addresses: Addresses,
    pub(super) life: Lifecycle,
}

pub(super) async fn run_container(
    net: Net,
    bundle: PathBuf,
    plan: Arc<Plan>,
    spec: RunSpec,
    log: Arc<LogSink>,
) -> Outcome {
    let id = spec.replica.clone();
    let oci = net.oci.clone();
    if net.life.exiting() {
        return Outcome::Failed("the node daemon is stopping".into());
    }
    let mut guard = Running::new(&net, &id, &bundle, plan.stop_grace);
    let host_network = plan.host_network;
    let prepared = {
        let (net, id, bundle, plan, spec) = (net.clone(), id.clone(), bundle.clone(), plan.clone(), spec.clone());
        let dropped = guard.dropped.clone();
        tokio::task::spawn_blocking(move || {
            // Until the bundle and namespace are made: a teardown of this
            // container (the previous run's, or this one's if it is dropped
            // meanwhile) runs before or after, never amid.
            let lock = net.life.lock(&id);
            let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
            if net.life.exiting() {
                return Err("the node daemon is stopping".to_string());
            }
            // Stopped while this waited for the lock: its teardown has run (it
            // sets the flag before it takes the lock), so make nothing it would
            // not see. Seen as a bundle left after a delete in make test.
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("stopped before it started".to_string());
            }
            // What an earlier run left (a crash of this daemon) goes first.
            if bundle.exists() || net.oci.may_know(&id) {
                teardown(&net.oci, net.cni.as_ref(), &id, &bundle, Duration::ZERO);
            }
            fs::create_dir_all(&bundle).map_err(|e| format!("cannot create {}: {e}", bundle.display()))?;
            let published = plan.ports.iter().any(|p| p.host_port.is_some());
            if net.cni.is_none() && !plan.host_network && published {
                return Err("cannot publish host ports: this node runs containers with loopback networking \
                            only (no CNI plugins); use network: host or a node with containernetworking-plugins"
                    .to_string());
            }
            let record = Record {
                address: plan.host_network.then(|| "127.0.0.1".to_string()),
                ports: plan.ports.clone(),
                stop_grace_ms: plan.stop_grace.as_millis() as u64,
                secret_files: spec.preopens.iter().any(|p| p.host.starts_with(SECRETS_TMPFS)),
                node_masquerade: true,
            };
            // Written before anything else can fail: teardown reads the ports from it.
            record.write(&bundle)?;
            // A bridged container's namespace is made now and connected (a
            // plugin run of some 10 ms) while the runtime creates the
            // container, which waits for it at the network gate.
            let (netns, gate) = match (&net.cni, plan.host_network) {
                (_, true) => (bundle::NetNs::Host, None),
                (Some(cni), false) => {
                    cni.create(&id, &plan.ports)?;
                    (bundle::NetNs::Join(cni::Cni::netns(&id)), Some(network_gate(&bundle)?))
                }
                (None, false) => (bundle::NetNs::New, None),
            };
            let gate_path = gate.as_ref().map(|_| bundle.join(NETWORK_GATE));
            prepare_bundle(&bundle, &plan, &spec, netns, gate_path)?;
            Ok((record, gate))
        })
        .await
        .unwrap_or_else(|e| Err(format!("bundle task failed: {e}")))
    };
    let (mut record, gate) = match prepared {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("cannot prepare the container: {e}")),
    };
    let exit_file = bundle.join(EXIT_FILE);
    let (out, err) = match (output_fifo(&bundle, "stdout"), output_fifo(&bundle, "stderr")) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return Outcome::Failed(format!("cannot prepare the container's output: {e}")),
    };
    let pumps = vec![
        tokio::spawn(pump(out.1, log.clone(), Stream::Stdout)),
        tokio::spawn(pump(err.1, log.clone(), Stream::Stderr)),
    ];
    // The command holds the only write ends outside the container: dropped with
    // it, so the pumps see the end when the runtime exits.
    let spawned = oci.run_command(&bundle, &id, &exit_file, out.0, err.0).spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start {}: {e}", oci.bin.display())),
    };
    guard.started = true;
    // Held until the runtime exits: the gate's line stays in the FIFO until
    // its hook has read it.
    let _gate = match (gate, net.cni.clone()) {
        (Some(mut gate), Some(cni)) => {
            let (id, ports, life) = (id.clone(), plan.ports.clone(), net.life.clone());
            // Under the container's lock: a teardown waits for the address
            // this takes, and gives it back.
            let connected = tokio::task::spawn_blocking(move || {
                let lock = life.lock(&id);
                let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                cni.connect(&id, &ports)
            })
            .await
            .unwrap_or_else(|e| Err(format!("network task failed: {e}")));
            let opened = connected.and_then(|address| {
                record.address = Some(address);
                // Recorded before the container can run: adoption reads it,
                // and the ingress names its calls by it from the first one.
                record.write(&bundle)?;
                if let Some(ip) = record.ip() {
                    let a = Address { ip, deployment: spec.deployment.clone() };
                    net.addresses.lock().unwrap_or_else(|e| e.into_inner()).insert(guard.id.clone(), a);
                }
                gate.write_all(b"ok\n").map_err(|e| format!("cannot open the network gate: {e}"))
            });
            if let Err(e) = opened {
                let _ = gate.write_all(b"no\n");
                // The runtime gives up at the gate; then the teardown.
                let _ = child.wait().await;
                return Outcome::Failed(format!("cannot prepare the container: {e}"));
            }
            Some(gate)
        }
        _ => None,
    };
    if let Some(address) = &record.address {
        if host_network {
            log.system("network: the node's (network: host)");
        } else {
            log.system(&format!("network: eth0 {address}"));
        }
        if let Some(ip) = record.ip() {
            let a = Address { ip, deployment: spec.deployment.clone() };
            net.addresses.lock().unwrap_or_else(|e| e.into_inner()).insert(guard.id.clone(), a);
        }
    }

    // Cgroup usage into the replica's counters while it runs; the startup
    // CPU given back once it is ready (checked as often as usage is read).
    let mut usage = UsageReader::new(&id, &spec);
    let mut boost = boosted(&plan, &spec).then(std::time::Instant::now);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = tokio::time::sleep(STATS_EVERY) => usage.read(),
        }
        if let Some(since) = boost
            && (spec.status.is(skiff_api::ReplicaState::Ready) || since.elapsed() >= bundle::STARTUP_BOOST_MAX)
        {
            boost = None;
            end_boost(&oci, &id, &plan, &log).await;
        }
    };
    let code = match status {
        Ok(s) => Ok(s.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0))),
        Err(e) => Err(format!("cannot wait for {}: {e}", oci.bin.display())),
    };
    finish(guard, usage, pumps, code, &plan).await
}

/// Whether a container of `plan` running `spec` starts with more CPU than it
/// asks for: one that will report ready (an HTTP port or a readiness probe)
/// and asks for less than a core.
pub(super) fn boosted(plan: &Plan, spec: &RunSpec) -> bool {
    let serves = spec.http_port.is_some() || spec.probes.readiness.is_some();
    serves && plan.cpu_millis > 0 && plan.cpu_millis < bundle::STARTUP_CPU_MILLIS
}

/// Lowers container `id`'s CPU quota from the startup boost to its request.
pub(super) async fn end_boost(oci: &Oci, id: &str, plan: &Plan, log: &LogSink) {
    let (oci, id) = (oci.clone(), id.to_string());
    let (shares, quota) = (bundle::cpu_shares(plan.cpu_millis), bundle::cpu_quota(plan.cpu_millis));
    let set = tokio::task::spawn_blocking(move || oci.set_cpu(&id, shares, quota, bundle::CPU_PERIOD)).await;
    if let Err(e) = set.unwrap_or_else(|e| Err(e.to_string())) {
        log.system(&format!("cannot lower the container's CPU to its request after its start: {e}"));
    }
}

/// After a container's end: OOM kills read, everything torn down, the output
/// drained, the outcome told.
pub(super) async fn finish(
    mut guard: Running,
    usage: UsageReader,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    code: Result<i32, String>,
    plan: &Plan,
) -> Outcome {
    let id = guard.id.clone();
    usage.release();
    guard.net.addresses.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    let ooms = oom_kills(&id);
    guard.armed = false;
    {
        let (net, id, bundle) = (guard.net.clone(), id.clone(), guard.bundle.clone());
        // Busy until done, even if this future is dropped meanwhile.
        let busy = net.life.busy();
        let _ = tokio::task::spawn_blocking(move || {
            net.life.teardown(&net.oci, net.cni.as_ref(), &id, &bundle, Duration::ZERO);
            drop(busy);
        })
        .await;
    }
    // The container is gone, so its pipes are closed: the pumps end.
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    drop(guard);
    let code = match code {
        Ok(c) => c,
        Err(e) if ooms == 0 => return Outcome::Failed(e),
        Err(_) => 137,
    };
    if ooms > 0 {
        return Outcome::Failed(format!(
            "OOMKilled: memory limit of {} exceeded (exit status {code})",
            format_memory(plan.memory)
        ));
    }
    Outcome::Exited(code)
}

fn prepare_bundle(
    bundle: &Path,
    plan: &Plan,
    spec: &RunSpec,
    netns: bundle::NetNs,
    network_gate: Option<PathBuf>,
) -> Result<(), String> {
    let ctx = |what: &str, p: &Path, e: &dyn std::fmt::Display| format!("cannot {what} {}: {e}", p.display());
    let rootfs = bundle.join("rootfs");
    let upper = bundle.join("upper");
    let work = bundle.join("work");
    let empty = bundle.join("empty");
    for d in [&rootfs, &upper, &work, &empty] {
        fs::create_dir_all(d).map_err(|e| ctx("create", d, &e))?;
    }
    let mut lower: Vec<&Path> = plan.layers.iter().rev().map(PathBuf::as_path).collect();
    if lower.is_empty() {
        lower.push(&empty);
    }
    for p in lower.iter().chain([&upper.as_path(), &work.as_path()]) {
        let s = p.to_string_lossy();
        if s.contains([',', ':']) {
            return Err(format!("overlayfs cannot use {s}: the node's data directory must not contain ',' or ':'"));
        }
    }
    let lowerdir: Vec<String> = lower.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let opts = format!("lowerdir={},upperdir={},workdir={}", lowerdir.join(":"), upper.display(), work.display());
    nix::mount::mount(Some("overlay"), &rootfs, Some("overlay"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
        .map_err(|e| ctx("mount the overlay rootfs at", &rootfs, &e))?;

    let mut process = plan.process.clone();
    // The env in the spec (with secrets) overrides the image's.
    for (k, v) in &spec.env {
        process.env.retain(|kv| kv.split_once('=').map_or(kv.as_str(), |(key, _)| key) != k);
        process.env.push(format!("{k}={v}"));
    }
    let b = bundle::BundleSpec {
        hostname: spec.replica.clone(),
        process,
        cgroups_path: format!("/{CGROUP_PARENT}/{}", spec.replica),
        memory: plan.memory,
        cpu_millis: plan.cpu_millis,
        startup_boost: boosted(plan, spec),
        netns,
        binds: spec.preopens.iter().map(|p| (p.host.clone(), p.guest.clone(), p.writable)).collect(),
        network_gate,
        // Set by the scheduler after the spec's own env (#20).
        isolated: spec.env.get(skiff_api::namespace::ISOLATION_ENV).is_some_and(|v| v == "namespace"),
    };
    let config = bundle::spec(&b)?;
    let json = serde_json::to_vec_pretty(&config).map_err(|e| format!("cannot write config.json: {e}"))?;
    let path = bundle.join("config.json");
    fs::write(&path, json).map_err(|e| ctx("write", &path, &e))
}

pub(super) async fn pump(mut from: impl tokio::io::AsyncRead + Unpin, log: Arc<LogSink>, stream: Stream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.write(stream, &buf[..n]),
        }
    }
}

/// Makes the FIFO `bundle/name` for the container's output; returns the end the
/// runtime writes to (opened read-write, so the runtime itself keeps it open
/// for reading and a write never fails while no daemon reads) and ours.
fn output_fifo(bundle: &Path, name: &str) -> Result<(fs::File, tokio::net::unix::pipe::Receiver), String> {
    let path = bundle.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
    // The write end first: a FIFO read end opened with no writer reads as ended.
    let writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok((writer, reader))
}

/// Makes the network gate FIFO in `bundle` and opens it read-write: the open
/// waits for no reader, and a line written stays in the pipe while it is open.
fn network_gate(bundle: &Path) -> Result<fs::File, String> {
    let path = bundle.join(NETWORK_GATE);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}
