//! Containers end to end: a scheduler and a node as real processes, an OCI image
//! built here from Debian's busybox-static (no network), imported with the CLI,
//! deployed and run by runc. Needs root and runc (`make deps` installs runc, `make deps-test`
//! busybox-static; `make test` runs as root): without root each test is skipped,
//! saying so; as root without runc it fails.

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use skiff_tests::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BUSYBOX: &str = "/bin/busybox";
const RUNC: &str = "runc";
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "dd", "cat", "ls", "true", "false", "mkdir", "hostname", "httpd", "test", "rm", "touch",
    "nc", "stty",
];

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Appends a file, directory or symlink to a tar being built.
fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, mode: u32, body: &[u8], link: Option<&str>) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(body.len() as u64);
    if let Some(l) = link {
        h.set_link_name(l).expect("link name");
    }
    b.append_data(&mut h, path, body).expect("append to tar");
}

/// The image's two layers: busybox with its applets and /etc/{motd,removed},
/// then a layer that whites out /etc/removed and adds /etc/added (gzip).
fn layers() -> (Vec<u8>, Vec<u8>) {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX} is missing ({e}); install busybox-static (`make deps-test` does)"));
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "tmp/"] {
        add(&mut b, d, tar::EntryType::Directory, 0o755, b"", None);
    }
    add(&mut b, "bin/busybox", tar::EntryType::Regular, 0o755, &busybox, None);
    for a in APPLETS {
        add(&mut b, &format!("bin/{a}"), tar::EntryType::Symlink, 0o777, b"", Some("busybox"));
    }
    add(&mut b, "etc/motd", tar::EntryType::Regular, 0o644, b"hello from the image\n", None);
    add(&mut b, "etc/removed", tar::EntryType::Regular, 0o644, b"gone\n", None);
    let first = b.into_inner().expect("layer 1");

    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "etc/", tar::EntryType::Directory, 0o755, b"", None);
    add(&mut b, "etc/.wh.removed", tar::EntryType::Regular, 0o644, b"", None);
    add(&mut b, "etc/added", tar::EntryType::Regular, 0o644, b"new\n", None);
    let second = b.into_inner().expect("layer 2");
    (first, second)
}

struct Image {
    /// (path in the archive, bytes)
    files: Vec<(String, Vec<u8>)>,
}

fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        add(&mut b, name, tar::EntryType::Regular, 0o644, bytes, None);
    }
    std::fs::write(path, b.into_inner().expect("archive")).expect("write archive");
}

/// An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), as
/// `skopeo copy … oci-archive:` writes it, and a `docker save` archive of the
/// same layers.
pub(crate) fn build_images(dir: &Path) -> (PathBuf, PathBuf) {
    let (l1, l2) = layers();
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&l2).expect("gzip");
    let l2gz = gz.finish().expect("gzip");
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["/bin/sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha(&l1)), format!("sha256:{}", sha(&l2))] },
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len() },
        "layers": [
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(&l1)), "size": l1.len() },
            { "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha(&l2gz)), "size": l2gz.len() },
        ],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    }))
    .expect("index");
    let blob = |b: &[u8]| (format!("blobs/sha256/{}", sha(b)), b.to_vec());
    let oci = Image {
        files: vec![
            ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json".into(), index),
            blob(&manifest),
            blob(&config),
            blob(&l1),
            blob(&l2gz),
        ],
    };
    let oci_path = dir.join("busybox.tar");
    write_tar(&oci_path, &oci.files);

    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": format!("{}.json", sha(&config)),
        "RepoTags": ["bbdocker:v1"],
        "Layers": [format!("{}/layer.tar", sha(&l1)), format!("{}/layer.tar", sha(&l2))],
    }]))
    .expect("docker manifest");
    let docker = vec![
        ("manifest.json".to_string(), docker_manifest),
        (format!("{}.json", sha(&config)), config.clone()),
        (format!("{}/layer.tar", sha(&l1)), l1.clone()),
        (format!("{}/layer.tar", sha(&l2)), l2.clone()),
    ];
    let docker_path = dir.join("docker-save.tar");
    write_tar(&docker_path, &docker);
    (oci_path, docker_path)
}

/// A copy of the archive at `from` whose largest blob (the busybox layer) holds
/// other bytes under the same digest.
fn tampered(from: &Path, to: &Path) -> PathBuf {
    let mut archive = tar::Archive::new(std::fs::File::open(from).expect("open archive"));
    let mut files = Vec::new();
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).expect("read");
        if bytes.len() > 100_000 {
            bytes = b"not the layer".to_vec();
        }
        files.push((name, bytes));
    }
    write_tar(to, &files);
    to.to_path_buf()
}

