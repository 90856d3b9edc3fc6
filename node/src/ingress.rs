//! The ingress every node runs: an HTTP/1.1 proxy that routes a request to one of
//! its deployment's ready replicas anywhere in the cluster.
//!
//! A request names its deployment by `Host: NAME.<suffix>` (`skiff.local` unless
//! configured) or by the path prefix `/d/NAME/` (removed before the handler sees
//! the path). Requests go round robin over every ready replica in the cluster, a
//! local one (served in-process) weighing twice a remote one (reached through the
//! ingress of the node that runs it, as the scheduler's endpoints table, watched
//! with a blocking query, says). A connection error to a node is retried once on
//! another node, then on a local replica, for idempotent methods.
//!
//! Draining: a stopped replica is unrouted at once on its node, while requests in
//! flight finish under their own deadline. Another node may still send it requests
//! until its copy of the table catches up; the owning node then passes them on to
//! a replica elsewhere (one extra hop at most, marked by `x-skiff-hop`) rather
//! than fail them.
//!
//! Scale to zero: a request for a deployment the table names in
//! `scale_to_zero` that finds no ready replica is held while one starts (see
//! [`crate::activation`]): served as soon as a replica is routable here or
//! listed elsewhere; 503 with `Retry-After` past `--activation-queue` held
//! requests, 504 past `--activation-timeout`.
//!
//! Answers of its own: 404 for a deployment that does not exist, 503 with
//! `Retry-After` when none of its replicas is ready, 502 when no replica could be
//! reached, 403 for a call across namespaces from a container of a namespace
//! with `isolation: namespace`. Each is one line of text.
//!
//! Namespace isolation (#20): the ingress names a caller by its connection's
//! peer address. One of a container on this node's bridge is that container's
//! (see `ContainerRuntime::caller` for why it cannot be another's), so its
//! replica's deployment and namespace; when the endpoints table lists that
//! namespace in `isolated`, a request for a deployment of another namespace is
//! refused before it is routed. Callers from anywhere else (the host, other
//! machines, other nodes' ingresses passing a request on) are not named.
//!
//! Metrics: the ingress a client reached counts the request by deployment and
//! status code, and times it to the response head (`docs/metrics.md`).

use crate::activation::{Activations, Outcome};
pub use crate::container::Caller;
use crate::http::{Body, BoxError, HttpReplica, HttpRuntime, text};
use crate::routes::{Table, Upstream};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use skiff_api::{ActivateRequest, Client, ClientError, Endpoint, Endpoints, Split};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Header naming the deployment on a request one ingress passes to another.
const DEPLOYMENT_HEADER: &str = "x-skiff-deployment";
/// Header counting ingress-to-ingress hops, so a request never circles.
const HOP_HEADER: &str = "x-skiff-hop";
/// Header pinning a request to one revision of a deployment whose requests
/// are split (a canary): sent by a client to try a revision by hand, and by
/// an ingress passing on a request whose revision it chose.
const REVISION_HEADER: &str = "x-skiff-revision";
/// Hops a request may take between ingresses.
const MAX_HOPS: u32 = 2;
/// Largest request body passed to another node (it is held to be retried).
const MAX_FORWARD_BODY: usize = 16 << 20;
/// How many remote replicas' worth of requests a local replica takes.
const LOCAL_WEIGHT: usize = 2;
/// How long one endpoints query may block on the scheduler.
const WATCH_WAIT: Duration = Duration::from_secs(30);

/// A node's ingress.
pub struct Ingress {
    runtime: Arc<HttpRuntime>,
    /// Container replicas on this node serving HTTP.
    upstreams: Arc<Table<Upstream>>,
    node: String,
    suffix: String,
    table: RwLock<Option<Endpoints>>,
    /// Bumped whenever the table is replaced (held requests wait on it).
    table_changed: tokio::sync::watch::Sender<u64>,
    next: AtomicUsize,
    /// Requests split so far (a canary's weight is applied in order over them).
    split_next: AtomicUsize,
    http: reqwest::Client,
    /// Requests held for deployments at zero, by deployment.
    activations: Arc<Activations>,
    /// The scheduler, as the endpoints watch reaches it (the node's credential).
    scheduler: OnceLock<Client>,
    /// Who is at a connection's peer address (the node's containers).
    callers: OnceLock<Callers>,
}

/// Names the caller at a peer address ([`crate::container::ContainerRuntime::caller`]).
pub type Callers = Box<dyn Fn(SocketAddr) -> Caller + Send + Sync>;

