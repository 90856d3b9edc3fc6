//! A workload that fails at once: logs one line and exits with status 3. Used to see
//! restart policies and backoff at work.
//!
//! As a core module (wasm32-wasip1) the node sees status 3. As a component
//! (wasm32-wasip2) it sees 1: WASI 0.2's `wasi:cli/exit` carries only success or
//! failure, so every non-zero status becomes a plain failure.

fn main() {
    skiff_sdk::error!("crasher: giving up at once with status 3");
    std::process::exit(3);
}
