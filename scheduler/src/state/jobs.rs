//! Jobs: a number of successful runs of one template. A run is a replica owned
//! by its job (`Replica::deployment` is [`job_owner`] of the job's name, its
//! template the job's revision 1 in `Mem::revisions`) with restart policy
//! `never`, so it is placed, assigned, started, logged and reported like any
//! replica; the job reconcile ([`State::reconcile_jobs`]) reads how each run
//! ended, records it (`JobRun`: node, exit code, times), takes the replica off
//! its node, and starts the next runs up to `parallelism`.
//!
//! A run whose node goes down is lost and its index runs again elsewhere (a
//! run may execute more than once). A failed run of an index is retried after
//! 1 s, 2 s, 4 s … (at most 60 s) until it has failed `backoff_limit + 1`
//! times; then the job fails and stops what runs.
//!
//! Jobs are namespaced (#20) as deployments are: a job's key is `NAME` in
//! `default` and `NS/NAME` elsewhere, its template names its namespace's
//! secrets and volumes by key, and `after` names jobs of its namespace. Its
//! runs count in its namespace's quota (cpu, memory, replicas) while under
//! way; a run the quota has no room for is not made until there is room
//! (the job says why), and a job one run of which could never fit is refused.

use super::*;
use skiff_api::job::{JobDetail, JobSpec, JobState, RunOutcome, format_secs, validate_job};
use skiff_api::namespace as ns;
use skiff_api::{Job, JobRun};

/// The owner key of job `name`'s runs (`Replica::deployment`): no deployment
/// name holds a `:`, so runs and replicas of deployments never mix.
pub(crate) fn job_owner(name: &str) -> String {
    format!("job:{name}")
}

/// The job owning replicas of `owner`, if they are a job's runs.
pub(crate) fn job_of(owner: &str) -> Option<&str> {
    owner.strip_prefix("job:")
}

/// The event object of replicas of `owner`: `job/NAME` or `deployment/NAME`.
pub(crate) fn owner_object(owner: &str) -> String {
    match job_of(owner) {
        Some(j) => format!("job/{j}"),
        None => format!("deployment/{owner}"),
    }
}

/// Longest wait before a failed index runs again.
const MAX_RETRY_DELAY_MS: u64 = 60_000;

/// The delay before the next try of an index that failed `failures` times.
pub(crate) fn retry_delay_ms(failures: u32) -> u64 {
    1000u64.saturating_mul(1u64 << failures.saturating_sub(1).min(16)).min(MAX_RETRY_DELAY_MS)
}

/// A job with what its reconcile needs at hand.
pub(crate) struct JobEntry {
    pub(crate) job: Job,
    /// Every run, oldest first.
    pub(crate) runs: Vec<JobRun>,
    /// Position in `runs` by run id.
    run_at: HashMap<String, usize>,
    /// Indices that succeeded.
    done: Vec<bool>,
    /// Failed runs by index.
    failures: HashMap<u32, u32>,
    /// Runs under way: id → index.
    active: BTreeMap<String, u32>,
    /// Indices with a run under way.
    active_idx: BTreeSet<u32>,
    /// Failed indices and when they may run again.
    retry_at: HashMap<u32, Millis>,
    /// Every index below this has succeeded.
    cursor: u32,
    /// Indices that succeeded, counted (`done` holds which).
    done_count: u32,
    /// Runs made of each index so far (the next one's attempt is one more).
    tries: HashMap<u32, u32>,
    /// Placed runs per node index (for spreading, as a deployment's).
    pub(crate) spread: crate::placement::Spread,
}

impl JobEntry {
    fn new(job: Job) -> JobEntry {
        let n = job.spec.completions as usize;
        JobEntry {
            job,
            runs: Vec::new(),
            run_at: HashMap::new(),
            done: vec![false; n],
            failures: HashMap::new(),
            active: BTreeMap::new(),
            active_idx: BTreeSet::new(),
            retry_at: HashMap::new(),
            cursor: 0,
            done_count: 0,
            tries: HashMap::new(),
            spread: Default::default(),
        }
    }

    /// Adds a stored run as it stands.
    fn add_run(&mut self, run: JobRun) {
        match run.outcome {
            RunOutcome::Running => {
                self.active.insert(run.id.clone(), run.index);
                self.active_idx.insert(run.index);
            }
            RunOutcome::Succeeded => self.mark_done(run.index),
            RunOutcome::Failed => *self.failures.entry(run.index).or_default() += 1,
            RunOutcome::Lost | RunOutcome::Stopped => {}
        }
        *self.tries.entry(run.index).or_default() += 1;
        self.run_at.insert(run.id.clone(), self.runs.len());
        self.runs.push(run);
    }

    /// Index `index` succeeded (once counted, whatever later runs say).
    fn mark_done(&mut self, index: u32) {
        if let Some(d) = self.done.get_mut(index as usize)
            && !*d
        {
            *d = true;
            self.done_count += 1;
        }
    }

    fn succeeded(&self) -> u32 {
        self.done_count
    }

    fn counts(&mut self) {
        self.job.succeeded = self.succeeded();
        self.job.failed = self.failures.values().sum();
        self.job.active = self.active.len() as u32;
    }

    /// The job with its counts, as shown.
    pub(crate) fn shown(&self) -> Job {
        let mut j = self.job.clone();
        j.succeeded = self.done_count;
        j.failed = self.failures.values().sum();
        j.active = self.active.len() as u32;
        j
    }

    /// The run with id `id`.
    pub(crate) fn run(&self, id: &str) -> Option<&JobRun> {
        self.run_at.get(id).map(|&i| &self.runs[i])
    }
}

