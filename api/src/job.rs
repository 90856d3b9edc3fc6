//! Work that finishes: jobs (a number of successful runs of one template),
//! their runs, and crons (a job started on a schedule). The wire types, their
//! rules, and how a manifest spells them (`kind: job`, `kind: cron`).
//!
//! A job's run is a replica on a node with restart policy `never`: it is placed,
//! assigned, started, logged and reported like any replica; the job counts its
//! exits. A run may execute more than once (its node lost mid-run: the index
//! runs again elsewhere), as in every peer.

use crate::objects::Millis;
use crate::quantity::{Cpu, Memory};
use crate::spec::{NetworkMode, Resources, RestartPolicy, SecretRef, VolumeMount, Workload, WorkloadSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most completions of one job.
pub const MAX_COMPLETIONS: u32 = 100_000;
/// Most runs of one job at once.
pub const MAX_PARALLELISM: u32 = 10_000;
/// Most jobs named in `after`.
pub const MAX_AFTER: usize = 32;

fn one() -> u32 {
    1
}

fn six() -> u32 {
    6
}

/// What a job asks for (`PUT /v1/jobs/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobSpec {
    /// What each run runs; its restart policy is always `never` (the job
    /// retries a failed index itself, up to `backoff_limit`).
    pub template: WorkloadSpec,
    /// Successful runs wanted: indices `0..completions`, each until one run of
    /// it succeeds (default 1).
    #[serde(default = "one")]
    pub completions: u32,
    /// At most this many runs at once (default 1).
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Failed runs of one index retried before the job fails (default 6).
    #[serde(default = "six")]
    pub backoff_limit: u32,
    /// The whole job's time limit in seconds, from its first run: runs still going
    /// then are stopped and the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<u64>,
    /// Seconds after it finished (succeeded or failed) that the job and its runs'
    /// logs are deleted; kept until deleted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u64>,
    /// Jobs that must have succeeded before this one starts; a failed one fails it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Not started: waiting for `after` jobs, or for a node for its first run.
    #[default]
    Pending,
    /// Runs are under way (or waiting for a node).
    Running,
    /// Every index succeeded.
    Succeeded,
    /// It gave up (`reason` says why); nothing of it runs.
    Failed,
}

impl JobState {
    /// Succeeded or failed.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        })
    }
}

/// A job as the cluster holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Unique name (a DNS label) within its namespace.
    pub name: String,
    /// Its namespace (#20): set when shown; `default` for everything made
    /// before namespaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// What it asks for.
    pub spec: JobSpec,
    /// Where it stands.
    pub state: JobState,
    /// Why it is where it is (why pending, why failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Indices that succeeded.
    pub succeeded: u32,
    /// Runs that failed (every index, every try).
    pub failed: u32,
    /// Runs under way or waiting for a node.
    pub active: u32,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
    /// When its first run was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub started_ms: Option<Millis>,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub finished_ms: Option<Millis>,
    /// The cron that started it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The scheduled time it was started for (a cron's job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub scheduled_ms: Option<Millis>,
}

/// How a run ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Waiting for a node, starting or running.
    Running,
    /// Exited with status 0.
    Succeeded,
    /// Exited non-zero, trapped, or could not start.
    Failed,
    /// Its node went down mid-run; the index runs again elsewhere.
    Lost,
    /// Stopped by the job (deadline, failure, deletion, replaced by its cron).
    Stopped,
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunOutcome::Running => "running",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Lost => "lost",
            RunOutcome::Stopped => "stopped",
        })
    }
}

/// One run of one index of a job: a replica with restart policy `never`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRun {
    /// The replica id (its logs are under this id).
    pub id: String,
    /// The job.
    pub job: String,
    /// The index it runs (`SKIFF_JOB_INDEX`).
    pub index: u32,
    /// The try of that index, from 1.
    pub attempt: u32,
    /// Where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Its exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended so (or why it waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
    /// When its node reported it running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub started_ms: Option<Millis>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub finished_ms: Option<Millis>,
}

impl JobRun {
    /// How long it ran (from its start, else its creation, to its end), in ms.
    pub fn duration_ms(&self) -> Option<u64> {
        let end = self.finished_ms?;
        Some(end.saturating_sub(self.started_ms.unwrap_or(self.created_ms)))
    }
}

