//! Jobs and crons: `get jobs|crons`, `describe job|cron`, `delete job|cron`,
//! `logs job/NAME`, `cron trigger`, and the jobs and crons of `apply`.

use crate::output::{Format, Table, age, print_encoded, resources};
use anyhow::Context;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use skiff_api::job::{CronSpec, JobSpec, RunOutcome, format_secs};
use skiff_api::{Client, Cron, Job, JobRun, Workload};
use std::io::Write;
use std::path::Path;

/// `skiff cron ...`.
#[derive(Debug, Args)]
pub struct CronArgs {
    #[command(subcommand)]
    action: CronAction,
}

#[derive(Debug, Subcommand)]
enum CronAction {
    /// Start a job of the cron now, whatever its schedule
    Trigger {
        /// The cron
        name: String,
    },
}

pub async fn cron(args: CronArgs, client: &Client) -> anyhow::Result<()> {
    match args.action {
        CronAction::Trigger { name } => {
            let job = client.trigger_cron(&name).await?;
            println!("job {} started", job.name);
            Ok(())
        }
    }
}

/// A namespace as shown (`default` for a server that names none).
fn shown_namespace(ns: &str) -> String {
    if ns.is_empty() { skiff_api::namespace::DEFAULT.to_string() } else { ns.to_string() }
}

/// `1.2s`, `340ms`, `3m2s`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format_secs(ms / 1000)
    }
}

/// `in 42s` / `3s ago` of a time.
fn relative(ms: u64) -> String {
    let now = skiff_api::now_ms();
    if ms >= now { format!("in {}", duration(ms - now)) } else { format!("{} ago", duration(now - ms)) }
}

/// `headers`, after a NAMESPACE column when `all` (`get -A`).
fn table(all: bool, headers: &[&str]) -> Table {
    let mut h = if all { vec!["NAMESPACE"] } else { Vec::new() };
    h.extend_from_slice(headers);
    Table::new(&h)
}

/// `row`, after its namespace when `all`.
fn row(all: bool, ns: &str, mut row: Vec<String>) -> Vec<String> {
    if all {
        row.insert(0, shown_namespace(ns));
    }
    row
}

fn jobs_table(jobs: &[Job], all: bool) -> Table {
    let mut t = table(all, &["NAME", "STATE", "COMPLETIONS", "ACTIVE", "FAILED", "DURATION", "AGE", "REASON"]);
    for j in jobs {
        let took = match (j.started_ms, j.finished_ms) {
            (Some(s), Some(f)) => duration(f.saturating_sub(s)),
            (Some(s), None) => duration(skiff_api::now_ms().saturating_sub(s)),
            _ => "-".into(),
        };
        t.row(row(
            all,
            &j.namespace,
            vec![
                j.name.clone(),
                j.state.to_string(),
                format!("{}/{}", j.succeeded, j.spec.completions),
                j.active.to_string(),
                j.failed.to_string(),
                took,
                age(j.created_ms),
                j.reason.clone().unwrap_or_else(|| "-".into()),
            ],
        ));
    }
    t
}

fn crons_table(crons: &[Cron], all: bool) -> Table {
    let mut t = table(all, &["NAME", "SCHEDULE", "TIME ZONE", "SUSPEND", "LAST SCHEDULED", "LAST JOB", "NEXT", "AGE"]);
    for c in crons {
        t.row(row(
            all,
            &c.namespace,
            vec![
                c.name.clone(),
                c.spec.schedule.clone(),
                c.spec.time_zone.clone(),
                c.spec.suspend.to_string(),
                c.last_scheduled_ms.map(relative).unwrap_or_else(|| "-".into()),
                c.last_job.clone().unwrap_or_else(|| "-".into()),
                c.next_ms.map(relative).unwrap_or_else(|| "-".into()),
                age(c.created_ms),
            ],
        ));
    }
    t
}

/// The clients of every namespace the token may see (`get -A`), each with
/// its namespace's name.
async fn every_namespace(client: &Client) -> anyhow::Result<Vec<(String, Client)>> {
    let spaces = client.namespaces().await.context("listing the namespaces")?;
    Ok(spaces.into_iter().map(|n| (n.name.clone(), client.clone().with_namespace(&n.name))).collect())
}

