//! The HTTP client of the scheduler's `/v1/` API, used by the CLI and by nodes.

use crate::tls::CaFingerprint;
use crate::types::*;
use bytes::Bytes;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached at all.
    #[error(
        "cannot reach the skiff server at {url}: {source} (is `skiff server` or `skiff dev` running? set --server or SKIFF_SERVER)"
    )]
    Connect {
        /// The base URL tried.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's one-line explanation.
        message: String,
    },
    /// The server was reached but not trusted (or TLS failed): a wrong or missing
    /// CA fingerprint, a certificate for another name, HTTPS to a plain-HTTP port.
    #[error("no trusted TLS connection to the skiff server at {url}: {message}")]
    Tls {
        /// The base URL tried.
        url: String,
        /// Why, on one line.
        message: String,
    },
    /// The answer could not be read.
    #[error("unreadable answer from the skiff server at {url}: {source}")]
    Decode {
        /// The base URL.
        url: String,
        /// The decoding error.
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status of an API error, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn http_client(ca: Option<CaFingerprint>) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .use_preconfigured_tls(crate::tls::client_config(ca))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// A client of the scheduler: one server, or several sharing a store (it moves
/// on to the next when one cannot be reached or has no leader).
#[derive(Debug, Clone)]
pub struct Client {
    bases: std::sync::Arc<Vec<String>>,
    /// The server that answered last, shared by clones.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Shared by clones, so that a node switching to its credential switches
    /// every task's client at once.
    token: std::sync::Arc<std::sync::RwLock<Option<String>>>,
    http: reqwest::Client,
    /// The namespace of namespaced calls (#20); `None`: unprefixed paths, which
    /// the server reads as the token's namespace if it is scoped to one, else `default`.
    namespace: Option<std::sync::Arc<str>>,
}

impl Client {
    /// A client of the scheduler at `base` (such as `https://127.0.0.1:7070`), or of
    /// several servers of one cluster, comma-separated. Over HTTPS it trusts no one
    /// until given the CA's fingerprint ([`Client::with_ca`]).
    pub fn new(base: &str) -> Client {
        let mut bases: Vec<String> =
            base.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        if bases.is_empty() {
            bases.push(String::new());
        }
        Client {
            bases: std::sync::Arc::new(bases),
            current: Default::default(),
            token: Default::default(),
            http: http_client(None),
            namespace: None,
        }
    }

    /// Trusts the scheduler's HTTPS only if its certificate chains to the CA with
    /// fingerprint `ca` (see [`crate::tls`]).
    pub fn with_ca(mut self, ca: CaFingerprint) -> Client {
        self.http = http_client(Some(ca));
        self
    }

    /// Sends `token` as a bearer token on every call (this client and its later
    /// clones; earlier clones keep theirs).
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = std::sync::Arc::new(std::sync::RwLock::new(Some(token.to_string())));
        self
    }

    /// Makes the namespaced calls (deployments, replicas, secrets, volumes,
    /// events) in namespace `ns`: under `/v1/namespaces/NS/` (#20), `default`
    /// too (an unprefixed path means a scoped token's own namespace).
    pub fn with_namespace(mut self, ns: &str) -> Client {
        self.namespace = Some(std::sync::Arc::from(ns));
        self
    }

    /// The namespace of namespaced calls.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(crate::namespace::DEFAULT)
    }

    /// Replaces the bearer token of this client and of every clone sharing it.
    pub fn set_token(&self, token: &str) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token.to_string());
    }

    /// The bearer token sent, if any.
    pub fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The base URL of the server in use.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        const NAMESPACED: [&str; 7] = ["deployments", "replicas", "secrets", "volumes", "jobs", "crons", "events"];
        let path = match (&self.namespace, path.strip_prefix("/v1/")) {
            (Some(ns), Some(rest))
                if NAMESPACED
                    .iter()
                    .any(|k| rest.strip_prefix(k).is_some_and(|t| t.is_empty() || t.starts_with(['/', '?']))) =>
            {
                format!("/v1/namespaces/{ns}/{rest}")
            }
            _ => path.to_string(),
        };
        let rb = self.http.request(method, format!("{}{path}", self.base()));
        match &self.token() {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends the request to the server in use; when that one cannot be reached
    /// or answers 503 (no leader, or not reachable from it) and there are others,
    /// to the next (a request with a streamed body is sent once).
    async fn execute(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let (_, req) = rb.build_split();
        let mut next = Some(req.map_err(|source| ClientError::Connect { url: self.bases[first].clone(), source })?);
        let mut last = None;
        for attempt in 0..n {
            let Some(mut req) = next.take() else { break };
            let i = (first + attempt) % n;
            next = if attempt + 1 < n { req.try_clone() } else { None };
            if i != first
                && let Ok(url) = req.url().as_str().replacen(&self.bases[first], &self.bases[i], 1).parse()
            {
                *req.url_mut() = url;
            }
            match self.http.execute(req).await {
                Ok(resp) if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && next.is_some() => {
                    last = Some(Ok(resp));
                }
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(source) => {
                    let url = self.bases[i].clone();
                    let e = match crate::tls::failure(&source) {
                        Some(message) => ClientError::Tls { url, message },
                        None => ClientError::Connect { url, source },
                    };
                    if matches!(e, ClientError::Tls { .. }) {
                        return Err(e);
                    }
                    last = Some(Err(e));
                }
            }
        }
        match last {
            Some(Ok(resp)) => Ok(resp),
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Api { status: 503, message: "no server to ask".into() }),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = self.execute(rb).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("server answered {status}: {}", text.trim()));
        Err(ClientError::Api { status, message })
    }

    async fn json<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(rb).await?;
        resp.json().await.map_err(|source| ClientError::Decode { url: self.base().to_string(), source })
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::GET, "/healthz")).await.map(|_| ())
    }

    /// `POST path_and_query` asking for an HTTP/1.1 upgrade to the relay
    /// protocol ([`crate::relay`]): the connection, once the server agreed (101).
    /// Any other answer is the server's refusal, as an [`ClientError::Api`].
    pub async fn upgrade(&self, path_and_query: &str) -> Result<reqwest::Upgraded, ClientError> {
        let rb = self
            .request(reqwest::Method::POST, path_and_query)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, crate::relay::PROTOCOL);
        let resp = self.execute(rb).await?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("server answered {status}: {}", text.trim()));
            return Err(ClientError::Api { status, message });
        }
        let url = self.base().to_string();
        resp.upgrade().await.map_err(|source| ClientError::Decode { url, source })
    }

    /// Whether `replica`'s `port` can be forwarded to (the check `skiff
    /// port-forward` makes before it listens).
    pub async fn check_port_forward(&self, replica: &str, port: u16) -> Result<(), ClientError> {
        let path = format!("/v1/replicas/{}/port-forward", crate::relay::percent_encode(replica));
        let rb =
            self.request(reqwest::Method::POST, &path).query(&[("port", port.to_string()), ("check", "true".into())]);
        self.send(rb).await.map(|_| ())
    }

    // ---- blobs ----

    /// Whether the blob `digest` is stored.
    pub async fn blob_exists(&self, digest: &str) -> Result<bool, ClientError> {
        match self.send(self.request(reqwest::Method::HEAD, &format!("/v1/blobs/{digest}"))).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads `bytes` under `digest` (`sha256:<hex>`), which the server checks.
    pub async fn put_blob(&self, digest: &str, bytes: Vec<u8>) -> Result<BlobInfo, ClientError> {
        self.json(self.request(reqwest::Method::PUT, &format!("/v1/blobs/{digest}")).body(bytes)).await
    }

    /// Uploads like [`Client::put_blob`], calling `progress` with the number of
    /// bytes handed to the connection each time a chunk goes out.
    pub async fn put_blob_with_progress(
        &self,
        digest: &str,
        bytes: Vec<u8>,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<BlobInfo, ClientError> {
        const CHUNK: usize = 256 << 10;
        let bytes = Bytes::from(bytes);
        let len = bytes.len();
        let chunks = (0..len).step_by(CHUNK).map(move |at| {
            let chunk = bytes.slice(at..(at + CHUNK).min(len));
            progress(chunk.len() as u64);
            Ok::<Bytes, std::io::Error>(chunk)
        });
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let rb = self
            .request(reqwest::Method::PUT, &format!("/v1/blobs/{digest}"))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.json(rb).await
    }

    /// Downloads the blob `digest`.
    pub async fn get_blob(&self, digest: &str) -> Result<Bytes, ClientError> {
        let resp = self.send(self.request(reqwest::Method::GET, &format!("/v1/blobs/{digest}"))).await?;
        resp.bytes().await.map_err(|source| ClientError::Decode { url: self.base().to_string(), source })
    }

    // ---- deployments ----

    /// Creates or updates deployment `name`.
    pub async fn apply(&self, name: &str, req: &ApplyRequest) -> Result<ApplyResponse, ClientError> {
        self.json(self.request(reqwest::Method::PUT, &format!("/v1/deployments/{name}")).json(req)).await
    }

    /// Every deployment.
    pub async fn deployments(&self) -> Result<Vec<Deployment>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/deployments")).await
    }

    /// Deployment `name`.
    pub async fn deployment(&self, name: &str) -> Result<Deployment, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/v1/deployments/{name}"))).await
    }

    /// Sets the replica count of `name`.
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<Deployment, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, &format!("/v1/deployments/{name}/scale"))
                .json(&ScaleRequest { replicas }),
        )
        .await
    }

    /// The revisions of `name`, oldest first.
    pub async fn revisions(&self, name: &str) -> Result<Vec<RevisionInfo>, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/v1/deployments/{name}/revisions"))).await
    }

    /// Rolls `name` back to `to_revision`, or to the revision before the current one.
    pub async fn rollback(&self, name: &str, to_revision: Option<u64>) -> Result<Deployment, ClientError> {
        let body = RollbackRequest { to_revision };
        self.json(self.request(reqwest::Method::POST, &format!("/v1/deployments/{name}/rollback")).json(&body)).await
    }

    /// Pauses (`true`) or resumes (`false`) the rollout of `name`.
    pub async fn pause(&self, name: &str, paused: bool) -> Result<Deployment, ClientError> {
        let verb = if paused { "pause" } else { "resume" };
        self.json(self.request(reqwest::Method::POST, &format!("/v1/deployments/{name}/{verb}"))).await
    }

    /// Promotes the canary of `name` (`promote`: the remaining steps are
    /// skipped) or aborts it (`abort`: back to the stable revision).
    pub async fn canary(&self, name: &str, verb: &str) -> Result<Deployment, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/v1/deployments/{name}/{verb}"))).await
    }

    /// Deletes `name` and stops its replicas.
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/deployments/{name}"))).await.map(|_| ())
    }

    /// Live replicas, optionally of one deployment or one node.
    pub async fn replicas(&self, deployment: Option<&str>, node: Option<&str>) -> Result<Vec<Replica>, ClientError> {
        let mut q = Vec::new();
        if let Some(d) = deployment {
            q.push(("deployment", d));
        }
        if let Some(n) = node {
            q.push(("node", n));
        }
        self.json(self.request(reqwest::Method::GET, "/v1/replicas").query(&q)).await
    }

    /// `GET /v1/servers`: the control plane's servers, its leader and its store.
    pub async fn servers(&self) -> Result<ServersInfo, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/servers")).await
    }

    /// The server's Prometheus metrics, as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let resp = self.send(self.request(reqwest::Method::GET, "/metrics")).await?;
        resp.text().await.map_err(|source| ClientError::Decode { url: self.base().to_string(), source })
    }

    /// Events, optionally about one object (`deployment/NAME`, `node/NAME`), oldest first.
    pub async fn events(&self, object: Option<&str>) -> Result<Vec<Event>, ClientError> {
        let q: Vec<(&str, &str)> = object.map(|o| vec![("object", o)]).unwrap_or_default();
        self.json(self.request(reqwest::Method::GET, "/v1/events").query(&q)).await
    }

    /// Events with an id above `after` (optionally about one object), oldest first;
    /// waits up to `wait` for the first one and answers empty if none came.
    pub async fn events_after(
        &self,
        object: Option<&str>,
        after: u64,
        wait: Duration,
    ) -> Result<Vec<Event>, ClientError> {
        let mut q =
            vec![("after", after.to_string()), ("wait", wait.as_millis().to_string()), ("limit", "1000".to_string())];
        if let Some(o) = object {
            q.push(("object", o.to_string()));
        }
        let rb = self.request(reqwest::Method::GET, "/v1/events").query(&q).timeout(wait + Duration::from_secs(10));
        self.json(rb).await
    }

    /// The log lines of a deployment's replicas (or of one), as a byte stream;
    /// with `follow` it stays open and carries new lines as they come.
    pub async fn logs(
        &self,
        deployment: &str,
        replica: Option<&str>,
        follow: bool,
        tail: Option<u32>,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, ClientError> {
        let mut q = vec![("follow", follow.to_string())];
        if let Some(r) = replica {
            q.push(("replica", r.to_string()));
        }
        if let Some(t) = tail {
            q.push(("tail", t.to_string()));
        }
        let resp = self
            .send(self.request(reqwest::Method::GET, &format!("/v1/deployments/{deployment}/logs")).query(&q))
            .await?;
        Ok(resp.bytes_stream())
    }

    /// What each replica uses, as its node last reported it: `(cpu seconds so
    /// far, memory bytes now)` by replica id. Read from the first snapshot of
    /// `GET /v1/watch`; replicas whose node has not reported are missing.
    pub async fn replica_usage(&self) -> Result<std::collections::HashMap<String, (f64, u64)>, ClientError> {
        use serde::Deserialize;
        #[derive(Deserialize)]
        struct Usage {
            id: String,
            cpu_seconds: f64,
            memory_bytes: u64,
        }
        #[derive(Deserialize)]
        struct Snapshot {
            replicas: Vec<Usage>,
        }
        let mut resp = self.send(self.request(reqwest::Method::GET, "/v1/watch")).await?;
        // Server-sent events: the first `data:` lines up to a blank line.
        let mut text = Vec::new();
        let event = loop {
            let chunk =
                resp.chunk().await.map_err(|source| ClientError::Decode { url: self.base().to_string(), source })?;
            let Some(chunk) = chunk else { break String::from_utf8_lossy(&text).into_owned() };
            text.extend_from_slice(&chunk);
            let s = String::from_utf8_lossy(&text);
            let complete = s.rsplit_once("\n\n").map_or("", |(events, _)| events);
            if let Some(e) = complete.split("\n\n").find(|e| e.lines().any(|l| l.starts_with("data:"))) {
                break e.to_string();
            }
        };
        let data: String = event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
        let snap: Snapshot = serde_json::from_str(&data)
            .map_err(|e| ClientError::Api { status: 200, message: format!("the watch snapshot is unreadable: {e}") })?;
        Ok(snap.replicas.into_iter().map(|r| (r.id, (r.cpu_seconds, r.memory_bytes))).collect())
    }

    // ---- jobs and crons ----

    /// Creates job `name`: `(the job, whether it was made now)`.
    pub async fn put_job(&self, name: &str, spec: &crate::job::JobSpec) -> Result<(crate::Job, bool), ClientError> {
        #[derive(serde::Deserialize)]
        struct Created {
            job: crate::Job,
            created: bool,
        }
        let c: Created = self.json(self.request(reqwest::Method::PUT, &format!("/v1/jobs/{name}")).json(spec)).await?;
        Ok((c.job, c.created))
    }

    /// Every job.
    pub async fn jobs(&self) -> Result<Vec<crate::Job>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/jobs")).await
    }

    /// Job `name` with its runs.
    pub async fn job(&self, name: &str) -> Result<crate::JobDetail, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/v1/jobs/{name}"))).await
    }

    /// Deletes job `name`, stopping its runs.
    pub async fn delete_job(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/jobs/{name}"))).await.map(|_| ())
    }

    /// The log lines of job `name`'s runs (or of index `index`'s), each after
    /// `[INDEX] ` unless `bare`.
    pub async fn job_logs(
        &self,
        name: &str,
        index: Option<u32>,
        follow: bool,
        tail: Option<u32>,
        bare: bool,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, ClientError> {
        let mut q = vec![("follow", follow.to_string()), ("bare", bare.to_string())];
        if let Some(i) = index {
            q.push(("index", i.to_string()));
        }
        if let Some(t) = tail {
            q.push(("tail", t.to_string()));
        }
        let resp = self.send(self.request(reqwest::Method::GET, &format!("/v1/jobs/{name}/logs")).query(&q)).await?;
        Ok(resp.bytes_stream())
    }

    /// Creates or changes cron `name`: `(the cron, whether it was made now)`.
    pub async fn put_cron(&self, name: &str, spec: &crate::job::CronSpec) -> Result<(crate::Cron, bool), ClientError> {
        #[derive(serde::Deserialize)]
        struct Applied {
            cron: crate::Cron,
            created: bool,
        }
        let a: Applied = self.json(self.request(reqwest::Method::PUT, &format!("/v1/crons/{name}")).json(spec)).await?;
        Ok((a.cron, a.created))
    }

    /// Every cron.
    pub async fn crons(&self) -> Result<Vec<crate::Cron>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/crons")).await
    }

    /// Cron `name` with its jobs.
    pub async fn cron(&self, name: &str) -> Result<crate::CronDetail, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/v1/crons/{name}"))).await
    }

    /// Deletes cron `name` and its jobs.
    pub async fn delete_cron(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/crons/{name}"))).await.map(|_| ())
    }

    /// Starts a job of cron `name` now.
    pub async fn trigger_cron(&self, name: &str) -> Result<crate::Job, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/v1/crons/{name}/trigger"))).await
    }

    // ---- secrets ----

    /// Creates secret `name` (or replaces its values when `req.overwrite`).
    pub async fn put_secret(&self, name: &str, req: &SecretRequest) -> Result<Secret, ClientError> {
        self.json(self.request(reqwest::Method::PUT, &format!("/v1/secrets/{name}")).json(req)).await
    }

    /// Every secret, without values.
    pub async fn secrets(&self) -> Result<Vec<Secret>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/secrets")).await
    }

    /// Deletes secret `name`.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/secrets/{name}"))).await.map(|_| ())
    }

    // ---- images ----

    /// Points `req.name:req.tag` at an uploaded image manifest.
    pub async fn put_image(&self, req: &ImageRequest) -> Result<Image, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/v1/images").json(req)).await
    }

    /// Every imported image.
    pub async fn images(&self) -> Result<Vec<Image>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/images")).await
    }

    /// Forgets image `name:tag`; its blobs go with the scheduler's next blob
    /// collection once nothing else refers to them.
    pub async fn delete_image(&self, name: &str, tag: &str) -> Result<(), ClientError> {
        let req = self.request(reqwest::Method::DELETE, "/v1/images").query(&[("name", name), ("tag", tag)]);
        self.send(req).await.map(|_| ())
    }

    // ---- registries ----

    /// Stores the credential nodes pull from registry `host` with.
    pub async fn registry_login(&self, host: &str, req: &crate::RegistryLogin) -> Result<crate::Registry, ClientError> {
        self.json(self.request(reqwest::Method::PUT, &format!("/v1/registries/{host}")).json(req)).await
    }

    /// Every stored registry credential (hosts and users, never passwords).
    pub async fn registries(&self) -> Result<Vec<crate::Registry>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/registries")).await
    }

    /// Forgets the credential of registry `host`.
    pub async fn registry_logout(&self, host: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/registries/{host}"))).await.map(|_| ())
    }

    // ---- volumes ----

    /// Every volume.
    pub async fn volumes(&self) -> Result<Vec<Volume>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/volumes")).await
    }

    /// Deletes volume `name` (no deployment may use it) and, on its node, its data.
    pub async fn delete_volume(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/volumes/{name}"))).await.map(|_| ())
    }

    /// Deletes deployment `name` and the volumes it uses (their data too).
    pub async fn delete_purging_volumes(&self, name: &str) -> Result<(), ClientError> {
        let rb = self
            .request(reqwest::Method::DELETE, &format!("/v1/deployments/{name}"))
            .query(&[("purge_volumes", "true")]);
        self.send(rb).await.map(|_| ())
    }

    // ---- tokens ----

    /// Every API token (names and roles, never the tokens).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/tokens")).await
    }

    /// `GET /v1/namespaces`: every namespace the token may see (#20).
    pub async fn namespaces(&self) -> Result<Vec<crate::namespace::Namespace>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/namespaces")).await
    }

    /// `GET /v1/namespaces/{name}`.
    pub async fn get_namespace(&self, name: &str) -> Result<crate::namespace::Namespace, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/v1/namespaces/{name}"))).await
    }

    /// `PUT /v1/namespaces/{name}`: creates it, or sets its quota and isolation.
    pub async fn put_namespace(
        &self,
        name: &str,
        req: &crate::namespace::NamespaceRequest,
    ) -> Result<crate::namespace::Namespace, ClientError> {
        self.json(self.request(reqwest::Method::PUT, &format!("/v1/namespaces/{name}")).json(req)).await
    }

    /// `DELETE /v1/namespaces/{name}` (with `cascade`, its objects too).
    pub async fn delete_namespace(&self, name: &str, cascade: bool) -> Result<(), ClientError> {
        let rb = self.request(reqwest::Method::DELETE, &format!("/v1/namespaces/{name}"));
        self.send(rb.query(&[("cascade", cascade)])).await.map(|_| ())
    }

    /// Makes an API token; the answer is the only time it is shown.
    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenCreated, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/v1/tokens").json(req)).await
    }

    /// Revokes the API token `name`.
    pub async fn delete_token(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/tokens/{name}"))).await.map(|_| ())
    }

    // ---- nodes ----

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<Node>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/nodes")).await
    }

    /// Node `name`.
    pub async fn node(&self, name: &str) -> Result<Node, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/v1/nodes/{name}"))).await
    }

    /// Cordons node `name` (`true`: no new replicas) or uncordons it (`false`,
    /// which also ends a drain).
    pub async fn cordon(&self, name: &str, cordon: bool) -> Result<Node, ClientError> {
        let verb = if cordon { "cordon" } else { "uncordon" };
        self.json(self.request(reqwest::Method::POST, &format!("/v1/nodes/{name}/{verb}"))).await
    }

    /// Starts draining node `name` (again with `force`: also stop what cannot move).
    pub async fn drain(&self, name: &str, force: bool) -> Result<Node, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/v1/nodes/{name}/drain")).json(&DrainRequest { force }))
            .await
    }

    /// Rebalances `deployment` (every deployment when `None`) once.
    pub async fn rebalance(&self, deployment: Option<&str>) -> Result<RebalanceResponse, ClientError> {
        let req = RebalanceRequest { deployment: deployment.map(str::to_string) };
        self.json(self.request(reqwest::Method::POST, "/v1/rebalance").json(&req)).await
    }

    /// Removes node `name` and revokes its credential.
    pub async fn remove_node(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/nodes/{name}"))).await.map(|_| ())
    }

    /// Registers a node (the client must carry the join token or its credential).
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/v1/nodes/register").json(req)).await
    }

    /// Sends a node's heartbeat.
    pub async fn heartbeat(&self, node: &str, hb: &Heartbeat) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::POST, &format!("/v1/nodes/{node}/heartbeat")).json(hb))
            .await
            .map(|_| ())
    }

    /// The table of ready HTTP endpoints, blocking up to `wait` until its index
    /// differs from `index` (a node call: needs the join token).
    pub async fn endpoints(&self, index: u64, wait: Duration) -> Result<Endpoints, ClientError> {
        let rb = self
            .request(reqwest::Method::GET, "/v1/endpoints")
            .query(&[("index", index.to_string()), ("wait", wait.as_millis().to_string())])
            .timeout(wait + Duration::from_secs(10));
        self.json(rb).await
    }

    /// As [`Client::endpoints`], but asks for only what changed since `index`
    /// (the index of the table the node holds): the answer is such a delta
    /// when `Endpoints::delta` says so, else the whole table.
    pub async fn endpoint_changes(&self, index: u64, wait: Duration) -> Result<Endpoints, ClientError> {
        let rb = self
            .request(reqwest::Method::GET, "/v1/endpoints")
            .query(&[("index", index.to_string()), ("wait", wait.as_millis().to_string())])
            .query(&[("delta", "true")])
            .timeout(wait + Duration::from_secs(10));
        self.json(rb).await
    }

    /// Asks for a replica of deployment `name`, which scales to zero, for a
    /// request an ingress holds (`req`): the scheduler scales it from zero if it
    /// is there (once, however many ask) and answers its ready endpoints as
    /// soon as it has one, or empty after `wait`.
    pub async fn activate(
        &self,
        name: &str,
        req: &ActivateRequest,
        wait: Duration,
    ) -> Result<ActivateResponse, ClientError> {
        // A namespaced deployment's key `NS/NAME` (#20) is one path segment.
        let name = name.replace('/', "%2F");
        let rb = self
            .request(reqwest::Method::POST, &format!("/v1/deployments/{name}/activate"))
            .query(&[("wait", wait.as_millis().to_string())])
            .json(req)
            .timeout(wait + Duration::from_secs(10));
        self.json(rb).await
    }

    /// A node's desired set, blocking up to `wait` until its index passes `index`.
    pub async fn assignments(&self, node: &str, index: u64, wait: Duration) -> Result<Assignments, ClientError> {
        let rb = self
            .request(reqwest::Method::GET, &format!("/v1/nodes/{node}/assignments"))
            .query(&[("index", index.to_string()), ("wait", wait.as_millis().to_string())])
            .timeout(wait + Duration::from_secs(10));
        self.json(rb).await
    }

    /// As [`Client::assignments`], but asks for only what changed since `index`
    /// (the index of the set the node holds): the answer is such a delta when
    /// `Assignments::delta` says so, else the whole set.
    pub async fn assignment_changes(&self, node: &str, index: u64, wait: Duration) -> Result<Assignments, ClientError> {
        let rb = self
            .request(reqwest::Method::GET, &format!("/v1/nodes/{node}/assignments"))
            .query(&[("index", index.to_string()), ("wait", wait.as_millis().to_string())])
            .query(&[("delta", "true")])
            .timeout(wait + Duration::from_secs(10));
        self.json(rb).await
    }
}
