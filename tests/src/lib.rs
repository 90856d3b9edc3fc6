//! Test support: start real `skiff` processes, drive them through the CLI and the
//! HTTP API, and clean up everything they made, even when a test fails.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"))
}

/// The `skiff` binary under test (`SKIFF_BIN`, or the workspace's debug build).
pub fn skiff_bin() -> PathBuf {
    let p = std::env::var_os("SKIFF_BIN").map(PathBuf::from).unwrap_or_else(|| target_dir().join("debug/skiff"));
    assert!(p.exists(), "{} is missing: run `make test` (it builds the binary and the Wasm examples)", p.display());
    p
}

/// A Wasm example built for wasm32-wasip2 (a component).
pub fn wasm_p2(name: &str) -> PathBuf {
    example("SKIFF_WASM_P2", "wasm32-wasip2", name)
}

/// A Wasm example built for wasm32-wasip1 (a core module).
pub fn wasm_p1(name: &str) -> PathBuf {
    example("SKIFF_WASM_P1", "wasm32-wasip1", name)
}

fn example(var: &str, triple: &str, name: &str) -> PathBuf {
    let dir =
        std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| target_dir().join(triple).join("release/examples"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `make test` (it builds the Wasm examples)", p.display());
    p
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("skiff-e2e-{tag}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A process we started; killed (SIGKILL, by its pid) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Leads a process group of its own (`start_script`): what it started in
    /// the background goes with it.
    group: bool,
}

impl Proc {
    /// Starts `skiff ARGS`, output to `log`.
    pub fn start(name: &str, args: &[&str], log: &Path) -> Proc {
        Proc::start_in(name, &[], args, log)
    }

    /// Starts another program (`etcd`, say) with `args`, output to `log`.
    pub fn start_program(name: &str, program: &str, args: &[&str], log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf(), group: false }
    }

    /// Starts `WRAPPER... skiff ARGS` (such as `nsenter --net=… --`, which execs
    /// skiff in place, so the pid is skiff's), output to `log`.
    pub fn start_in(name: &str, wrapper: &[&str], args: &[&str], log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
        let err = out.try_clone().expect("clone log");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(skiff_bin());
                c
            }
            None => Command::new(skiff_bin()),
        };
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn skiff");
        Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf(), group: false }
    }

    /// Starts a script (`scripts/run.sh`) with `env` added, output to `log`, in a
    /// process group of its own, as a shell would start it: on drop it is
    /// stopped as Ctrl-C stops it (`stop`), then its whole group is killed, so
    /// that nothing it started in the background outlives the test.
    pub fn start_script(name: &str, script: &Path, env: &[(&str, &std::ffi::OsStr)], log: &Path) -> Proc {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(script)
            .envs(env.iter().copied())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", script.display()));
        Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf(), group: true }
    }

    /// SIGTERM (what a script's Ctrl-C trap also handles), then up to `grace`
    /// for it to exit: its exit status, or `None` if it was still running (it
    /// keeps running) or had already been reaped.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).output();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash or a power cut would (to the whole group of a
    /// `start_script` process: the group's id is the script's pid).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.group {
                let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", c.id())]).output();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- last lines of {} ----\n{}", self.name, self.log_tail(40));
        }
        if self.group {
            // Given the chance to stop what it started, as Ctrl-C would.
            self.stop(Duration::from_secs(15));
        }
        self.kill();
    }
}

/// Waits until `f` gives `Some`, polling every 100 ms; panics after `timeout`
/// saying what it waited for and what it last saw.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Starts node `name` of the server at `url` (join token `token`) offering 2
/// CPUs and 2Gi, its data in `dir/node-NAME`, its API and ingress on loopback
/// ports of its choice, its log in `dir/node-NAME.log`, with `extra` flags;
/// returns it and its ingress address once the node has written it.
pub fn start_node_on_loopback(dir: &Path, url: &str, token: &str, name: &str, extra: &[&str]) -> (Proc, String) {
    let data = dir.join(format!("node-{name}"));
    let base = [
        "node",
        "--server",
        url,
        "--token",
        token,
        "--name",
        name,
        "--cpu",
        "2",
        "--memory",
        "2Gi",
        "--data-dir",
        data.to_str().unwrap_or_default(),
        "--listen",
        "127.0.0.1:0",
        "--ingress",
        "127.0.0.1:0",
    ];
    let node = Proc::start(name, &[&base[..], extra].concat(), &dir.join(format!("node-{name}.log")));
    let ingress = read_when_ready(&data.join("ingress.addr"));
    (node, ingress)
}