fn runc(state: &Path, args: &[&str]) -> String {
    let out = Command::new(RUNC).arg("--root").arg(state).args(args).output().expect("run runc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host pid of a running container.
pub(crate) fn container_pid(state: &Path, id: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(&runc(state, &["state", id])).ok()?;
    if v["status"] != "running" {
        return None;
    }
    v["pid"].as_u64().filter(|p| *p > 0)
}

pub(crate) fn runc_ids(state: &Path) -> Vec<String> {
    runc(state, &["list", "-q"]).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// Mount points under `dir`, from /proc/mounts.
pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

pub(crate) fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let p = e.path().join("skiff").join(id);
        if p.exists() {
            out.push(p);
        }
    }
    out
}

/// A network namespace made for the test; deleted on drop (after the processes
/// in it are gone: the Setup drops it late).
struct NetNs(String);

impl NetNs {
    fn new() -> NetNs {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("skiff-e2e-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let ok = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        };
        ok(&["netns", "add", &name]);
        let ns = NetNs(name);
        ok(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ARGS` inside the namespace; stdout, or stderr on failure.
    fn exec(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).output();
    }
}

/// Removes whatever containers, mounts and cgroups the node left when the test
/// ends, passed or failed (declared before the node so it drops after it).
pub(crate) struct Janitor {
    pub(crate) state: PathBuf,
    pub(crate) data: PathBuf,
}

impl Drop for Janitor {
    fn drop(&mut self) {
        if !self.state.exists() {
            return; // runc would create it
        }
        for id in runc_ids(&self.state) {
            let _ = Command::new(RUNC).arg("--root").arg(&self.state).args(["kill", "--all", &id, "KILL"]).output();
            let _ = Command::new(RUNC).arg("--root").arg(&self.state).args(["delete", "--force", &id]).output();
            for c in cgroups_of(&id) {
                let _ = std::fs::remove_dir(c);
            }
            let _ = Command::new("ip").args(["netns", "delete", &format!("skiff-{id}")]).output();
        }
        // A replica whose container runc no longer knows (the daemon died
        // between steps) still has its bundle dir: its namespace goes too.
        let runs = std::fs::read_dir(self.data.join("containers/run")).into_iter().flatten().flatten();
        for id in runs.filter_map(|e| e.file_name().into_string().ok()) {
            if Path::new(&format!("/run/netns/skiff-{id}")).exists() {
                let _ = Command::new("ip").args(["netns", "delete", &format!("skiff-{id}")]).output();
            }
        }
        for m in mounts_under(&self.data) {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
    }
}

fn require_root_and_runc() {
    assert!(is_root(), "the container tests need root (run `make test` as root)");
    let v = Command::new(RUNC).arg("--version").output();
    assert!(v.is_ok_and(|o| o.status.success()), "the container tests need runc (`make deps` installs it)");
}

/// Fields drop in order: the node and server first, then the janitor cleans up
/// after them, and the directory goes last.
struct Setup {
    node: Option<Proc>,
    server: Proc,
    _janitor: Janitor,
    url: String,
    node_args: Vec<String>,
    state: PathBuf,
    /// Runs every skiff process (and the CLI) inside the test's network namespace.
    wrapper: Vec<String>,
    _netns: Option<NetNs>,
    dir: TempDir,
}

impl Setup {
    /// A scheduler and a node on the machine's loopback; containers get
    /// loopback-only networking (a bridge would change the machine's network).
    fn new() -> Setup {
        Setup::start(None)
    }

    /// The same inside a network namespace made for the test, where the node
    /// may make its bridge.
    fn in_netns() -> Setup {
        Setup::start(Some(NetNs::new()))
    }

    fn start(netns: Option<NetNs>) -> Setup {
        Setup::start_with(netns, &[])
    }

    /// `server_args` go to `skiff server` after the usual ones.
    fn start_with(netns: Option<NetNs>, server_args: &[&str]) -> Setup {
        require_root_and_runc();
        let wrapper: Vec<String> = match &netns {
            Some(ns) => vec!["nsenter".into(), format!("--net=/run/netns/{}", ns.0), "--".into()],
            None => vec![],
        };
        let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let dir = TempDir::new("containers");
        let data = dir.path().join("node");
        let state = data.join("containers/state");
        let janitor = Janitor { state: state.clone(), data: data.clone() };
        let server_data = dir.path().join("server");
        let server = Proc::start_in(
            "server",
            &w,
            &[
                &["server", "--listen", "127.0.0.1:0", "--data-dir", server_data.to_str().unwrap_or_default()],
                server_args,
            ]
            .concat(),
            &dir.path().join("server.log"),
        );
        let url = server_ready(&server_data);
        let token = read_when_ready(&server_data.join("join-token"));
        let node_args: Vec<String> = [
            "node",
            "--server",
            &url,
            "--token",
            &token,
            "--name",
            "n1",
            "--cpu",
            "2",
            "--memory",
            "1Gi",
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
            "--container-network",
            if netns.is_some() { "bridge" } else { "loopback" },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut s = Setup { node: None, server, _janitor: janitor, url, node_args, state, wrapper, _netns: netns, dir };
        s.start_node();
        s
    }

    fn start_node(&mut self) {
        let data = self.dir.path().join("node");
        let _ = std::fs::remove_file(data.join("node.addr"));
        let args: Vec<&str> = self.node_args.iter().map(String::as_str).collect();
        let w: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        self.node = Some(Proc::start_in("node", &w, &args, &self.dir.path().join("node.log")));
        read_when_ready(&data.join("node.addr"));
    }

    /// `skiff ARGS` (in the test's namespace, if any).
    fn cli_in(&self, args: &[&str]) -> Cli {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(skiff_bin());
                c
            }
            None => Command::new(skiff_bin()),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .env("SKIFF_SERVER", &self.url)
            .env("SKIFF_TOKEN", token_for(&self.url).unwrap_or_default())
            .envs(ca_for(&self.url).map(|ca| ("SKIFF_CA_FILE", ca)))
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

    fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_in(args);
        assert!(out.ok, "`skiff {}` failed:\nstdout: {}\nstderr: {}", args.join(" "), out.stdout, out.stderr);
        out.stdout
    }

    fn json(&self, kind: &str) -> Vec<Value> {
        parse_get_json(kind, &self.cli(&["get", kind, "-o", "json"]))
    }

    fn replicas(&self, deployment: &str) -> Vec<Value> {
        self.json("replicas").into_iter().filter(|r| r["deployment"] == deployment).collect()
    }

    /// Ids of the running replicas of `deployment`.
    fn running(&self, deployment: &str) -> Vec<String> {
        self.replicas(deployment)
            .into_iter()
            .filter(|r| r["state"] == "running")
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect()
    }

    fn wait_running(&self, deployment: &str, n: usize) -> Vec<String> {
        wait_for(Duration::from_secs(60), &format!("{n} running replicas of {deployment}"), || {
            let r = self.running(deployment);
            if r.len() == n { Ok(r) } else { Err(format!("{r:?}")) }
        })
    }

    fn logs(&self, deployment: &str) -> String {
        let out = self.cli_in(&["logs", deployment]);
        out.stdout + &out.stderr
    }
}

#[test]
fn containers_run_restart_hit_limits_and_leave_nothing_behind() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let s = Setup::new();
    let _ = &s.server;

    // The node says it can run containers.
    wait_for(Duration::from_secs(30), "node n1 to advertise containers", || {
        let nodes = s.json("nodes");
        let ok = nodes.iter().any(|n| n["runtimes"].as_array().is_some_and(|r| r.iter().any(|x| x == "container")));
        if ok { Ok(()) } else { Err(format!("{nodes:?}")) }
    });

    // Import both archive shapes; list them.
    let (oci, docker) = build_images(s.dir.path());
    let out = s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    assert!(out.contains("imported busybox:latest sha256:"), "{out}");
    let out = s.cli(&["image", "import", docker.to_str().unwrap_or_default()]);
    assert!(out.contains("imported bbdocker:v1 sha256:"), "{out}");
    let ls = s.cli(&["image", "ls"]);
    assert!(ls.contains("busybox") && ls.contains("latest") && ls.contains("bbdocker") && ls.contains("v1"), "{ls}");

    // A tampered archive is refused before anything is tagged.
    let bad = tampered(&oci, &s.dir.path().join("bad.tar"));
    let out = s.cli_in(&["image", "import", bad.to_str().unwrap_or_default(), "--name", "bad"]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("the archive is corrupt or was tampered with"), "{}", out.stderr);
    assert!(!s.cli(&["image", "ls"]).contains("bad"));
    let out = s.cli_in(&["deploy", "--image", "nosuch:v9", "--name", "nosuch"]);
    assert!(!out.ok && out.stderr.contains("image nosuch:v9 is not imported"), "{}", out.stderr);

    // Two replicas that log a line every 200 ms.
    let ticker = "i=0; while true; do echo tick $i from $(cat /etc/motd | wc -c) FROM_IMAGE=$FROM_IMAGE; i=$((i+1)); sleep 0.2; done";
    s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "ticker",
        "--replicas",
        "2",
        "--cpu",
        "100m",
        "--memory",
        "32Mi",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        ticker,
    ]);
    let ids = s.wait_running("ticker", 2);
    wait_for(Duration::from_secs(30), "ticks from both replicas in `skiff logs`", || {
        let logs = s.logs("ticker");
        let both =
            ids.iter().all(|id| logs.lines().any(|l| l.starts_with(&format!("[{id}]")) && l.contains("tick 3 ")));
        if both { Ok(()) } else { Err(logs) }
    });
    assert!(s.logs("ticker").contains("FROM_IMAGE=yes"), "the image's env reaches the container");
    let mut live = runc_ids(&s.state);
    live.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(live, want, "runc runs exactly the two replicas");

    // A Wasm replica runs beside them on the same node.
    s.cli(&["deploy", wasm_p2("worker").to_str().unwrap_or_default(), "--name", "wasm-worker"]);
    s.wait_running("wasm-worker", 1);
    assert_eq!(s.running("ticker").len(), 2);
    let nodes = s.json("nodes");
    assert_eq!(nodes[0]["replicas"], 3, "{nodes:?}");

    // A fork bomb stops at the pids limit; the other replicas keep running.
    let bomb = "i=0; while [ $i -lt 2000 ]; do sleep 600 & i=$((i+1)); done; echo spawned $i";
    s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "forkbomb",
        "--memory",
        "512Mi",
        "--restart",
        "never",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        bomb,
    ]);
    wait_for(Duration::from_secs(60), "the fork bomb to hit the pids limit", || {
        let logs = s.logs("forkbomb");
        if logs.contains("can't fork") { Ok(()) } else { Err(logs) }
    });
    assert!(!s.logs("forkbomb").contains("spawned 2000"));
    let before = s.logs("ticker").matches("tick").count();
    wait_for(Duration::from_secs(30), "the ticker to keep ticking", || {
        let now = s.logs("ticker").matches("tick").count();
        if now > before + 4 { Ok(()) } else { Err(format!("{before} → {now}")) }
    });
    assert_eq!(s.running("ticker").len(), 2);

    // The docker-save import runs too, and the whiteout layer hid /etc/removed.
    s.cli(&[
        "deploy",
        "--image",
        "bbdocker:v1",
        "--name",
        "lister",
        "--restart",
        "never",
        "--arg",
        "/bin/ls",
        "--arg",
        "/etc",
    ]);
    wait_for(Duration::from_secs(60), "lister to exit", || {
        let r = s.replicas("lister");
        if r.iter().any(|r| r["state"] == "exited") { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let logs = s.logs("lister");
    assert!(logs.contains("stdout added") && logs.contains("stdout motd"), "{logs}");
    assert!(!logs.contains("stdout removed"), "the whiteout must hide /etc/removed: {logs}");

    // A container that exits 3 is restarted with growing backoff.
    s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "crasher",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "echo boom; exit 3",
    ]);
    wait_for(Duration::from_secs(60), "crasher to restart twice", || {
        let r = s.replicas("crasher");
        let ok = r.iter().any(|r| r["restarts"].as_u64().unwrap_or(0) >= 2 && r["exit_code"] == 3);
        if ok { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let logs = s.logs("crasher");
    assert!(logs.contains("stdout boom"), "{logs}");
    assert!(logs.contains("restarting after exit status 3 (backoff 250ms)"), "{logs}");
    assert!(logs.contains("restarting after exit status 3 (backoff 500ms)"), "{logs}");

    // A container that allocates past its memory limit is OOM-killed and says so.
    s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "hog",
        "--memory",
        "16Mi",
        "--restart",
        "never",
        "--arg",
        "/bin/dd",
        "--arg",
        "if=/dev/zero",
        "--arg",
        "of=/dev/null",
        "--arg",
        "bs=64M",
        "--arg",
        "count=1",
    ]);
    let hog = wait_for(Duration::from_secs(60), "hog to be OOM-killed", || {
        let r = s.replicas("hog");
        match r.iter().find(|r| r["state"] == "failed") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("{r:?}")),
        }
    });
    let reason = hog["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("OOMKilled: memory limit of 16Mi exceeded"), "{hog}");
    let describe = s.cli(&["describe", "deployment", "hog"]);
    assert!(describe.contains("OOMKilled"), "{describe}");

    // Delete everything: no container, mount or cgroup stays.
    let mut all_ids = ids.clone();
    for d in ["lister", "crasher", "hog", "forkbomb"] {
        all_ids.extend(s.replicas(d).iter().filter_map(|r| r["id"].as_str().map(str::to_owned)));
    }
    for d in ["ticker", "lister", "crasher", "hog", "forkbomb", "wasm-worker"] {
        s.cli(&["delete", d]);
    }
    let data = s.dir.path().join("node");
    wait_for(Duration::from_secs(30), "every container, mount and cgroup to be gone", || {
        let left = runc_ids(&s.state);
        let mounts = mounts_under(&data);
        let cgroups: Vec<PathBuf> = all_ids.iter().flat_map(|id| cgroups_of(id)).collect();
        let bundles: Vec<_> = std::fs::read_dir(data.join("containers/run")).into_iter().flatten().flatten().collect();
        if left.is_empty() && mounts.is_empty() && cgroups.is_empty() && bundles.is_empty() {
            Ok(())
        } else {
            Err(format!("runc: {left:?}, mounts: {mounts:?}, cgroups: {cgroups:?}, bundles: {}", bundles.len()))
        }
    });
}

/// Addresses reserved by host-local under the node's data dir.
fn reserved_addresses(s: &Setup) -> Vec<String> {
    std::fs::read_dir(s.dir.path().join("node/containers/cni/skiff"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_restarted_node_daemon_adopts_its_containers_and_removes_the_unwanted() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    // A node grace longer than the restart: the scheduler keeps the replicas on
    // the node rather than replacing them.
    let mut s = Setup::start_with(Some(NetNs::new()), &["--node-grace", "15s"]);
    let (oci, _) = build_images(s.dir.path());
    s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    // `image:` in a manifest resolves like --image. The keeper ticks and, told
    // to stop, says so and would take 3 s to end: its 1 s grace cuts that short.
    let ticker = "trap 'echo stopping on TERM; sleep 3; echo too late' TERM; \
                  i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    let manifest = s.dir.path().join("apps.yaml");
    let yaml = format!(
        "name: keeper\nimage: busybox:latest\nreplicas: 2\nstop_grace_period: 1s\nargs: [/bin/sh, -c, {ticker:?}]\n\
         ---\nname: goner\nimage: busybox:latest\nargs: [/bin/sleep, \"3600\"]\n"
    );
    std::fs::write(&manifest, yaml).expect("manifest");
    s.cli(&["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let keepers = sorted(s.wait_running("keeper", 2));
    let goner = s.wait_running("goner", 1).remove(0);
    // `running` is reported as the run starts, a moment before runc has the process.
    let pids: Vec<u64> = wait_for(Duration::from_secs(30), "both keepers' processes", || {
        let pids: Vec<u64> = keepers.iter().filter_map(|id| container_pid(&s.state, id)).collect();
        let goner_runs = container_pid(&s.state, &goner).is_some();
        if pids.len() == 2 && goner_runs { Ok(pids) } else { Err(format!("{pids:?}, goner runs: {goner_runs}")) }
    });

    // SIGKILL the daemon: its containers outlive it. The goner is deleted while
    // no daemon runs.
    if let Some(mut n) = s.node.take() {
        n.kill();
    }
    assert_eq!(runc_ids(&s.state).len(), 3, "containers outlive a killed daemon");
    s.cli(&["delete", "goner"]);
    s.start_node();

    // The keepers are adopted (same containers, same processes, still ticking
    // into their logs); the goner's container and everything it held go.
    let data = s.dir.path().join("node");
    wait_for(Duration::from_secs(30), "the keepers adopted and the goner removed", || {
        let running = sorted(s.running("keeper"));
        let live = sorted(runc_ids(&s.state));
        let now: Vec<u64> = keepers.iter().filter_map(|id| container_pid(&s.state, id)).collect();
        let bundles = sorted(
            std::fs::read_dir(data.join("containers/run"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        );
        let goner_left = Path::new(&format!("/run/netns/skiff-{goner}")).exists() || !cgroups_of(&goner).is_empty();
        let (mounts, reserved) = (mounts_under(&data), reserved_addresses(&s));
        if running == keepers
            && live == keepers
            && now == pids
            && bundles == keepers
            && !goner_left
            && mounts.len() == 2
            && reserved.len() == 2
        {
            Ok(())
        } else {
            Err(format!(
                "scheduler: {running:?}, runc: {live:?}, pids {now:?} (were {pids:?}), bundles {bundles:?}, \
                 goner left: {goner_left}, mounts: {mounts:?}, reserved: {reserved:?}"
            ))
        }
    });
    wait_for(Duration::from_secs(30), "ticks in the logs after the adoption", || {
        let logs = s.logs("keeper");
        let resumed = keepers.iter().all(|id| {
            let mine: Vec<&str> = logs.lines().filter(|l| l.starts_with(&format!("[{id}]"))).collect();
            let adopted = mine.iter().position(|l| l.contains("adopted the running container (pid "));
            adopted.is_some_and(|i| mine[i..].iter().any(|l| l.contains("stdout tick")))
        });
        if resumed { Ok(()) } else { Err(logs) }
    });
    assert_eq!(s.running("keeper").len(), 2, "nothing duplicated");

    // Deleted: SIGTERM first, SIGKILL after the spec's 1 s grace (not the 3 s
    // the trap wanted); nothing stays.
    s.cli(&["delete", "keeper"]);
    wait_for(Duration::from_secs(30), "containers, mounts, namespaces and addresses to be gone", || {
        let (left, mounts, reserved) = (runc_ids(&s.state), mounts_under(&data), reserved_addresses(&s));
        let netns: Vec<&String> =
            keepers.iter().filter(|id| Path::new(&format!("/run/netns/skiff-{id}")).exists()).collect();
        let cgroups: Vec<PathBuf> = keepers.iter().flat_map(|id| cgroups_of(id)).collect();
        if left.is_empty() && mounts.is_empty() && reserved.is_empty() && netns.is_empty() && cgroups.is_empty() {
            Ok(())
        } else {
            Err(format!("runc: {left:?}, mounts: {mounts:?}, reserved: {reserved:?}, netns: {netns:?}, {cgroups:?}"))
        }
    });
    for id in &keepers {
        let log = std::fs::read_to_string(data.join("logs").join(id).join("current.log")).unwrap_or_default();
        assert!(log.contains("stopping on TERM"), "SIGTERM came first: {log}");
        assert!(!log.contains("too late"), "SIGKILL came after the 1s grace: {log}");
    }
}

/// SIGTERM to the node daemon and waits for it to exit; its log.
fn stop_node(s: &mut Setup) -> String {
    let mut n = s.node.take().expect("the node runs");
    let pid = n.pid().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|st| st.success()), "kill -TERM {pid}");
    wait_for(Duration::from_secs(60), "the node to exit after SIGTERM", || {
        if n.alive() { Err(n.log_tail(5)) } else { Ok(()) }
    });
    std::fs::read_to_string(s.dir.path().join("node.log")).unwrap_or_default()
}

/// Item 6 of issue 16: a `skiff node` stopped cleanly leaves its containers
/// running and says so; started again it adopts them. With
/// `--stop-containers-on-exit` a clean stop removes everything they held.
#[test]
fn a_node_stopped_cleanly_keeps_its_containers_unless_told_to_stop_them() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let mut s = Setup::start_with(Some(NetNs::new()), &["--node-grace", "15s"]);
    let (oci, _) = build_images(s.dir.path());
    s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    s.cli(&["deploy", "--image", "busybox", "--name", "kept", "--arg", "/bin/sleep", "--arg", "3600"]);
    let id = s.wait_running("kept", 1).remove(0);
    let pid = wait_for(Duration::from_secs(30), "the container's process", || {
        container_pid(&s.state, &id).ok_or_else(|| "not yet".to_string())
    });

    let log = stop_node(&mut s);
    let last: Vec<&str> = log.lines().rev().take(5).collect();
    assert!(last.iter().any(|l| l.contains("left 1 container(s) running")), "the last lines say so: {last:?}");
    assert_eq!(container_pid(&s.state, &id), Some(pid), "the container outlives a clean stop");

    s.start_node();
    wait_for(Duration::from_secs(30), "the container adopted", || {
        let logs = s.logs("kept");
        if logs.contains("adopted the running container") { Ok(()) } else { Err(logs) }
    });
    assert_eq!(container_pid(&s.state, &id), Some(pid));

    // Told to stop its containers on exit, a clean stop leaves nothing.
    stop_node(&mut s);
    s.node_args.push("--stop-containers-on-exit".into());
    s.start_node();
    wait_for(Duration::from_secs(30), "the container adopted again", || {
        let logs = s.logs("kept");
        if logs.matches("adopted the running container").count() >= 2 { Ok(()) } else { Err(logs) }
    });
    let log = stop_node(&mut s);
    let data = s.dir.path().join("node");
    let (left, mounts, reserved) = (runc_ids(&s.state), mounts_under(&data), reserved_addresses(&s));
    let netns = Path::new(&format!("/run/netns/skiff-{id}")).exists();
    let (cgroups, alive) = (cgroups_of(&id), Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        left.is_empty() && mounts.is_empty() && reserved.is_empty() && !netns && cgroups.is_empty() && !alive,
        "runc: {left:?}, mounts: {mounts:?}, reserved: {reserved:?}, netns: {netns}, cgroups: {cgroups:?}, \
         process alive: {alive}\n{log}"
    );
}

#[test]
fn host_ports_are_published_held_once_per_node_and_host_network_works() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let s = Setup::in_netns();
    let Some(ns) = s._netns.as_ref() else { panic!("no namespace") };
    let (oci, _) = build_images(s.dir.path());
    s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    let web = |port: u16| {
        format!("mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p {port} -h /www")
    };
    let get = |url: &str| ns.exec(&["curl", "-sS", "--max-time", "3", url]);

    // Published: reachable at the node's port 8081 on loopback.
    let script = web(8080);
    s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "web",
        "--publish",
        "8081:8080",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        &script,
    ]);
    let id = s.wait_running("web", 1).remove(0);
    let page = wait_for(Duration::from_secs(30), "the page at 127.0.0.1:8081", || get("http://127.0.0.1:8081/"));
    assert_eq!(page.trim(), format!("hello from {id}"));

    // A second replica on this one node would need the same port: it waits.
    s.cli(&["scale", "web", "2"]);
    wait_for(Duration::from_secs(30), "the second replica to stay pending for the port", || {
        let r = s.replicas("web");
        let pending = r.iter().any(|r| {
            r["state"] == "pending" && r["reason"].as_str().is_some_and(|x| x.contains("1 host port 8081 in use"))
        });
        if pending { Ok(()) } else { Err(format!("{r:?}")) }
    });
    assert_eq!(s.running("web"), std::slice::from_ref(&id));
    // `-o wide` tells where the replica answers and what it uses.
    wait_for(Duration::from_secs(30), "the wide table to show the port and the memory", || {
        let wide = s.cli(&["get", "replicas", "-o", "wide"]);
        let header: Vec<&str> = wide.lines().next().unwrap_or("").split_whitespace().collect();
        let row: Vec<&str> = wide.lines().find(|l| l.starts_with(&id)).unwrap_or("").split_whitespace().collect();
        let col = |name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i).copied());
        let memory = col("MEMORY").unwrap_or("-");
        if col("PORTS") == Some("127.0.0.1:8081->8080/tcp") && (memory.ends_with("Ki") || memory.ends_with("Mi")) {
            Ok(())
        } else {
            Err(wide)
        }
    });

    // network: host: the container's port is the node's; no namespace of its own.
    let manifest = s.dir.path().join("hostnet.yaml");
    let yaml = format!(
        "name: hostnet\nimage: busybox:latest\nnetwork: host\nports: [{{container_port: 8090}}]\nargs: [/bin/sh, -c, {:?}]\n",
        web(8090)
    );
    std::fs::write(&manifest, yaml).expect("manifest");
    s.cli(&["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let host_id = s.wait_running("hostnet", 1).remove(0);
    let page = wait_for(Duration::from_secs(30), "the page at 127.0.0.1:8090", || get("http://127.0.0.1:8090/"));
    assert_eq!(page.trim(), format!("hello from {host_id}"));
    assert!(!Path::new(&format!("/run/netns/skiff-{host_id}")).exists());

    // Deleted: the port forwarding goes with the containers.
    s.cli(&["delete", "web"]);
    s.cli(&["delete", "hostnet"]);
    wait_for(Duration::from_secs(30), "containers and the port forwarding to be gone", || {
        let left = runc_ids(&s.state);
        let rules = ns.exec(&["iptables-save"]).unwrap_or_default();
        let forwarded: Vec<&str> = rules.lines().filter(|l| l.contains("8081")).collect();
        if left.is_empty() && forwarded.is_empty() {
            Ok(())
        } else {
            Err(format!("runc: {left:?}, rules: {forwarded:?}"))
        }
    });
    assert!(get("http://127.0.0.1:8081/").is_err(), "nothing answers at the port any more");
}

#[test]
fn containers_get_their_own_address_on_the_node_bridge() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let mut s = Setup::in_netns();
    let Some(ns) = s._netns.as_ref() else { panic!("no namespace") };
    let (oci, _) = build_images(s.dir.path());
    s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    // The process starts connected: the node connects the network while runc
    // creates the container, which waits for it.
    let web = "[ -e /sys/class/net/eth0 ] && echo eth0 there at start; \
               mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";
    s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "web",
        "--replicas",
        "2",
        "--memory",
        "32Mi",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        web,
    ]);
    let ids = s.wait_running("web", 2);

    // Each replica says its address in its log; each serves its own page there.
    let addresses: Vec<(String, String)> = wait_for(Duration::from_secs(30), "both addresses in the logs", || {
        let logs = s.logs("web");
        let found: Vec<(String, String)> = ids
            .iter()
            .filter_map(|id| {
                let line = logs.lines().find(|l| l.starts_with(&format!("[{id}]")) && l.contains("network: eth0 "))?;
                let cidr = line.rsplit("network: eth0 ").next()?;
                Some((id.clone(), cidr.split('/').next()?.to_string()))
            })
            .collect();
        if found.len() == 2 { Ok(found) } else { Err(logs) }
    });
    assert_ne!(addresses[0].1, addresses[1].1);
    wait_for(Duration::from_secs(30), "both to say eth0 was there at their start", || {
        let logs = s.logs("web");
        let said = |id: &String| logs.lines().any(|l| l.starts_with(&format!("[{id}]")) && l.contains("eth0 there"));
        if ids.iter().all(said) { Ok(()) } else { Err(logs) }
    });
    for (id, ip) in &addresses {
        assert!(ip.starts_with("10.89."), "{ip}");
        let page = wait_for(Duration::from_secs(30), &format!("the page of {id} at {ip}"), || {
            // curl, not busybox wget: Debian's busybox-static wget crashes here.
            ns.exec(&["curl", "-sS", "--max-time", "3", &format!("http://{ip}:8080/")])
        });
        assert_eq!(page.trim(), format!("hello from {id}"));
    }

    // Deleted: the namespaces go and the addresses are released.
    s.cli(&["delete", "web"]);
    let ipam = s.dir.path().join("node/containers/cni/skiff");
    wait_for(Duration::from_secs(30), "containers, namespaces and addresses to be released", || {
        let left = runc_ids(&s.state);
        let netns: Vec<&String> =
            ids.iter().filter(|id| Path::new(&format!("/run/netns/skiff-{id}")).exists()).collect();
        let reserved: Vec<String> = std::fs::read_dir(&ipam)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        if left.is_empty() && netns.is_empty() && reserved.is_empty() {
            Ok(())
        } else {
            Err(format!("runc: {left:?}, netns: {netns:?}, reserved: {reserved:?}"))
        }
    });

    // One masquerade rule for the subnet while the node runs; it added the
    // rule, so it takes it along when it stops.
    let masquerade = || -> Vec<String> {
        let rules = ns.exec(&["iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING"]).unwrap_or_default();
        rules.lines().filter(|l| l.contains("-s 10.89.0.0/16") && l.contains("MASQUERADE")).map(str::to_owned).collect()
    };
    assert_eq!(masquerade().len(), 1, "{:?}", masquerade());
    let node = s.node.as_mut().expect("the node");
    let _ = Command::new("kill").args(["-TERM", &node.pid().to_string()]).output();
    wait_for(Duration::from_secs(30), "the stopped node's masquerade rule to be gone", || {
        if !node.alive() && masquerade().is_empty() { Ok(()) } else { Err(format!("{:?}", masquerade())) }
    });
}

/// Probes of a container: a TCP startup probe, an HTTP readiness probe to its
/// address and an exec liveness probe; readiness lost and regained, and a failed
/// liveness restarts it with the reason.
#[test]
fn container_probes_gate_readiness_and_restart_on_liveness() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let s = Setup::in_netns();
    let (oci, _) = build_images(s.dir.path());
    s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    let manifest = s.dir.path().join("web.yaml");
    let yaml = "name: web\nimage: busybox:latest\nreplicas: 1\nresources: {memory: 32Mi}\n\
        args: [/bin/sh, -c, 'mkdir -p /www && echo ok > /www/healthz && touch /tmp/ok && exec httpd -f -p 8080 -h /www']\n\
        probes:\n  startup: {tcp: {port: 8080}, period_seconds: 1, failure_threshold: 10}\n  \
        readiness: {http: {path: /healthz, port: 8080}, period_seconds: 1, failure_threshold: 1}\n  \
        liveness: {exec: [test, -f, /tmp/ok], period_seconds: 1, failure_threshold: 2}\n";
    std::fs::write(&manifest, yaml).expect("manifest");
    s.cli(&["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let state = |want: &str| -> Value {
        wait_for(Duration::from_secs(60), &format!("web to be {want}"), || {
            let r = s.replicas("web");
            match r.first() {
                Some(r) if r["state"] == want => Ok(r.clone()),
                _ => Err(format!("{r:?}")),
            }
        })
    };
    let r = state("ready");
    let id = r["id"].as_str().unwrap_or_default().to_string();

    // Its page gone: not ready (no longer available), with the reason.
    runc(&s.state, &["exec", &id, "rm", "/www/healthz"]);
    let r = state("running");
    assert!(r["reason"].as_str().unwrap_or_default().contains("readiness probe failed"), "{r}");
    assert!(r["reason"].as_str().unwrap_or_default().contains("answered 404"), "{r}");
    runc(&s.state, &["exec", &id, "touch", "/www/healthz"]);
    state("ready");

    // Liveness fails: restarted (counted, with the reason), then ready again.
    runc(&s.state, &["exec", &id, "rm", "/tmp/ok"]);
    let r = wait_for(Duration::from_secs(60), "a restart after the liveness probe failed", || {
        let r = s.replicas("web");
        match r.first() {
            Some(r) if r["restarts"].as_u64().unwrap_or(0) >= 1 && r["state"] == "ready" => Ok(r.clone()),
            _ => Err(format!("{r:?}")),
        }
    });
    assert_eq!(r["id"], id.as_str(), "the same replica restarted");
    let logs = s.logs("web");
    assert!(logs.contains("liveness probe failed: test -f /tmp/ok exited with 1"), "{logs}");
}

/// A cluster in a network namespace of its own whose node's ingress listens on
/// every address of it, so that containers reach it on the bridge.
fn bridged_ingress_setup() -> Setup {
    let mut s = Setup::in_netns();
    s.node = None;
    s.node_args.extend(["--ingress".to_string(), "0.0.0.0:0".to_string()]);
    let _ = std::fs::remove_file(s.dir.path().join("node/ingress.addr"));
    s.start_node();
    s
}

/// Containers behind the ingress: a busybox httpd deployment with an HTTP port is
/// ready once it listens, reached through the node's ingress by Host and by path
/// (both replicas answer), and a container reaches it by name through
/// `SKIFF_INGRESS`.
#[test]
fn containers_serve_http_through_the_ingress() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let s = bridged_ingress_setup();
    let Some(ns) = s._netns.as_ref() else { panic!("no namespace") };
    let ingress = read_when_ready(&s.dir.path().join("node/ingress.addr"));
    let (oci, _) = build_images(s.dir.path());
    s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    let web = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";
    s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "web",
        "--replicas",
        "2",
        "--memory",
        "32Mi",
        "--cpu",
        "100m",
        "--port",
        "8080",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        web,
    ]);
    let ids: Vec<String> = wait_for(Duration::from_secs(60), "2 ready replicas of web", || {
        let r: Vec<String> = s
            .replicas("web")
            .into_iter()
            .filter(|r| r["state"] == "ready")
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        if r.len() == 2 { Ok(r) } else { Err(format!("{:?}", s.replicas("web"))) }
    });

    // Each started with a core's CPU weight and quota (#17: at its 100m it
    // lost the CPU to the runtime's own processes while it started); once
    // ready, they are its request's again: shares 102, 10 ms of each 100 ms.
    for id in &ids {
        wait_for(Duration::from_secs(30), &format!("{id}'s CPU back at its 100m"), || {
            let read = |file: &str| -> Vec<String> {
                cgroups_of(id)
                    .iter()
                    .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
                    .map(|q| q.trim().to_string())
                    .collect()
            };
            let (shares, quotas) = (read("cpu.shares"), read("cpu.cfs_quota_us"));
            let back = !quotas.is_empty() && quotas.iter().all(|q| q == "10000") && shares.iter().all(|s| s == "102");
            if back { Ok(()) } else { Err(format!("shares {shares:?}, quota {quotas:?}")) }
        });
    }

    // By Host and by path prefix, every replica answers over a run of requests.
    for how in [vec!["-H", "Host: web.skiff.local"], vec![]] {
        let url = if how.is_empty() { format!("{ingress}/d/web/") } else { format!("{ingress}/") };
        let mut seen = std::collections::BTreeSet::new();
        wait_for(Duration::from_secs(30), &format!("both replicas through {url}"), || {
            let mut args = vec!["curl", "-sS", "--fail", "--max-time", "3"];
            args.extend(how.iter().copied());
            args.push(&url);
            let page = ns.exec(&args)?;
            seen.insert(page.trim().to_string());
            let want: std::collections::BTreeSet<String> = ids.iter().map(|id| format!("hello from {id}")).collect();
            if seen == want { Ok(()) } else { Err(format!("seen {seen:?}")) }
        });
    }

    // A container calls web by name through the ingress it is handed.
    // busybox nc stops at the end of its input: the sleep keeps it reading the
    // answer until the server closes.
    let call = "hp=${SKIFF_INGRESS#http://}; while true; do \
        (printf 'GET / HTTP/1.0\\r\\nHost: web.skiff.local\\r\\n\\r\\n'; sleep 3) | nc ${hp%:*} ${hp##*:}; done";
    s.cli(&[
        "deploy", "--image", "busybox", "--name", "client", "--memory", "16Mi", "--arg", "/bin/sh", "--arg", "-c",
        "--arg", call,
    ]);
    wait_for(Duration::from_secs(60), "the client's call by name to be answered", || {
        let logs = s.logs("client");
        if logs.contains("200 OK") && logs.contains("hello from web-") { Ok(()) } else { Err(logs) }
    });

    // Scaled to one: the stopped replica leaves routing, and every request still
    // gets an answer from the one left.
    s.cli(&["scale", "web", "1"]);
    wait_for(Duration::from_secs(60), "web to have one replica", || {
        let r = s.replicas("web");
        if r.len() == 1 && r[0]["state"] == "ready" { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let left = s.replicas("web")[0]["id"].as_str().unwrap_or_default().to_string();
    for _ in 0..5 {
        let page = ns
            .exec(&["curl", "-sS", "--fail", "--max-time", "3", "-H", "Host: web.skiff.local", &format!("{ingress}/")])
            .unwrap_or_else(|e| panic!("a request after scaling down failed: {e}"));
        assert_eq!(page.trim(), format!("hello from {left}"));
    }

    // `deploy --wait` of a container that serves means ready and routable, not
    // just running (#16 item 4): this server takes two seconds to listen, as a
    // real one warming up does, and the first request right after --wait
    // returns must be answered. (Before, --wait said `2/2 replicas running`
    // while the ingress answered 503 for seconds.)
    let slow = "sleep 2; mkdir -p /www && echo slow $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";
    let out = s.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "slow",
        "--replicas",
        "2",
        "--memory",
        "32Mi",
        "--port",
        "8080",
        "--wait",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        slow,
    ]);
    for _ in 0..4 {
        let page = ns
            .exec(&["curl", "-sS", "--fail", "--max-time", "3", "-H", "Host: slow.skiff.local", &format!("{ingress}/")])
            .unwrap_or_else(|e| {
                panic!("a request right after `deploy --wait` was not served: {e}\n--wait printed: {out}")
            });
        assert!(page.starts_with("slow slow-"), "{page}");
    }
    assert!(out.contains("2/2 replicas ready (routable)"), "--wait printed: {out}");
}

/// `isolation: namespace` for containers (#20): the ingress names a calling
/// container by its bridge address. A container of an isolated namespace is
/// answered 403 for another namespace's deployment, by `NAME.NS.skiff.local`,
/// `NAME.skiff.local` (default), `/d/NS/NAME/` or the hop headers one ingress
/// passes to another, and reaches its own namespace's; a container of a
/// namespace without isolation calls anyone; turning isolation off lets the
/// calls through at once (the endpoints table carries it). The isolated
/// namespace's containers hold no `CAP_NET_RAW` (no ARP of their own, so no
/// other container's address).
#[test]
fn an_isolated_namespaces_containers_reach_only_their_own_through_the_ingress() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let s = bridged_ingress_setup();
    let Some(netns) = s._netns.as_ref() else { panic!("no namespace") };
    let (oci, _) = build_images(s.dir.path());
    s.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    s.cli(&["namespace", "create", "iso", "--isolation", "namespace"]);
    s.cli(&["namespace", "create", "open"]);
    for ns in ["default", "iso", "open"] {
        let web = format!("mkdir -p /www && echo web of {ns} > /www/index.html && exec httpd -f -p 8080 -h /www");
        let args = ["--name", "web", "--memory", "32Mi", "--port", "8080", "--arg", "/bin/sh", "--arg", "-c"];
        s.cli(&[&["-n", ns, "deploy", "--image", "busybox"], &args[..], &["--arg", &web]].concat());
    }
    for ns in ["iso", "open"] {
        let args = ["--name", "client", "--memory", "16Mi", "--arg", "/bin/sleep", "--arg", "3600"];
        s.cli(&[&["-n", ns, "deploy", "--image", "busybox"], &args[..]].concat());
    }
    // One HTTP/1.0 request from inside `ns`'s client container to the ingress
    // it is handed (`SKIFF_INGRESS`, the bridge gateway), with `headers`: the
    // whole answer. busybox nc ends with its input: the sleep keeps it reading.
    let call = |ns: &str, path: &str, headers: &str| -> Result<String, String> {
        let script = format!(
            "hp=${{SKIFF_INGRESS#http://}}; (printf 'GET {path} HTTP/1.0\\r\\n{headers}\\r\\n'; sleep 2) | nc ${{hp%:*}} ${{hp##*:}}"
        );
        let out = s.cli_in(&["-n", ns, "exec", "client", "--", "sh", "-c", &script]);
        if out.ok && out.stdout.starts_with("HTTP/1.") {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    };
    let host = |h: &str| format!("Host: {h}\\r\\n");
    let status = |a: &str| a.split_whitespace().nth(1).unwrap_or_default().to_string();
    // Served: routed once ready (the web replicas and the table catch up).
    let served = |ns: &str, path: &str, headers: &str, body: &str| {
        wait_for(Duration::from_secs(60), &format!("{ns}'s client served {body:?} by {path} {headers}"), || {
            let a = call(ns, path, headers)?;
            if status(&a) == "200" && a.contains(body) { Ok(()) } else { Err(a) }
        })
    };
    // Within its namespace, an isolated namespace's container is served.
    served("iso", "/", &host("web.iso.skiff.local"), "web of iso");
    served("iso", "/d/iso/web/", "", "web of iso");
    // The others are there and answer an open namespace's container.
    served("open", "/", &host("web.iso.skiff.local"), "web of iso");
    served("open", "/", &host("web.skiff.local"), "web of default");
    served("open", "/d/open/web/", "", "web of open");

    // Across namespaces, default included and however the request names the
    // deployment: 403 with one line naming both namespaces.
    let forged = "Host: x\\r\\nx-skiff-hop: 1\\r\\nx-skiff-deployment: open/web\\r\\n".to_string();
    for (path, headers, target) in [
        ("/", host("web.open.skiff.local"), "open"),
        ("/", host("web.skiff.local"), "default"),
        ("/d/open/web/", String::new(), "open"),
        ("/", forged, "open"),
    ] {
        let a = call("iso", path, &headers).unwrap_or_else(|e| panic!("{path} {headers}: {e}"));
        assert_eq!(status(&a), "403", "{path} {headers}: {a}");
        let line = format!("may call only namespace iso's deployments, not web of namespace {target}");
        assert!(a.contains("namespace iso is isolated") && a.contains(&line), "{path} {headers}: {a}");
        assert!(!a.contains(&format!("web of {target}")), "{path} {headers}: {a}");
    }
    // Counted on the node, under the caller's namespace.
    let node = read_when_ready(&s.dir.path().join("node/node.addr"));
    let metrics = netns.exec(&["curl", "-sS", "--max-time", "5", &format!("{node}/metrics")]).expect("node metrics");
    let refused = r#"skiff_node_namespace_isolation_refusals_total{namespace="iso",runtime="container"} 4"#;
    assert!(metrics.contains(refused), "{metrics}");

    // Isolation off: the next call across is served, containers running as they were.
    s.cli(&["namespace", "set-quota", "iso", "--isolation", "none"]);
    served("iso", "/", &host("web.open.skiff.local"), "web of open");
    served("iso", "/", &host("web.skiff.local"), "web of default");

    // An isolated namespace's container (started isolated) has no CAP_NET_RAW,
    // so no packets of its own making (arping's ARP, with which it could claim
    // another container's address); an open namespace's has it, as Docker's.
    let arping = |ns: &str| {
        s.cli_in(&["-n", ns, "exec", "client", "--", "/bin/busybox", "arping", "-c", "1", "-I", "eth0", "10.89.0.1"])
    };
    let a = arping("iso");
    assert!(!a.ok && a.stderr.contains("not permitted"), "arping in iso: {}{}", a.stdout, a.stderr);
    let a = arping("open");
    assert!(a.ok && a.stdout.contains("Received 1 response"), "arping in open: {}{}", a.stdout, a.stderr);
    // ICMP echo sockets for every group, so that iputils' ping works without it.
    let range = s.cli(&["-n", "iso", "exec", "client", "--", "cat", "/proc/sys/net/ipv4/ping_group_range"]);
    assert_eq!(range.split_whitespace().collect::<Vec<_>>(), ["0", "2147483647"]);
}

/// A registry (Debian's docker-registry) started by a test on a loopback port;
/// killed by its pid on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let root = dir.join("registry");
        std::fs::create_dir_all(&root).expect("registry dir");
        let config = dir.join("registry.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            root.display()
        );
        std::fs::write(&config, yaml).expect("registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry ({e}); `make deps-test` installs it"));
        let r = Registry { child, port };
        wait_for(Duration::from_secs(30), "the registry to answer", || {
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/v2/")])
                .output()
                .map_err(|e| e.to_string())?;
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code == "200" { Ok(()) } else { Err(format!("status {code}")) }
        });
        r
    }

    /// `skopeo copy oci-archive:ARCHIVE docker://127.0.0.1:PORT/NAME`.
    fn push(&self, archive: &Path, name: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://127.0.0.1:{}/{name}", self.port))
            .output()
            .unwrap_or_else(|e| panic!("cannot run skopeo ({e}); `make deps-test` installs it"));
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registry pulls: an image pushed to a loopback registry with skopeo and never
/// imported runs from `localhost:PORT/busybox:1`; its layers land in the node's
/// cache; a tag the registry does not have fails the replica with the reason.
#[test]
fn nodes_pull_images_from_a_loopback_registry() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let s = Setup::new();
    let (oci, _) = build_images(s.dir.path());
    let registry = Registry::start(s.dir.path());
    registry.push(&oci, "busybox:1");
    let image = format!("localhost:{}/busybox:1", registry.port);
    s.cli(&[
        "deploy",
        "--image",
        &image,
        "--name",
        "pulled",
        "--memory",
        "16Mi",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "cat /etc/motd /etc/added; test -e /etc/removed || echo whiteout honoured; sleep 600",
    ]);
    wait_for(Duration::from_secs(60), "the pulled image's output", || {
        let logs = s.logs("pulled");
        let ok = ["hello from the image", "new", "whiteout honoured"].iter().all(|w| logs.contains(w));
        if ok { Ok(()) } else { Err(logs) }
    });
    assert!(!s.cli(&["image", "ls"]).contains("busybox"), "the image was pulled by the node, not imported");
    let layers: Vec<String> = std::fs::read_dir(s.dir.path().join("node/containers/layers"))
        .expect("layer cache")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(layers.len(), 2, "both layers unpacked once into the cache: {layers:?}");

    let missing = format!("localhost:{}/busybox:nosuch", registry.port);
    s.cli(&["deploy", "--image", &missing, "--name", "missing"]);
    let r = wait_for(Duration::from_secs(60), "the missing image's replica to fail", || {
        let r = s.replicas("missing");
        match r.first() {
            Some(r) if r["state"] == "failed" => Ok(r.clone()),
            _ => Err(format!("{r:?}")),
        }
    });
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cannot pull the manifest of") && reason.contains("nosuch"), "{reason}");
}

/// A scheduler on the host and node daemons each in a network namespace of its
/// own, joined by a bridge: separate hosts, each with its own CNI bridge and
/// subnet (per namespace) and its own data dir (host-local's reservations and
/// runc's state live under it, so no two nodes share them). Fields drop in
/// order: the nodes, then the janitors clean up after them, then the
/// namespaces, the bridge, the server and the files.
struct Hosts {
    nodes: Vec<Proc>,
    _janitors: Vec<Janitor>,
    netns: Vec<skiff_tests::NetNs>,
    _bridge: Bridge,
    _server: Proc,
    url: String,
    dir: TempDir,
}

impl Hosts {
    /// Nodes `n1`..`nN`, each allowed `cpu 1, memory 512Mi`, once all are ready
    /// and run containers.
    fn new(n: usize) -> Hosts {
        require_root_and_runc();
        // Declared in the reverse of the order they must go in, should a step
        // below fail before `Hosts` holds them.
        let dir = TempDir::new("containers-hosts");
        let net = net_prefix();
        let bridge = Bridge::new(&net_name("skc"), &format!("{net}.1/24"));
        let (server, url, token) = bridge.start_server(&dir.path().join("server"), &[], &dir.path().join("server.log"));
        let (mut netns, mut janitors, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
        for i in 1..=n {
            let ns = skiff_tests::NetNs::on_bridge(&net_name("skc"), &bridge, &format!("{net}.{}/24", i + 1));
            let data = dir.path().join(format!("node-n{i}"));
            janitors.push(Janitor { state: data.join("containers/state"), data: data.clone() });
            let listen = format!("{}:0", ns.ip.as_deref().unwrap_or_default());
            let name = format!("n{i}");
            let args = [
                "node",
                "--server",
                &url,
                "--token",
                &token,
                "--name",
                &name,
                "--cpu",
                "1",
                "--memory",
                "512Mi",
                "--data-dir",
                data.to_str().unwrap_or_default(),
                "--listen",
                &listen,
                "--container-network",
                "bridge",
            ];
            // nsenter, not `ip netns exec`: only the network is the node's own;
            // the mounts (and /run/netns) stay the machine's, where the janitor
            // finds them.
            let enter = format!("--net=/run/netns/{}", ns.name);
            netns.push(ns);
            nodes.push(Proc::start_in(
                &name,
                &["nsenter", &enter, "--"],
                &args,
                &dir.path().join(format!("{name}.log")),
            ));
            read_when_ready(&data.join("node.addr"));
        }
        let hosts = Hosts { nodes, _janitors: janitors, netns, _bridge: bridge, _server: server, url, dir };
        wait_for(Duration::from_secs(30), &format!("{n} ready nodes that run containers"), || {
            let nodes = hosts.json("nodes");
            let ready = nodes
                .iter()
                .filter(|n| {
                    n["state"] == "ready" && n["runtimes"].as_array().is_some_and(|r| r.contains(&json!("container")))
                })
                .count();
            if ready == n { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
        hosts
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    fn json(&self, kind: &str) -> Vec<Value> {
        get_json(self.dir.path(), &self.url, kind)
    }

    /// The replicas of `deployment` as (id, node, state).
    fn replicas(&self, deployment: &str) -> Vec<(String, String, String)> {
        self.json("replicas")
            .into_iter()
            .filter(|r| r["deployment"] == deployment)
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("id"), s("node"), s("state"))
            })
            .collect()
    }

    /// (id, node) of every replica of `deployment`, once there are `n` and all run.
    fn wait_running(&self, deployment: &str, n: usize) -> Vec<(String, String)> {
        wait_for(Duration::from_secs(60), &format!("{n} running replicas of {deployment} and no other"), || {
            let r = self.replicas(deployment);
            if r.len() == n && r.iter().all(|(_, _, state)| state == "running") {
                Ok(r.into_iter().map(|(id, node, _)| (id, node)).collect())
            } else {
                Err(format!("{r:?}"))
            }
        })
    }

    /// The address of node `nI` on the bridge.
    fn address(&self, node: &str) -> String {
        let i: usize = node.trim_start_matches('n').parse().unwrap_or_else(|_| panic!("no node {node}"));
        self.netns[i - 1].ip.clone().unwrap_or_default()
    }

    /// Waits until the page at `node`'s port 8081, fetched from the host over
    /// the bridge, is `want` (a replica stopped on that node may answer for a
    /// moment after the scheduler forgot it: it has a grace period to stop in).
    fn wait_page(&self, node: &str, want: &str) {
        let url = format!("http://{}:8081/", self.address(node));
        wait_for(Duration::from_secs(30), &format!("{want:?} at {url}"), || {
            let out =
                Command::new("curl").args(["-sS", "--max-time", "3", &url]).output().map_err(|e| e.to_string())?;
            let page = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && page == want {
                Ok(())
            } else {
                Err(format!("{page} {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        });
    }
}

/// Three hosts: a busybox httpd deployment publishing port 8081 gets one replica
/// on each (the port is held once per node), and each node's 8081 serves the
/// page of the replica it runs. Then a node daemon dies (SIGKILL) and its replica
/// is run again on the one node with the port free. With a host port and three
/// nodes a fourth place does not exist, so the deployment is scaled to two first:
/// the replacement can only land on the node that scale-down emptied.
#[test]
fn httpd_spreads_over_three_hosts_and_a_dead_hosts_replica_moves() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let mut c = Hosts::new(3);
    let (oci, _) = build_images(c.dir.path());
    c.cli(&["image", "import", oci.to_str().unwrap_or_default()]);
    let web = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";
    c.cli(&[
        "deploy",
        "--image",
        "busybox",
        "--name",
        "web",
        "--replicas",
        "3",
        "--memory",
        "32Mi",
        "--publish",
        "8081:8080",
        // httpd as pid 1 ignores SIGTERM: a replica scaled away ends at SIGKILL.
        "--stop-grace-period",
        "1s",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        web,
    ]);
    let placed = c.wait_running("web", 3);
    let on: std::collections::BTreeSet<&str> = placed.iter().map(|(_, node)| node.as_str()).collect();
    assert_eq!(on, ["n1", "n2", "n3"].into(), "one replica per node: {placed:?}");
    for (id, node) in &placed {
        c.wait_page(node, &format!("hello from {id}"));
    }

    // Outbound traffic leaves a node masqueraded as the node: another host
    // answers a container (it would send a reply for a 10.89.x.x source into
    // its own bridge).
    let ((from, from_node), (to, to_node)) = (&placed[0], &placed[1]);
    let state = c.dir.path().join(format!("node-{from_node}/containers/state"));
    let get =
        format!("/bin/busybox printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 3 {} 8081", c.address(to_node));
    wait_for(Duration::from_secs(30), &format!("{from} on {from_node} to fetch the page of {to} on {to_node}"), || {
        let page = runc(&state, &["exec", from, "/bin/sh", "-c", &get]);
        if page.contains(&format!("hello from {to}")) { Ok(()) } else { Err(page) }
    });

    c.cli(&["scale", "web", "2"]);
    let placed = c.wait_running("web", 2);
    let free = ["n1", "n2", "n3"].into_iter().find(|n| placed.iter().all(|(_, on)| on != n)).expect("a free node");
    let (lost, victim) = placed[0].clone();
    let (kept, kept_on) = placed[1].clone();
    let i: usize = victim.trim_start_matches('n').parse().expect("node number");
    c.nodes[i - 1].kill();
    let moved =
        wait_for(Duration::from_secs(60), &format!("{lost} of the dead {victim} to be replaced on {free}"), || {
            let r = c.replicas("web");
            let ids: Vec<&str> = r.iter().map(|(id, _, _)| id.as_str()).collect();
            let new =
                r.iter().find(|(id, node, state)| id != &lost && id != &kept && node == free && state == "running");
            match new {
                Some((id, _, _)) if r.len() == 2 && !ids.contains(&lost.as_str()) => Ok(id.clone()),
                _ => Err(format!("{r:?}")),
            }
        });
    c.wait_page(free, &format!("hello from {moved}"));
    c.wait_page(&kept_on, &format!("hello from {kept}"));
    let nodes = c.json("nodes");
    let dead = nodes.iter().find(|n| n["name"] == victim.as_str()).map(|n| n["state"].clone());
    assert_eq!(dead, Some(json!("down")), "{nodes:?}");
}

/// The escapes an untrusted container would try, as one shell script: each
/// attempt prints `held NAME: …` when it fails and `ESCAPE NAME: …` when it
/// works. Only busybox and /bin/ptrace are in the image, so applets not linked
/// in /bin are called as `busybox APPLET`. Writes that would change the host
/// write back the value already there, so even a success changes nothing.
const ESCAPES: &str = r#"
b=/bin/busybox
try() { name=$1; shift; if out=$("$@" 2>&1); then echo "ESCAPE $name:" $out; else echo "held $name:" $out; fi; }
try proc-sys sh -c 'v=$(cat /proc/sys/kernel/panic); echo $v > /proc/sys/kernel/panic'
try core-pattern sh -c 'cat /proc/sys/kernel/core_pattern > /tmp/cp && cat /tmp/cp > /proc/sys/kernel/core_pattern'
found=
for p in /proc/1/root /proc/self/root /proc/self/cwd /proc/self/fd/* /proc/1/fd/* /proc/[0-9]*/root /proc/[0-9]*/cwd; do
  for q in "$p$MARKER" "$p/../../../../../../../../..$MARKER"; do
    if cat "$q" 2>/dev/null; then echo "ESCAPE host-file: read through $q"; found=1; fi
  done
done
[ -n "$found" ] || echo "held host-file: $MARKER unreadable through" \
  "/proc/*/root, /proc/*/cwd, /proc/self/fd/*, /proc/1/fd/*"
try mount $b mount -t tmpfs escape /tmp
try remount-proc-sys $b mount -o remount,rw /proc/sys
try cgroup-mount sh -c "mkdir -p /tmp/cg && $b mount -t cgroup -o memory cgroup /tmp/cg"
try unshare $b unshare -m -U -r true
try cgroup-limit sh -c 'for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do
  [ -e $f ] && { echo max > $f; exit; }; done; echo no pids.max; exit 1'
echo 'not a module' > /tmp/m.ko
try insmod $b insmod /tmp/m.ko
try host-proc-mem $b head -c 16 /proc/$HOST_PID/mem
try signal-host kill -0 $HOST_PID
try nsenter-host $b nsenter -t $HOST_PID -m -p true
try ptrace-host /bin/ptrace $HOST_PID
try ptrace-child /bin/ptrace child
set -- $($b awk 'NR > 2 && $2 == 0 { print $1, $2; exit }' /proc/partitions)
$b mknod /tmp/disk b ${1:-8} ${2:-0}
try raw-disk sh -c "$b head -c 512 /tmp/disk > /dev/null"
echo attempts done
"#;

/// A busybox image whose config sets `WorkingDir` to `workdir` (the image, not
/// the deployment, picks the directory runc starts the process in), with
/// `extra` executables (path in the image, bytes) in a second layer.
pub(crate) fn busybox_image_with(dir: &Path, file: &str, workdir: &str, extra: &[(&str, Vec<u8>)]) -> PathBuf {
    let (l1, _) = layers();
    let mut layers = vec![l1];
    if !extra.is_empty() {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in extra {
            add(&mut b, path, tar::EntryType::Regular, 0o755, bytes, None);
        }
        layers.push(b.into_inner().expect("extra layer"));
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha(l))).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": workdir },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("config");
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|l| {
            let digest = format!("sha256:{}", sha(l));
            json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": l.len() })
        })
        .collect();
    let (config_type, config_digest) = ("application/vnd.oci.image.config.v1+json", format!("sha256:{}", sha(&config)));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
        "layers": descriptors,
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)),
            "size": manifest.len(),
        }],
    }))
    .expect("index");
    let blob = |b: &[u8]| (format!("blobs/sha256/{}", sha(b)), b.to_vec());
    let mut files = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".into(), index),
        blob(&manifest),
        blob(&config),
    ];
    files.extend(layers.iter().map(|l| blob(l)));
    let path = dir.join(file);
    write_tar(&path, &files);
    path
}

/// `ptrace PID`: PTRACE_ATTACH to PID, then detach; says what happened.
/// `ptrace child` does it to a child of its own, which the kernel lets a parent
/// trace without privileges. Busybox has no tracer, so the test compiles this
/// (statically: the image has no libc).
const PTRACE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>
int main(int argc, char **argv) {
    pid_t pid = 0;
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        pid = fork();
        if (pid == 0) {
            pause();
            return 0;
        }
    } else if (argc > 1) {
        pid = atoi(argv[1]);
    }
    int ok = ptrace(PTRACE_ATTACH, pid, 0, 0) == 0;
    int err = errno;
    if (ok) {
        waitpid(pid, 0, 0);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, 0, 0);
    }
    if (!ok) {
        printf("attach %d: %s\n", pid, strerror(err));
        return 1;
    }
    printf("attached to %d\n", pid);
    return 0;
}
"#;

