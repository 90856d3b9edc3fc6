//! etcd as the store of several servers (`--store etcd://h1:2379,h2:2379`).
//!
//! Every table of the SQLite schema becomes a key prefix under the store's own
//! prefix (`/skiff/` unless the URL gives a path): `nodes/<name>`,
//! `deployments/<name>`, `revisions/<deployment>/<revision>`, `replicas/<id>`,
//! `events/<id>` (and `events-by-object/<object>/<id>`), `secrets/<name>`,
//! `volumes/<name>`, `images/<name>#<tag>`, `tokens/<name>`,
//! `node-credentials/<node>`, `meta/<key>`, each holding JSON. A transaction of
//! the working set is one etcd transaction; it runs only if the election key
//! still has the revision this server created it with (the fence), so a deposed
//! leader can never write. `leader` is that election key, `servers/<name>` each
//! live server (both under the server's lease), `bootstrap` the cluster's CA,
//! tokens and secret keys, sealed with the join token (see [`Bootstrap`]).
//!
//! etcd-client is async; the store is called under the state lock from any
//! thread, so every call runs on this module's own small runtime and the caller
//! waits for it (as it waits for SQLite's disk), at most [`TIMEOUT`].

use crate::secrets::Sealed;
use crate::store::{Backend, Loaded, Op, StoreError};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};
use skiff_api::{Deployment, DeploymentStatus, Event, Node, Replica, Secret, Volume, WorkloadSpec};
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Longest a store call waits for etcd: a cluster without a quorum does not
/// answer writes, and the API says so rather than hanging.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Keys fetched per range request when loading (each answer stays well under
/// gRPC's 4 MiB message limit).
const PAGE: i64 = 1_000;

type Result<T> = std::result::Result<T, StoreError>;
/// A key (without the store's prefix) and its value.
pub(crate) type Kv = (String, Vec<u8>);

/// Where the store is: `etcd://host:port,host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `host:port` of each member.
    pub hosts: Vec<String>,
    /// The key prefix, ending in `/`.
    pub prefix: String,
}

impl std::str::FromStr for Endpoints {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Endpoints> {
        let rest = s
            .strip_prefix("etcd://")
            .ok_or_else(|| anyhow::anyhow!("store {s:?} is not an etcd URL; write etcd://host:2379[,host:2379...]"))?;
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hosts: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect();
        if hosts.is_empty() {
            anyhow::bail!("store {s:?} names no etcd member; write etcd://host:2379[,host:2379...]");
        }
        for h in &hosts {
            if !h.contains(':') {
                anyhow::bail!("etcd member {h:?} has no port; write host:2379");
            }
        }
        let path = path.trim_matches('/');
        let prefix = if path.is_empty() { "/skiff/".to_string() } else { format!("/{path}/") };
        Ok(Endpoints { hosts, prefix })
    }
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}{}", self.hosts.join(","), self.prefix.trim_end_matches('/'))
    }
}

/// The runtime every etcd call runs on (never dropped, so usable from any thread).
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .expect("starting the etcd client's runtime")
    })
}

fn etcd_err(e: etcd_client::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("too many operations in txn request") {
        return StoreError::Etcd(format!(
            "{text} (start etcd with --max-txn-ops 65536: one placement batch writes up to 2,048 replicas)"
        ));
    }
    if text.contains("request is too large") {
        return StoreError::Etcd(format!("{text} (start etcd with --max-request-bytes 33554432)"));
    }
    // A member down, no majority, no leader: say so in words, not gRPC's.
    let why = [
        ("Connection refused", "connection refused"),
        ("no leader", "etcd has no leader"),
        ("tcp connect error", "cannot connect"),
        ("unavailable", "unavailable"),
    ]
    .iter()
    .find(|(needle, _)| text.to_lowercase().contains(&needle.to_lowercase()))
    .map(|(_, said)| *said);
    if ["deadline", "timeout", "timed out"].iter().any(|t| text.to_lowercase().contains(t)) {
        return timed_out();
    }
    match why {
        Some(why) => {
            StoreError::Etcd(format!("cannot reach a majority of etcd's members ({why}); retry when they are up"))
        }
        None => StoreError::Etcd(text),
    }
}

