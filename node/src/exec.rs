//! `skiff exec` and `skiff port-forward` on the node: the node API's relay
//! routes (`POST /v1/replicas/{id}/exec`, `.../port-forward`) land here once the
//! scheduler's grant checks out (`skiff_api::relay`).
//!
//! - exec runs `runc exec` in the replica's container. Without a terminal its
//!   stdin, stdout and stderr are pipes carried as frames; with one (`-t`) runc
//!   runs in the foreground on a pty the node opens (runc makes the
//!   container's own and copies between them), whose window size the node sets
//!   from the client's. The command's exit code is the last frame.
//!   A client that goes away takes its command with it (SIGKILL, by the pid
//!   runc wrote to `--pid-file`).
//! - port-forward connects to 127.0.0.1:PORT inside the container's network
//!   namespace (as kubectl reaches a pod's localhost; a server bound to the
//!   bridge address only is reached at that address, which the runtime records)
//!   before it agrees to the upgrade, so a closed port is a one-line refusal; an HTTP component's replica is served in-process as the
//!   ingress serves it, one request after another on the relayed connection.

use crate::container::ContainerRuntime;
use crate::http::{HttpReplica, HttpRuntime};
use skiff_api::Runtime;
use skiff_api::relay::{ExecRequest, Frame};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long output is still read after the command exited (a process it left
/// in the background may hold its stdout open for ever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Under the data dir: a directory per exec for runc's pid file.
const SCRATCH_DIR: &str = "exec";
/// How long cancelling a command waits for runc's pid file, then for runc.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How long a connection to a container's port may take.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A refusal: an HTTP status and one line.
#[derive(Debug)]
pub struct Refusal {
    /// The status to answer.
    pub status: u16,
    /// Why.
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal { status, message: message.into() }
}

/// Replica id → its deployment and runtime, while the node runs it.
pub type Lookup = Box<dyn Fn(&str) -> Option<(String, Runtime)> + Send + Sync>;

/// What the relay routes need of the node.
pub struct Relay {
    /// The node's name (grants name it).
    pub node: String,
    /// Where the node's credential is (`agent::CREDENTIAL_FILE`).
    pub data_dir: PathBuf,
    /// The container runtime, when the node runs containers.
    pub containers: Option<Arc<ContainerRuntime>>,
    /// The HTTP components' runtime.
    pub http: Option<Arc<HttpRuntime>>,
    /// Replica id → its deployment and runtime, while the node runs it.
    pub lookup: Lookup,
    /// Grant nonces taken, with their time, so none is taken twice.
    nonces: Mutex<HashMap<String, u64>>,
}

/// A command started by [`Relay::start_exec`], to be joined to the client's
/// connection with [`Exec::run`]. Dropped before its command ended (the client
/// never completed the upgrade, or left), it kills the command ([`cancel`]).
pub struct Exec {
    /// `None` once the command ended or its cancelling was handed on.
    child: Option<tokio::process::Child>,
    io: Option<ExecIo>,
    scratch: Scratch,
}

impl Drop for Exec {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else { return };
        let scratch = std::mem::replace(&mut self.scratch, Scratch::none());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(cancel(child, scratch));
            }
            // No runtime left (the node is stopping): runc goes (kill_on_drop)
            // and, if its pid file is written, the command with it.
            Err(_) => {
                scratch.kill();
            }
        }
    }
}

