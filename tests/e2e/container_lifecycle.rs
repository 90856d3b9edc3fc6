//! Containers under `skiff dev` as a user starts it: no arguments, in a
//! directory of its own (data in the relative `./.skiff`), inside a network
//! namespace made for the test (the dev node makes its bridge there, on
//! 7070 and 8080 of its own). A failed start leaves nothing behind and the next
//! try succeeds; a clean stop (SIGTERM) stops and removes every container,
//! even one in a fork loop held at its pids limit; a `skiff node` keeps its
//! containers across a clean restart unless told otherwise.

use crate::containers::{Janitor, build_images, cgroups_of, container_pid, mounts_under, runc_ids};
use serde_json::Value;
use skiff_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `skiff dev` with no arguments, run from its own directory in a network
/// namespace of its own. Fields drop in order: the process, then the janitor
/// cleans up after it, then the namespace, then the directory.
pub(crate) struct DevNs {
    proc: Option<Proc>,
    _janitor: Janitor,
    pub(crate) url: String,
    pub(crate) ns: skiff_tests::NetNs,
    pub(crate) dir: TempDir,
}

impl DevNs {
    pub(crate) fn start(tag: &str) -> DevNs {
        let ns = skiff_tests::NetNs::new(&net_name("dv"));
        let dir = TempDir::new(tag);
        let data = dir.path().join(".skiff");
        let node = data.join("node");
        let janitor = Janitor { state: node.join("containers/state"), data: node };
        let mut dev = DevNs { proc: None, _janitor: janitor, url: String::new(), ns, dir };
        dev.restart();
        dev
    }

