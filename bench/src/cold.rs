//! Scenario `cold`: the first request to a Wasm HTTP deployment scaled to
//! zero, end to end through the ingress of a `skiff dev`.
//!
//! - Artifact cached: the hello component is compiled once (a warm-up
//!   deployment); then `cold_starts` deployments of it with
//!   `scale_to_zero: {idle_seconds: 1}` are deployed, left to go to zero, and
//!   each gets one request, one after the other: each request is a cold start
//!   (the ingress holds it, the scheduler places a replica, the node starts it,
//!   routes it and serves the request). Rounds repeat until `cold_starts`
//!   requests are timed.
//! - First time on the node: deployments at zero whose component the node has
//!   never seen (hello with a custom section of its own appended: a new
//!   digest), so the first request also fetches and compiles it; the same once
//!   for the big componentize-py handler when given.

use crate::http::{ingress_url, wait_ok};
use crate::procs::TempDir;
use crate::{DevCluster, dev_cluster, ms, percentile};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Idle seconds of the benchmark's deployments (the least allowed).
const IDLE_SECONDS: u32 = 1;
/// First-time cold starts of new hello digests.
const FIRST_TIME: usize = 5;

/// Options of the `cold` scenario.
pub struct ColdArgs<'a> {
    pub skiff: &'a Path,
    pub component: &'a Path,
    pub big_component: Option<&'a Path>,
    pub cold_starts: usize,
}

/// An apply request for Wasm blob `digest` that scales to zero after
/// [`IDLE_SECONDS`], with `replicas` to start with.
fn scale_to_zero_request(digest: &str, replicas: u32, memory: &str) -> anyhow::Result<skiff_api::ApplyRequest> {
    scale_to_zero_request_idle(digest, replicas, memory, IDLE_SECONDS)
}

/// An apply request for Wasm blob `digest` that scales to zero after `idle`
/// seconds, with `replicas` to start with.
pub(crate) fn scale_to_zero_request_idle(
    digest: &str,
    replicas: u32,
    memory: &str,
    idle: u32,
) -> anyhow::Result<skiff_api::ApplyRequest> {
    let req = json!({
        "replicas": replicas,
        "scale_to_zero": { "idle_seconds": idle },
        "spec": { "workload": { "wasm": digest }, "resources": { "cpu": "10m", "memory": memory } },
    });
    serde_json::from_value(req).context("an apply request with scale_to_zero (is this skiff's API older than #17?)")
}

