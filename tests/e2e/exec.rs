//! `skiff exec` and `skiff port-forward` end to end: `skiff dev` (a scheduler
//! and a node with containers, as root) in a network namespace of its own, the
//! CLI run in that namespace, everything through the scheduler's relay.
//!
//! - exec of `echo`, of a command that exits 7 (the CLI exits 7), with piped
//!   stdin, and `-it` with a shell driven through a pty the test opens (the
//!   CLI's controlling terminal), resized while it runs;
//! - a read-only token is refused; every exec is an event naming the token;
//! - a Wasm replica says it has no shell;
//! - port-forward to a busybox httpd in a container and to an HTTP component's
//!   replica (which answers with its own id).

use crate::containers::{Janitor, build_images, container_pid};
use serde_json::Value;
use skiff_tests::*;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `skiff dev` in a namespace of its own. Fields drop in order: the process,
/// then the janitor cleans after it, then the namespace, then the directory.
struct Cluster {
    proc: Option<Proc>,
    _janitor: Janitor,
    url: String,
    ns: NetNs,
    dir: TempDir,
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        let ns = NetNs::new(&net_name("ex"));
        let dir = TempDir::new(tag);
        let node = dir.path().join(".skiff/node");
        let janitor = Janitor { state: node.join("containers/state"), data: node };
        let mut c = Cluster { proc: None, _janitor: janitor, url: String::new(), ns, dir };
        let cwd = c.dir.path().to_str().unwrap_or_default().to_string();
        let log = c.dir.path().join("dev.log");
        let netns = c.netns();
        c.proc = Some(Proc::start_in("skiff dev", &["nsenter", &netns, "--", "env", "-C", &cwd], &["dev"], &log));
        c.url = read_when_ready(&c.data().join("server.url"));
        wait_for(Duration::from_secs(30), "the dev node ready", || {
            let nodes = c.json("nodes");
            if nodes.iter().any(|n| n["state"] == "ready") { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
        c
    }

    fn netns(&self) -> String {
        format!("--net=/run/netns/{}", self.ns.name)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join(".skiff")
    }

    fn admin(&self) -> String {
        read_when_ready(&self.data().join("admin-token"))
    }

    /// `skiff ARGS` in the namespace with `token`, stdin from `input`.
    fn command(&self, token: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args([self.netns().as_str(), "--"])
            .arg(skiff_bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("SKIFF_SERVER", &self.url)
            .env("SKIFF_TOKEN", token)
            .env("SKIFF_CA_FILE", self.data().join("ca.crt"))
            .env_remove("RUST_LOG");
        c
    }

    fn run(&self, token: &str, args: &[&str], input: &[u8]) -> (Option<i32>, String, String) {
        let mut child = self
            .command(token, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run skiff");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        let out = child.wait_with_output().expect("wait for skiff");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cli(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(&self.admin(), args, b"");
        assert_eq!(code, Some(0), "`skiff {}` failed:\nstdout: {out}\nstderr: {err}", args.join(" "));
        out
    }

    fn json(&self, kind: &str) -> Vec<Value> {
        parse_get_json(kind, &self.cli(&["get", kind, "-o", "json"]))
    }

    /// The id of a replica of `deployment` in `state`.
    fn replica(&self, deployment: &str, state: &str) -> String {
        wait_for(Duration::from_secs(60), &format!("a replica of {deployment} {state}"), || {
            let all = self.json("replicas");
            let found = all.iter().find(|r| r["deployment"] == deployment && r["state"] == state);
            found.and_then(|r| r["id"].as_str()).map(str::to_owned).ok_or_else(|| format!("{all:?}"))
        })
    }

    /// A container replica of `deployment`, running under runc.
    fn container(&self, deployment: &str) -> String {
        let state = self.data().join("node/containers/state");
        wait_for(Duration::from_secs(60), &format!("{deployment}'s container running"), || {
            let id = self.replica(deployment, "running");
            container_pid(&state, &id).map(|_| id.clone()).ok_or(id)
        })
    }

    fn import_busybox(&self) {
        let (oci, _) = build_images(self.dir.path());
        self.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    }

    /// GET `url` from inside the namespace (curl), the body.
    fn fetch(&self, url: &str) -> Result<String, String> {
        let out = Command::new("nsenter")
            .args([self.netns().as_str(), "--", "curl", "-sS", "--fail", "--max-time", "5", url])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `skiff port-forward REPLICA :REMOTE` running; the local address it took.
    fn port_forward(&self, replica: &str, remote: u16, tag: &str) -> (Proc, String) {
        let log = self.dir.path().join(format!("{tag}.log"));
        let (server, token) = (format!("SKIFF_SERVER={}", self.url), format!("SKIFF_TOKEN={}", self.admin()));
        let ca = format!("SKIFF_CA_FILE={}", self.data().join("ca.crt").display());
        let netns = self.netns();
        let wrapper = ["nsenter", netns.as_str(), "--", "env", server.as_str(), token.as_str(), ca.as_str()];
        let remote = format!(":{remote}");
        let proc = Proc::start_in(tag, &wrapper, &["port-forward", replica, &remote], &log);
        let addr = wait_for(Duration::from_secs(30), "port-forward to listen", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let line = text.lines().find_map(|l| l.strip_prefix("Forwarding from "));
            line.and_then(|l| l.split_whitespace().next()).map(str::to_owned).ok_or(text)
        });
        (proc, addr)
    }
}

fn require() -> bool {
    if !require_root("exec into containers under skiff dev (runc, overlayfs, network namespaces)") {
        return false;
    }
    let v = Command::new("runc").arg("--version").output();
    assert!(v.is_ok_and(|o| o.status.success()), "the exec tests need runc (`make deps` installs it)");
    assert!(
        Path::new("/bin/busybox").exists(),
        "the exec tests need /bin/busybox (`make deps-test` installs busybox-static)"
    );
    true
}

/// A pty whose slave is the CLI's controlling terminal; what the CLI writes
/// is gathered from the master by a thread.
struct Pty {
    master: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
}

fn set_winsize(fd: &impl AsRawFd, cols: u16, rows: u16) {
    let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

impl Pty {
    /// Starts `cmd` on a new pty of `cols`×`rows`.
    fn spawn(mut cmd: Command, cols: u16, rows: u16) -> (Pty, std::process::Child) {
        use std::os::unix::process::CommandExt;
        let pair = nix::pty::openpty(None, None).expect("openpty");
        set_winsize(&pair.master, cols, rows);
        let slave: OwnedFd = pair.slave;
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own with the pty as its controlling
                // terminal: the kernel then sends it SIGWINCH on a resize.
                if nix::libc::setsid() < 0 || nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn skiff exec -it");
        let master = std::fs::File::from(pair.master);
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup master");
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last holder of the slave is gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buf[..n]);
            }
        });
        (Pty { master, out }, child)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    fn type_line(&mut self, line: &str) {
        // Raw mode: the CLI sends the bytes as typed; Enter is a carriage return.
        self.master.write_all(format!("{line}\r").as_bytes()).expect("write to the pty");
    }

    fn wait_for_text(&self, what: &str, needle: &str) {
        wait_for(Duration::from_secs(30), what, || {
            let t = self.text();
            if t.contains(needle) { Ok(()) } else { Err(format!("{t:?}")) }
        });
    }
}

#[test]
fn exec_runs_commands_in_a_container_with_and_without_a_terminal() {
    if !require() {
        return;
    }
    let c = Cluster::start("exec");
    c.import_busybox();
    c.cli(&["deploy", "--image", "busybox", "--name", "box", "--arg", "/bin/sleep", "--arg", "100000"]);
    let id = c.container("box");
    let admin = c.admin();

    // A deployment's name picks one of its replicas (its hostname is its id).
    let (code, out, err) = c.run(&admin, &["exec", "box", "--", "hostname"], b"");
    assert_eq!((code, out.trim()), (Some(0), id.as_str()), "stderr: {err}");

    let (code, out, err) = c.run(&admin, &["exec", &id, "--", "echo", "hello from", "exec"], b"");
    assert_eq!((code, out.as_str()), (Some(0), "hello from exec\n"), "stderr: {err}");

    // Both streams apart, and the command's exit code is the CLI's.
    let (code, out, err) = c.run(&admin, &["exec", &id, "--", "sh", "-c", "echo out; echo err >&2; exit 7"], b"");
    assert_eq!((code, out.as_str(), err.as_str()), (Some(7), "out\n", "err\n"));

    // -i passes stdin, to its end.
    let (code, out, err) = c.run(&admin, &["exec", "-i", &id, "--", "sh", "-c", "cat; echo done"], b"piped\nlines\n");
    assert_eq!((code, out.as_str()), (Some(0), "piped\nlines\ndone\n"), "stderr: {err}");
    // Without -i the command's stdin is empty, whatever the CLI's is.
    let (code, out, _) = c.run(&admin, &["exec", &id, "--", "cat"], b"not passed\n");
    assert_eq!((code, out.as_str()), (Some(0), ""));

    // A command the image lacks: runc's reason, and a failing code.
    let (code, _, err) = c.run(&admin, &["exec", &id, "--", "nosuchcommand"], b"");
    assert!(code.is_some_and(|c| c != 0) && err.contains("nosuchcommand"), "{code:?} {err}");

    // -it: a shell on a terminal, driven through a pty as a person would.
    let (mut pty, mut child) = Pty::spawn(c.command(&admin, &["exec", "-it", &id, "--", "sh"]), 100, 30);
    // Typed once the shell prompts, as a person would.
    pty.wait_for_text("the shell's prompt", "/ # ");
    pty.type_line("stty size");
    pty.wait_for_text("the terminal's first size in the container", "30 100");
    set_winsize(&pty.master, 120, 40);
    // The CLI gets SIGWINCH and sends the size on; the next command sees it.
    wait_for(Duration::from_secs(30), "the resize to reach the container", || {
        pty.type_line("stty size");
        std::thread::sleep(Duration::from_millis(300));
        let t = pty.text();
        if t.contains("40 120") { Ok(()) } else { Err(format!("{t:?}")) }
    });
    pty.type_line("echo hi; exit 5");
    let status = wait_for(Duration::from_secs(30), "skiff exec -it to exit", || {
        child.try_wait().map_err(|e| e.to_string())?.ok_or_else(|| pty.text())
    });
    assert_eq!(status.code(), Some(5), "{}", pty.text());
    // On its own line. (Now and then every line comes as \r\r\n, which a
    // terminal shows the same; which pty adds the second \r was not pinned down.)
    let text = pty.text().replace("\r\r\n", "\r\n");
    assert!(text.contains("\r\nhi\r\n"), "{text:?}");

    // The shell is gone from the container: the processes in it are its
    // init (sleep) and the `ls` that counts them.
    let processes = || {
        let procs = c.run(&admin, &["exec", &id, "--", "ls", "/proc"], b"").1;
        procs.split_whitespace().filter(|p| p.parse::<u32>().is_ok()).count()
    };
    assert_eq!(processes(), 2);

    // A client that goes away (here: SIGKILLed) takes its command with it,
    // with a terminal and without.
    for tty in [false, true] {
        let args = ["exec", "-i", "-t", &id, "--", "sleep", "1001"];
        let args: Vec<&str> = args.into_iter().filter(|a| tty || *a != "-t").collect();
        let (_pty, mut child) = Pty::spawn(c.command(&admin, &args), 80, 24);
        wait_for(Duration::from_secs(30), "the exec'd sleep to run", || {
            let n = processes();
            if n == 3 { Ok(()) } else { Err(format!("{n} processes")) }
        });
        child.kill().expect("kill skiff exec");
        let _ = child.wait();
        wait_for(Duration::from_secs(30), "the exec'd sleep to go with its client", || {
            let n = processes();
            // What is left, for the failure's message: pid, name, state, parent pid.
            let stats =
                c.run(&admin, &["exec", &id, "--", "sh", "-c", "for p in /proc/[0-9]*/stat; do cat $p; done"], b"").1;
            let stats: Vec<String> =
                stats.lines().map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" ")).collect();
            if n == 2 { Ok(()) } else { Err(format!("{n} processes (tty: {tty}): {stats:?}")) }
        });
    }

