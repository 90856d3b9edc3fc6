//! Namespaces and their quotas (#20). A namespaced object's key is `NAME` in
//! `default` and `NS/NAME` elsewhere (`skiff_api::namespace::key`); a namespace
//! itself is the meta entry `namespace/NAME` (migration 8), its quota and
//! isolation as JSON. A deployment's spec names its secrets and volumes by key
//! once applied (`keyed_spec`), so every lookup downstream (placement,
//! assignments, nodes) stays within its namespace; users see plain names
//! (`plain_spec`).

use super::*;
use skiff_api::namespace::{self as ns, DEFAULT, Isolation, Namespace, NamespaceRequest, Quota, Usage};
use skiff_api::quantity::{Cpu, Memory};

/// What the store keeps of a namespace.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Stored {
    pub quota: Quota,
    pub isolation: Isolation,
    pub created_ms: u64,
}

const META: &str = "namespace/";

/// How the status of a rollout the quota holds begins.
pub(super) const SURGE_HELD: &str = "cannot surge: ";

/// Most namespaces a cluster holds.
const MAX_NAMESPACES: usize = 10_000;

/// The namespace and plain name of `key`, a namespaced object's key as a
/// write names it, refused unless it is the one key `ns::key` gives: `NAME` in
/// `default`, `NS/NAME` elsewhere, NS a DNS label. Any other spelling
/// (`default/web`, `/web`, `a/b/c`) would store a second key that no listing
/// shows and no quota counts. The plain name is left to the caller's own check.
pub(super) fn canonical(key: &str) -> Result<(&str, &str), Error> {
    let (namespace, plain) = ns::split(key);
    let refuse = |why: String| Error::Invalid(format!("{key:?} is not a name: {why}"));
    if namespace == DEFAULT && key.contains('/') {
        return Err(refuse(format!("name it {plain:?} in namespace default")));
    }
    validate_name(namespace).map_err(|e| refuse(format!("namespace {e}")))?;
    // `a/b/c`, `team-a/`, and `job:web` (a job's replicas' owner, not a name).
    if plain.is_empty() || plain.contains('/') || ns::key(namespace, plain) != key {
        return Err(refuse("a name is a DNS label; its namespace goes in -n NS (/v1/namespaces/NS/...)".into()));
    }
    Ok((namespace, plain))
}

/// `spec` with its secrets and volumes named by their keys in namespace `ns`.
pub fn keyed_spec(namespace: &str, spec: &mut WorkloadSpec) {
    for s in &mut spec.secrets {
        s.secret = ns::key(namespace, &s.secret);
    }
    for v in &mut spec.volumes {
        v.name = ns::key(namespace, &v.name);
    }
}

/// `spec` with its secrets and volumes named as the user wrote them.
pub fn plain_spec(spec: &mut WorkloadSpec) {
    for s in &mut spec.secrets {
        s.secret = ns::plain(&s.secret);
    }
    for v in &mut spec.volumes {
        v.name = ns::plain(&v.name);
    }
}

/// What one more of something asks of a namespace's quota.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ask {
    pub cpu: u64,
    pub memory: u64,
    pub replicas: u64,
    pub deployments: u64,
    pub volumes: u64,
}

impl Mem {
    /// The stored objects (kind, key) whose key is not canonical: made before
    /// writes were held to [`canonical`] keys (`PUT /v1/deployments/default%2Fweb`
    /// stored `default/web`). No listing shows them and no quota counts them,
    /// so the server says so at start; a cluster-wide token deletes one by its key.
    pub(super) fn stray_keys(&self) -> Vec<(&'static str, String)> {
        let keys = [
            ("deployment", self.deployments.keys().collect::<Vec<_>>()),
            ("secret", self.secrets.keys().filter(|k| !registries::is_registry(k)).collect()),
            ("volume", self.volumes.keys().collect()),
            ("job", self.jobs.keys().collect()),
            ("cron", self.crons.keys().collect()),
        ];
        keys.into_iter()
            .flat_map(|(kind, keys)| keys.into_iter().filter(|k| canonical(k).is_err()).map(move |k| (kind, k.clone())))
            .collect()
    }

    pub(super) fn load_namespace(&mut self, key: &str, value: &str) {
        if let Some(name) = key.strip_prefix(META) {
            let stored: Stored = serde_json::from_str(value).unwrap_or_default();
            self.namespaces.insert(name.to_string(), stored);
        }
    }