/// Kills a command whose client is gone, then waits for runc. The command is
/// killed by the pid runc writes to its pid file once the command runs: runc
/// itself is not killed first, which would leave the command running with no
/// parent to wait for it. Until the file is there (the command is starting),
/// this waits for it, or for runc to end.
async fn cancel(mut child: tokio::process::Child, scratch: Scratch) {
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    loop {
        // runc gone: so is its command (and its pid may be another's now).
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if scratch.kill() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed, runc reaps it and exits; if not, dropping `child` kills runc.
    let _ = tokio::time::timeout(CANCEL_WAIT, child.wait()).await;
}

enum ExecIo {
    Pipes {
        stdin: Option<tokio::process::ChildStdin>,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    },
    Tty(OwnedFd),
}

/// What port-forward reaches.
pub enum Target {
    /// A container's port.
    Tcp(tokio::net::TcpStream),
    /// An HTTP component's replica, served in-process.
    Http(Arc<HttpRuntime>, Arc<HttpReplica>),
}

/// A private directory for runc's pid file (`<data dir>/exec/<random>`),
/// removed when dropped.
struct Scratch {
    dir: Option<PathBuf>,
}

impl Scratch {
    fn new(base: &Path) -> Result<Scratch, Refusal> {
        use std::os::unix::fs::DirBuilderExt;
        let mut raw = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .map_err(|e| refuse(500, format!("cannot read /dev/urandom: {e}")))?;
        let dir = base.join(hex::encode(raw));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(|e| refuse(500, format!("cannot create {}: {e}", dir.display())))?;
        Ok(Scratch { dir: Some(dir) })
    }

    /// One that holds nothing (what a moved-out field is left with).
    fn none() -> Scratch {
        Scratch { dir: None }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.as_deref().unwrap_or(Path::new("/nonexistent")).join("pid")
    }

    /// SIGKILLs the command, if runc has written its pid yet; whether it had.
    fn kill(&self) -> bool {
        // runc writes the file whole (a temporary file renamed).
        let pid = std::fs::read_to_string(self.pid_file()).ok().and_then(|p| p.trim().parse::<i32>().ok());
        match pid.filter(|p| *p > 1) {
            Some(pid) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                true
            }
            None => false,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Relay {
    /// The relay of node `node`.
    pub fn new(
        node: &str,
        data_dir: &Path,
        containers: Option<Arc<ContainerRuntime>>,
        http: Option<Arc<HttpRuntime>>,
        lookup: Lookup,
    ) -> Relay {
        // What a daemon that was killed mid-exec left (its sessions are gone).
        let _ = std::fs::remove_dir_all(data_dir.join(SCRATCH_DIR));
        Relay {
            node: node.to_string(),
            data_dir: data_dir.to_path_buf(),
            containers,
            http,
            lookup,
            nonces: Mutex::default(),
        }
    }

    /// Checks the scheduler's grant for `method path_and_query` and takes its
    /// nonce.
    pub fn authorize(&self, method: &str, path_and_query: &str, grant: Option<&str>) -> Result<(), Refusal> {
        let Some(grant) = grant else {
            return Err(refuse(
                401,
                "exec and port-forward reach a node only through the scheduler (`skiff exec`, `skiff port-forward`)",
            ));
        };
        let credential = std::fs::read_to_string(self.data_dir.join(crate::agent::CREDENTIAL_FILE))
            .map_err(|_| refuse(503, "this node has no credential from the scheduler yet"))?;
        let key = skiff_api::relay::node_key(&credential);
        let now = skiff_api::now_ms();
        let nonce = skiff_api::relay::check_grant(&key, &self.node, method, path_and_query, grant, now)
            .map_err(|e| refuse(403, e.to_string()))?;
        let mut seen = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, t| now.abs_diff(*t) <= 2 * skiff_api::relay::GRANT_WINDOW_MS);
        if seen.insert(nonce, now).is_some() {
            return Err(refuse(403, "this relay grant was used already"));
        }
        Ok(())
    }

    fn container(&self, id: &str, verb: &str) -> Result<&Arc<ContainerRuntime>, Refusal> {
        let Some((_, runtime)) = (self.lookup)(id) else {
            return Err(refuse(404, format!("replica {id} does not run on node {}", self.node)));
        };
        if runtime == Runtime::Wasm && verb == "exec" {
            return Err(refuse(400, format!("replica {id} is a Wasm replica: it has no shell to exec into")));
        }
        self.containers.as_ref().ok_or_else(|| refuse(400, format!("node {} does not run containers", self.node)))
    }

    /// Starts `req.command` in replica `id`'s container.
    pub async fn start_exec(&self, id: &str, req: &ExecRequest) -> Result<Exec, Refusal> {
        let containers = self.container(id, "exec")?;
        let oci = containers.oci();
        let scratch = Scratch::new(&self.data_dir.join(SCRATCH_DIR))?;
        let mut cmd = tokio::process::Command::new(&oci.bin);
        cmd.arg("--root").arg(&oci.root).arg("exec").arg("--pid-file").arg(scratch.pid_file());
        if req.tty {
            cmd.args(["--tty", "--env", "TERM=xterm"]);
        }
        cmd.arg(id).args(&req.command).kill_on_drop(true);
        use std::process::Stdio;
        if !req.tty {
            let stdin = if req.stdin { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(|e| refuse(500, format!("cannot run {}: {e}", oci.bin.display())))?;
            let io = ExecIo::Pipes {
                stdin: child.stdin.take(),
                stdout: child.stdout.take().ok_or_else(|| refuse(500, "runc's stdout is not a pipe"))?,
                stderr: child.stderr.take().ok_or_else(|| refuse(500, "runc's stderr is not a pipe"))?,
            };
            return Ok(Exec { child: Some(child), io: Some(io), scratch });
        }
        // With a terminal runc runs in the foreground on a pty of ours: it
        // makes the container's pty, copies between the two, sets ours raw,
        // and passes our window size on when it gets SIGWINCH (which the
        // kernel sends it, the session leader, when the size of ours is set).
        // (Its --console-socket hands the container's pty over only with
        // --detach, and then nobody but a subreaper learns the exit code.)
        let ws = nix::pty::Winsize { ws_row: req.rows, ws_col: req.cols, ws_xpixel: 0, ws_ypixel: 0 };
        // Raw from the start: runc sets its terminal raw too, but only once the
        // command runs, and output before that would get an extra \r per line.
        let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| refuse(500, format!("cannot open a pty: {e}")))?;
        if let Ok(mut t) = nix::sys::termios::tcgetattr(&pty.slave) {
            nix::sys::termios::cfmakeraw(&mut t);
            let _ = nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t);
        }
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| refuse(500, format!("cannot duplicate the pty: {e}")));
        cmd.stdin(Stdio::from(dup(&pty.slave)?)).stdout(Stdio::from(dup(&pty.slave)?)).stderr(Stdio::from(pty.slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| refuse(500, format!("cannot run {}: {e}", oci.bin.display())))?;
        // `cmd` holds the slave's last copies in this process: dropped, the
        // master reads EIO once runc and the command are gone.
        drop(cmd);
        Ok(Exec { child: Some(child), io: Some(ExecIo::Tty(pty.master)), scratch })
    }

    /// What port-forward to replica `id`'s `port` connects to.
    pub async fn target(&self, id: &str, port: u16) -> Result<Target, Refusal> {
        let Some((deployment, runtime)) = (self.lookup)(id) else {
            return Err(refuse(404, format!("replica {id} does not run on node {}", self.node)));
        };
        if runtime == Runtime::Wasm {
            let replica = self
                .http
                .as_ref()
                .and_then(|h| h.local(&deployment).into_iter().find(|r| r.id == id).map(|r| (h.clone(), r)));
            return replica.map(|(h, r)| Target::Http(h, r)).ok_or_else(|| {
                refuse(
                    409,
                    format!(
                        "replica {id} is a Wasm replica that serves no HTTP now: a command has no port, \
                         and an HTTP component serves only while it is ready"
                    ),
                )
            });
        }
        let containers = self.container(id, "port-forward")?;
        // Inside the container's network namespace, as `kubectl port-forward`
        // reaches a pod's localhost: a server bound to 127.0.0.1 is reached
        // too, and so is a container with loopback networking only.
        let (oci, owned) = (containers.oci().clone(), id.to_string());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(connect_in_container(&oci, &owned, port));
        });
        let inside = rx.await.unwrap_or_else(|_| Err(refuse(500, "the connecting thread died")));
        let stream = match (inside, containers.address(id)) {
            (Ok(s), _) => s,
            // Bound to its bridge address only: reached from the node.
            (Err(e), Some(ip)) if e.status == 502 => {
                let addr = std::net::SocketAddr::new(ip, port);
                match tokio::time::timeout(CONNECT_WAIT, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Target::Tcp(s));
                    }
                    _ => return Err(e),
                }
            }
            (Err(e), _) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
            .map(Target::Tcp)
            .map_err(|e| refuse(500, format!("cannot use the connection to replica {id}: {e}")))
    }
}

