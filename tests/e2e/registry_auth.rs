//! Private registries end to end: Debian's docker-registry on loopback with
//! htpasswd (bcrypt, written by apache2-utils' `htpasswd -B`), an image pushed
//! with skopeo using the credential, a scheduler and a container node as real
//! processes. Without a credential the replica waits, saying the registry
//! wants one; with a wrong password it says the registry refused it; with the
//! right one it runs. The password never shows in `registry ls`, `secret ls`,
//! the node's log or the scheduler's store. (Bearer-token registries: the
//! challenge and the token exchange are tested against an axum registry and
//! token server in `node/src/container/registry.rs`; docker-registry does
//! token auth only with an external token server.)

use crate::containers::{Janitor, build_images};
use serde_json::Value;
use skiff_tests::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A scheduler and one container node (loopback networking) on this machine.
/// Fields drop in order: the node, the server, then the janitor cleans up
/// what the node left (containers, mounts), and the files go last.
pub(crate) struct Site {
    _node: Proc,
    _server: Proc,
    _janitor: Janitor,
    pub(crate) url: String,
    pub(crate) node_data: PathBuf,
    pub(crate) server_data: PathBuf,
    pub(crate) dir: TempDir,
}

impl Site {
    /// `server_args` and `node_args` go after the usual ones; the node keeps
    /// its data in `node_data` (a fresh directory by default).
    pub(crate) fn start(tag: &str, server_args: &[&str], node_args: &[&str], node_data: Option<PathBuf>) -> Site {
        assert!(is_root(), "this test runs containers and needs root");
        let dir = TempDir::new(tag);
        let node_data = node_data.unwrap_or_else(|| dir.path().join("node"));
        let janitor = Janitor { state: node_data.join("containers/state"), data: node_data.clone() };
        let (server, url, token) = loopback_server(dir.path(), server_args);
        let server_data = dir.path().join("server");
        let data = node_data.to_str().unwrap_or_default().to_string();
        let args: Vec<&str> = [
            &[
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
                &data,
                "--listen",
                "127.0.0.1:0",
                "--container-network",
                "loopback",
            ],
            node_args,
        ]
        .concat();
        let node = Proc::start("node", &args, &dir.path().join("node.log"));
        read_when_ready(&node_data.join("node.addr"));
        let site = Site { _node: node, _server: server, _janitor: janitor, url, node_data, server_data, dir };
        wait_for(Duration::from_secs(30), "the node to run containers", || {
            let nodes = site.get("nodes");
            let ok = nodes.iter().any(|n| {
                n["state"] == "ready" && n["runtimes"].as_array().is_some_and(|r| r.iter().any(|x| x == "container"))
            });
            if ok { Ok(()) } else { Err(format!("{nodes:?}")) }
        });
        site
    }