/// `skiff get jobs [NAME] [-A]`.
pub async fn get_jobs(client: &Client, name: Option<&str>, format: Format, all: bool) -> anyhow::Result<()> {
    let jobs = match name {
        Some(n) => vec![client.job(n).await?.job],
        None if all => {
            let mut jobs = Vec::new();
            for (_, c) in every_namespace(client).await? {
                jobs.extend(c.jobs().await?);
            }
            jobs
        }
        None => client.jobs().await?,
    };
    if format == Format::Table {
        jobs_table(&jobs, all && name.is_none()).print()
    } else {
        print_encoded(format, &jobs)?
    }
    Ok(())
}

/// `skiff get crons [NAME] [-A]`.
pub async fn get_crons(client: &Client, name: Option<&str>, format: Format, all: bool) -> anyhow::Result<()> {
    let crons = match name {
        Some(n) => vec![client.cron(n).await?.cron],
        None if all => {
            let mut crons = Vec::new();
            for (_, c) in every_namespace(client).await? {
                crons.extend(c.crons().await?);
            }
            crons
        }
        None => client.crons().await?,
    };
    if format == Format::Table {
        crons_table(&crons, all && name.is_none()).print()
    } else {
        print_encoded(format, &crons)?
    }
    Ok(())
}

/// `skiff get runs [JOB] [-A]`: every run of a job, in index order; without
/// a job, those of every job of the namespace (of every namespace with `-A`).
pub async fn get_runs(client: &Client, job: Option<&str>, format: Format, all: bool) -> anyhow::Result<()> {
    let spaces = if all { every_namespace(client).await? } else { vec![(String::new(), client.clone())] };
    // (namespace, run) in namespace, job, index and try order.
    let mut runs: Vec<(String, JobRun)> = Vec::new();
    for (ns, c) in spaces {
        let names = match job {
            Some(j) => vec![j.to_string()],
            None => c.jobs().await?.into_iter().map(|j| j.name).collect(),
        };
        for name in names {
            let detail = match c.job(&name).await {
                Ok(d) => d,
                // Asked of each namespace with -A: a job of one only.
                Err(e) if all && job.is_some() && e.to_string().contains("not found") => continue,
                // Gone between the list and the look (a TTL, a cron's history).
                Err(e) if job.is_none() && e.to_string().contains("not found") => continue,
                Err(e) => return Err(e.into()),
            };
            let mut these = detail.runs;
            these.sort_by_key(|r| (r.index, r.attempt));
            runs.extend(these.into_iter().map(|r| (ns.clone(), r)));
        }
    }
    if format == Format::Table {
        let refs: Vec<&JobRun> = runs.iter().map(|(_, r)| r).collect();
        let spaces: Vec<&str> = runs.iter().map(|(ns, _)| ns.as_str()).collect();
        runs_table_in(&refs, job.is_none(), all.then_some(&spaces[..])).print();
    } else {
        let runs: Vec<JobRun> = runs.into_iter().map(|(_, r)| r).collect();
        print_encoded(format, &runs)?;
    }
    Ok(())
}

/// Indices as ranges: `3, 7-9, 12`.
fn ranges(mut v: Vec<u32>) -> String {
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        out.push(if v[i] == start { start.to_string() } else { format!("{start}-{}", v[i]) });
        i += 1;
    }
    if out.is_empty() { "<none>".into() } else { out.join(", ") }
}

fn runs_table(runs: &[&JobRun]) -> Table {
    runs_table_in(runs, false, None)
}

/// Runs, after their job when `jobs`, after their namespace when `spaces` are
/// given (one per run: `get runs -A`).
fn runs_table_in(runs: &[&JobRun], jobs: bool, spaces: Option<&[&str]>) -> Table {
    let mut headers = Vec::new();
    if jobs {
        headers.push("JOB");
    }
    headers.extend(["INDEX", "TRY", "RUN", "NODE", "OUTCOME", "EXIT", "DURATION", "REASON"]);
    let mut t = table(spaces.is_some(), &headers);
    for (i, r) in runs.iter().enumerate() {
        let ns = spaces.and_then(|s| s.get(i).copied()).unwrap_or_default();
        let mut cells = if jobs { vec![r.job.clone()] } else { Vec::new() };
        cells.extend([
            r.index.to_string(),
            r.attempt.to_string(),
            r.id.clone(),
            r.node.clone().unwrap_or_else(|| "-".into()),
            r.outcome.to_string(),
            r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            r.duration_ms().map(duration).unwrap_or_else(|| "-".into()),
            r.reason.clone().unwrap_or_else(|| "-".into()),
        ]);
        t.row(row(spaces.is_some(), ns, cells));
    }
    t
}

