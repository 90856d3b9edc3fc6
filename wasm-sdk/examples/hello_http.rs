//! An HTTP service: a `wasi:http/proxy` component that skiff serves through the
//! ingress of every node, a fresh instance per request.
//!
//! Routes:
//! - `GET /` answers `hello from REPLICA` (the replica id from `SKIFF_REPLICA`),
//!   with the id also in the `x-skiff-replica` header; `GREETING` changes the word.
//! - `/healthz` answers 200 `ok`, or 500 when `HEALTHY=false` (a version that
//!   fails its readiness probe).
//! - `/file/PATH` answers the contents of file `/PATH` (a secret or volume the
//!   deployment mounts), or 404 saying why it cannot read it.
//! - `/spin` loops forever (the node answers 504 at its request deadline).
//! - `/grow` allocates 512 MiB (more than any small memory limit: that request fails).
//! - `/call/AUTHORITY/PATH` sends `GET http://AUTHORITY/PATH` and answers with the
//!   status and body it got: `/call/other.skiff.local/` reaches deployment `other`;
//!   any other host must be in the deployment's `allowed_hosts`.
//!
//! Build: `cargo build -p skiff-sdk --example hello_http --release --target wasm32-wasip2`.

// Host builds (`cargo test --workspace`) get an empty library: the exports'
// names (`wasi:http/...`) are not valid symbol names for a native linker.
#![cfg(target_arch = "wasm32")]

use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let replica = std::env::var("SKIFF_REPLICA").unwrap_or_else(|_| "unknown".to_string());
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_string());
        if path == "/healthz" {
            let healthy = std::env::var("HEALTHY").map(|v| v != "false").unwrap_or(true);
            let (status, body) = if healthy { (200, "ok\n") } else { (500, "unhealthy\n") };
            respond(out, status, &replica, body);
            return;
        }
        if let Some(file) = path.strip_prefix("/file/") {
            match std::fs::read_to_string(format!("/{file}")) {
                Ok(text) => respond(out, 200, &replica, &text),
                Err(e) => respond(out, 404, &replica, &format!("cannot read /{file}: {e}\n")),
            }
            return;
        }
        if path == "/spin" {
            #[allow(clippy::empty_loop)]
            loop {}
        }
        if path == "/grow" {
            let big = vec![1u8; 512 << 20];
            respond(out, 200, &replica, &format!("grew {} bytes\n", big.iter().map(|&b| b as usize).sum::<usize>()));
            return;
        }
        if let Some(target) = path.strip_prefix("/call/") {
            let (authority, rest) = match target.find('/') {
                Some(i) => (&target[..i], &target[i..]),
                None => (target, "/"),
            };
            match get(authority, rest) {
                Ok((status, body)) => respond(out, 200, &replica, &format!("{status} {body}")),
                Err(e) => respond(out, 502, &replica, &format!("call to {authority} failed: {e:?}\n")),
            }
            return;
        }
        respond(out, 200, &replica, &format!("{greeting} from {replica}\n"));
    }
}

fn respond(out: ResponseOutparam, status: u16, replica: &str, body: &str) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
        ("x-skiff-replica".to_string(), replica.as_bytes().to_vec()),
    ])
    .unwrap_or_else(|_| Fields::new());
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(status);
    let Ok(outgoing) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(stream) = outgoing.write() {
        // One write may carry at most 4096 bytes.
        for chunk in body.as_bytes().chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// `GET http://AUTHORITY/PATH`: the status and the body as text.
fn get(authority: &str, path: &str) -> Result<(u16, String), ErrorCode> {
    let req = OutgoingRequest::new(Fields::new());
    let _ = req.set_scheme(Some(&Scheme::Http));
    let _ = req.set_authority(Some(authority));
    let _ = req.set_path_with_query(Some(path));
    let body = req.body().map_err(|()| ErrorCode::InternalError(Some("no request body".into())))?;
    let future = wasip2::http::outgoing_handler::handle(req, None)?;
    let _ = OutgoingBody::finish(body, None);
    future.subscribe().block();
    let resp = match future.get() {
        Some(Ok(r)) => r?,
        _ => return Err(ErrorCode::InternalError(Some("no response".into()))),
    };
    let status = resp.status();
    let mut text = Vec::new();
    if let Ok(incoming) = resp.consume()
        && let Ok(stream) = incoming.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 << 10) {
            text.extend_from_slice(&chunk);
        }
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}
