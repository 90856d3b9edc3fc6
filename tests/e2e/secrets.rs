//! Secrets: sealed at rest, delivered only to the node that runs the replica,
//! readable by the workload as env and as a read-only file, and shown nowhere.

use skiff_tests::*;
use std::path::Path;
use std::time::Duration;

/// Whether `needle` occurs in any file under `dir` (SQLite file and WAL included).
fn found_under(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return hits };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(found_under(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[test]
fn secrets_reach_the_workload_and_nothing_else() {
    let mut dev = Dev::start("secrets");
    let (cwd, url, data) = (dev.dir.path().to_path_buf(), dev.url.clone(), dev.data());
    let cwd = cwd.as_path();

    // A value no other bytes in this test could contain by chance.
    let value =
        format!("s3cr3t-{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().map(|d| d.as_nanos()).unwrap_or(0));
    let value_file = cwd.join("password.txt");

    // Deployed before the secret exists: pending, with that reason.
    let reader = wasm_p2("secret_reader");
    let deploy = cli_in(
        cwd,
        &url,
        &[
            "deploy",
            reader.to_str().unwrap_or_default(),
            "--name",
            "reader",
            "--secret-env",
            "DB_PASSWORD=db:password",
            "--secret-dir",
            "db:/secrets/db",
        ],
    );
    assert!(deploy.ok, "{}", deploy.stderr);
    let reason = wait_for(Duration::from_secs(10), "a pending reason", || {
        let r = get_json(cwd, &url, "replicas");
        match r.first().and_then(|r| r["reason"].as_str().map(str::to_owned)) {
            Some(reason) if r[0]["state"] == "pending" => Ok(reason),
            _ => Err(format!("{r:?}")),
        }
    });
    assert!(reason.contains("secret \"db\" not found"), "{reason}");

    std::fs::write(&value_file, &value).expect("write");
    let created =
        cli_ok(cwd, &url, &["secret", "create", "db", &format!("--from-file=password={}", value_file.display())]);
    assert!(created.contains("created"), "{created}");
    std::fs::remove_file(&value_file).expect("remove");
    let again = cli_in(cwd, &url, &["secret", "create", "db", "--from-literal", "password=x"]);
    assert!(!again.ok && again.stderr.contains("already exists"), "{}", again.stderr);

    // The workload reads it as env and as a file that it cannot write.
    let logs = wait_for(Duration::from_secs(30), "the reader's report", || {
        let out = cli_in(cwd, &url, &["logs", "reader", "--tail", "50"]);
        if out.stdout.contains("matches: true") && out.stdout.contains("writable: false") {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    });
    assert!(logs.contains(&format!("{} bytes", value.len())), "{logs}");

    // The value appears in no API answer, no CLI output, no file of the data dir.
    let needle = value.as_bytes();
    for args in [
        vec!["get", "deployments", "-o", "json"],
        vec!["get", "replicas", "-o", "yaml"],
        vec!["describe", "deployment", "reader"],
        vec!["secret", "ls"],
        vec!["logs", "reader", "--tail", "1000"],
    ] {
        let out = cli_ok(cwd, &url, &args);
        assert!(!out.contains(&value), "`skiff {}` shows the secret", args.join(" "));
    }
    let events = http_get(&format!("{url}/v1/events")).expect("events");
    assert!(!events.contains(&value), "events show the secret");
    assert!(cli_ok(cwd, &url, &["secret", "ls"]).contains("password"), "keys are listed");
    let hits = found_under(&data, needle);
    assert!(hits.is_empty(), "the secret is stored in clear in {hits:?}");
    let mode =
        std::fs::metadata(data.join("secret.keys")).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.map(|m| m & 0o777).ok(), Some(0o600), "the key file is private");

    // In use: it cannot be deleted; after the deployment goes, it can, and the
    // tmpfs copy is gone with the replica.
    let rm = cli_in(cwd, &url, &["secret", "rm", "db"]);
    assert!(!rm.ok && rm.stderr.contains("used by deployments reader"), "{}", rm.stderr);
    cli_ok(cwd, &url, &["delete", "reader"]);
    cli_ok(cwd, &url, &["secret", "rm", "db"]);
    wait_for(Duration::from_secs(10), "the tmpfs copy removed", || {
        let left = found_under(Path::new("/dev/shm"), needle);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
    assert!(dev.proc.alive());
}

/// An HTTP component gets its secrets too: as env (its greeting) and as a
/// read-only file, in every request's instance.
#[test]
fn http_components_read_their_secrets() {
    let dev = Dev::start("http-secrets");
    let (cwd, url) = (dev.dir.path().to_path_buf(), dev.url.clone());
    let cwd = cwd.as_path();
    let ingress = format!("http://{}", read_when_ready(&dev.data().join("ingress.addr")).trim_start_matches("http://"));
    let value =
        format!("tok{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().map(|d| d.as_nanos()).unwrap_or(0));
    cli_ok(cwd, &url, &["secret", "create", "api", "--from-literal", &format!("token={value}")]);
    let web = wasm_p2("hello_http");
    let args = ["deploy", web.to_str().unwrap_or_default(), "--name", "web", "--secret-env", "GREETING=api:token"];
    cli_ok(cwd, &url, &[&args[..], &["--secret-dir", "api:/secrets/api"]].concat());
    let greeting = wait_for(Duration::from_secs(30), "the greeting from the secret", || {
        match get(&ingress, "web.skiff.local", "/") {
            Ok(a) if a.status == 200 => Ok(a.body),
            Ok(a) => Err(format!("{} {}", a.status, a.body)),
            Err(e) => Err(e),
        }
    });
    assert!(greeting.starts_with(&format!("{value} from web-")), "{greeting}");
    let file = get(&ingress, "web.skiff.local", "/file/secrets/api/token").expect("file");
    assert_eq!((file.status, file.body.as_str()), (200, value.as_str()));
    let missing = get(&ingress, "web.skiff.local", "/file/etc/passwd").expect("outside");
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Deleted: the tmpfs copy goes with the replica.
    cli_ok(cwd, &url, &["delete", "web"]);
    wait_for(Duration::from_secs(10), "the tmpfs copy removed", || {
        let left = found_under(Path::new("/dev/shm"), value.as_bytes());
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
}
