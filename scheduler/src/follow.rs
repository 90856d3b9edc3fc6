//! A follower's reads (several servers on etcd).
//!
//! A server that is not the leader answers the API's reads itself, from a copy
//! of the working set's tables (`etcd::WORKING_SET`) that an etcd watch keeps
//! current: one thread holds the copy, applies each batch of changes the watch
//! delivers, and brings the working set up to it — replicas changed alone are
//! applied in place (`Mem::apply_replicas`), any other change rebuilds it
//! (`Mem::from_loaded`), at most every [`REBUILD_EVERY`] — in a `Core` whose store refuses every write
//! (`Etcd::reader`). `Cluster::serve` sends the calls [`is_cached_read`] names
//! there and forwards all others to the leader; after forwarding a write it
//! waits (at most [`CATCH_UP`]) until the copy shows it, so that a client reads
//! its own writes through any server, and until the copy does (a busy machine),
//! its reads go to the leader too ([`Reads::can_answer`]). Its answers carry
//! [`READ_FROM`].

use crate::Core;
use crate::etcd::{self, Etcd, WORKING_SET};
use axum::http::Method;
use etcd_client::{Client, EventType, WatchOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Header on an answer a follower gave from its copy: which server, and the
/// store revision the copy showed.
pub(crate) const READ_FROM: &str = "x-skiff-read-from";
/// Shortest time between two rebuilds of the working set from the copy.
const REBUILD_EVERY: Duration = Duration::from_millis(100);
/// Longest a forwarded write waits for this server's copy to show it.
const CATCH_UP: Duration = Duration::from_secs(1);

/// Whether `method path` is a read a follower answers from its copy: the
/// user's views of the cluster's objects, and its own metrics (with
/// `skiff_scheduler_leader 0`) and scrape targets. Node traffic, logs (proxied
/// from nodes) and the live dashboard stream (usage from heartbeats, which only
/// the leader holds) go to the leader.
pub(crate) fn is_cached_read(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        [""] | ["assets", _]
            | ["v1", "deployments" | "replicas" | "nodes" | "events" | "images" | "secrets" | "volumes" | "tokens"]
            | ["v1", "openapi.json"]
            | ["metrics"]
            | ["v1", "prometheus", "targets"]
            | ["v1", "deployments", _]
            | ["v1", "deployments", _, "revisions"]
            | ["v1", "nodes", _]
    )
}

/// A follower's read API; dropping it stops the copy.
pub(crate) struct Reads {
    pub router: axum::Router,
    /// The store revision the working set shows.
    seen: watch::Receiver<i64>,
    /// Asks the watch for etcd's progress report (sent once every event up to
    /// its revision has been delivered).
    progress: Arc<Notify>,
    stop: Arc<AtomicBool>,
    /// The copy follows the store now (false while the watch is lost: etcd
    /// unreachable, or without a majority).
    current: Arc<AtomicBool>,
    /// The revision of the latest write forwarded through this server: the
    /// copy answers no read before it shows it.
    owed: AtomicI64,
    client: Client,
    prefix: String,
}

