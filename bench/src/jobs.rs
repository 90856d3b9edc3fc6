//! Scenario `jobs` (#19): throughput of short job runs on one real node.
//!
//! A `skiff dev`; one job of `--job-runs` completions (10,000) of wasm-sdk's
//! `job_worker` as a core module (it prints a line and exits), submitted through
//! the API, timed from the submit until the job is `succeeded` (every index
//! once), polled every 20 ms. Then the same with a container per run (busybox's
//! `sh -c 'echo …'`, host network, so no CNI per run) for `--container-job-runs`
//! completions, whose runs/s against Wasm's is the ratio. Parallelism is
//! `--job-parallelism` for both; each run requests 2m of CPU and 8Mi, so the
//! node's capacity does not limit it (1,000 at once on two cores). The scheduler's and node's CPU time (one
//! process) is read from /proc around each job.

use crate::procs::{TempDir, cpu_seconds};
use crate::{dev_cluster, ms};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use skiff_api::job::{JobSpec, JobState};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) struct JobsArgs<'a> {
    pub skiff: &'a Path,
    /// `job_worker.wasm` built for wasm32-wasip1.
    pub worker: PathBuf,
    pub runs: u32,
    pub container_runs: u32,
    pub parallelism: u32,
    /// Containers at once: each is a runc process, a mount and a cgroup; 500
    /// at once on two cores once starved the node's heartbeat past its grace
    /// (node down, every run lost and run again: 1,500 runs for 1,000).
    pub container_parallelism: u32,
    pub timeout: Duration,
}

