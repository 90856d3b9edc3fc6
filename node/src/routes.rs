//! What this node's ingress can reach in-process: the HTTP components served
//! here and the container replicas serving HTTP on the bridge, by deployment.
//! A run adds its replica while it is ready and holds a [`Routed`] guard;
//! dropping the guard (readiness lost, the run ended or was stopped) takes it
//! out at once, while requests in flight keep their own reference and finish.
//!
//! Shared by the ingress (which reads), the HTTP runtime and containers (which
//! route), so none of them needs another's module for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Something the ingress routes to, under its deployment's name.
pub trait Routable: Send + Sync {
    /// The deployment it serves.
    fn deployment(&self) -> &str;
}

/// Routable entries by deployment.
#[derive(Debug)]
pub struct Table<T> {
    map: Mutex<HashMap<String, Vec<Arc<T>>>>,
    /// Bumped whenever an entry is added: requests held for a deployment at
    /// zero (`activation`) wait on it for their replica to become routable.
    added: tokio::sync::watch::Sender<u64>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { map: Mutex::new(HashMap::new()), added: tokio::sync::watch::Sender::new(0) }
    }
}

impl<T: Routable> Table<T> {
    /// The entries of `deployment` now.
    pub fn get(&self, deployment: &str) -> Vec<Arc<T>> {
        self.lock().get(deployment).cloned().unwrap_or_default()
    }

    /// Routes to `entry` until the returned guard drops.
    pub fn add(self: &Arc<Self>, entry: Arc<T>) -> Routed<T> {
        self.lock().entry(entry.deployment().to_string()).or_default().push(entry.clone());
        self.added.send_modify(|n| *n += 1);
        Routed { table: self.clone(), entry }
    }

    /// A receiver that changes whenever an entry is added.
    pub fn additions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.added.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<T>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps an entry routed; unroutes it when dropped.
pub struct Routed<T: Routable> {
    table: Arc<Table<T>>,
    entry: Arc<T>,
}

impl<T: Routable> Drop for Routed<T> {
    fn drop(&mut self) {
        let mut map = self.table.lock();
        let deployment = self.entry.deployment();
        if let Some(list) = map.get_mut(deployment) {
            list.retain(|e| !Arc::ptr_eq(e, &self.entry));
            if list.is_empty() {
                map.remove(deployment);
            }
        }
    }
}

/// A container replica on this node that serves HTTP at `addr`.
#[derive(Debug)]
pub struct Upstream {
    /// Replica id.
    pub id: String,
    /// Its deployment.
    pub deployment: String,
    /// Its bridge address and HTTP port.
    pub addr: SocketAddr,
    /// Where the ingress counts the requests it passes on and their answers.
    pub usage: Arc<crate::metrics::Usage>,
}

impl Routable for Upstream {
    fn deployment(&self) -> &str {
        &self.deployment
    }
}

/// The node's ingress as a run that serves HTTP behind it sees it.
#[derive(Debug, Default)]
pub struct IngressLink {
    /// Container replicas the ingress routes to.
    pub upstreams: Arc<Table<Upstream>>,
    /// The host suffix that names a deployment (`NAME.<suffix>`).
    pub suffix: String,
    /// The ingress's address on this node, given to containers as `SKIFF_INGRESS`.
    pub addr: Option<SocketAddr>,
}
