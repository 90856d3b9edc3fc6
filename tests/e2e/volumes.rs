//! Named volumes: data survives restarts, new revisions and a deleted
//! deployment; one writer only; purged on request.

use skiff_tests::*;
use std::time::Duration;

/// The highest `count N` in the deployment's logs.
fn last_count(dev: &Dev, deployment: &str) -> u64 {
    let out = dev.cli(&["logs", deployment, "--tail", "1000"]).stdout;
    out.lines().filter_map(|l| l.rsplit_once("count ").and_then(|(_, n)| n.trim().parse().ok())).max().unwrap_or(0)
}

fn wait_count_above(dev: &Dev, deployment: &str, above: u64) -> u64 {
    wait_for(Duration::from_secs(30), &format!("{deployment} counting past {above}"), || {
        let n = last_count(dev, deployment);
        if n > above { Ok(n) } else { Err(format!("at {n}")) }
    })
}

#[test]
fn volumes_keep_data_and_have_one_writer() {
    let dev = Dev::start("volumes");
    let counter = wasm_p2("counter");
    let counter = counter.to_str().unwrap_or_default();
    let deploy = |extra: &[&str]| {
        let mut args =
            vec!["deploy", counter, "--name", "counter", "--volume", "data:/data", "--env", "INTERVAL_MS=50"];
        args.extend_from_slice(extra);
        dev.cli(&args)
    };

    // Exits after 5 increments and is restarted: the count carries on past 5.
    let first = deploy(&["--env", "EXIT_AFTER=5"]);
    assert!(first.ok, "{}", first.stderr);
    wait_count_above(&dev, "counter", 7);
    let volumes = dev.cli_ok(&["volume", "ls"]);
    let row = volumes.lines().find(|l| l.starts_with("data ")).unwrap_or_default().to_string();
    assert!(row.contains("dev") && row.contains("counter"), "{volumes}");

    // A new revision (no more exits) continues from where the old one stopped.
    let before = last_count(&dev, "counter");
    assert!(deploy(&[]).ok);
    let status = dev.cli(&["rollout", "status", "counter", "--timeout", "60s"]);
    assert!(status.ok, "{}{}", status.stdout, status.stderr);
    let reps = dev.get("replicas");
    assert_eq!(reps.len(), 1, "one writer: {reps:?}");
    assert_eq!(reps[0]["revision"], 2);
    wait_count_above(&dev, "counter", before + 3);

    // A second writer is refused, by scaling or by another deployment.
    let scale = dev.cli(&["scale", "counter", "2"]);
    assert!(!scale.ok && scale.stderr.contains("read-write"), "{}", scale.stderr);
    let other = dev.cli(&["deploy", counter, "--name", "other", "--volume", "data:/data"]);
    assert!(!other.ok && other.stderr.contains("mounted by deployment counter"), "{}", other.stderr);

    // Deleting the deployment keeps the volume and its data.
    dev.cli_ok(&["delete", "counter"]);
    let kept = dev.data().join("node/volumes/data/count");
    let at_delete: u64 = wait_for(Duration::from_secs(10), "the count file", || {
        std::fs::read_to_string(&kept).map_err(|e| e.to_string())?.trim().parse::<u64>().map_err(|e| e.to_string())
    });
    assert!(dev.cli_ok(&["volume", "ls"]).contains("data "));
    let again = deploy(&[]);
    assert!(again.ok, "{}", again.stderr);
    let resumed = wait_for(Duration::from_secs(30), "the redeployed counter's start", || {
        let out = dev.cli(&["logs", "counter", "--tail", "1000"]).stdout;
        out.lines()
            .find_map(|l| {
                l.split_once("counter starting at ").and_then(|(_, n)| n.split(' ').next()?.parse::<u64>().ok())
            })
            .ok_or(out)
    });
    assert!(resumed >= at_delete, "the data was lost: restarted at {resumed}, had {at_delete}");

    // Purged with the deployment: gone from the list and from the node's disk.
    dev.cli_ok(&["delete", "counter", "--purge-volumes"]);
    assert!(!dev.cli_ok(&["volume", "ls"]).contains("data "));
    wait_for(Duration::from_secs(10), "the volume's data deleted", || {
        if kept.parent().is_some_and(|d| d.exists()) { Err("still there".to_string()) } else { Ok(()) }
    });
}

