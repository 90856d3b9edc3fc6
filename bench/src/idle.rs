//! Scenario `idle`: what an idle Wasm HTTP replica costs a node. One real
//! `skiff node` (capacity raised by flag: only memory is measured) first runs one
//! replica of the hello component — so that the engine, the pool and the compiled
//! component are there — then 10,000 more; the node's resident memory grows by
//! the per-replica cost times 10,000. Replicas of an HTTP component hold no
//! instance while idle (one per request), so this is the bookkeeping a replica
//! costs: its prepared instance handle, usage counters, log file and status.

use crate::procs::{Proc, rss};
use crate::{Cluster, apply_request_with};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

pub async fn scenario_idle(skiff: &Path, component: &Path, replicas: u32) -> anyhow::Result<Value> {
    println!("idle: {replicas} idle HTTP replicas on one node");
    let bytes = std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let c = Cluster::start(skiff, "idle", &[]).await?;
    let node = c.real_node(skiff, "idle", "1000", "200Gi", &[])?;
    c.wait_ready_nodes(1).await?;
    let digest = c.upload(&bytes).await?;
    let apply = |n: u32| apply_request_with(&digest, n, json!({ "cpu": "1m", "memory": "4Mi" }));
    c.api.apply("idle", &apply(1)).await?;
    wait_running(&c, &node, 1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = rss(node.pid())?;
    let total = replicas + 1;
    let t0 = Instant::now();
    c.api.apply("idle", &apply(total)).await?;
    wait_running(&c, &node, total, Duration::from_secs(600)).await?;
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss(node.pid())?;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", node.pid())).map(|d| d.count()).unwrap_or(0);
    let per = after.saturating_sub(base) as f64 / f64::from(replicas);
    let result = json!({
        "replicas": replicas,
        "component": component.display().to_string(),
        "node_rss_base_bytes": base,
        "node_rss_after_bytes": after,
        "per_replica_bytes": per.round(),
        "per_replica_kib": (per / 1024.0 * 10.0).round() / 10.0,
        "all_running_s": took.as_secs_f64(),
        "node_open_files": fds,
        "note": "node RSS growth from 1 to replicas+1 running replicas of one HTTP component, divided by replicas",
    });
    println!("  {result}");
    drop(node);
    Ok(result)
}

async fn wait_running(c: &Cluster, node: &Proc, want: u32, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        node.check_alive()?;
        c.server.check_alive()?;
        if let Ok(d) = c.api.deployment("idle").await
            && d.status.running >= want
        {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("fewer than {want} replicas running after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
