//! Private registries end to end: Debian's docker-registry on loopback with
//! htpasswd (bcrypt, written by apache2-utils' `htpasswd -B`), an image pushed
//! with skopeo using the credential, a scheduler and a container node as real
//! processes. Without a credential the replica waits, saying the registry
//! wants one; with a wrong password it says the registry refused it; with the
//! right one it runs. The password never shows in `registry ls`, `secret ls`,
//! the node's log or the scheduler's store. The same three cases against
//! docker-registry in token mode: its `WWW-Authenticate: Bearer` challenge
//! sends the node to a token server (a small Python one the test starts,
//! issuing JWTs signed with `openssl` under a certificate the registry trusts),
//! which takes the credential as basic auth and answers a token scoped to the
//! repository.

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
    /// With htpasswd auth: one user, bcrypt.
    fn htpasswd(dir: &Path, user: &str, password: &str) -> PrivateRegistry {
        let out = Command::new("htpasswd")
            .args(["-nbB", user, password])
            .output()
            .unwrap_or_else(|e| panic!("cannot run htpasswd ({e}); `make deps-test` installs apache2-utils"));
        assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
        let auth = format!("  htpasswd:\n    realm: skiff-test\n    path: {}\n", htpasswd.display());
        PrivateRegistry::start(dir, &auth)
    }

    /// With token auth: tokens from `realm`, signed under the certificate `cert`.
    fn token(dir: &Path, realm: &str, cert: &Path) -> PrivateRegistry {
        let auth = format!(
            "  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            cert.display()
        );
        PrivateRegistry::start(dir, &auth)
    }

    /// docker-registry with `auth` (the YAML under `auth:`) on a free loopback port.
    fn start(dir: &Path, auth: &str) -> PrivateRegistry {
        let port = free_port();
        let root = dir.join("registry");
        std::fs::create_dir_all(&root).expect("registry dir");
        let config = dir.join("registry.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\nauth:\n{auth}",
            root.display(),
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

/// The three cases on `site` against a registry at `host` that holds
/// `team/busybox:1` and lets alice in with `password`: no credential, a wrong
/// one, the right one (the same replica then pulls and runs).
fn pull_cases(site: &Site, host: &str, password: &str) {
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
    let out = site.cli_with_stdin(&["registry", "login", host, "--username", "alice", "--password-stdin"], "wrong\n");
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
        &["registry", "login", host, "--username", "alice", "--password-stdin"],
        &format!("{password}\n"),
    );
    assert!(out.ok && out.stdout.contains("credential for user alice stored"), "{} {}", out.stdout, out.stderr);
    let r = site.wait_state("private", "running");
    assert_eq!(r["id"], before, "the waiting replica itself pulled once it had the credential");
    wait_for(Duration::from_secs(30), "the pulled image's output", || {
        let logs = site.cli_in(&["logs", "private"]).stdout;
        if logs.contains("hello from the image") { Ok(()) } else { Err(logs) }
    });
}

#[test]
fn a_private_registry_pull_waits_for_the_credential_refuses_a_wrong_one_and_runs_with_it() {
    if !require_root("containers (runc, overlayfs)") {
        return;
    }
    const PASSWORD: &str = "correct-horse-battery";
    let site = Site::start("registry-auth", &[], &[], None);
    let registry = PrivateRegistry::htpasswd(site.dir.path(), "alice", PASSWORD);
    let (oci, _) = build_images(site.dir.path());
    registry.push(&oci, "team/busybox:1", &format!("alice:{PASSWORD}"));
    let host = format!("localhost:{}", registry.port);
    pull_cases(&site, &host, PASSWORD);

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

/// What the registry in token mode and its token server agree on.
const TOKEN_SERVICE: &str = "skiff-test-registry";
const TOKEN_ISSUER: &str = "skiff-test-issuer";

/// A token server as registries use (Docker's token authentication): `GET
/// /token?service=&scope=repository:NAME:ACTIONS` answers a JWT (RS256, the
/// signing certificate in `x5c`) granting the asked actions to alice with her
/// password as basic auth, nothing to an anonymous caller, and 401 to a wrong
/// password. Python's standard library and `openssl` only.
const TOKEN_SERVER: &str = r#"
import base64, json, subprocess, sys, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

port, key, cert_der, user, password, issuer = sys.argv[1:7]
x5c = base64.b64encode(open(cert_der, "rb").read()).decode()
alice = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/token":
            self.send_error(404)
            return
        q = parse_qs(url.query)
        given = self.headers.get("Authorization")
        if given is not None and given != alice:
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        access = []
        for scope in q.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",") if given else []})
        now = int(time.time())
        claims = {"iss": issuer, "sub": user if given else "", "aud": q.get("service", [""])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
        signing = (b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())).encode()
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing,
                             capture_output=True, check=True).stdout
        token = signing.decode() + "." + b64u(sig)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
"#;

#[test]
fn a_bearer_token_registry_pull_waits_for_the_credential_refuses_a_wrong_one_and_runs_with_it() {
    if !require_root("containers (runc, overlayfs)") {
        return;
    }
    const PASSWORD: &str = "token-horse-battery";
    let site = Site::start("registry-token", &[], &[], None);
    let dir = site.dir.path();
    // The token signing key and its self-signed certificate, which the registry trusts.
    let (key, cert, der) = (dir.join("token.key"), dir.join("token.crt"), dir.join("token.der"));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let path = |p: &Path| p.to_str().unwrap_or_default().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=skiff-test-token",
        "-keyout",
        &path(&key),
        "-out",
        &path(&cert),
    ]);
    openssl(&["x509", "-in", &path(&cert), "-outform", "der", "-out", &path(&der)]);
    let script = dir.join("token_server.py");
    std::fs::write(&script, TOKEN_SERVER).expect("write the token server");
    let token_port = free_port().to_string();
    let _tokens = Proc::start_program(
        "token-server",
        "python3",
        &[&path(&script), &token_port, &path(&key), &path(&der), "alice", PASSWORD, TOKEN_ISSUER],
        &dir.join("token-server.log"),
    );
    let realm = format!("http://127.0.0.1:{token_port}/token");
    wait_for(Duration::from_secs(30), "the token server", || {
        http_get(&format!("{realm}?service={TOKEN_SERVICE}")).map(|_| ())
    });
    let registry = PrivateRegistry::token(dir, &realm, &cert);
    let (oci, _) = build_images(dir);
    registry.push(&oci, "team/busybox:1", &format!("alice:{PASSWORD}"));
    let host = format!("localhost:{}", registry.port);
    pull_cases(&site, &host, PASSWORD);
    let log = std::fs::read_to_string(dir.join("token-server.log")).unwrap_or_default();
    // The node asked for a pull token (skopeo's push asked for pull,push), and
    // the wrong password was refused by the token server itself.
    let pull_only = |l: &&str| l.contains("busybox%3Apull&") || l.contains("busybox%3Apull HTTP");
    assert!(log.lines().any(|l| pull_only(&l) && l.contains("\" 200 ")), "no pull token given:\n{log}");
    assert!(log.lines().any(|l| pull_only(&l) && l.contains("\" 401 ")), "no refusal by the token server:\n{log}");
}
