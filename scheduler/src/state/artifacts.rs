//! What the blob store must keep (`crate::blobs::collect`) and who runs an
//! imported image (`skiff image rm`).

use super::*;

/// The manifest digest an image reference is pinned to (`name:tag@sha256:…`
/// or a bare `sha256:…`), if it is.
fn pinned_digest(reference: &str) -> Option<&str> {
    match reference.rsplit_once('@') {
        Some((_, d)) => Some(d),
        None => reference.starts_with("sha256:").then_some(reference),
    }
}

impl State {
    /// The blobs the working set refers to by digest: the Wasm artifact and the
    /// pinned image manifest of every revision a deployment keeps (its current
    /// one and its history, which a rollback returns to), of every job and of
    /// every cron's job template. An image's config and layers are reached
    /// from its manifest by the caller.
    pub fn referenced_blobs(&self) -> BTreeSet<String> {
        let jobs = self.mem.jobs.values().map(|e| &e.job.spec.template);
        let crons = self.mem.crons.values().map(|e| &e.cron.spec.job.template);
        self.mem
            .revisions
            .values()
            .chain(jobs)
            .chain(crons)
            .filter_map(|spec| match &spec.workload {
                Workload::Wasm(d) => Some(d.clone()),
                Workload::Image(i) => pinned_digest(i).map(str::to_owned),
            })
            .collect()
    }

    /// The deployments that run image `name:tag` (by their current revision,
    /// or by a live replica of an older one: a rollout under way), then the
    /// jobs and crons whose template names it, as `job/NAME` and `cron/NAME`.
    pub fn image_users(&self, name: &str, tag: &str) -> Vec<String> {
        let runs = |spec: &WorkloadSpec| match &spec.workload {
            Workload::Image(i) => {
                let (n, t, _) = crate::images::split_reference(i);
                n == name && t == tag
            }
            Workload::Wasm(_) => false,
        };
        self.mem
            .deployments
            .values()
            .filter(|e| {
                runs(&e.d.spec)
                    || self
                        .mem
                        .replicas_of(&e.d.name)
                        .any(|r| self.mem.revisions.get(&(r.deployment.clone(), r.revision)).is_some_and(runs))
            })
            .map(|e| e.d.name.clone())
            .chain(self.mem.jobs.values().filter(|e| runs(&e.job.spec.template)).map(|e| format!("job/{}", e.job.name)))
            .chain(
                self.mem
                    .crons
                    .values()
                    .filter(|e| runs(&e.cron.spec.job.template))
                    .map(|e| format!("cron/{}", e.cron.name)),
            )
            .collect()
    }
}