impl Ingress {
    /// The ingress of node `node`, serving its local HTTP components from
    /// `runtime` and passing requests to its local containers in `upstreams`.
    pub fn new(node: &str, runtime: Arc<HttpRuntime>, upstreams: Arc<Table<Upstream>>) -> anyhow::Result<Ingress> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            // A proxy passes redirects on to the client rather than follow them.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the ingress's http client: {e}"))?;
        let activations = Arc::new(Activations::new(runtime.config().activation_queue));
        Ok(Ingress {
            suffix: runtime.config().suffix.trim_matches('.').to_ascii_lowercase(),
            runtime,
            upstreams,
            node: node.to_string(),
            table: RwLock::new(None),
            table_changed: tokio::sync::watch::Sender::new(0),
            next: AtomicUsize::new(0),
            split_next: AtomicUsize::new(0),
            http,
            activations,
            scheduler: OnceLock::new(),
            callers: OnceLock::new(),
        })
    }

    /// Sets who names the callers of requests (the node's container runtime),
    /// for namespace isolation; without it every caller is outside.
    pub fn set_callers(&self, callers: Callers) {
        let _ = self.callers.set(callers);
    }

    /// Sets the endpoints table (the watcher does; tests may).
    pub fn set_table(&self, table: Endpoints) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Some(table);
        self.table_changed.send_modify(|n| *n += 1);
    }

    /// Applies a delta of the endpoints table (`Endpoints::delta`) to the
    /// table in place: O(changed deployments), not O(deployments) as
    /// re-parsing and replacing a 100,000-name table is (#17). False (nothing
    /// applied) when there is no table to apply it to.
    pub fn apply_changes(&self, changes: Endpoints) -> bool {
        {
            let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
            let Some(table) = guard.as_mut() else { return false };
            table.apply(changes);
        }
        self.table_changed.send_modify(|n| *n += 1);
        true
    }

    /// Accepts connections on `listener` forever.
    ///
    /// Connections are accepted and served on the HTTP guests' runtime, where
    /// each request's instance runs: a request then never wakes a thread of
    /// another runtime (its socket's readiness, the instance's task and the
    /// response all stay with the same workers). The node's own runtime, with
    /// the agent and heartbeats, is still apart from the guests.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        // Registered anew with the guests' runtime's reactor.
        let listener = listener.into_std().map_err(|e| anyhow::anyhow!("cannot move the ingress listener: {e}"))?;
        let guests = self.runtime.guest_handle();
        let accept = guests.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| anyhow::anyhow!("cannot register the ingress listener: {e}"))?;
            self.accept(listener).await
        });
        // Dropping this future (the node stopping) stops the accept loop too.
        let _abort = AbortOnDrop(accept.abort_handle());
        accept.await.map_err(|e| anyhow::anyhow!("the ingress accept loop failed: {e}"))?
    }

    async fn accept(self: Arc<Self>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, most likely: wait, don't spin.
                    tracing::warn!("ingress cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Responses are written whole or streamed by the guest: never hold
            // a small last segment back for an ACK (as `wasmtime serve` does).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("ingress cannot set TCP_NODELAY: {e}");
            }
            let ingress = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let ingress = ingress.clone();
                    async move { Ok::<_, Infallible>(ingress.handle(req, peer).await) }
                });
                let io = wasmtime_wasi_http::io::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                    tracing::debug!("ingress connection ended: {e}");
                }
            });
        }
    }

    /// Watches the scheduler's endpoints table forever.
    pub async fn watch(self: Arc<Self>, client: Client) -> anyhow::Result<()> {
        let _ = self.scheduler.set(client.clone());
        let mut index = 0u64;
        let mut down_since: Option<Instant> = None;
        loop {
            let asked = Instant::now();
            match client.endpoint_changes(index, WATCH_WAIT).await {
                Ok(table) => {
                    if let Some(since) = down_since.take() {
                        tracing::info!("endpoints watch works again after {:.1}s", since.elapsed().as_secs_f64());
                    }
                    let unchanged = table.index == index;
                    let new = table.index;
                    if !table.delta {
                        self.set_table(table);
                    } else if !self.apply_changes(table) {
                        // A delta with no table to apply it to: ask for the whole one.
                        index = 0;
                        continue;
                    }
                    index = new;
                    if unchanged && asked.elapsed() < Duration::from_millis(500) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e @ ClientError::Api { status: 401 | 403, .. }) => {
                    // The client carries the join token until the agent has
                    // registered (then the node's credential, shared with this
                    // client), or a revoked credential until it joins again.
                    tracing::debug!("the scheduler refused the endpoints watch: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    // Keep routing by the last table: replicas keep running while
                    // the scheduler is away.
                    if down_since.is_none() {
                        tracing::warn!("watching endpoints failed: {e}; routing by the last table and retrying");
                        down_since = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Routes one request that came from `peer`, counting it in the node's
    /// metrics (at the first ingress only: one passed on by another was
    /// counted there).
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if header_str(req.headers(), HOP_HEADER).is_some() {
            return self.dispatch(req, peer, &AtomicU64::new(0)).await;
        }
        let start = Instant::now();
        let name = route(&req, &self.suffix).map(|(name, _)| name);
        // The revision a split chose for it (0: none), for the metric's label.
        let chosen = AtomicU64::new(0);
        let resp = self.dispatch(req, peer, &chosen).await;
        // A name that no deployment has is the client's to choose: counted
        // under "" so that the labels stay bounded by the deployments.
        let deployment = name.filter(|n| self.exists(n)).unwrap_or_default();
        let revision = match chosen.load(Ordering::Relaxed) {
            0 => String::new(),
            n => n.to_string(),
        };
        crate::metrics::METRICS.ingress_request(&deployment, resp.status().as_u16(), &revision, start.elapsed());
        resp
    }

    /// Whether deployment `name` exists, as far as this node knows.
    fn exists(&self, name: &str) -> bool {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.as_ref().is_some_and(|t| t.deployments.contains_key(name)) || !self.local(name).is_empty()
    }

    async fn dispatch(&self, mut req: Request<Incoming>, peer: SocketAddr, chosen_out: &AtomicU64) -> Response<Body> {
        let hops: u32 = header_str(req.headers(), HOP_HEADER).and_then(|h| h.parse().ok()).unwrap_or(0);
        // The request as the client sent it, for the event of an activation.
        let line = ActivateRequest {
            method: req.method().to_string(),
            host: header_str(req.headers(), http::header::HOST.as_str()).unwrap_or_default().to_string(),
            path: req.uri().path().to_string(),
        };
        let Some((name, path)) = route(&req, &self.suffix) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no deployment named in the request: use Host: NAME.{} or the path /d/NAME/", self.suffix),
            );
        };
        // `/d/NS/NAME/` (#20): NAME of namespace NS, when that deployment exists.
        let (name, path) = namespaced_path(name, path, |key| self.exists(key));
        if let Some(path) = path {
            match http::Uri::try_from(path) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return text(StatusCode::BAD_REQUEST, "the path after /d/NAME is not a valid request path"),
            }
        }

        // Blue/green's preview name: `NAME--preview` reaches only the new revision of NAME.
        let (name, preview) = match self.preview_of(&name) {
            Some((base, revision)) => (base, Some(revision)),
            None => (name, None),
        };
        // Before anything routes it, a request passed on included: a container
        // could send the hop headers itself.
        if let Some(refused) = self.isolation(peer, &name) {
            return refused;
        }
        let mut local = self.local(&name);
        let asked: Option<u64> =
            preview.or_else(|| header_str(req.headers(), REVISION_HEADER).and_then(|v| v.trim().parse().ok()));
        // A request another ingress passed on is served here if it can be:
        // passing it on again could make it circle.
        if hops > 0 && !local.is_empty() {
            // By the revision the first ingress chose, when it split.
            if let Some(rev) = asked {
                let of_rev = self.of_revision(&name, &local, rev);
                if !of_rev.is_empty() {
                    local = of_rev;
                }
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed) % local.len();
            return self.serve_local(&name, &local[i], req).await;
        }
        let (mut remote, zero, split): (Vec<Endpoint>, bool, Option<Split>) = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            let zero = table.as_ref().is_some_and(|t| t.scale_to_zero.contains(&name));
            let split = table.as_ref().and_then(|t| t.splits.get(&name)).cloned();
            let remote = match table.as_ref().map(|t| t.deployments.get(&name)) {
                Some(Some(eps)) => eps.iter().filter(|e| e.node != self.node).cloned().collect(),
                // A table that has not caught up with a replica running here.
                _ if !local.is_empty() => Vec::new(),
                None => {
                    return unavailable("this node has not received the endpoints table from the scheduler yet");
                }
                Some(None) => {
                    return text(
                        StatusCode::NOT_FOUND,
                        &format!("no deployment named {name}; `skiff get deployments` lists them"),
                    );
                }
            };
            (remote, zero, split)
        };
        // A canary: the revision first (by weight, or as the request asks),
        // then a replica of it.
        if let Some(split) = split {
            let pinned = asked.filter(|r| *r == split.stable || *r == split.canary);
            let want = pinned.unwrap_or_else(|| {
                // Over every 100 requests in a row exactly `weight` go to the
                // canary, spread evenly (37 is prime to 100).
                let k = self.split_next.fetch_add(1, Ordering::Relaxed);
                if (k % 100 * 37) % 100 < split.weight as usize { split.canary } else { split.stable }
            });
            let other = if want == split.canary { split.stable } else { split.canary };
            let mut chosen = want;
            let (mut l, mut r) = (self.of_revision(&name, &local, want), remote_of(&remote, want));
            if l.is_empty() && r.is_empty() {
                if pinned.is_some() {
                    return unavailable(&format!("no ready replica of revision {want} of {name} ({REVISION_HEADER})"));
                }
                // None of the chosen revision is ready (a table catching up):
                // the other serves rather than fail the request.
                chosen = other;
                (l, r) = (self.of_revision(&name, &local, other), remote_of(&remote, other));
            }
            if !l.is_empty() || !r.is_empty() {
                (local, remote) = (l, r);
                req.headers_mut().insert(HeaderName::from_static(REVISION_HEADER), header_value(&chosen.to_string()));
                chosen_out.store(chosen, Ordering::Relaxed);
            }
        }
        let remote = if hops >= MAX_HOPS { Vec::new() } else { remote };
        if local.is_empty() && remote.is_empty() {
            if zero {
                return self.hold(&name, req, line, hops).await;
            }
            return unavailable(&format!("no ready replica of {name}; `skiff describe deployment {name}` says why"));
        }
        // Weighted round robin over every ready replica of the cluster, a local
        // one counting LOCAL_WEIGHT times: local replicas take more (no extra
        // hop) and every replica still takes its share.
        let slots = local.len() * LOCAL_WEIGHT + remote.len();
        let k = self.next.fetch_add(1, Ordering::Relaxed) % slots;
        if k < local.len() * LOCAL_WEIGHT {
            return self.serve_local(&name, &local[k % local.len()], req).await;
        }
        let first = k - local.len() * LOCAL_WEIGHT;
        self.forward(&name, req, &remote, first, hops, &local).await
    }

    /// Holds a request for deployment `name`, which scales to zero and has no
    /// ready replica, while one starts (joining the activation under way on
    /// this node, or starting it); serves it on the first replica routable
    /// here or listed elsewhere. 503 when too many wait already, 504 when none
    /// is ready within the activation timeout.
    async fn hold(&self, name: &str, req: Request<Incoming>, line: ActivateRequest, hops: u32) -> Response<Body> {
        let timeout = self.runtime.config().activation_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(client) = self.scheduler.get().cloned() else {
            return unavailable("this node has not reached the scheduler yet");
        };
        let ticket = match self.activations.join(name) {
            Ok((ticket, first)) => {
                if first {
                    let task = self.activations.clone().run(client, name.to_string(), line, ticket.activation.clone());
                    tokio::spawn(task);
                }
                ticket
            }
            Err(full) => return unavailable(&full.to_string()),
        };
        // Subscribed before looking, so that no change between the look and
        // the wait is missed.
        let mut wasm = self.runtime.local_additions();
        let mut containers = self.upstreams.additions();
        let mut table = self.table_changed.subscribe();
        let mut outcome = ticket.activation.outcome();
        loop {
            wasm.borrow_and_update();
            containers.borrow_and_update();
            table.borrow_and_update();
            let now = outcome.borrow_and_update().clone();
            let local = self.local(name);
            if !local.is_empty() {
                drop(ticket);
                let i = self.next.fetch_add(1, Ordering::Relaxed) % local.len();
                return self.serve_local(name, &local[i], req).await;
            }
            let mut remote: Vec<Endpoint> = {
                let t = self.table.read().unwrap_or_else(|e| e.into_inner());
                t.as_ref().and_then(|t| t.deployments.get(name)).cloned().unwrap_or_default()
            };
            match now {
                Outcome::Ready(eps) if remote.is_empty() => remote = eps,
                Outcome::Failed(status, message) => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                    let status = if status == StatusCode::NOT_FOUND { status } else { StatusCode::BAD_GATEWAY };
                    return text(status, &format!("cannot start a replica of {name}: {message}"));
                }
                _ => {}
            }
            // A replica of this node is served from `local` once routable here.
            remote.retain(|e| e.node != self.node);
            if !remote.is_empty() && hops < MAX_HOPS {
                drop(ticket);
                let first = self.next.fetch_add(1, Ordering::Relaxed) % remote.len();
                return self.forward(name, req, &remote, first, hops, &[]).await;
            }
            tokio::select! {
                _ = wasm.changed() => {}
                _ = containers.changed() => {}
                _ = table.changed() => {}
                _ = outcome.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "no replica of {name} became ready within {}s (--activation-timeout); `skiff describe deployment {name}` says why",
                            timeout.as_secs_f64()
                        ),
                    );
                }
            }
        }
    }

    /// Sends the request to another node's ingress, starting with `remote[first]`;
    /// on a connection error tries once more on another node if the method is
    /// idempotent, and then on a local replica if there is one.
    async fn forward(
        &self,
        name: &str,
        req: Request<Incoming>,
        remote: &[Endpoint],
        first: usize,
        hops: u32,
        local: &[Local],
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_FORWARD_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "cannot read the request body (at most {} MiB pass between nodes): {e}",
                        MAX_FORWARD_BODY >> 20
                    ),
                );
            }
        };
        // Distinct nodes, from the round-robin position on.
        let mut targets: Vec<&Endpoint> = Vec::new();
        for i in 0..remote.len() {
            let e = &remote[(first + i) % remote.len()];
            if !targets.iter().any(|t| t.ingress == e.ingress) {
                targets.push(e);
            }
        }
        let attempts = if idempotent(&parts.method) { 2 } else { 1 };
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let mut last_error = String::new();
        for target in targets.iter().take(attempts) {
            let url = format!("{}{}", target.ingress.trim_end_matches('/'), path);
            let mut headers = without_hop_by_hop(&parts.headers);
            headers.insert(HeaderName::from_static(DEPLOYMENT_HEADER), header_value(name));
            headers.insert(HeaderName::from_static(HOP_HEADER), header_value(&(hops + 1).to_string()));
            let sent = self.http.request(parts.method.clone(), &url).headers(headers).body(body.clone()).send().await;
            match sent {
                Ok(resp) => return relay(resp),
                Err(e) if e.is_connect() => {
                    tracing::debug!(deployment = %name, node = %target.node, "cannot reach ingress: {e}");
                    last_error = format!("cannot reach node {} at {}: {e}", target.node, target.ingress);
                }
                Err(e) => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        &format!("node {} failed the request for {name}: {e}", target.node),
                    );
                }
            }
        }
        if let Some(replica) = local.first()
            && (attempts > 1 || targets.is_empty())
        {
            let req = Request::from_parts(parts, http_body_util::Full::new(body));
            return self.serve_local(name, replica, req).await;
        }
        text(StatusCode::BAD_GATEWAY, &format!("no replica of {name} could be reached: {last_error}"))
    }

    /// The answer to a request for deployment `name` from `peer` when namespace
    /// isolation refuses it (#20), as [`refusal`] decides, counted.
    fn isolation(&self, peer: SocketAddr, name: &str) -> Option<Response<Body>> {
        let caller = self.callers.get().map_or(Caller::Outside, |callers| callers(peer));
        if caller == Caller::Outside {
            return None;
        }
        let refused = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            refusal(&caller, name, table.as_ref().map(|t| &t.isolated))?
        };
        Some(match refused {
            Refusal::NoTable(line) => unavailable(line),
            Refusal::Forbidden { namespace, line } => {
                tracing::debug!(%peer, deployment = %name, "{line}");
                crate::metrics::METRICS.isolation_refusals.with_label_values(&[&namespace, "container"]).inc();
                text(StatusCode::FORBIDDEN, &line)
            }
        })
    }

    /// The replicas of `name` this node serves: Wasm components, then containers.
    fn local(&self, name: &str) -> Vec<Local> {
        let wasm = self.runtime.local(name).into_iter().map(Local::Wasm);
        wasm.chain(self.upstreams.get(name).into_iter().map(Local::Container)).collect()
    }

    /// For `BASE--preview` while BASE is rolled out blue/green with a
    /// preview: BASE and its new revision.
    fn preview_of(&self, name: &str) -> Option<(String, u64)> {
        let base = name.strip_suffix("--preview")?;
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let split = table.as_ref()?.splits.get(base).filter(|s| s.preview)?;
        Some((base.to_string(), split.canary))
    }

    /// The replicas of `local` that run revision `revision` of `name`, as
    /// the endpoints table says (one it does not list yet is left out).
    fn of_revision(&self, name: &str, local: &[Local], revision: u64) -> Vec<Local> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let Some(eps) = table.as_ref().and_then(|t| t.deployments.get(name)) else { return Vec::new() };
        local.iter().filter(|l| eps.iter().any(|e| e.replica == l.id() && e.revision == revision)).cloned().collect()
    }

    /// Serves a request with a replica on this node, counting how it was
    /// answered toward the replica's figures (canary analysis).
    async fn serve_local<B>(&self, name: &str, replica: &Local, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error> + Into<BoxError>,
    {
        let start = Instant::now();
        match replica {
            Local::Wasm(r) => {
                r.count_request();
                let resp = self.runtime.handle(r, req).await;
                r.usage().add_response(resp.status().as_u16(), start.elapsed());
                resp
            }
            Local::Container(u) => {
                u.usage.add_request();
                let resp = self.proxy(name, u, req).await;
                u.usage.add_response(resp.status().as_u16(), start.elapsed());
                resp
            }
        }
    }

    /// Passes a request to a container on this node, at its bridge address; the
    /// `Host` header stays, so the server sees the name it was asked by.
    async fn proxy<B>(&self, name: &str, upstream: &Upstream, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_FORWARD_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "cannot read the request body (at most {} MiB pass to a container): {e}",
                        MAX_FORWARD_BODY >> 20
                    ),
                );
            }
        };
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url = format!("http://{}{}", upstream.addr, path);
        let mut headers = without_hop_by_hop(&parts.headers);
        headers.remove(DEPLOYMENT_HEADER);
        headers.remove(HOP_HEADER);
        if let Some(host) = parts.headers.get(http::header::HOST) {
            headers.insert(http::header::HOST, host.clone());
        }
        match self.http.request(parts.method.clone(), &url).headers(headers).body(body).send().await {
            Ok(resp) => relay(resp),
            Err(e) => text(
                StatusCode::BAD_GATEWAY,
                &format!("replica {} of {name} at {} failed the request: {e}", upstream.id, upstream.addr),
            ),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A replica on this node that the ingress hands requests to.
#[derive(Clone)]
enum Local {
    /// A Wasm HTTP component, served in-process.
    Wasm(Arc<HttpReplica>),
    /// A container serving HTTP at its bridge address.
    Container(Arc<Upstream>),
}

impl Local {
    fn id(&self) -> &str {
        match self {
            Local::Wasm(r) => &r.id,
            Local::Container(u) => &u.id,
        }
    }
}

/// The endpoints of `remote` that run revision `revision`.
fn remote_of(remote: &[Endpoint], revision: u64) -> Vec<Endpoint> {
    remote.iter().filter(|e| e.revision == revision).cloned().collect()
}

/// Why namespace isolation refuses a request.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// No endpoints table yet, so what is isolated is not known (503).
    NoTable(&'static str),
    /// 403: the caller's namespace (empty when unknown) and the line.
    Forbidden { namespace: String, line: String },
}

/// Whether namespace isolation refuses a request from `caller` for deployment
/// (key) `name`, given the namespaces the endpoints table lists as isolated
/// (`None`: no table yet). A container of an isolated namespace reaches only
/// its own namespace's deployments; a caller on the bridge that is no running
/// container reaches none while any namespace is isolated (its namespace
/// cannot be told); a caller from outside is not held.
fn refusal(caller: &Caller, name: &str, isolated: Option<&std::collections::BTreeSet<String>>) -> Option<Refusal> {
    let target = skiff_api::namespace::of(name);
    let (replica, own) = match caller {
        Caller::Outside => return None,
        Caller::Container { replica, deployment } => (replica, Some(skiff_api::namespace::of(deployment))),
        Caller::Unknown(_) => (&String::new(), None),
    };
    if own == Some(target) {
        return None;
    }
    let Some(isolated) = isolated else {
        return Some(Refusal::NoTable(
            "this node has not received the endpoints table from the scheduler yet (it says which namespaces are isolated)",
        ));
    };
    match (own, caller) {
        (Some(own), _) if isolated.contains(own) => Some(Refusal::Forbidden {
            namespace: own.to_string(),
            line: format!(
                "namespace {own} is isolated (isolation: namespace): its replica {replica} may call only namespace {own}'s deployments, not {} of namespace {target}",
                skiff_api::namespace::plain(name)
            ),
        }),
        (None, Caller::Unknown(ip)) if !isolated.is_empty() => Some(Refusal::Forbidden {
            namespace: String::new(),
            line: format!(
                "cannot tell which container calls from {ip} (no running container of this node has that address) while namespaces are isolated: refused"
            ),
        }),
        _ => None,
    }
}

/// 503 with `Retry-After`.
fn unavailable(line: &str) -> Response<Body> {
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, line);
    resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The deployment a request is for, and the path to pass on when it came by
/// path prefix.
pub fn route<B>(req: &Request<B>, suffix: &str) -> Option<(String, Option<String>)> {
    if let Some(name) = header_str(req.headers(), DEPLOYMENT_HEADER) {
        return valid(name).map(|n| (n, None));
    }
    let host = header_str(req.headers(), http::header::HOST.as_str()).or_else(|| req.uri().host());
    if let Some(host) = host {
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(name) = host.strip_suffix(suffix).and_then(|h| h.strip_suffix('.')) {
            return valid(name).map(|n| (n, None));
        }
    }
    let rest = req.uri().path().strip_prefix("/d/")?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let name = valid(name)?;
    let path = match req.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_string(),
    };
    Some((name, Some(path)))
}

