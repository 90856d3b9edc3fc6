//! Scenario `density`: 100,000 HTTP Wasm deployments at zero replicas on a
//! `skiff server` and one real `skiff node` (one small component, so one
//! compile), all routable.
//!
//! Recorded: the scheduler's and the node's RSS with all of them deployed, the
//! rate of the applies, then the first request to each of 10,000 randomly
//! chosen names, one at a time through the node's ingress (each a cold start:
//! p50/p99), after which those are warm (one replica each, idle for an hour
//! before they go back to zero) and more are scaled to one replica up to
//! `warm` (10,000): the RSS of both processes again and the node's growth per
//! warm replica.

use crate::cold::{scale_to_zero_request_idle, timed_get};
use crate::http::wait_ok;
use crate::procs::{peak_rss, rss};
use crate::{Cluster, apply_request_with, ms, percentile};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Applies in flight at once.
const APPLY_CONCURRENCY: usize = 16;
/// Idle seconds of the deployments: longer than the run, so the warm stay warm.
const IDLE_SECONDS: u32 = 3600;

/// Options of the `density` scenario.
pub struct DensityArgs<'a> {
    pub skiff: &'a Path,
    pub component: &'a Path,
    pub deployments: u32,
    pub cold: u32,
    /// Deployments warm at the end (the cold ones and more, scaled to 1).
    pub warm: u32,
}