/// Reads a file that a process writes at start-up, once it exists.
pub fn read_when_ready(path: &Path) -> String {
    wait_for(Duration::from_secs(30), &format!("{} to appear", path.display()), || {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "not yet".to_string())
    })
}

/// API tokens of the servers the tests started, by `host:port`: the CLI and the
/// HTTP helpers send the right one to each server.
static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn host_port(url: &str) -> &str {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// CA certificates (`DATA_DIR/ca.crt`) of the HTTPS servers the tests started,
/// by `host:port`: the CLI (`SKIFF_CA_FILE`) and the HTTP helpers trust them.
static CAS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Remembers `ca_file` as the CA of the server at `url`.
pub fn remember_ca(url: &str, ca_file: &Path) {
    let mut cas = CAS.lock().unwrap_or_else(|p| p.into_inner());
    let key = host_port(url).to_string();
    cas.retain(|(k, _)| *k != key);
    cas.push((key, ca_file.to_path_buf()));
}

/// The CA certificate file of the server at `url`, if a test started it over HTTPS.
pub fn ca_for(url: &str) -> Option<PathBuf> {
    let cas = CAS.lock().unwrap_or_else(|p| p.into_inner());
    cas.iter().find(|(k, _)| k == host_port(url)).map(|(_, p)| p.clone())
}

/// A connection to `http://` or `https://HOST:PORT` (trusting the CA remembered
/// for it), with a 30 s read timeout.
pub enum Conn {
    Plain(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>),
}

impl Conn {
    /// Connects to the host and port of `url`.
    pub fn open(url: &str) -> Result<Conn, String> {
        let hostport = host_port(url);
        let sock: std::net::SocketAddr = hostport.parse().map_err(|e| format!("{hostport}: {e}"))?;
        let s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        if !url.starts_with("https://") {
            return Ok(Conn::Plain(s));
        }
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let ca_file = ca_for(url).ok_or_else(|| format!("no CA remembered for {url}"))?;
        let ca = CertificateDer::from_pem_file(&ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(|e| e.to_string())?;
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = ServerName::try_from(sock.ip().to_string()).map_err(|e| e.to_string())?;
        let tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(|e| e.to_string())?;
        Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(tls, s))))
    }

    /// The underlying socket (for timeouts).
    pub fn tcp(&self) -> &std::net::TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    /// Reads until the server closes; a TLS peer that closes without a
    /// close_notify still gave what it sent.
    pub fn read_all(&mut self) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let mut buf = Vec::new();
        match self.read_to_end(&mut buf) {
            Ok(_) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl std::io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl std::io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

/// Remembers `token` as the API token of the server at `url`.
pub fn remember_token(url: &str, token: &str) {
    let mut tokens = TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    let key = host_port(url).to_string();
    tokens.retain(|(k, _)| *k != key);
    tokens.push((key, token.to_string()));
}

/// The API token of the server at `url`, if a test started it.
pub fn token_for(url: &str) -> Option<String> {
    let tokens = TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    tokens.iter().find(|(k, _)| k == host_port(url)).map(|(_, t)| t.clone())
}

/// Waits for a server started with `--data-dir data` and returns its URL; its
/// admin token (`data/admin-token`) and, over HTTPS, its CA (`data/ca.crt`) are
/// remembered for the CLI and HTTP helpers.
pub fn server_ready(data: &Path) -> String {
    let url = read_when_ready(&data.join("server.url"));
    remember_token(&url, &read_when_ready(&data.join("admin-token")));
    if url.starts_with("https://") {
        remember_ca(&url, &data.join("ca.crt"));
    }
    url
}

/// A `skiff server` on a free loopback port with its data in `dir/server` and its
/// log in `dir/server.log`, `extra` added to its arguments; once up, with its URL
/// and join token (see [`server_ready`]).
pub fn loopback_server(dir: &Path, extra: &[&str]) -> (Proc, String, String) {
    let data = dir.join("server");
    let args =
        [&["server", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap_or_default()], extra].concat();
    let server = Proc::start("server", &args, &dir.join("server.log"));
    let url = server_ready(&data);
    let token = read_when_ready(&data.join("join-token"));
    (server, url, token)
}

/// The outcome of one CLI call.
pub struct Cli {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `skiff ARGS` against `server`, from `cwd`.
pub fn cli_in(cwd: &Path, server: &str, args: &[&str]) -> Cli {
    let mut cmd = Command::new(skiff_bin());
    match token_for(server) {
        Some(t) => cmd.env("SKIFF_TOKEN", t),
        None => cmd.env_remove("SKIFF_TOKEN"),
    };
    match ca_for(server) {
        Some(ca) => cmd.env("SKIFF_CA_FILE", ca),
        None => cmd.env_remove("SKIFF_CA_FILE"),
    };
    let out: Output = cmd
        .args(args)
        .current_dir(cwd)
        .env("SKIFF_SERVER", server)
        .env_remove("SKIFF_CA_FINGERPRINT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    Cli {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `skiff ARGS` and requires success.
pub fn cli_ok(cwd: &Path, server: &str, args: &[&str]) -> String {
    let out = cli_in(cwd, server, args);
    assert!(out.ok, "`skiff {}` failed:\nstdout: {}\nstderr: {}", args.join(" "), out.stdout, out.stderr);
    out.stdout
}

/// `skiff get KIND -o json`, parsed.
pub fn get_json(cwd: &Path, server: &str, kind: &str) -> Vec<Value> {
    parse_get_json(kind, &cli_ok(cwd, server, &["get", kind, "-o", "json"]))
}

/// What `skiff get KIND -o json` printed (`out`), parsed: a JSON array, or a
/// panic that shows what it was instead. For tests that run the CLI their own
/// way (inside a network namespace, say).
pub fn parse_get_json(kind: &str, out: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(v)) => v,
        other => panic!("`skiff get {kind} -o json` did not print a JSON array: {other:?}\n{out}"),
    }
}

/// Replicas of `deployment` in state running, as (id, node).
pub fn running(cwd: &Path, server: &str, deployment: &str) -> Vec<(String, String)> {
    get_json(cwd, server, "replicas")
        .into_iter()
        .filter(|r| r["deployment"] == deployment && r["state"] == "running")
        .map(|r| (r["id"].as_str().unwrap_or("").to_string(), r["node"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// `GET path` on `addr` (`http://IP:PORT`, or `https://` to a server a test
/// started) with `Host: host`, HTTP/1.0 so the answer ends with the connection.
pub fn get(addr: &str, host: &str, path: &str) -> Result<Answer, String> {
    use std::io::Write;
    let mut s = Conn::open(addr)?;
    let auth = token_for(addr).map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n").map_err(|e| e.to_string())?;
    let buf = s.read_all()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {text:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
    Ok(Answer { status, head: head.to_string(), body: body.to_string() })
}

/// A plain GET of `http(s)://HOST:PORT/PATH`: the body of a 2xx answer, or an
/// error string.
pub fn http_get(url: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or("only http:// and https:// urls")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let a = get(&format!("{scheme}://{host}"), host, &path)?;
    if (200..300).contains(&a.status) { Ok(a.body) } else { Err(a.head.lines().next().unwrap_or("").to_string()) }
}

/// A `skiff dev` process (a scheduler and a node in one) on free ports, in its
/// own temp dir, with its node ready.
pub struct Dev {
    /// Killed first on drop (fields drop in order), then the directory goes.
    pub proc: Proc,
    pub url: String,
    pub dir: TempDir,
}

impl Dev {
    pub fn start(tag: &str) -> Dev {
        let dir = TempDir::new(tag);
        let data = dir.path().join(".skiff");
        let proc = Proc::start(
            "skiff dev",
            &[
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--ingress",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap_or_default(),
            ],
            &dir.path().join("dev.log"),
        );
        let url = server_ready(&data);
        wait_for(Duration::from_secs(30), "the dev node ready", || {
            let nodes = get_json(dir.path(), &url, "nodes");
            if nodes.iter().any(|n| n["state"] == "ready") { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
        Dev { proc, url, dir }
    }

    /// Its data dir.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join(".skiff")
    }

    /// `skiff ARGS` against it, from its directory.
    pub fn cli(&self, args: &[&str]) -> Cli {
        cli_in(self.dir.path(), &self.url, args)
    }

    /// `skiff ARGS`, which must succeed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    /// `skiff get KIND -o json`.
    pub fn get(&self, kind: &str) -> Vec<Value> {
        get_json(self.dir.path(), &self.url, kind)
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports: each is held until all are picked (one at a time,
/// the system may hand a just-closed port out again, as it did to two etcd
/// members once).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    held.iter().map(|l| l.local_addr().expect("a bound address").port()).collect()
}

/// Whether the tests run as root (network namespaces, bridges, containers need it).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The variable by which a developer without root skips the root-only tests
/// (`SKIFF_TESTS_SKIP_ROOT=1`). CI never sets it: there a root-only test that
/// cannot run fails, as a missing tool or Wasm example does.
pub const SKIP_ROOT_VAR: &str = "SKIFF_TESTS_SKIP_ROOT";

/// What a root-only test does, given whether it runs as root and the value of
/// `SKIFF_TESTS_SKIP_ROOT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOnly {
    Run,
    /// Not root, and the developer asked to skip such tests.
    Skip,
    /// Not root, and nobody asked to skip: the test must fail, not pass unrun.
    Fail,
}

/// The decision behind `require_root`: only `SKIFF_TESTS_SKIP_ROOT=1` skips; any
/// other value (`0`, empty) is taken as not asking, so a typo cannot hide a test.
pub fn root_only(root: bool, skip_var: Option<&str>) -> RootOnly {
    match (root, skip_var.map(str::trim)) {
        (true, _) => RootOnly::Run,
        (false, Some("1")) => RootOnly::Skip,
        (false, _) => RootOnly::Fail,
    }
}

/// The first line of every root-only test: whether to go on. As root, yes.
/// Without root it panics (so `make test` cannot pass a test it did not run),
/// unless `SKIFF_TESTS_SKIP_ROOT=1`: then it prints that the test was skipped
/// and answers no. `needs` says what the test does that needs root.
pub fn require_root(needs: &str) -> bool {
    let var = std::env::var(SKIP_ROOT_VAR).ok();
    match root_only(is_root(), var.as_deref()) {
        RootOnly::Run => true,
        RootOnly::Skip => {
            eprintln!("skipped ({SKIP_ROOT_VAR}=1): this test needs root for {needs}");
            false
        }
        RootOnly::Fail => panic!(
            "this test needs root for {needs}: run it as root (`make test` does in CI), or set {SKIP_ROOT_VAR}=1 to skip the root-only tests"
        ),
    }
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

/// A name for a test's network object, unique to this process: `PREFIX<pid>x<n>`,
/// at most 15 characters (the limit for interface names) for a prefix of up to 3.
pub fn net_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A private /24 for a test's bridge, varied by pid and by call
/// (`10.2NN.X.0/24`, NN from 31 to 50), so neither two test binaries running at
/// once nor two tests of one binary (they run in parallel) share one.
pub fn net_prefix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("10.{}.{}", 231 + N.fetch_add(1, Ordering::Relaxed) % 20, std::process::id() % 250 + 1)
}

/// A Linux bridge in the root namespace with an address: the "switch" that test
/// namespaces join (`NetNs::on_bridge`); deleted on drop.
pub struct Bridge {
    pub name: String,
    /// Its address (no prefix length): the host as the namespaces see it.
    pub ip: String,
}

impl Bridge {
    /// `ip link add NAME type bridge` with `cidr` (`10.231.7.1/24`), up.
    pub fn new(name: &str, cidr: &str) -> Bridge {
        ip(&["link", "add", name, "type", "bridge"]);
        let bridge = Bridge { name: name.to_string(), ip: cidr.split('/').next().unwrap_or(cidr).to_string() };
        ip(&["addr", "add", cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        bridge
    }

    /// Starts `skiff server` on the bridge's address (a free port), its data in
    /// `data`, with `extra` arguments, output to `log`; once it is ready, returns
    /// it with its URL (see `server_ready`) and its join token.
    pub fn start_server(&self, data: &Path, extra: &[&str], log: &Path) -> (Proc, String, String) {
        let listen = format!("{}:0", self.ip);
        let mut args = vec!["server", "--listen", &listen, "--data-dir", data.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        let server = Proc::start("server", &args, log);
        let url = server_ready(data);
        let token = read_when_ready(&data.join("join-token"));
        (server, url, token)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "delete", &self.name]).output();
    }
}

/// A network namespace made by a test, loopback up; deleted on drop (with the
/// veth it holds). Drop it after the processes running in it.
pub struct NetNs {
    pub name: String,
    /// Its address on a bridge (no prefix length), if it joined one.
    pub ip: Option<String>,
    /// The bridge's end of its veth (in the root namespace), if it joined one.
    pub veth: Option<String>,
}

impl NetNs {
    /// `ip netns add NAME`, with only loopback.
    pub fn new(name: &str) -> NetNs {
        ip(&["netns", "add", name]);
        let ns = NetNs { name: name.to_string(), ip: None, veth: None };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    /// A namespace joined to `bridge` by a veth pair: `eth0` inside with `cidr`
    /// (`10.231.7.2/24`, in the bridge's subnet), its default route via the bridge.
    pub fn on_bridge(name: &str, bridge: &Bridge, cidr: &str) -> NetNs {
        let mut ns = NetNs::new(name);
        let host_end = net_name("sv");
        let peer = net_name("sp");
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &peer]);
        // Moved into the namespace at once, so that deleting it removes the pair.
        let moved = Command::new("ip").args(["link", "set", &peer, "netns", name]).output();
        if !moved.as_ref().is_ok_and(|o| o.status.success()) {
            let _ = Command::new("ip").args(["link", "delete", &host_end]).output();
            panic!("cannot move {peer} into {name}: {moved:?}");
        }
        ns.veth = Some(host_end.clone());
        ip(&["link", "set", &host_end, "master", &bridge.name]);
        ip(&["link", "set", &host_end, "up"]);
        ip(&["-n", name, "link", "set", &peer, "name", "eth0"]);
        ip(&["-n", name, "addr", "add", cidr, "dev", "eth0"]);
        ip(&["-n", name, "link", "set", "eth0", "up"]);
        ip(&["-n", name, "route", "add", "default", "via", &bridge.ip]);
        ns.ip = Some(cidr.split('/').next().unwrap_or(cidr).to_string());
        ns
    }

    /// Starts `skiff ARGS` inside the namespace (`ip netns exec`, which execs in
    /// place: the pid is skiff's), output to `log`.
    pub fn start(&self, name: &str, args: &[&str], log: &Path) -> Proc {
        Proc::start_in(name, &["ip", "netns", "exec", &self.name], args, log)
    }

    /// Starts `skiff node` named `name` inside the namespace, joined to the
    /// scheduler at `url` with the join `token`, its data in `data`, its API and
    /// ingress on the namespace's address (free ports; the API's URL is then in
    /// `data/node.addr`), with `extra` arguments; output to `log`.
    pub fn start_node(&self, name: &str, url: &str, token: &str, data: &Path, extra: &[&str], log: &Path) -> Proc {
        let addr = format!("{}:0", self.ip.as_deref().unwrap_or("127.0.0.1"));
        let data = data.to_str().unwrap_or_default();
        let mut args = vec!["node", "--server", url, "--token", token, "--name", name, "--data-dir", data];
        args.extend_from_slice(&["--listen", &addr, "--ingress", &addr]);
        args.extend_from_slice(extra);
        self.start(name, &args, log)
    }

    /// Cuts the namespace off its bridge, as a pulled cable would: the bridge's
    /// end of the veth goes down. Inside, `eth0` loses its carrier but keeps its
    /// address and routes: what runs there still reaches itself, and nothing else.
    pub fn cut(&self) {
        ip(&["link", "set", self.veth.as_deref().expect("cut: the namespace is on no bridge"), "down"]);
    }

    /// Undoes `cut`.
    pub fn heal(&self) {
        ip(&["link", "set", self.veth.as_deref().expect("heal: the namespace is on no bridge"), "up"]);
    }

    /// Runs `ARGS` inside the namespace: its stdout, or its stderr on failure.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let out =
            Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The pair goes with the namespace, but the kernel tears a namespace down
        // when it likes (later still with sockets retrying a cut link): delete
        // it now.
        if let Some(veth) = &self.veth {
            let _ = Command::new("ip").args(["link", "delete", veth]).output();
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_only_tests_fail_unless_skipped_on_purpose() {
        assert_eq!(root_only(true, None), RootOnly::Run);
        assert_eq!(root_only(true, Some("1")), RootOnly::Run, "root runs them even when asked to skip");
        assert_eq!(root_only(false, Some("1")), RootOnly::Skip);
        assert_eq!(root_only(false, Some(" 1\n")), RootOnly::Skip);
        for unset_or_other in [None, Some(""), Some("0"), Some("yes"), Some("true")] {
            assert_eq!(root_only(false, unset_or_other), RootOnly::Fail, "{unset_or_other:?}");
        }
    }
}
