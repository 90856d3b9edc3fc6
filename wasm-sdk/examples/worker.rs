//! A worker that logs a greeting with a counter at a fixed interval.
//!
//! Configuration (environment):
//! - `GREETING`: what to log (default `hello`)
//! - `INTERVAL_MS`: milliseconds between lines (default 1000)
//! - `EXIT_AFTER`: when set, exit after that many ticks
//! - `EXIT_CODE`: the exit status then (default 0)

use std::time::Duration;

fn main() {
    let greeting: String = skiff_sdk::config("GREETING", "hello".to_string());
    let interval_ms: u64 = skiff_sdk::config("INTERVAL_MS", 1000);
    let exit_after: Option<u64> = skiff_sdk::env("EXIT_AFTER").map(|_| skiff_sdk::config("EXIT_AFTER", 0));
    let exit_code: i32 = skiff_sdk::config("EXIT_CODE", 0);

    skiff_sdk::info!(
        "worker starting: replica {} of {} (revision {})",
        skiff_sdk::replica().unwrap_or_else(|| "?".into()),
        skiff_sdk::deployment().unwrap_or_else(|| "?".into()),
        skiff_sdk::revision().map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
    );

    let mut tick: u64 = 0;
    loop {
        tick += 1;
        skiff_sdk::info!("{greeting} #{tick}");
        if exit_after.is_some_and(|n| tick >= n) {
            skiff_sdk::info!("exiting after {tick} ticks with status {exit_code}");
            std::process::exit(exit_code);
        }
        skiff_sdk::sleep(Duration::from_millis(interval_ms));
    }
}