/// A run id: `<job>-<index>-<5 random>` (`<ns>-<job>-...` outside `default`,
/// as a namespaced deployment's replicas), a DNS label of at most 63 characters.
fn new_run_id(job: &str, index: u32) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..5).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    let flat = job.replace('/', "-");
    let prefix = flat[..flat.len().min(44)].trim_end_matches('-');
    format!("{prefix}-{index}-{suffix}")
}

/// Refuses a job template one run of which asks more than namespace
/// `namespace`'s quota holds in all: it could never start.
pub(super) fn never_fits(mem: &Mem, namespace: &str, what: &str, template: &WorkloadSpec) -> Result<(), Error> {
    let q = mem.quota(namespace);
    let r = &template.resources;
    let over = match (q.cpu, q.memory, q.replicas) {
        (Some(c), _, _) if r.cpu.0 > c.0 => Some(format!("cpu quota {c}, one run of {what} asks {}", r.cpu)),
        (_, Some(m), _) if r.memory.0 > m.0 => Some(format!("memory quota {m}, one run of {what} asks {}", r.memory)),
        (_, _, Some(0)) => Some(format!("replicas quota 0, one run of {what} asks 1")),
        _ => None,
    };
    match over {
        Some(why) => Err(Error::Conflict(format!("namespace {namespace}: {why}; it could never start"))),
        None => Ok(()),
    }
}

/// Checks a job's or cron's key `key` and spec as a user wrote them, and puts
/// the spec in its namespace: its secrets, volumes and `after` by key.
pub(super) fn namespaced_spec(mem: &Mem, key: &str, spec: &mut JobSpec, what: &str) -> Result<(), Error> {
    // `default/NAME` would be a second key of default's NAME.
    let (namespace, _) = super::namespaces::canonical(key)?;
    if !mem.namespace_exists(namespace) {
        return Err(Error::NotFound(format!(
            "namespace {namespace:?} not found; `skiff namespace create {namespace}` makes it"
        )));
    }
    never_fits(mem, namespace, what, &spec.template)?;
    namespaces::keyed_spec(namespace, &mut spec.template);
    for a in &mut spec.after {
        *a = ns::key(namespace, a);
    }
    Ok(())
}

/// A job's or cron's spec as its user wrote it (plain names).
pub(crate) fn plain_job_spec(spec: &mut JobSpec) {
    namespaces::plain_spec(&mut spec.template);
    for a in &mut spec.after {
        *a = ns::plain(a);
    }
}

/// What a run's replica state says of how it ended: `None` while under way.
fn ended(r: &Replica) -> Option<(RunOutcome, String)> {
    match r.state {
        ReplicaState::Exited => Some((RunOutcome::Succeeded, "exited with status 0".into())),
        ReplicaState::Failed => {
            let why = match (r.exit_code, &r.reason) {
                (Some(c), _) if c != 0 => format!("exited with status {c}"),
                (_, Some(reason)) => reason.clone(),
                (c, None) => format!("failed (exit status {})", c.map_or("unknown".into(), |c| c.to_string())),
            };
            Some((RunOutcome::Failed, why))
        }
        _ => None,
    }
}

impl State {
    /// Creates job `name` (a job is not changed once made: delete it first).
    /// `name` is the job's key (`NS/NAME` outside `default`).
    pub fn create_job(&mut self, name: &str, spec: JobSpec) -> Result<(Job, bool), Error> {
        let mut spec = spec;
        spec.template.restart = RestartPolicy::Never;
        let plain = ns::split(name).1;
        validate_job(plain, &spec).map_err(Error::Invalid)?;
        namespaced_spec(&self.mem, name, &mut spec, "this job")?;
        if let Some(e) = self.mem.jobs.get(name) {
            if e.job.spec == spec {
                return Ok((e.shown(), false));
            }
            return Err(Error::Conflict(format!(
                "job {plain:?} exists with another spec; a job does not change: `skiff delete job {plain}` first"
            )));
        }
        if self.mem.jobs.len() >= self.max_objects {
            return Err(Error::TooMany { kind: "jobs", max: self.max_objects });
        }
        let now = now_ms();
        let job = Job {
            name: name.to_string(),
            namespace: String::new(),
            spec,
            state: JobState::Pending,
            reason: None,
            succeeded: 0,
            failed: 0,
            active: 0,
            created_ms: now,
            started_ms: None,
            finished_ms: None,
            cron: None,
            scheduled_ms: None,
        };
        let shown = self.transact(|mem, tx| {
            mem.insert_job(tx, job, now)?;
            mem.reconcile_job(tx, name, now)?;
            Ok(mem.jobs.get(name).map(|e| e.shown()))
        })?;
        shown.map(|j| (j, true)).ok_or_else(|| Error::Internal(format!("job {name} vanished")))
    }

    /// Deletes job `name`, stopping its runs.
    pub fn delete_job(&mut self, name: &str) -> Result<(), Error> {
        if !self.mem.jobs.contains_key(name) {
            let plain = ns::split(name).1;
            return Err(Error::NotFound(format!("job {plain:?} not found; `skiff get jobs` lists them")));
        }
        let now = now_ms();
        self.transact(|mem, tx| mem.remove_job(tx, name, now, "deleted"))
    }