/// Connects to 127.0.0.1:`port` in container `id`'s network namespace. Runs on
/// a thread of its own, which the namespace change dies with (the socket keeps
/// the namespace it was made in).
fn connect_in_container(oci: &crate::container::oci::Oci, id: &str, port: u16) -> Result<std::net::TcpStream, Refusal> {
    let pid = match oci.state(id) {
        Some((status, pid)) if status == "running" && pid > 0 => pid,
        Some((status, _)) => return Err(refuse(409, format!("replica {id}'s container is {status}, not running"))),
        None => return Err(refuse(409, format!("replica {id} has no container on this node now"))),
    };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| refuse(409, format!("replica {id}'s container is gone ({e})")))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| refuse(500, format!("cannot enter replica {id}'s network namespace: {e}")))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, CONNECT_WAIT).map_err(|e| {
        refuse(502, format!("cannot connect to port {port} of replica {id} (127.0.0.1 in its network namespace): {e}"))
    })
}

/// Forwards `from` into frames made by `wrap` until it ends (EOF, or EIO: a
/// pty whose other side closed).
async fn pump<R: AsyncRead + Unpin>(mut from: R, tx: tokio::sync::mpsc::Sender<Frame>, wrap: fn(Vec<u8>) -> Frame) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Exec {
    /// Joins the command to the client's connection until it exits (the exit
    /// code goes last) or the client goes (the command is killed).
    pub async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(mut self, conn: S) {
        let (rd, mut wr) = tokio::io::split(conn);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(64);
        let writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                let last = matches!(f, Frame::Exit(_) | Frame::Error(_));
                if wr.write_all(&f.encode()).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                if last {
                    let _ = wr.shutdown().await;
                    return;
                }
            }
        });
        let (Some(io), Some(mut child)) = (self.io.take(), self.child.take()) else { return };
        let (output, input_to): (Vec<tokio::task::JoinHandle<()>>, Input) = match io {
            ExecIo::Pipes { stdin, stdout, stderr } => (
                vec![
                    tokio::spawn(pump(stdout, tx.clone(), Frame::Stdout)),
                    tokio::spawn(pump(stderr, tx.clone(), Frame::Stderr)),
                ],
                Input::Pipe(stdin),
            ),
            ExecIo::Tty(master) => {
                // One descriptor to read, one to write: a tokio File does one at a time.
                let read = master.try_clone().map(|fd| tokio::fs::File::from_std(std::fs::File::from(fd)));
                let write = tokio::fs::File::from_std(std::fs::File::from(master));
                let mut out = Vec::new();
                if let Ok(read) = read {
                    out.push(tokio::spawn(pump(read, tx.clone(), Frame::Stdout)));
                }
                (out, Input::Tty(write))
            }
        };
        // The client's frames: stdin, resizes, end of stdin. Ends when the client does.
        let mut input = tokio::spawn(forward_input(rd, input_to));
        let status = tokio::select! {
            s = child.wait() => s.ok(),
            _ = &mut input => None,
        };
        let Some(status) = status else {
            // The client went away first: its command goes with it.
            writer.abort();
            for o in output {
                o.abort();
            }
            cancel(child, std::mem::replace(&mut self.scratch, Scratch::none())).await;
            return;
        };
        input.abort();
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, futures_util::future::join_all(output)).await;
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let _ = tx.send(Frame::Exit(code)).await;
        drop(tx);
        let _ = writer.await;
    }
}

