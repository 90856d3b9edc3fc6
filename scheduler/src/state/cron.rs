//! Crons: a job started at the times of a schedule (`croner` reads the cron
//! expression, `chrono-tz` the time zone).
//!
//! Each pass ([`State::cron_pass`]) looks for the latest scheduled time after
//! the cron's `last_scheduled_ms` that has come; it starts a job for it (or
//! skips it: past `starting_deadline`, `forbid` while a job runs) and records
//! the time in the same store transaction as the job, so a time is handled at
//! most once whatever restarts or leader changes happen around it, and a job's
//! name holds its scheduled time (`NAME-<unix seconds>`), so a second job for
//! the same time could not even be created. Earlier times missed while no
//! scheduler ran are skipped with an event; only the latest is run.
//!
//! A cron is namespaced (#20) as its jobs are: its key is `NAME` in `default`
//! and `NS/NAME` elsewhere, and its jobs are `NS/NAME-<time>`.

use super::jobs::JobEntry;
use super::*;
use chrono::{TimeZone, Utc};
use skiff_api::job::{ConcurrencyPolicy, CronDetail, CronSpec, JobState, format_secs, validate_cron};
use skiff_api::namespace as ns;
use skiff_api::{Cron, Job};

/// A cron with its parsed schedule.
pub(crate) struct CronEntry {
    pub(crate) cron: Cron,
    schedule: croner::Cron,
    tz: chrono_tz::Tz,
}

/// Reads `spec`'s schedule and time zone, or says what is wrong with them.
pub(crate) fn parse_schedule(spec: &CronSpec) -> Result<(croner::Cron, chrono_tz::Tz), String> {
    use croner::parser::{CronParser, Seconds, Year};
    let schedule = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(&spec.schedule)
        .map_err(|e| format!("schedule {:?}: {e}", spec.schedule))?;
    let tz: chrono_tz::Tz = spec
        .time_zone
        .parse()
        .map_err(|_| format!("time zone {:?} is not an IANA time zone such as Europe/Berlin or UTC", spec.time_zone))?;
    Ok((schedule, tz))
}