    // Every exec's scratch directory (runc's pid file) is gone with it.
    let scratch = c.data().join("node/exec");
    wait_for(Duration::from_secs(30), "the execs' scratch directories removed", || {
        let left: Vec<_> = std::fs::read_dir(&scratch).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });

    // Each exec is an event that names the token.
    let events = c.cli(&["events", "-o", "json"]);
    assert!(
        events.contains("Exec") && events.contains(&format!("token admin ran `echo hello from exec` in replica {id}")),
        "{events}"
    );
    assert!(events.contains("token admin ran `sh` on a terminal"), "{events}");
}

#[test]
fn exec_needs_an_admin_token_and_a_container() {
    if !require() {
        return;
    }
    let c = Cluster::start("exec-refused");
    c.import_busybox();
    c.cli(&["deploy", "--image", "busybox", "--name", "box", "--arg", "/bin/sleep", "--arg", "100000"]);
    c.cli(&["deploy", wasm_p2("worker").to_str().unwrap_or_default(), "--name", "worker"]);
    let id = c.container("box");

    let (_, token, err) = c.run(&c.admin(), &["token", "create", "--name", "viewer", "--read-only"], b"");
    let token = token.trim().to_string();
    assert!(token.starts_with("skr_"), "{token} {err}");
    let (code, out, err) = c.run(&token, &["exec", &id, "--", "echo", "no"], b"");
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(out.is_empty() && err.contains("read-only") && err.lines().count() == 1, "{err}");
    let (code, _, err) = c.run(&token, &["port-forward", &id, "8000"], b"");
    assert!(code == Some(1) && err.contains("read-only"), "{err}");

    let worker = c.replica("worker", "running");
    let (code, _, err) = c.run(&c.admin(), &["exec", &worker, "--", "sh"], b"");
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), format!("error: replica {worker} is a Wasm replica: it has no shell to exec into"));

    let (code, _, err) = c.run(&c.admin(), &["exec", "box-nosuch", "--", "sh"], b"");
    assert!(code == Some(1) && err.contains("not found"), "{err}");

    let events = c.cli(&["events", "-o", "json"]);
    assert!(!events.contains("ran `echo no`"), "a refused exec ran: {events}");
    // The node's relay routes refuse anyone without the scheduler's grant.
    let node_addr = read_when_ready(&c.data().join("node/node.addr"));
    let url = format!("{node_addr}/v1/replicas/{id}/exec?command=id");
    let out = Command::new("nsenter")
        .args([
            c.netns().as_str(),
            "--",
            "curl",
            "-s",
            "-X",
            "POST",
            "-H",
            "Connection: upgrade",
            "-H",
            "Upgrade: skiff-relay",
            &url,
        ])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("only through the scheduler"), "{body}");
    let forged = Command::new("nsenter")
        .args([
            c.netns().as_str(),
            "--",
            "curl",
            "-s",
            "-X",
            "POST",
            "-H",
            "Connection: upgrade",
            "-H",
            "Upgrade: skiff-relay",
        ])
        .args(["-H", "x-skiff-grant: 1.abc.0000000000000000000000000000000000000000000000000000000000000000", &url])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&forged.stdout);
    assert!(body.contains("does not match"), "{body}");
}

