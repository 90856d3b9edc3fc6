//! Private registry credentials (`skiff registry login`). Each is a sealed
//! secret in the secrets table under a name no user secret can have
//! (`registry:HOST`: a secret name is a DNS label, which has no `:`), so it is
//! sealed, rotated and stored exactly as secrets are, with no table of its own.
//! `State::secrets` and the secret verbs never show or touch them. A node gets
//! one only inside the assignment of a replica whose image names that host
//! (`State::complete`).

use super::*;

/// Secret-name prefix of registry credentials.
const PREFIX: &str = "registry:";

/// Whether secret `name` is a registry credential, not a user's secret.
pub(super) fn is_registry(name: &str) -> bool {
    name.starts_with(PREFIX)
}

fn secret_name(host: &str) -> String {
    format!("{PREFIX}{host}")
}

/// The registry host an image reference names (`localhost:5000/app:1` →
/// `localhost:5000`), lowercased; `None` for an imported image.
pub(super) fn host_of_image(reference: &str) -> Option<String> {
    let name = reference.split('@').next().unwrap_or(reference);
    crate::images::is_remote(name).then(|| name.split('/').next().unwrap_or_default().to_ascii_lowercase())
}

/// Checks a registry host as `skiff registry login` takes it and returns it
/// lowercased: what an image reference can start with (`host.domain`,
/// `host:port`, `localhost`, `[v6]:port`), no scheme, no path.
pub fn validate_host(host: &str) -> Result<String, Error> {
    let h = host.trim().to_ascii_lowercase();
    let bad = |why: &str| {
        Error::Invalid(format!(
            "registry host {host:?} {why}; give it as image references name it, such as registry.example.com or localhost:5000"
        ))
    };
    if h.contains("://") {
        return Err(bad("has a scheme"));
    }
    if h.is_empty() || h.len() > 253 || h.contains('/') {
        return Err(bad("is not a host"));
    }
    let (name, port) = match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => ("v6", tail.strip_prefix(':')),
            _ => return Err(bad("is not a host")),
        },
        None => match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h.as_str(), None),
        },
    };
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad("has an invalid port"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name != "v6" && !name.split('.').all(label_ok) {
        return Err(bad("is not a host"));
    }
    // Docker reads `team/app` as a repository, not a host: a host that an image
    // reference cannot start with would never be used.
    if host_of_image(&format!("{h}/x")).is_none() {
        return Err(bad("is not one an image reference can start with (it needs a '.', a port or to be localhost)"));
    }
    Ok(h)
}

impl State {
    /// Every stored registry credential, without passwords.
    pub fn registries(&self) -> Result<Vec<Registry>, Error> {
        let mut out = Vec::new();
        for (name, (secret, sealed)) in self.mem.secrets.range(PREFIX.to_string()..) {
            let Some(host) = name.strip_prefix(PREFIX) else { break };
            let values = self.keyring.open_sealed(name, sealed).map_err(|e| Error::Internal(e.to_string()))?;
            out.push(Registry {
                host: host.to_string(),
                username: values.get("username").cloned().unwrap_or_default(),
                created_ms: secret.created_ms,
                updated_ms: secret.updated_ms,
            });
        }
        Ok(out)
    }