    /// Whether namespace `name` exists (`default` always does).
    pub fn namespace_exists(&self, name: &str) -> bool {
        name == DEFAULT || self.namespaces.contains_key(name)
    }

    /// The keys of `map` in namespace `namespace`.
    pub(super) fn keys_in<'a, V>(
        map: &'a BTreeMap<String, V>,
        namespace: &str,
    ) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        if namespace == DEFAULT {
            Box::new(map.keys().filter(|k| !k.contains('/')))
        } else {
            let prefix = format!("{namespace}/");
            Box::new(map.range(prefix.clone()..).map(|(k, _)| k).take_while(move |k| k.starts_with(&prefix)))
        }
    }

    /// The deployment keys of namespace `namespace`.
    pub fn deployments_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a String> + 'a {
        Self::keys_in(&self.deployments, namespace)
    }

    /// What namespace `namespace` holds, counted as its quota is: desired
    /// replicas times their requests, and its jobs' runs under way.
    pub fn usage(&self, namespace: &str) -> Usage {
        let mut u = Usage::default();
        for k in Self::keys_in(&self.deployments, namespace) {
            let d = &self.deployments[k].d;
            let n = d.replicas as u64;
            u.deployments += 1;
            u.replicas += n;
            u.cpu.0 += d.spec.resources.cpu.0 * n;
            u.memory.0 += d.spec.resources.memory.0 * n;
        }
        let (cpu, memory, runs) = self.runs_usage(namespace);
        u.cpu.0 += cpu;
        u.memory.0 += memory;
        u.replicas += runs;
        u.volumes = Self::keys_in(&self.volumes, namespace).filter(|k| !self.purging.contains(*k)).count() as u64;
        u
    }

    /// The quota of namespace `namespace` (none when unset).
    pub fn quota(&self, namespace: &str) -> Quota {
        self.namespaces.get(namespace).map(|s| s.quota).unwrap_or_default()
    }

    /// Refuses `ask` when it would take namespace `namespace` past its quota,
    /// in the one line a user reads: `namespace team-a: memory quota 8Gi,
    /// 7.5Gi in use, this asks 1Gi more`.
    pub fn check_quota(&self, namespace: &str, ask: Ask) -> Result<(), String> {
        let q = self.quota(namespace);
        if q.is_empty() {
            return Ok(());
        }
        let u = self.usage(namespace);
        let over = |limit: Option<u64>, used: u64, more: u64| limit.filter(|l| more > 0 && used + more > *l);
        let line = |what: &str, limit: String, used: String, more: String| {
            format!("namespace {namespace}: {what} quota {limit}, {used} in use, this asks {more} more")
        };
        if let Some(l) = over(q.cpu.map(|c| c.0), u.cpu.0, ask.cpu) {
            return Err(line("cpu", Cpu(l).to_string(), u.cpu.to_string(), Cpu(ask.cpu).to_string()));
        }
        if let Some(l) = over(q.memory.map(|m| m.0), u.memory.0, ask.memory) {
            return Err(line("memory", Memory(l).to_string(), u.memory.to_string(), Memory(ask.memory).to_string()));
        }
        for (what, limit, used, more) in [
            ("replicas", q.replicas, u.replicas, ask.replicas),
            ("deployments", q.deployments, u.deployments, ask.deployments),
            ("volumes", q.volumes, u.volumes, ask.volumes),
        ] {
            if let Some(l) = over(limit, used, more) {
                return Err(line(what, l.to_string(), used.to_string(), more.to_string()));
            }
        }
        Ok(())
    }

    /// Most replicas deployment `key` may have within its namespace's quota
    /// (`u32::MAX` when none holds it back).
    pub fn quota_room(&self, key: &str) -> u32 {
        let namespace = ns::of(key);
        let q = self.quota(namespace);
        let Some(e) = self.deployments.get(key) else { return u32::MAX };
        if q.is_empty() {
            return u32::MAX;
        }
        let u = self.usage(namespace);
        let d = &e.d;
        let mine = d.replicas as u64;
        let mut room = u64::MAX;
        let mut limit = |limit: Option<u64>, used: u64, each: u64| {
            if let Some(l) = limit
                && each > 0
            {
                let others = used.saturating_sub(mine * each);
                room = room.min(l.saturating_sub(others) / each);
            }
        };
        limit(q.replicas, u.replicas, 1);
        limit(q.cpu.map(|c| c.0), u.cpu.0, d.spec.resources.cpu.0);
        limit(q.memory.map(|m| m.0), u.memory.0, d.spec.resources.memory.0);
        room.min(u32::MAX as u64) as u32
    }

    /// Bounds a rollout's surge by what its namespace's quota leaves (#20): the
    /// surge replicas are asks beyond the desired count the quota counts.
    /// Returns why when that leaves no surge and `max_unavailable` is 0, so the
    /// rollout cannot move (with `max_unavailable` ≥ 1 it goes on without surge).
    pub(super) fn quota_surge(&self, key: &str, desired: usize, strategy: &mut UpdateStrategy) -> Option<String> {
        if strategy.max_surge == 0 {
            return None;
        }
        let room = self.quota_room(key);
        if room == u32::MAX {
            return None;
        }
        let headroom = (room as usize).saturating_sub(desired) as u32;
        if headroom >= strategy.max_surge {
            return None;
        }
        let e = self.deployments.get(key)?;
        let ask = replicas_ask(&e.d.spec, e.d.replicas, e.d.replicas + strategy.max_surge - headroom);
        let line = self.check_quota(ns::of(key), ask).err().unwrap_or_else(|| "its quota is full".into());
        strategy.max_surge = headroom;
        (headroom == 0 && strategy.max_unavailable == 0)
            .then(|| format!("{SURGE_HELD}{line}; with max_unavailable: 1 it rolls out without surge"))
    }

    /// Whether namespace `name` has `isolation: namespace`.
    pub(super) fn isolated(&self, name: &str) -> bool {
        self.namespaces.get(name).is_some_and(|s| s.isolation == Isolation::Namespace)
    }

    /// The namespaces with `isolation: namespace`, for the endpoints table
    /// (every ingress holds their containers' calls to their own namespace).
    pub fn isolated_namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces.iter().filter(|(_, s)| s.isolation == Isolation::Namespace).map(|(n, _)| n.as_str())
    }

    fn namespace_view(&self, name: &str) -> Namespace {
        let s = self.namespaces.get(name).cloned().unwrap_or_default();
        Namespace {
            name: name.to_string(),
            quota: s.quota,
            isolation: s.isolation,
            usage: self.usage(name),
            created_ms: s.created_ms,
        }
    }
}