/// `skiff describe job NAME`: counts, failed indices, slowest runs, runs under
/// way, recent failures, events.
pub async fn describe_job(client: &Client, name: &str) -> anyhow::Result<()> {
    let d = client.job(name).await?;
    let events = client.events(Some(&format!("job/{name}"))).await.context("listing its events")?;
    let (j, runs) = (&d.job, &d.runs);
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| out.push_str(&format!("{:<17}{v}\n", format!("{k}:")));
    field(&mut out, "Name", j.name.clone());
    field(&mut out, "Namespace", shown_namespace(&j.namespace));
    field(&mut out, "State", j.state.to_string());
    if let Some(r) = &j.reason {
        field(&mut out, "Reason", r.clone());
    }
    field(&mut out, "Workload", j.spec.template.workload.to_string());
    field(&mut out, "Resources", format!("{} per run", resources(j.spec.template.resources)));
    if !j.spec.template.args.is_empty() {
        field(&mut out, "Args", j.spec.template.args.join(" "));
    }
    let s = &j.spec;
    field(
        &mut out,
        "Completions",
        format!("{}/{} succeeded, {} at once, {} running", j.succeeded, s.completions, s.parallelism, j.active),
    );
    field(&mut out, "Backoff limit", format!("{} failed runs per index", s.backoff_limit));
    if let Some(d) = s.active_deadline_seconds {
        field(&mut out, "Deadline", format_secs(d));
    }
    if let Some(t) = s.ttl_seconds_after_finished {
        field(&mut out, "TTL", format!("{} after it finishes", format_secs(t)));
    }
    if !s.after.is_empty() {
        field(&mut out, "After", s.after.join(", "));
    }
    if let Some(c) = &j.cron {
        field(&mut out, "Cron", c.clone());
    }
    let took = match (j.started_ms, j.finished_ms) {
        (Some(st), Some(f)) => format!(
            "{} (finished {} ago)",
            duration(f.saturating_sub(st)),
            duration(skiff_api::now_ms().saturating_sub(f))
        ),
        (Some(st), None) => format!("{} so far", duration(skiff_api::now_ms().saturating_sub(st))),
        _ => "not started".into(),
    };
    field(&mut out, "Duration", took);
    let count = |o: RunOutcome| runs.iter().filter(|r| r.outcome == o).count();
    field(
        &mut out,
        "Runs",
        format!(
            "{} total: {} succeeded, {} failed, {} lost, {} stopped, {} under way",
            runs.len(),
            count(RunOutcome::Succeeded),
            count(RunOutcome::Failed),
            count(RunOutcome::Lost),
            count(RunOutcome::Stopped),
            count(RunOutcome::Running)
        ),
    );
    let failed: Vec<u32> = runs.iter().filter(|r| r.outcome == RunOutcome::Failed).map(|r| r.index).collect();
    field(&mut out, "Failed indices", ranges(failed));
    let retried: Vec<u32> = runs.iter().filter(|r| r.attempt > 1).map(|r| r.index).collect();
    field(&mut out, "Retried", ranges(retried));
    print!("{out}");
    let under_way: Vec<&JobRun> = runs.iter().filter(|r| r.outcome == RunOutcome::Running).take(20).collect();
    if !under_way.is_empty() {
        println!("\nRuns under way:");
        print!("{}", runs_table(&under_way).render("  "));
    }
    let mut slow: Vec<&JobRun> = runs.iter().filter(|r| r.duration_ms().is_some()).collect();
    slow.sort_by_key(|r| std::cmp::Reverse(r.duration_ms()));
    slow.truncate(5);
    if !slow.is_empty() {
        println!("\nSlowest runs:");
        print!("{}", runs_table(&slow).render("  "));
    }
    let fails: Vec<&JobRun> = runs
        .iter()
        .rev()
        .filter(|r| r.outcome != RunOutcome::Succeeded && r.outcome != RunOutcome::Running)
        .take(10)
        .collect();
    if !fails.is_empty() {
        println!("\nRecent failures:");
        print!("{}", runs_table(&fails).render("  "));
    }
    println!("\nEvents:");
    if events.is_empty() {
        println!("  <none>");
    }
    for e in events.iter().rev().take(20).rev() {
        println!("  {:>6}  {:<14} {}", age(e.time_ms), e.reason, e.message);
    }
    Ok(())
}

