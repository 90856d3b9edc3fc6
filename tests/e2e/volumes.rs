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
