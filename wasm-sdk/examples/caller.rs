//! A service that calls another: outbound HTTP with `skiff_sdk::http::get`.
//!
//! - `GET /` fetches `UPSTREAM` (default `http://api.skiff.local/items`: the
//!   `json_api` example deployed as `api`, reached by name inside the cluster).
//! - `GET /fetch?url=URL` fetches URL, which must be another deployment
//!   (`http://NAME.skiff.local/...`) or a host in the deployment's `allowed_hosts`
//!   (`http://` or `https://`).
//!
//! Either answers `{"url", "status", "body"}` (the body as JSON when it is JSON,
//! else as text); 403 when the node refused the host, 502 when the call failed.
//!
//! ```sh
//! cargo build -p skiff-sdk --example caller --release --target wasm32-wasip2
//! skiff deploy target/wasm32-wasip2/release/examples/caller.wasm --name caller --allow-host example.com
//! curl -H 'Host: caller.skiff.local' http://127.0.0.1:8080/
//! curl -H 'Host: caller.skiff.local' 'http://127.0.0.1:8080/fetch?url=https://example.com/'
//! ```

// Host builds get an empty library (see hello_http).
#![cfg(target_arch = "wasm32")]

use skiff_sdk::http::{Error, Request, Response};

fn handle(req: Request) -> Response {
    let url = match req.path() {
        "/" => skiff_sdk::config("UPSTREAM", "http://api.skiff.local/items".to_string()),
        "/fetch" => match req.query_param("url") {
            Some(url) => url,
            None => return Response::json(400, &serde_json::json!({ "error": "pass ?url=URL" })),
        },
        _ => return Response::not_found(),
    };
    match skiff_sdk::http::get(&url) {
        Ok(answer) => {
            let body = answer
                .json_body::<serde_json::Value>()
                .unwrap_or_else(|_| serde_json::Value::String(answer.text_body()));
            Response::json(200, &serde_json::json!({ "url": url, "status": answer.status(), "body": body }))
        }
        Err(e) => {
            skiff_sdk::warn!("GET {url}: {e}");
            let status = if e == Error::Denied { 403 } else { 502 };
            Response::json(status, &serde_json::json!({ "url": url, "error": e.to_string() }))
        }
    }
}

skiff_sdk::http::export!(handle);
