//! Scenario `http`: the same `wasi:http` component served by `wasmtime serve`
//! (the wasmtime CLI of the same version as skiff's wasmtime) and by a skiff
//! node's ingress, and the body it answers served by a native Rust hyper server
//! (`skiff-bench serve-native`: the limit on this machine). Each is loaded by
//! `wrk` at the same connections and threads, one after the other, twice each
//! (alternating, so that a noisy neighbour hurts all three). Reported:
//! requests/s, p50 and p99 of each, skiff / wasmtime and skiff / native.
//!
//! `make bench` runs it twice: on the hello component (`http`) and on a big
//! componentize-py handler (`http_big`, the Python app of scripts/real-apps.sh),
//! where each request's fresh instance of a big guest is most of the cost.

use crate::procs::{Proc, TempDir};
use crate::{dev_cluster, ms_from_wrk};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What wrk reported for one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
}

/// Options of the `http` scenario.
pub struct HttpArgs<'a> {
    pub skiff: &'a Path,
    pub wasmtime: &'a Path,
    pub component: &'a Path,
    pub connections: u32,
    pub seconds: u32,
    /// The deployment's name (the `Host` it is reached by).
    pub name: &'a str,
    /// The deployment's memory limit.
    pub memory: &'a str,
    /// Longest the first answer may take (a big component compiles first).
    pub ready_timeout: Duration,
}

/// The three servers, in the order each round loads them.
const SERVERS: [&str; 3] = ["wasmtime", "skiff", "native"];

pub async fn scenario_http(a: HttpArgs<'_>) -> anyhow::Result<Value> {
    println!("http: {} under wrk, skiff ingress vs wasmtime serve vs native hyper", a.component.display());
    for (what, p) in [("wasmtime", a.wasmtime), ("component", a.component)] {
        if !p.exists() {
            bail!("{what} {} not found (`make bench` installs wasmtime-cli and builds the examples)", p.display());
        }
    }
    let wrk = which("wrk").context("wrk not found; `make bench` installs Debian's wrk")?;
    let wasmtime_version = command_line(a.wasmtime, &["--version"])?;
    let dir = TempDir::new("http")?;
    let component_bytes = std::fs::metadata(a.component)?.len();

    // skiff: a dev cluster with the component deployed once (one replica: the
    // node serves every request with a fresh instance, as wasmtime serve does).
    let dev = dev_cluster(a.skiff, &dir, &["--ingress", "127.0.0.1:0"]).await?;
    let bytes = std::fs::read(a.component).with_context(|| format!("reading {}", a.component.display()))?;
    let digest = dev.upload(bytes).await?;
    let spec = json!({
        "replicas": 1,
        "spec": { "workload": { "wasm": digest }, "resources": { "cpu": "1", "memory": a.memory } },
    });
    dev.api.apply(a.name, &serde_json::from_value(spec)?).await?;
    let skiff_url = ingress_url(&dev.data)?;
    let host = format!("{}.skiff.local", a.name);
    let t0 = Instant::now();
    wait_ok(&skiff_url, Some(&host), &dev.proc, a.ready_timeout).await.context("the deployment never answered")?;
    let skiff_first_answer = t0.elapsed();

    // The native server answers what the handler answered.
    let (content_type, body) = answer(&skiff_url, &host).await?;
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, &body)?;
    let native_addr = format!("127.0.0.1:{}", free_port()?);
    let me = std::env::current_exe().context("finding skiff-bench's own binary")?;
    let body_s = body_file.display().to_string();
    let native = Proc::spawn(
        &me,
        &["serve-native", "--addr", &native_addr, "--body-file", &body_s, "--content-type", &content_type],
        &dir.path().join("native.log"),
    )?;
    let native_url = format!("http://{native_addr}/");
    wait_ok(&native_url, None, &native, Duration::from_secs(30)).await.context("the native server never answered")?;

    // wasmtime serve, on a free port.
    let addr = format!("127.0.0.1:{}", free_port()?);
    let comp = a.component.display().to_string();
    // -Scli: the wasi:cli interfaces (env, stdio) a skiff replica also gets.
    let serve = Proc::spawn(a.wasmtime, &["serve", "-Scli", "--addr", &addr, &comp], &dir.path().join("wasmtime.log"))?;
    let wasmtime_url = format!("http://{addr}/");
    wait_ok(&wasmtime_url, None, &serve, a.ready_timeout).await.context("wasmtime serve never answered")?;

    // The node's own measure of instantiation per request, over the skiff runs.
    let node = dev.api.nodes().await?.into_iter().next().context("the dev cluster has no node")?;
    let node_metrics = format!("{}/metrics", node.address.trim_end_matches('/'));
    let mut runs: Vec<(&str, Load)> = Vec::new();
    let mut skiff_instantiations = Instantiations::default();
    for _round in 0..2 {
        for server in SERVERS {
            let load = match server {
                "wasmtime" => run_wrk(&wrk, &wasmtime_url, None, a.connections, a.seconds)?,
                "native" => run_wrk(&wrk, &native_url, None, a.connections, a.seconds)?,
                _ => {
                    let before = instantiations(&node_metrics).await?;
                    let load = run_wrk(&wrk, &skiff_url, Some(&host), a.connections, a.seconds)?;
                    skiff_instantiations.add(&instantiations(&node_metrics).await?, &before);
                    load
                }
            };
            runs.push((server, load));
        }
    }
    let after = instantiations(&node_metrics).await?;
    // The same one request at a time: instantiation without 32 connections'
    // worth of other requests sharing the two cores.
    let client = reqwest::Client::new();
    for _ in 0..SEQUENTIAL {
        let r = client.get(&skiff_url).header("Host", &host).send().await?;
        if r.status() != 200 {
            bail!("the skiff ingress answered {} one request at a time", r.status());
        }
        r.bytes().await?;
    }
    let sequential = instantiations(&node_metrics).await?;
    serve.check_alive()?;
    native.check_alive()?;
    dev.proc.check_alive()?;
    let best =
        |who: &str| runs.iter().filter(|(w, _)| *w == who).map(|(_, l)| *l).max_by(|x, y| x.rps.total_cmp(&y.rps));
    let (Some(w), Some(s), Some(n)) = (best("wasmtime"), best("skiff"), best("native")) else { bail!("no wrk runs") };
    let all: Vec<Value> = runs
        .iter()
        .map(|(who, l)| json!({ "server": who, "rps": l.rps, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "errors": l.errors }))
        .collect();
    let ratio = |x: f64, y: f64| (x / y * 1000.0).round() / 1000.0;
    let result = json!({
        "component": a.component.display().to_string(),
        "component_bytes": component_bytes,
        "client": format!("wrk -t2 -c{} -d{}s --latency", a.connections, a.seconds),
        "wasmtime_version": wasmtime_version,
        "wasmtime_command": "wasmtime serve -Scli --addr ADDR COMPONENT",
        "native_command": "skiff-bench serve-native (hyper 1, http1, 2 tokio workers, the handler's body and content type)",
        "body_bytes": body.len(),
        "skiff_first_answer_s": skiff_first_answer.as_secs_f64(),
        "wasmtime_rps": w.rps,
        "wasmtime_p50_ms": w.p50_ms,
        "wasmtime_p99_ms": w.p99_ms,
        "skiff_rps": s.rps,
        "skiff_p50_ms": s.p50_ms,
        "skiff_p99_ms": s.p99_ms,
        "native_rps": n.rps,
        "native_p50_ms": n.p50_ms,
        "native_p99_ms": n.p99_ms,
        "ratio": ratio(s.rps, w.rps),
        "native_ratio": ratio(s.rps, n.rps),
        "wasmtime_native_ratio": ratio(w.rps, n.rps),
        "skiff_instantiate": skiff_instantiations.since(&Instantiations::default()),
        "skiff_instantiate_sequential": sequential.since(&after),
        "runs": all,
        "note": "best of two alternating runs each; the three servers on this machine beside the load generator",
    });
    println!("  {result}");
    Ok(result)
}

