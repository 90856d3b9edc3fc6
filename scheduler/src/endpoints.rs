//! The table of ready HTTP endpoints that every node's ingress routes by:
//! each deployment with the replicas that are `ready` on a node with an ingress.
//!
//! Nodes watch it with a blocking query (`GET /v1/endpoints?index=I&wait=MS`, join
//! token), as they watch their assignments. A replica leaves the table in the
//! same transaction that stops it or marks it lost, so a node hears it is gone no
//! later than the node running it hears to stop it; that node unroutes it at once
//! and lets requests in flight finish (see the node's `ingress` module).
//!
//! A node that asks with `delta=true` and holds a recent table gets only the
//! deployments whose rows changed since its index ([`Changes`]): with 100,000
//! deployments the whole table is 2.8 MB, and each activation changes it a few
//! times (#17). The whole table still answers a node this scheduler has not
//! answered one yet (its index may be another scheduler's), or one further
//! behind than the log reaches.

use crate::Core;
use crate::error::ApiError;
use crate::http::Query;
use crate::state::Mem;
use axum::extract::{Extension, State};
use axum::response::IntoResponse;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use skiff_api::{Endpoint, Endpoints, NodeState, ReplicaState};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Longest a node's query may block.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Most table changes kept (each names the few deployments it changed); a node
/// further behind gets the whole table.
const MAX_CHANGES: usize = 4096;

/// The recent changes of the endpoints table, as the assignments'
/// `NodeChanges` are of a node's set: which deployments each index changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Every change after this index is in `entries`.
    since: u64,
    /// (index, deployments whose rows it changed), in index order.
    entries: VecDeque<(u64, BTreeSet<String>)>,
    /// Nodes this scheduler answered a whole table: only their index is one
    /// of this scheduler's (a restarted one starts at the clock).
    whole_sent: HashSet<String>,
}

impl Changes {
    /// A log that starts at table index `index`.
    pub fn new(index: u64) -> Changes {
        Changes { since: index, ..Default::default() }
    }

    /// Index `index` changed the rows of `names`, or any row (`None`: whoever
    /// holds an older table gets the whole one).
    pub fn record(&mut self, index: u64, names: Option<BTreeSet<String>>) {
        let Some(names) = names else {
            self.entries.clear();
            self.since = index;
            // Whoever asks next holds an older table and gets the whole one;
            // forgetting who had one also covers a working set replaced
            // wholesale (a follower's copy, a leader anew on etcd), where an
            // index held may be another scheduler's.
            self.whole_sent.clear();
            return;
        };
        self.entries.push_back((index, names));
        if self.entries.len() > MAX_CHANGES
            && let Some((i, _)) = self.entries.pop_front()
        {
            self.since = self.since.max(i);
        }
    }

    /// The deployments changed after `index` up to `now` (the table's index)
    /// for node `node`; `None` when only the whole table can say it.
    pub fn since(&self, node: &str, index: u64, now: u64) -> Option<BTreeSet<String>> {
        if index < self.since || index > now || !self.whole_sent.contains(node) {
            return None;
        }
        let first = self.entries.partition_point(|(i, _)| *i <= index);
        Some(self.entries.range(first..).flat_map(|(_, names)| names.iter().cloned()).collect())
    }

    /// Node `node` got the whole table.
    pub fn whole_sent(&mut self, node: &str) {
        if !self.whole_sent.contains(node) {
            self.whole_sent.insert(node.to_string());
        }
    }
}

/// The changes of the table at `index` for deployments `names` (a delta): each
/// that exists with all its endpoints (and in `scale_to_zero` if it scales to
/// zero), the others in `removed`; the splits whole.
pub fn delta(mem: &Mem, index: u64, names: &BTreeSet<String>) -> Endpoints {
    let mut out = rest(mem, index);
    out.delta = true;
    for name in names {
        match mem.deployment_scales_to_zero(name) {
            Some(zero) => {
                out.deployments.insert(name.clone(), of(mem, name));
                if zero {
                    out.scale_to_zero.insert(name.clone());
                }
            }
            None => out.removed.push(name.clone()),
        }
    }
    out
}