    /// Brings every unfinished job forward (records ended runs, starts new
    /// ones, applies deadlines and `after`), and deletes finished jobs past
    /// their TTL.
    pub fn reconcile_jobs(&mut self) -> Result<(), Error> {
        if self.mem.jobs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let due: Vec<String> = self
            .mem
            .jobs
            .values()
            .filter(|e| !e.job.state.is_finished() || e.job.spec.ttl_seconds_after_finished.is_some())
            .map(|e| e.job.name.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.transact(|mem, tx| {
            for name in &due {
                mem.reconcile_job(tx, name, now)?;
            }
            Ok(())
        })
    }
}

impl Mem {
    /// Every job, by name.
    pub fn jobs(&self) -> impl Iterator<Item = Job> + '_ {
        self.jobs.values().map(|e| e.shown())
    }

    /// The jobs of namespace `namespace` (#20), by key.
    pub fn jobs_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = Job> + 'a {
        Self::keys_in(&self.jobs, namespace).map(|k| self.jobs[k].shown())
    }

    /// What the runs under way of namespace `namespace`'s jobs ask of its
    /// quota: (cpu, memory, replicas), each run as a replica of its template.
    pub(super) fn runs_usage(&self, namespace: &str) -> (u64, u64, u64) {
        let mut u = (0, 0, 0);
        for k in Self::keys_in(&self.jobs, namespace) {
            let e = &self.jobs[k];
            let n = e.active.len() as u64;
            let r = &e.job.spec.template.resources;
            u.0 += r.cpu.0 * n;
            u.1 += r.memory.0 * n;
            u.2 += n;
        }
        u
    }

    /// Job `name` with its runs.
    pub fn job_detail(&self, name: &str) -> Option<JobDetail> {
        self.jobs.get(name).map(|e| JobDetail { job: e.shown(), runs: e.runs.clone() })
    }

    /// Job `name`'s runs.
    pub fn job_runs(&self, name: &str) -> Option<&[JobRun]> {
        self.jobs.get(name).map(|e| e.runs.as_slice())
    }

    /// Placed runs per node of the job owning `owner`'s replicas.
    pub(super) fn job_spread(&self, owner: &str) -> Option<&crate::placement::Spread> {
        job_of(owner).and_then(|j| self.jobs.get(j)).map(|e| &e.spread)
    }

    pub(super) fn job_spread_mut(&mut self, owner: &str) -> Option<&mut crate::placement::Spread> {
        match job_of(owner) {
            Some(j) => self.jobs.get_mut(j).map(|e| &mut e.spread),
            None => None,
        }
    }

    /// The environment a run of `r` gets besides its template's:
    /// `SKIFF_JOB_NAME`, `SKIFF_JOB_INDEX`, `SKIFF_JOB_COMPLETIONS`, `SKIFF_JOB_ATTEMPT`.
    pub(super) fn run_env(&self, r: &Replica) -> Option<[(String, String); 4]> {
        let job = job_of(&r.deployment)?;
        let e = self.jobs.get(job)?;
        let run = e.run(&r.id)?;
        Some([
            ("SKIFF_JOB_NAME".into(), ns::split(job).1.to_string()),
            ("SKIFF_JOB_INDEX".into(), run.index.to_string()),
            ("SKIFF_JOB_COMPLETIONS".into(), e.job.spec.completions.to_string()),
            ("SKIFF_JOB_ATTEMPT".into(), run.attempt.to_string()),
        ])
    }

    /// Loads stored jobs and runs (before the replicas, whose indexes need
    /// their templates).
    pub(super) fn load_jobs(&mut self, jobs: Vec<Job>, runs: Vec<JobRun>) {
        for job in jobs {
            self.revisions.insert((job_owner(&job.name), 1), job.spec.template.clone());
            self.jobs.insert(job.name.clone(), JobEntry::new(job));
        }
        for run in runs {
            if let Some(e) = self.jobs.get_mut(&run.job) {
                e.add_run(run);
            }
        }
        for e in self.jobs.values_mut() {
            while e.done.get(e.cursor as usize).copied().unwrap_or(false) {
                e.cursor += 1;
            }
        }
    }

    /// Adds a new job (and its template) to the working set and the store.
    pub(super) fn insert_job(&mut self, tx: &Tx, job: Job, now: Millis) -> Result<(), Error> {
        let name = job.name.clone();
        tx.put_job(&job)?;
        let what = match (&job.cron, job.spec.completions) {
            (Some(c), _) => format!("created by cron {}", ns::plain(c)),
            (None, 1) => "created: 1 run".to_string(),
            (None, n) => format!("created: {n} completions, {} at once", job.spec.parallelism),
        };
        tx.event(now, &format!("job/{name}"), "Created", &what)?;
        self.revisions.insert((job_owner(&name), 1), job.spec.template.clone());
        self.jobs.insert(name, JobEntry::new(job));
        self.fx.mutated = true;
        Ok(())
    }

    /// Stops job `name`'s runs and forgets it (`why`: deleted, TTL, replaced).
    pub(super) fn remove_job(&mut self, tx: &Tx, name: &str, now: Millis, why: &str) -> Result<(), Error> {
        self.stop_runs(tx, name, now, &format!("job {why}"))?;
        self.jobs.remove(name);
        self.revisions.remove(&(job_owner(name), 1));
        tx.delete_job(name)?;
        tx.event(now, &format!("job/{name}"), "Deleted", why)?;
        self.fx.mutated = true;
        Ok(())
    }

    /// Stops every run under way of job `name`, recording them stopped.
    fn stop_runs(&mut self, tx: &Tx, name: &str, now: Millis, why: &str) -> Result<(), Error> {
        let Some(e) = self.jobs.get_mut(name) else { return Ok(()) };
        let active: Vec<String> = std::mem::take(&mut e.active).into_keys().collect();
        e.active_idx.clear();
        for id in &active {
            if let Some(&i) = e.run_at.get(id) {
                let run = &mut e.runs[i];
                run.outcome = RunOutcome::Stopped;
                run.reason = Some(why.to_string());
                run.finished_ms = Some(now);
                tx.put_run(run)?;
            }
        }
        for id in active {
            if self.replicas.get(&id).is_some_and(|r| !r.state.is_terminal()) {
                self.update(tx, &id, |r| {
                    r.state = ReplicaState::Stopped;
                    r.reason = Some(why.to_string());
                })?;
            }
        }
        Ok(())
    }

    /// Ends job `name` as `state` with `reason`, stopping what still runs.
    fn finish_job(&mut self, tx: &Tx, name: &str, state: JobState, reason: String, now: Millis) -> Result<(), Error> {
        if state == JobState::Failed {
            self.stop_runs(tx, name, now, &reason)?;
        }
        let Some(e) = self.jobs.get_mut(name) else { return Ok(()) };
        e.job.state = state;
        e.job.reason = Some(reason.clone());
        e.job.finished_ms = Some(now);
        e.counts();
        tx.put_job(&e.job)?;
        let (what, took) =
            (if state == JobState::Succeeded { "Succeeded" } else { "Failed" }, e.job.started_ms.map(|s| now - s));
        let took = took.map(|ms| format!(" after {:.1}s", ms as f64 / 1000.0)).unwrap_or_default();
        tx.event(now, &format!("job/{name}"), what, &format!("{reason}{took}"))?;
        crate::metrics::job_finished(state);
        self.fx.mutated = true;
        Ok(())
    }

    /// Saves job `name`'s state and reason when they changed.
    fn set_job_state(&mut self, tx: &Tx, name: &str, state: JobState, reason: Option<String>) -> Result<(), Error> {
        let Some(e) = self.jobs.get_mut(name) else { return Ok(()) };
        if e.job.state == state && e.job.reason == reason {
            return Ok(());
        }
        e.job.state = state;
        e.job.reason = reason;
        e.counts();
        tx.put_job(&e.job)?;
        self.fx.mutated = true;
        Ok(())
    }

    /// Brings job `name` forward at `now`.
    pub(super) fn reconcile_job(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), Error> {
        let Some(e) = self.jobs.get(name) else { return Ok(()) };
        if e.job.state.is_finished() {
            if let (Some(ttl), Some(done)) = (e.job.spec.ttl_seconds_after_finished, e.job.finished_ms)
                && now >= done.saturating_add(ttl.saturating_mul(1000))
            {
                return self.remove_job(
                    tx,
                    name,
                    now,
                    &format!("deleted {} after it finished (TTL)", format_secs(ttl)),
                );
            }
            return Ok(());
        }
        // `after`: every job named must have succeeded before the first run.
        if e.job.started_ms.is_none() && !e.job.spec.after.is_empty() {
            let mut waiting = Vec::new();
            for a in e.job.spec.after.clone() {
                match self.jobs.get(&a).map(|u| (u.job.state, u.job.reason.clone())) {
                    Some((JobState::Succeeded, _)) => {}
                    Some((JobState::Failed, why)) => {
                        let why = why.unwrap_or_else(|| "no reason recorded".into());
                        return self.finish_job(
                            tx,
                            name,
                            JobState::Failed,
                            format!("upstream job {} failed: {why}", ns::plain(&a)),
                            now,
                        );
                    }
                    Some(_) => waiting.push(ns::plain(&a)),
                    None => waiting.push(format!("{} (not found)", ns::plain(&a))),
                }
            }
            if !waiting.is_empty() {
                let reason = format!("waiting for job {} to succeed", waiting.join(", "));
                return self.set_job_state(tx, name, JobState::Pending, Some(reason));
            }
        }
        let e = &self.jobs[name];
        if let (Some(limit), Some(start)) = (e.job.spec.active_deadline_seconds, e.job.started_ms)
            && now >= start.saturating_add(limit.saturating_mul(1000))
        {
            let reason = format!("active deadline of {} passed", format_secs(limit));
            return self.finish_job(tx, name, JobState::Failed, reason, now);
        }
        // Runs that ended, or whose replica went (its node down).
        let active: Vec<(String, u32)> = e.active.iter().map(|(id, i)| (id.clone(), *i)).collect();
        let mut pending_reason: Option<String> = None;
        for (id, index) in active {
            let r = self.replicas.get(&id).cloned();
            let (outcome, why, node, code) = match &r {
                None => {
                    let node = self.jobs[name].run(&id).and_then(|run| run.node.clone());
                    let why = match &node {
                        Some(n) => format!("lost with node {n}"),
                        None => "its replica is gone".to_string(),
                    };
                    (RunOutcome::Lost, why, node, None)
                }
                Some(r) => match ended(r) {
                    Some((o, why)) => {
                        (o, why, r.node.clone(), r.exit_code.or((o == RunOutcome::Succeeded).then_some(0)))
                    }
                    None => {
                        // Under way: note where and since when.
                        let running = matches!(r.state, ReplicaState::Running | ReplicaState::Ready);
                        if r.state == ReplicaState::Pending {
                            pending_reason = pending_reason.or(r.reason.clone());
                        }
                        let e = self.jobs.get_mut(name).expect("job looked up above");
                        if let Some(&i) = e.run_at.get(&id) {
                            let run = &mut e.runs[i];
                            let started = if running && run.started_ms.is_none() { Some(now) } else { run.started_ms };
                            if run.node != r.node || run.started_ms != started || run.reason != r.reason {
                                run.node = r.node.clone();
                                run.started_ms = started;
                                run.reason = r.reason.clone();
                                tx.put_run(run)?;
                            }
                        }
                        continue;
                    }
                },
            };
            let e = self.jobs.get_mut(name).expect("job looked up above");
            e.active.remove(&id);
            e.active_idx.remove(&index);
            let mut attempt = 0;
            if let Some(&i) = e.run_at.get(&id) {
                let run = &mut e.runs[i];
                run.outcome = outcome;
                run.reason = Some(why.clone());
                run.exit_code = code;
                run.node = node.clone().or(run.node.take());
                run.finished_ms = Some(now);
                if run.started_ms.is_none() && outcome != RunOutcome::Lost {
                    // Ended between two looks: it ran, for less than a pass.
                    run.started_ms = Some(r.as_ref().map_or(now, |r| r.updated_ms.min(now)));
                }
                attempt = run.attempt;
                crate::metrics::run_finished(outcome, run.duration_ms());
                tx.put_run(run)?;
            }
            if r.as_ref().is_some_and(|r| !r.state.is_terminal()) {
                // Done with: off its node (its logs stay there).
                self.update(tx, &id, |r| {
                    r.state = ReplicaState::Stopped;
                    r.reason = Some("run finished".into());
                })?;
            }
            self.fx.mutated = true;
            let e = self.jobs.get_mut(name).expect("job looked up above");
            let obj = format!("job/{name}");
            let on = node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
            match outcome {
                RunOutcome::Succeeded => {
                    e.mark_done(index);
                    e.retry_at.remove(&index);
                    while e.done.get(e.cursor as usize).copied().unwrap_or(false) {
                        e.cursor += 1;
                    }
                }
                RunOutcome::Failed => {
                    let failures = e.failures.entry(index).or_default();
                    *failures += 1;
                    let failures = *failures;
                    tx.event(now, &obj, "RunFailed", &format!("index {index} try {attempt}{on}: {why}"))?;
                    if failures > e.job.spec.backoff_limit {
                        let reason = format!("backoff limit reached at index {index}: {why}");
                        return self.finish_job(tx, name, JobState::Failed, reason, now);
                    }
                    e.retry_at.insert(index, now + retry_delay_ms(failures));
                }
                _ => {
                    tx.event(now, &obj, "RunLost", &format!("index {index} try {attempt}: {why}; it runs again"))?;
                }
            }
        }
        let e = self.jobs.get_mut(name).expect("job looked up above");
        let completions = e.job.spec.completions;
        if e.succeeded() >= completions {
            let reason = if completions == 1 {
                "its run succeeded".to_string()
            } else {
                format!("all {completions} indices succeeded")
            };
            return self.finish_job(tx, name, JobState::Succeeded, reason, now);
        }
        // Start runs up to `parallelism`, lowest indices first.
        let slots = (e.job.spec.parallelism as usize).saturating_sub(e.active.len());
        let mut start = Vec::new();
        let mut i = e.cursor;
        while start.len() < slots && i < completions {
            let free =
                !e.done[i as usize] && !e.active_idx.contains(&i) && e.retry_at.get(&i).is_none_or(|at| *at <= now);
            if free {
                start.push(i);
            }
            i += 1;
        }
        // Each run is a replica of its namespace's quota (#20): one that
        // would take it past waits, and starts in a later pass once there is
        // room (a run that ends, a deployment scaled down).
        let mut held = None;
        for index in start {
            let ask = namespaces::replicas_ask(&self.jobs[name].job.spec.template, 0, 1);
            if let Err(line) = self.check_quota(ns::of(name), ask) {
                held = Some(line);
                break;
            }
            self.start_run(tx, name, index, now)?;
        }
        let e = &self.jobs[name];
        if let Some(line) = held {
            let reason = Some(format!("runs wait for quota: {line}"));
            let state = if e.job.started_ms.is_none() { JobState::Pending } else { JobState::Running };
            if e.job.reason != reason {
                tx.event(now, &format!("job/{name}"), "QuotaHeld", &format!("a run waits: {line}"))?;
            }
            return self.set_job_state(tx, name, state, reason);
        }
        let (state, reason) = match (e.job.started_ms, pending_reason) {
            (None, why) => (JobState::Pending, why),
            (Some(_), Some(why)) if e.runs.iter().rev().take(e.active.len()).all(|r| r.started_ms.is_none()) => {
                (JobState::Running, Some(format!("runs wait for a node: {why}")))
            }
            (Some(_), _) => (JobState::Running, None),
        };
        let (state, reason) = match (state, e.active.is_empty(), e.retry_at.values().min()) {
            (JobState::Running, true, Some(_)) => (state, Some("waiting to retry failed indices".to_string())),
            other => (other.0, reason),
        };
        self.set_job_state(tx, name, state, reason)
    }

    /// Creates the replica of a new run of index `index` of job `name`.
    fn start_run(&mut self, tx: &Tx, name: &str, index: u32, now: Millis) -> Result<(), Error> {
        let mut id = new_run_id(name, index);
        let Some(e) = self.jobs.get(name) else { return Ok(()) };
        while self.replicas.contains_key(&id) || e.run_at.contains_key(&id) {
            id = new_run_id(name, index);
        }
        let attempt = e.tries.get(&index).copied().unwrap_or(0) + 1;
        // From JSON, so that replica fields other parts add keep their defaults.
        let r: Replica = serde_json::from_value(serde_json::json!({
            "id": id,
            "deployment": job_owner(name),
            "revision": 1,
            "node": null,
            "state": "pending",
            "generation": 0,
            "restarts": 0,
            "reason": null,
            "exit_code": null,
            "created_ms": now,
            "updated_ms": now,
        }))
        .map_err(|e| Error::Internal(format!("cannot make run replica {id}: {e}")))?;
        let run = JobRun {
            id: id.clone(),
            job: name.to_string(),
            index,
            attempt,
            node: None,
            outcome: RunOutcome::Running,
            exit_code: None,
            reason: None,
            created_ms: now,
            started_ms: None,
            finished_ms: None,
        };
        tx.put_run(&run)?;
        tx.put_replica(&r)?;
        let e = self.jobs.get_mut(name).expect("job looked up above");
        e.retry_at.remove(&index);
        e.add_run(run);
        if e.job.started_ms.is_none() {
            e.job.started_ms = Some(now);
            e.job.state = JobState::Running;
            e.counts();
            tx.put_job(&e.job)?;
        }
        self.index_replica(&r);
        self.replicas.insert(id, r);
        self.fx.mutated = true;
        self.sched_dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(completions: u32, parallelism: u32, backoff_limit: u32) -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "template": { "workload": { "wasm": "sha256:00" }, "resources": { "cpu": "100m", "memory": "64Mi" } },
            "completions": completions,
            "parallelism": parallelism,
            "backoff_limit": backoff_limit,
        }))
        .expect("spec")
    }

    fn job(name: &str, spec: JobSpec) -> Job {
        Job {
            name: name.into(),
            namespace: String::new(),
            spec,
            state: JobState::Pending,
            reason: None,
            succeeded: 0,
            failed: 0,
            active: 0,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            cron: None,
            scheduled_ms: None,
        }
    }

    /// The live runs of `name` as (index, replica id).
    fn live(mem: &Mem, name: &str) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = mem.jobs[name].active.iter().map(|(id, i)| (*i, id.clone())).collect();
        v.sort();
        v
    }

    /// The node reports run `id` ended with `code`.
    fn end(mem: &mut Mem, tx: &Tx, id: &str, code: i32) {
        mem.update(tx, id, |r| {
            r.state = ReplicaState::Assigned;
            r.node = Some("n1".into());
        })
        .expect("assign");
        mem.update(tx, id, |r| {
            r.state = if code == 0 { ReplicaState::Exited } else { ReplicaState::Failed };
            r.exit_code = Some(code);
        })
        .expect("end");
    }

    #[test]
    fn runs_advance_retry_and_give_up_at_the_backoff_limit() {
        let mut mem = Mem::default();
        let tx = Tx::default();
        mem.insert_job(&tx, job("j", spec(3, 2, 1)), 0).expect("insert");
        mem.reconcile_job(&tx, "j", 1_000).expect("reconcile");
        // Parallelism 2: indices 0 and 1 start, each with its env.
        let runs = live(&mem, "j");
        assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(mem.jobs["j"].job.state, JobState::Running);
        let env = mem.run_env(&mem.replicas[&runs[1].1]).expect("a run's env");
        assert!(env.contains(&("SKIFF_JOB_INDEX".into(), "1".into())));
        assert!(env.contains(&("SKIFF_JOB_COMPLETIONS".into(), "3".into())));

        // Index 0 succeeds, index 1 fails: 2 starts, 1 waits a second to retry.
        end(&mut mem, &tx, &runs[0].1, 0);
        end(&mut mem, &tx, &runs[1].1, 3);
        mem.reconcile_job(&tx, "j", 2_000).expect("reconcile");
        assert!(!mem.replicas.contains_key(&runs[0].1), "an ended run leaves its node");
        assert_eq!(live(&mem, "j").iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        mem.reconcile_job(&tx, "j", 2_500).expect("reconcile");
        assert_eq!(live(&mem, "j").len(), 1, "not before its retry delay");
        mem.reconcile_job(&tx, "j", 3_000).expect("reconcile");
        let runs = live(&mem, "j");
        assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
        let retry = mem.jobs["j"].run(&runs[0].1).expect("run").clone();
        assert_eq!(retry.attempt, 2);

        // Its second failure passes backoff_limit 1: the job fails, index 2 is stopped.
        end(&mut mem, &tx, &runs[0].1, 3);
        mem.reconcile_job(&tx, "j", 4_000).expect("reconcile");
        let j = &mem.jobs["j"];
        assert_eq!(j.job.state, JobState::Failed);
        assert_eq!(j.job.reason.as_deref(), Some("backoff limit reached at index 1: exited with status 3"));
        assert!(j.active.is_empty());
        assert_eq!(j.run(&runs[1].1).map(|r| r.outcome), Some(RunOutcome::Stopped));
        assert!(mem.replicas.is_empty(), "nothing of it is left on a node");
        let shown = mem.jobs["j"].shown();
        assert_eq!((shown.succeeded, shown.failed, shown.active), (1, 2, 0));
    }

    #[test]
    fn a_lost_run_runs_again_and_after_waits_then_fails_with_its_upstream() {
        let mut mem = Mem::default();
        let tx = Tx::default();
        mem.insert_job(&tx, job("up", spec(1, 1, 0)), 0).expect("insert");
        let mut down = spec(1, 1, 0);
        down.after = vec!["up".into()];
        mem.insert_job(&tx, job("down", down), 0).expect("insert");
        mem.reconcile_job(&tx, "up", 1_000).expect("reconcile");
        mem.reconcile_job(&tx, "down", 1_000).expect("reconcile");
        assert_eq!(mem.jobs["down"].job.state, JobState::Pending);
        assert_eq!(mem.jobs["down"].job.reason.as_deref(), Some("waiting for job up to succeed"));
        assert!(live(&mem, "down").is_empty());

        // The run's node goes down: lost, not counted, run again.
        let first = live(&mem, "up")[0].1.clone();
        mem.update(&tx, &first, |r| r.state = ReplicaState::Stopped).expect("lost");
        mem.reconcile_job(&tx, "up", 2_000).expect("reconcile");
        let again = live(&mem, "up");
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].1, first);
        assert_eq!(mem.jobs["up"].run(&first).map(|r| r.outcome), Some(RunOutcome::Lost));
        assert_eq!(mem.jobs["up"].shown().failed, 0);

        end(&mut mem, &tx, &again[0].1, 3);
        mem.reconcile_job(&tx, "up", 3_000).expect("reconcile");
        mem.reconcile_job(&tx, "down", 3_000).expect("reconcile");
        assert_eq!(mem.jobs["down"].job.state, JobState::Failed);
        assert_eq!(
            mem.jobs["down"].job.reason.as_deref(),
            Some("upstream job up failed: backoff limit reached at index 0: exited with status 3")
        );
    }

    #[test]
    fn a_finished_job_goes_after_its_ttl_and_a_deadline_fails_a_running_one() {
        let mut mem = Mem::default();
        let tx = Tx::default();
        let mut quick = spec(1, 1, 0);
        quick.ttl_seconds_after_finished = Some(10);
        mem.insert_job(&tx, job("quick", quick), 0).expect("insert");
        mem.reconcile_job(&tx, "quick", 1_000).expect("reconcile");
        let id = live(&mem, "quick")[0].1.clone();
        end(&mut mem, &tx, &id, 0);
        mem.reconcile_job(&tx, "quick", 2_000).expect("reconcile");
        assert_eq!(mem.jobs["quick"].job.state, JobState::Succeeded);
        mem.reconcile_job(&tx, "quick", 11_999).expect("reconcile");
        assert!(mem.jobs.contains_key("quick"), "kept until its TTL");
        mem.reconcile_job(&tx, "quick", 12_000).expect("reconcile");
        assert!(!mem.jobs.contains_key("quick"), "gone at its TTL");
        assert!(!mem.revisions.contains_key(&(job_owner("quick"), 1)), "its template too");

        let mut slow = spec(3, 3, 0);
        slow.active_deadline_seconds = Some(5);
        mem.insert_job(&tx, job("slow", slow), 0).expect("insert");
        mem.reconcile_job(&tx, "slow", 1_000).expect("reconcile");
        assert_eq!(live(&mem, "slow").len(), 3);
        mem.reconcile_job(&tx, "slow", 5_999).expect("reconcile");
        assert_eq!(mem.jobs["slow"].job.state, JobState::Running);
        mem.reconcile_job(&tx, "slow", 6_000).expect("reconcile");
        assert_eq!(mem.jobs["slow"].job.state, JobState::Failed);
        assert_eq!(mem.jobs["slow"].job.reason.as_deref(), Some("active deadline of 5s passed"));
        assert!(mem.replicas.is_empty(), "its runs are stopped");
    }

    #[test]
    fn jobs_and_crons_live_in_their_namespace_and_its_quota_holds_their_runs() {
        use skiff_api::namespace::{NamespaceRequest, Quota};
        use skiff_api::quantity::Memory;
        let dir = super::super::tests::tempdir::Dir::new();
        let store = Store::open(&dir.0.join("state.db")).expect("the store");
        let keyring = Keyring::open(&dir.0).expect("the keyring");
        let mut st = State::load(store, keyring, Policy::default()).expect("the state");
        let quota = Quota { memory: Some(Memory(256 << 20)), replicas: Some(2), ..Quota::default() };
        st.put_namespace("team-a", NamespaceRequest { quota: Some(quota), isolation: None }).expect("a namespace");
        let web: ApplyRequest = serde_json::from_value(serde_json::json!({"replicas": 1,
            "spec": {"workload": {"wasm": "sha256:00"}, "resources": {"cpu": "100m", "memory": "32Mi"}}}))
        .expect("an apply");
        st.apply("team-a/web", web).expect("a deployment");

        // No such namespace; a run bigger than the whole quota.
        let e = st.create_job("default/j", spec(1, 1, 0)).expect_err("default's key is its plain name");
        assert!(e.to_string().contains("is not a name"), "{e}");
        let e = st.create_job("team-b/j", spec(1, 1, 0)).expect_err("no namespace");
        assert!(e.to_string().contains("namespace \"team-b\" not found"), "{e}");
        let mut big = spec(1, 1, 0);
        big.template.resources.memory = Memory(512 << 20);
        let e = st.create_job("team-a/big", big).expect_err("never fits");
        assert_eq!(
            e.to_string(),
            "namespace team-a: memory quota 256Mi, one run of this job asks 512Mi; it could never start"
        );

        // Three runs at once asked, room for one beside web: one runs, the job says why the others wait.
        let (job, created) = st.create_job("team-a/j", spec(3, 3, 0)).expect("a job");
        assert!(created);
        assert_eq!(job.name, "team-a/j", "the key inside; the API shows it plain");
        let runs = live(st.mem(), "team-a/j");
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(runs[0].1.starts_with("team-a-j-0-"), "a run id is a DNS label: {}", runs[0].1);
        let env = st.mem().run_env(&st.mem().replicas[&runs[0].1]).expect("its env");
        assert!(env.contains(&("SKIFF_JOB_NAME".into(), "j".into())), "{env:?}");
        let j = &st.mem().jobs["team-a/j"].job;
        assert_eq!(j.state, JobState::Running);
        let why = "runs wait for quota: namespace team-a: replicas quota 2, 2 in use, this asks 1 more";
        assert_eq!(j.reason.as_deref(), Some(why));
        let events = st.store().events(Some("job/team-a/j"), 50).expect("events");
        assert!(events.iter().any(|e| e.reason == "QuotaHeld" && e.message.contains("replicas quota 2")), "{events:?}");
        // Its runs are the namespace's use: a deployment cannot take their room.
        assert_eq!(st.namespace("team-a").expect("team-a").usage.replicas, 2);
        let e = st.scale("team-a/web", 2).expect_err("runs hold the room");
        assert_eq!(e.to_string(), "namespace team-a: replicas quota 2, 2 in use, this asks 1 more");
        // Room made: the waiting runs start.
        st.scale("team-a/web", 0).expect("scaled down");
        st.reconcile_jobs().expect("reconciled");
        assert_eq!(live(st.mem(), "team-a/j").len(), 2);

        // The same name in default is another job; listings keep to their namespace.
        st.create_job("j", spec(1, 1, 0)).expect("default's j");
        assert_eq!(st.mem().jobs_in("team-a").map(|j| j.name).collect::<Vec<_>>(), ["team-a/j"]);
        assert_eq!(st.mem().jobs_in(ns::DEFAULT).map(|j| j.name).collect::<Vec<_>>(), ["j"]);

        // A cron of the namespace starts its jobs there.
        let cron: skiff_api::job::CronSpec = serde_json::from_value(serde_json::json!({
            "schedule": "0 3 * * *", "time_zone": "UTC", "job": serde_json::to_value(spec(1, 1, 0)).expect("json"),
        }))
        .expect("a cron");
        st.put_cron("team-a/nightly", cron).expect("a cron");
        let started = st.trigger_cron("team-a/nightly").expect("triggered");
        assert!(started.name.starts_with("team-a/nightly-t"), "{}", started.name);
        assert_eq!(started.cron.as_deref(), Some("team-a/nightly"));
        assert_eq!(st.mem().crons_in("team-a").len(), 1);
        assert!(st.mem().crons_in(ns::DEFAULT).is_empty());

        // rm names them; --cascade takes them, and default's job stays.
        let e = st.delete_namespace("team-a", false).expect_err("holds objects");
        assert_eq!(
            e.to_string(),
            "namespace team-a holds 1 deployment, 2 jobs, 1 cron; delete them first or pass --cascade"
        );
        st.delete_namespace("team-a", true).expect("cascade");
        assert_eq!(st.mem().jobs_in("team-a").count(), 0);
        assert!(st.mem().crons_in("team-a").is_empty());
        assert!(st.mem().replicas.values().all(|r| r.deployment == "job:j"), "team-a's runs are stopped");
        assert!(st.mem().jobs.contains_key("j"));
    }

    #[test]
    fn namespaced_jobs_and_crons_are_stored_and_loaded_again_beside_defaults() {
        use skiff_api::namespace::NamespaceRequest;
        let dir = super::super::tests::tempdir::Dir::new();
        let open = || {
            let store = Store::open(&dir.0.join("state.db")).expect("the store");
            State::load(store, Keyring::open(&dir.0).expect("the keyring"), Policy::default()).expect("the state")
        };
        {
            let mut st = open();
            st.put_namespace("team-a", NamespaceRequest::default()).expect("a namespace");
            // Rows as a server before namespaces wrote them: default's, by plain name.
            st.create_job("up", spec(1, 1, 0)).expect("default's up");
            let mut down = spec(1, 1, 0);
            down.after = vec!["up".into()];
            st.create_job("team-a/up", spec(1, 1, 0)).expect("team-a's up");
            st.create_job("team-a/down", down).expect("team-a's down");
            let cron: skiff_api::job::CronSpec = serde_json::from_value(serde_json::json!({
                "schedule": "0 3 * * *", "time_zone": "UTC", "job": serde_json::to_value(spec(1, 1, 0)).expect("json"),
            }))
            .expect("a cron");
            st.put_cron("team-a/nightly", cron).expect("a cron");
        }
        let st = open();
        let mem = st.mem();
        assert_eq!(mem.jobs_in(ns::DEFAULT).map(|j| j.name).collect::<Vec<_>>(), ["up"]);
        assert_eq!(mem.jobs_in("team-a").map(|j| j.name).collect::<Vec<_>>(), ["team-a/down", "team-a/up"]);
        assert_eq!(mem.jobs["team-a/down"].job.spec.after, ["team-a/up"], "after names team-a's up, not default's");
        assert_eq!(live(mem, "team-a/up").len(), 1, "its run is loaded with it");
        assert_eq!(mem.crons_in("team-a").iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["team-a/nightly"]);
        assert!(mem.crons_in(ns::DEFAULT).is_empty());
    }

    #[test]
    fn retry_delays_double_up_to_a_minute() {
        assert_eq!(retry_delay_ms(1), 1_000);
        assert_eq!(retry_delay_ms(2), 2_000);
        assert_eq!(retry_delay_ms(3), 4_000);
        assert_eq!(retry_delay_ms(30), 60_000);
    }

    #[test]
    fn run_ids_are_dns_labels() {
        let id = new_run_id(&"x".repeat(63), 99_999);
        skiff_api::manifest::validate_name(&id).expect("a valid name");
        assert!(id.starts_with(&"x".repeat(44)));
    }
}
