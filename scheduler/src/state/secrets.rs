//! Secrets, held sealed; opened only for the node whose replicas name them.

use super::registries;
use super::*;

impl State {
    /// Every secret, without values.
    pub fn secrets(&self) -> Vec<Secret> {
        // Registry credentials live in the same table and are no user's secret.
        self.mem.secrets.values().filter(|(s, _)| !registries::is_registry(&s.name)).map(|(s, _)| s.clone()).collect()
    }

    /// Creates secret `name`, or replaces its values when `req.overwrite`.
    pub fn put_secret(&mut self, name: &str, req: SecretRequest) -> Result<Secret, Error> {
        // A key `NS/NAME` (#20): the canonical key of a namespace that exists;
        // the name is what is checked.
        let (namespace, plain) = super::namespaces::canonical(name)?;
        if !self.mem.namespace_exists(namespace) {
            return Err(Error::NotFound(format!("namespace {namespace:?} not found; `skiff namespace ls` lists them")));
        }
        skiff_api::manifest::validate_secret(plain, &req).map_err(Error::Invalid)?;
        let now = now_ms();
        let existing = self.mem.secrets.get(name).map(|(s, _)| s.created_ms);
        if existing.is_none() && self.mem.secrets.len() >= self.max_objects {
            return Err(Error::TooMany { kind: "secrets", max: self.max_objects });
        }
        if existing.is_some() && !req.overwrite {
            return Err(Error::Conflict(format!(
                "secret {name} already exists; pass --overwrite to replace its values"
            )));
        }
        let sealed = self.keyring.seal(name, &req.data).map_err(|e| Error::Internal(e.to_string()))?;
        let secret = Secret {
            name: name.to_string(),
            keys: req.data.keys().cloned().collect(),
            created_ms: existing.unwrap_or(now),
            updated_ms: now,
        };
        self.transact(|mem, tx| {
            tx.put_secret(&secret, &sealed)?;
            let verb = if existing.is_some() { "Updated" } else { "Created" };
            let msg = format!("secret with keys {}", secret.keys.join(", "));
            tx.event(now, &format!("secret/{name}"), verb, &msg)?;
            mem.secrets.insert(name.to_string(), (secret.clone(), sealed));
            mem.fx.mutated = true;
            // Replicas may be pending for want of it.
            mem.sched_dirty = true;
            // The nodes running replicas that use it get their assignments
            // again, with the new values (for the replicas' next start).
            let placed: Vec<(String, String)> = mem
                .secret_users(name)
                .flat_map(|d| mem.replicas_of(d))
                .filter(|r| r.state.is_placed())
                .filter_map(|r| Some((r.node.clone()?, r.id.clone())))
                .collect();
            for (node, id) in placed {
                mem.tell(node, id);
            }
            Ok(())
        })?;
        Ok(secret)
    }

    /// Deletes secret `name`, unless a deployment uses it.
    pub fn delete_secret(&mut self, name: &str) -> Result<(), Error> {
        if !self.mem.secrets.contains_key(name) || registries::is_registry(name) {
            return Err(Error::NotFound(format!("secret {name:?} not found; `skiff secret ls` lists them")));
        }
        let users: Vec<&str> = self.mem.secret_users(name).collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "secret {name} is used by deployments {}; change or delete them first",
                users.join(", ")
            )));
        }
        let now = now_ms();
        self.transact(|mem, tx| {
            tx.delete_secret(name)?;
            tx.event(now, &format!("secret/{name}"), "Deleted", "secret deleted")?;
            mem.secrets.remove(name);
            mem.fx.mutated = true;
            Ok(())
        })
    }

    /// Re-seals every secret under a new key, then forgets the old keys.
    pub fn rotate_secret_key(&mut self) -> anyhow::Result<usize> {
        self.keyring.add_key()?;
        let mut resealed = Vec::new();
        for (name, (secret, sealed)) in &self.mem.secrets {
            let values = self.keyring.open_sealed(name, sealed)?;
            resealed.push((secret.clone(), self.keyring.seal(name, &values)?));
        }
        let n = resealed.len();
        self.transact(|mem, tx| {
            for (secret, sealed) in resealed {
                tx.put_secret(&secret, &sealed)?;
                mem.secrets.insert(secret.name.clone(), (secret, sealed));
            }
            mem.fx.mutated = true;
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.keyring.drop_old_keys()?;
        Ok(n)
    }
}

impl Mem {
    /// The deployments whose spec names secret `name`.
    pub(super) fn secret_users<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.deployments
            .values()
            .filter(move |e| e.d.spec.secrets.iter().any(|r| r.secret == name))
            .map(|e| e.d.name.as_str())
    }

    /// Why replicas of `spec` cannot start yet for want of a secret, if they can't.
    pub(super) fn missing_secret(&self, spec: &WorkloadSpec) -> Option<String> {
        for r in &spec.secrets {
            let Some((secret, _)) = self.secrets.get(&r.secret) else {
                return Some(format!(
                    "secret {:?} not found; create it with `skiff secret create {}`",
                    r.secret, r.secret
                ));
            };
            if let Some(key) = r.env.values().find(|k| !secret.keys.contains(k)) {
                return Some(format!("secret {:?} has no key {key:?}", r.secret));
            }
        }
        None
    }
}