/// A replica count's ask of the quota: `from` to `to` replicas of `spec`.
pub fn replicas_ask(spec: &WorkloadSpec, from: u32, to: u32) -> Ask {
    let more = to.saturating_sub(from) as u64;
    Ask { cpu: spec.resources.cpu.0 * more, memory: spec.resources.memory.0 * more, replicas: more, ..Ask::default() }
}

impl State {
    /// Every namespace, with its use.
    pub fn namespaces(&self) -> Vec<Namespace> {
        let mut names: Vec<&str> = self.mem.namespaces.keys().map(String::as_str).collect();
        if !names.contains(&DEFAULT) {
            names.insert(0, DEFAULT);
        }
        names.into_iter().map(|n| self.mem.namespace_view(n)).collect()
    }

    /// Namespace `name`, with its use.
    pub fn namespace(&self, name: &str) -> Result<Namespace, Error> {
        if !self.mem.namespace_exists(name) {
            return Err(not_found_namespace(name));
        }
        Ok(self.mem.namespace_view(name))
    }

    /// Creates namespace `name`, or sets its quota and isolation. Returns it and
    /// whether it was made.
    pub fn put_namespace(&mut self, name: &str, req: NamespaceRequest) -> Result<(Namespace, bool), Error> {
        validate_name(name).map_err(|e| Error::Invalid(format!("namespace {e}")))?;
        let existing = self.mem.namespaces.get(name).cloned();
        let created = existing.is_none() && name != DEFAULT;
        if created && self.mem.namespaces.len() >= MAX_NAMESPACES {
            return Err(Error::TooMany { kind: "namespaces", max: MAX_NAMESPACES });
        }
        let now = now_ms();
        let mut s = existing.unwrap_or(Stored { created_ms: now, ..Stored::default() });
        if let Some(q) = req.quota {
            s.quota = q;
        }
        if let Some(i) = req.isolation {
            s.isolation = i;
        }
        let body = serde_json::to_string(&s).map_err(|e| Error::Internal(e.to_string()))?;
        let isolation_changed = self.mem.isolated(name) != (s.isolation == Isolation::Namespace);
        let quota_changed = self.mem.quota(name) != s.quota;
        self.transact(|mem, tx| {
            tx.set_meta(&format!("{META}{name}"), &body)?;
            let verb = if created { "Created" } else { "Updated" };
            tx.event(now, &format!("namespace/{name}"), verb, &format!("quota {}", describe_quota(&s.quota)))?;
            mem.namespaces.insert(name.to_string(), s);
            mem.fx.mutated = true;
            if quota_changed {
                // Its rollouts surge as far as the new quota lets them at the
                // next controller pass (the caller wakes it), not at the next
                // full one; its jobs' runs waiting for quota are looked at
                // every pass anyway.
                let rolling: Vec<String> = Mem::keys_in(&mem.deployments, name)
                    .filter(|k| mem.deployments[*k].by_revision.keys().any(|r| *r != mem.deployments[*k].d.revision))
                    .cloned()
                    .collect();
                mem.reconcile_due.extend(rolling);
            }
            Ok(())
        })?;
        if isolation_changed {
            // The table's `isolated` changed (no row did): every ingress hears
            // it with its next delta and holds running containers to it at once.
            self.endpoints_changed(Some(BTreeSet::new()));
        }
        Ok((self.mem.namespace_view(name), created))
    }