/// Submits job `name` and waits until it succeeded; (seconds, scheduler+node
/// CPU seconds, runs made: more than the completions when runs were lost).
async fn time_job(
    dev: &crate::DevCluster,
    name: &str,
    spec: &JobSpec,
    timeout: Duration,
) -> anyhow::Result<(f64, f64, usize)> {
    let cpu0 = cpu_seconds(dev.proc.pid()).unwrap_or(0.0);
    let t0 = Instant::now();
    dev.api.put_job(name, spec).await.with_context(|| format!("submitting job {name}"))?;
    loop {
        let d = dev.api.job(name).await?;
        match d.job.state {
            JobState::Succeeded => break,
            JobState::Failed => bail!("job {name} failed: {}", d.job.reason.unwrap_or_default()),
            _ => {}
        }
        if t0.elapsed() > timeout {
            bail!("job {name}: {}/{} after {:?}", d.job.succeeded, spec.completions, timeout);
        }
        dev.proc.check_alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(dev.proc.pid()).unwrap_or(0.0) - cpu0;
    let d = dev.api.job(name).await?;
    if d.job.succeeded != spec.completions {
        bail!(
            "job {name}: {} indices succeeded in {} runs, {} wanted",
            d.job.succeeded,
            d.runs.len(),
            spec.completions
        );
    }
    Ok((secs, cpu, d.runs.len()))
}

fn spec(
    workload: Value,
    args: &[&str],
    completions: u32,
    parallelism: u32,
    network_host: bool,
) -> anyhow::Result<JobSpec> {
    let mut template = json!({
        "workload": workload,
        "resources": { "cpu": "2m", "memory": "8Mi" },
        "args": args,
        "restart": "never",
    });
    if network_host {
        template["network"] = json!("host");
    }
    Ok(serde_json::from_value(json!({
        "template": template,
        "completions": completions,
        "parallelism": parallelism,
        "backoff_limit": 0,
    }))?)
}

pub(crate) async fn scenario_jobs(a: JobsArgs<'_>) -> anyhow::Result<Value> {
    println!(
        "jobs: {} Wasm runs, then {} container runs, one job each, parallelism {}, on a skiff dev",
        a.runs, a.container_runs, a.parallelism
    );
    let bytes = std::fs::read(&a.worker)
        .with_context(|| format!("reading {} (`make wasm` builds job_worker)", a.worker.display()))?;
    let dir = TempDir::new("jobs")?;
    let dev = dev_cluster(a.skiff, &dir, &[]).await?;
    let digest = dev.upload(bytes).await?;
    // A warm-up job: the module compiled and cached, as any later run finds it.
    let warm = spec(json!({ "wasm": digest }), &[], 10, 10, false)?;
    time_job(&dev, "warm", &warm, a.timeout).await?;
    let wasm = spec(json!({ "wasm": digest }), &[], a.runs, a.parallelism, false)?;
    let (secs, cpu, made) = time_job(&dev, "wasm", &wasm, a.timeout).await?;
    let wasm_rate = f64::from(a.runs) / secs;
    println!("  wasm: {} runs in {secs:.2}s: {wasm_rate:.0} runs/s, {cpu:.1} s CPU", a.runs);
    let mut result = json!({
        "runs": a.runs,
        "parallelism": a.parallelism,
        "wasm_seconds": secs,
        "wasm_runs_per_second": wasm_rate,
        "wasm_cpu_seconds": cpu,
        "wasm_runs_made": made,
        "wasm_ms_per_run": ms(Duration::from_secs_f64(secs)) / f64::from(a.runs),
    });
    if a.container_runs == 0 {
        return Ok(result);
    }
    if !nix::unistd::Uid::effective().is_root() {
        result["containers_error"] = json!("the container half needs root (runc)");
        return Ok(result);
    }
    let node = dev.api.node("dev").await?;
    if !node.runtimes.contains(&skiff_api::Runtime::Container) {
        result["containers_error"] = json!("the dev node does not advertise containers (runc missing?)");
        return Ok(result);
    }
    let layer = crate::containers::busybox_layer()?;
    let image = crate::containers::import(&dev, &layer).await?;
    let warm = spec(json!({ "image": image }), &["/bin/sh", "-c", "echo warm"], 5, 5, true)?;
    time_job(&dev, "warm-containers", &warm, a.timeout).await?;
    let containers = spec(
        json!({ "image": image }),
        &["/bin/sh", "-c", "echo run $SKIFF_JOB_INDEX"],
        a.container_runs,
        a.container_parallelism,
        true,
    )?;
    let (csecs, ccpu, cmade) = time_job(&dev, "containers", &containers, a.timeout).await?;
    let container_rate = f64::from(a.container_runs) / csecs;
    println!(
        "  containers: {} runs in {csecs:.2}s: {container_rate:.1} runs/s, {ccpu:.1} s CPU; Wasm {:.0}x",
        a.container_runs,
        wasm_rate / container_rate
    );
    result["container_runs"] = json!(a.container_runs);
    result["container_seconds"] = json!(csecs);
    result["container_runs_per_second"] = json!(container_rate);
    result["container_cpu_seconds"] = json!(ccpu);
    result["container_parallelism"] = json!(a.container_parallelism);
    result["container_runs_made"] = json!(cmade);
    result["wasm_to_container_ratio"] = json!(wasm_rate / container_rate);
    Ok(result)
}

/// Scenario `jobs-sim`: the same job of `runs` completions on a `skiff server`
/// with `nodes` simulated nodes (`skiff node --simulate`), each of which reports
/// a job run exited 100 ms after it was assigned: the scheduler's side of job
/// throughput, without a guest.
pub(crate) async fn scenario_jobs_sim(
    skiff: &Path,
    worker: &Path,
    runs: u32,
    nodes: usize,
    parallelism: u32,
    timeout: Duration,
) -> anyhow::Result<Value> {
    println!("jobs-sim: {runs} runs on {nodes} simulated nodes, parallelism {parallelism}");
    let bytes = std::fs::read(worker)
        .with_context(|| format!("reading {} (`make wasm` builds job_worker)", worker.display()))?;
    let mut c = crate::Cluster::start(skiff, "jobs-sim", &[]).await?;
    c.simulate(skiff, nodes, "sim")?;
    c.wait_ready_nodes(nodes).await?;
    let digest = c.upload(&bytes).await?;
    let job = spec(json!({ "wasm": digest }), &[], runs, parallelism, false)?;
    let cpu0 = cpu_seconds(c.server.pid()).unwrap_or(0.0);
    let t0 = Instant::now();
    c.api.put_job("sim", &job).await.context("submitting the job")?;
    loop {
        let d = c.api.job("sim").await?;
        match d.job.state {
            JobState::Succeeded => break,
            JobState::Failed => bail!("job failed: {}", d.job.reason.unwrap_or_default()),
            _ => {}
        }
        if t0.elapsed() > timeout {
            bail!("{}/{runs} after {timeout:?}", d.job.succeeded);
        }
        c.server.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(c.server.pid()).unwrap_or(0.0) - cpu0;
    let d = c.api.job("sim").await?;
    let used: std::collections::BTreeSet<&str> = d.runs.iter().filter_map(|r| r.node.as_deref()).collect();
    let rate = f64::from(runs) / secs;
    println!("  {runs} runs in {secs:.2}s: {rate:.0} runs/s on {} nodes, scheduler {cpu:.1} s CPU", used.len());
    Ok(json!({
        "runs": runs,
        "nodes": nodes,
        "parallelism": parallelism,
        "seconds": secs,
        "runs_per_second": rate,
        "scheduler_cpu_seconds": cpu,
        "nodes_used": used.len(),
        "simulated_run_ms": 100,
    }))
}
