//! API authentication: every route but the open ones refuses a call without a
//! token, read-only tokens only read, revoked tokens stop working, and `skiff dev`
//! sets up the CLI run in its directory.

use skiff_tests::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

/// `METHOD path` on the server at `url` with an optional bearer token and a JSON
/// body: (status, body).
pub fn call(url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let hostport = url.trim_start_matches("http://").trim_start_matches("https://");
    let mut s = Conn::open(url).expect("connect to the server");
    // `/v1/watch` streams forever: its head is all a test needs.
    s.tcp().set_read_timeout(Some(std::time::Duration::from_secs(3))).expect("set a read timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {hostport}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut buf = Vec::new();
    if path == "/v1/watch" {
        // A stream that keeps sending: its head is all a test needs.
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    } else {
        buf = s.read_all().unwrap_or_default();
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// One route of the API as its description (`GET /v1/openapi.json`) names it,
/// with a sample path.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: String,
    /// The path as described, `/v1/nodes/{name}`.
    pub route: String,
    /// The path with its parameters filled in.
    pub path: String,
    /// Takes no token (`security: [{}]`).
    pub open: bool,
}

impl Route {
    fn read(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }
    /// A node's own routes: registration, heartbeat, assignments (cordon,
    /// uncordon and drain, also under a node's path, are an admin's).
    fn node_self(&self) -> bool {
        matches!(
            self.route.as_str(),
            "/v1/nodes/register" | "/v1/nodes/{name}/heartbeat" | "/v1/nodes/{name}/assignments"
        )
    }
}

/// Every route of the API, from its own description: routes and description
/// are one list in the server (`http::api`), so a route cannot be added without
/// this test calling it. `{name}` is filled with `name`.
pub fn routes(url: &str, token: &str, name: &str) -> Vec<Route> {
    let (status, body) = call(url, "GET", "/v1/openapi.json", Some(token), "");
    assert_eq!(status, 200, "GET /v1/openapi.json: {body}");
    let api: serde_json::Value = serde_json::from_str(&body).expect("the description is JSON");
    let mut out = Vec::new();
    for (route, item) in api["paths"].as_object().expect("the description has paths") {
        let path = route
            .replace("{name}", name)
            .replace("{digest}", &format!("sha256:{}", "0".repeat(64)))
            .replace("{file}", "app.js")
            .replace("{id}", name)
            .replace("{host}", "registry.example.com")
            .replace("{ns}", "default");
        assert!(!path.contains('{'), "no sample for a parameter of {route}; add one here");
        for (method, op) in item.as_object().expect("a path item") {
            let open = op["security"] == serde_json::json!([{}]);
            out.push(Route { method: method.to_uppercase(), route: route.clone(), path: path.clone(), open });
        }
    }
    assert!(out.len() >= 38, "only {} routes described", out.len());
    out
}

#[test]
fn every_route_needs_a_token_and_read_only_tokens_only_read() {
    let mut dev = Dev::start("auth");
    let admin = std::fs::read_to_string(dev.data().join("admin-token")).expect("admin-token").trim().to_string();
    let mode = std::fs::metadata(dev.data().join("admin-token")).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "the admin token file is private");
    // Stored hashed only: the token itself is in no file of the data dir but its own.
    let db = std::fs::read(dev.data().join("state.db")).unwrap_or_default();
    assert!(!db.windows(admin.len()).any(|w| w == admin.as_bytes()), "the admin token is stored in clear");

    // The description (a read token's, as Kubernetes') lists every route.
    let routes = routes(&dev.url, &admin, "x");
    let described: Vec<(&str, &str)> = routes.iter().map(|r| (r.method.as_str(), r.route.as_str())).collect();
    for open in ["/healthz", "/", "/assets/{file}"] {
        assert!(routes.iter().any(|r| r.route == open && r.open), "{open} is not described as open: {described:?}");
    }
    // Open: the health check and the dashboard's page.
    assert_eq!(call(&dev.url, "GET", "/healthz", None, "").0, 200);
    assert_eq!(call(&dev.url, "GET", "/", None, "").0, 200);
    assert_eq!(call(&dev.url, "GET", "/assets/app.js", None, "").0, 200);

    // Everything else: 401 without a token or with a wrong one, one line saying
    // how to get one.
    for r in routes.iter().filter(|r| !r.open) {
        for token in [None, Some("ska_0000"), Some("")] {
            let (status, body) = call(&dev.url, &r.method, &r.path, token, "{}");
            assert_eq!(status, 401, "{} {} with {token:?} answered {status}: {body}", r.method, r.path);
            // A HEAD answer has no body.
            assert!(r.method == "HEAD" || (body.contains("admin-token") && !body.contains('\n')), "{body}");
        }
    }
    // A refusal reaches a client that writes its whole body before it reads
    // (as this `call` does), also when the body is large: the server reads and
    // drops it first. It reset such connections once (schemathesis saw a broken
    // connection instead of a 403 for a 1 MB heartbeat).
    let big = format!("{{\"replicas\":[{}{{}}]}}", "{},".repeat(400_000));
    assert_eq!(
        call(&dev.url, "POST", "/v1/nodes/x/heartbeat", Some(&admin), &big).0,
        403,
        "a 1.2 MB refused heartbeat"
    );
    assert_eq!(call(&dev.url, "PUT", "/v1/deployments/x", None, &big).0, 401, "a 1.2 MB call without a token");
    // An undescribed route is no route: 404 to the admin, and methods a described
    // path does not describe are 405.
    for path in ["/v1/no-such-route", "/v1/nodes/x/y", "/v1", "/v1/deployments/x/y/z"] {
        let (status, body) = call(&dev.url, "GET", path, Some(&admin), "");
        assert_eq!(status, 404, "GET {path} (undescribed) answered {status}: {body}");
    }
    for r in &routes {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            if routes.iter().any(|o| o.route == r.route && o.method == method) {
                continue;
            }
            let (status, body) = call(&dev.url, method, &r.path, Some(&admin), "{}");
            // The token is checked first, by route: the nodes' own are not the admin's.
            let refused = r.node_self() && status == 403;
            assert!(status == 405 || refused, "{method} {} (undescribed) answered {status}: {body}", r.route);
        }
    }

    // A read-only token: made by the CLI, shown once, listed by name.
    let made = dev.cli_ok(&["token", "create", "--read-only", "--name", "viewer"]);
    let ro = made.trim().to_string();
    assert!(ro.starts_with("skr_") && ro.len() > 40, "{made}");
    let ls = dev.cli_ok(&["token", "ls"]);
    assert!(ls.contains("viewer") && ls.contains("read-only") && ls.contains("admin"), "{ls}");
    assert!(!ls.contains(&ro), "token ls shows the token itself: {ls}");

    for r in routes.iter().filter(|r| !r.open) {
        let (status, body) = call(&dev.url, &r.method, &r.path, Some(&ro), "{}");
        if r.read() && !r.node_self() && !r.route.starts_with("/v1/tokens") {
            assert!(status != 401 && status != 403, "read-only {} {} refused ({status}): {body}", r.method, r.path);
        } else {
            assert_eq!(status, 403, "read-only {} {} answered {status}: {body}", r.method, r.path);
        }
    }
    // The CLI with the read-only token: reads work, changes are refused clearly.
    let ro_cli = |args: &[&str]| {
        let out = Command::new(skiff_bin())
            .args(args)
            .current_dir(dev.dir.path())
            .env("SKIFF_SERVER", &dev.url)
            .env("SKIFF_TOKEN", &ro)
            .stdin(Stdio::null())
            .output()
            .expect("run skiff");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(ro_cli(&["get", "nodes"]).0);
    let (ok, err) = ro_cli(&["secret", "create", "s", "--from-literal", "a=b"]);
    assert!(!ok && err.contains("read-only"), "{err}");

    // The admin token does everything; the node routes are the nodes' own.
    for r in &routes {
        let (status, body) = call(&dev.url, &r.method, &r.path, Some(&admin), "{}");
        if r.node_self() {
            assert_eq!(status, 403, "admin {} {} answered {status}: {body}", r.method, r.path);
        } else {
            assert!(status != 401 && status != 403, "admin {} {} refused ({status}): {body}", r.method, r.path);
        }
    }

    // Revoked: refused at once.
    dev.cli_ok(&["token", "rm", "viewer"]);
    assert_eq!(call(&dev.url, "GET", "/v1/nodes", Some(&ro), "").0, 401);
    let rm_admin = dev.cli(&["token", "rm", "admin"]);
    assert!(!rm_admin.ok && rm_admin.stderr.contains("cannot be removed"), "{}", rm_admin.stderr);

    // `skiff dev` configured the CLI run in its directory: no flag, no env.
    let out = Command::new(skiff_bin())
        .args(["get", "nodes"])
        .current_dir(dev.dir.path())
        .env_remove("SKIFF_TOKEN")
        .env_remove("SKIFF_SERVER")
        .env("HOME", dev.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Elsewhere, without the CA, the CLI says which CA the server showed.
    let elsewhere = TempDir::new("auth-elsewhere");
    let out = Command::new(skiff_bin())
        .args(["get", "nodes", "--server", &dev.url])
        .current_dir(elsewhere.path())
        .env_remove("SKIFF_TOKEN")
        .env("HOME", elsewhere.path())
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not trusted") && err.lines().count() == 1, "{err}");
    // ~/.config/skiff/ca.crt is the CA's fallback; then, without a token, the CLI
    // says how to get one.
    std::fs::create_dir_all(elsewhere.path().join(".config/skiff")).expect("mkdir");
    std::fs::copy(dev.data().join("ca.crt"), elsewhere.path().join(".config/skiff/ca.crt")).expect("copy the CA");
    let out = Command::new(skiff_bin())
        .args(["get", "nodes", "--server", &dev.url])
        .current_dir(elsewhere.path())
        .env_remove("SKIFF_TOKEN")
        .env("HOME", elsewhere.path())
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("admin-token") && err.lines().count() == 1, "{err}");
    // ~/.config/skiff/token is the fallback.
    std::fs::write(elsewhere.path().join(".config/skiff/token"), format!("{admin}\n")).expect("write token");
    let out = Command::new(skiff_bin())
        .args(["get", "nodes", "--server", &dev.url])
        .current_dir(elsewhere.path())
        .env_remove("SKIFF_TOKEN")
        .env("HOME", elsewhere.path())
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dev.proc.alive());
}