    /// `skiff ARGS` with `stdin` on standard input.
    pub(crate) fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> Cli {
        let mut child = Command::new(skiff_bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("SKIFF_SERVER", &self.url)
            .env("SKIFF_TOKEN", token_for(&self.url).unwrap_or_default())
            .envs(ca_for(&self.url).map(|ca| ("SKIFF_CA_FILE", ca)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run skiff");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        let out = child.wait_with_output().expect("wait for skiff");
        Cli {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.dir.path(), &self.url, args)
    }

    pub(crate) fn cli_in(&self, args: &[&str]) -> Cli {
        skiff_tests::cli_in(self.dir.path(), &self.url, args)
    }

    pub(crate) fn get(&self, kind: &str) -> Vec<Value> {
        get_json(self.dir.path(), &self.url, kind)
    }

    pub(crate) fn replicas(&self, deployment: &str) -> Vec<Value> {
        self.get("replicas").into_iter().filter(|r| r["deployment"] == deployment).collect()
    }

    /// The one replica of `deployment` once it is in `state`.
    pub(crate) fn wait_state(&self, deployment: &str, state: &str) -> Value {
        wait_for(Duration::from_secs(60), &format!("{deployment} {state}"), || {
            match self.replicas(deployment).first() {
                Some(r) if r["state"] == state => Ok(r.clone()),
                other => Err(format!("{other:?}")),
            }
        })
    }

    /// The node's `/metrics`.
    pub(crate) fn node_metrics(&self) -> String {
        let addr = read_when_ready(&self.node_data.join("node.addr"));
        http_get(&format!("{addr}/metrics")).expect("node metrics")
    }

    pub(crate) fn node_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// Debian's docker-registry on a free loopback port with htpasswd auth (one
/// user, bcrypt); killed by its pid on drop.
struct PrivateRegistry {
    child: std::process::Child,
    port: u16,
}

impl PrivateRegistry {
    fn start(dir: &Path, user: &str, password: &str) -> PrivateRegistry {
        let out = Command::new("htpasswd")
            .args(["-nbB", user, password])
            .output()
            .unwrap_or_else(|e| panic!("cannot run htpasswd ({e}); `make deps-test` installs apache2-utils"));
        assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
        let port = free_port();
        let root = dir.join("registry");
        std::fs::create_dir_all(&root).expect("registry dir");
        let config = dir.join("registry.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
            root.display(),
            htpasswd.display()
        );
        std::fs::write(&config, yaml).expect("registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry ({e}); `make deps-test` installs it"));
        let r = PrivateRegistry { child, port };
        // Up, and refusing anonymous calls.
        wait_for(Duration::from_secs(30), "the registry to answer", || {
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/v2/")])
                .output()
                .map_err(|e| e.to_string())?;
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code == "401" { Ok(()) } else { Err(format!("status {code}")) }
        });
        r
    }

    fn push(&self, archive: &Path, name: &str, creds: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", creds])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://127.0.0.1:{}/{name}", self.port))
            .output()
            .unwrap_or_else(|e| panic!("cannot run skopeo ({e}); `make deps-test` installs it"));
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_private_registry_pull_waits_for_the_credential_refuses_a_wrong_one_and_runs_with_it() {
    if !require_root("containers (runc, overlayfs)") {
        return;
    }
    const PASSWORD: &str = "correct-horse-battery";
    let site = Site::start("registry-auth", &[], &[], None);
    let registry = PrivateRegistry::start(site.dir.path(), "alice", PASSWORD);
    let (oci, _) = build_images(site.dir.path());
    registry.push(&oci, "team/busybox:1", &format!("alice:{PASSWORD}"));
    let host = format!("localhost:{}", registry.port);
    let image = format!("{host}/team/busybox:1");
    site.cli(&[
        "deploy",
        "--image",
        &image,
        "--name",
        "private",
        "--memory",
        "16Mi",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "cat /etc/motd; sleep 600",
    ]);

    // No credential: the pull is refused, and the replica says what to do.
    let reason = |r: &Value| r["reason"].as_str().unwrap_or_default().to_string();
    let r =
        wait_for(Duration::from_secs(60), "the refusal on the replica", || match site.replicas("private").first() {
            Some(r) if reason(r).contains("requires credentials") => Ok(r.clone()),
            other => Err(format!("{other:?}")),
        });
    assert!(
        reason(&r)
            .contains(&format!("registry {host} requires credentials; store them with `skiff registry login {host}")),
        "{r}"
    );
    assert_ne!(r["state"], "running", "{r}");

    // A wrong password: the registry refused it, and the replica says so.
    let out = site.cli_with_stdin(&["registry", "login", &host, "--username", "alice", "--password-stdin"], "wrong\n");
    assert!(out.ok, "login: {} {}", out.stdout, out.stderr);
    let r =
        wait_for(Duration::from_secs(60), "the wrong password's refusal", || match site.replicas("private").first() {
            Some(r) if reason(r).contains("refused the credentials") => Ok(r.clone()),
            other => Err(format!("{other:?}")),
        });
    assert!(reason(&r).contains(&format!("registry {host} refused the credentials for user alice")), "{r}");

    // The right one: the same replica pulls at its next try and runs.
    let before = r["id"].clone();
    let out = site.cli_with_stdin(
        &["registry", "login", &host, "--username", "alice", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.ok && out.stdout.contains("credential for user alice stored"), "{} {}", out.stdout, out.stderr);
    let r = site.wait_state("private", "running");
    assert_eq!(r["id"], before, "the waiting replica itself pulled once it had the credential");
    wait_for(Duration::from_secs(30), "the pulled image's output", || {
        let logs = site.cli_in(&["logs", "private"]).stdout;
        if logs.contains("hello from the image") { Ok(()) } else { Err(logs) }
    });

    // Shown as a host and a user, never a password; not a user's secret.
    let ls = site.cli(&["registry", "ls"]);
    assert!(ls.contains(&host) && ls.contains("alice"), "{ls}");
    assert!(!ls.contains(PASSWORD), "{ls}");
    assert!(!site.cli(&["secret", "ls"]).contains("registry"), "registry credentials are not listed as secrets");
    let rm = site.cli_in(&["secret", "rm", &format!("registry:{host}")]);
    assert!(!rm.ok, "a registry credential was deleted as a secret: {}", rm.stdout);
    assert!(!site.node_log().contains(PASSWORD), "the node logged the password");
    let db = std::fs::read(site.server_data.join("state.db")).expect("state.db");
    let wal = std::fs::read(site.server_data.join("state.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()),
            "the store holds the password in clear"
        );
    }

    // Logged out: listed no more, and a second logout says there is none.
    let out = site.cli(&["registry", "logout", &host]);
    assert!(out.contains("credential removed"), "{out}");
    assert!(!site.cli(&["registry", "ls"]).contains(&host));
    let again = site.cli_in(&["registry", "logout", &host]);
    assert!(!again.ok && again.stderr.contains("no credential is stored for registry"), "{}", again.stderr);
    let bad = site.cli_with_stdin(&["registry", "login", "myhost", "-u", "alice", "--password-stdin"], "x\n");
    assert!(!bad.ok && bad.stderr.contains("is not one an image reference can start with"), "{}", bad.stderr);
}
