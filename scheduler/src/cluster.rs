//! Several servers on one etcd: who leads, what the others do, and what they share.
//!
//! Every server holds a lease (TTL [`LEASE_TTL`], kept alive every
//! [`KEEPALIVE`]) and lists itself under `servers/<name>` with it. One of them
//! holds the election key `leader` (created only if absent, under its lease):
//! it loads the working set from etcd and runs the API and the controllers like
//! a single server, every write fenced by the key's create revision. The others
//! forward every call to it (heartbeats, long polls and streams included), so a
//! client or node may talk to any server. A leader whose lease it cannot renew
//! stops acting as leader before etcd can expire the lease (it counts from when
//! it sent the last renewal that was answered), and campaigns again.
//!
//! Blobs live on every server's disk: the leader acknowledges an upload once a
//! peer also holds it, and fetches a blob it lacks from a peer by digest
//! ([`Cluster::replicate_blob`], [`Cluster::fetch_blob`]).
//!
//! The CA, the join token's secret, the admin token and the secret keys are the
//! cluster's, not one server's: the first server seals them into `bootstrap`
//! with a key derived from the join token, and a server joining with that token
//! writes them into its data dir ([`bootstrap`]).

use crate::etcd::{self, Endpoints, Fence};
use crate::store::StoreError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_api::{ServerInfo, ServersInfo, StoreMember};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// How long a server's lease lasts without renewal: a dead leader's key is gone
/// this long after its last renewal, and another server takes over.
pub const LEASE_TTL: i64 = 2;
/// How often the lease is renewed.
const KEEPALIVE: Duration = Duration::from_millis(400);
/// Margin by which a leader stops before its lease could end.
const MARGIN: Duration = Duration::from_millis(300);
/// Longest a call waits for this server to finish taking over as leader.
const STARTING: Duration = Duration::from_secs(5);
/// Header on a call one server forwards to another (never forwarded again).
const FORWARDED: &str = "x-skiff-forwarded";
/// Header on server-to-server blob copies, served from the receiver's own disk.
const PEER_BLOB: &str = "x-skiff-peer";

/// What this server is now.
enum Role {
    /// Not the leader; `leader` is who is, if anyone.
    Follower { leader: Option<ServerInfo> },
    /// Won the election, building the leader's API: calls wait for it.
    Starting,
    /// The leader: the full API.
    Leader(axum::Router),
}

/// A server's part in a cluster on etcd.
pub(crate) struct Cluster {
    client: Client,
    endpoints: Endpoints,
    pub me: ServerInfo,
    role: RwLock<Role>,
    /// The reads this server answers while it follows.
    reads: RwLock<Option<Arc<crate::follow::Reads>>>,
    /// A build of `reads` is under way.
    building_reads: std::sync::atomic::AtomicBool,
    /// Notified by the leader's working set when it can no longer match the
    /// store (`State::resign`); a new one each term.
    resign: RwLock<Arc<tokio::sync::Notify>>,
    /// Calls to other servers (they share the CA).
    http: reqwest::Client,
    /// The admin token, sent with blob copies.
    admin_token: String,
    blobs: crate::blobs::Blobs,
}

/// Builds the leader's API from the fence it won; returns the router and the
/// tasks to stop when leadership ends.
pub(crate) type Lead =
    Arc<dyn Fn(Fence, Arc<Cluster>) -> anyhow::Result<(axum::Router, Vec<tokio::task::AbortHandle>)> + Send + Sync>;

/// Builds a follower's read API (`follow.rs`), kept while this server follows.
pub(crate) type Follow = Arc<dyn Fn(Arc<Cluster>) -> anyhow::Result<crate::follow::Reads> + Send + Sync>;

fn key(ep: &Endpoints, rest: &str) -> String {
    format!("{}{rest}", ep.prefix)
}

// ---- bootstrap: the cluster's shared secrets ----

/// Files of the data dir that every server of a cluster must share.
const SHARED_FILES: &[&str] = &["ca.crt", "ca.key", "join-token", "admin-token", "secret.keys"];

#[derive(Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

fn cipher(join_secret: &str) -> ChaCha20Poly1305 {
    let k: [u8; 32] = Sha256::digest(format!("skiff bootstrap\0{join_secret}").as_bytes()).into();
    ChaCha20Poly1305::new(Key::from_slice(&k))
}