    /// What namespace `name` holds, as `2 deployments, 1 secret`; empty when nothing.
    fn holdings(&self, name: &str) -> String {
        let count = |n: usize, what: &str| (n > 0).then(|| format!("{n} {what}{}", if n == 1 { "" } else { "s" }));
        let secrets = Mem::keys_in(&self.mem.secrets, name).filter(|k| !registries::is_registry(k)).count();
        [
            count(self.mem.deployments_in(name).count(), "deployment"),
            count(Mem::keys_in(&self.mem.jobs, name).count(), "job"),
            count(Mem::keys_in(&self.mem.crons, name).count(), "cron"),
            count(secrets, "secret"),
            count(Mem::keys_in(&self.mem.volumes, name).count(), "volume"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    }

    /// Deletes namespace `name`: refused while it holds objects, unless
    /// `cascade` (then its crons, jobs, deployments, secrets and volumes go first).
    pub fn delete_namespace(&mut self, name: &str, cascade: bool) -> Result<(), Error> {
        if name == DEFAULT {
            return Err(Error::Invalid("namespace default cannot be removed".into()));
        }
        if !self.mem.namespaces.contains_key(name) {
            return Err(not_found_namespace(name));
        }
        let held = self.holdings(name);
        if !held.is_empty() && !cascade {
            return Err(Error::Conflict(format!("namespace {name} holds {held}; delete them first or pass --cascade")));
        }
        if cascade {
            let crons: Vec<String> = Mem::keys_in(&self.mem.crons, name).cloned().collect();
            for c in crons {
                self.delete_cron(&c)?;
            }
            let jobs: Vec<String> = Mem::keys_in(&self.mem.jobs, name).cloned().collect();
            for j in jobs {
                self.delete_job(&j)?;
            }
            let deployments: Vec<String> = self.mem.deployments_in(name).cloned().collect();
            for d in deployments {
                self.delete(&d, true)?;
            }
            let secrets: Vec<String> = Mem::keys_in(&self.mem.secrets, name).cloned().collect();
            for s in secrets {
                self.delete_secret(&s)?;
            }
            let volumes: Vec<String> =
                Mem::keys_in(&self.mem.volumes, name).filter(|k| !self.mem.purging.contains(*k)).cloned().collect();
            for v in volumes {
                self.delete_volume(&v)?;
            }
        }
        let now = now_ms();
        let was_isolated = self.mem.isolated(name);
        self.transact(|mem, tx| {
            tx.delete_meta(&format!("{META}{name}"))?;
            tx.event(now, &format!("namespace/{name}"), "Deleted", "namespace deleted")?;
            mem.namespaces.remove(name);
            mem.fx.mutated = true;
            Ok(())
        })?;
        if was_isolated {
            self.endpoints_changed(Some(BTreeSet::new()));
        }
        Ok(())
    }
}

fn not_found_namespace(name: &str) -> Error {
    Error::NotFound(format!("namespace {name:?} not found; `skiff namespace ls` lists them"))
}

/// A quota as a user writes it: `cpu 4, memory 8Gi, replicas 100`, or `none`.
pub fn describe_quota(q: &Quota) -> String {
    let mut parts = Vec::new();
    if let Some(c) = q.cpu {
        parts.push(format!("cpu {c}"));
    }
    if let Some(m) = q.memory {
        parts.push(format!("memory {m}"));
    }
    for (what, v) in [("replicas", q.replicas), ("deployments", q.deployments), ("volumes", q.volumes)] {
        if let Some(v) = v {
            parts.push(format!("{what} {v}"));
        }
    }
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::super::tests::tempdir::Dir;
    use super::*;

    fn open(dir: &Dir) -> State {
        let store = Store::open(&dir.0.join("state.db")).expect("the store");
        State::load(store, Keyring::open(&dir.0).expect("the keyring"), Policy::default()).expect("the state")
    }

    fn apply(memory_mi: u64, replicas: u32, secret: Option<&str>) -> ApplyRequest {
        let mut spec: WorkloadSpec = serde_json::from_value(serde_json::json!({
            "workload": {"wasm": "sha256:00"},
            "resources": {"cpu": "100m", "memory": format!("{memory_mi}Mi")},
        }))
        .expect("a spec");
        if let Some(s) = secret {
            spec.secrets =
                vec![serde_json::from_value(serde_json::json!({"secret": s, "env": {"P": "k"}})).expect("a ref")];
        }
        ApplyRequest { replicas: Some(replicas), spec, strategy: None, autoscale: None, scale_to_zero: None }
    }

    #[test]
    fn a_store_from_before_namespaces_is_all_in_default() {
        let dir = Dir::new();
        {
            let mut st = open(&dir);
            let data = [("k".to_string(), "v".to_string())].into();
            st.put_secret("db", SecretRequest { data, overwrite: false }).expect("a secret");
            st.apply("web", apply(32, 2, Some("db"))).expect("an apply");
        }
        // What a store of migrations 1..7 holds: the same rows, no namespace row.
        {
            let conn = rusqlite::Connection::open(dir.0.join("state.db")).expect("sqlite");
            conn.execute("DELETE FROM meta WHERE key = 'namespace/default'", []).expect("delete");
            conn.pragma_update(None, "user_version", 7).expect("user_version");
            let rows: i64 = conn
                .query_row("SELECT COUNT(*) FROM meta WHERE key LIKE 'namespace/%'", [], |r| r.get(0))
                .expect("count");
            assert_eq!(rows, 0);
        }
        let st = open(&dir);
        let conn = rusqlite::Connection::open(dir.0.join("state.db")).expect("sqlite");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
        assert_eq!(version, 8, "migration 8 ran");
        let value: String =
            conn.query_row("SELECT value FROM meta WHERE key = 'namespace/default'", [], |r| r.get(0)).expect("row");
        assert_eq!(value, "{}");
        assert_eq!(st.namespaces().iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["default"]);
        let mem = st.mem();
        assert_eq!(mem.deployments_in(DEFAULT).collect::<Vec<_>>(), ["web"]);
        let d = mem.deployment("web").expect("web");
        assert_eq!(d.spec.secrets[0].secret, "db", "a default spec names its secrets as before");
        assert_eq!(st.namespace(DEFAULT).expect("default").usage.replicas, 2);
        assert_eq!(st.secrets().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["db"]);
    }

    #[test]
    fn a_key_that_is_not_canonical_is_refused_and_stores_nothing() {
        let dir = Dir::new();
        let mut st = open(&dir);
        st.put_namespace("team-a", NamespaceRequest::default()).expect("a namespace");
        let mut with_volume = apply(32, 1, None);
        with_volume.spec.volumes =
            vec![serde_json::from_value(serde_json::json!({"name": "data", "path": "/data"})).expect("a mount")];
        let data: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        for (key, why) in [
            ("default/web", "\"default/web\" is not a name: name it \"web\" in namespace default"),
            ("/web", "\"/web\" is not a name: namespace name \"\" must be 1 to 63 characters long"),
            ("team-a/", "\"team-a/\" is not a name: a name is a DNS label"),
            ("team-a/x/web", "\"team-a/x/web\" is not a name: a name is a DNS label"),
            ("Team_A/web", "\"Team_A/web\" is not a name: namespace name \"Team_A\" must use only"),
            ("job:web", "\"job:web\" is not a name: a name is a DNS label"),
        ] {
            let e = st.apply(key, with_volume.clone()).expect_err(key);
            assert!(matches!(e, Error::Invalid(_)) && e.to_string().starts_with(why), "{key}: {e}");
            let secret = SecretRequest { data: data.clone(), overwrite: false };
            let e = st.put_secret(key, secret).expect_err(key);
            assert!(matches!(e, Error::Invalid(_)) && e.to_string().starts_with(why), "{key}: {e}");
        }
        let mem = st.mem();
        assert!(mem.deployments.is_empty(), "{:?}", mem.deployments.keys().collect::<Vec<_>>());
        assert!(mem.volumes.is_empty(), "{:?}", mem.volumes.keys().collect::<Vec<_>>());
        assert!(st.secrets().is_empty(), "{:?}", st.secrets());
        assert_eq!(st.namespace(DEFAULT).expect("default").usage, Usage::default());
        // The canonical keys of the same objects are taken.
        st.apply("web", with_volume.clone()).expect("default's web");
        st.apply("team-a/web", with_volume).expect("team-a's web");
        st.put_secret("team-a/db", SecretRequest { data, overwrite: false }).expect("team-a's db");
        assert_eq!(st.mem().volumes.keys().collect::<Vec<_>>(), ["data", "team-a/data"]);
        assert_eq!(st.mem().stray_keys(), []);
        // One stored before keys were checked is found (the server warns at start).
        let stray = Volume { name: "default/old".into(), node: None, size: None, deployments: vec![], created_ms: 0 };
        st.mem.volumes.insert(stray.name.clone(), stray);
        assert_eq!(st.mem().stray_keys(), [("volume", "default/old".to_string())]);
    }

    #[test]
    fn quotas_refuse_with_one_line_and_hold_the_autoscaler() {
        let dir = Dir::new();
        let mut st = open(&dir);
        let quota = Quota { memory: Some(Memory(256 << 20)), replicas: Some(4), ..Quota::default() };
        st.put_namespace("team-a", NamespaceRequest { quota: Some(quota), isolation: None }).expect("a namespace");
        // A namespace that does not exist takes nothing.
        let e = st.apply("team-b/web", apply(32, 1, None)).expect_err("no such namespace");
        assert!(e.to_string().contains("namespace \"team-b\" not found"), "{e}");
        // Secrets and volumes are the namespace's own.
        let data = [("k".to_string(), "v".to_string())].into();
        st.put_secret("team-a/db", SecretRequest { data, overwrite: false }).expect("a secret");
        st.apply("team-a/web", apply(32, 2, Some("db"))).expect("an apply");
        assert_eq!(st.mem().deployment("team-a/web").expect("web").spec.secrets[0].secret, "team-a/db");
        let e = st.apply("team-a/big", apply(200, 1, None)).expect_err("over memory");
        assert_eq!(e.to_string(), "namespace team-a: memory quota 256Mi, 64Mi in use, this asks 200Mi more");
        let e = st.scale("team-a/web", 5).expect_err("over replicas");
        assert_eq!(e.to_string(), "namespace team-a: replicas quota 4, 2 in use, this asks 3 more");
        // Within it: fine, and an update that asks less is never refused.
        st.scale("team-a/web", 4).expect("at the quota");
        st.apply("team-a/web", apply(16, 4, Some("db"))).expect("smaller");
        // The autoscaler: room for 4 replicas of 16Mi here (replicas quota).
        assert_eq!(st.mem().quota_room("team-a/web"), 4);
        let mut auto = apply(16, 2, Some("db"));
        auto.autoscale = Some(
            serde_json::from_value(serde_json::json!({"min": 1, "max": 10, "target_cpu_percent": 50}))
                .expect("autoscale"),
        );
        st.apply("team-a/web", auto).expect("autoscaled");
        st.autoscale("team-a/web", 8, "load").expect("held");
        assert_eq!(st.mem().deployment("team-a/web").expect("web").replicas, 4, "held at the quota");
        let events = st.store().events(Some("deployment/team-a/web"), 50).expect("events");
        let held = events
            .iter()
            .find(|e| e.reason == "QuotaHeld" && e.message.starts_with("autoscaler"))
            .expect("a QuotaHeld event");
        assert!(
            held.message.starts_with("autoscaler held at 4 replicas: namespace team-a: replicas quota 4,"),
            "{}",
            held.message
        );
        // rm refuses while it holds objects; with cascade it takes them.
        let e = st.delete_namespace("team-a", false).expect_err("holds objects");
        assert_eq!(e.to_string(), "namespace team-a holds 1 deployment, 1 secret; delete them first or pass --cascade");
        st.delete_namespace("team-a", true).expect("cascade");
        assert!(st.mem().deployment("team-a/web").is_none());
        assert!(st.namespace("team-a").is_err());
    }

    /// team-a/web at 2 running replicas, the quota of 2 replicas full, and
    /// revision 2 applied (max_surge 1, max_unavailable 0): the quota holds it.
    fn a_rollout_held_by_a_full_quota(st: &mut State) -> ApplyRequest {
        let node = serde_json::json!({"name": "a", "address": "http://127.0.0.1:1", "labels": {},
            "capacity": {"cpu": "4", "memory": "1Gi"}, "runtimes": ["wasm"], "ingress": null});
        st.register(serde_json::from_value(node).expect("a registration")).expect("registered");
        let quota = Quota { replicas: Some(2), ..Quota::default() };
        st.put_namespace("team-a", NamespaceRequest { quota: Some(quota), isolation: None }).expect("a namespace");
        st.apply("team-a/web", apply(32, 2, None)).expect("an apply");
        st.schedule().expect("placed");
        let running: Vec<ReplicaStatus> = st
            .mem()
            .replicas_on("a")
            .map(|r| {
                serde_json::from_value(serde_json::json!({"id": r.id, "generation": r.generation, "state": "running",
                    "restarts": 0, "reason": null, "exit_code": null, "cpu_seconds": 0.0, "memory_bytes": 0, "requests": 0}))
                .expect("a status")
            })
            .collect();
        assert_eq!(running.len(), 2);
        let capacity = Resources::new(4000, 1 << 30);
        st.heartbeat("a", Heartbeat { capacity, replicas: running, delta: false }).expect("a heartbeat");
        // A new revision with max_surge 1, max_unavailable 0 and the quota full.
        let mut next = apply(32, 2, None);
        next.spec.env.insert("V".into(), "2".into());
        st.apply("team-a/web", next.clone()).expect("a new revision");
        let d = st.mem().deployment("team-a/web").expect("web");
        assert_eq!(d.revision, 2);
        assert_eq!(
            d.rollout.message,
            "cannot surge: namespace team-a: replicas quota 2, 2 in use, this asks 1 more; with max_unavailable: 1 it rolls out without surge"
        );
        assert!(st.mem().replicas_of("team-a/web").all(|r| r.revision == 1), "nothing of revision 2 made");
        next
    }

    #[test]
    fn a_rollout_that_the_quota_keeps_from_surging_says_so() {
        let dir = Dir::new();
        let mut st = open(&dir);
        let mut next = a_rollout_held_by_a_full_quota(&mut st);
        // With max_unavailable 1 it goes on, one old replica at a time, no surge.
        next.strategy = Some(UpdateStrategy { max_unavailable: 1, ..UpdateStrategy::default() });
        st.apply("team-a/web", next).expect("the strategy");
        let d = st.mem().deployment("team-a/web").expect("web");
        assert!(!d.rollout.message.contains("cannot surge"), "{}", d.rollout.message);
        let live: Vec<u64> =
            st.mem().replicas_of("team-a/web").filter(|r| !r.state.is_terminal()).map(|r| r.revision).collect();
        assert!(live.contains(&2) && live.len() <= 2, "{live:?}");
    }

    #[test]
    fn raising_the_quota_moves_a_held_rollout_at_the_next_pass() {
        let dir = Dir::new();
        let mut st = open(&dir);
        a_rollout_held_by_a_full_quota(&mut st);
        // Nothing else due: a pass now leaves it held.
        st.reconcile_due().expect("a pass");
        let held = st.mem().deployment("team-a/web").expect("web").rollout.message;
        assert!(held.starts_with("cannot surge"), "{held}");
        let quota = Quota { replicas: Some(3), ..Quota::default() };
        st.put_namespace("team-a", NamespaceRequest { quota: Some(quota), isolation: None }).expect("raised");
        // The pass a wake runs (not the full one every 2 s).
        st.reconcile_due().expect("a pass");
        let d = st.mem().deployment("team-a/web").expect("web");
        assert!(!d.rollout.message.contains("cannot surge"), "{}", d.rollout.message);
        let revisions: Vec<u64> = st.mem().replicas_of("team-a/web").map(|r| r.revision).collect();
        assert!(revisions.contains(&2), "a surge replica of revision 2: {revisions:?}");
    }
}