/// A deployment's key as a request names it: `NAME` (in `default`), or, by
/// namespace (#20), `NAME.NS` in a host name and `NS/NAME` in the header.
fn valid(name: &str) -> Option<String> {
    let ok = |n: &str| skiff_api::manifest::validate_name(n).is_ok();
    match name.split_once('.').or_else(|| name.split_once('/').map(|(ns, n)| (n, ns))) {
        Some((n, ns)) if ok(n) && ok(ns) => Some(skiff_api::namespace::key(ns, n)),
        Some(_) => None,
        None => ok(name).then(|| name.to_string()),
    }
}

/// `/d/NS/NAME/...` (#20): [`route`] took `NS` for the name; when `NS/NAME` is a
/// deployment, that is the one, and the path goes on after `NAME`.
fn namespaced_path(name: String, path: Option<String>, exists: impl Fn(&str) -> bool) -> (String, Option<String>) {
    let Some(p) = &path else { return (name, path) };
    if name.contains('/') {
        return (name, path);
    }
    let rest = p.strip_prefix('/').unwrap_or(p);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let inner = &rest[..end];
    if skiff_api::manifest::validate_name(inner).is_err() {
        return (name, path);
    }
    let key = skiff_api::namespace::key(&name, inner);
    if !exists(&key) {
        return (name, path);
    }
    let tail = &rest[end..];
    let tail = if tail.is_empty() || tail.starts_with('?') { format!("/{tail}") } else { tail.to_string() };
    (key, Some(tail))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// The headers minus those that belong to one connection (RFC 9110 §7.6.1), and
/// minus `Host` and `Content-Length`, which the next hop sets.
fn without_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for h in named {
        out.remove(h.as_str());
    }
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    ] {
        out.remove(h);
    }
    out
}