fn join_secret_of(token: &str) -> &str {
    let t = token.trim();
    t.split_once('.').map_or(t, |(s, _)| s)
}

/// Makes `data_dir` hold the cluster's shared files: from `bootstrap` in etcd when
/// it is there (opened with `join_token`, or the data dir's own `join-token`), else
/// from this server's first start (`make_local` creates them), sealed into etcd
/// for the servers that follow.
pub(crate) async fn bootstrap(
    client: &Client,
    ep: &Endpoints,
    data_dir: &Path,
    join_token: Option<&str>,
    make_local: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let k = key(ep, "bootstrap");
    let mut c = client.clone();
    let k2 = k.clone();
    let found = etcd::run(async move { c.get(k2, None).await }).await?;
    let stored = found.kvs().first().map(|kv| kv.value().to_vec());
    let own = std::fs::read_to_string(data_dir.join("join-token")).ok();
    let token = join_token.map(str::to_string).or(own);
    if let Some(stored) = stored {
        let Some(token) = token else {
            anyhow::bail!(
                "{ep} already holds a skiff cluster; start this server with --join-token (the `join-token` file of a server of that cluster)"
            );
        };
        let sealed: Sealed = serde_json::from_slice(&stored)?;
        let plain = cipher(join_secret_of(&token))
            .decrypt(Nonce::from_slice(&hex::decode(&sealed.nonce)?), hex::decode(&sealed.ciphertext)?.as_slice())
            .map_err(|_| anyhow::anyhow!("the join token does not open {ep}'s cluster secrets; use the join token of a server of that cluster"))?;
        let files: BTreeMap<String, String> = serde_json::from_slice(&plain)?;
        for (name, text) in files {
            if !SHARED_FILES.contains(&name.as_str()) {
                continue;
            }
            let path = data_dir.join(&name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                crate::auth::write_private(&path, text.trim_end())?;
            }
        }
        return Ok(());
    }
    make_local()?;
    let mut files = BTreeMap::new();
    for name in SHARED_FILES {
        let path = data_dir.join(name);
        files.insert(
            name.to_string(),
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    let token = std::fs::read_to_string(data_dir.join("join-token"))?;
    let mut nonce = [0u8; 12];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce))?;
    let ciphertext = cipher(join_secret_of(&token))
        .encrypt(Nonce::from_slice(&nonce), serde_json::to_vec(&files)?.as_slice())
        .map_err(|_| anyhow::anyhow!("sealing the cluster secrets"))?;
    let sealed = serde_json::to_vec(&Sealed { nonce: hex::encode(nonce), ciphertext: hex::encode(ciphertext) })?;
    let mut c = client.clone();
    let txn = Txn::new()
        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(k, sealed, None)]);
    let resp = etcd::run(async move { c.txn(txn).await }).await?;
    if !resp.succeeded() {
        anyhow::bail!(
            "another server bootstrapped {ep} at the same moment; start this one again with its --join-token"
        );
    }
    Ok(())
}

// ---- leases and the election ----