    /// Starts `skiff dev` (again), exactly as a user types it, and waits for its node.
    fn restart(&mut self) {
        let netns = format!("--net=/run/netns/{}", self.ns.name);
        let cwd = self.dir.path().to_str().unwrap_or_default().to_string();
        let _ = std::fs::remove_file(self.data().join("server.url"));
        let log = self.dir.path().join("dev.log");
        self.proc = Some(Proc::start_in("skiff dev", &["nsenter", &netns, "--", "env", "-C", &cwd], &["dev"], &log));
        // Not `server_ready`: every test's dev listens on 127.0.0.1:7070 (in
        // its own namespace), so its token and CA are not remembered by address.
        self.url = read_when_ready(&self.data().join("server.url"));
        wait_for(Duration::from_secs(30), "the dev node ready", || {
            let nodes = self.json("nodes");
            if nodes.iter().any(|n| n["state"] == "ready") { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
    }

    /// Its data dir, as the test sees it (absolute).
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join(".skiff")
    }

    fn state(&self) -> PathBuf {
        self.data().join("node/containers/state")
    }

    /// SIGTERM, as `kill` or a service manager sends it; waits for the exit.
    fn stop(&mut self) {
        let mut p = self.proc.take().expect("skiff dev runs");
        let pid = p.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        wait_for(Duration::from_secs(60), "skiff dev to exit after SIGTERM", || {
            if p.alive() { Err(p.log_tail(5)) } else { Ok(()) }
        });
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default()
    }

    /// `skiff ARGS` from its directory, in its namespace.
    pub(crate) fn cli_in(&self, args: &[&str]) -> Cli {
        let netns = format!("--net=/run/netns/{}", self.ns.name);
        let out = Command::new("nsenter")
            .args([netns.as_str(), "--"])
            .arg(skiff_bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("SKIFF_SERVER", &self.url)
            .env("SKIFF_TOKEN", read_when_ready(&self.data().join("admin-token")))
            .env("SKIFF_CA_FILE", self.data().join("ca.crt"))
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run skiff");
        Cli {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_in(args);
        assert!(out.ok, "`skiff {}` failed:\nstdout: {}\nstderr: {}", args.join(" "), out.stdout, out.stderr);
        out.stdout
    }

    pub(crate) fn json(&self, kind: &str) -> Vec<Value> {
        let out = self.cli(&["get", kind, "-o", "json"]);
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(v)) => v,
            other => panic!("`skiff get {kind} -o json` did not print a JSON array: {other:?}\n{out}"),
        }
    }

    fn replicas(&self, deployment: &str) -> Vec<Value> {
        self.json("replicas").into_iter().filter(|r| r["deployment"] == deployment).collect()
    }

    fn wait_running(&self, deployment: &str) -> String {
        wait_for(Duration::from_secs(60), &format!("{deployment} running"), || {
            let r = self.replicas(deployment);
            match r.iter().find(|r| r["state"] == "running").and_then(|r| r["id"].as_str()) {
                Some(id) if container_pid(&self.state(), id).is_some() => Ok(id.to_string()),
                _ => Err(format!("{r:?}")),
            }
        })
    }

    fn logs(&self, deployment: &str) -> String {
        let out = self.cli_in(&["logs", deployment, "--tail", "1000"]);
        out.stdout + &out.stderr
    }

    pub(crate) fn import_busybox(&self) {
        let (oci, _) = build_images(self.dir.path());
        self.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    }

    /// Addresses host-local holds for containers.
    fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.data().join("node/containers/cni/skiff"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    }

    /// What containers leave on the machine: runc's state entries, network
    /// namespaces (`ip netns list`), mounts under the data dir, cgroups of
    /// `ids`, processes of `pids` and address leases. Empty: nothing.
    pub(crate) fn leftovers(&self, ids: &[String], pids: &[u64]) -> Vec<String> {
        let mut left = Vec::new();
        let state: Vec<String> = std::fs::read_dir(self.state())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !state.is_empty() {
            left.push(format!("runc state {state:?}"));
        }
        let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        let netns: Vec<String> = String::from_utf8_lossy(&netns.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| ids.iter().any(|id| *n == format!("skiff-{id}")))
            .map(str::to_owned)
            .collect();
        if !netns.is_empty() {
            left.push(format!("netns {netns:?}"));
        }
        let mounts = mounts_under(&self.data());
        if !mounts.is_empty() {
            left.push(format!("mounts {mounts:?}"));
        }
        let cgroups: Vec<PathBuf> = ids.iter().flat_map(|id| cgroups_of(id)).collect();
        if !cgroups.is_empty() {
            left.push(format!("cgroups {cgroups:?}"));
        }
        let alive: Vec<&u64> = pids.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()).collect();
        if !alive.is_empty() {
            left.push(format!("processes {alive:?}"));
        }
        let leases = self.leases();
        if !leases.is_empty() {
            left.push(format!("leases {leases:?}"));
        }
        left
    }
}

pub(crate) fn require() -> bool {
    if !require_root("containers under skiff dev (runc, overlayfs, network namespaces)") {
        return false;
    }
    let v = Command::new("runc").arg("--version").output();
    assert!(v.is_ok_and(|o| o.status.success()), "the container tests need runc (`make deps` installs it)");
    true
}

/// Item 2 of issue 16: under `skiff dev`'s default relative data dir a
/// container's volume was a relative bind source, which runc resolved against
/// the bundle (`stat …/containers/run/ID/.skiff/node/volumes/…: no such file`).
#[test]
fn a_container_volume_works_under_skiff_dev_s_default_data_dir() {
    if !require() {
        return;
    }
    let dev = DevNs::start("dev-volume");
    dev.import_busybox();
    let script = "echo written >> /data/lines; cat /data/lines; exec sleep 3600";
    dev.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "vol",
        "--volume",
        "vdata:/data",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        script,
    ]);
    wait_for(Duration::from_secs(60), "the container to write into its volume", || {
        let logs = dev.logs("vol");
        if logs.contains("stdout written") { Ok(()) } else { Err(logs) }
    });
    let on_disk = std::fs::read_to_string(dev.data().join("node/volumes/vdata/lines")).unwrap_or_default();
    assert!(on_disk.contains("written"), "the volume on the node's disk: {on_disk:?}");
    // No relative path in what the daemons say either.
    let log = dev.log();
    let abs = dev.data().join("node");
    assert!(log.contains(&format!("data_dir={}", abs.display())), "the node's data dir is absolute in its log:\n{log}");
    assert!(!log.contains("data_dir=./") && !log.contains("data_dir=.skiff"), "{log}");
}