pub async fn scenario_cold(a: ColdArgs<'_>) -> anyhow::Result<Value> {
    println!("cold: {} cold requests to Wasm deployments at zero through the ingress", a.cold_starts);
    let dir = TempDir::new("cold")?;
    let dev = dev_cluster(a.skiff, &dir, &["--ingress", "127.0.0.1:0", "--activation-timeout", "300s"]).await?;
    let url = ingress_url(&dev.data)?;
    let hello = std::fs::read(a.component).with_context(|| format!("reading {}", a.component.display()))?;
    let digest = dev.upload(hello.clone()).await?;

    // Compiled once, before anything is timed.
    dev.api.apply("warm", &crate::apply_request_with(&digest, 1, json!({ "cpu": "10m", "memory": "64Mi" }))).await?;
    wait_ok(&url, Some("warm.skiff.local"), &dev.proc, Duration::from_secs(60)).await?;

    let batch = a.cold_starts.min(200);
    let names: Vec<String> = (0..batch).map(|i| format!("cold-{i:03}")).collect();
    for n in &names {
        dev.api.apply(n, &scale_to_zero_request(&digest, 1, "64Mi")?).await?;
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    let mut lat = Vec::new();
    let mut rounds = 0;
    while lat.len() < a.cold_starts {
        wait_all_at_zero(&dev, &names, Duration::from_secs(120)).await?;
        rounds += 1;
        for n in &names {
            if lat.len() >= a.cold_starts {
                break;
            }
            lat.push(ms(timed_get(&client, &url, n).await?));
        }
    }
    lat.sort_by(f64::total_cmp);

    // First time on the node: new digests, deployed at zero.
    let mut first = Vec::new();
    for i in 0..FIRST_TIME {
        let bytes = with_custom_section(&hello, &format!("skiff-bench first-time {i} {}", std::process::id()));
        let d = dev.upload(bytes).await?;
        let name = format!("first-{i}");
        dev.api.apply(&name, &scale_to_zero_request(&d, 0, "64Mi")?).await?;
        wait_all_at_zero(&dev, std::slice::from_ref(&name), Duration::from_secs(30)).await?;
        wait_known(&dev, &url, &name).await?;
        first.push(ms(timed_get(&client, &url, &name).await?));
    }
    first.sort_by(f64::total_cmp);
    let big = match a.big_component {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let size = bytes.len();
            let d = dev.upload(bytes).await?;
            dev.api.apply("big", &scale_to_zero_request(&d, 0, "256Mi")?).await?;
            wait_all_at_zero(&dev, &["big".to_string()], Duration::from_secs(30)).await?;
            wait_known(&dev, &url, "big").await?;
            let cold_first = timed_get(&client, &url, "big").await?;
            // And once more cold, now that the node has compiled it.
            wait_all_at_zero(&dev, &["big".to_string()], Duration::from_secs(120)).await?;
            let cold_cached = timed_get(&client, &url, "big").await?;
            Some(json!({
                "component": path.display().to_string(),
                "artifact_bytes": size,
                "first_time_ms": ms(cold_first),
                "cached_ms": ms(cold_cached),
            }))
        }
        None => None,
    };
    dev.proc.check_alive()?;
    let result = json!({
        "component": a.component.display().to_string(),
        "artifact_bytes": hello.len(),
        "cold_starts": lat.len(),
        "deployments": batch,
        "rounds": rounds,
        "cached_ms": { "p50": percentile(&lat, 50.0), "p99": percentile(&lat, 99.0), "max": lat.last() },
        "first_time_ms": { "samples": first.len(), "p50": percentile(&first, 50.0), "max": first.last() },
        "big": big,
        "idle_seconds": IDLE_SECONDS,
        "note": "skiff dev; one GET per deployment at zero through the node's ingress, timed by the client to the whole response; requests one at a time",
    });
    println!("  {result}");
    Ok(result)
}

/// A GET of `/` on deployment `name` through the ingress, timed; must be 200.
pub(crate) async fn timed_get(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = client.get(url).header("Host", format!("{name}.skiff.local")).send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    let took = t.elapsed();
    if status != 200 {
        bail!("{name} answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(took)
}

/// Waits until every deployment of `names` is scaled to zero and has no
/// replica left running.
pub(crate) async fn wait_all_at_zero(dev: &DevCluster, names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let all = dev.api.deployments().await?;
        let left = names
            .iter()
            .filter(|n| {
                !all.iter().any(|d| &d.name == *n && d.scaled_to_zero() && d.status.running == 0 && d.status.ready == 0)
            })
            .count();
        if left == 0 {
            return Ok(());
        }
        dev.proc.check_alive()?;
        if t0.elapsed() > timeout {
            bail!("{left} of {} deployments not at zero after {}s", names.len(), timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the ingress knows `name` as a deployment at zero (not a 404):
/// a request before then would be refused, not held.
async fn wait_known(dev: &DevCluster, url: &str, name: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if let Ok(t) = dev.api.endpoints(0, Duration::ZERO).await
            && t.scale_to_zero.contains(name)
        {
            // The node's copy follows the scheduler's within its long poll.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("{name} not in the endpoints table's scale_to_zero after 30s (ingress {url})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `component` with a custom section named `name` appended: the same code
/// under a new digest (a component may carry custom sections at its top level).
pub(crate) fn with_custom_section(component: &[u8], name: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}