/// Streams another ingress's response back.
fn relay(resp: reqwest::Response) -> Response<Body> {
    let status = resp.status();
    let headers = without_hop_by_hop(resp.headers());
    let stream = futures_util::StreamExt::map(resp.bytes_stream(), |chunk| {
        chunk.map(hyper::body::Frame::data).map_err(|e| Box::new(e) as BoxError)
    });
    let body: Body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, path: &str) -> Request<()> {
        let mut b = Request::builder().uri(path);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn routes_by_host_or_path_prefix() {
        let s = "skiff.local";
        assert_eq!(route(&req(Some("hello.skiff.local"), "/x?y=1"), s), Some(("hello".into(), None)));
        assert_eq!(route(&req(Some("hello.skiff.local:8080"), "/"), s), Some(("hello".into(), None)));
        assert_eq!(
            route(&req(Some("127.0.0.1:8080"), "/d/hello/a/b?q=2"), s),
            Some(("hello".into(), Some("/a/b?q=2".into())))
        );
        assert_eq!(route(&req(Some("127.0.0.1:8080"), "/d/hello"), s), Some(("hello".into(), Some("/".into()))));
        assert_eq!(route(&req(Some("127.0.0.1:8080"), "/hello"), s), None);
        // NAME.NS (#20): deployment a of namespace b; deeper names are none.
        assert_eq!(route(&req(Some("a.b.skiff.local"), "/"), s), Some(("b/a".into(), None)));
        assert_eq!(route(&req(Some("a.b.c.skiff.local"), "/"), s), None);
        assert_eq!(route(&req(Some("Bad_Name.skiff.local"), "/"), s), None);
        assert_eq!(route(&req(None, "/d/api/"), s), Some(("api".into(), Some("/".into()))));
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("a"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let out = without_hop_by_hop(&h);
        assert_eq!(out.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }
}

#[cfg(test)]
mod namespace_tests {
    use super::*;

    /// `isolation: namespace` for containers (#20): who is refused what.
    #[test]
    fn isolated_containers_reach_only_their_own_namespace() {
        let container = |deployment: &str| Caller::Container { replica: "r-1".into(), deployment: deployment.into() };
        let isolated: std::collections::BTreeSet<String> = ["iso".to_string()].into();
        let none = std::collections::BTreeSet::new();
        let forbidden = |r: Option<Refusal>| match r {
            Some(Refusal::Forbidden { namespace, line }) => Some((namespace, line)),
            other => panic!("not a 403: {other:?}"),
        };
        // Across from an isolated namespace, default included: 403 naming both.
        let (ns, line) = forbidden(refusal(&container("iso/client"), "open/web", Some(&isolated))).expect("403");
        assert_eq!(ns, "iso");
        assert_eq!(
            line,
            "namespace iso is isolated (isolation: namespace): its replica r-1 may call only namespace iso's deployments, not web of namespace open"
        );
        let (_, line) = forbidden(refusal(&container("job:iso/nightly"), "web", Some(&isolated))).expect("403");
        assert!(line.ends_with("not web of namespace default"), "{line}");
        // Its own namespace; an open namespace; a caller from outside; no isolation at all.
        assert_eq!(refusal(&container("iso/client"), "iso/web", Some(&isolated)), None);
        assert_eq!(refusal(&container("open/client"), "iso/web", Some(&isolated)), None);
        assert_eq!(refusal(&container("client"), "iso/web", Some(&isolated)), None);
        assert_eq!(refusal(&Caller::Outside, "iso/web", Some(&isolated)), None);
        assert_eq!(refusal(&container("iso/client"), "open/web", Some(&none)), None);
        // A bridge address no container has: refused while anything is isolated.
        let unknown = Caller::Unknown("10.89.0.9".parse().expect("ip"));
        let (ns, line) = forbidden(refusal(&unknown, "open/web", Some(&isolated))).expect("403");
        assert!(ns.is_empty() && line.contains("10.89.0.9"), "{line}");
        assert_eq!(refusal(&unknown, "open/web", Some(&none)), None);
        // No table yet: what is isolated is not known.
        assert!(matches!(refusal(&container("iso/client"), "open/web", None), Some(Refusal::NoTable(_))));
        assert_eq!(refusal(&container("iso/client"), "iso/web", None), None, "its own namespace needs no table");
    }

    #[test]
    fn requests_name_namespaced_deployments() {
        let req =
            |host: &str, path: &str| Request::builder().uri(path).header("host", host).body(()).expect("a request");
        let s = "skiff.local";
        assert_eq!(route(&req("web.skiff.local", "/x"), s), Some(("web".into(), None)));
        assert_eq!(route(&req("web.team-a.skiff.local", "/x"), s), Some(("team-a/web".into(), None)));
        assert_eq!(route(&req("a.b.c.skiff.local", "/x"), s), None);
        // `/d/NS/NAME/` when NS/NAME exists, else `/d/NAME/` as before.
        let exists = |k: &str| k == "team-a/web";
        let (name, path) = route(&req("127.0.0.1:8080", "/d/team-a/web/p?q=1"), s).expect("routed");
        assert_eq!(namespaced_path(name, path, exists), ("team-a/web".into(), Some("/p?q=1".into())));
        let (name, path) = route(&req("127.0.0.1:8080", "/d/team-a/web"), s).expect("routed");
        assert_eq!(namespaced_path(name, path, exists), ("team-a/web".into(), Some("/".into())));
        let (name, path) = route(&req("127.0.0.1:8080", "/d/api/web"), s).expect("routed");
        assert_eq!(namespaced_path(name, path, exists), ("api".into(), Some("/web".into())));
    }
}
