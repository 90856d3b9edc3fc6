//! `/v1/jobs` and `/v1/crons`: create, list, show and delete jobs (a Wasm
//! artifact checked once per digest, an image pinned to its manifest, as for a
//! deployment), the logs of their runs, and crons with their trigger.
//!
//! Jobs and crons are namespaced (#20): `/v1/namespaces/{ns}/jobs/...` reaches
//! these handlers with the key `NS/NAME` (`namespaces::namespaced`); what they
//! answer names objects as users do ([`present_job`], [`present_cron`]).

use super::deployments::tokio_stream_from;
use super::*;
use skiff_api::namespace as ns;
use std::collections::HashMap;

/// A job as users see it: its plain name, its namespace, and its cron,
/// `after`, secrets and volumes by their plain names.
pub(crate) fn present_job(mut j: Job) -> Job {
    let (space, name) = ns::split(&j.name);
    j.namespace = space.to_string();
    j.name = name.to_string();
    j.cron = j.cron.map(|c| ns::plain(&c));
    crate::state::jobs::plain_job_spec(&mut j.spec);
    j
}

/// A cron as users see it (as [`present_job`]).
pub(crate) fn present_cron(mut c: Cron) -> Cron {
    let (space, name) = ns::split(&c.name);
    c.namespace = space.to_string();
    c.name = name.to_string();
    c.last_job = c.last_job.map(|j| ns::plain(&j));
    crate::state::jobs::plain_job_spec(&mut c.spec.job);
    c
}

fn present_detail(d: JobDetail) -> JobDetail {
    let runs = d
        .runs
        .into_iter()
        .map(|mut r| {
            r.job = ns::plain(&r.job);
            r
        })
        .collect();
    JobDetail { job: present_job(d.job), runs }
}

/// The namespace a listing is of (the path's, `default` without a prefix),
/// which must exist.
fn listed_namespace(core: &Core, space: Option<Extension<namespaces::Ns>>) -> Result<String, ApiError> {
    let space = namespaces::of(space);
    if !core.state().mem().namespace_exists(&space) {
        return Err(ApiError::not_found(format!("namespace {space:?} not found; `skiff namespace ls` lists them")));
    }
    Ok(space)
}

/// The name of key `key` as users write it, for messages.
fn plain(key: &str) -> &str {
    ns::split(key).1
}

/// Checks a job template's artifact and pins an image reference.
async fn prepare(core: &Core, spec: &mut JobSpec) -> Result<(), ApiError> {
    match &spec.template.workload {
        Workload::Wasm(digest) => {
            core.check_wasm(digest).await?;
            // Served, an HTTP component never ends: no run of it would finish.
            if core.is_http_component(digest).await? {
                return Err(ApiError::bad_request(format!(
                    "artifact {digest} is an HTTP component (it exports wasi:http/incoming-handler); a job runs a command (a p1 module, or a component exporting wasi:cli/run): deploy it instead"
                )));
            }
        }
        Workload::Image(reference) => {
            spec.template.workload = Workload::Image(crate::images::resolve(core, reference).await?);
        }
    }
    Ok(())
}

/// What a create answers: the job, and whether it was made now.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct JobCreated {
    /// The job.
    job: Job,
    /// False when a job of that name and spec existed already.
    created: bool,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", responses((status = 200, description = "Every job of the namespace", body = Vec<Job>), Failures))]
pub(super) async fn list_jobs(State(core): Shared, space: Option<Extension<namespaces::Ns>>) -> ApiResult<Vec<Job>> {
    let space = listed_namespace(&core, space)?;
    Ok(Json(core.state().mem().jobs_in(&space).map(present_job).collect()))
}

#[utoipa::path(put, path = "/v1/jobs/{name}", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = JobSpec, responses((status = 200, description = "Created (or the same job existed)", body = JobCreated), Failures))]
pub(super) async fn put_job(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(mut spec): JsonBody<JobSpec>,
) -> ApiResult<JobCreated> {
    prepare(&core, &mut spec).await?;
    let (job, created) = core.state().create_job(&name, spec)?;
    core.wake();
    Ok(Json(JobCreated { job: present_job(job), created }))
}

#[utoipa::path(get, path = "/v1/jobs/{name}", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The job and its runs", body = JobDetail), Failures))]
pub(super) async fn get_job(State(core): Shared, Path(name): Path<String>) -> ApiResult<JobDetail> {
    core.state()
        .mem()
        .job_detail(&name)
        .map(present_detail)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {:?} not found; `skiff get jobs` lists them", plain(&name))))
}

