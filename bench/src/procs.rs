//! Child processes killed on drop, temp dirs removed on drop, and what /proc says
//! about a process and the machine.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process, SIGKILLed and reaped when dropped.
pub struct Proc {
    child: Child,
    log: PathBuf,
    killed: bool,
}

impl Proc {
    /// Starts `bin args`, with stdout and stderr into `log`.
    pub fn spawn(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        // SAFETY: between fork and exec the child only calls prctl(2), which is
        // async-signal-safe. It makes the child die with the bench, even when the
        // bench is killed and cannot run its Drop guards.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .args(args)
            .env("RUST_LOG", std::env::var("SKIFF_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Proc { child, log: log.to_path_buf(), killed: false })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        let path = format!("/proc/{}/stat", self.pid());
        let state = std::fs::read_to_string(&path).ok().and_then(|s| {
            let after = s.rsplit_once(')')?.1.trim_start().to_string();
            after.chars().next()
        });
        if matches!(state, None | Some('Z') | Some('X')) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("process {} exited; its log {} ends: {}", self.pid(), self.log.display(), tail.join(" | "));
        }
        Ok(())
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> anyhow::Result<TempDir> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("skiff-bench-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SKIFF_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// User plus system CPU time of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}

/// Peak resident set (VmHWM) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Resident memory of process `pid` now, in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A kB field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    kb_field(&status, key).map(|kb| kb * 1024).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// Cores, memory and CPU model, from /proc.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    json!({
        "cores": cores,
        "memory_bytes": kb_field(&meminfo, "MemTotal:").map(|kb| kb * 1024),
        "cpu": model,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        // The machine may be shared: what else ran when the bench started.
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

/// The commit benchmarked, with `-dirty` when the tree has changes.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git").args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

/// Raises the soft open-files limit to the hard one (thousands of sockets).
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// One etcd member (Debian's `etcd`) on free loopback ports, its data in a temp
/// dir; killed and removed on drop. Started with the limits skiff needs.
pub struct Etcd {
    _proc: Proc,
    _dir: TempDir,
}

impl Etcd {
    /// Starts it and waits until it answers; returns it with its `etcd://` URL.
    pub async fn start() -> anyhow::Result<(Etcd, String)> {
        let dir = TempDir::new("etcd")?;
        let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let (client, peer) = (format!("http://127.0.0.1:{}", free()?), format!("http://127.0.0.1:{}", free()?));
        let data = dir.path().join("data").display().to_string();
        let args = [
            "--name",
            "bench",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("bench={peer}"),
            "--max-txn-ops",
            "65536",
            "--max-request-bytes",
            "33554432",
            "--quota-backend-bytes",
            "8589934592",
        ];
        let proc = Proc::spawn(Path::new("etcd"), &args, &dir.path().join("etcd.log"))
            .context("starting etcd (`make deps` installs Debian's etcd-server)")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let health = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &client, "endpoint", "health"])
                .output()
                .context("running etcdctl (Debian's etcd-client)")?;
            if health.status.success() {
                break;
            }
            proc.check_alive()?;
            if std::time::Instant::now() > deadline {
                bail!("etcd at {client} not healthy within 30 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let url = format!("etcd://{}", client.trim_start_matches("http://"));
        Ok((Etcd { _proc: proc, _dir: dir }, url))
    }
}