/// The table as it is now, with `index`. Deployments that scale to zero are
/// named in `scale_to_zero` as well, so that every ingress holds a request for
/// one at zero (and activates it) rather than answer 503. The route writes
/// the same table with [`table_json`]; this is what tests hold it to.
#[cfg(test)]
pub fn table(mem: &Mem, index: u64) -> Endpoints {
    let mut out = rest(mem, index);
    for (name, _, zero) in mem.endpoint_rows() {
        out.deployments.insert(name.clone(), of(mem, name));
        if zero {
            out.scale_to_zero.insert(name.clone());
        }
    }
    out
}

/// The table's fields other than its two per-deployment ones (`deployments`,
/// `scale_to_zero`). A new field of [`Endpoints`] is filled here: the route
/// writes the per-deployment fields itself ([`table_json`]) and the rest from
/// this.
fn rest(mem: &Mem, index: u64) -> Endpoints {
    // A canary under way: every ingress splits its requests by weight (#18).
    let splits = mem.canaries().into_iter().filter_map(|c| Some((c.name.clone(), mem.split(&c.name)?))).collect();
    // Namespaces whose containers' calls every ingress keeps to their own (#20).
    let isolated = mem.isolated_namespaces().map(str::to_owned).collect();
    Endpoints { index, splits, isolated, ..Default::default() }
}

/// The table at `index` as JSON, written straight from the working set: no
/// copy of every name into maps under the state lock, and a deployment with
/// no live replica written without a lookup (100,000 deployments at zero, a
/// 2.9 MB table: 38 ms in a release build, against 77 ms to build [`table`]
/// and 13 ms more to serialize it). The same table as
/// [`table`] (a unit test holds them equal).
pub fn table_json(mem: &Mem, index: u64) -> Result<Vec<u8>, serde_json::Error> {
    struct Deployments<'a>(&'a Mem);
    impl Serialize for Deployments<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(None)?;
            for (name, live, _) in self.0.endpoint_rows() {
                if live {
                    map.serialize_entry(name, &of(self.0, name))?;
                } else {
                    map.serialize_entry(name, &[] as &[Endpoint])?;
                }
            }
            map.end()
        }
    }
    struct Zero<'a>(&'a Mem);
    impl Serialize for Zero<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.endpoint_rows().filter(|(_, _, zero)| *zero).map(|(name, _, _)| name))
        }
    }
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(b"{\"deployments\":");
    serde_json::to_writer(&mut out, &Deployments(mem))?;
    out.extend_from_slice(b",\"scale_to_zero\":");
    serde_json::to_writer(&mut out, &Zero(mem))?;
    if let serde_json::Value::Object(fields) = serde_json::to_value(rest(mem, index))? {
        for (k, v) in fields.iter().filter(|(k, _)| *k != "deployments" && *k != "scale_to_zero") {
            out.push(b',');
            serde_json::to_writer(&mut out, k)?;
            out.push(b':');
            serde_json::to_writer(&mut out, v)?;
        }
    }
    out.push(b'}');
    Ok(out)
}

/// The ready endpoints of deployment `name`, by replica id.
pub fn of(mem: &Mem, name: &str) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = mem
        .replicas_of(name)
        // A replica on its way off its node leaves the table before it stops.
        .filter(|r| r.state == ReplicaState::Ready && !mem.routed_out(&r.id))
        .filter_map(|r| {
            let node = mem.node(r.node.as_deref()?)?;
            if node.state == NodeState::Down {
                return None;
            }
            Some(Endpoint {
                replica: r.id.clone(),
                node: node.name.clone(),
                ingress: node.ingress.clone()?,
                revision: r.revision,
            })
        })
        .collect();
    eps.sort_by(|a, b| a.replica.cmp(&b.replica));
    eps
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WatchQuery {
    /// The index of the table the caller has: the answer waits while it is current.
    #[serde(default)]
    index: u64,
    /// Milliseconds to wait for a change (at most 60,000; 0: answer at once).
    #[serde(default)]
    wait: u64,
    /// Answer only what changed since `index` when the scheduler can (a node
    /// holding a recent table): see `Endpoints::delta`.
    #[serde(default)]
    delta: bool,
}