#[utoipa::path(delete, path = "/v1/jobs/{name}", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Deleted; its runs are stopped"), Failures))]
pub(super) async fn delete_job(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_job(&name)?;
    core.wake();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct JobLogQuery {
    /// Only the runs of this index.
    index: Option<u32>,
    /// Keep streaming new lines (of the runs under way).
    #[serde(default)]
    follow: bool,
    /// Start this many lines from the end of each run's log.
    tail: Option<u32>,
    /// No `[INDEX] ` prefix.
    #[serde(default)]
    bare: bool,
}

/// The logs of a job's runs from their nodes, each line prefixed with its
/// index: finished runs one after the other in index order, then (with
/// `follow`) the runs under way as their lines come.
#[utoipa::path(get, path = "/v1/jobs/{name}/logs", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), JobLogQuery), responses((status = 200, description = "Log lines, streamed", body = String, content_type = "text/plain"), Failures))]
pub(super) async fn job_logs(
    State(core): Shared,
    Path(name): Path<String>,
    Query(q): Query<JobLogQuery>,
) -> Result<Response, ApiError> {
    let targets = {
        let st = core.state();
        run_targets(st.mem(), &name, q.index, q.bare)
    };
    let Some(targets) = targets else {
        return Err(ApiError::not_found(format!("job {:?} not found; `skiff get jobs` lists them", plain(&name))));
    };
    if targets.is_empty() {
        let shown = plain(&name);
        let what = match q.index {
            Some(i) => {
                format!("no run of index {i} of job {shown} has reached a node; `skiff describe job {shown}` says why")
            }
            None => format!("no run of job {shown} has reached a node yet; `skiff describe job {shown}` says why"),
        };
        return Err(ApiError::not_found(what));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
    let http = core.http.clone();
    let (tail, follow, index, bare) = (q.tail, q.follow, q.index, q.bare);
    let seen: std::collections::HashSet<String> = targets.iter().map(|t| t.1.clone()).collect();
    let core = core.clone();
    tokio::spawn(async move {
        let url = |address: &str, id: &str, follow: bool| {
            let mut url = format!("{address}/v1/replicas/{id}/logs?follow={follow}");
            // Every line of a finished run unless asked otherwise.
            url.push_str(&format!("&tail={}", tail.unwrap_or(100_000)));
            url
        };
        let mut under_way = Vec::new();
        for (prefix, id, address, running) in targets {
            if follow && running {
                under_way.push((prefix, id, address));
                continue;
            }
            if !copy_lines(&http, &url(&address, &id, false), &prefix, &tx).await {
                return;
            }
        }
        if !follow {
            return;
        }
        // Following: the runs under way, and each run the job starts from now on.
        // A run's stream is dropped 2 s after the run ended (its last lines
        // are in by then), so a long job holds about `parallelism` of them.
        let mut seen: std::collections::HashSet<String> = seen;
        let mut tasks: HashMap<String, (tokio::task::JoinHandle<bool>, Option<std::time::Instant>)> = HashMap::new();
        let follow_run = |prefix: String, id: &str, address: &str, running: bool| {
            let (http, tx, u) = (http.clone(), tx.clone(), url(address, id, running));
            tokio::spawn(async move { copy_lines(&http, &u, &prefix, &tx).await })
        };
        for (prefix, id, address) in under_way {
            let task = follow_run(prefix, &id, &address, true);
            tasks.insert(id, (task, None));
        }
        while !tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = {
                let st = core.state();
                run_targets(st.mem(), &name, index, bare)
            };
            let Some(now) = now else { break }; // the job was deleted
            for (prefix, id, address, running) in now {
                if seen.insert(id.clone()) {
                    let task = follow_run(prefix, &id, &address, running);
                    tasks.insert(id, (task, None));
                } else if !running && let Some((_, ended)) = tasks.get_mut(&id) {
                    ended.get_or_insert_with(std::time::Instant::now);
                }
            }
            tasks.retain(|_, (task, ended)| {
                let done = task.is_finished() || ended.is_some_and(|t| t.elapsed() > Duration::from_secs(2));
                if done {
                    task.abort();
                }
                !done
            });
        }
        for (task, _) in tasks.into_values() {
            task.abort();
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The runs of job `name` (of index `index` only, if given) that reached a
/// node, in index and try order, as (line prefix, replica id, node address,
/// under way); `None` when there is no such job.
fn run_targets(
    mem: &crate::state::Mem,
    name: &str,
    index: Option<u32>,
    bare: bool,
) -> Option<Vec<(String, String, String, bool)>> {
    let runs = mem.job_runs(name)?;
    let mut runs: Vec<&JobRun> = runs.iter().filter(|r| index.is_none_or(|i| i == r.index)).collect();
    runs.sort_by_key(|r| (r.index, r.attempt));
    Some(
        runs.iter()
            .filter_map(|r| {
                let node = mem.node(r.node.as_deref()?)?;
                let prefix = if bare {
                    String::new()
                } else if r.attempt > 1 {
                    format!("[{} try {}] ", r.index, r.attempt)
                } else {
                    format!("[{}] ", r.index)
                };
                Some((prefix, r.id.clone(), node.address.clone(), r.outcome == RunOutcome::Running))
            })
            .collect(),
    )
}

/// Copies the log lines at `url` to `tx`, each after `prefix`; false once the
/// client went away.
async fn copy_lines(
    http: &reqwest::Client,
    url: &str,
    prefix: &str,
    tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
) -> bool {
    let send = |line: String| async move { tx.send(Ok(bytes::Bytes::from(line))).await.is_ok() };
    let resp = match http.get(url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return send(format!("{prefix}skiff: its node answered {} for its logs\n", r.status())).await,
        Err(e) => return send(format!("{prefix}skiff: cannot reach its node for logs: {e}\n")).await,
    };
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if !send(format!("{prefix}{}", String::from_utf8_lossy(&line))).await {
                return false;
            }
        }
    }
    if !buf.is_empty() {
        return send(format!("{prefix}{}\n", String::from_utf8_lossy(&buf))).await;
    }
    true
}

#[utoipa::path(get, path = "/v1/crons", tag = "jobs", responses((status = 200, description = "Every cron of the namespace, with its next time", body = Vec<Cron>), Failures))]
pub(super) async fn list_crons(State(core): Shared, space: Option<Extension<namespaces::Ns>>) -> ApiResult<Vec<Cron>> {
    let space = listed_namespace(&core, space)?;
    Ok(Json(core.state().mem().crons_in(&space).into_iter().map(present_cron).collect()))
}

/// What a cron's create or change answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct CronApplied {
    /// The cron.
    cron: Cron,
    /// Whether it was made now (else changed, or unchanged).
    created: bool,
}

#[utoipa::path(put, path = "/v1/crons/{name}", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), request_body = CronSpec, responses((status = 200, description = "Created or changed", body = CronApplied), Failures))]
pub(super) async fn put_cron(
    State(core): Shared,
    Path(name): Path<String>,
    JsonBody(mut spec): JsonBody<CronSpec>,
) -> ApiResult<CronApplied> {
    prepare(&core, &mut spec.job).await?;
    let (cron, created) = core.state().put_cron(&name, spec)?;
    core.wake();
    Ok(Json(CronApplied { cron: present_cron(cron), created }))
}

#[utoipa::path(get, path = "/v1/crons/{name}", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The cron and its jobs", body = CronDetail), Failures))]
pub(super) async fn get_cron(State(core): Shared, Path(name): Path<String>) -> ApiResult<CronDetail> {
    core.state()
        .mem()
        .cron_detail(&name)
        .map(|d| CronDetail { cron: present_cron(d.cron), jobs: d.jobs.into_iter().map(present_job).collect() })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("cron {:?} not found; `skiff get crons` lists them", plain(&name))))
}

#[utoipa::path(delete, path = "/v1/crons/{name}", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 204, description = "Deleted with its jobs"), Failures))]
pub(super) async fn delete_cron(State(core): Shared, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    core.state().delete_cron(&name)?;
    core.wake();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/crons/{name}/trigger", tag = "jobs", params(("name" = String, Path, description = NAME, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")), responses((status = 200, description = "The job started now", body = Job), Failures))]
pub(super) async fn trigger_cron(State(core): Shared, Path(name): Path<String>) -> ApiResult<Job> {
    let job = core.state().trigger_cron(&name)?;
    core.wake();
    Ok(Json(present_job(job)))
}