/// `GET /v1/jobs/{name}`: a job and every run of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDetail {
    /// The job.
    pub job: Job,
    /// Its runs, oldest first.
    pub runs: Vec<JobRun>,
}

/// What a cron does when its time comes while its last job still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyPolicy {
    /// Start another alongside.
    #[default]
    Allow,
    /// Skip this time.
    Forbid,
    /// Stop the running job and start the new one.
    Replace,
}

impl fmt::Display for ConcurrencyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConcurrencyPolicy::Allow => "allow",
            ConcurrencyPolicy::Forbid => "forbid",
            ConcurrencyPolicy::Replace => "replace",
        })
    }
}

/// How many finished jobs of a cron are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CronHistory {
    /// Succeeded jobs kept (default 3).
    #[serde(default = "three")]
    pub succeeded: u32,
    /// Failed jobs kept (default 1).
    #[serde(default = "one")]
    pub failed: u32,
}

fn three() -> u32 {
    3
}

impl Default for CronHistory {
    fn default() -> Self {
        CronHistory { succeeded: 3, failed: 1 }
    }
}

/// What a cron asks for (`PUT /v1/crons/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CronSpec {
    /// Five fields (minute hour day-of-month month day-of-week) or six (seconds first).
    pub schedule: String,
    /// An IANA time zone the schedule is read in (default UTC).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// What to do when a time comes while its last job still runs.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A time missed by more than this many seconds (the scheduler was down) is
    /// skipped, with an event; when absent, a missed time starts late whatever
    /// the delay (at most once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
    /// Finished jobs kept.
    #[serde(default)]
    pub history: CronHistory,
    /// Paused: no job starts on schedule (`skiff cron trigger` still starts one).
    #[serde(default)]
    pub suspend: bool,
    /// The job each time starts.
    pub job: JobSpec,
}

fn utc() -> String {
    "UTC".to_string()
}

/// A cron as the cluster holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cron {
    /// Unique name (a DNS label) within its namespace.
    pub name: String,
    /// Its namespace (#20): set when shown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// What it asks for.
    pub spec: CronSpec,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_ms: Millis,
    /// The last scheduled time it handled (started, or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub last_scheduled_ms: Option<Millis>,
    /// The job it started last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    /// The next scheduled time (computed when shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub next_ms: Option<Millis>,
}

/// `GET /v1/crons/{name}`: a cron and its jobs still kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CronDetail {
    /// The cron.
    pub cron: Cron,
    /// Its jobs, oldest first.
    pub jobs: Vec<Job>,
}

/// Reads `90`, `90s`, `10m`, `1h`, `2d` or `1h30m` as seconds.
pub fn parse_duration_secs(input: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {input:?}: write a number with a unit, such as 90s, 10m, 1h or 1h30m");
    let s = input.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let (mut total, mut num) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// `90s`, `10m`, `1h30m`: seconds written back as a manifest would.
pub fn format_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{u}"));
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// Checks a job's rules (the scheduler and the CLI's `apply` call it).
pub fn validate_job(name: &str, spec: &JobSpec) -> Result<(), String> {
    crate::validate::validate_name(name)?;
    if spec.completions == 0 || spec.completions > MAX_COMPLETIONS {
        return Err(format!("completions must be 1 to {MAX_COMPLETIONS}, got {}", spec.completions));
    }
    if spec.parallelism == 0 || spec.parallelism > MAX_PARALLELISM {
        return Err(format!("parallelism must be 1 to {MAX_PARALLELISM}, got {}", spec.parallelism));
    }
    if spec.after.len() > MAX_AFTER {
        return Err(format!("after names at most {MAX_AFTER} jobs, got {}", spec.after.len()));
    }
    for a in &spec.after {
        crate::validate::validate_name(a).map_err(|e| format!("after: {e}"))?;
        if a == name {
            return Err(format!("job {name:?} cannot run after itself"));
        }
    }
    if spec.template.http_port.is_some() || !spec.template.probes.is_empty() {
        return Err("a job's runs finish: http_port and probes are for deployments".into());
    }
    if spec.template.volume_lease {
        return Err("volume_lease is for deployments".into());
    }
    // Built from JSON so that fields other parts add (all defaulted) need no mention here.
    let req: crate::messages::ApplyRequest =
        serde_json::from_value(serde_json::json!({ "replicas": spec.parallelism, "spec": spec.template }))
            .map_err(|e| format!("the job's template does not read as a deployment's: {e}"))?;
    crate::validate::apply(name, &req).map_err(|e| e.message)
}

/// Checks a cron's rules that need no cron parser (the scheduler also parses
/// the schedule and the time zone).
pub fn validate_cron(name: &str, spec: &CronSpec) -> Result<(), String> {
    crate::validate::validate_name(name)?;
    let fields = spec.schedule.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "schedule {:?} has {fields} fields; write five (minute hour day month weekday) or six (seconds first)",
            spec.schedule
        ));
    }
    if !spec.job.after.is_empty() {
        return Err("a cron's job cannot have `after`".into());
    }
    validate_job(name, &spec.job)
}