    /// Stores (or replaces) the credential of registry `host`. The nodes
    /// running or starting replicas of its images get their assignments again
    /// with it: a replica waiting for it pulls at its next try, a running one
    /// is left alone (the node keeps a replica whose only change is the
    /// credential).
    pub fn registry_login(&mut self, host: &str, req: RegistryLogin) -> Result<Registry, Error> {
        let host = validate_host(host)?;
        if req.username.is_empty() || req.username.len() > 256 || req.username.contains(':') {
            return Err(Error::Invalid(
                "the registry user name must be 1 to 256 characters without ':' (basic auth cannot carry one)".into(),
            ));
        }
        if req.password.is_empty() || req.password.len() > 16 << 10 {
            return Err(Error::Invalid("the registry password must be 1 byte to 16 KiB".into()));
        }
        let name = secret_name(&host);
        let now = now_ms();
        let existing = self.mem.secrets.get(&name).map(|(s, _)| s.created_ms);
        if existing.is_none() && self.mem.secrets.len() >= self.max_objects {
            return Err(Error::TooMany { kind: "secrets", max: self.max_objects });
        }
        let values = secrets_values(&req);
        let sealed = self.keyring.seal(&name, &values).map_err(|e| Error::Internal(e.to_string()))?;
        let secret = Secret {
            name: name.clone(),
            keys: values.keys().cloned().collect(),
            created_ms: existing.unwrap_or(now),
            updated_ms: now,
        };
        let registry = Registry {
            host: host.clone(),
            username: req.username.clone(),
            created_ms: secret.created_ms,
            updated_ms: now,
        };
        self.transact(|mem, tx| {
            tx.put_secret(&secret, &sealed)?;
            let msg = format!("credential for user {} stored", req.username);
            tx.event(now, &format!("registry/{host}"), if existing.is_some() { "Updated" } else { "LoggedIn" }, &msg)?;
            mem.secrets.insert(name.clone(), (secret.clone(), sealed));
            mem.fx.mutated = true;
            mem.tell_registry_users(&host);
            Ok(())
        })?;
        Ok(registry)
    }

    /// Forgets the credential of registry `host`; the nodes holding it for
    /// replicas get their assignments again without it.
    pub fn registry_logout(&mut self, host: &str) -> Result<(), Error> {
        let host = validate_host(host)?;
        let name = secret_name(&host);
        if !self.mem.secrets.contains_key(&name) {
            return Err(Error::NotFound(format!(
                "no credential is stored for registry {host}; `skiff registry ls` lists them"
            )));
        }
        let now = now_ms();
        self.transact(|mem, tx| {
            tx.delete_secret(&name)?;
            tx.event(now, &format!("registry/{host}"), "LoggedOut", "credential deleted")?;
            mem.secrets.remove(&name);
            mem.fx.mutated = true;
            mem.tell_registry_users(&host);
            Ok(())
        })
    }

    /// The credential for the registry of image `reference`, opened, if one is
    /// stored.
    pub(super) fn registry_credential(&self, reference: &str) -> Result<Option<RegistryCredential>, Error> {
        let Some(host) = host_of_image(reference) else { return Ok(None) };
        let name = secret_name(&host);
        let Some((_, sealed)) = self.mem.secrets.get(&name) else { return Ok(None) };
        let mut values = self.keyring.open_sealed(&name, sealed).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Some(RegistryCredential {
            host,
            username: values.remove("username").unwrap_or_default(),
            password: values.remove("password").unwrap_or_default(),
        }))
    }
}

fn secrets_values(req: &RegistryLogin) -> crate::secrets::Values {
    crate::secrets::Values::from([
        ("username".to_string(), req.username.clone()),
        ("password".to_string(), req.password.clone()),
    ])
}

