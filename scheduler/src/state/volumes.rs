//! Named volumes: declared by an apply, bound to a node by the first placement,
//! purged on that node when deleted.

use super::*;

impl State {
    /// Every volume.
    pub fn volumes(&self) -> Vec<Volume> {
        self.mem.volumes()
    }

    /// Deletes volume `name` and its data, unless a deployment mounts it.
    pub fn delete_volume(&mut self, name: &str) -> Result<(), Error> {
        let now = now_ms();
        self.transact(|mem, tx| {
            let Some(v) = mem.volumes().into_iter().find(|v| v.name == name) else {
                return Err(Error::NotFound(format!("volume {name:?} not found; `skiff volume ls` lists them")));
            };
            if !v.deployments.is_empty() {
                return Err(Error::Conflict(format!(
                    "volume {name} is mounted by deployments {}; delete them first",
                    v.deployments.join(", ")
                )));
            }
            mem.purge_volume(tx, name, now)
        })
    }
}

impl Mem {
    /// The node a replica of `spec` must go to because a volume it mounts lives
    /// there; an error when its volumes live on different nodes.
    pub(super) fn volume_node(&self, spec: &WorkloadSpec) -> Result<Option<String>, String> {
        let mut pinned: Option<&String> = None;
        for m in &spec.volumes {
            let Some(node) = self.volumes.get(&m.name).and_then(|v| v.node.as_ref()) else { continue };
            match pinned {
                Some(p) if p != node => {
                    return Err(format!(
                        "its volumes live on different nodes ({p} and {node}); no node holds them all"
                    ));
                }
                _ => pinned = Some(node),
            }
        }
        Ok(pinned.cloned())
    }

    /// Binds the still unbound volumes of revision `key` to `node`, where its
    /// replica was just placed.
    pub(super) fn bind_volumes(&mut self, tx: &Tx, key: &(String, u64), node: &str) -> Result<(), Error> {
        let Some(spec) = self.revisions.get(key) else { return Ok(()) };
        for m in &spec.volumes {
            if let Some(v) = self.volumes.get_mut(&m.name)
                && v.node.is_none()
            {
                v.node = Some(node.to_string());
                tx.put_volume(v)?;
                tx.event(now_ms(), &format!("volume/{}", v.name), "Bound", &format!("volume lives on node {node}"))?;
                self.fx.mutated = true;
            }
        }
        Ok(())
    }

    /// Records the volumes `spec` names that do not exist yet (unbound: the first
    /// placement decides their node), and refuses a read-write volume that another
    /// deployment mounts.
    pub(super) fn declare_volumes(
        &mut self,
        tx: &Tx,
        deployment: &str,
        spec: &WorkloadSpec,
        now: Millis,
    ) -> Result<(), Error> {
        for m in &spec.volumes {
            for e in self.deployments.values().filter(|e| e.d.name != deployment) {
                if let Some(other) = e.d.spec.volumes.iter().find(|o| o.name == m.name)
                    && (!other.read_only || !m.read_only)
                {
                    return Err(Error::Conflict(format!(
                        "volume {} is mounted by deployment {}; a volume mounted read-write belongs to one deployment",
                        m.name, e.d.name
                    )));
                }
            }
            if !self.volumes.contains_key(&m.name) || self.purging.contains(&m.name) {
                let v = Volume { name: m.name.clone(), node: None, size: m.size, deployments: vec![], created_ms: now };
                tx.put_volume(&v)?;
                self.purging.remove(&m.name);
                self.volumes.insert(m.name.clone(), v);
                self.fx.mutated = true;
            }
        }
        Ok(())
    }

    /// Every volume, with the deployments that mount it.
    pub fn volumes(&self) -> Vec<Volume> {
        self.volumes
            .values()
            .filter(|v| !self.purging.contains(&v.name))
            .map(|v| {
                let mut v = v.clone();
                v.deployments = self
                    .deployments
                    .values()
                    .filter(|e| e.d.spec.volumes.iter().any(|m| m.name == v.name))
                    .map(|e| e.d.name.clone())
                    .collect();
                v
            })
            .collect()
    }

    /// Forgets volume `name` and tells its node to delete the data.
    pub(super) fn purge_volume(&mut self, tx: &Tx, name: &str, now: Millis) -> Result<(), Error> {
        let Some(v) = self.volumes.get(name) else { return Ok(()) };
        match v.node.clone() {
            Some(node) => {
                // Kept as a tombstone so the node hears it (and again after a restart).
                tx.put_volume_purge(v)?;
                self.purging.insert(name.to_string());
                self.fx.touched.insert(node);
            }
            None => {
                tx.delete_volume(name)?;
                self.volumes.remove(name);
            }
        }
        tx.event(now, &format!("volume/{name}"), "Purged", "volume deleted with its data")?;
        self.fx.mutated = true;
        Ok(())
    }

    pub(super) fn purge_volumes(&self, name: &str) -> Vec<String> {
        self.purging
            .iter()
            .filter(|v| self.volumes.get(*v).and_then(|v| v.node.as_deref()) == Some(name))
            .cloned()
            .collect()
    }
}