/// A call etcd did not answer in time: it may still be applied (etcd commits a
/// proposal it holds once its majority is back), so the error says so.
fn timed_out() -> StoreError {
    StoreError::Etcd(format!(
        "etcd did not answer within {} s (is a majority of its members up?); the change is not confirmed and may \
         still be applied when etcd recovers: check before retrying",
        TIMEOUT.as_secs()
    ))
}

/// Whether `e` says the call never reached a member (refused, unavailable):
/// then it was not applied, and trying again (the client moves to another
/// member) is safe.
fn unsent(e: &StoreError) -> bool {
    matches!(e, StoreError::Etcd(m) if m.starts_with(UNREACHABLE))
}

/// The start of the message of a call that never reached a member.
const UNREACHABLE: &str = "cannot reach a majority of etcd's members";

/// Runs `call` again (up to three times in all, 100 ms apart) while it did not
/// reach a member: a member just killed costs a retry, not an error.
fn retrying<T>(mut call: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match call() {
            Err(e) if unsent(&e) && tries < 2 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// Runs `fut` in the background on the etcd runtime.
pub(crate) fn rt_spawn(fut: impl Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
    rt().spawn(fut)
}

/// `fut`, given at most [`TIMEOUT`], its error in words.
async fn bounded<T>(fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>) -> Result<T> {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(r) => r.map_err(etcd_err),
        Err(_) => Err(timed_out()),
    }
}

/// Runs `fut` on the etcd runtime and waits for it, from any thread (async
/// workers included: the wait blocks the thread, as a SQLite write does).
pub(crate) fn block<T: Send + 'static>(
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt().spawn(async move {
        let _ = tx.send(bounded(fut).await);
    });
    rx.recv().unwrap_or_else(|_| Err(StoreError::Etcd("the etcd client stopped".into())))
}

/// Runs `fut` on the etcd runtime, from async code.
pub(crate) async fn run<T: Send + 'static>(
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T> {
    rt().spawn(bounded(fut)).await.unwrap_or_else(|e| Err(StoreError::Etcd(format!("the etcd client stopped: {e}"))))
}

/// etcd's revision now (the header of a count-only read of `key`): every write
/// committed before the call is at or below it.
pub(crate) async fn revision(client: &Client, key: &str) -> Result<i64> {
    let (mut c, k) = (client.clone(), key.to_string());
    let resp = run(async move { c.get(k, Some(GetOptions::new().with_count_only())).await }).await?;
    Ok(resp.header().map_or(0, |h| h.revision()))
}

/// Connects to the members of `ep` (the client balances over them and moves on
/// when one fails).
pub async fn connect(ep: &Endpoints) -> Result<Client> {
    let hosts = ep.hosts.clone();
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true);
    run(async move { Client::connect(hosts, Some(opts)).await }).await
}

/// The end of the range of keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The election key's revision this server won it with: every write compares it.
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: String,
    pub revision: i64,
}

/// The etcd backend of [`crate::store::Store`].
pub struct Etcd {
    client: Client,
    prefix: String,
    /// Writes happen only while the election key is still ours; `None` writes
    /// unconditionally (`skiff server migrate` into an empty store).
    fence: Option<Fence>,
    /// A follower's reader: every write is refused ([`Etcd::reader`]).
    read_only: bool,
    /// The last event id used (only the leader writes events).
    last_event: AtomicU64,
}