/// A job's keys in a manifest (`kind: job`, or under a cron's `job:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestJob {
    /// Its name (absent under a cron).
    #[serde(default)]
    pub name: Option<String>,
    /// `job`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The namespace it goes to (#20); absent: the one the CLI acts in (and
    /// under a cron, the cron's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// A `.wasm` file, relative to the manifest.
    #[serde(default)]
    pub wasm: Option<String>,
    /// An OCI image.
    #[serde(default)]
    pub image: Option<String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Requests per run.
    #[serde(default)]
    pub resources: crate::manifest::ManifestResources,
    /// Node labels.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Secrets.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Outbound HTTP hosts.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// A container's network.
    #[serde(default)]
    pub network: NetworkMode,
    /// Completions.
    #[serde(default = "one")]
    pub completions: u32,
    /// Parallelism.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Backoff limit.
    #[serde(default = "six")]
    pub backoff_limit: u32,
    /// `10m`.
    #[serde(default)]
    pub active_deadline: Option<DurationText>,
    /// `1h`.
    #[serde(default)]
    pub ttl_after_finished: Option<DurationText>,
    /// Jobs to run after.
    #[serde(default)]
    pub after: Vec<String>,
}

/// A duration as a manifest writes it (`10m`, or a number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub u64);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(DurationText(n)),
            Either::S(s) => parse_duration_secs(&s).map(DurationText).map_err(serde::de::Error::custom),
        }
    }
}

impl ManifestJob {
    fn template(&self, workload: Workload) -> Result<WorkloadSpec, String> {
        let resources = Resources { cpu: self.resources.cpu, memory: self.resources.memory };
        // From JSON: the template's other fields keep their defaults.
        let mut t: WorkloadSpec =
            serde_json::from_value(serde_json::json!({ "workload": workload, "resources": resources }))
                .map_err(|e| format!("cannot build the job's template: {e}"))?;
        t.env = self.env.clone();
        t.args = self.args.clone();
        t.restart = RestartPolicy::Never;
        t.constraints = self.constraints.clone();
        t.secrets = self.secrets.clone();
        t.allowed_hosts = self.allowed_hosts.clone();
        t.volumes = self.volumes.clone();
        t.network = self.network;
        Ok(t)
    }

    /// The wire spec; the workload is `Wasm(path as written)` until the CLI
    /// uploads the file and puts its digest there.
    pub fn spec(&self) -> Result<JobSpec, String> {
        let workload = match (&self.wasm, &self.image) {
            (Some(w), None) => Workload::Wasm(w.clone()),
            (None, Some(i)) => Workload::Image(i.clone()),
            (Some(_), Some(_)) => return Err("set either wasm or image, not both".into()),
            (None, None) => return Err("set wasm (a .wasm file) or image".into()),
        };
        Ok(JobSpec {
            template: self.template(workload)?,
            completions: self.completions,
            parallelism: self.parallelism,
            backoff_limit: self.backoff_limit,
            active_deadline_seconds: self.active_deadline.map(|d| d.0),
            ttl_seconds_after_finished: self.ttl_after_finished.map(|d| d.0),
            after: self.after.clone(),
        })
    }
}

/// A cron's keys in a manifest (`kind: cron`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCron {
    /// Its name.
    pub name: String,
    /// `cron`.
    pub kind: String,
    /// The namespace it goes to (#20); absent: the one the CLI acts in.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The schedule.
    pub schedule: String,
    /// The time zone.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// allow | forbid | replace.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// `5m`.
    #[serde(default)]
    pub starting_deadline: Option<DurationText>,
    /// Finished jobs kept.
    #[serde(default)]
    pub history: CronHistory,
    /// Paused.
    #[serde(default)]
    pub suspend: bool,
    /// The job.
    pub job: ManifestJob,
}

