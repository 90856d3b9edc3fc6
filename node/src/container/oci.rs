//! The OCI runtime binary (runc or crun) and the few commands skiff uses: `run`
//! in the foreground (its exit status is the container's), `kill`, `delete`,
//! `list` and `state`. Its state lives under the node's data directory (`--root`),
//! so two node daemons on one machine never see each other's containers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An OCI runtime binary with its state directory.
#[derive(Debug, Clone)]
pub struct Oci {
    /// The binary.
    pub bin: PathBuf,
    /// Its `--root` state directory.
    pub root: PathBuf,
    /// What `--version` said first (`runc version 1.1.5+ds1`).
    pub version: String,
}

impl Oci {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        c
    }

    /// The command that runs container `id` from `bundle` in the foreground and
    /// keeps its state after it exits (so its cgroup can be read for OOM kills),
    /// its output going to `stdout` and `stderr`.
    ///
    /// The runtime runs under `/bin/sh`, which writes the exit status to
    /// `exit_file`: a node daemon that restarts while the container runs is no
    /// longer the parent of either, and finds the status there.
    pub fn run_command(
        &self,
        bundle: &Path,
        id: &str,
        exit_file: &Path,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg(r#""$@"; s=$?; echo $s >"$0"; exit $s"#).arg(exit_file);
        c.arg(&self.bin).arg("--root").arg(&self.root).arg("run").arg("--keep").arg("--bundle").arg(bundle).arg(id);
        c.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        c
    }

    fn quiet(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!("{} {} failed: {}", self.bin.display(), args.join(" "), err.trim()))
        }
    }

    /// Sets container `id`'s CFS shares and quota (microseconds per `period`).
    pub fn set_cpu(&self, id: &str, shares: u64, quota: i64, period: u64) -> Result<(), String> {
        let (shares, quota, period) = (shares.to_string(), quota.to_string(), period.to_string());
        self.quiet(&["update", "--cpu-share", &shares, "--cpu-quota", &quota, "--cpu-period", &period, id]).map(|_| ())
    }

    /// Sends `signal` (`TERM`, `KILL`) to every process of container `id`.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), String> {
        self.quiet(&["kill", "--all", id, signal]).map(|_| ())
    }

    /// Forgets container `id`, killing it first if it still runs.
    pub fn delete(&self, id: &str) -> Result<(), String> {
        self.quiet(&["delete", "--force", id]).map(|_| ())
    }

    /// `running`, `stopped`, `created`… or `None` when the runtime does not know `id`.
    pub fn status(&self, id: &str) -> Option<String> {
        self.state(id).map(|(status, _)| status)
    }

    /// The status of container `id` and the host pid of its first process.
    pub fn state(&self, id: &str) -> Option<(String, i32)> {
        let out = self.quiet(&["state", id]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let status = v.get("status").and_then(|s| s.as_str()).map(str::to_owned)?;
        let pid = v.get("pid").and_then(|p| p.as_i64()).and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        Some((status, pid))
    }

    /// Whether the runtime may have state for container `id`: runc and crun keep
    /// a directory per container under `--root`. Read from the disk, not by
    /// running the runtime (a Go binary's start, some 15-20 ms, on every
    /// container start).
    pub fn may_know(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    /// Ids of every container in this state directory.
    pub fn list(&self) -> Vec<String> {
        self.quiet(&["list", "-q"])
            .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Stops container `id`: SIGTERM, up to `grace` for it to end, SIGKILL, then
    /// deletes it and its state. Blocking.
    pub fn stop(&self, id: &str, grace: Duration) {
        if self.status(id).as_deref() == Some("running") {
            let _ = self.kill(id, "TERM");
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.status(id).as_deref() == Some("running") {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.status(id).is_some() {
            let _ = self.kill(id, "KILL");
        }
        // Also when `state` knows nothing: a container whose create failed
        // leaves a state directory without its state file, and every later
        // container of that id is refused as existing until it goes.
        if self.may_know(id) {
            if let Err(e) = self.delete(id) {
                tracing::warn!(container = id, "{e}");
            }
            let dir = self.root.join(id);
            if dir.exists()
                && self.status(id).is_none()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(container = id, "cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Finds a working OCI runtime: `wanted` if given, else crun, else runc on PATH.
/// Each candidate must answer `--version` and really run a container (`probe`);
/// the first that does wins. The error says why none did.
pub fn find(wanted: Option<&Path>, root: &Path, probe: impl Fn(&Oci) -> Result<(), String>) -> Result<Oci, String> {
    let candidates: Vec<PathBuf> = match wanted {
        Some(p) => vec![p.to_path_buf()],
        None => ["crun", "runc"].iter().filter_map(|n| which(n)).collect(),
    };
    if candidates.is_empty() {
        return Err("no OCI runtime found (install runc or crun)".into());
    }
    let mut why = Vec::new();
    for bin in candidates {
        let out = Command::new(&bin).arg("--version").stdin(Stdio::null()).output();
        let version = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string(),
            Ok(o) => {
                why.push(format!("{} --version failed: {}", bin.display(), String::from_utf8_lossy(&o.stderr).trim()));
                continue;
            }
            Err(e) => {
                why.push(format!("cannot run {}: {e}", bin.display()));
                continue;
            }
        };
        let oci = Oci { bin: bin.clone(), root: root.to_path_buf(), version };
        match probe(&oci) {
            Ok(()) => return Ok(oci),
            Err(e) => why.push(format!("{} cannot run a container here: {e}", bin.display())),
        }
    }
    Err(why.join("; "))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
