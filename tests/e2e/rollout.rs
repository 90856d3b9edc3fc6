//! Rolling updates: a new revision replaces the old one without the running
//! count ever dropping below the desired count; a revision whose replicas keep
//! failing is rolled back by itself; history and undo.

use serde_json::Value;
use skiff_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn manifest(wasm: &str, greeting: &str) -> String {
    format!(
        "name: roll\nwasm: {wasm}\nreplicas: 3\nresources: {{cpu: 50m, memory: 32Mi}}\n\
         env: {{GREETING: {greeting}, INTERVAL_MS: 200}}\n\
         strategy: {{max_surge: 1, max_unavailable: 0, min_ready_seconds: 1, progress_deadline_seconds: 60}}\n"
    )
}

#[test]
fn rolling_updates_keep_capacity_and_roll_back_failures() {
    let mut dev = Dev::start("rollout");
    let (cwd, url) = (dev.dir.path().to_path_buf(), dev.url.clone());
    std::fs::copy(wasm_p2("worker"), cwd.join("worker.wasm")).expect("copy");
    std::fs::copy(wasm_p1("crasher"), cwd.join("crasher.wasm")).expect("copy");
    let file = cwd.join("roll.yaml");
    let apply = |text: &str| {
        std::fs::write(&file, text).expect("write manifest");
        cli_ok(&cwd, &url, &["apply", "-f", file.to_str().unwrap_or_default()])
    };
    let status = |timeout: &str| cli_in(&cwd, &url, &["rollout", "status", "roll", "--timeout", timeout]);

    apply(&manifest("worker.wasm", "v1"));
    let first = status("60s");
    assert!(first.ok, "{}{}", first.stdout, first.stderr);

    // Watch the running count of the deployment's current view while rolling.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, cwd, url) = (stop.clone(), cwd.clone(), url.clone());
        std::thread::spawn(move || {
            let mut min_running = usize::MAX;
            let mut revisions_seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let reps: Vec<Value> = get_json(&cwd, &url, "replicas");
                let running: Vec<&Value> = reps.iter().filter(|r| r["state"] == "running").collect();
                min_running = min_running.min(running.len());
                for r in running {
                    revisions_seen.insert(r["revision"].as_u64().unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (min_running, revisions_seen)
        })
    };

    // A good new revision rolls out.
    apply(&manifest("worker.wasm", "v2"));
    let good = status("60s");
    assert!(good.ok, "{}{}", good.stdout, good.stderr);
    assert!(good.stdout.contains("revision 2 rolled out"), "{}", good.stdout);

    // A revision whose replicas crash is rolled back by itself.
    apply(&manifest("crasher.wasm", "v3"));
    let bad = status("60s");
    assert!(!bad.ok, "a failing rollout must exit non-zero: {}", bad.stdout);
    assert!(bad.stderr.contains("rolled back to revision 2"), "{}", bad.stderr);
    wait_for(Duration::from_secs(30), "only revision 2 left", || {
        let reps = get_json(&cwd, &url, "replicas");
        let ok = reps.len() == 3 && reps.iter().all(|r| r["revision"] == 2 && r["state"] == "running");
        if ok { Ok(()) } else { Err(format!("{reps:?}")) }
    });
    stop.store(true, Ordering::Relaxed);
    let (min_running, seen) = watcher.join().expect("watcher");
    assert!(min_running >= 3, "capacity dropped to {min_running} running replicas during the rollouts");
    assert!(seen.contains(&1) && seen.contains(&2), "both versions served: {seen:?}");

    let events = cli_ok(&cwd, &url, &["describe", "deployment", "roll"]);
    assert!(events.contains("RolledBack"), "{events}");

    // History lists the three revisions; undo goes back to the first.
    let history = cli_ok(&cwd, &url, &["rollout", "history", "roll"]);
    assert_eq!(history.lines().count(), 4, "{history}");
    cli_ok(&cwd, &url, &["rollout", "undo", "roll", "--to-revision", "1"]);
    let undone = status("60s");
    assert!(undone.ok, "{}{}", undone.stdout, undone.stderr);
    let reps = get_json(&cwd, &url, "replicas");
    assert!(reps.iter().all(|r| r["revision"] == 1), "{reps:?}");
    assert!(dev.proc.alive());
}
