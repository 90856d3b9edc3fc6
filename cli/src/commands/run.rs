//! `skiff run`: a one-run job, the way people use `docker run` and `kubectl
//! run`: its output streamed to the terminal as it runs (stdout to stdout,
//! stderr to stderr), the run's exit status as skiff's own, Ctrl-C stops it.

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use skiff_api::job::{JobSpec, JobState, RunOutcome};
use skiff_api::quantity::{Cpu, Memory};
use skiff_api::{Client, Workload};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The .wasm file to run (a WASI command: a p1 module or a p2 component)
    file: Option<PathBuf>,
    /// Run this OCI image instead (imported with `skiff image import`, or from a registry)
    #[arg(long, conflicts_with = "file")]
    image: Option<String>,
    /// Environment variable KEY=VALUE (repeatable)
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Memory request and limit
    #[arg(long, default_value = "64Mi")]
    memory: String,
    /// CPU request
    #[arg(long, default_value = "100m")]
    cpu: String,
    /// Node labels the node must carry (k=v, repeatable)
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// The job's name [default: run-<random>]
    #[arg(long)]
    name: Option<String>,
    /// Print the job's name and leave it running
    #[arg(short = 'd', long)]
    detach: bool,
    /// How long the finished job (and its log) is kept
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Arguments (after --): the program's, or the image's command
    #[arg(last = true)]
    args: Vec<String>,
}

/// A name for a run: `run-` and eight random characters.
fn random_name() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut raw);
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let suffix: String = raw
        .iter()
        .enumerate()
        .map(|(i, b)| ALPHABET[(*b as usize + (nanos as usize >> i)) % ALPHABET.len()] as char)
        .collect();
    format!("run-{suffix}")
}

/// Writes one log line (`TIME STREAM TEXT`) where it belongs: the guest's
/// stdout and stderr to ours; the node's own lines are left out.
fn emit(line: &str) {
    let mut parts = line.splitn(3, ' ');
    let (_, stream, text) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match stream {
        "stdout" => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}").and_then(|()| out.flush());
        }
        "stderr" => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        }
        _ => {}
    }
}

/// Streams run output as it comes, counting the lines seen.
async fn follow(client: Client, name: String, seen: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let stream = client.job_logs(&name, Some(0), true, None, true).await?;
    tokio::pin!(stream);
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("the log stream broke off")?);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            emit(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref());
            seen.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

pub async fn run(args: RunArgs, client: &Client) -> anyhow::Result<()> {
    let workload = match (&args.file, &args.image) {
        (Some(f), None) => {
            let bytes = super::deploy::read_wasm(f)?;
            Workload::Wasm(super::deploy::upload(client, f, bytes).await?)
        }
        (None, Some(i)) => Workload::Image(i.clone()),
        _ => bail!("give a .wasm file or --image IMAGE to run"),
    };
    let memory: Memory = args.memory.parse().map_err(anyhow::Error::msg).context("--memory")?;
    let cpu: Cpu = args.cpu.parse().map_err(anyhow::Error::msg).context("--cpu")?;
    let env = super::parse_env(&args.env)?;
    let constraints = super::parse_labels("--constraint", &args.constraints)?;
    let ttl = skiff_api::job::parse_duration_secs(&args.ttl).map_err(anyhow::Error::msg).context("--ttl")?;
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "template": {
            "workload": workload,
            "resources": { "cpu": cpu, "memory": memory },
            "env": env,
            "args": args.args,
            "restart": "never",
            "constraints": constraints,
        },
        "completions": 1,
        "parallelism": 1,
        "backoff_limit": 0,
        "ttl_seconds_after_finished": ttl,
    }))
    .context("building the job")?;
    let name = args.name.clone().unwrap_or_else(random_name);
    skiff_api::job::validate_job(&name, &spec).map_err(anyhow::Error::msg)?;
    let (job, created) = client.put_job(&name, &spec).await.with_context(|| format!("job {name}"))?;
    if !created {
        bail!("job {name} exists already; pick another --name or `skiff delete job {name}`");
    }
    if args.detach {
        println!("{}", job.name);
        return Ok(());
    }
    let code = tokio::select! {
        code = watch(client, &name) => code?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("skiff: stopping run {name}");
            client.delete_job(&name).await.with_context(|| format!("stopping job {name}"))?;
            130
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Streams job `name`'s one run until it ends; its exit status.
async fn watch(client: &Client, name: &str) -> anyhow::Result<i32> {
    let seen = Arc::new(AtomicUsize::new(0));
    let mut streaming: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let mut told = None;
    let detail = loop {
        let d = client.job(name).await?;
        let run = d.runs.last();
        if d.job.state.is_finished() {
            break d;
        }
        // Its namespace's quota full (#20): the run starts once there is room.
        if run.is_none()
            && let Some(why) = d.job.reason.as_deref().filter(|r| r.starts_with("runs wait for quota"))
            && told.as_deref() != Some(why)
        {
            eprintln!("skiff: job {name} waits: {why}");
            told = Some(why.to_string());
        }
        if let Some(run) = run {
            if run.node.is_none() && run.outcome == RunOutcome::Running && run.reason.is_some() {
                let why = run.reason.clone().unwrap_or_default();
                client.delete_job(name).await.ok();
                bail!("the run cannot be placed: {why}");
            }
            if run.node.is_some() && streaming.is_none() {
                streaming = Some(tokio::spawn(follow(client.clone(), name.to_string(), seen.clone())));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(task) = streaming {
        task.abort();
        let _ = task.await;
    }
    // What the follower had not printed yet: the run's whole log, past the
    // lines already seen.
    let printed = seen.load(Ordering::SeqCst);
    if detail.runs.last().is_some_and(|r| r.node.is_some()) {
        let stream = client.job_logs(name, Some(0), false, None, true).await?;
        let body: Vec<u8> = stream
            .fold(Vec::new(), |mut acc, chunk| async move {
                if let Ok(c) = chunk {
                    acc.extend_from_slice(&c);
                }
                acc
            })
            .await;
        for line in String::from_utf8_lossy(&body).lines().skip(printed) {
            emit(line);
        }
    }
    let run = detail.runs.last();
    let code = match (detail.job.state, run.and_then(|r| r.exit_code)) {
        (JobState::Succeeded, _) => 0,
        (_, Some(c)) => c,
        _ => {
            let why = detail.job.reason.clone().unwrap_or_else(|| "the run failed".into());
            eprintln!("skiff: job {name} failed: {why}");
            1
        }
    };
    Ok(code)
}