/// A lease kept alive in the background; `valid_until` is how long it surely lasts.
struct Lease {
    id: i64,
    valid_until: tokio::sync::watch::Receiver<Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn alive(&self) -> bool {
        Instant::now() + MARGIN < *self.valid_until.borrow()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cluster {
    pub(crate) fn new(
        client: Client,
        endpoints: Endpoints,
        me: ServerInfo,
        ca: skiff_api::tls::CaFingerprint,
        admin_token: String,
        blobs: crate::blobs::Blobs,
    ) -> anyhow::Result<Cluster> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .use_preconfigured_tls(skiff_api::tls::client_config(Some(ca)))
            .build()?;
        Ok(Cluster {
            client,
            endpoints,
            me,
            role: RwLock::new(Role::Follower { leader: None }),
            reads: RwLock::new(None),
            building_reads: std::sync::atomic::AtomicBool::new(false),
            resign: RwLock::new(Arc::new(tokio::sync::Notify::new())),
            http,
            admin_token,
            blobs,
        })
    }

    fn key(&self, rest: &str) -> String {
        key(&self.endpoints, rest)
    }

    /// Grants a lease, lists this server under it, and renews it in the background.
    async fn lease(&self) -> Result<Lease, StoreError> {
        let mut c = self.client.clone();
        let sent = Instant::now();
        let grant = etcd::run(async move { c.lease_grant(LEASE_TTL, None).await }).await?;
        let id = grant.id();
        let (tx, valid_until) = tokio::sync::watch::channel(sent + Duration::from_secs(grant.ttl().max(0) as u64));
        let mut c = self.client.clone();
        let (k, v) = (self.key(&format!("servers/{}", self.me.name)), serde_json::to_vec(&self.me).unwrap_or_default());
        etcd::run(async move { c.put(k, v, Some(PutOptions::new().with_lease(id))).await }).await?;
        let client = self.client.clone();
        let task = etcd::rt_spawn(async move {
            let mut c = client.clone();
            let Ok(Ok((mut keeper, mut stream))) = tokio::time::timeout(etcd::TIMEOUT, c.lease_keep_alive(id)).await
            else {
                return;
            };
            loop {
                let sent = Instant::now();
                let renewed = tokio::time::timeout(KEEPALIVE * 2, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
                match renewed {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {
                        let _ = tx.send(sent + Duration::from_secs(r.ttl() as u64));
                    }
                    // Expired (ttl 0): it will not come back.
                    Ok(Ok(Some(_))) => return,
                    _ => {
                        if Instant::now() > *tx.borrow() {
                            return;
                        }
                        // Reconnect the stream and go on while the lease may still live.
                        match tokio::time::timeout(etcd::TIMEOUT, c.lease_keep_alive(id)).await {
                            Ok(Ok((k, s))) => (keeper, stream) = (k, s),
                            _ => tokio::time::sleep(KEEPALIVE / 2).await,
                        }
                    }
                }
                tokio::time::sleep(KEEPALIVE.saturating_sub(sent.elapsed())).await;
            }
        });
        Ok(Lease { id, valid_until, task })
    }

    /// Tries once to take the election key; the fence if won, else who holds it
    /// and the revision to watch from.
    async fn campaign(&self, lease: &Lease) -> Result<Result<Fence, (Option<ServerInfo>, i64)>, StoreError> {
        let k = self.key("leader");
        let me = serde_json::to_vec(&self.me).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), me, Some(PutOptions::new().with_lease(lease.id)))])
            .or_else([TxnOp::get(k.clone(), None)]);
        let mut c = self.client.clone();
        let resp = etcd::run(async move { c.txn(txn).await }).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Ok(Fence { key: k, revision }));
        }
        let held = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (serde_json::from_slice::<ServerInfo>(kv.value()).ok(), kv.create_revision(), kv.lease())),
            _ => None,
        });
        let Some((holder, created, holder_lease)) = held else { return Ok(Err((None, revision))) };
        if holder.as_ref().is_some_and(|h| h.name == self.me.name) && holder_lease != lease.id {
            // This server's own key from a lease it no longer holds (it stepped
            // down while etcd could not take the key back): it leads nobody.
            // Names are unique in a cluster, so no other server made it.
            tracing::info!("removing the election key left from this server's previous lease");
            let txn = Txn::new()
                .when([Compare::create_revision(k.clone(), CompareOp::Equal, created)])
                .and_then([TxnOp::delete(k, None)]);
            let mut c = self.client.clone();
            etcd::run(async move { c.txn(txn).await }).await?;
            return Ok(Err((None, revision)));
        }
        Ok(Err((holder, revision)))
    }

    /// Waits until the election key is deleted (after `revision`), or `limit` passes.
    async fn await_vacancy(&self, revision: i64, limit: Duration) {
        let k = self.key("leader");
        let mut c = self.client.clone();
        let watched = async move {
            let opts = WatchOptions::new().with_start_revision(revision + 1);
            let Ok(mut stream) = c.watch(k, Some(opts)).await else { return };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, etcd::rt_spawn(watched)).await;
    }

    /// Campaigns for ever: leads while it can, follows otherwise.
    pub(crate) async fn run(self: Arc<Self>, lead: Lead, follow: Follow) {
        let mut lease: Option<Lease> = None;
        loop {
            if !lease.as_ref().is_some_and(Lease::alive) {
                lease = None;
                match self.lease().await {
                    Ok(l) => lease = Some(l),
                    Err(e) => {
                        tracing::warn!("cannot hold a lease in {}: {e}; retrying", self.endpoints);
                        self.set_follower(None);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            let Some(l) = lease.as_ref() else { continue };
            match self.campaign(l).await {
                Err(e) => {
                    tracing::warn!("campaigning in {}: {e}", self.endpoints);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(Err((holder, revision))) => {
                    if holder.as_ref().map(|h| &h.name) != self.leader().as_ref().map(|h| &h.name) {
                        tracing::info!("following {}", holder.as_ref().map_or("nobody yet", |h| h.name.as_str()));
                    }
                    self.set_follower(holder);
                    self.keep_reads(&follow);
                    // Check the lease now and then even while the leader stays.
                    self.await_vacancy(revision, Duration::from_secs(1)).await;
                }
                Ok(Ok(fence)) => {
                    // The leader answers from its own working set.
                    *self.reads.write().unwrap_or_else(|p| p.into_inner()) = None;
                    *self.role.write().unwrap_or_else(|p| p.into_inner()) = Role::Starting;
                    let resign = Arc::new(tokio::sync::Notify::new());
                    *self.resign.write().unwrap_or_else(|p| p.into_inner()) = resign.clone();
                    let started = Instant::now();
                    let (f, c, build) = (fence.clone(), self.clone(), lead.clone());
                    let built = tokio::task::spawn_blocking(move || build(f, c))
                        .await
                        .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
                    match built {
                        Ok((router, tasks)) => {
                            *self.role.write().unwrap_or_else(|p| p.into_inner()) = Role::Leader(router);
                            crate::metrics::METRICS.leader.set(1);
                            tracing::info!(
                                "leading from revision {} (working set loaded in {} ms)",
                                fence.revision,
                                started.elapsed().as_millis()
                            );
                            let compacting = etcd::rt_spawn(compact(self.client.clone(), self.key("")));
                            tokio::select! {
                                _ = self.hold(l, &fence) => {}
                                _ = resign.notified() => {}
                            }
                            tracing::warn!("leadership lost; following again");
                            compacting.abort();
                            for t in tasks {
                                t.abort();
                            }
                        }
                        Err(e) => tracing::error!("taking over as leader: {e:#}"),
                    }
                    crate::metrics::METRICS.leader.set(0);
                    self.set_follower(None);
                    // Give the key up now, if it is still ours, so that another
                    // server need not wait for the lease to expire.
                    let mut c = self.client.clone();
                    let txn = Txn::new()
                        .when([Compare::create_revision(fence.key.clone(), CompareOp::Equal, fence.revision)])
                        .and_then([TxnOp::delete(fence.key.clone(), None)]);
                    let _ = etcd::run(async move { c.txn(txn).await }).await;
                    lease = None;
                }
            }
        }
    }

    /// Returns when this leader must stop: its lease could end, or the key is no
    /// longer the one it created.
    async fn hold(&self, lease: &Lease, fence: &Fence) {
        let k = fence.key.clone();
        let revision = fence.revision;
        let mut c = self.client.clone();
        let deposed = etcd::rt_spawn(async move {
            let opts = WatchOptions::new().with_start_revision(revision + 1);
            let Ok(mut stream) = c.watch(k, Some(opts)).await else { return };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    return;
                }
            }
            // The stream ended (etcd unreachable): the lease check decides.
            std::future::pending::<()>().await;
        });
        let mut valid = lease.valid_until.clone();
        let expiry = async {
            loop {
                let until = *valid.borrow_and_update();
                let stop_at = until.checked_sub(MARGIN).unwrap_or(until);
                tokio::select! {
                    _ = tokio::time::sleep_until(stop_at.into()) => {
                        if *valid.borrow() <= until { return; }
                    }
                    changed = valid.changed() => if changed.is_err() {
                        // The renewing task ended (the lease expired): wait out what is left.
                        tokio::time::sleep_until(stop_at.into()).await;
                        return;
                    }
                }
            }
        };
        tokio::select! {
            _ = deposed => {}
            _ = expiry => {}
        }
    }

    /// Starts building the follower's read API unless it exists or is being built
    /// (a failed build is tried again on the next call).
    fn keep_reads(self: &Arc<Self>, follow: &Follow) {
        use std::sync::atomic::Ordering;
        if self.reads().is_some() || self.building_reads.swap(true, Ordering::SeqCst) {
            return;
        }
        let (me, follow) = (self.clone(), follow.clone());
        tokio::task::spawn_blocking(move || {
            match follow(me.clone()) {
                Ok(reads) => {
                    let following = matches!(*me.role.read().unwrap_or_else(|p| p.into_inner()), Role::Follower { .. });
                    if following {
                        *me.reads.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(reads));
                    }
                }
                Err(e) => tracing::warn!("building this follower's reads: {e:#}; forwarding them to the leader"),
            }
            me.building_reads.store(false, Ordering::SeqCst);
        });
    }

    /// What the leader's working set notifies to step down (see `State::resign`).
    pub(crate) fn resign(&self) -> Arc<tokio::sync::Notify> {
        self.resign.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn reads(&self) -> Option<Arc<crate::follow::Reads>> {
        self.reads.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_follower(&self, leader: Option<ServerInfo>) {
        *self.role.write().unwrap_or_else(|p| p.into_inner()) = Role::Follower { leader };
    }

    /// Who leads, as this server knows it.
    pub(crate) fn leader(&self) -> Option<ServerInfo> {
        match &*self.role.read().unwrap_or_else(|p| p.into_inner()) {
            Role::Leader(_) | Role::Starting => Some(self.me.clone()),
            Role::Follower { leader } => leader.clone(),
        }
    }

    /// Every live server (from `servers/`), this one included.
    pub(crate) async fn servers(&self) -> Result<Vec<ServerInfo>, StoreError> {
        let mut c = self.client.clone();
        let k = self.key("servers/");
        let resp = etcd::run(async move { c.get(k, Some(etcd_client::GetOptions::new().with_prefix())).await }).await?;
        Ok(resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }

    /// The other live servers.
    async fn peers(&self) -> Vec<ServerInfo> {
        self.servers().await.unwrap_or_default().into_iter().filter(|s| s.name != self.me.name).collect()
    }

    /// `GET /v1/servers`: the servers, the leader and the store's members.
    pub(crate) async fn info(&self) -> ServersInfo {
        let leader = self.leader().map(|l| l.name);
        let servers = match self.servers().await {
            Ok(mut s) => {
                for x in &mut s {
                    x.leader = Some(&x.name) == leader.as_ref();
                }
                s.sort_by(|a, b| a.name.cmp(&b.name));
                s
            }
            Err(_) => vec![ServerInfo { leader: leader.as_ref() == Some(&self.me.name), ..self.me.clone() }],
        };
        let mut store = Vec::new();
        for host in &self.endpoints.hosts {
            let h = host.clone();
            let probe = etcd::run(async move {
                let mut c = Client::connect(
                    [h],
                    Some(etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(800))),
                )
                .await?;
                c.status().await
            })
            .await;
            store.push(match probe {
                Ok(s) => StoreMember {
                    endpoint: host.clone(),
                    healthy: s.errors().is_empty(),
                    leader: s.header().is_some_and(|h| h.member_id() == s.leader()),
                    version: s.version().to_string(),
                    error: s.errors().join("; "),
                },
                Err(e) => StoreMember { endpoint: host.clone(), error: e.to_string(), ..Default::default() },
            });
        }
        ServersInfo { store: self.endpoints.to_string(), leader, servers, members: store }
    }

    // ---- blobs ----

    /// Copies blob `digest` from this server's disk to one peer; Ok when a peer
    /// holds it too (or there is none to ask).
    pub(crate) async fn replicate_blob(&self, digest: &str, path: &Path) -> Result<(), String> {
        let peers = self.peers().await;
        if peers.is_empty() {
            return Ok(());
        }
        let mut why = Vec::new();
        for p in peers {
            let file = match tokio::fs::File::open(path).await {
                Ok(f) => f,
                Err(e) => return Err(format!("reading {}: {e}", path.display())),
            };
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let sent = self.peer_blob_request(reqwest::Method::PUT, &p, digest).body(body).send().await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => why.push(format!("{}: {}", p.name, r.status())),
                Err(e) => why.push(format!("{}: {e}", p.name)),
            }
        }
        Err(why.join("; "))
    }

    /// A blob copy to or from `peer` (served from its own disk, whatever its role).
    fn peer_blob_request(&self, method: reqwest::Method, peer: &ServerInfo, digest: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/v1/blobs/{digest}", peer.url))
            .bearer_auth(&self.admin_token)
            .header(PEER_BLOB, "1")
            .timeout(Duration::from_secs(300))
    }

    /// Fetches blob `digest` from a peer into this server's store; whether it now has it.
    pub(crate) async fn fetch_blob(&self, blobs: &crate::blobs::Blobs, digest: &str) -> bool {
        for p in self.peers().await {
            let got = self.peer_blob_request(reqwest::Method::GET, &p, digest).send().await;
            let Ok(resp) = got else { continue };
            if !resp.status().is_success() {
                continue;
            }
            // `Blobs::put` checks the digest of what it stores.
            let body = Body::from_stream(resp.bytes_stream());
            if blobs.put(digest, body).await.is_ok() {
                tracing::info!("blob {digest} fetched from {}", p.name);
                return true;
            }
        }
        false
    }

    /// Whether `token` is the admin token (checked against the shared one).
    fn is_admin(&self, headers: &axum::http::HeaderMap) -> bool {
        use crate::auth::{ct_eq, sha256};
        crate::auth::bearer(headers).is_some_and(|t| ct_eq(&sha256(t), &sha256(&self.admin_token)))
    }

    /// A peer's blob copy, on this server's own disk (whatever its role).
    async fn peer_blob(&self, req: Request) -> Response {
        if !self.is_admin(req.headers()) {
            return error(StatusCode::UNAUTHORIZED, "blob copies between servers need the admin token");
        }
        let digest = req.uri().path().trim_start_matches("/v1/blobs/").to_string();
        if let Err(e) = crate::blobs::parse_digest(&digest) {
            return e.into_response();
        }
        match *req.method() {
            axum::http::Method::PUT if matches!(self.blobs.size(&digest), Ok(Some(_))) => {
                let size = self.blobs.size(&digest).ok().flatten().unwrap_or(0);
                let mut rest = req.into_body().into_data_stream();
                while let Some(Ok(_)) = rest.next().await {}
                axum::Json(skiff_api::BlobInfo { digest, size }).into_response()
            }
            axum::http::Method::PUT => match self.blobs.put(&digest, req.into_body()).await {
                Ok(size) => axum::Json(skiff_api::BlobInfo { digest, size }).into_response(),
                Err(e) => e.into_response(),
            },
            axum::http::Method::GET => match self.blobs.path(&digest) {
                Ok(path) => match tokio::fs::File::open(&path).await {
                    Ok(f) => Body::from_stream(tokio_util::io::ReaderStream::new(f)).into_response(),
                    Err(_) => error(StatusCode::NOT_FOUND, &format!("blob {digest} not stored here")),
                },
                Err(e) => e.into_response(),
            },
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "blob copies are PUT or GET"),
        }
    }

    // ---- serving ----

    /// Every call to this server: the leader's API, or forwarded to the leader.
    pub(crate) async fn serve(self: Arc<Self>, req: Request) -> Response {
        let path = req.uri().path();
        if path == "/healthz" {
            return "ok".into_response();
        }
        if path.starts_with("/v1/blobs/") && req.headers().contains_key(PEER_BLOB) {
            return self.peer_blob(req).await;
        }
        let router = self.leading().await;
        if let Some(router) = router {
            return match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        if crate::follow::is_cached_read(req.method(), path)
            && let Some(reads) = self.reads().filter(|r| r.can_answer())
        {
            let mut resp = match reads.router.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if let Ok(v) = HeaderValue::from_str(&format!("{} at revision {}", self.me.name, reads.revision())) {
                resp.headers_mut().insert(crate::follow::READ_FROM, v);
            }
            return resp;
        }
        if path == "/v1/servers" {
            // Answered here even without a leader: that is when it matters.
            if !self.is_user(req.headers().clone()).await {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "GET /v1/servers needs an API token (Authorization: Bearer ...)",
                );
            }
            return axum::Json(self.info().await).into_response();
        }
        if req.headers().contains_key(FORWARDED) {
            return error(StatusCode::SERVICE_UNAVAILABLE, "this server is not the leader (any more); retry");
        }
        match self.leader() {
            Some(l) if req.headers().get(header::UPGRADE).is_some_and(|v| v == skiff_api::relay::PROTOCOL) => {
                self.forward_upgrade(&l, req).await
            }
            Some(l) => {
                let write = !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
                let resp = self.forward(&l, req).await;
                // Read your writes: this server's copy shows the change before the answer.
                if write
                    && resp.status().is_success()
                    && let Some(reads) = self.reads()
                {
                    reads.catch_up().await;
                }
                resp
            }
            None => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("no leader elected yet (is a majority of {} up?); retry", self.endpoints),
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    }

    /// The leader's API if this server leads (waiting, at most [`STARTING`],
    /// while it takes over: it won the election, so no one else will answer).
    async fn leading(&self) -> Option<axum::Router> {
        let deadline = Instant::now() + STARTING;
        loop {
            match &*self.role.read().unwrap_or_else(|p| p.into_inner()) {
                Role::Leader(r) => return Some(r.clone()),
                Role::Follower { .. } => return None,
                Role::Starting if Instant::now() >= deadline => return None,
                Role::Starting => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the caller holds a user token (admin or read-only), checked in etcd.
    async fn is_user(&self, headers: axum::http::HeaderMap) -> bool {
        let Some(given) = crate::auth::bearer(&headers) else {
            return false;
        };
        let hash = hex::encode(crate::auth::sha256(given));
        let mut c = self.client.clone();
        let k = self.key("tokens/");
        let Ok(resp) =
            etcd::run(async move { c.get(k, Some(etcd_client::GetOptions::new().with_prefix())).await }).await
        else {
            return self.is_admin(&headers);
        };
        resp.kvs().iter().any(|kv| {
            serde_json::from_slice::<serde_json::Value>(kv.value())
                .ok()
                .is_some_and(|v| v.get("hash").and_then(|h| h.as_str()) == Some(hash.as_str()))
        })
    }

    /// Passes a relay upgrade (`skiff exec`, `skiff port-forward`) to the leader
    /// and, once the leader agreed, splices the client's connection to it.
    async fn forward_upgrade(&self, leader: &ServerInfo, mut req: Request) -> Response {
        let url = format!("{}{}", leader.url, req.uri().path_and_query().map_or("/", |p| p.as_str()));
        let mut out = self.http.request(req.method().clone(), &url).header(FORWARDED, &self.me.name);
        for (name, value) in req.headers() {
            // `Connection: upgrade` and `Upgrade` go on: they are the request.
            if name != header::HOST && name != header::TRANSFER_ENCODING && name != header::CONTENT_LENGTH {
                out = out.header(name, value);
            }
        }
        let resp = match out.send().await {
            Ok(r) => r,
            Err(e) => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the leader {} did not answer ({e}); retry", leader.name),
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let mut b = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
                    b = b.header(name, value);
                }
            }
            return b
                .body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, &e.to_string()));
        }
        let client = hyper::upgrade::on(&mut req);
        let mut to_leader = match resp.upgrade().await {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_GATEWAY, &format!("the leader {}: {e}", leader.name)),
        };
        tokio::spawn(async move {
            if let Ok(client) = client.await {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut to_leader).await;
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, skiff_api::relay::PROTOCOL)
            .body(Body::empty())
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
    }

    /// Passes `req` to the leader and its answer back, streaming both bodies.
    async fn forward(&self, leader: &ServerInfo, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let url = format!("{}{}", leader.url, parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        let mut out = self
            .http
            .request(parts.method.clone(), &url)
            .body(reqwest::Body::wrap_stream(body.into_data_stream()))
            .header(FORWARDED, &self.me.name);
        for (name, value) in &parts.headers {
            if name != header::HOST && name != header::CONNECTION && name != header::TRANSFER_ENCODING {
                out = out.header(name, value);
            }
        }
        match out.send().await {
            Ok(resp) => {
                let mut b = Response::builder().status(resp.status());
                for (name, value) in resp.headers() {
                    if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
                        b = b.header(name, value);
                    }
                }
                b.body(Body::from_stream(resp.bytes_stream()))
                    .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, &e.to_string()))
            }
            Err(e) => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the leader {} did not answer ({e}); retry", leader.name),
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    }
}

/// How often the leader compacts etcd's history, and how much it keeps: every
/// [`COMPACT_EVERY`] it drops what is older than the revision of the previous
/// time (as kube-apiserver does every 5 minutes). Without it etcd keeps every
/// version of every key until its space quota is reached and it refuses writes.
const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// Compacts etcd's history, for as long as this server leads.
async fn compact(mut client: Client, prefix: String) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(COMPACT_EVERY).await;
        let Ok(now) = etcd::revision(&client, &prefix).await else { continue };
        if let Some(rev) = previous
            && let Err(e) = client.compact(rev, None).await
            && !e.to_string().contains("compacted")
        {
            tracing::warn!("compacting etcd's history to revision {rev}: {e}");
        }
        previous = Some(now);
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(skiff_api::ErrorBody { error: message.to_string() })).into_response()
}