#[derive(Serialize, Deserialize)]
struct StoredDeployment {
    replicas: u32,
    revision: u64,
    created_ms: u64,
    updated_ms: u64,
    extra: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct StoredRevision {
    spec: serde_json::Value,
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSecret {
    keys: serde_json::Value,
    key_id: u32,
    nonce: String,
    ciphertext: String,
    created_ms: u64,
    updated_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredVolume {
    node: Option<String>,
    size: Option<u64>,
    created_ms: u64,
    purge: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    hash: String,
    role: String,
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredCredential {
    hash: String,
    created_ms: u64,
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { what, source })
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A JSON text we wrote ourselves, as a value to nest.
fn raw(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

impl Etcd {
    /// The backend on `client` under `prefix`, writing only while `fence` holds.
    pub fn open(client: Client, prefix: &str, fence: Option<Fence>) -> Result<Etcd> {
        let mut etcd =
            Etcd { client, prefix: prefix.to_string(), fence, read_only: false, last_event: AtomicU64::new(0) };
        let last = etcd.range_desc("events/", 1)?;
        let id = last.first().and_then(|(k, _)| k.rsplit('/').next()?.parse::<u64>().ok()).unwrap_or(0);
        etcd.last_event = AtomicU64::new(id);
        Ok(etcd)
    }

    /// The backend of a server that is not the leader: it reads, and refuses
    /// every write with [`StoreError::NotLeader`].
    pub fn reader(client: Client, prefix: &str) -> Etcd {
        Etcd { client, prefix: prefix.to_string(), fence: None, read_only: true, last_event: AtomicU64::new(0) }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Every (key without the prefix, value) under `table`, in key order.
    fn range(&self, table: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.range_at(table, 0).map(|(kvs, _)| kvs)
    }

    /// Every (key without the prefix, value) under `table` at store `revision`
    /// (0: the latest), in key order, and the revision read.
    pub(crate) fn range_at(&self, table: &str, revision: i64) -> Result<(Vec<Kv>, i64)> {
        let start = self.key(table).into_bytes();
        let end = prefix_end(&start);
        let mut out = Vec::new();
        let mut from = start;
        let mut revision = revision;
        loop {
            let resp = retrying(|| {
                let (mut client, f, e) = (self.client.clone(), from.clone(), end.clone());
                let opts = GetOptions::new()
                    .with_range(e)
                    .with_limit(PAGE)
                    .with_sort(SortTarget::Key, SortOrder::Ascend)
                    .with_revision(revision);
                block(async move { client.get(f, Some(opts)).await })
            })?;
            // Later pages read at the first page's revision: one consistent view.
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let kvs = resp.kvs();
            for kv in kvs {
                let key = String::from_utf8_lossy(kv.key());
                out.push((key[self.prefix.len()..].to_string(), kv.value().to_vec()));
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// The last `limit` (key, value) under `table`, newest first.
    fn range_desc(&self, table: &str, limit: i64) -> Result<Vec<(String, Vec<u8>)>> {
        let start = self.key(table).into_bytes();
        let client = self.client.clone();
        let opts = GetOptions::new()
            .with_range(prefix_end(&start))
            .with_limit(limit)
            .with_sort(SortTarget::Key, SortOrder::Descend);
        let resp = retrying(|| {
            let (mut client, start, opts) = (client.clone(), start.clone(), opts.clone());
            block(async move { client.get(start, Some(opts)).await })
        })?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| (String::from_utf8_lossy(kv.key())[self.prefix.len()..].to_string(), kv.value().to_vec()))
            .collect())
    }

    /// Runs `ops` in one transaction, behind the fence.
    fn txn(&self, ops: Vec<TxnOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.read_only {
            return Err(StoreError::NotLeader);
        }
        let mut txn = Txn::new();
        if let Some(f) = &self.fence {
            txn = txn.when([Compare::create_revision(f.key.clone(), CompareOp::Equal, f.revision)]);
        }
        let txn = txn.and_then(ops);
        let client = self.client.clone();
        let resp = retrying(|| {
            let (mut client, txn) = (client.clone(), txn.clone());
            block(async move { client.txn(txn).await })
        })?;
        if resp.succeeded() { Ok(()) } else { Err(StoreError::NotLeader) }
    }

    fn event_keys(&self, id: u64, object: &str) -> (String, String) {
        (self.key(&format!("events/{id:020}")), self.key(&format!("events-by-object/{object}/{id:020}")))
    }

    /// The etcd writes of one op.
    fn ops(&self, op: Op, out: &mut Vec<Write>) {
        match op {
            Op::PutNode { name, body } => out.push(Write::Put(self.key(&format!("nodes/{name}")), body.into_bytes())),
            Op::DeleteNode(name) => out.push(Write::Delete(self.key(&format!("nodes/{name}")))),
            Op::PutDeployment { name, replicas, revision, created_ms, updated_ms, extra } => {
                let d = StoredDeployment { replicas, revision, created_ms, updated_ms, extra: raw(&extra) };
                out.push(Write::Put(self.key(&format!("deployments/{name}")), json(&d)))
            }
            Op::PutRevision { deployment, revision, spec, created_ms } => {
                let r = StoredRevision { spec: raw(&spec), created_ms };
                out.push(Write::Put(self.key(&format!("revisions/{}/{revision:020}", sep(&deployment))), json(&r)))
            }
            Op::DeleteDeployment(name) => {
                out.push(Write::Delete(self.key(&format!("deployments/{name}"))));
                out.push(Write::DeletePrefix(self.key(&format!("revisions/{}/", sep(&name)))));
            }
            Op::PutReplica { id, body, .. } => {
                out.push(Write::Put(self.key(&format!("replicas/{id}")), body.into_bytes()))
            }
            Op::DeleteReplica(id) => out.push(Write::Delete(self.key(&format!("replicas/{id}")))),
            Op::Event { time_ms, object, reason, message } => {
                let id = self.last_event.fetch_add(1, Ordering::SeqCst) + 1;
                let (k1, k2) = self.event_keys(id, &object);
                let e = json(&Event { id, time_ms, object, reason, message });
                out.push(Write::Put(k1, e.clone()));
                out.push(Write::Put(k2, e));
            }
            Op::PutSecret { name, keys, sealed, created_ms, updated_ms } => {
                let s = StoredSecret {
                    keys: raw(&keys),
                    key_id: sealed.key_id,
                    nonce: hex::encode(&sealed.nonce),
                    ciphertext: hex::encode(&sealed.ciphertext),
                    created_ms,
                    updated_ms,
                };
                out.push(Write::Put(self.key(&format!("secrets/{name}")), json(&s)))
            }
            Op::DeleteSecret(name) => out.push(Write::Delete(self.key(&format!("secrets/{name}")))),
            Op::PutVolume { name, node, size, created_ms, purge } => {
                let v = StoredVolume { node, size, created_ms, purge };
                out.push(Write::Put(self.key(&format!("volumes/{name}")), json(&v)))
            }
            Op::DeleteVolume(name) => out.push(Write::Delete(self.key(&format!("volumes/{name}")))),
            Op::SetMeta { key, value } => out.push(Write::Put(self.key(&format!("meta/{key}")), value.into_bytes())),
            Op::DeleteMeta(key) => out.push(Write::Delete(self.key(&format!("meta/{key}")))),
            Op::PutJob { name, body } => out.push(Write::Put(self.key(&format!("jobs/{name}")), body.into_bytes())),
            Op::DeleteJob(name) => {
                out.push(Write::Delete(self.key(&format!("jobs/{name}"))));
                out.push(Write::DeletePrefix(self.key(&format!("runs/{}/", sep(&name)))));
            }
            Op::PutRun { id, job, body } => {
                out.push(Write::Put(self.key(&format!("runs/{}/{id}", sep(&job))), body.into_bytes()))
            }
            Op::PutCron { name, body } => out.push(Write::Put(self.key(&format!("crons/{name}")), body.into_bytes())),
            Op::DeleteCron(name) => out.push(Write::Delete(self.key(&format!("crons/{name}")))),
        }
    }
}

/// One key written by a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    Put(String, Vec<u8>),
    Delete(String),
    /// Every key starting with this.
    DeletePrefix(String),
}

/// The etcd operations for `writes`, applied in order: etcd refuses a
/// transaction that names a key twice (or puts a key inside a range it deletes),
/// so only the last write of each key is kept, and a prefix delete drops the
/// earlier writes under it. (A put under a prefix deleted earlier in the same
/// transaction would still be refused; no operation of the working set does that.)
fn last_writes(writes: Vec<Write>) -> Vec<Write> {
    let mut slot: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut kept: Vec<Option<Write>> = Vec::with_capacity(writes.len());
    for w in writes {
        match &w {
            Write::Put(k, _) | Write::Delete(k) => {
                if let Some(&i) = slot.get(k) {
                    kept[i] = None;
                }
                slot.insert(k.clone(), kept.len());
            }
            Write::DeletePrefix(prefix) => {
                for (k, &i) in &slot {
                    if k.starts_with(prefix.as_str()) {
                        kept[i] = None;
                    }
                }
                slot.retain(|k, _| !k.starts_with(prefix.as_str()));
            }
        }
        kept.push(Some(w));
    }
    kept.into_iter().flatten().collect()
}

impl From<Write> for TxnOp {
    fn from(w: Write) -> TxnOp {
        match w {
            Write::Put(k, v) => TxnOp::put(k, v, None),
            Write::Delete(k) => TxnOp::delete(k, None),
            Write::DeletePrefix(k) => TxnOp::delete(k, Some(DeleteOptions::new().with_prefix())),
        }
    }
}

fn unhex(what: &'static str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|e| StoreError::Etcd(format!("{what} holds bad hex: {e}")))
}

/// The tables that make the working set ([`decode_tables`] reads these).
pub(crate) const WORKING_SET: [&str; 10] =
    ["nodes/", "revisions/", "deployments/", "replicas/", "meta/", "secrets/", "volumes/", "jobs/", "runs/", "crons/"];

/// A namespaced key (`NS/NAME`, #20) where a key goes on with more parts: `:`
/// for its `/`, so that deleting `revisions/NS/`'s revisions (a deployment
/// named like a namespace, in `default`) never takes `NS/NAME`'s. No name holds
/// a `:` (`job:NAME` is a job's replicas' owner, never a revision's key here).
fn sep(key: &str) -> String {
    key.replace('/', ":")
}

/// The working set from its tables, each read by `range` (a table's
/// (key without the prefix, value) pairs in key order): from etcd itself, or
/// from a follower's copy (`follow.rs`).
pub(crate) fn decode_tables(range: impl Fn(&str) -> Result<Vec<(String, Vec<u8>)>>) -> Result<Loaded> {
    let nodes: Vec<Node> = range("nodes/")?.iter().map(|(_, v)| decode("node", v)).collect::<Result<_>>()?;
    let mut revisions = Vec::new();
    for (k, v) in range("revisions/")? {
        let mut parts = k["revisions/".len()..].rsplitn(2, '/');
        let (Some(rev), Some(dep)) = (parts.next(), parts.next()) else { continue };
        let r: StoredRevision = decode("revision", &v)?;
        let spec: WorkloadSpec =
            serde_json::from_value(r.spec).map_err(|source| StoreError::Decode { what: "revision", source })?;
        revisions.push((dep.replace(':', "/"), rev.parse::<u64>().unwrap_or(0), spec));
    }
    let mut deployments = Vec::new();
    // By key: a scan per deployment made loading 100,000 of them quadratic.
    let by_key: std::collections::HashMap<(&str, u64), &WorkloadSpec> =
        revisions.iter().map(|(d, r, spec)| ((d.as_str(), *r), spec)).collect();
    for (k, v) in range("deployments/")? {
        let name = k["deployments/".len()..].to_string();
        let d: StoredDeployment = decode("deployment", &v)?;
        let extra: crate::store::DeploymentExtra =
            serde_json::from_value(d.extra).map_err(|source| StoreError::Decode { what: "deployment", source })?;
        let Some(spec) = by_key.get(&(name.as_str(), d.revision)).map(|s| (*s).clone()) else {
            return Err(StoreError::Etcd(format!(
                "deployment {name} points at revision {} that is not stored",
                d.revision
            )));
        };
        deployments.push(Deployment {
            name,
            namespace: String::new(),
            replicas: d.replicas,
            revision: d.revision,
            spec,
            created_ms: d.created_ms,
            updated_ms: d.updated_ms,
            status: DeploymentStatus::default(),
            strategy: extra.strategy,
            rollout: extra.rollout,
            autoscale: extra.autoscale,
            scale_to_zero: extra.scale_to_zero,
        });
    }
    let replicas: Vec<Replica> =
        range("replicas/")?.iter().map(|(_, v)| decode("replica", v)).collect::<Result<_>>()?;
    let meta = range("meta/")?
        .into_iter()
        .map(|(k, v)| (k["meta/".len()..].to_string(), String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let mut secrets = Vec::new();
    for (k, v) in range("secrets/")? {
        let s: StoredSecret = decode("secret", &v)?;
        let keys = serde_json::from_value(s.keys).map_err(|source| StoreError::Decode { what: "secret", source })?;
        let sealed =
            Sealed { key_id: s.key_id, nonce: unhex("secret", &s.nonce)?, ciphertext: unhex("secret", &s.ciphertext)? };
        let secret = Secret {
            name: k["secrets/".len()..].to_string(),
            keys,
            created_ms: s.created_ms,
            updated_ms: s.updated_ms,
        };
        secrets.push((secret, sealed));
    }
    let mut volumes = Vec::new();
    for (k, v) in range("volumes/")? {
        let s: StoredVolume = decode("volume", &v)?;
        let volume = Volume {
            name: k["volumes/".len()..].to_string(),
            node: s.node,
            size: s.size.map(skiff_api::quantity::Memory),
            deployments: vec![],
            created_ms: s.created_ms,
        };
        volumes.push((volume, s.purge));
    }
    let jobs = range("jobs/")?.iter().map(|(_, v)| decode("job", v)).collect::<Result<_>>()?;
    let mut runs: Vec<skiff_api::JobRun> =
        range("runs/")?.iter().map(|(_, v)| decode("run", v)).collect::<Result<_>>()?;
    runs.sort_by(|a, b| (&a.job, a.created_ms, &a.id).cmp(&(&b.job, b.created_ms, &b.id)));
    let crons = range("crons/")?.iter().map(|(_, v)| decode("cron", v)).collect::<Result<_>>()?;
    Ok(Loaded { nodes, deployments, revisions, replicas, meta, secrets, volumes, jobs, runs, crons })
}

impl Backend for Etcd {
    fn load(&self) -> Result<Loaded> {
        decode_tables(|table| self.range(table))
    }

    fn commit(&mut self, ops: Vec<Op>) -> Result<()> {
        let mut writes = Vec::with_capacity(ops.len() + ops.len() / 8);
        let first_event = self.last_event.load(Ordering::SeqCst);
        for op in ops {
            self.ops(op, &mut writes);
        }
        let r = self.txn(last_writes(writes).into_iter().map(TxnOp::from).collect());
        if r.is_err() {
            // Nothing was written: the ids are free again.
            self.last_event.store(first_event, Ordering::SeqCst);
        }
        r
    }

    fn events(&self, object: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        let table = match object {
            Some(o) => format!("events-by-object/{o}/"),
            None => "events/".to_string(),
        };
        let mut out: Vec<Event> = self
            .range_desc(&table, i64::from(limit))?
            .iter()
            .map(|(_, v)| decode("event", v))
            .collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    fn prune_events(&self, keep: u64) -> Result<usize> {
        let last = self.last_event.load(Ordering::SeqCst);
        if last <= keep {
            return Ok(0);
        }
        let below = last - keep + 1;
        let mut doomed = vec![TxnOp::delete(
            self.key("events/"),
            Some(DeleteOptions::new().with_range(self.key(&format!("events/{below:020}")))),
        )];
        let mut n = 0;
        for (k, _) in self.range("events-by-object/")? {
            if k.rsplit('/').next().and_then(|id| id.parse::<u64>().ok()).is_some_and(|id| id < below) {
                doomed.push(TxnOp::delete(self.key(&k), None));
                n += 1;
            }
        }
        for chunk in doomed.chunks(1_000) {
            self.txn(chunk.to_vec())?;
        }
        Ok(n)
    }

    fn images(&self) -> Result<Vec<skiff_api::Image>> {
        let mut images: Vec<skiff_api::Image> =
            self.range("images/")?.iter().map(|(_, v)| decode("image", v)).collect::<Result<_>>()?;
        images.sort_by(|a, b| (&a.name, &a.tag).cmp(&(&b.name, &b.tag)));
        Ok(images)
    }

    fn put_image(&self, image: &skiff_api::Image) -> Result<()> {
        self.txn(vec![TxnOp::put(self.key(&format!("images/{}#{}", image.name, image.tag)), json(image), None)])
    }

    fn delete_image(&self, name: &str, tag: &str) -> Result<bool> {
        let key = format!("images/{name}#{tag}");
        let found = self.range(&key)?.iter().any(|(k, _)| *k == key);
        if found {
            self.txn(vec![TxnOp::delete(self.key(&key), None)])?;
        }
        Ok(found)
    }

    fn tokens(&self) -> Result<Vec<(String, String, String, u64)>> {
        let mut out = Vec::new();
        for (k, v) in self.range("tokens/")? {
            let t: StoredToken = decode("token", &v)?;
            out.push((k["tokens/".len()..].to_string(), t.hash, t.role, t.created_ms));
        }
        Ok(out)
    }

    fn put_token(&self, name: &str, hash: &str, role: &str, created_ms: u64) -> Result<()> {
        let t = StoredToken { hash: hash.to_string(), role: role.to_string(), created_ms };
        self.txn(vec![TxnOp::put(self.key(&format!("tokens/{name}")), json(&t), None)])
    }

    fn delete_token(&self, name: &str) -> Result<bool> {
        let existed = self.range(&format!("tokens/{name}"))?.iter().any(|(k, _)| k == &format!("tokens/{name}"));
        self.txn(vec![TxnOp::delete(self.key(&format!("tokens/{name}")), None)])?;
        Ok(existed)
    }

    fn node_credentials(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (k, v) in self.range("node-credentials/")? {
            let c: StoredCredential = decode("node credential", &v)?;
            out.push((k["node-credentials/".len()..].to_string(), c.hash));
        }
        Ok(out)
    }

    fn put_node_credential(&self, node: &str, hash: &str, created_ms: u64) -> Result<()> {
        let c = StoredCredential { hash: hash.to_string(), created_ms };
        self.txn(vec![TxnOp::put(self.key(&format!("node-credentials/{node}")), json(&c), None)])
    }

    fn delete_node_credential(&self, node: &str) -> Result<()> {
        self.txn(vec![TxnOp::delete(self.key(&format!("node-credentials/{node}")), None)])
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        let k = self.key(&format!("meta/{key}"));
        let mut client = self.client.clone();
        let resp = block(async move { client.get(k, None).await })?;
        Ok(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_a_prefix() {
        let e: Endpoints = "etcd://a:2379,b:2379".parse().unwrap();
        assert_eq!(e.hosts, ["a:2379", "b:2379"]);
        assert_eq!(e.prefix, "/skiff/");
        let e: Endpoints = "etcd://127.0.0.1:2379/team/prod".parse().unwrap();
        assert_eq!(e.prefix, "/team/prod/");
        assert_eq!(e.to_string(), "etcd://127.0.0.1:2379/team/prod");
        for bad in ["http://a:2379", "etcd://", "etcd://a"] {
            assert!(bad.parse::<Endpoints>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_transaction_names_each_key_once() {
        let put = |k: &str, v: &str| Write::Put(k.into(), v.as_bytes().to_vec());
        let writes = vec![
            put("r/a", "1"),
            put("r/b", "1"),
            put("r/a", "2"),
            Write::Delete("r/b".into()),
            put("rev/x/1", "s"),
            Write::DeletePrefix("rev/x/".into()),
            put("rev/y/1", "s"),
        ];
        assert_eq!(
            last_writes(writes),
            vec![
                put("r/a", "2"),
                Write::Delete("r/b".into()),
                Write::DeletePrefix("rev/x/".into()),
                put("rev/y/1", "s"),
            ]
        );
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/skiff/"), b"/skiff0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }
}