/// Starts `skiff node NAME` joining `url` with `join`, data in `dir/node-NAME`.
fn start_node(dir: &std::path::Path, url: &str, join: &str, name: &str) -> Proc {
    let data = dir.join(format!("node-{name}"));
    let _ = std::fs::remove_file(data.join("node.addr"));
    let args = [
        "node",
        "--server",
        url,
        "--token",
        join,
        "--name",
        name,
        "--cpu",
        "2",
        "--memory",
        "1Gi",
        "--data-dir",
        data.to_str().unwrap_or_default(),
        "--listen",
        "127.0.0.1:0",
    ];
    let p = Proc::start(name, &args, &dir.join(format!("node-{name}.log")));
    read_when_ready(&data.join("node.addr"));
    p
}

fn wait_ready(dir: &std::path::Path, url: &str, names: &[&str]) {
    wait_for(std::time::Duration::from_secs(30), &format!("nodes {names:?} ready"), || {
        let nodes = get_json(dir, url, "nodes");
        let ready = |n: &&str| nodes.iter().any(|x| x["name"] == *n && x["state"] == "ready");
        if names.iter().all(ready) { Ok(()) } else { Err(format!("{nodes:?}")) }
    });
}

#[test]
fn nodes_get_their_own_credentials_and_lose_them_when_removed() {
    let dir = TempDir::new("node-identity");
    let data = dir.path().join("server");
    let _server = Proc::start(
        "server",
        &["server", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap_or_default()],
        &dir.path().join("server.log"),
    );
    let url = server_ready(&data);
    let join = read_when_ready(&data.join("join-token"));
    let mut n1 = start_node(dir.path(), &url, &join, "n1");
    let _n2 = start_node(dir.path(), &url, &join, "n2");
    wait_ready(dir.path(), &url, &["n1", "n2"]);

    // Each node keeps its credential, private, and it is good for its own routes only.
    let cred_file = dir.path().join("node-n1/node-credential");
    let cred = read_when_ready(&cred_file);
    let mode = std::fs::metadata(&cred_file).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "the node credential file is private");
    assert!(cred.starts_with("skn_") && cred != join, "{cred}");
    assert_eq!(call(&url, "GET", "/v1/nodes/n1/assignments", Some(&cred), "").0, 200);
    assert_eq!(call(&url, "GET", "/v1/endpoints", Some(&cred), "").0, 200);
    // Every route of the description, named for n2: n1's credential gets only
    // registration, the endpoints table, blob downloads and activation; the join token
    // (its secret: the rest names the CA) only registration.
    let admin = read_when_ready(&data.join("admin-token"));
    let secret = join.split('.').next().unwrap_or_default();
    for r in routes(&url, &admin, "n2").iter().filter(|r| !r.open) {
        // An ingress asks for a deployment at zero to be started (any node's credential).
        let shared = ((r.route == "/v1/endpoints" || r.route == "/v1/blobs/{digest}") && r.read())
            || r.route.ends_with("/deployments/{name}/activate");
        for (who, token, allowed) in [
            ("n1's credential", cred.as_str(), r.route == "/v1/nodes/register" || shared),
            ("the join token", secret, r.route == "/v1/nodes/register"),
        ] {
            let (status, said) = call(&url, &r.method, &r.path, Some(token), "{}");
            if allowed {
                assert!(status != 401 && status != 403, "{who} on {} {}: {status} {said}", r.method, r.path);
            } else {
                assert_eq!(status, 403, "{who} on {} {}: {status} {said}", r.method, r.path);
            }
        }
    }
    for (method, path, body) in [
        ("GET", "/v1/nodes/n2/assignments", ""),
        ("POST", "/v1/nodes/n2/heartbeat", r#"{"capacity":{"cpu":"1","memory":"1Mi"},"replicas":[]}"#),
        ("GET", "/v1/deployments", ""),
        ("GET", "/v1/secrets", ""),
        ("PUT", "/v1/secrets/x", r#"{"data":{"a":"b"}}"#),
    ] {
        let (status, said) = call(&url, method, path, Some(&cred), body);
        assert_eq!(status, 403, "n1's credential on {method} {path}: {status} {said}");
    }
    // A node cannot register under another's name with its credential.
    let steal = r#"{"name":"n2","address":"http://127.0.0.1:9","labels":{},"capacity":{"cpu":"1","memory":"1Mi"},"runtimes":["wasm"]}"#;
    assert_eq!(call(&url, "POST", "/v1/nodes/register", Some(&cred), steal).0, 403);
    // The join token only registers.
    assert_eq!(call(&url, "GET", "/v1/nodes/n1/assignments", Some(secret), "").0, 403);
    assert_eq!(call(&url, "GET", "/v1/deployments", Some(secret), "").0, 403);

    // Replicas on both nodes.
    let worker = wasm_p2("worker");
    cli_ok(
        dir.path(),
        &url,
        &["deploy", worker.to_str().unwrap_or_default(), "--name", "w", "--replicas", "4", "--memory", "32Mi"],
    );
    let on = |node: &str| running(dir.path(), &url, "w").iter().filter(|(_, n)| n == node).count();
    wait_for(std::time::Duration::from_secs(60), "4 replicas running on both nodes", || {
        let r = running(dir.path(), &url, "w");
        if r.len() == 4 && on("n1") > 0 && on("n2") > 0 { Ok(()) } else { Err(format!("{r:?}")) }
    });

    // A restarted node daemon carries on with the credential it kept.
    n1.kill();
    n1 = start_node(dir.path(), &url, &join, "n1");
    wait_ready(dir.path(), &url, &["n1"]);
    wait_for(std::time::Duration::from_secs(60), "4 replicas running again", || {
        let r = running(dir.path(), &url, "w");
        if r.len() == 4 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    assert_eq!(read_when_ready(&cred_file), cred, "the restarted node joined anew instead of using its credential");
    assert_eq!(call(&url, "GET", "/v1/nodes/n1/assignments", Some(&cred), "").0, 200);

    // Removed: the old credential is refused at once and its replicas move to n2.
    n1.kill();
    let out = cli_ok(dir.path(), &url, &["node", "rm", "n1"]);
    assert!(out.contains("n1 removed"), "{out}");
    assert_eq!(call(&url, "GET", "/v1/nodes/n1/assignments", Some(&cred), "").0, 401);
    assert_eq!(
        call(
            &url,
            "POST",
            "/v1/nodes/n1/heartbeat",
            Some(&cred),
            r#"{"capacity":{"cpu":"1","memory":"1Mi"},"replicas":[]}"#
        )
        .0,
        401
    );
    let gone = get_json(dir.path(), &url, "nodes");
    assert!(!gone.iter().any(|n| n["name"] == "n1"), "{gone:?}");
    wait_for(std::time::Duration::from_secs(60), "4 replicas running on n2", || {
        let r = running(dir.path(), &url, "w");
        if r.len() == 4 && on("n2") == 4 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let missing = cli_in(dir.path(), &url, &["node", "rm", "n1"]);
    assert!(!missing.ok && missing.stderr.contains("not found"), "{}", missing.stderr);

    // Started again, its daemon finds its credential refused and joins anew with
    // the join token: a new credential.
    let _n1 = start_node(dir.path(), &url, &join, "n1");
    wait_ready(dir.path(), &url, &["n1"]);
    let fresh = wait_for(std::time::Duration::from_secs(30), "a new credential", || {
        let c = std::fs::read_to_string(&cred_file).unwrap_or_default().trim().to_string();
        if !c.is_empty() && c != cred { Ok(c) } else { Err(c) }
    });
    assert_eq!(call(&url, "GET", "/v1/nodes/n1/assignments", Some(&fresh), "").0, 200);
    assert_eq!(call(&url, "GET", "/v1/nodes/n1/assignments", Some(&cred), "").0, 401);
    // No deployment above its count at any point we look.
    let all = get_json(dir.path(), &url, "replicas");
    assert!(all.iter().filter(|r| r["deployment"] == "w").count() <= 4, "{all:?}");
}

/// Runs `skiff ARGS` with `env` and waits at most 30 s for it to end: (success,
/// stderr).
fn run_bounded(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = TempDir::new("bounded");
    let err_file = dir.path().join("stderr");
    let mut cmd = Command::new(skiff_bin());
    cmd.args(args)
        .env_remove("SKIFF_TOKEN")
        .env_remove("SKIFF_CA_FILE")
        .env_remove("SKIFF_CA_FINGERPRINT")
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run skiff");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`skiff {}` did not end within 30s ({other:?})", args.join(" "));
            }
        }
    };
    (status.success(), std::fs::read_to_string(&err_file).unwrap_or_default())
}

/// The last line of `stderr` that says `error:`.
fn error_line(stderr: &str) -> String {
    stderr.lines().rfind(|l| l.starts_with("error:")).unwrap_or_default().to_string()
}

#[test]
fn the_api_is_https_and_clients_trust_the_ca_by_its_fingerprint() {
    use sha2::Digest;
    let dir = TempDir::new("tls");
    let data = dir.path().join("server");
    let start = || {
        Proc::start(
            "server",
            &["server", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap_or_default()],
            &dir.path().join("server.log"),
        )
    };
    let mut server = start();
    let url = server_ready(&data);
    assert!(url.starts_with("https://"), "{url}");

    // Made at first start: the CA and the server certificate, keys private; the
    // join token names the CA by the SHA-256 of its certificate.
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(data.join(key)).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600), "{key} is private");
    }
    let ca_pem = std::fs::read_to_string(data.join("ca.crt")).expect("ca.crt");
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca.crt is a PEM certificate");
    let fingerprint = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&der)));
    let join = read_when_ready(&data.join("join-token"));
    assert_eq!(join.split_once('.').map(|(_, fp)| fp), Some(fingerprint.as_str()), "{join}");
    let secret = join.split('.').next().unwrap_or_default().to_string();
    // The server writes server.url before it prints the fingerprint: wait for the line.
    wait_for(std::time::Duration::from_secs(10), "the CA fingerprint in the server's output", || {
        let said = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        if said.contains(&format!("CA fingerprint: {fingerprint}")) { Ok(()) } else { Err(said) }
    });

    // A node joins over HTTPS with the join token, another with the bare secret
    // and --ca-fingerprint.
    let _n1 = start_node(dir.path(), &url, &join, "n1");
    let n2_data = dir.path().join("node-n2");
    let n2_args = [
        "node",
        "--server",
        &url,
        "--token",
        &secret,
        "--ca-fingerprint",
        &fingerprint,
        "--name",
        "n2",
        "--data-dir",
        n2_data.to_str().unwrap_or_default(),
        "--listen",
        "127.0.0.1:0",
    ];
    let _n2 = Proc::start("n2", &n2_args, &dir.path().join("node-n2.log"));
    wait_ready(dir.path(), &url, &["n1", "n2"]);

    // A wrong fingerprint: the node stops at once, one line naming both CAs.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let n3_data = dir.path().join("node-n3");
    let (ok, stderr) = run_bounded(
        &[
            "node",
            "--server",
            &url,
            "--token",
            &format!("{secret}.{wrong}"),
            "--name",
            "n3",
            "--data-dir",
            n3_data.to_str().unwrap_or_default(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let line = error_line(&stderr);
    assert!(!ok, "the node with a wrong fingerprint ran: {stderr}");
    assert!(
        line.contains(&format!("the server's CA is {fingerprint}, not the pinned {wrong}")),
        "the node's error: {line}\n{stderr}"
    );
    assert!(!get_json(dir.path(), &url, "nodes").iter().any(|n| n["name"] == "n3"), "n3 registered");

    // The CLI: a wrong fingerprint and no CA at all are refused in one line each.
    let admin = read_when_ready(&data.join("admin-token"));
    let env = [("SKIFF_SERVER", url.as_str()), ("SKIFF_TOKEN", admin.as_str())];
    let (ok, stderr) = run_bounded(&["--ca-fingerprint", &wrong, "get", "nodes"], &env);
    assert!(!ok && stderr.lines().count() == 1, "{stderr}");
    assert!(stderr.contains(&format!("the server's CA is {fingerprint}, not the pinned {wrong}")), "{stderr}");
    let (ok, stderr) = run_bounded(&["get", "nodes"], &env);
    assert!(!ok && stderr.lines().count() == 1, "{stderr}");
    assert!(stderr.contains(&format!("the server's CA {fingerprint} is not trusted")), "{stderr}");
    let (ok, stderr) = run_bounded(&["--ca-fingerprint", &fingerprint, "get", "nodes"], &env);
    assert!(ok, "{stderr}");

    // Plain HTTP to the TLS port is refused, with a line saying to use https.
    let plain = url.replace("https://", "http://");
    let (status, body) = call(&plain, "GET", "/v1/nodes", Some(&admin), "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(&format!("use {url}")), "{body}");
    let (ok, stderr) = run_bounded(&["get", "nodes"], &[("SKIFF_SERVER", plain.as_str()), ("SKIFF_TOKEN", &admin)]);
    assert!(!ok && stderr.contains("speaks HTTPS"), "{stderr}");

    // Restarted, the server keeps its CA, server certificate and join token.
    let cert = std::fs::read(data.join("server.crt")).expect("server.crt");
    server.kill();
    std::fs::remove_file(data.join("server.url")).expect("rm server.url");
    let _server = start();
    let url2 = server_ready(&data);
    assert_eq!(std::fs::read_to_string(data.join("ca.crt")).expect("ca.crt"), ca_pem, "the CA changed");
    assert_eq!(std::fs::read(data.join("server.crt")).expect("server.crt"), cert, "the certificate changed");
    assert_eq!(read_when_ready(&data.join("join-token")), join);
    let env2 = [("SKIFF_SERVER", url2.as_str()), ("SKIFF_TOKEN", admin.as_str())];
    let (ok, stderr) = run_bounded(&["--ca-fingerprint", &fingerprint, "get", "nodes"], &env2);
    assert!(ok, "the old fingerprint after a restart: {stderr}");
}

#[test]
fn plain_http_only_by_flag_and_with_a_warning() {
    let dir = TempDir::new("plain-http");
    let data = dir.path().join("server");
    let _server = Proc::start(
        "server",
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--insecure-plain-http",
        ],
        &dir.path().join("server.log"),
    );
    let url = server_ready(&data);
    assert!(url.starts_with("http://"), "{url}");
    wait_for(std::time::Duration::from_secs(10), "the plain-HTTP warning in the server's output", || {
        let said = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        if said.contains("warning: --insecure-plain-http") { Ok(()) } else { Err(said) }
    });
    let out = cli_ok(dir.path(), &url, &["get", "nodes"]);
    assert!(out.starts_with("NAME"), "{out}");
}
