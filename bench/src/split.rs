//! Scenario `split` (#18): what a canary's weighted routing costs the
//! ingress. Two deployments of the same component on one `skiff dev`, two
//! replicas each: `plain` (one revision) and `split` (a canary held at 50% by
//! a `pause: manual` step: one replica of each revision, every request split
//! by weight first). `wrk` loads each in turn, twice (alternating); reported:
//! requests/s and latencies of each, and split / plain (target: ≥ 0.95).

use crate::dev_cluster;
use crate::http::{ingress_url, run_wrk, wait_ok, which};
use crate::procs::TempDir;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

pub async fn scenario_split(skiff: &Path, component: &Path, connections: u32, seconds: u32) -> anyhow::Result<Value> {
    println!("split: {} under wrk, a 50/50 canary vs one revision", component.display());
    let wrk = which("wrk").context("wrk not found; `make bench` installs Debian's wrk")?;
    let dir = TempDir::new("split")?;
    let dev = dev_cluster(skiff, &dir, &["--ingress", "127.0.0.1:0"]).await?;
    let digest = dev.upload(std::fs::read(component)?).await?;
    let apply = |name: &str, v: &str, canary: bool| {
        let mut req = json!({
            "replicas": 2,
            "spec": { "workload": { "wasm": digest }, "resources": { "cpu": "100m", "memory": "64Mi" }, "env": { "V": v } },
        });
        if canary {
            req["strategy"] = json!({ "canary": { "steps": [{ "weight": 50, "pause": "manual" }] } });
        }
        (name.to_string(), req)
    };
    for (name, req) in [apply("plain", "1", false), apply("split", "1", true)] {
        dev.api.apply(&name, &serde_json::from_value(req)?).await?;
    }
    let url = ingress_url(&dev.data)?;
    for host in ["plain.skiff.local", "split.skiff.local"] {
        wait_ok(&url, Some(host), &dev.proc, Duration::from_secs(60)).await?;
    }
    let (name, req) = apply("split", "2", true);
    dev.api.apply(&name, &serde_json::from_value(req)?).await?;
    let t0 = Instant::now();
    loop {
        let d = dev.api.deployment("split").await?;
        if d.rollout.canary.as_ref().is_some_and(|c| c.weight == 50) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the canary of split never reached 50%: {:?}", d.rollout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The ingress's copy of the table catches up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut runs = Vec::new();
    for _round in 0..2 {
        for host in ["plain.skiff.local", "split.skiff.local"] {
            runs.push((host, run_wrk(&wrk, &url, Some(host), connections, seconds)?));
        }
    }
    dev.proc.check_alive()?;
    let best = |h: &str| runs.iter().filter(|(x, _)| *x == h).map(|(_, l)| *l).max_by(|a, b| a.rps.total_cmp(&b.rps));
    let (Some(p), Some(s)) = (best("plain.skiff.local"), best("split.skiff.local")) else { bail!("no wrk runs") };
    let result = json!({
        "component": component.display().to_string(),
        "client": format!("wrk -t2 -c{connections} -d{seconds}s --latency"),
        "plain_rps": p.rps, "plain_p50_ms": p.p50_ms, "plain_p99_ms": p.p99_ms, "plain_errors": p.errors,
        "split_rps": s.rps, "split_p50_ms": s.p50_ms, "split_p99_ms": s.p99_ms, "split_errors": s.errors,
        "ratio": (s.rps / p.rps * 1000.0).round() / 1000.0,
        "note": "best of two alternating runs each; two replicas per deployment, the split one a canary held at 50% (pause: manual)",
    });
    println!("  {result}");
    Ok(result)
}