/// Where the client's input goes.
enum Input {
    Pipe(Option<tokio::process::ChildStdin>),
    Tty(tokio::fs::File),
}

async fn forward_input<R: AsyncRead + Unpin>(mut rd: R, mut to: Input) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 << 10];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let frame = match Frame::decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            match (&mut to, frame) {
                (Input::Pipe(stdin), Frame::Stdin(b)) => {
                    if let Some(s) = stdin
                        && s.write_all(&b).await.is_err()
                    {
                        *stdin = None;
                    }
                }
                (Input::Pipe(stdin), Frame::CloseStdin) => *stdin = None,
                (Input::Tty(master), Frame::Stdin(b)) => {
                    let _ = master.write_all(&b).await;
                    let _ = master.flush().await;
                }
                (Input::Tty(master), Frame::Resize { cols, rows }) => {
                    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
                    unsafe {
                        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Joins a port-forward target to the client's connection until either ends.
pub async fn forward(target: Target, conn: hyper::upgrade::Upgraded) {
    match target {
        Target::Tcp(mut tcp) => {
            let mut conn = hyper_util::rt::TokioIo::new(conn);
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut tcp).await;
        }
        Target::Http(runtime, replica) => {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (runtime, replica) = (runtime.clone(), replica.clone());
                async move {
                    replica.count_request();
                    Ok::<_, std::convert::Infallible>(runtime.handle(&replica, req).await)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(conn, service).await {
                tracing::debug!("port-forward connection ended: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(dir: &Path) -> Relay {
        Relay::new("n1", dir, None, None, Box::new(|_| None))
    }

    #[test]
    fn a_grant_is_taken_once_and_only_for_this_node() {
        let dir = std::env::temp_dir().join(format!("skiff-exec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let r = relay(&dir);
        let pq = "/v1/replicas/r1/exec?command=id";
        // No credential yet: nothing to check a grant with.
        assert_eq!(r.authorize("POST", pq, Some("1.a.00")).map_err(|e| e.status).err(), Some(503));
        std::fs::write(dir.join(crate::agent::CREDENTIAL_FILE), "skn_secret\n").expect("credential");
        let key = skiff_api::relay::node_key("skn_secret");
        let now = skiff_api::now_ms();
        let grant = skiff_api::relay::grant(&key, "n1", "POST", pq, now, "nonce1");
        assert_eq!(r.authorize("POST", pq, None).map_err(|e| e.status).err(), Some(401));
        assert!(r.authorize("POST", pq, Some(&grant)).is_ok());
        let again = r.authorize("POST", pq, Some(&grant)).map_err(|e| (e.status, e.message)).err();
        assert_eq!(again, Some((403, "this relay grant was used already".to_string())));
        let other = skiff_api::relay::grant(&key, "n2", "POST", pq, now, "nonce2");
        assert_eq!(r.authorize("POST", pq, Some(&other)).map_err(|e| e.status).err(), Some(403));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
