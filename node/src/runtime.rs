//! The one place where runtimes differ. A supervisor asks its replica's runtime to
//! prepare the workload once (fetch, compile or unpack) and then to run it as
//! many times as the restart policy says; it never knows whether it runs Wasm
//! or a container.

use crate::logs::LogSink;
use crate::wasm::{ArtifactError, Outcome, RunSpec, WasmRuntime};
use skiff_api::{Assignment, Client, Workload};
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A workload made ready to run by its runtime (what it is, only that runtime knows).
pub type Prepared = Arc<dyn Any + Send + Sync>;

/// A boxed future, as trait objects need them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What runs replicas of one kind of workload.
pub trait Runtime: Send + Sync {
    /// Fetches what `a` needs from the scheduler through `client` and makes it
    /// ready to run. [`ArtifactError::Transient`] is retried by the caller.
    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<Prepared, ArtifactError>>;

    /// Runs the prepared workload once, to its end. Dropping the future stops it
    /// and releases whatever the run held.
    fn run(&self, prepared: Prepared, spec: RunSpec, log: Arc<LogSink>) -> BoxFuture<'static, Outcome>;
}

impl Runtime for WasmRuntime {
    fn prepare<'a>(
        &'a self,
        a: &'a Assignment,
        client: Option<Client>,
    ) -> BoxFuture<'a, Result<Prepared, ArtifactError>> {
        Box::pin(async move {
            let Workload::Wasm(digest) = &a.spec.workload else {
                return Err(ArtifactError::Invalid(format!("{} is not a wasm workload", a.spec.workload)));
            };
            let d = digest.clone();
            let fetch = || async move {
                match client {
                    Some(c) => c.get_blob(&d).await.map_err(|e| format!("cannot fetch blob {d}: {e}")),
                    None => Err(format!("blob {d} is not on this node and there is no scheduler to fetch it from")),
                }
            };
            let compiled = self.artifact(digest, fetch).await?;
            Ok(compiled as Prepared)
        })
    }

    fn run(&self, prepared: Prepared, spec: RunSpec, log: Arc<LogSink>) -> BoxFuture<'static, Outcome> {
        match prepared.downcast::<crate::wasm::Compiled>() {
            Ok(compiled) => Box::pin(WasmRuntime::run(self, compiled, spec, log)),
            Err(_) => Box::pin(async { Outcome::Failed("internal error: not a compiled wasm artifact".into()) }),
        }
    }
}