/// The count in the node's copy of volume `data`.
fn count_on_disk(path: &std::path::Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.trim().parse::<u64>().map_err(|e| format!("{text:?}: {e}"))
}

/// A real partition (the node in a network namespace whose link goes down): with
/// `--volume-lease` the node stops its writer once it has not reached the
/// scheduler for the node grace, while the scheduler counts the replica lost;
/// after the link comes back the replacement carries on from the data on disk,
/// and it is the only writer.
#[test]
fn a_partitioned_node_stops_its_leased_writer() {
    if !require_root("a partition (ip netns, a bridge, a veth)") {
        return;
    }
    // Dropped in reverse: the node, its namespace, the server, the bridge, the files.
    let dir = TempDir::new("volume-lease");
    let net = net_prefix();
    let bridge = Bridge::new(&net_name("skb"), &format!("{net}.1/24"));
    let (_server, url, token) = bridge.start_server(&dir.path().join("server"), &[], &dir.path().join("server.log"));
    let ns = NetNs::on_bridge(&net_name("skn"), &bridge, &format!("{net}.2/24"));
    let node_data = dir.path().join("node");
    let node_log = dir.path().join("node.log");
    let mut node = ns.start_node("n1", &url, &token, &node_data, &[], &node_log);
    let cwd = dir.path();
    let counter = wasm_p2("counter");
    let deploy = [
        "deploy",
        counter.to_str().unwrap_or_default(),
        "--name",
        "counter",
        "--volume",
        "data:/data",
        "--volume-lease",
        "--env",
        "INTERVAL_MS=50",
    ];
    cli_ok(cwd, &url, &deploy);
    let file = node_data.join("volumes/data/count");
    wait_for(Duration::from_secs(30), "the counter counting past 5", || match count_on_disk(&file)? {
        n if n > 5 => Ok(()),
        n => Err(format!("at {n}")),
    });
    let first = running(cwd, &url, "counter");
    assert_eq!(first.len(), 1, "{first:?}");

    // Cut the node off: no packet leaves its namespace.
    ns.exec(&["ip", "link", "set", "eth0", "down"]).expect("link down");
    wait_for(Duration::from_secs(20), "the node to stop its writer on the lease", || {
        let log = std::fs::read_to_string(&node_log).map_err(|e| e.to_string())?;
        if log.contains("lease expired") { Ok(()) } else { Err("no lease expiry in the node log".into()) }
    });
    // Stopped means no more writes: the count stands still (it moved every 50 ms).
    let stopped_at = count_on_disk(&file).expect("count");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_on_disk(&file).expect("count"), stopped_at, "the cut-off node still writes its volume");
    // Meanwhile the scheduler counted the node down and the replica lost; the
    // replacement waits for the node that holds the volume.
    wait_for(Duration::from_secs(20), "the replica replaced, pending", || {
        let reps = get_json(cwd, &url, "replicas");
        match reps.as_slice() {
            [r] if r["id"] != first[0].0.as_str() && r["state"] == "pending" => Ok(()),
            _ => Err(format!("{reps:?}")),
        }
    });

    // The link is back: the replacement runs on the same node and counts on
    // from the data the first one left, the only writer.
    ns.exec(&["ip", "link", "set", "eth0", "up"]).expect("link up");
    let after = wait_for(Duration::from_secs(30), "the replacement running", || {
        match running(cwd, &url, "counter").as_slice() {
            [r] if r.0 != first[0].0 => Ok(r.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(after.1, "n1");
    wait_for(Duration::from_secs(30), "the count going on from where it stopped", || match count_on_disk(&file)? {
        n if n > stopped_at + 3 => Ok(()),
        n => Err(format!("at {n}, stopped at {stopped_at}")),
    });
    let logs = cli_ok(cwd, &url, &["logs", "counter", "--tail", "1000"]);
    let resumed = logs
        .lines()
        .find_map(|l| l.split_once("counter starting at ").and_then(|(_, n)| n.split(' ').next()?.parse::<u64>().ok()))
        .unwrap_or_default();
    assert!(resumed >= stopped_at, "the replacement started at {resumed}, the data said {stopped_at}:\n{logs}");
    assert!(node.alive());
}
