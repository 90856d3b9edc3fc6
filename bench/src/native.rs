//! `skiff-bench serve-native`: the limit the `http` scenario measures skiff
//! against. A plain Rust hyper HTTP/1.1 server that answers every request with
//! the same status, content type and body a Wasm handler answered, with no Wasm
//! and no routing: what this machine can do for that response at all.
//!
//! It is shaped like skiff's ingress so that the difference is what skiff adds:
//! a tokio runtime of two workers (the node's guests' runtime has two), one task
//! per connection, keep-alive, `TCP_NODELAY`. It runs as a process of its own,
//! as the other two servers do.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::path::PathBuf;

/// Worker threads, as many as the node's guests' runtime has.
const WORKERS: usize = 2;

#[derive(clap::Args)]
pub struct NativeArgs {
    /// Address to listen on
    #[arg(long)]
    addr: String,
    /// File whose bytes are every response's body
    #[arg(long)]
    body_file: PathBuf,
    /// The responses' content type
    #[arg(long, default_value = "text/plain; charset=utf-8")]
    content_type: String,
}

pub fn run(args: NativeArgs) -> anyhow::Result<()> {
    let body =
        Bytes::from(std::fs::read(&args.body_file).with_context(|| format!("reading {}", args.body_file.display()))?);
    let content_type = http::HeaderValue::from_str(&args.content_type).context("content type")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&args.addr).await.with_context(|| format!("binding {}", args.addr))?;
        loop {
            let (stream, _) = listener.accept().await.context("accepting")?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            let (body, content_type) = (body.clone(), content_type.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let mut resp = Response::new(Full::new(body.clone()));
                    resp.headers_mut().insert(http::header::CONTENT_TYPE, content_type.clone());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // A connection the client closes ends here; nothing to report.
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    })
}
