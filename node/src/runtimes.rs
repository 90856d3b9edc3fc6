//! The node's runtimes and the choice among them: a container image runs in
//! the container runtime, a Wasm component that exports
//! `wasi:http/incoming-handler` is an HTTP component served by the ingress
//! ([`HttpRuntime`]), and any other Wasm module or component runs as a command
//! ([`WasmRuntime`]). [`Runtimes`] is itself a [`Runtime`], which is all the
//! supervisor sees.

use crate::blobs::{Blobs, digest_hex, fetcher};
use crate::container::{ContainerRuntime, Plan};
use crate::http::{HttpHandler, HttpRuntime, is_http_component};
use crate::logs::LogSink;
use crate::runtime::{ArtifactError, BoxFuture, Outcome, RunSpec, Runtime};
use crate::wasm::{Compiled, WasmRuntime};
use skiff_api::{Assignment, Client, Workload};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A workload made ready by the runtime that will run it.
pub enum Prepared {
    /// A Wasm command.
    Command(Arc<Compiled>),
    /// An HTTP component's handler.
    Http(HttpHandler),
    /// A container image, unpacked.
    Container(Arc<Plan>),
}

/// Every runtime this node has.
pub struct Runtimes {
    /// Wasm commands.
    pub wasm: Arc<WasmRuntime>,
    /// HTTP components; `None` runs every component as a command.
    pub http: Option<Arc<HttpRuntime>>,
    /// Containers, when the node can run them.
    pub containers: Option<Arc<ContainerRuntime>>,
    blobs: Blobs,
    /// Whether the blob of a digest (hex) is an HTTP component, found once.
    http_blobs: Mutex<HashMap<String, bool>>,
}

impl Runtimes {
    /// The node's runtimes; blobs are kept under `data_dir`.
    pub fn new(
        data_dir: &Path,
        wasm: Arc<WasmRuntime>,
        http: Option<Arc<HttpRuntime>>,
        containers: Option<Arc<ContainerRuntime>>,
    ) -> anyhow::Result<Runtimes> {
        Ok(Runtimes { wasm, http, containers, blobs: Blobs::new(data_dir)?, http_blobs: Mutex::new(HashMap::new()) })
    }

    /// The HTTP runtime when blob `digest` is an HTTP component and the node
    /// serves them (which takes the blob, fetched if need be, the first time).
    async fn http_for(&self, digest: &str, client: Option<Client>) -> Result<Option<&Arc<HttpRuntime>>, ArtifactError> {
        let Some(http) = &self.http else { return Ok(None) };
        let hex = digest_hex(digest).map_err(ArtifactError::Invalid)?;
        let known = self.http_blobs.lock().unwrap_or_else(|e| e.into_inner()).get(hex).copied();
        let is_http = match known {
            Some(k) => k,
            None => {
                let bytes = self.blobs.get(hex, fetcher(client, digest)).await.map_err(ArtifactError::Transient)?;
                let k = is_http_component(&bytes);
                self.http_blobs.lock().unwrap_or_else(|e| e.into_inner()).insert(hex.to_string(), k);
                k
            }
        };
        Ok(is_http.then_some(http))
    }
}

impl Runtime for Runtimes {
    type Prepared = Prepared;

    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<Prepared, ArtifactError>> {
        Box::pin(async move {
            match &a.spec.workload {
                Workload::Image(image) => match &self.containers {
                    Some(c) => Ok(Prepared::Container(c.prepare(a, client).await?)),
                    None => Err(ArtifactError::Invalid(format!(
                        "image {image} needs the container runtime, which this node does not have"
                    ))),
                },
                Workload::Wasm(digest) => match self.http_for(digest, client.clone()).await? {
                    Some(http) => Ok(Prepared::Http(http.prepare(a, client).await?)),
                    None => Ok(Prepared::Command(self.wasm.prepare(a, client).await?)),
                },
            }
        })
    }

    fn run(self: Arc<Self>, prepared: &Prepared, spec: RunSpec, log: Arc<LogSink>) -> BoxFuture<'static, Outcome> {
        // `prepare` made each kind with the runtime that runs it, so it is here.
        let missing = || -> BoxFuture<'static, Outcome> {
            Box::pin(async { Outcome::Failed("the runtime that prepared this replica is gone".into()) })
        };
        match prepared {
            Prepared::Command(c) => self.wasm.clone().run(c, spec, log),
            Prepared::Http(h) => self.http.clone().map_or_else(missing, |rt| rt.run(h, spec, log)),
            Prepared::Container(p) => self.containers.clone().map_or_else(missing, |rt| rt.run(p, spec, log)),
        }
    }
}