pub async fn scenario_density(a: DensityArgs<'_>) -> anyhow::Result<Value> {
    println!("density: {} HTTP Wasm deployments at zero, {} cold requests", a.deployments, a.cold);
    let bytes = std::fs::read(a.component).with_context(|| format!("reading {}", a.component.display()))?;
    let max = (a.deployments + 100).to_string();
    let c = Cluster::start(a.skiff, "density", &["--max-objects", &max]).await?;
    let node = c.real_node(a.skiff, "density", "100000", "2000Gi", &["--activation-timeout", "120s"])?;
    c.wait_ready_nodes(1).await?;
    let digest = c.upload(&bytes).await?;
    // Compiled once, before anything is measured.
    c.api.apply("warm", &apply_request_with(&digest, 1, json!({ "cpu": "1m", "memory": "4Mi" }))).await?;
    let url = crate::http::ingress_url(c.dir.path())?;
    wait_ok(&url, Some("warm.skiff.local"), &node, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sched_base, node_base) = (rss(c.server.pid())?, rss(node.pid())?);

    let zero = scale_to_zero_request_idle(&digest, 0, "4Mi", IDLE_SECONDS)?;
    let t0 = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..a.deployments {
        if inflight.len() >= APPLY_CONCURRENCY
            && let Some(done) = inflight.join_next().await
        {
            done??;
        }
        let (api, req) = (c.api.clone(), zero.clone());
        inflight.spawn(async move {
            api.apply(&name(i), &req).await.with_context(|| format!("applying deployment {}", name(i)))?;
            Ok::<(), anyhow::Error>(())
        });
        if i > 0 && i % 10_000 == 0 {
            println!("  {i} applied after {:.1}s", t0.elapsed().as_secs_f64());
            c.server.check_alive()?;
            node.check_alive()?;
        }
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    let applied = t0.elapsed();
    // Every name is in the table the ingresses route by.
    loop {
        let t = c.api.endpoints(0, Duration::ZERO).await?;
        if t.scale_to_zero.len() >= a.deployments as usize {
            break;
        }
        if t0.elapsed() > applied + Duration::from_secs(120) {
            bail!("only {} names at zero in the endpoints table", t.scale_to_zero.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The node's copy follows within its long poll; then quiet before RSS is read.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (sched_zero, node_zero) = (rss(c.server.pid())?, rss(node.pid())?);
    println!(
        "  all applied after {:.1}s; scheduler RSS {} MiB, node RSS {} MiB",
        applied.as_secs_f64(),
        sched_zero >> 20,
        node_zero >> 20
    );

    // Cold requests to distinct random names, one at a time.
    let mut picks: Vec<u32> = (0..a.deployments).collect();
    fastrand::seed(17);
    fastrand::shuffle(&mut picks);
    picks.truncate(a.cold as usize);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let mut lat = Vec::with_capacity(picks.len());
    let t1 = Instant::now();
    for (k, i) in picks.iter().enumerate() {
        lat.push(ms(timed_get(&client, &url, &name(*i)).await?));
        if k > 0 && k % 1000 == 0 {
            println!("  {k} cold requests after {:.1}s", t1.elapsed().as_secs_f64());
            node.check_alive()?;
        }
    }
    let cold_s = t1.elapsed();
    // Then `warm` of them (the cold ones first) scaled to one replica each.
    let mut more: Vec<u32> = (0..a.deployments).collect();
    fastrand::shuffle(&mut more);
    let mut want: Vec<u32> = picks.clone();
    want.extend(more.into_iter().filter(|i| !picks.contains(i)).take((a.warm as usize).saturating_sub(picks.len())));
    let mut inflight = tokio::task::JoinSet::new();
    for i in want.iter().skip(picks.len()).copied() {
        if inflight.len() >= APPLY_CONCURRENCY
            && let Some(done) = inflight.join_next().await
        {
            done??;
        }
        let api = c.api.clone();
        inflight.spawn(async move {
            api.scale(&name(i), 1).await.with_context(|| format!("scaling {} to 1", name(i)))?;
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    // Reported ready by the node: every one of them warm.
    let warm_deadline = Instant::now() + Duration::from_secs(300);
    let warm = loop {
        let ds = c.api.deployments().await?;
        let ready = ds.iter().filter(|d| d.name.starts_with('z') && d.status.ready >= 1).count();
        if ready >= want.len() || Instant::now() > warm_deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Quiet (no table change to parse) before RSS is read.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (sched_warm, node_warm) = (rss(c.server.pid())?, rss(node.pid())?);
    c.server.check_alive()?;
    node.check_alive()?;
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let per_deployment = |after: u64, before: u64| ((after as f64 - before as f64) / f64::from(a.deployments)).round();
    let result = json!({
        "deployments": a.deployments,
        "component": a.component.display().to_string(),
        "apply_s": applied.as_secs_f64(),
        "applies_per_s": (f64::from(a.deployments) / applied.as_secs_f64()).round(),
        "apply_concurrency": APPLY_CONCURRENCY,
        "scheduler_rss_base_bytes": sched_base,
        "node_rss_base_bytes": node_base,
        "scheduler_rss_zero_bytes": sched_zero,
        "node_rss_zero_bytes": node_zero,
        "scheduler_bytes_per_deployment": per_deployment(sched_zero, sched_base),
        "node_bytes_per_deployment": per_deployment(node_zero, node_base),
        "cold_requests": lat.len(),
        "cold_ms": { "p50": percentile(&sorted, 50.0), "p99": percentile(&sorted, 99.0), "max": sorted.last() },
        "cold_total_s": cold_s.as_secs_f64(),
        "warm_replicas": warm,
        "scheduler_rss_warm_bytes": sched_warm,
        "node_rss_warm_bytes": node_warm,
        "node_bytes_per_warm_replica": ((node_warm as f64 - node_zero as f64) / warm.max(1) as f64).round(),
        "scheduler_peak_rss_bytes": peak_rss(c.server.pid())?,
        "node_peak_rss_bytes": peak_rss(node.pid())?,
        "note": "skiff server + one skiff node on this machine; deployments at 0 replicas with scale_to_zero; cold requests one at a time through the node's ingress to distinct random names, timed by the client to the whole response",
    });
    println!("  {result}");
    drop(node);
    Ok(result)
}

fn name(i: u32) -> String {
    format!("z{i:06}")
}