impl Mem {
    /// Every placed replica whose image is pulled from `host` is told to its
    /// node again (with the credential as it now is).
    fn tell_registry_users(&mut self, host: &str) {
        let placed: Vec<(String, String)> = self
            .replicas
            .values()
            .filter(|r| r.state.is_placed())
            .filter(|r| {
                self.revisions.get(&(r.deployment.clone(), r.revision)).is_some_and(|spec| match &spec.workload {
                    Workload::Image(i) => host_of_image(i).as_deref() == Some(host),
                    Workload::Wasm(_) => false,
                })
            })
            .filter_map(|r| Some((r.node.clone()?, r.id.clone())))
            .collect();
        for (node, id) in placed {
            self.tell(node, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::tempdir;
    use serde_json::json;

    fn load(dir: &std::path::Path) -> State {
        let store = Store::open(&dir.join("state.db")).unwrap();
        State::load(store, Keyring::open(dir).unwrap(), Policy::default()).unwrap()
    }

    fn credential_of(st: &State, replica: &str) -> Option<RegistryCredential> {
        let a = st.assignments("n1").unwrap();
        a.replicas.into_iter().find(|a| a.deployment == replica).and_then(|a| a.registry_auth)
    }

    /// A credential is sealed in the secrets table out of the users' sight,
    /// survives a reload, reaches only the assignments of images from its
    /// host, and its login and logout tell the node again.
    #[test]
    fn credentials_reach_only_the_assignments_that_pull_from_their_host() {
        let dir = tempdir::Dir::new();
        let mut st = load(&dir.0);
        let node: RegisterRequest = serde_json::from_value(json!({
            "name": "n1", "address": "http://127.0.0.1:1", "labels": {},
            "capacity": { "cpu": "4", "memory": "1Gi" }, "runtimes": ["wasm", "container"],
        }))
        .unwrap();
        st.register(node).unwrap();
        for (name, image) in [("private", "localhost:5000/app:1"), ("other", "registry.example.com/app:1")] {
            let req: ApplyRequest = serde_json::from_value(json!({
                "replicas": 1,
                "spec": { "workload": { "image": image }, "resources": { "cpu": "100m", "memory": "16Mi" } },
            }))
            .unwrap();
            st.apply(name, req).unwrap();
        }
        st.schedule().unwrap();
        assert_eq!(credential_of(&st, "private"), None);
        let index = st.assignments("n1").unwrap().index;

        let login = RegistryLogin { username: "alice".into(), password: "s3cret".into() };
        let r = st.registry_login("LocalHost:5000", login).unwrap();
        assert_eq!((r.host.as_str(), r.username.as_str()), ("localhost:5000", "alice"));
        let want =
            RegistryCredential { host: "localhost:5000".into(), username: "alice".into(), password: "s3cret".into() };
        assert_eq!(credential_of(&st, "private"), Some(want.clone()));
        assert_eq!(credential_of(&st, "other"), None, "another registry's image gets no credential");
        // The node hears of the replica again, with the credential.
        let changes = st.assignment_changes("n1", index).unwrap().expect("a delta");
        assert_eq!(changes.replicas.len(), 1);
        assert_eq!(changes.replicas[0].registry_auth, Some(want.clone()));

        // Not a user's secret: not listed, not deletable as one.
        assert!(st.secrets().is_empty());
        assert!(matches!(st.delete_secret("registry:localhost:5000"), Err(Error::NotFound(_))));
        drop(st);
        let mut st = load(&dir.0);
        assert_eq!(st.registries().unwrap().len(), 1);
        assert_eq!(credential_of(&st, "private"), Some(want));

        st.registry_logout("localhost:5000").unwrap();
        assert_eq!(credential_of(&st, "private"), None);
        assert!(st.registries().unwrap().is_empty());
        assert!(matches!(st.registry_logout("localhost:5000"), Err(Error::NotFound(_))));
        assert!(matches!(
            st.registry_login("localhost:5000", RegistryLogin { username: "a:b".into(), password: "x".into() }),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn hosts_are_those_image_references_start_with() {
        assert_eq!(validate_host("Registry.Example.com").unwrap(), "registry.example.com");
        assert_eq!(validate_host("localhost:5000").unwrap(), "localhost:5000");
        assert_eq!(validate_host("localhost").unwrap(), "localhost");
        assert_eq!(validate_host("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(validate_host("[::1]:5000").unwrap(), "[::1]:5000");
        for bad in ["", "https://r.example.com", "r.example.com/team", "myhost", "r.example.com:0", "-x.com", "a..b"] {
            assert!(validate_host(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(host_of_image("LocalHost:5000/app:1@sha256:00").as_deref(), Some("localhost:5000"));
        assert_eq!(host_of_image("busybox:1"), None);
        assert_eq!(host_of_image("team/app"), None);
    }
}