/// The node's ingress URL, from the `ingress.addr` it wrote under `data`.
pub(crate) fn ingress_url(data: &Path) -> anyhow::Result<String> {
    let ingress_file = data.join("node").join("ingress.addr");
    let ingress = std::fs::read_to_string(&ingress_file)
        .with_context(|| format!("reading {}", ingress_file.display()))?
        .trim()
        .to_string();
    // The node writes its ingress as a URL (older ones: a bare address).
    Ok(if ingress.contains("://") {
        format!("{}/", ingress.trim_end_matches('/'))
    } else {
        format!("http://{ingress}/")
    })
}

/// The content type and body `url` answers with `Host: host`.
async fn answer(url: &str, host: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let r = reqwest::Client::new().get(url).header("Host", host).send().await?.error_for_status()?;
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    Ok((content_type, r.bytes().await?.to_vec()))
}

/// Requests sent one at a time, after the wrk runs, for instantiation unloaded.
const SEQUENTIAL: usize = 2000;

/// The node's `skiff_node_http_instantiate_duration_seconds` histogram, as scraped.
#[derive(Debug, Default, PartialEq)]
struct Instantiations {
    sum: f64,
    count: f64,
    /// (upper bound in seconds, cumulative count), in the order given.
    buckets: Vec<(f64, f64)>,
}

