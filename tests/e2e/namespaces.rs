//! Namespaces, quotas and scoped tokens (#20): two teams on one cluster, each
//! with its own token, deploying the same name; neither sees nor touches the
//! other's; quotas refuse with one line.

use skiff_tests::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `skiff ARGS` against `url` with API token `token` (not the admin's).
pub(crate) fn as_token(cwd: &Path, url: &str, token: &str, args: &[&str]) -> Cli {
    let mut cmd = Command::new(skiff_bin());
    if let Some(ca) = ca_for(url) {
        cmd.env("SKIFF_CA_FILE", ca);
    }
    let out = cmd
        .args(args)
        .current_dir(cwd)
        .env("SKIFF_SERVER", url)
        .env("SKIFF_TOKEN", token)
        .env_remove("SKIFF_NAMESPACE")
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

pub(crate) fn ok(c: Cli, what: &str) -> String {
    assert!(c.ok, "{what} failed:\nstdout: {}\nstderr: {}", c.stdout, c.stderr);
    c.stdout
}

/// A refusal that says the object is not found (404), never that it exists.
pub(crate) fn not_found(c: Cli, what: &str) {
    assert!(!c.ok, "{what} was allowed: {}", c.stdout);
    assert!(c.stderr.contains("not found"), "{what}: {}", c.stderr);
}

#[test]
fn two_teams_share_a_cluster_without_seeing_each_other() {
    let dev = Dev::start("namespaces");
    let (cwd, url) = (dev.dir.path().to_path_buf(), dev.url.clone());
    let cwd = cwd.as_path();
    let ingress = format!("http://{}", read_when_ready(&dev.data().join("ingress.addr")).trim_start_matches("http://"));
    let wasm = wasm_p2("hello_http");
    let wasm = wasm.to_str().unwrap_or_default();

    // A deployment stored before in `default` stays where it was.
    dev.cli_ok(&["deploy", wasm, "--name", "web", "--env", "GREETING=default", "--memory", "32Mi"]);

    let mut tokens = Vec::new();
    for team in ["team-a", "team-b"] {
        let made = dev.cli_ok(&["namespace", "create", team, "--memory", "256Mi", "--replicas", "4"]);
        assert!(made.contains(&format!("namespace {team} created")), "{made}");
        let token = dev.cli_ok(&["-n", team, "token", "create", &format!("{team}-deployer"), "--role", "deploy"]);
        tokens.push(token.trim().to_string());
    }
    let ls = dev.cli_ok(&["namespace", "ls"]);
    assert!(ls.contains("default") && ls.contains("team-a") && ls.contains("team-b"), "{ls}");

    // Each team, with its own token: a secret, the same deployment name, a scale.
    for (team, token) in ["team-a", "team-b"].iter().zip(&tokens) {
        let secret = format!("password={team}-secret");
        ok(as_token(cwd, &url, token, &["-n", team, "secret", "create", "db", "--from-literal", &secret]), "secret");
        let greeting = format!("GREETING={team}");
        let args = [
            "-n",
            team,
            "deploy",
            wasm,
            "--name",
            "web",
            "--env",
            &greeting,
            "--memory",
            "32Mi",
            "--secret-dir",
            "db:/secrets/db",
            "--wait",
        ];
        ok(as_token(cwd, &url, token, &args), "deploy");
        ok(as_token(cwd, &url, token, &["-n", team, "scale", "web", "2"]), "scale");
        let got = ok(as_token(cwd, &url, token, &["-n", team, "get", "deployments", "-o", "json"]), "get");
        let list = parse_get_json("deployments", &got);
        assert_eq!(list.len(), 1, "{got}");
        assert_eq!(list[0]["name"], "web", "{got}");
        assert_eq!(list[0]["namespace"], *team, "{got}");
        assert_eq!(list[0]["replicas"], 2, "{got}");
    }

    // Each is reachable at its own name, by host and by path, and reads its own secret.
    for team in ["team-a", "team-b"] {
        let host = format!("web.{team}.skiff.local");
        wait_for(Duration::from_secs(30), &format!("{host} answering"), || {
            let a = get(&ingress, &host, "/")?;
            if a.status == 200 && a.body.starts_with(&format!("{team} from {team}-web-")) {
                Ok(())
            } else {
                Err(format!("{a:?}"))
            }
        });
        let a = get(&ingress, "127.0.0.1", &format!("/d/{team}/web/")).expect("GET /d/NS/NAME/");
        assert!(a.body.starts_with(&format!("{team} from ")), "{a:?}");
        let a = get(&ingress, &host, "/file/secrets/db/password").expect("GET the secret file");
        assert_eq!(a.body, format!("{team}-secret"), "{a:?}");
    }
    wait_for(Duration::from_secs(30), "default's web answering", || {
        let a = get(&ingress, "web.skiff.local", "/")?;
        if a.body.starts_with("default from web-") { Ok(()) } else { Err(format!("{a:?}")) }
    });

    // Logs of its own deployment: yes.
    ok(as_token(cwd, &url, &tokens[0], &["-n", "team-a", "logs", "web", "--tail", "5"]), "logs");

    // team-a's token and team-b's objects: not found, whatever the verb; the
    // default namespace likewise.
    let a = &tokens[0];
    for ns in ["team-b", "default"] {
        not_found(as_token(cwd, &url, a, &["-n", ns, "get", "deployments"]), "list");
        not_found(as_token(cwd, &url, a, &["-n", ns, "get", "deployment", "web"]), "get");
        not_found(as_token(cwd, &url, a, &["-n", ns, "scale", "web", "1"]), "scale");
        not_found(as_token(cwd, &url, a, &["-n", ns, "logs", "web"]), "logs");
        not_found(as_token(cwd, &url, a, &["-n", ns, "secret", "ls"]), "secret ls");
        not_found(as_token(cwd, &url, a, &["-n", ns, "secret", "rm", "db"]), "secret rm");
        not_found(as_token(cwd, &url, a, &["-n", ns, "delete", "web"]), "delete");
    }
    // Nor can it make cluster changes, or see another namespace in the list.
    let refused = as_token(cwd, &url, a, &["namespace", "create", "team-c"]);
    assert!(!refused.ok, "{}", refused.stdout);
    let seen = ok(as_token(cwd, &url, a, &["namespace", "ls"]), "namespace ls");
    assert!(seen.contains("team-a") && !seen.contains("team-b") && !seen.contains("default"), "{seen}");
    // team-b's deployment is untouched.
    let b = parse_get_json("deployments", &dev.cli_ok(&["-n", "team-b", "get", "deployments", "-o", "json"]));
    assert_eq!(b[0]["replicas"], 2, "{b:?}");
    // A key is spelled one way: `default/web` (an encoded `/` in a name) is
    // no second deployment beside default's web, hidden from every listing
    // and from default's quota; and an encoded `/` after a namespace does not
    // reach another namespace's object (`default` + `team-a%2Fweb`).
    let admin = std::fs::read_to_string(dev.data().join("admin-token")).expect("admin-token").trim().to_string();
    let spec = dev.get("deployments")[0]["spec"].clone();
    let body = serde_json::json!({"replicas": 1, "spec": spec}).to_string();
    let error = |answer: &str| {
        let v: serde_json::Value = serde_json::from_str(answer).unwrap_or_default();
        v["error"].as_str().unwrap_or_default().to_string()
    };
    for path in ["/v1/deployments/default%2Fweb", "/v1/namespaces/default/deployments/default%2Fweb"] {
        let (status, answer) = super::auth::call(&url, "PUT", path, Some(&admin), &body);
        assert_eq!(status, 400, "PUT {path}: {answer}");
        assert!(error(&answer).starts_with("\"default/web\" is not a name: "), "{answer}");
    }
    let (_, answer) = super::auth::call(&url, "PUT", "/v1/deployments/default%2Fweb", Some(&admin), &body);
    assert_eq!(error(&answer), "\"default/web\" is not a name: name it \"web\" in namespace default");
    let (status, answer) = super::auth::call(&url, "GET", "/v1/deployments/default%2Fweb", Some(&admin), "");
    assert_eq!(status, 404, "nothing stored: {answer}");
    let listed = dev.get("deployments");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let (status, default) = super::auth::call(&url, "GET", "/v1/namespaces/default", Some(&admin), "");
    assert_eq!(status, 200, "{default}");
    let default: serde_json::Value = serde_json::from_str(&default).expect("a namespace");
    assert_eq!(default["usage"]["deployments"], 1, "{default}");
    let own = dev.cli_ok(&["-n", "default", "token", "create", "default-deployer", "--role", "deploy"]);
    let own = own.trim();
    for (method, path) in [
        ("GET", "/v1/deployments/team-a%2Fweb"),
        ("GET", "/v1/namespaces/default/deployments/team-a%2Fweb"),
        ("GET", "/v1/secrets/team-a%2Fdb"),
        ("DELETE", "/v1/secrets/team-a%2Fdb"),
        ("PUT", "/v1/deployments/team-a%2Fweb"),
    ] {
        let (status, answer) = super::auth::call(&url, method, path, Some(own), &body);
        assert_eq!(status, 400, "{method} {path} with default's token: {answer}");
        assert!(error(&answer).starts_with("\"team-a/"), "{answer}");
    }
    let a_web = parse_get_json("deployments", &dev.cli_ok(&["-n", "team-a", "get", "deployments", "-o", "json"]));
    assert_eq!(a_web[0]["replicas"], 2, "team-a's web untouched: {a_web:?}");

    // Everything, for the cluster admin: a NAMESPACE column, plain names.
    let all = dev.cli_ok(&["get", "deployments", "-A"]);
    let columns = |l: &str| l.split_whitespace().take(2).map(String::from).collect::<Vec<_>>();
    assert_eq!(all.lines().next().map(columns), Some(vec!["NAMESPACE".into(), "NAME".into()]), "{all}");
    for ns in ["default", "team-a", "team-b"] {
        assert!(all.lines().any(|l| columns(l) == [ns, "web"]), "{ns} web in {all}");
    }
    let replicas = dev.cli_ok(&["get", "replicas", "-A"]);
    assert!(replicas.starts_with("NAMESPACE"), "{replicas}");
    for ns in ["default", "team-a", "team-b"] {
        let of = |l: &&str| l.split_whitespace().next() == Some(ns) && l.split_whitespace().nth(2) == Some("web");
        assert!(replicas.lines().filter(of).count() >= 1, "{ns}'s web replicas in {replicas}");
    }

    // Quotas: 4 replicas and 256Mi in team-a, which holds 2 × 32Mi.
    let over = as_token(cwd, &url, a, &["-n", "team-a", "scale", "web", "5"]);
    assert!(!over.ok, "{}", over.stdout);
    assert!(over.stderr.contains("namespace team-a: replicas quota 4, 2 in use, this asks 3 more"), "{}", over.stderr);
    let big = as_token(
        cwd,
        &url,
        a,
        &["-n", "team-a", "deploy", wasm, "--name", "big", "--memory", "200Mi", "--replicas", "1"],
    );
    assert!(!big.ok, "{}", big.stdout);
    assert!(
        big.stderr.contains("namespace team-a: memory quota 256Mi, 64Mi in use, this asks 200Mi more"),
        "{}",
        big.stderr
    );
    // And in Prometheus, by resource.
    let (status, metrics) = super::auth::call(&url, "GET", "/metrics", Some(&admin), "");
    assert_eq!(status, 200, "{metrics}");
    for line in [
        r#"skiff_namespace_quota{namespace="team-a",resource="memory"} 268435456"#,
        r#"skiff_namespace_used{namespace="team-a",resource="memory"} 67108864"#,
        r#"skiff_namespace_used{namespace="team-a",resource="replicas"} 2"#,
        r#"skiff_namespace_used{namespace="default",resource="deployments"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in:\n{metrics}");
    }
    let described = dev.cli_ok(&["namespace", "describe", "team-a"]);
    assert!(described.contains("memory") && described.contains("64Mi") && described.contains("256Mi"), "{described}");
    // A namespace's own events (made, its quota set) are its token's to read:
    // their object is `namespace/team-a`, whose key holds no namespace prefix.
    let own = ok(as_token(cwd, &url, a, &["-n", "team-a", "events"]), "events");
    assert!(own.contains("namespace/team-a"), "{own}");
    assert!(!own.contains("team-b"), "{own}");

    // rm refuses while the namespace holds objects; --cascade takes them too.
    let rm = dev.cli(&["namespace", "rm", "team-b"]);
    assert!(!rm.ok && rm.stderr.contains("namespace team-b holds 1 deployment, 1 secret"), "{}", rm.stderr);
    dev.cli_ok(&["namespace", "rm", "team-b", "--cascade"]);
    let gone = dev.cli(&["-n", "team-b", "get", "deployments"]);
    assert!(!gone.ok && gone.stderr.contains("not found"), "{}", gone.stderr);
    // Its tokens went with it.
    let revoked = as_token(cwd, &url, &tokens[1], &["-n", "team-b", "get", "deployments"]);
    assert!(!revoked.ok && revoked.stderr.contains("unknown API token"), "{}", revoked.stderr);
    // The others run on.
    let a_list = parse_get_json("deployments", &dev.cli_ok(&["-n", "team-a", "get", "deployments", "-o", "json"]));
    assert_eq!(a_list.len(), 1);
    let d_list = dev.get("deployments");
    assert_eq!(d_list.len(), 1);
    assert_eq!(d_list[0]["namespace"], "default");
}

/// A team's token without `-n` (nor `SKIFF_NAMESPACE`) acts in its team's
/// namespace: it deploys, scales, reads logs and a secret, and deletes there,
/// and nothing lands in `default` (before, the unprefixed routes were
/// `default`'s and every call got a 404). Through the API too: an unprefixed
/// path with the token is its namespace's.
#[test]
fn a_team_token_without_a_namespace_acts_in_its_own() {
    let dev = Dev::start("namespace-own");
    let (cwd, url) = (dev.dir.path().to_path_buf(), dev.url.clone());
    let cwd = cwd.as_path();
    let ingress = format!("http://{}", read_when_ready(&dev.data().join("ingress.addr")).trim_start_matches("http://"));
    let wasm = wasm_p2("hello_http");
    let wasm = wasm.to_str().unwrap_or_default();
    dev.cli_ok(&["namespace", "create", "team-a"]);
    let token = dev.cli_ok(&["-n", "team-a", "token", "create", "a-deployer", "--role", "deploy"]);
    let t = token.trim();

    ok(as_token(cwd, &url, t, &["secret", "create", "db", "--from-literal", "password=a-secret"]), "secret");
    let deploy = ["deploy", wasm, "--name", "web", "--env", "GREETING=a", "--secret-dir", "db:/secrets/db", "--wait"];
    ok(as_token(cwd, &url, t, &deploy), "deploy");
    ok(as_token(cwd, &url, t, &["scale", "web", "2"]), "scale");
    let got = ok(as_token(cwd, &url, t, &["get", "deployments", "-o", "json"]), "get");
    let list = parse_get_json("deployments", &got);
    assert_eq!(list.len(), 1, "{got}");
    assert_eq!(list[0]["name"], "web", "{got}");
    assert_eq!(list[0]["namespace"], "team-a", "{got}");
    assert_eq!(list[0]["replicas"], 2, "{got}");
    // The objects are team-a's, seen by the cluster admin; default has none.
    let admin_view = parse_get_json("deployments", &dev.cli_ok(&["-n", "team-a", "get", "deployments", "-o", "json"]));
    assert_eq!(admin_view.len(), 1, "{admin_view:?}");
    assert_eq!(admin_view[0]["replicas"], 2, "{admin_view:?}");
    assert!(dev.get("deployments").is_empty(), "an object of team-a's token landed in default");
    let secrets = dev.cli_ok(&["-n", "team-a", "secret", "ls"]);
    assert!(secrets.contains("db"), "{secrets}");
    assert!(!dev.cli_ok(&["secret", "ls"]).contains("db"), "team-a's secret landed in default");
    // The workload reads its namespace's secret.
    wait_for(Duration::from_secs(30), "web.team-a answering with its secret", || {
        let a = get(&ingress, "web.team-a.skiff.local", "/file/secrets/db/password")?;
        if a.body == "a-secret" { Ok(()) } else { Err(format!("{a:?}")) }
    });
    ok(as_token(cwd, &url, t, &["logs", "web", "--tail", "5"]), "logs");
    ok(as_token(cwd, &url, t, &["get", "replicas"]), "get replicas");
    // Through the API, unprefixed: team-a's.
    let (status, body) = super::auth::call(&url, "GET", "/v1/deployments/web", Some(t), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""namespace":"team-a""#), "{body}");
    // Another namespace's key in an unprefixed path stays out of reach.
    dev.cli_ok(&["namespace", "create", "team-b"]);
    dev.cli_ok(&["-n", "team-b", "deploy", wasm, "--name", "web", "--replicas", "0"]);
    for path in ["/v1/deployments/team-b%2Fweb", "/v1/deployments/team-b%252Fweb"] {
        let (status, body) = super::auth::call(&url, "GET", path, Some(t), "");
        assert!(status == 400 || status == 404, "GET {path} with team-a's token: {status} {body}");
        assert!(!body.contains(r#""namespace":"team-b""#), "GET {path}: {body}");
    }
    // `-n default` still means default, which this token may not see.
    not_found(as_token(cwd, &url, t, &["-n", "default", "get", "deployments"]), "list in default");
    // The cluster admin's unprefixed calls are default's, as before.
    let none = dev.cli(&["get", "deployment", "web"]);
    assert!(!none.ok && none.stderr.contains("not found"), "{}", none.stderr);

    ok(as_token(cwd, &url, t, &["delete", "web"]), "delete");
    let left = parse_get_json("deployments", &dev.cli_ok(&["-n", "team-a", "get", "deployments", "-o", "json"]));
    assert!(left.is_empty(), "team-a's web not deleted: {left:?}");
}

/// What a token of `role` scoped to namespace `own` must get for `method` on
/// `route` in namespace `ns` (the path's; an unprefixed route is the token's
/// own namespace, so `ns` says nothing there): `None`
/// when it may make the call, else the status refusing it. Written from the
/// issue's roles, not from the server's table, so that the two are compared.
fn expected(role: &str, own: &str, method: &str, route: &str, ns: &str) -> Option<u16> {
    let read = method == "GET" || method == "HEAD";
    let rank = |r: &str| match r {
        "read" => 0,
        "deploy" => 1,
        _ => 2,
    };
    let kinds = ["deployments", "replicas", "secrets", "volumes", "jobs", "crons", "events"];
    let unprefixed = match route.strip_prefix("/v1/namespaces/{ns}/") {
        Some(rest) => format!("/v1/{rest}"),
        None => route.to_string(),
    };
    let namespaced = kinds.iter().any(|k| {
        let p = format!("/v1/{k}");
        unprefixed == p || unprefixed.starts_with(&format!("{p}/"))
    }) || route == "/v1/namespaces/{ns}";
    let needed = if route.ends_with("/activate") {
        None
    } else if route == "/v1/namespaces/{ns}" {
        match method {
            "DELETE" => None,
            "PUT" => Some("admin"),
            _ => Some("read"),
        }
    } else if namespaced {
        Some(if read { "read" } else { "deploy" })
    } else {
        match route {
            // The dashboard's stream: the token's namespace only (its content
            // is checked by observability::dashboard_in_a_real_browser).
            "/v1/namespaces" | "/v1/openapi.json" | "/v1/watch" if read => Some("read"),
            "/v1/tokens" | "/v1/tokens/{name}" => Some("admin"),
            "/v1/blobs/{digest}" => Some(if read { "read" } else { "deploy" }),
            _ => None,
        }
    };
    // A scoped token's unprefixed namespaced route is its own namespace's.
    let ns = if route.contains("{ns}") { ns } else { own };
    match needed {
        None => Some(403),
        Some(n) if rank(role) < rank(n) => Some(403),
        Some(_) if namespaced && ns != own => Some(404),
        Some(_) => None,
    }
}

#[test]
fn every_route_with_every_role_in_every_namespace() {
    let dev = Dev::start("namespace-roles");
    let admin = std::fs::read_to_string(dev.data().join("admin-token")).expect("admin-token").trim().to_string();
    let wasm = wasm_p2("hello_http");
    for team in ["team-a", "team-b"] {
        dev.cli_ok(&["namespace", "create", team]);
        // Objects named as the walk's samples (`x`), so that a 404 for another
        // namespace's is a refusal, not an absence.
        dev.cli_ok(&["-n", team, "secret", "create", "x", "--from-literal", "k=v"]);
        dev.cli_ok(&["-n", team, "deploy", wasm.to_str().unwrap_or_default(), "--name", "x", "--replicas", "0"]);
        // A job and a cron `x` too (the cron never due while the walk runs).
        let manifest = dev.dir.path().join(format!("{team}-x.yaml"));
        let worker = wasm_p1("job_worker");
        let yaml = format!(
            "kind: job\nname: x\nwasm: {w}\n---\nkind: cron\nname: x\nschedule: \"0 3 1 1 *\"\njob: {{wasm: {w}}}\n",
            w = worker.to_str().unwrap_or_default()
        );
        std::fs::write(&manifest, yaml).expect("write manifest");
        dev.cli_ok(&["-n", team, "apply", "-f", manifest.to_str().unwrap_or_default()]);
    }
    let mut tokens = Vec::new();
    for role in ["read", "deploy", "admin"] {
        let t = dev.cli_ok(&["-n", "team-a", "token", "create", &format!("a-{role}"), "--role", role]);
        tokens.push((role, t.trim().to_string()));
    }
    let routes = super::auth::routes(&dev.url, &admin, "x");
    let mut calls = 0;
    for (role, token) in &tokens {
        for r in routes.iter().filter(|r| !r.open) {
            // Metrics open without a token (`--metrics-open`) say nothing of roles.
            if super::auth::call(&dev.url, &r.method, &r.path, None, "").0 != 401 {
                continue;
            }
            let spaces: &[&str] =
                if r.route.contains("{ns}") { &["team-a", "team-b", "default"] } else { &["default"] };
            for ns in spaces {
                let path = if r.route.contains("{ns}") {
                    r.path.replacen("/v1/namespaces/default", &format!("/v1/namespaces/{ns}"), 1)
                } else {
                    r.path.clone()
                };
                let (status, body) = super::auth::call(&dev.url, &r.method, &path, Some(token), "{}");
                calls += 1;
                match expected(role, "team-a", &r.method, &r.route, ns) {
                    Some(want) => assert_eq!(status, want, "{role} of team-a: {} {path}: {body}", r.method),
                    None => assert!(
                        status != 401 && status != 403,
                        "{role} of team-a: {} {path} refused ({status}): {body}",
                        r.method
                    ),
                }
            }
        }
    }
    assert!(calls > 3 * 60, "only {calls} calls");
    // team-b's objects are as they were.
    let b = parse_get_json("deployments", &dev.cli_ok(&["-n", "team-b", "get", "deployments", "-o", "json"]));
    assert_eq!(b.len(), 1, "{b:?}");
    let secrets = dev.cli_ok(&["-n", "team-b", "secret", "ls"]);
    assert!(secrets.contains('x'), "{secrets}");
    dev.cli_ok(&["-n", "team-b", "get", "jobs", "x"]);
    let crons = dev.cli_ok(&["-n", "team-b", "get", "crons", "x", "-o", "json"]);
    assert!(!crons.contains("\"last_job\""), "team-b's cron was triggered: {crons}");
}

#[test]
fn an_isolated_namespace_calls_only_its_own() {
    let dev = Dev::start("namespace-isolation");
    let ingress = format!("http://{}", read_when_ready(&dev.data().join("ingress.addr")).trim_start_matches("http://"));
    let wasm = wasm_p2("hello_http");
    let wasm = wasm.to_str().unwrap_or_default();
    dev.cli_ok(&["namespace", "create", "iso", "--isolation", "namespace"]);
    dev.cli_ok(&["namespace", "create", "open"]);
    dev.cli_ok(&["deploy", wasm, "--name", "web", "--env", "GREETING=default", "--wait"]);
    for (ns, name) in [("iso", "web"), ("iso", "peer"), ("open", "web")] {
        let greeting = format!("GREETING={ns}-{name}");
        dev.cli_ok(&["-n", ns, "deploy", wasm, "--name", name, "--env", &greeting, "--wait"]);
    }
    let call = |ns: &str, target: &str| {
        let host = format!("web.{ns}.skiff.local");
        wait_for(Duration::from_secs(30), &format!("{host} calling {target}"), || {
            let a = get(&ingress, &host, &format!("/call/{target}/"))?;
            if a.status == 503 { Err(format!("{a:?}")) } else { Ok(a) }
        })
    };
    // Within its namespace: reached.
    let a = call("iso", "peer.iso.skiff.local");
    assert!(a.status == 200 && a.body.contains("200 iso-peer from"), "{a:?}");
    // Another namespace, default included: refused in the component.
    for target in ["web.skiff.local", "web.open.skiff.local"] {
        let a = call("iso", target);
        assert_eq!(a.status, 502, "{target}: {a:?}");
        assert!(a.body.contains("HttpRequestDenied"), "{target}: {a:?}");
    }
    // Counted on the node, under the caller's namespace.
    let api = read_when_ready(&dev.data().join("node").join("node.addr"));
    let page = get(&api, "node", "/metrics").expect("GET /metrics").body;
    let refused = r#"skiff_node_namespace_isolation_refusals_total{namespace="iso",runtime="wasm"} 2"#;
    assert!(page.contains(refused), "{page}");
    // A namespace without isolation calls anyone.
    let a = call("open", "peer.iso.skiff.local");
    assert!(a.status == 200 && a.body.contains("200 iso-peer from"), "{a:?}");
    let a = call("open", "web.skiff.local");
    assert!(a.status == 200 && a.body.contains("200 default from"), "{a:?}");
}

/// Namespaces, quotas and scoped tokens live in etcd: three servers, the leader
/// SIGKILLed, and the next one knows them all.
#[test]
fn namespaces_quotas_and_tokens_survive_a_leader_kill_on_etcd() {
    use crate::servers::{Trio, leader, three_servers_on_loopback};
    let dir = TempDir::new("ns-etcd");
    let cwd = dir.path();
    let Trio { etcd: _etcd, mut procs, urls, first, .. } = three_servers_on_loopback(cwd);
    cli_ok(cwd, &urls, &["namespace", "create", "team-a", "--memory", "64Mi"]);
    let token = cli_ok(cwd, &urls, &["-n", "team-a", "token", "create", "ci", "--role", "deploy"]).trim().to_string();
    let wasm = wasm_p2("hello_http");
    let deploy = ["-n", "team-a", "deploy", wasm.to_str().unwrap_or_default(), "--name", "web", "--memory", "32Mi"];
    ok(as_token(cwd, &urls, &token, &deploy), "deploy");
    cli_ok(cwd, &urls, &["deploy", wasm.to_str().unwrap_or_default(), "--name", "web", "--memory", "32Mi"]);

    let i = procs.iter().position(|(n, _)| *n == first).unwrap_or_else(|| panic!("no server {first}"));
    let (_, mut dead) = procs.remove(i);
    dead.kill();
    wait_for(Duration::from_secs(20), "a new leader", || {
        let l = leader(cwd, &urls)?;
        if l != first { Ok(l) } else { Err(format!("still {l}")) }
    });

    // The namespace and its quota.
    let described = cli_ok(cwd, &urls, &["namespace", "describe", "team-a"]);
    assert!(described.contains("64Mi") && described.contains("32Mi"), "{described}");
    // The scoped token: its namespace yes, the default namespace not found.
    let listed = wait_for(Duration::from_secs(10), "the token on the new leader", || {
        let c = as_token(cwd, &urls, &token, &["-n", "team-a", "get", "deployments", "-o", "json"]);
        if c.ok { Ok(c.stdout) } else { Err(c.stderr) }
    });
    let list = parse_get_json("deployments", &listed);
    assert_eq!(list.len(), 1, "{listed}");
    assert_eq!(list[0]["namespace"], "team-a");
    not_found(as_token(cwd, &urls, &token, &["-n", "default", "get", "deployment", "web"]), "default's web");
    // The quota still holds.
    let over = as_token(cwd, &urls, &token, &["-n", "team-a", "scale", "web", "3"]);
    assert!(!over.ok, "{}", over.stdout);
    assert!(
        over.stderr.contains("namespace team-a: memory quota 64Mi, 32Mi in use, this asks 64Mi more"),
        "{}",
        over.stderr
    );
}