/// `skiff describe cron NAME`: its schedule and its recent jobs with their outcome and duration.
pub async fn describe_cron(client: &Client, name: &str) -> anyhow::Result<()> {
    let d = client.cron(name).await?;
    let events = client.events(Some(&format!("cron/{name}"))).await.context("listing its events")?;
    let c = &d.cron;
    let field = |k: &str, v: String| println!("{:<19}{v}", format!("{k}:"));
    field("Name", c.name.clone());
    field("Namespace", shown_namespace(&c.namespace));
    field("Schedule", format!("{} ({})", c.spec.schedule, c.spec.time_zone));
    field("Concurrency", c.spec.concurrency_policy.to_string());
    field("Starting deadline", c.spec.starting_deadline_seconds.map(format_secs).unwrap_or_else(|| "<none>".into()));
    field("Suspended", c.spec.suspend.to_string());
    field("History", format!("{} succeeded, {} failed jobs kept", c.spec.history.succeeded, c.spec.history.failed));
    field("Workload", c.spec.job.template.workload.to_string());
    field("Last scheduled", c.last_scheduled_ms.map(relative).unwrap_or_else(|| "never".into()));
    field("Next", c.next_ms.map(relative).unwrap_or_else(|| "-".into()));
    println!("\nRecent jobs:");
    if d.jobs.is_empty() {
        println!("  <none>");
    } else {
        let mut t = Table::new(&["JOB", "SCHEDULED", "STATE", "DURATION", "REASON"]);
        for j in &d.jobs {
            let took = match (j.started_ms, j.finished_ms) {
                (Some(s), Some(f)) => duration(f.saturating_sub(s)),
                _ => "-".into(),
            };
            t.row(vec![
                j.name.clone(),
                j.scheduled_ms.map(relative).unwrap_or_else(|| "by hand".into()),
                j.state.to_string(),
                took,
                j.reason.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        print!("{}", t.render("  "));
    }
    println!("\nEvents:");
    if events.is_empty() {
        println!("  <none>");
    }
    for e in events.iter().rev().take(20).rev() {
        println!("  {:>6}  {:<14} {}", age(e.time_ms), e.reason, e.message);
    }
    Ok(())
}

/// `skiff logs job/NAME [--index N]`.
pub async fn logs(
    client: &Client,
    name: &str,
    index: Option<u32>,
    follow: bool,
    tail: Option<u32>,
) -> anyhow::Result<()> {
    let stream = client.job_logs(name, index, follow, tail, false).await?;
    tokio::pin!(stream);
    let copy = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the log stream broke off")?;
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(&chunk).and_then(|()| stdout.flush()).is_err() {
                return Ok(());
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        res = copy => res,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Uploads a job template's Wasm file (its path, relative to `base`) and puts
/// its digest in its place.
async fn upload_template(client: &Client, base: &Path, spec: &mut JobSpec) -> anyhow::Result<()> {
    if let Workload::Wasm(rel) = &spec.template.workload {
        let path = base.join(rel);
        let bytes = super::deploy::read_wasm(&path)?;
        spec.template.workload = Workload::Wasm(super::deploy::upload(client, &path, bytes).await?);
    }
    Ok(())
}

/// A job or cron of a manifest: its name, spec and `namespace:`.
pub type Manifested<S> = (String, S, Option<String>);

/// The client of a document's `namespace:` (#20), else the one given.
fn in_namespace(client: &Client, ns: &Option<String>) -> Client {
    match ns {
        Some(ns) => client.clone().with_namespace(ns),
        None => client.clone(),
    }
}

/// Creates the jobs and crons of a manifest (its artifacts relative to `base`).
pub async fn apply(
    client: &Client,
    base: &Path,
    jobs: Vec<Manifested<JobSpec>>,
    crons: Vec<Manifested<CronSpec>>,
    source: &str,
) -> anyhow::Result<()> {
    for (name, mut spec, ns) in jobs {
        let client = &in_namespace(client, &ns);
        upload_template(client, base, &mut spec).await.with_context(|| format!("{source}job {name}"))?;
        let (job, created) = client.put_job(&name, &spec).await.with_context(|| format!("job {name}"))?;
        println!("job {} {}", job.name, if created { "created" } else { "unchanged" });
    }
    for (name, mut spec, ns) in crons {
        let client = &in_namespace(client, &ns);
        upload_template(client, base, &mut spec.job).await.with_context(|| format!("{source}cron {name}"))?;
        let (cron, created) = client.put_cron(&name, &spec).await.with_context(|| format!("cron {name}"))?;
        let next = cron.next_ms.map(|n| format!(", next {}", relative(n))).unwrap_or_default();
        println!("cron {} {}{next}", cron.name, if created { "created" } else { "applied" });
    }
    Ok(())
}