#[test]
fn port_forward_reaches_a_container_port_and_an_http_component() {
    if !require() {
        return;
    }
    let c = Cluster::start("port-forward");
    c.import_busybox();
    c.cli(&[
        "deploy", "--image", "busybox", "--name", "web", "--arg", "httpd", "--arg", "-f", "--arg", "-p", "--arg",
        "8000", "--arg", "-h", "--arg", "/etc",
    ]);
    c.cli(&[
        "deploy",
        wasm_p2("hello_http").to_str().unwrap_or_default(),
        "--name",
        "hello",
        "--replicas",
        "2",
        "--wait",
    ]);
    c.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "local",
        "--arg",
        "httpd",
        "--arg",
        "-f",
        "--arg",
        "-p",
        "--arg",
        "127.0.0.1:8002",
        "--arg",
        "-h",
        "--arg",
        "/etc",
    ]);
    let web = c.container("web");

    let (_pf, addr) = c.port_forward(&web, 8000, "pf-web");
    // Several connections one after another, each its own relayed stream.
    for _ in 0..3 {
        let page = wait_for(Duration::from_secs(30), "the page through port-forward", || {
            c.fetch(&format!("http://{addr}/motd"))
        });
        assert_eq!(page, "hello from the image\n");
    }
    let missing = c.fetch(&format!("http://{addr}/nosuch"));
    assert!(missing.as_ref().is_err_and(|e| e.contains("404")), "httpd's own 404 passes: {missing:?}");

    // A server bound to the container's 127.0.0.1 only: reached inside its
    // network namespace, as kubectl reaches a pod's localhost.
    let local = c.container("local");
    let (_pf_local, addr_local) = c.port_forward(&local, 8002, "pf-local");
    let page =
        wait_for(Duration::from_secs(30), "the loopback-bound page", || c.fetch(&format!("http://{addr_local}/motd")));
    assert_eq!(page, "hello from the image\n");

    // An HTTP component: that very replica answers (hello_http says its id).
    let hello: Vec<String> = c
        .json("replicas")
        .iter()
        .filter(|r| r["deployment"] == "hello" && r["state"] == "ready")
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(hello.len(), 2, "{hello:?}");
    let (_pf2, addr2) = c.port_forward(&hello[1], 80, "pf-hello");
    for _ in 0..3 {
        let page = wait_for(Duration::from_secs(30), "the component through port-forward", || {
            c.fetch(&format!("http://{addr2}/"))
        });
        assert_eq!(page.trim(), format!("hello from {}", hello[1]));
    }

    // A closed port is the node's one line, printed per connection.
    let (pf3, addr3) = c.port_forward(&web, 8001, "pf-closed");
    assert!(c.fetch(&format!("http://{addr3}/")).is_err());
    let log = wait_for(Duration::from_secs(30), "the refusal in port-forward's output", || {
        let l = pf3.log();
        if l.contains("cannot connect to port 8001") { Ok(l) } else { Err(l) }
    });
    assert!(log.contains(&format!("of replica {web}")), "{log}");

    let events = c.cli(&["events", "-o", "json"]);
    assert!(events.contains(&format!("token admin forwarded a connection to port 8000 of replica {web}")), "{events}");
}

