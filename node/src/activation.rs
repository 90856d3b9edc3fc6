//! Activation: the ingress holding requests for a deployment that scales to
//! zero while one of its replicas starts.
//!
//! A request for such a deployment (the endpoints table names it in
//! `scale_to_zero`) that finds no ready replica joins the deployment's
//! [`Activation`] on this node, or starts one: concurrent requests share it,
//! up to `--activation-queue` of them (more get 503 with `Retry-After`). The
//! first one's task asks the scheduler (`POST /v1/deployments/NAME/activate`,
//! the node's credential) to scale the deployment from zero; the scheduler
//! does so once, however many nodes ask at once, places the replica as any
//! other, and answers its ready endpoints as soon as it has one. Meanwhile the
//! held requests watch this node's own routes (a replica placed here is
//! served the moment it is routable, before the scheduler hears it is ready)
//! and the endpoints table; whichever shows a replica first serves them. A
//! request still held after `--activation-timeout` gets 504.
//!
//! Nothing here runs per deployment while no request waits: an activation
//! lives while requests are held, so a node routes any number of deployments
//! at zero for the cost of their names in the endpoints table.

use skiff_api::{ActivateRequest, Client, ClientError, Endpoint};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Default of `--activation-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--activation-queue`.
pub const DEFAULT_QUEUE: usize = 1000;
/// How long one call to the scheduler waits for a ready endpoint before the
/// task asks again (and sees whether anyone still waits).
const ASK_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed call to the scheduler (it may be electing a leader).
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(200);

/// Where an activation stands, as its held requests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A replica is being started.
    Starting,
    /// The deployment's ready endpoints, as the scheduler answered them.
    Ready(Vec<Endpoint>),
    /// It cannot be activated: the scheduler's answer, with its status.
    Failed(u16, String),
}

/// One deployment's activation on this node: the requests it holds and where it stands.
#[derive(Debug)]
pub struct Activation {
    waiting: AtomicUsize,
    outcome: watch::Sender<Outcome>,
}

impl Activation {
    /// A receiver of where it stands.
    pub fn outcome(&self) -> watch::Receiver<Outcome> {
        self.outcome.subscribe()
    }
}

/// A held request's place in an activation; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct Ticket {
    pub activation: Arc<Activation>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.activation.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The activation queue of a deployment is full.
#[derive(Debug, thiserror::Error)]
#[error("{0} requests for {1} already wait for it to start (--activation-queue)")]
pub struct Full(pub usize, pub String);

/// This node's activations under way, by deployment.
#[derive(Debug)]
pub struct Activations {
    map: Mutex<HashMap<String, Arc<Activation>>>,
    /// Most requests held per deployment.
    queue: usize,
}

impl Activations {
    pub fn new(queue: usize) -> Activations {
        Activations { map: Mutex::new(HashMap::new()), queue: queue.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Activation>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a request for `name`: a place in its activation under way, or in
    /// a new one (then `true`: the caller starts it with [`Activations::run`]).
    pub fn join(&self, name: &str) -> Result<(Ticket, bool), Full> {
        let mut map = self.lock();
        if let Some(a) = map.get(name) {
            // Places are taken under the map's lock, so the task cannot end
            // between this check and the request's wait.
            let n = a.waiting.load(Ordering::Acquire);
            if n >= self.queue {
                return Err(Full(n, name.to_string()));
            }
            a.waiting.fetch_add(1, Ordering::AcqRel);
            return Ok((Ticket { activation: a.clone() }, false));
        }
        let a = Arc::new(Activation { waiting: AtomicUsize::new(1), outcome: watch::Sender::new(Outcome::Starting) });
        map.insert(name.to_string(), a.clone());
        Ok((Ticket { activation: a }, true))
    }

    /// Activations under way (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends `a` (the activation of `name`) with `outcome`, unless requests
    /// still wait and it is only `None` (nobody waits any more: it just ends).
    fn finish(&self, name: &str, a: &Arc<Activation>, outcome: Option<Outcome>) -> bool {
        let mut map = self.lock();
        if outcome.is_none() && a.waiting.load(Ordering::Acquire) > 0 {
            return false;
        }
        if map.get(name).is_some_and(|m| Arc::ptr_eq(m, a)) {
            map.remove(name);
        }
        drop(map);
        if let Some(o) = outcome {
            a.outcome.send_replace(o);
        }
        true
    }

    /// The task of activation `a` of `name`: asks the scheduler for a replica
    /// for `request` until it answers a ready endpoint, says it cannot, or no
    /// request waits any more. Errors reaching the scheduler (a leader
    /// change) are retried: the scheduler's scaling from zero is idempotent.
    pub async fn run(self: Arc<Self>, client: Client, name: String, request: ActivateRequest, a: Arc<Activation>) {
        let started = Instant::now();
        loop {
            if self.finish(&name, &a, None) {
                return;
            }
            let asked = Instant::now();
            match client.activate(&name, &request, ASK_WAIT).await {
                Ok(r) if !r.endpoints.is_empty() => {
                    tracing::debug!(deployment = %name, activated = r.activated, "activated in {:?}", started.elapsed());
                    self.finish(&name, &a, Some(Outcome::Ready(r.endpoints)));
                    return;
                }
                Ok(_) => {
                    // Not ready yet: ask again (a call answered early waits a little first).
                    if asked.elapsed() < Duration::from_millis(100) {
                        tokio::time::sleep(RETRY_AFTER_ERROR).await;
                    }
                }
                Err(ClientError::Api { status, message }) if matches!(status, 400 | 403 | 404 | 409) => {
                    tracing::debug!(deployment = %name, "the scheduler refused to activate it: {message}");
                    self.finish(&name, &a, Some(Outcome::Failed(status, message)));
                    return;
                }
                Err(e) => {
                    tracing::warn!(deployment = %name, "cannot ask the scheduler to activate it: {e}; retrying");
                    tokio::time::sleep(RETRY_AFTER_ERROR).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_requests_share_one_activation_within_the_queue() {
        let acts = Activations::new(2);
        let (t1, first) = acts.join("web").expect("a place");
        assert!(first, "the first request starts the activation");
        let (t2, second) = acts.join("web").expect("a place");
        assert!(!second, "the second joins it");
        assert!(Arc::ptr_eq(&t1.activation, &t2.activation));
        let full = acts.join("web").expect_err("the queue holds two");
        assert_eq!(full.to_string(), "2 requests for web already wait for it to start (--activation-queue)");
        // Another deployment has its own.
        let (_other, first) = acts.join("api").expect("a place");
        assert!(first);
        drop(t2);
        let (t3, again) = acts.join("web").expect("a place freed");
        assert!(!again);
        // Ends only once nobody waits, or with an outcome for those who do.
        let a = t1.activation.clone();
        assert!(!acts.finish("web", &a, None), "requests still wait");
        let rx = a.outcome();
        assert!(acts.finish("web", &a, Some(Outcome::Failed(404, "gone".into()))));
        assert_eq!(*rx.borrow(), Outcome::Failed(404, "gone".into()));
        drop((t1, t3));
        let (_t, first) = acts.join("web").expect("a place");
        assert!(first, "a finished activation is not joined again");
        assert_eq!(acts.len(), 2);
    }
}
