//! An HTTP service whose error rate and latency come from its env, so that a
//! "bad" revision is the same artifact with other env (canary tests, #18).
//!
//! - `GET /healthz` answers 200 `ok` always: a bad revision passes readiness.
//! - Any other path answers `revision N from REPLICA` (200, header
//!   `x-skiff-revision: N` from `SKIFF_REVISION`), except that a share of
//!   `FAIL_PERCENT` percent (0-100, default 0) answers 500, and each answer
//!   waits `DELAY_MS` milliseconds first (default 0).
//!
//! Build: `cargo build -p skiff-sdk --example flaky_http --release --target wasm32-wasip2`.

#![cfg(target_arch = "wasm32")]

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(Flaky);

struct Flaky;

fn env_u64(name: &str) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

impl wasip2::exports::http::incoming_handler::Guest for Flaky {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let replica = std::env::var("SKIFF_REPLICA").unwrap_or_else(|_| "unknown".to_string());
        let revision = std::env::var("SKIFF_REVISION").unwrap_or_else(|_| "0".to_string());
        if path == "/healthz" {
            respond(out, 200, &revision, "ok\n");
            return;
        }
        let delay = env_u64("DELAY_MS");
        if delay > 0 {
            wasip2::clocks::monotonic_clock::subscribe_duration(delay * 1_000_000).block();
        }
        let fail = env_u64("FAIL_PERCENT");
        if fail > 0 && wasip2::random::random::get_random_u64() % 100 < fail {
            respond(out, 500, &revision, &format!("revision {revision} from {replica} failed on purpose\n"));
            return;
        }
        respond(out, 200, &revision, &format!("revision {revision} from {replica}\n"));
    }
}

fn respond(out: ResponseOutparam, status: u16, revision: &str, body: &str) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
        ("x-skiff-revision".to_string(), revision.as_bytes().to_vec()),
    ])
    .unwrap_or_else(|_| Fields::new());
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(status);
    let Ok(outgoing) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(stream) = outgoing.write() {
        let _ = stream.blocking_write_and_flush(body.as_bytes());
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