/// With several servers on etcd, a follower passes the relay's upgrade on to
/// the leader: exec and port-forward work through whichever server the CLI
/// is given. The node runs containers with loopback networking (exec needs no
/// network), next to an HTTP component for port-forward.
#[test]
fn exec_and_port_forward_pass_through_a_follower() {
    if !require() {
        return;
    }
    assert!(Command::new("etcd").arg("--version").output().is_ok(), "etcd is missing: `make deps-test` installs it");
    let dir = TempDir::new("exec-follower");
    let cwd = dir.path();
    let etcd = crate::servers::Etcd::start(cwd);
    let store = etcd.url();
    let (_s1, u1) = crate::servers::start_server(cwd, "127.0.0.1", "s1", &store, &[]);
    let join = read_when_ready(&cwd.join("s1/join-token"));
    let (_s2, u2) = crate::servers::start_server(cwd, "127.0.0.1", "s2", &store, &["--join-token", &join]);
    let admin = read_when_ready(&cwd.join("s1/admin-token"));
    let both = format!("{u1},{u2}");
    for u in [&u1, &u2, &both] {
        remember_token(u, &admin);
        remember_ca(u, &cwd.join("s1/ca.crt"));
    }
    let leader = wait_for(Duration::from_secs(30), "a leader", || crate::servers::leader(cwd, &both));
    let follower = if leader == "s1" { u2.clone() } else { u1.clone() };

    let data = cwd.join("node");
    let _janitor = Janitor { state: data.join("containers/state"), data: data.clone() };
    let d = data.to_str().unwrap_or_default();
    let node_args = ["node", "--server", &both, "--token", &join, "--name", "n1", "--data-dir", d];
    let net_args = ["--listen", "127.0.0.1:0", "--ingress", "127.0.0.1:0", "--container-network", "loopback"];
    let args: Vec<&str> = node_args.iter().chain(net_args.iter()).copied().collect();
    let _node = Proc::start("n1", &args, &cwd.join("n1.log"));

    let (oci, _) = build_images(cwd);
    cli_ok(cwd, &follower, &["image", "import", oci.to_str().unwrap_or_default()]);
    let httpd = ["--arg", "httpd", "--arg", "-f", "--arg", "-p", "--arg", "8000", "--arg", "-h", "--arg", "/etc"];
    let args: Vec<&str> = ["deploy", "--image", "busybox", "--name", "box"].into_iter().chain(httpd).collect();
    cli_ok(cwd, &follower, &args);
    let hello = wasm_p2("hello_http");
    cli_ok(cwd, &follower, &["deploy", hello.to_str().unwrap_or_default(), "--name", "hello", "--wait"]);
    let state = data.join("containers/state");
    let id = wait_for(Duration::from_secs(60), "box's container running", || {
        let all = get_json(cwd, &follower, "replicas");
        let r = all.iter().find(|r| r["deployment"] == "box" && r["state"] == "running");
        let id = r.and_then(|r| r["id"].as_str()).map(str::to_owned).ok_or_else(|| format!("{all:?}"))?;
        container_pid(&state, &id).map(|_| id.clone()).ok_or(id)
    });

    let out = cli_in(cwd, &follower, &["exec", &id, "--", "sh", "-c", "echo through the follower; exit 3"]);
    assert!(!out.ok && out.stdout == "through the follower\n", "{} {}", out.stdout, out.stderr);

    let log = cwd.join("pf.log");
    let server = format!("SKIFF_SERVER={follower}");
    let token = format!("SKIFF_TOKEN={admin}");
    let ca = format!("SKIFF_CA_FILE={}", cwd.join("s1/ca.crt").display());
    let _pf = Proc::start_in("pf", &["env", &server, &token, &ca], &["port-forward", "hello", ":80"], &log);
    let addr = wait_for(Duration::from_secs(30), "port-forward to listen", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let line = text.lines().find_map(|l| l.strip_prefix("Forwarding from "));
        line.and_then(|l| l.split_whitespace().next()).map(str::to_owned).ok_or(text)
    });
    let page =
        wait_for(Duration::from_secs(30), "the component through a follower", || http_get(&format!("http://{addr}/")));
    assert!(page.starts_with("hello from hello-"), "{page}");

    // A container with loopback networking only has no address on any bridge:
    // port-forward reaches it inside its network namespace.
    let log = cwd.join("pf-box.log");
    let _pf_box = Proc::start_in("pf-box", &["env", &server, &token, &ca], &["port-forward", &id, ":8000"], &log);
    let addr = wait_for(Duration::from_secs(30), "port-forward to listen", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let line = text.lines().find_map(|l| l.strip_prefix("Forwarding from "));
        line.and_then(|l| l.split_whitespace().next()).map(str::to_owned).ok_or(text)
    });
    let page = wait_for(Duration::from_secs(30), "the loopback-only container's page", || {
        http_get(&format!("http://{addr}/motd"))
    });
    assert_eq!(page, "hello from the image\n");
}
