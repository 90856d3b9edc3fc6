//! Scaling by load: an HTTP deployment with `autoscale` scales up while a client
//! sends it more requests per second than its target, and back down once the
//! load stops and the stabilization window has passed; each change is a `Scaled`
//! event that says why.

use skiff_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn http_deployment_scales_up_with_load_and_down_after_it() {
    let mut dev = Dev::start("autoscale");
    let (cwd, url) = (dev.dir.path().to_path_buf(), dev.url.clone());
    let cwd = cwd.as_path();
    let ingress = format!("http://{}", read_when_ready(&dev.data().join("ingress.addr")).trim_start_matches("http://"));
    std::fs::copy(wasm_p2("hello_http"), cwd.join("hello_http.wasm")).expect("copy");
    let manifest = cwd.join("web.yaml");
    // Short windows keep the test short: 3 s of usage per decision, down only
    // after 5 s of low load.
    let yaml = "name: web\nwasm: hello_http.wasm\nreplicas: 1\nresources: {cpu: 50m, memory: 32Mi}\n\
        autoscale: {min: 1, max: 3, target_requests_per_second: 5, window_seconds: 3, stabilization_seconds: 5}\n";
    std::fs::write(&manifest, yaml).expect("manifest");
    cli_ok(cwd, &url, &["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let count = || -> Result<(u64, u64), String> {
        let d = get_json(cwd, &url, "deployments");
        let d = d.iter().find(|d| d["name"] == "web").ok_or("no deployment web")?;
        let running = get_json(cwd, &url, "replicas").iter().filter(|r| r["state"] == "ready").count() as u64;
        Ok((d["replicas"].as_u64().unwrap_or(0), running))
    };
    wait_for(Duration::from_secs(30), "one ready replica", || match count()? {
        (1, 1) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let described = cli_ok(cwd, &url, &["describe", "deployment", "web"]);
    assert!(described.contains("1-3 replicas, 5 requests/s per replica over 3s, down after 5s"), "{described}");
    // By hand it cannot be scaled while it scales by load.
    let by_hand = cli_in(cwd, &url, &["scale", "web", "2"]);
    assert!(!by_hand.ok && by_hand.stderr.contains("scales by load"), "{}", by_hand.stderr);

    // Load: far more than 5 requests/s for one replica.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, ingress) = (stop.clone(), ingress.clone());
        std::thread::spawn(move || {
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if get(&ingress, "web.skiff.local", "/").is_ok_and(|a| a.status == 200) {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            ok
        })
    };
    wait_for(Duration::from_secs(30), "three ready replicas under load", || match count()? {
        (3, 3) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    stop.store(true, Ordering::Relaxed);
    let served = client.join().expect("client");
    assert!(served > 0);

    // No load: back to one after the stabilization window.
    wait_for(Duration::from_secs(40), "back to one replica", || match count()? {
        (1, 1) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let events = http_get(&format!("{url}/v1/events?object=deployment/web")).expect("events");
    let up =
        events.contains("autoscaled from 1 to") && events.contains("per replica) over 3s > target 5/s per replica");
    assert!(up, "{events}");
    assert!(events.contains("to 1 replicas: 0.0 requests/s (0.0 per replica) over 3s < target 5/s"), "{events}");
    assert!(dev.proc.alive());
}

/// A cpu-bound command workload (the spinner uses a whole core, far above half
/// of its 100m request) scales up to its max on the cpu the node reports; applied
/// without `autoscale` it stops scaling by load and keeps its count.
#[test]
fn cpu_bound_deployment_scales_up_to_its_max() {
    let mut dev = Dev::start("autoscale-cpu");
    let (cwd, url) = (dev.dir.path().to_path_buf(), dev.url.clone());
    let cwd = cwd.as_path();
    std::fs::copy(wasm_p2("spinner"), cwd.join("spinner.wasm")).expect("copy");
    let manifest = cwd.join("spin.yaml");
    let yaml = "name: spin\nwasm: spinner.wasm\nreplicas: 1\nresources: {cpu: 100m, memory: 32Mi}\n\
        autoscale: {min: 1, max: 2, target_cpu_percent: 50, window_seconds: 3}\n";
    std::fs::write(&manifest, yaml).expect("manifest");
    cli_ok(cwd, &url, &["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let events = wait_for(Duration::from_secs(40), "a scale-up on cpu", || {
        let events = http_get(&format!("{url}/v1/events?object=deployment/spin"))?;
        if events.contains("autoscaled from 1 to 2 replicas: cpu ") { Ok(events) } else { Err(events) }
    });
    assert!(events.contains("% of request over 3s > target 50%"), "{events}");
    wait_for(Duration::from_secs(30), "two running spinners", || {
        let n = get_json(cwd, &url, "replicas").iter().filter(|r| r["state"] == "running").count();
        if n == 2 { Ok(()) } else { Err(format!("{n} running")) }
    });
    // `skiff top` shows the spinners burning cpu (over 2 s: nodes report usage
    // every second).
    let top = cli_ok(cwd, &url, &["top", "spin", "--interval", "2s"]);
    let busy = top.lines().filter(|l| l.starts_with("spin-")).any(|l| {
        let cpu = l.split_whitespace().nth(3).and_then(|c| c.strip_suffix('%')).and_then(|c| c.parse::<f64>().ok());
        cpu.is_some_and(|c| c > 0.0)
    });
    assert!(busy && top.starts_with("REPLICA"), "{top}");

    // Applied again without autoscale (and without a count): it stops scaling by
    // load and keeps its two replicas; then it scales by hand.
    let yaml = "name: spin\nwasm: spinner.wasm\nresources: {cpu: 100m, memory: 32Mi}\n";
    std::fs::write(&manifest, yaml).expect("manifest");
    cli_ok(cwd, &url, &["apply", "-f", manifest.to_str().unwrap_or_default()]);
    let d = get_json(cwd, &url, "deployments");
    let spin = d.iter().find(|d| d["name"] == "spin").expect("deployment spin");
    assert!(spin["autoscale"].is_null() && spin["replicas"] == 2, "{spin}");
    let events = http_get(&format!("{url}/v1/events?object=deployment/spin")).expect("events");
    assert!(events.contains("autoscale off; 2 replicas until scaled"), "{events}");
    cli_ok(cwd, &url, &["scale", "spin", "1"]);
    wait_for(Duration::from_secs(30), "one running spinner", || {
        let n = get_json(cwd, &url, "replicas").iter().filter(|r| r["state"] == "running").count();
        if n == 1 { Ok(()) } else { Err(format!("{n} running")) }
    });
    assert!(dev.proc.alive());
}