/// The static `ptrace` program, built with the system's C compiler.
fn ptrace_program(dir: &Path) -> Vec<u8> {
    let (src, bin) = (dir.join("ptrace.c"), dir.join("ptrace"));
    std::fs::write(&src, PTRACE_C).expect("write ptrace.c");
    let out = Command::new("cc")
        .arg("-static")
        .arg("-O")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc ({e}); the escape test builds a static ptrace program"));
    assert!(out.status.success(), "cc -static ptrace.c failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&bin).expect("read the ptrace program")
}

/// Container escapes that have hit real runtimes, tried from inside a busybox
/// container, all fail: writing to /proc/sys (kernel.panic, kernel.core_pattern),
/// reading a file of the host through /proc/*/root, /proc/*/cwd and /proc/self/fd,
/// mounting (tmpfs, a fresh cgroup hierarchy, /proc/sys read-write), new
/// namespaces, raising its own pids limit, loading a kernel module, reaching a
/// host process (this test's pid: its memory, a signal, its namespaces,
/// ptrace) and reading the host's disk through a device node made with mknod.
/// ptrace is refused even on the container's own child, which the kernel alone
/// would allow a parent: the seccomp profile refuses the call itself. And an
/// image whose working directory is a descriptor leaked by runc does not start.
#[test]
fn container_escapes_fail() {
    if !require_root("containers (runc, overlayfs, network namespaces)") {
        return;
    }
    let s = Setup::new();
    let ptrace = ptrace_program(s.dir.path());
    let image = busybox_image_with(s.dir.path(), "escaper.tar", "/", &[("bin/ptrace", ptrace)]);
    s.cli(&["image", "import", image.to_str().unwrap_or_default(), "--name", "escaper:v1"]);
    let secret = format!("host-secret-{}", std::process::id());
    let marker = s.dir.path().join("host-secret");
    std::fs::write(&marker, &secret).expect("write the host's marker file");
    let panic_before = std::fs::read_to_string("/proc/sys/kernel/panic").expect("read kernel.panic");
    s.cli(&[
        "deploy",
        "--image",
        "escaper:v1",
        "--name",
        "escaper",
        "--memory",
        "32Mi",
        "--restart",
        "never",
        "--env",
        &format!("MARKER={}", marker.display()),
        "--env",
        &format!("HOST_PID={}", std::process::id()),
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        ESCAPES,
    ]);
    let logs = wait_for(Duration::from_secs(60), "the escape attempts to finish", || {
        let logs = s.logs("escaper");
        if logs.contains("attempts done") { Ok(logs) } else { Err(logs) }
    });
    eprintln!("{logs}");
    let attempts = [
        "proc-sys",
        "core-pattern",
        "host-file",
        "mount",
        "remount-proc-sys",
        "cgroup-mount",
        "unshare",
        "cgroup-limit",
        "insmod",
        "host-proc-mem",
        "signal-host",
        "nsenter-host",
        "ptrace-host",
        "ptrace-child",
        "raw-disk",
    ];
    for a in attempts {
        assert!(logs.contains(&format!("held {a}:")), "no `held {a}` line:\n{logs}");
    }
    assert!(!logs.contains("ESCAPE"), "an escape attempt worked:\n{logs}");
    assert!(!logs.contains(&secret), "the host's marker file was read:\n{logs}");
    // Refused, not merely malformed: the kernel never looked at the module.
    let insmod = logs.lines().find(|l| l.contains("held insmod:")).unwrap_or_default();
    assert!(insmod.contains("not permitted"), "{insmod}");
    // Refused by seccomp, not by the kernel's own rule (which lets a parent trace its child).
    let child = logs.lines().find(|l| l.contains("held ptrace-child:")).unwrap_or_default();
    assert!(child.contains("not permitted"), "{child}");
    let panic_after = std::fs::read_to_string("/proc/sys/kernel/panic").expect("read kernel.panic");
    assert_eq!(panic_before, panic_after);

    // CVE-2024-21626 ("Leaky Vessels"): an image whose working directory is a
    // descriptor runc leaked into the container (/proc/self/fd/N, open on the
    // host's /sys/fs/cgroup) reaches the host's root by `..`. Each such image
    // either does not start or starts where `..` stays inside the container.
    let leaky = r#"if cat ../../../../../../../..$MARKER; then echo "ESCAPE workdir: $(pwd)";
                   else echo "held workdir: $(pwd)"; fi"#;
    let fds = 3..=9;
    for fd in fds.clone() {
        let workdir = format!("/proc/self/fd/{fd}");
        let archive = busybox_image_with(s.dir.path(), &format!("leaky-{fd}.tar"), &workdir, &[]);
        let image = format!("leaky:fd{fd}");
        s.cli(&["image", "import", archive.to_str().unwrap_or_default(), "--name", &image]);
        s.cli(&[
            "deploy",
            "--image",
            &image,
            "--name",
            &format!("leaky-fd{fd}"),
            "--memory",
            "16Mi",
            "--restart",
            "never",
            "--env",
            &format!("MARKER={}", marker.display()),
            "--arg",
            "/bin/sh",
            "--arg",
            "-c",
            "--arg",
            leaky,
        ]);
    }
    for fd in fds {
        let name = format!("leaky-fd{fd}");
        let r = wait_for(Duration::from_secs(60), &format!("{name} to fail or exit"), || {
            let r = s.replicas(&name);
            match r.first() {
                Some(r) if r["state"] == "failed" || r["state"] == "exited" => Ok(r.clone()),
                _ => Err(format!("{r:?}")),
            }
        });
        let logs = s.logs(&name);
        eprintln!("{name}: {} {}\n{logs}", r["state"], r["reason"]);
        assert!(!logs.contains("ESCAPE") && !logs.contains(&secret), "{name} read the host's file:\n{logs}");
        if r["state"] == "exited" {
            assert!(logs.contains("held workdir:"), "{name} ran but did not try:\n{logs}");
        } else {
            // Refused for its working directory, not for some other reason.
            assert!(logs.contains(&format!("/proc/self/fd/{fd}")), "{name} failed otherwise:\n{logs}");
        }
    }
}