/// The first time of `schedule` in `tz` after `after_ms` (exclusive).
pub(crate) fn next_after(schedule: &croner::Cron, tz: chrono_tz::Tz, after_ms: Millis) -> Option<Millis> {
    let t = tz.timestamp_millis_opt(after_ms as i64).single()?;
    let next = schedule.find_next_occurrence(&t, false).ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

/// The latest time of `schedule` in `tz` at or before `at_ms`.
pub(crate) fn latest_at(schedule: &croner::Cron, tz: chrono_tz::Tz, at_ms: Millis) -> Option<Millis> {
    let t = tz.timestamp_millis_opt(at_ms as i64).single()?;
    let prev = schedule.find_previous_occurrence(&t, true).ok()?;
    u64::try_from(prev.timestamp_millis()).ok()
}

/// `2026-12-08 03:00:00 UTC` for events.
fn when(ms: Millis) -> String {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// The key of a cron's job for scheduled time `ms` (in the cron's namespace:
/// `cron` is the cron's key).
fn job_name(cron: &str, tag: &str, ms: Millis) -> String {
    let (space, cron) = ns::split(cron);
    let prefix = cron[..cron.len().min(50)].trim_end_matches('-');
    ns::key(space, &format!("{prefix}-{tag}{}", ms / 1000))
}

impl CronEntry {
    fn shown(&self, now: Millis) -> Cron {
        let mut c = self.cron.clone();
        let from = c.last_scheduled_ms.unwrap_or(c.created_ms).max(now);
        c.next_ms = if c.spec.suspend { None } else { next_after(&self.schedule, self.tz, from) };
        c
    }
}

/// Job keys as users name them: `a, b`.
fn plain_names(keys: &[String]) -> String {
    keys.iter().map(|k| ns::plain(k)).collect::<Vec<_>>().join(", ")
}

impl State {
    /// Creates or changes cron `name`; true when created.
    /// `name` is the cron's key (`NS/NAME` outside `default`).
    pub fn put_cron(&mut self, name: &str, mut spec: CronSpec) -> Result<(Cron, bool), Error> {
        spec.job.template.restart = RestartPolicy::Never;
        validate_cron(ns::split(name).1, &spec).map_err(Error::Invalid)?;
        let (schedule, tz) = parse_schedule(&spec).map_err(Error::Invalid)?;
        super::jobs::namespaced_spec(&self.mem, name, &mut spec.job, "this cron's job")?;
        let now = now_ms();
        let existing = self.mem.crons.get(name).map(|e| e.cron.clone());
        if existing.is_none() && self.mem.crons.len() >= self.max_objects {
            return Err(Error::TooMany { kind: "crons", max: self.max_objects });
        }
        let created = existing.is_none();
        let cron = match existing {
            Some(mut c) => {
                if c.spec == spec {
                    return Ok((self.mem.crons[name].shown(now), false));
                }
                c.spec = spec;
                c
            }
            None => Cron {
                name: name.to_string(),
                namespace: String::new(),
                spec,
                created_ms: now,
                last_scheduled_ms: None,
                last_job: None,
                next_ms: None,
            },
        };
        self.transact(|mem, tx| {
            tx.put_cron(&cron)?;
            let what = if created { "Created" } else { "Updated" };
            tx.event(
                now,
                &format!("cron/{name}"),
                what,
                &format!("schedule {:?} ({})", cron.spec.schedule, cron.spec.time_zone),
            )?;
            mem.crons.insert(name.to_string(), CronEntry { cron, schedule, tz });
            mem.fx.mutated = true;
            Ok(())
        })?;
        Ok((self.mem.crons[name].shown(now), created))
    }

    /// Deletes cron `name` and its jobs (stopping what runs).
    pub fn delete_cron(&mut self, name: &str) -> Result<(), Error> {
        if !self.mem.crons.contains_key(name) {
            let plain = ns::split(name).1;
            return Err(Error::NotFound(format!("cron {plain:?} not found; `skiff get crons` lists them")));
        }
        let now = now_ms();
        self.transact(|mem, tx| {
            for job in mem.cron_jobs(name) {
                mem.remove_job(tx, &job, now, &format!("deleted with cron {}", ns::plain(name)))?;
            }
            mem.crons.remove(name);
            tx.delete_cron(name)?;
            tx.event(now, &format!("cron/{name}"), "Deleted", "deleted with its jobs")?;
            mem.fx.mutated = true;
            Ok(())
        })
    }

    /// Starts a job of cron `name` now, whatever its schedule (`skiff cron trigger`).
    pub fn trigger_cron(&mut self, name: &str) -> Result<Job, Error> {
        if !self.mem.crons.contains_key(name) {
            let plain = ns::split(name).1;
            return Err(Error::NotFound(format!("cron {plain:?} not found; `skiff get crons` lists them")));
        }
        let now = now_ms();
        let job = self.transact(|mem, tx| {
            let mut job = job_name(name, "t", now);
            let mut n = 1;
            while mem.jobs.contains_key(&job) {
                n += 1;
                job = format!("{}-{n}", job_name(name, "t", now));
            }
            mem.start_cron_job(tx, name, &job, None, now)?;
            tx.event(now, &format!("cron/{name}"), "Triggered", &format!("job {} started by hand", ns::plain(&job)))?;
            Ok(job)
        })?;
        self.mem.jobs.get(&job).map(|e| e.shown()).ok_or_else(|| Error::Internal(format!("job {job} vanished")))
    }

    /// Starts the jobs whose time has come (once per scheduled time).
    pub fn cron_pass(&mut self) -> Result<(), Error> {
        if self.mem.crons.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let due: Vec<(String, Millis)> = self
            .mem
            .crons
            .values()
            .filter(|e| !e.cron.spec.suspend)
            .filter_map(|e| {
                let from = e.cron.last_scheduled_ms.unwrap_or(e.cron.created_ms);
                let next = next_after(&e.schedule, e.tz, from)?;
                (next <= now).then(|| (e.cron.name.clone(), from))
            })
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.transact(|mem, tx| {
            for (name, from) in &due {
                mem.cron_due(tx, name, *from, now)?;
            }
            Ok(())
        })
    }
}

impl Mem {
    /// The crons of namespace `namespace` (#20), with their next time.
    pub fn crons_in(&self, namespace: &str) -> Vec<Cron> {
        let now = now_ms();
        Self::keys_in(&self.crons, namespace).map(|k| self.crons[k].shown(now)).collect()
    }

    /// Cron `name` and its jobs.
    pub fn cron_detail(&self, name: &str) -> Option<CronDetail> {
        let e = self.crons.get(name)?;
        let mut jobs: Vec<Job> =
            self.jobs.values().filter(|j| j.job.cron.as_deref() == Some(name)).map(JobEntry::shown).collect();
        jobs.sort_by_key(|j| (j.created_ms, j.name.clone()));
        Some(CronDetail { cron: e.shown(now_ms()), jobs })
    }

    /// Loads stored crons; one whose schedule no longer reads is left out (logged).
    pub(super) fn load_crons(&mut self, crons: Vec<Cron>) {
        for cron in crons {
            match parse_schedule(&cron.spec) {
                Ok((schedule, tz)) => {
                    self.crons.insert(cron.name.clone(), CronEntry { cron, schedule, tz });
                }
                Err(e) => tracing::error!("cron {}: {e}; it is not run", cron.name),
            }
        }
    }

    /// Names of cron `name`'s jobs, oldest first.
    fn cron_jobs(&self, name: &str) -> Vec<String> {
        let mut jobs: Vec<(Millis, String)> = self
            .jobs
            .values()
            .filter(|e| e.job.cron.as_deref() == Some(name))
            .map(|e| (e.job.created_ms, e.job.name.clone()))
            .collect();
        jobs.sort();
        jobs.into_iter().map(|(_, n)| n).collect()
    }

    /// Handles cron `name`'s latest time after `from` that has come by `now`.
    fn cron_due(&mut self, tx: &Tx, name: &str, from: Millis, now: Millis) -> Result<(), Error> {
        let Some(e) = self.crons.get(name) else { return Ok(()) };
        let (Some(first), Some(latest)) = (next_after(&e.schedule, e.tz, from), latest_at(&e.schedule, e.tz, now))
        else {
            return Ok(());
        };
        if latest <= from || first > now {
            return Ok(());
        }
        let spec = e.cron.spec.clone();
        let obj = format!("cron/{name}");
        if first < latest {
            tx.event(
                now,
                &obj,
                "MissedSchedule",
                &format!(
                    "times from {} to before {} were missed (no scheduler ran); only the latest is considered",
                    when(first),
                    when(latest)
                ),
            )?;
        }
        let late = now.saturating_sub(latest);
        let mut start = true;
        if let Some(deadline) = spec.starting_deadline_seconds
            && late > deadline.saturating_mul(1000)
        {
            tx.event(
                now,
                &obj,
                "MissedSchedule",
                &format!(
                    "the run of {} is skipped: {:.1}s late, past the starting deadline of {}",
                    when(latest),
                    late as f64 / 1000.0,
                    format_secs(deadline)
                ),
            )?;
            start = false;
        }
        let running: Vec<String> = self
            .cron_jobs(name)
            .into_iter()
            .filter(|j| self.jobs.get(j).is_some_and(|e| !e.job.state.is_finished()))
            .collect();
        if start && !running.is_empty() {
            match spec.concurrency_policy {
                ConcurrencyPolicy::Allow => {}
                ConcurrencyPolicy::Forbid => {
                    tx.event(
                        now,
                        &obj,
                        "Skipped",
                        &format!(
                            "the run of {} is skipped: job {} still runs (concurrency policy forbid)",
                            when(latest),
                            plain_names(&running)
                        ),
                    )?;
                    start = false;
                }
                ConcurrencyPolicy::Replace => {
                    for j in &running {
                        self.remove_job(
                            tx,
                            j,
                            now,
                            &format!("replaced by the run of {} (concurrency policy replace)", when(latest)),
                        )?;
                    }
                    tx.event(
                        now,
                        &obj,
                        "Replaced",
                        &format!("stopped job {} for the run of {}", plain_names(&running), when(latest)),
                    )?;
                }
            }
        }
        let job = job_name(name, "", latest);
        if start && !self.jobs.contains_key(&job) {
            self.start_cron_job(tx, name, &job, Some(latest), now)?;
            crate::metrics::cron_lag(late);
            tx.event(
                now,
                &obj,
                "Started",
                &format!("job {} for {} ({:.3}s after it)", ns::plain(&job), when(latest), late as f64 / 1000.0),
            )?;
        }
        let Some(e) = self.crons.get_mut(name) else { return Ok(()) };
        e.cron.last_scheduled_ms = Some(latest);
        if start {
            e.cron.last_job = Some(job);
        }
        tx.put_cron(&e.cron)?;
        self.fx.mutated = true;
        Ok(())
    }

    /// Creates job `job` of cron `name` (for `scheduled`, or by hand), then
    /// trims the cron's finished jobs to its history.
    fn start_cron_job(
        &mut self,
        tx: &Tx,
        name: &str,
        job: &str,
        scheduled: Option<Millis>,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(e) = self.crons.get(name) else { return Ok(()) };
        let spec = e.cron.spec.job.clone();
        let history = e.cron.spec.history;
        let j = Job {
            name: job.to_string(),
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
            cron: Some(name.to_string()),
            scheduled_ms: scheduled,
        };
        self.insert_job(tx, j, now)?;
        self.reconcile_job(tx, job, now)?;
        if let Some(c) = self.crons.get_mut(name) {
            c.cron.last_job = Some(job.to_string());
            tx.put_cron(&c.cron)?;
        }
        // History: the newest finished jobs of each outcome are kept.
        let mut kept = (0u32, 0u32);
        for j in self.cron_jobs(name).into_iter().rev() {
            let Some(state) = self.jobs.get(&j).map(|e| e.job.state) else { continue };
            let over = match state {
                JobState::Succeeded => {
                    kept.0 += 1;
                    kept.0 > history.succeeded
                }
                JobState::Failed => {
                    kept.1 += 1;
                    kept.1 > history.failed
                }
                _ => false,
            };
            if over {
                self.remove_job(tx, &j, now, &format!("deleted past cron {}'s history", ns::plain(name)))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(schedule: &str, tz: &str) -> CronSpec {
        serde_json::from_value(serde_json::json!({
            "schedule": schedule,
            "time_zone": tz,
            "job": { "template": { "workload": { "image": "busybox" }, "resources": { "cpu": "100m", "memory": "64Mi" } } }
        }))
        .expect("spec")
    }

    fn ms(s: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(s).expect("time").timestamp_millis() as Millis
    }

    #[test]
    fn five_and_six_fields_and_time_zones() {
        let (s, tz) = parse_schedule(&spec("0 3 * * *", "Europe/Berlin")).expect("parses");
        // 03:00 in Berlin in winter is 02:00 UTC.
        assert_eq!(next_after(&s, tz, ms("2026-12-08T00:00:00Z")), Some(ms("2026-12-08T02:00:00Z")));
        assert_eq!(next_after(&s, tz, ms("2026-12-08T02:00:00Z")), Some(ms("2026-12-09T02:00:00Z")));
        assert_eq!(latest_at(&s, tz, ms("2026-12-08T02:00:00Z")), Some(ms("2026-12-08T02:00:00Z")));
        let (s, tz) = parse_schedule(&spec("*/2 * * * * *", "UTC")).expect("parses");
        assert_eq!(next_after(&s, tz, ms("2026-12-08T00:00:01Z")), Some(ms("2026-12-08T00:00:02Z")));
        assert_eq!(next_after(&s, tz, ms("2026-12-08T00:00:02Z")), Some(ms("2026-12-08T00:00:04Z")));
        assert_eq!(latest_at(&s, tz, ms("2026-12-08T00:00:07.5Z")), Some(ms("2026-12-08T00:00:06Z")));
        assert!(parse_schedule(&spec("0 3 * *", "UTC")).is_err());
        assert!(parse_schedule(&spec("61 * * * *", "UTC")).is_err());
        assert!(parse_schedule(&spec("0 3 * * *", "Mars/Olympus")).unwrap_err().contains("IANA"));
    }

    #[test]
    fn job_names_hold_the_scheduled_time() {
        assert_eq!(job_name("nightly", "", 1_765_000_000_000), "nightly-1765000000");
        assert_eq!(job_name("team-a/nightly", "t", 1_765_000_000_000), "team-a/nightly-t1765000000");
        let long = "a".repeat(63);
        assert!(job_name(&long, "t", 1_765_000_000_000).len() <= 63);
    }
}
