//! Scenario `routes`: does the number of names a node routes slow a request?
//! One `skiff dev` serves the hello component as deployment `hello` (one
//! replica) beside 9 other deployments at zero replicas: every node's ingress
//! routes by the scheduler's endpoints table, which holds every deployment, so
//! these are 10 names. The same requests to `hello` are measured, then 99,990
//! more deployments at zero are applied (100,000 names) and they are measured
//! again: `wrk` (as in the `http` scenario) and requests sent one at a time
//! (each timed by the bench, over one kept-alive connection).
//!
//! Recorded besides: the rate of the 99,990 applies, the `skiff dev` process's
//! RSS before and after (scheduler and node in one process), the time until
//! the node's ingress knew the last name, and the endpoints table's size and
//! fetch time at 100,000 names (every node fetches it whole after each change).

use crate::http::{Load, ingress_url, run_wrk, wait_ok, which};
use crate::procs::{TempDir, rss};
use crate::{DevCluster, apply_request_with, dev_cluster, ms, percentile};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Applies in flight at once while filling the table.
const APPLY_CONCURRENCY: usize = 16;
/// Requests sent one at a time per measurement.
const SEQUENTIAL: usize = 2000;

/// Options of the `routes` scenario.
pub struct RoutesArgs<'a> {
    pub skiff: &'a Path,
    pub component: &'a Path,
    pub names: u32,
    pub connections: u32,
    pub seconds: u32,
}

pub async fn scenario_routes(a: RoutesArgs<'_>) -> anyhow::Result<Value> {
    println!("routes: requests to one deployment with 10 names routed, then {}", a.names);
    let wrk = which("wrk").context("wrk not found; `make bench` installs Debian's wrk")?;
    let dir = TempDir::new("routes")?;
    // skiff dev holds up to 200,000 deployments (the server's --max-objects default).
    let dev = dev_cluster(a.skiff, &dir, &["--ingress", "127.0.0.1:0"]).await?;
    let bytes = std::fs::read(a.component).with_context(|| format!("reading {}", a.component.display()))?;
    let digest = dev.upload(bytes).await?;
    let resources = json!({ "cpu": "1", "memory": "64Mi" });
    dev.api.apply("hello", &apply_request_with(&digest, 1, resources.clone())).await?;
    let zero = apply_request_with(&digest, 0, resources);
    for i in 1..10 {
        dev.api.apply(&name(i), &zero).await?;
    }
    let url = ingress_url(&dev.data)?;
    wait_ok(&url, Some("hello.skiff.local"), &dev.proc, Duration::from_secs(60)).await?;
    wait_known(&url, &name(9), &dev, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ten = measure(&wrk, &url, &a).await?;
    let rss_ten = rss(dev.proc.pid())?;
    println!("  10 names: {ten}");

    // The rest, at zero replicas, several applies at once.
    let t0 = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    for i in 10..a.names {
        if inflight.len() >= APPLY_CONCURRENCY
            && let Some(done) = inflight.join_next().await
        {
            done??;
        }
        let (api, req) = (dev.api.clone(), zero.clone());
        inflight.spawn(async move {
            api.apply(&name(i), &req).await.with_context(|| format!("applying deployment {}", name(i)))?;
            Ok::<(), anyhow::Error>(())
        });
        if i % 10_000 == 0 {
            println!("  {i} applied after {:.1}s", t0.elapsed().as_secs_f64());
            dev.proc.check_alive()?;
        }
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    let applied = t0.elapsed();
    let last = name(a.names - 1);
    wait_known(&url, &last, &dev, Duration::from_secs(600)).await?;
    let known = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_all = rss(dev.proc.pid())?;
    let table = endpoints_table(&dev).await?;
    let all = measure(&wrk, &url, &a).await?;
    println!("  {} names: {all}", a.names);
    dev.proc.check_alive()?;
    let added = f64::from(a.names - 10);
    let result = json!({
        "names": a.names,
        "component": a.component.display().to_string(),
        "ten": ten,
        "all": all,
        "apply_s": applied.as_secs_f64(),
        "applies_per_s": (added / applied.as_secs_f64()).round(),
        "apply_concurrency": APPLY_CONCURRENCY,
        "ingress_knew_last_s": known.as_secs_f64(),
        "dev_rss_ten_bytes": rss_ten,
        "dev_rss_all_bytes": rss_all,
        "dev_bytes_per_deployment": ((rss_all as f64 - rss_ten as f64) / added).round(),
        "endpoints_table": table,
        "note": "skiff dev (scheduler and node in one process); names past hello are deployments at 0 replicas; latency of requests to hello",
    });
    println!("  {result}");
    Ok(result)
}

fn name(i: u32) -> String {
    format!("r{i:06}")
}

/// wrk's best of two runs and the one-at-a-time latencies of requests to `hello`.
async fn measure(wrk: &Path, url: &str, a: &RoutesArgs<'_>) -> anyhow::Result<Value> {
    let mut best: Option<Load> = None;
    for _ in 0..2 {
        let l = run_wrk(wrk, url, Some("hello.skiff.local"), a.connections, a.seconds)?;
        if best.is_none_or(|b| l.rps > b.rps) {
            best = Some(l);
        }
    }
    let Some(w) = best else { bail!("no wrk run") };
    let client = reqwest::Client::new();
    let mut lat = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        let r = client.get(url).header("Host", "hello.skiff.local").send().await?;
        let status = r.status();
        r.bytes().await?;
        lat.push(ms(t.elapsed()));
        if status != 200 {
            bail!("hello answered {status}");
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(json!({
        "wrk": { "rps": w.rps, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "errors": w.errors,
                 "client": format!("wrk -t2 -c{} -d{}s --latency", a.connections, a.seconds) },
        "sequential_ms": { "requests": SEQUENTIAL, "p50": percentile(&lat, 50.0), "p99": percentile(&lat, 99.0) },
    }))
}

/// Waits until the node's ingress knows deployment `name` (anything but 404).
async fn wait_known(url: &str, name: &str, dev: &DevCluster, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let host = format!("{name}.skiff.local");
    let t0 = Instant::now();
    loop {
        if let Ok(r) = client.get(url).header("Host", &host).send().await
            && r.status() != 404
        {
            return Ok(());
        }
        dev.proc.check_alive()?;
        if t0.elapsed() > timeout {
            bail!("the ingress did not know {name} within {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The endpoints table as a node fetches it: its size and the time of 5 fetches.
async fn endpoints_table(dev: &DevCluster) -> anyhow::Result<Value> {
    let mut times = Vec::new();
    let mut names = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let table = dev.api.endpoints(0, Duration::ZERO).await?;
        times.push(ms(t.elapsed()));
        names = table.deployments.len();
    }
    let body = serde_json::to_vec(&dev.api.endpoints(0, Duration::ZERO).await?)?;
    times.sort_by(f64::total_cmp);
    Ok(json!({ "names": names, "json_bytes": body.len(), "fetch_ms": { "min": times[0], "median": times[2] } }))
}