impl Instantiations {
    /// Reads the histogram out of a Prometheus text page.
    fn parse(text: &str) -> Instantiations {
        const NAME: &str = "skiff_node_http_instantiate_duration_seconds";
        let mut h = Instantiations::default();
        for line in text.lines().filter(|l| l.starts_with(NAME)) {
            let Some((key, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            match &key[NAME.len()..] {
                "_sum" => h.sum = value,
                "_count" => h.count = value,
                bucket => {
                    if let Some(le) = bucket.strip_prefix("_bucket{le=\"").and_then(|b| b.strip_suffix("\"}"))
                        && let Ok(le) = le.parse::<f64>()
                    {
                        h.buckets.push((le, value));
                    }
                }
            }
        }
        h
    }

    /// Adds what happened between `before` and `now` (runs apart, summed).
    fn add(&mut self, now: &Instantiations, before: &Instantiations) {
        self.sum += now.sum - before.sum;
        self.count += now.count - before.count;
        for &(le, n) in &now.buckets {
            let was = before.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            match self.buckets.iter_mut().find(|b| b.0 == le) {
                Some(b) => b.1 += n - was,
                None => self.buckets.push((le, n - was)),
            }
        }
    }

    /// What happened between `before` and now: requests, mean and the bucket
    /// bounds under which half and 99% of them fell.
    fn since(&self, before: &Instantiations) -> Value {
        let count = self.count - before.count;
        let done: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|&(le, n)| (le, n - before.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1)))
            .collect();
        let under = |q: f64| done.iter().find(|(_, n)| *n >= q * count).map(|(le, _)| le * 1e6);
        json!({
            "requests": count,
            "mean_us": (count > 0.0).then(|| ((self.sum - before.sum) / count * 1e7).round() / 10.0),
            "p50_under_us": under(0.5),
            "p99_under_us": under(0.99),
        })
    }
}

/// Scrapes the instantiation histogram from the node's metrics at `url`.
async fn instantiations(url: &str) -> anyhow::Result<Instantiations> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    Ok(Instantiations::parse(&text))
}

pub(crate) fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(bin)).find(|p| p.exists())
}

fn command_line(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out =
        std::process::Command::new(bin).args(args).output().with_context(|| format!("running {}", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits up to `timeout` for a 200 from `url`.
pub(crate) async fn wait_ok(url: &str, host: Option<&str>, server: &Proc, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        let mut req = client.get(url);
        if let Some(h) = host {
            req = req.header("Host", h);
        }
        if let Ok(r) = req.send().await
            && r.status() == 200
        {
            return Ok(());
        }
        server.check_alive()?;
        if t0.elapsed() > timeout {
            bail!("no 200 from {url} within {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn run_wrk(
    wrk: &Path,
    url: &str,
    host: Option<&str>,
    connections: u32,
    seconds: u32,
) -> anyhow::Result<Load> {
    let mut cmd = std::process::Command::new(wrk);
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency"]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output: {text}"))
}

/// Requests/s, the 50% and 99% latencies and the error count from wrk's output.
fn parse_wrk(text: &str) -> anyhow::Result<Load> {
    let field = |prefix: &str| {
        text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix)).map(|rest| rest.trim().to_string())
    };
    let rps: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let p50_ms = ms_from_wrk(&field("50%").context("no 50% latency (run with --latency)")?)?;
    let p99_ms = ms_from_wrk(&field("99%").context("no 99% latency")?)?;
    // "Non-2xx or 3xx responses: N" and "Socket errors: connect A, read B, write C, timeout D".
    let mut errors = field("Non-2xx or 3xx responses:").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    if let Some(sock) = field("Socket errors:") {
        errors += sock.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
    }
    Ok(Load { rps, p50_ms, p99_ms, errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\n  Latency Distribution\n     50%  412.00us\n     75%    1.20ms\n     90%    2.50ms\n     99%   10.31ms\n  123456 requests in 10.00s, 12.34MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  12345.67\nTransfer/sec:      1.23MB\n";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.rps, 12345.67);
        assert!((l.p50_ms - 0.412).abs() < 1e-9, "{}", l.p50_ms);
        assert_eq!(l.p99_ms, 10.31);
        assert_eq!(l.errors, 7);
    }

    #[test]
    fn instantiation_histogram_is_read_and_differenced() {
        let page = |sum: f64, n: [u32; 3]| {
            format!(
                "# TYPE skiff_node_http_instantiate_duration_seconds histogram\n\
                 skiff_node_http_instantiate_duration_seconds_bucket{{le=\"0.00001\"}} {}\n\
                 skiff_node_http_instantiate_duration_seconds_bucket{{le=\"0.00002\"}} {}\n\
                 skiff_node_http_instantiate_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 skiff_node_http_instantiate_duration_seconds_sum {sum}\n\
                 skiff_node_http_instantiate_duration_seconds_count {}\n\
                 skiff_node_wasm_instantiate_duration_seconds_count 9\n",
                n[0], n[1], n[2], n[2]
            )
        };
        let before = Instantiations::parse(&page(0.001, [10, 20, 20]));
        assert_eq!(before.count, 20.0);
        assert_eq!(before.buckets.len(), 3);
        // 100 more: 40 under 10 µs, 59 more under 20 µs, one slower; 1.5 ms in all.
        let after = Instantiations::parse(&page(0.0025, [50, 119, 120]));
        let d = after.since(&before);
        assert_eq!(d["requests"], 100.0);
        assert_eq!(d["mean_us"], 15.0);
        assert_eq!(d["p50_under_us"], 20.0);
        assert_eq!(d["p99_under_us"], 20.0);
    }
}
