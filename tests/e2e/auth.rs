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
    let hostport = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport).expect("connect to the server");
    // `/v1/watch` streams forever: its head is all a test needs.
    s.set_read_timeout(Some(std::time::Duration::from_secs(3))).expect("set a read timeout");
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
        let _ = s.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Every route of the API, with a sample path: (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/nodes"),
    ("POST", "/v1/nodes/register"),
    ("GET", "/v1/nodes/dev"),
    ("POST", "/v1/nodes/dev/heartbeat"),
    ("GET", "/v1/nodes/dev/assignments"),
    ("GET", "/v1/endpoints"),
    ("GET", "/v1/deployments"),
    ("PUT", "/v1/deployments/x"),
    ("GET", "/v1/deployments/x"),
    ("DELETE", "/v1/deployments/x"),
    ("POST", "/v1/deployments/x/scale"),
    ("GET", "/v1/deployments/x/revisions"),
    ("POST", "/v1/deployments/x/rollback"),
    ("POST", "/v1/deployments/x/pause"),
    ("POST", "/v1/deployments/x/resume"),
    ("GET", "/v1/deployments/x/logs"),
    ("GET", "/v1/replicas"),
    ("GET", "/v1/events"),
    ("GET", "/v1/images"),
    ("POST", "/v1/images"),
    ("GET", "/v1/volumes"),
    ("DELETE", "/v1/volumes/x"),
    ("GET", "/v1/secrets"),
    ("PUT", "/v1/secrets/x"),
    ("DELETE", "/v1/secrets/x"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/x"),
    ("GET", "/v1/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"),
    ("PUT", "/v1/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"),
    ("GET", "/v1/watch"),
    ("GET", "/metrics"),
    ("GET", "/v1/prometheus/targets"),
    ("GET", "/v1/no-such-route"),
];

#[test]
fn every_route_needs_a_token_and_read_only_tokens_only_read() {
    let mut dev = Dev::start("auth");
    let admin = std::fs::read_to_string(dev.data().join("admin-token")).expect("admin-token").trim().to_string();
    let mode = std::fs::metadata(dev.data().join("admin-token")).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "the admin token file is private");
    // Stored hashed only: the token itself is in no file of the data dir but its own.
    let db = std::fs::read(dev.data().join("state.db")).unwrap_or_default();
    assert!(!db.windows(admin.len()).any(|w| w == admin.as_bytes()), "the admin token is stored in clear");

    // Open: the health check and the dashboard's page.
    assert_eq!(call(&dev.url, "GET", "/healthz", None, "").0, 200);
    assert_eq!(call(&dev.url, "GET", "/", None, "").0, 200);
    assert_eq!(call(&dev.url, "GET", "/assets/app.js", None, "").0, 200);

    // Everything else: 401 without a token or with a wrong one, one line saying
    // how to get one.
    for (method, path) in ROUTES {
        for token in [None, Some("ska_0000"), Some("")] {
            let (status, body) = call(&dev.url, method, path, token, "{}");
            assert_eq!(status, 401, "{method} {path} with {token:?} answered {status}: {body}");
            assert!(body.contains("admin-token") && !body.contains('\n'), "{body}");
        }
    }

    // A read-only token: made by the CLI, shown once, listed by name.
    let made = dev.cli_ok(&["token", "create", "--read-only", "--name", "viewer"]);
    let ro = made.trim().to_string();
    assert!(ro.starts_with("skr_") && ro.len() > 40, "{made}");
    let ls = dev.cli_ok(&["token", "ls"]);
    assert!(ls.contains("viewer") && ls.contains("read-only") && ls.contains("admin"), "{ls}");
    assert!(!ls.contains(&ro), "token ls shows the token itself: {ls}");

    for (method, path) in ROUTES {
        let (status, body) = call(&dev.url, method, path, Some(&ro), "{}");
        let read = *method == "GET" && !path.starts_with("/v1/tokens");
        let node_route = path.starts_with("/v1/nodes/dev/") || *path == "/v1/nodes/register";
        if read && !node_route {
            assert!(status != 401 && status != 403, "read-only {method} {path} refused ({status}): {body}");
        } else {
            assert_eq!(status, 403, "read-only {method} {path} answered {status}: {body}");
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
    for (method, path) in ROUTES {
        let (status, body) = call(&dev.url, method, path, Some(&admin), "{}");
        if path.starts_with("/v1/nodes/dev/") || *path == "/v1/nodes/register" {
            assert_eq!(status, 403, "admin {method} {path} answered {status}: {body}");
        } else {
            assert!(status != 401 && status != 403, "admin {method} {path} refused ({status}): {body}");
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
    // Elsewhere, without a token, the CLI says how to get one.
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
    assert!(!out.status.success() && err.contains("admin-token") && err.lines().count() == 1, "{err}");
    // ~/.config/skiff/token is the fallback.
    std::fs::create_dir_all(elsewhere.path().join(".config/skiff")).expect("mkdir");
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
    assert_eq!(call(&url, "GET", "/v1/nodes/n1/assignments", Some(&join), "").0, 403);
    assert_eq!(call(&url, "GET", "/v1/deployments", Some(&join), "").0, 403);

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