impl ManifestCron {
    /// The wire spec (workload as in [`ManifestJob::spec`]).
    pub fn spec(&self) -> Result<CronSpec, String> {
        if self.job.name.is_some() || self.job.kind.is_some() || self.job.namespace.is_some() {
            return Err(
                "a cron's job takes no name, kind or namespace: its jobs are named after the cron, in its namespace"
                    .into(),
            );
        }
        Ok(CronSpec {
            schedule: self.schedule.clone(),
            time_zone: self.time_zone.clone(),
            concurrency_policy: self.concurrency_policy,
            starting_deadline_seconds: self.starting_deadline.map(|d| d.0),
            history: self.history,
            suspend: self.suspend,
            job: self.job.spec()?,
        })
    }
}

/// Default per-run requests, as a manifest's.
pub fn default_resources() -> Resources {
    Resources { cpu: Cpu(crate::manifest::default_cpu().0), memory: Memory(crate::manifest::default_memory().0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("10m"), Ok(600));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        assert!(parse_duration_secs("10x").is_err());
        assert!(parse_duration_secs("m").is_err());
        assert!(parse_duration_secs("10m5").is_err());
        assert_eq!(format_secs(5400), "1h30m");
        assert_eq!(format_secs(0), "0s");
    }

    #[test]
    fn a_job_is_checked() {
        let m: ManifestJob =
            serde_norway::from_str("name: a\nkind: job\nwasm: x.wasm\ncompletions: 0\n").expect("reads");
        let spec = m.spec().expect("spec");
        assert!(validate_job("a", &spec).unwrap_err().contains("completions"));
        let m: ManifestJob = serde_norway::from_str("name: a\nwasm: x.wasm\nafter: [a]\n").expect("reads");
        assert!(validate_job("a", &m.spec().expect("spec")).unwrap_err().contains("itself"));
        let m: ManifestJob =
            serde_norway::from_str("name: a\nimage: busybox\nactive_deadline: 10m\nttl_after_finished: 1h\n")
                .expect("reads");
        let spec = m.spec().expect("spec");
        assert_eq!((spec.active_deadline_seconds, spec.ttl_seconds_after_finished), (Some(600), Some(3600)));
        assert_eq!(spec.template.restart, RestartPolicy::Never);
        validate_job("a", &spec).expect("valid");
    }

    #[test]
    fn jobs_and_crons_of_a_manifest_name_their_namespace() {
        use crate::manifest::{ManifestObject, parse_objects};
        let text = "kind: job\nname: a\nnamespace: team-a\nimage: busybox\n---\nkind: job\nname: a\nimage: busybox\n---\n\
                    kind: cron\nname: c\nnamespace: team-b\nschedule: '0 3 * * *'\njob: {image: busybox}\n";
        let objects = parse_objects(text).expect("reads");
        let names: Vec<(String, Option<String>)> = objects
            .iter()
            .map(|o| match o {
                ManifestObject::Job(n, _, ns) => (format!("job {n}"), ns.clone()),
                ManifestObject::Cron(n, _, ns) => (format!("cron {n}"), ns.clone()),
                ManifestObject::Deployment(d) => (format!("deployment {}", d.name), d.namespace.clone()),
            })
            .collect();
        let want = [("job a", Some("team-a")), ("job a", None), ("cron c", Some("team-b"))];
        assert_eq!(names, want.map(|(n, ns)| (n.to_string(), ns.map(str::to_string))));
        let twice = parse_objects("kind: job\nname: a\nimage: busybox\n---\nkind: job\nname: a\nimage: busybox\n");
        assert!(twice.unwrap_err().to_string().contains("job a appears twice"));
        let bad = parse_objects("kind: job\nname: a\nnamespace: Team\nimage: busybox\n").expect_err("a bad namespace");
        assert!(bad.to_string().contains("namespace"), "{bad}");
        let under = "kind: cron\nname: c\nschedule: '0 3 * * *'\njob: {image: busybox, namespace: team-a}\n";
        assert!(parse_objects(under).unwrap_err().to_string().contains("in its namespace"));
    }
}
