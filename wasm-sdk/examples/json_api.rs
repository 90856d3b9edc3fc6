//! A JSON API written with `skiff_sdk::http`: a few routes answering JSON, and a
//! JSON 404 for every other path.
//!
//! Routes:
//! - `GET /` names the service and the replica that answered.
//! - `GET /items` lists the items; `GET /items/ID` answers one, or 404.
//! - `POST /echo` parses the body as JSON and answers it back (400 when it is not JSON).
//!
//! Build and deploy:
//!
//! ```sh
//! cargo build -p skiff-sdk --example json_api --release --target wasm32-wasip2
//! skiff deploy target/wasm32-wasip2/release/examples/json_api.wasm --name api --replicas 2
//! curl -H 'Host: api.skiff.local' http://127.0.0.1:8080/items/2
//! ```

// Host builds get an empty library (see hello_http).
#![cfg(target_arch = "wasm32")]

use serde::Serialize;
use skiff_sdk::http::{Method, Request, Response};

#[derive(Serialize)]
struct Item {
    id: u32,
    name: &'static str,
}

const ITEMS: [Item; 3] = [Item { id: 1, name: "anchor" }, Item { id: 2, name: "oar" }, Item { id: 3, name: "sail" }];

fn handle(req: Request) -> Response {
    let replica = skiff_sdk::replica().unwrap_or_default();
    let segments: Vec<&str> = req.path().split('/').filter(|s| !s.is_empty()).collect();
    match (req.method(), segments.as_slice()) {
        (Method::Get, []) => Response::json(
            200,
            &serde_json::json!({ "service": "json_api", "replica": replica, "routes": ["/items", "/items/ID", "/echo"] }),
        ),
        (Method::Get, ["items"]) => Response::json(200, &ITEMS),
        (Method::Get, ["items", id]) => match ITEMS.iter().find(|i| id.parse() == Ok(i.id)) {
            Some(item) => Response::json(200, item),
            None => Response::json(404, &serde_json::json!({ "error": format!("no item {id}") })),
        },
        (Method::Post, ["echo"]) => match req.json::<serde_json::Value>() {
            Ok(value) => Response::json(200, &serde_json::json!({ "echo": value, "replica": replica })),
            Err(e) => Response::json(400, &serde_json::json!({ "error": e })),
        },
        _ => Response::not_found(),
    }
    .with_header("x-skiff-replica", &replica)
}

skiff_sdk::http::export!(handle);