/// Item 3 of issue 16: a start that fails (here: the command is not in the
/// image yet) must leave nothing behind, so that every retry fails for its own
/// reason, not with `container with given ID already exists`, and the first
/// try after the cause is gone succeeds; no address stays leased.
#[test]
fn a_failed_container_start_leaves_nothing_and_a_later_try_succeeds() {
    if !require() {
        return;
    }
    let dev = DevNs::start("dev-failstart");
    dev.import_busybox();
    dev.cli(&["deploy", "--image", "busybox", "--name", "once", "--volume", "app:/app", "--arg", "/app/run.sh"]);
    // Three failed tries (backoff 250 ms, 500 ms, 1 s); while they go on, no
    // more than the one try in flight holds an address.
    let id = wait_for(Duration::from_secs(60), "three failed starts", || {
        let leases = dev.leases();
        assert!(leases.len() <= 1, "failed tries keep their addresses: {leases:?}");
        let r = dev.replicas("once");
        match r.first() {
            Some(r) if r["restarts"].as_u64().unwrap_or(0) >= 3 => Ok(r["id"].as_str().unwrap_or("").to_string()),
            _ => Err(format!("{r:?}")),
        }
    });
    let logs = dev.logs("once");
    assert!(!logs.contains("already exists"), "a failed start poisoned the next:\n{logs}");
    let failures = logs.lines().filter(|l| l.contains("/app/run.sh") && l.contains("no such file")).count();
    assert!(failures >= 2, "each try fails for its own reason:\n{logs}");

    // The cause goes away: the next try runs.
    let script = dev.data().join("node/volumes/app/run.sh");
    std::fs::write(&script, "#!/bin/sh\necho started\nexec sleep 3600\n").expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    wait_for(Duration::from_secs(60), "the next try to start", || {
        let logs = dev.logs("once");
        if logs.contains("stdout started") { Ok(()) } else { Err(logs) }
    });
    let running = dev.wait_running("once");
    assert_eq!(running, id);
    // Exactly what one running container holds.
    assert_eq!(runc_ids(&dev.state()), vec![id.clone()]);
    assert_eq!(dev.leases().len(), 1, "{:?}", dev.leases());
    assert_eq!(mounts_under(&dev.data()).len(), 1, "{:?}", mounts_under(&dev.data()));

    dev.cli(&["delete", "once"]);
    wait_for(Duration::from_secs(30), "everything the container held to go", || {
        let left = dev.leftovers(std::slice::from_ref(&id), &[]);
        if left.is_empty() { Ok(()) } else { Err(left.join("; ")) }
    });
}

/// Item 6 of issue 16: SIGTERM to `skiff dev` stops and removes its containers
/// (processes, namespaces, mounts, cgroups, addresses), a fork loop held at its
/// pids limit included; started again it runs them afresh, and deleting them
/// leaves nothing either.
#[test]
fn stopping_skiff_dev_removes_its_containers() {
    if !require() {
        return;
    }
    let mut dev = DevNs::start("dev-stop");
    dev.import_busybox();
    dev.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "ticker",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "while true; do echo tick; sleep 0.2; done",
    ]);
    dev.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "forkloop",
        "--memory",
        "256Mi",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "while true; do sleep 600 & done",
    ]);
    let ticker = dev.wait_running("ticker");
    let forkloop = dev.wait_running("forkloop");
    wait_for(Duration::from_secs(60), "the fork loop to reach its pids limit", || {
        let logs = dev.logs("forkloop");
        if logs.contains("can't fork") {
            Ok(())
        } else {
            Err(logs.lines().rev().take(3).collect::<Vec<_>>().join("\n"))
        }
    });
    let ids = vec![ticker.clone(), forkloop.clone()];
    let pids: Vec<u64> = ids.iter().filter_map(|id| container_pid(&dev.state(), id)).collect();
    assert_eq!(pids.len(), 2);

    dev.stop();
    let left = dev.leftovers(&ids, &pids);
    assert!(left.is_empty(), "skiff dev left behind: {}\n{}", left.join("; "), dev.log());

    // Started again, it runs its deployments afresh; deleted, they leave nothing.
    dev.restart();
    let ticker2 = dev.wait_running("ticker");
    let forkloop2 = dev.wait_running("forkloop");
    let ids2 = vec![ticker2, forkloop2];
    let pids2: Vec<u64> = ids2.iter().filter_map(|id| container_pid(&dev.state(), id)).collect();
    dev.cli(&["delete", "ticker"]);
    dev.cli(&["delete", "forkloop"]);
    wait_for(Duration::from_secs(60), "the deleted containers to leave nothing", || {
        let left = dev.leftovers(&ids2, &pids2);
        if left.is_empty() { Ok(()) } else { Err(left.join("; ")) }
    });
    dev.stop();
}