impl Drop for Reads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Reads {
    /// Starts keeping `core`'s working set a copy of the store under `prefix`.
    pub(crate) fn start(core: Arc<Core>, router: axum::Router, client: Client, prefix: &str) -> anyhow::Result<Reads> {
        let (seen_tx, seen) = watch::channel(0);
        let (progress, stop) = (Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
        let current = Arc::new(AtomicBool::new(false));
        let copy = Copy {
            core,
            reader: Etcd::reader(client.clone(), prefix),
            client: client.clone(),
            prefix: prefix.to_string(),
            seen: seen_tx,
            progress: progress.clone(),
            stop: stop.clone(),
            current: current.clone(),
        };
        std::thread::Builder::new().name("skiff-follow".into()).spawn(move || copy.run())?;
        Ok(Reads { router, seen, progress, stop, current, owed: AtomicI64::new(0), client, prefix: prefix.to_string() })
    }

    /// Whether the copy follows the store now; while it does not, reads go to
    /// the leader like every other call (and fail as clearly when there is none).
    pub(crate) fn is_current(&self) -> bool {
        self.current.load(Ordering::SeqCst)
    }

    /// The store revision the working set shows.
    pub(crate) fn revision(&self) -> i64 {
        *self.seen.borrow()
    }

    /// Whether this server answers reads from its copy now: the copy follows
    /// the store and shows every write forwarded through this server. While it
    /// does not, reads go to the leader, so that no client of this server reads
    /// older state than it wrote (nor is refused a token it just made).
    pub(crate) fn can_answer(&self) -> bool {
        if !self.is_current() {
            return false;
        }
        if self.revision() >= self.owed.load(Ordering::SeqCst) {
            return true;
        }
        // Writes elsewhere in etcd (outside this cluster's prefix) move its
        // revision without an event here: ask for the progress report that
        // moves the copy past them, or it would never catch up while idle.
        self.progress.notify_one();
        false
    }

    /// Waits until the working set shows every write committed before now (at
    /// most [`CATCH_UP`]).
    pub(crate) async fn catch_up(&self) {
        let want = match etcd::revision(&self.client, &self.prefix).await {
            Ok(want) => want,
            Err(e) => {
                tracing::warn!("reading etcd's revision after a forwarded write: {e}");
                return;
            }
        };
        self.owed.fetch_max(want, Ordering::SeqCst);
        let mut seen = self.seen.clone();
        let waited = tokio::time::timeout(CATCH_UP, async {
            while *seen.borrow_and_update() < want {
                // A write elsewhere in etcd moves its revision without an event
                // here: etcd's progress report says when nothing is left.
                self.progress.notify_one();
                let _ = tokio::time::timeout(Duration::from_millis(100), seen.changed()).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::info!(
                "this server's copy did not reach revision {want} within {CATCH_UP:?}; its reads go to the leader until it does"
            );
        }
    }
}

/// What the watch delivers to the copy.
enum Feed {
    /// Changed keys of the working set (a value, or `None`: deleted), whether
    /// tokens or node credentials changed, and the revision the copy then shows.
    Changes { changes: Vec<(String, Option<Vec<u8>>)>, auth: bool, revision: i64 },
    /// The watch ended (etcd unreachable, or the history compacted): copy anew.
    Lost(String),
}

/// The copy's owner, on a thread of its own.
struct Copy {
    core: Arc<Core>,
    reader: Etcd,
    client: Client,
    prefix: String,
    seen: watch::Sender<i64>,
    progress: Arc<Notify>,
    stop: Arc<AtomicBool>,
    current: Arc<AtomicBool>,
}

impl Copy {
    fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            let synced = self.sync();
            self.current.store(false, Ordering::SeqCst);
            if let Err(e) = synced {
                tracing::warn!("following the store: {e}; copying it again");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    /// Copies the tables at one revision, then applies the watch's changes
    /// from there until the watch ends or the copy is stopped.
    fn sync(&self) -> anyhow::Result<()> {
        let mut tables = BTreeMap::new();
        let mut revision = 0;
        for table in WORKING_SET {
            let (kvs, at) = self.reader.range_at(table, revision)?;
            revision = at;
            tables.extend(kvs);
        }
        let (tx, rx) = mpsc::channel();
        let feed = etcd::rt_spawn(watch_changes(
            self.client.clone(),
            self.prefix.clone(),
            revision + 1,
            tx,
            self.progress.clone(),
        ));
        let _stop_feed = AbortOnDrop(feed.abort_handle());
        self.rebuild(&tables, true)?;
        self.seen.send_replace(revision);
        self.current.store(true, Ordering::SeqCst);
        while !self.stop.load(Ordering::SeqCst) {
            let first = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(f) => f,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("the watch stopped"),
            };
            let (mut changed, mut auth) = (false, false);
            // Replicas changed, in order, while nothing else of the working set
            // did (meta aside): those are applied in place, not rebuilt.
            let mut replicas: Option<Vec<(String, Option<skiff_api::Replica>)>> = Some(Vec::new());
            for feed in std::iter::once(first).chain(rx.try_iter()) {
                match feed {
                    Feed::Lost(why) => anyhow::bail!(why),
                    Feed::Changes { changes, auth: a, revision: r } => {
                        for (k, v) in changes {
                            changed = true;
                            if let Some(list) = &mut replicas {
                                match (k.strip_prefix("replicas/"), &v) {
                                    (Some(id), Some(v)) => match serde_json::from_slice(v) {
                                        Ok(r) => list.push((id.to_string(), Some(r))),
                                        Err(_) => replicas = None,
                                    },
                                    (Some(id), None) => list.push((id.to_string(), None)),
                                    (None, _) if k.starts_with("meta/") => {}
                                    (None, _) => replicas = None,
                                }
                            }
                            match v {
                                Some(v) => tables.insert(k, v),
                                None => tables.remove(&k),
                            };
                        }
                        auth |= a;
                        revision = revision.max(r);
                    }
                }
            }
            match replicas {
                Some(list) if changed && !auth => self.core.state().update_copy(|m| m.apply_replicas(list)),
                _ if changed || auth => self.rebuild(&tables, auth)?,
                _ => {}
            }
            self.seen.send_replace(revision);
            if changed {
                std::thread::sleep(REBUILD_EVERY);
            }
        }
        Ok(())
    }

    /// Puts a working set rebuilt from `tables` in place (and the tokens, when
    /// `auth` says they changed).
    fn rebuild(&self, tables: &BTreeMap<String, Vec<u8>>, auth: bool) -> anyhow::Result<()> {
        let loaded = etcd::decode_tables(|table| {
            let end = etcd::prefix_end(table.as_bytes());
            let end = String::from_utf8_lossy(&end).into_owned();
            Ok(tables.range(table.to_string()..end).map(|(k, v)| (k.clone(), v.clone())).collect())
        })?;
        let mem = crate::state::Mem::from_loaded(loaded);
        let mut state = self.core.state();
        state.replace_mem(mem);
        if auth {
            self.core.auth.reload(state.store())?;
        }
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the working set's changes under `prefix` from revision `from` to
/// `tx`, and asks etcd for a progress report whenever `progress` is notified.
async fn watch_changes(mut client: Client, prefix: String, from: i64, tx: mpsc::Sender<Feed>, progress: Arc<Notify>) {
    let opts = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut stream = match client.watch(prefix.clone(), Some(opts)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Feed::Lost(format!("watching {prefix}: {e}")));
            return;
        }
    };
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = progress.notified() => {
                let _ = stream.request_progress().await;
                continue;
            }
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                let _ = tx.send(Feed::Lost("etcd ended the watch".into()));
                return;
            }
            Err(e) => {
                let _ = tx.send(Feed::Lost(format!("the watch failed: {e}")));
                return;
            }
        };
        if resp.canceled() || resp.compact_revision() != 0 {
            let why = format!("etcd cancelled the watch ({})", resp.cancel_reason());
            let _ = tx.send(Feed::Lost(why));
            return;
        }
        if resp.created() {
            // Its revision is etcd's now, not what has been delivered.
            continue;
        }
        let (mut changes, mut auth, mut revision) = (Vec::new(), false, 0);
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key());
            let Some(key) = key.strip_prefix(&prefix) else { continue };
            if WORKING_SET.iter().any(|t| key.starts_with(t)) {
                let value = (e.event_type() == EventType::Put).then(|| kv.value().to_vec());
                changes.push((key.to_string(), value));
            } else if key.starts_with("tokens/") || key.starts_with("node-credentials/") {
                auth = true;
            }
        }
        if resp.events().is_empty() {
            // A progress report: every event up to its revision was delivered.
            revision = resp.header().map_or(0, |h| h.revision());
        }
        if tx.send(Feed::Changes { changes, auth, revision }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_answer_the_object_views_and_forward_the_rest() {
        let read = |m: Method, p: &str| is_cached_read(&m, p);
        for p in [
            "/",
            "/assets/app.js",
            "/v1/deployments",
            "/v1/deployments/web",
            "/v1/deployments/web/revisions",
            "/v1/replicas",
            "/v1/nodes",
            "/v1/nodes/n1",
            "/v1/events",
            "/v1/images",
            "/v1/secrets",
            "/v1/volumes",
            "/v1/tokens",
            "/v1/openapi.json",
            "/metrics",
            "/v1/prometheus/targets",
        ] {
            assert!(read(Method::GET, p), "{p} should be read from the copy");
        }
        for p in [
            "/v1/nodes/n1/assignments",
            "/v1/deployments/web/logs",
            "/v1/watch",
            "/v1/endpoints",
            "/v1/blobs/sha256:00",
        ] {
            assert!(!read(Method::GET, p), "{p} should go to the leader");
        }
        assert!(!read(Method::PUT, "/v1/deployments/web"));
        assert!(!read(Method::POST, "/v1/deployments/web/scale"));
        assert!(!read(Method::DELETE, "/v1/nodes/n1"));
    }
}