/// `GET /v1/endpoints`: answers at once when the table's index differs from the
/// caller's (also after a scheduler restart), else when it changes or `wait` ends.
#[utoipa::path(get, path = "/v1/endpoints", tag = "nodes", params(WatchQuery), responses((status = 200, description = "The ready endpoints", body = Endpoints), crate::http::Failures))]
pub(crate) async fn watch(
    State(core): State<Arc<Core>>,
    Extension(caller): Extension<crate::auth::Caller>,
    Query(q): Query<WatchQuery>,
) -> Result<axum::response::Response, ApiError> {
    // Who may read it (nodes, user tokens) is checked by `auth::check`.
    let mut rx = {
        let mut st = core.state();
        // A node asks with the index of the table its ingress applied: a
        // drain stops a replica once every ingress has dropped it.
        if let crate::auth::Caller::Node(node) = &caller {
            st.endpoints_held(node, q.index);
        }
        st.endpoints_watch()
    };
    if *rx.borrow_and_update() == q.index && q.wait > 0 {
        let wait = Duration::from_millis(q.wait).min(MAX_WAIT);
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
    let body = {
        let mut st = core.state();
        let index = *st.endpoints_watch().borrow();
        let node = match &caller {
            crate::auth::Caller::Node(node) if q.delta => Some(node.as_str()),
            _ => None,
        };
        match node.map(|n| (n, st.endpoint_changes(n, q.index))) {
            Some((_, Some(names))) => serde_json::to_vec(&delta(st.mem(), index, &names)),
            Some((n, None)) => {
                let n = n.to_string();
                st.endpoints_whole_sent(&n);
                table_json(st.mem(), index)
            }
            None => table_json(st.mem(), index),
        }
        .map_err(|e| ApiError::internal(format!("writing the endpoints table: {e}")))?
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Scoring;
    use crate::state::{Policy, State};
    use serde_json::json;

    /// Wire messages from JSON, so the test keeps compiling as fields are added.
    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid message")
    }

    fn ready(st: &mut State, node: &str, state: &str) {
        let replicas: Vec<serde_json::Value> = st
            .mem()
            .all_replicas()
            .filter(|r| r.node.as_deref() == Some(node))
            .map(|r| json!({"id": r.id, "generation": r.generation, "state": state, "restarts": 0}))
            .collect();
        let hb = from(json!({"capacity": {"cpu": 4000, "memory": 1u64 << 32}, "replicas": replicas}));
        st.heartbeat(node, hb).expect("heartbeat");
    }

    fn shown(st: &State) -> Vec<(String, Vec<String>)> {
        // What the route writes is the table, however it writes it.
        let written: Endpoints = serde_json::from_slice(&table_json(st.mem(), 0).expect("json")).expect("a table");
        assert_eq!(written, table(st.mem(), 0));
        table(st.mem(), 0)
            .deployments
            .into_iter()
            .map(|(d, eps)| (d, eps.into_iter().map(|e| format!("{}@{}", e.node, e.ingress)).collect()))
            .collect()
    }

    #[test]
    fn ready_replicas_with_an_ingress_are_listed_and_leave_as_they_stop() {
        let temp = crate::state::tests::tempdir::Dir::new();
        let dir = &temp.0;
        let store = crate::store::Store::open(&dir.join("state.db")).expect("store");
        let keys = crate::secrets::Keyring::open(dir).expect("keyring");
        let mut st = State::load(store, keys, Policy { scoring: Scoring::Spread, ..Policy::default() }).expect("load");
        let mut rx = st.endpoints_watch();
        let start = *rx.borrow_and_update();
        for (name, ingress) in [("n1", Some("http://10.0.0.1:8080")), ("n2", None)] {
            let req = from(json!({
                "name": name, "address": "http://127.0.0.1:1", "labels": {},
                "capacity": {"cpu": 4000, "memory": 1u64 << 32}, "runtimes": ["wasm"], "ingress": ingress,
            }));
            st.register(req).expect("register");
        }
        let spec = json!({"workload": {"wasm": "sha256:00"}, "resources": {"cpu": 100, "memory": 1 << 20}});
        st.apply("web", from(json!({"replicas": 4, "spec": spec}))).expect("apply");
        assert!(*rx.borrow_and_update() > start, "a new deployment changes the table");
        assert_eq!(shown(&st), [("web".to_string(), vec![])]);

        st.schedule().expect("schedule");
        ready(&mut st, "n1", "running");
        assert!(!rx.has_changed().unwrap_or(true), "running is not ready: the table stays");
        ready(&mut st, "n1", "ready");
        ready(&mut st, "n2", "ready");
        assert!(rx.has_changed().unwrap_or(false));
        // n2 has no ingress: its replicas cannot be reached, so they are not listed.
        let http = "n1@http://10.0.0.1:8080".to_string();
        assert_eq!(shown(&st), [("web".to_string(), vec![http.clone(), http])]);

        rx.borrow_and_update();
        st.scale("web", 0).expect("scale");
        assert!(rx.has_changed().unwrap_or(false), "stopping ready replicas changes the table");
        assert_eq!(shown(&st), [("web".to_string(), vec![])]);
        st.delete("web", false).expect("delete");
        assert!(shown(&st).is_empty());
    }

    /// A node holding a table catches up by deltas that name only the
    /// deployments whose rows changed, and lands on the whole table; one this
    /// scheduler never answered whole, or further behind than the log, gets
    /// the whole table (#17).
    #[test]
    fn deltas_name_only_changed_deployments_and_add_up_to_the_table() {
        let temp = crate::state::tests::tempdir::Dir::new();
        let dir = &temp.0;
        let store = crate::store::Store::open(&dir.join("state.db")).expect("store");
        let keys = crate::secrets::Keyring::open(dir).expect("keyring");
        let mut st = State::load(store, keys, Policy { scoring: Scoring::Spread, ..Policy::default() }).expect("load");
        let req = from(json!({
            "name": "n1", "address": "http://127.0.0.1:1", "labels": {},
            "capacity": {"cpu": 4000, "memory": 1u64 << 32}, "runtimes": ["wasm"], "ingress": "http://10.0.0.1:8080",
        }));
        st.register(req).expect("register");
        let spec = json!({"workload": {"wasm": "sha256:00"}, "resources": {"cpu": 100, "memory": 1 << 20}});
        for name in ["a", "b", "c"] {
            let zero = json!({"replicas": 0, "spec": spec, "scale_to_zero": {"idle_seconds": 60}});
            st.apply(name, from(zero)).expect("apply");
        }
        let now = |st: &State| *st.endpoints_watch().borrow();
        // The node's first ask: the whole table, and it is known from now on.
        assert_eq!(st.endpoint_changes("n1", 0), None, "an unknown index gets the whole table");
        let mut held = table(st.mem(), now(&st));
        st.endpoints_whole_sent("n1");
        assert_eq!(st.endpoint_changes("n1", held.index), Some(BTreeSet::new()), "current: nothing changed");
        assert_eq!(st.endpoint_changes("n2", held.index), None, "a node never answered whole gets it whole");
        assert_eq!(st.endpoint_changes("n1", held.index + 1), None, "an index from the future (another scheduler)");

        let catch_up = |st: &State, held: &mut Endpoints, expect: &[&str]| {
            let names = st.endpoint_changes("n1", held.index).expect("a delta");
            assert_eq!(names.iter().map(String::as_str).collect::<Vec<_>>(), expect);
            let d = delta(st.mem(), now(st), &names);
            // As the node reads it off the wire.
            let d: Endpoints = serde_json::from_slice(&serde_json::to_vec(&d).expect("json")).expect("a delta");
            assert!(d.delta);
            held.apply(d);
            assert_eq!(*held, table(st.mem(), now(st)));
        };
        st.scale("b", 2).expect("scale");
        st.schedule().expect("schedule");
        ready(&mut st, "n1", "running");
        ready(&mut st, "n1", "ready");
        catch_up(&st, &mut held, &["b"]);
        assert_eq!(held.deployments["b"].len(), 2);
        st.delete("c", false).expect("delete");
        st.apply("d", from(json!({"replicas": 0, "spec": spec}))).expect("apply");
        catch_up(&st, &mut held, &["c", "d"]);
        assert!(!held.deployments.contains_key("c") && !held.scale_to_zero.contains("c"));
        assert!(held.deployments.contains_key("d") && !held.scale_to_zero.contains("d"));
        st.scale("b", 0).expect("scale");
        catch_up(&st, &mut held, &["b"]);
        assert!(held.deployments["b"].is_empty() && held.scale_to_zero.contains("b"));

        // A node joining may change any row: who holds an older table gets it whole.
        let req = from(json!({
            "name": "n2", "address": "http://127.0.0.1:2", "labels": {},
            "capacity": {"cpu": 4000, "memory": 1u64 << 32}, "runtimes": ["wasm"], "ingress": "http://10.0.0.2:8080",
        }));
        st.register(req).expect("register");
        assert_eq!(st.endpoint_changes("n1", held.index), None);
    }

    /// `isolation: namespace` reaches every ingress in the table (#20): turning
    /// it on or off, or removing an isolated namespace, changes no row, and a
    /// node that is current hears it in a delta, not the whole table.
    #[test]
    fn isolated_namespaces_travel_in_the_table_and_its_deltas() {
        use skiff_api::namespace::{Isolation, NamespaceRequest};
        let temp = crate::state::tests::tempdir::Dir::new();
        let dir = &temp.0;
        let store = crate::store::Store::open(&dir.join("state.db")).expect("store");
        let keys = crate::secrets::Keyring::open(dir).expect("keyring");
        let mut st = State::load(store, keys, Policy { scoring: Scoring::Spread, ..Policy::default() }).expect("load");
        let now = |st: &State| *st.endpoints_watch().borrow();
        let mut held = table(st.mem(), now(&st));
        st.endpoints_whole_sent("n1");
        assert!(held.isolated.is_empty());
        let catch_up = |st: &State, held: &mut Endpoints| {
            let names = st.endpoint_changes("n1", held.index).expect("a delta, not the whole table");
            assert!(names.is_empty(), "no row changed: {names:?}");
            let d = delta(st.mem(), now(st), &names);
            let d: Endpoints = serde_json::from_slice(&serde_json::to_vec(&d).expect("json")).expect("a delta");
            held.apply(d);
            assert_eq!(*held, table(st.mem(), now(st)));
            let written: Endpoints =
                serde_json::from_slice(&table_json(st.mem(), now(st)).expect("json")).expect("a table");
            assert_eq!(written, *held, "the route's table says the same");
        };
        let isolation = |i| NamespaceRequest { quota: None, isolation: Some(i) };
        for ns in ["team-a", "team-b"] {
            st.put_namespace(ns, isolation(Isolation::Namespace)).expect("namespace");
        }
        catch_up(&st, &mut held);
        assert_eq!(held.isolated.iter().collect::<Vec<_>>(), ["team-a", "team-b"]);

        // A quota alone leaves the table as it is.
        let before = now(&st);
        st.put_namespace("team-a", NamespaceRequest { quota: Some(Default::default()), isolation: None })
            .expect("quota");
        assert_eq!(now(&st), before);

        st.put_namespace("team-a", isolation(Isolation::None)).expect("namespace");
        st.delete_namespace("team-b", false).expect("delete");
        catch_up(&st, &mut held);
        assert!(held.isolated.is_empty(), "{:?}", held.isolated);
    }
}
