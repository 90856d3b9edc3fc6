//! Compiling HTTP components: the pooled engine's configuration, what counts
//! as an HTTP component, and the handler of a digest, compiled (or loaded from
//! the disk cache) once per node.

use super::{HttpHandler, HttpRuntime, HttpState, POOL_MEMORY};
use crate::blobs::{digest_hex, fetcher};
use crate::engine::{first_line, load_or_compile};
use crate::runtime::ArtifactError;
use bytes::Bytes;
use skiff_api::Client;
use std::path::Path;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Whether `bytes` is a component that exports `wasi:http/incoming-handler`.
pub fn is_http_component(bytes: &[u8]) -> bool {
    use wasmtime::wasmparser::{Parser, Payload};
    if !Parser::is_component(bytes) {
        return false;
    }
    // Only the outermost component's exports count: nested modules and
    // components come in the same stream, each closed by its own `End`.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return false };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name.starts_with("wasi:http/incoming-handler") {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

impl HttpRuntime {
    /// The handler of blob `hex`, compiled (or loaded from disk) once per node.
    pub async fn compile(&self, hex: &str, bytes: Bytes) -> Result<HttpHandler, String> {
        let cell = self.cell(hex);
        cell.get_or_init(|| async {
            let engine = self.engine.clone();
            let linker = self.linker.clone();
            let path = self.cache_dir.join(format!("{hex}.cwasm"));
            let hex = hex.to_string();
            self.guests
                .handle()
                .spawn_blocking(move || compile(&engine, &linker, &path, &hex, &bytes))
                .await
                .unwrap_or_else(|e| Err(format!("compiler task failed: {e}")))
        })
        .await
        .clone()
    }

    /// The handler of blob `digest`, fetching the blob only the first time.
    pub(crate) async fn handler(&self, digest: &str, client: Option<Client>) -> Result<HttpHandler, ArtifactError> {
        let hex = digest_hex(digest).map_err(ArtifactError::Invalid)?;
        let cell = self.cell(hex);
        let compiled = match cell.get() {
            Some(done) => done.clone(),
            None => {
                let bytes = self.blobs.get(hex, fetcher(client, digest)).await.map_err(ArtifactError::Transient)?;
                self.compile(hex, bytes).await
            }
        };
        compiled.map_err(ArtifactError::Invalid)
    }

    fn cell(&self, hex: &str) -> std::sync::Arc<super::HandlerCell> {
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(hex.to_string()).or_default().clone()
    }
}

pub(super) fn engine_config(pool: Option<u32>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    // Smaller reservations than the 4 GiB default: memories past this size move
    // (bounds-checked code instead of guard pages), and a pool of them fits.
    config.memory_reservation(POOL_MEMORY);
    config.memory_guard_size(32 << 20);
    // Each instance's memory starts as a copy-on-write mapping of the
    // module's image (wasmtime's default, said here because the pool's
    // speed for big guests rests on it; see `engine::http_pool`).
    config.memory_init_cow(true);
    if let Some(n) = pool {
        let p = crate::engine::http_pool(n, POOL_MEMORY as usize);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    config
}

/// Compiles (or loads from the disk cache) and links a handler. Blocking.
fn compile(
    engine: &Engine,
    linker: &Linker<HttpState>,
    path: &Path,
    hex: &str,
    bytes: &[u8],
) -> Result<HttpHandler, String> {
    let load = |path: &Path| {
        // SAFETY: files in the cache directory are written only by
        // `load_or_compile`, by an engine whose `precompile_compatibility_hash`
        // names the directory, and renamed into place whole; nothing else
        // writes there.
        unsafe { Component::deserialize_file(engine, path) }.map_err(|e| first_line(&e))
    };
    let compile = || {
        engine.precompile_component(bytes).map_err(|e| format!("not a valid WebAssembly component: {}", first_line(&e)))
    };
    let component = load_or_compile(path, hex, load, compile)?;
    let pre = linker.instantiate_pre(&component).map_err(|e| format!("cannot link component: {}", first_line(&e)))?;
    ProxyPre::new(pre).map_err(|e| format!("component is not a wasi:http proxy: {}", first_line(&e)))
}
