//! A stateful worker: keeps a counter in a file on its volume, so the count goes
//! on across restarts, crashes and new revisions.
//!
//! Configuration (environment):
//! - `COUNTER_FILE`: where the count lives (default `/data/count`)
//! - `INTERVAL_MS`: milliseconds between increments (default 1000)
//! - `EXIT_AFTER`: when set, exit with status 1 after that many increments (to
//!   show the count surviving a restart)

use std::time::Duration;

fn main() {
    let file: String = skiff_sdk::config("COUNTER_FILE", "/data/count".to_string());
    let interval_ms: u64 = skiff_sdk::config("INTERVAL_MS", 1000);
    let exit_after: Option<u64> = skiff_sdk::env("EXIT_AFTER").map(|_| skiff_sdk::config("EXIT_AFTER", 0));
    let mut count: u64 = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    skiff_sdk::info!("counter starting at {count} ({file})");
    let mut ticks = 0;
    loop {
        count += 1;
        ticks += 1;
        // Written aside and renamed over the count: a replica stopped mid-write
        // (a lease that ran out, a node that died) never leaves half a count.
        let tmp = format!("{file}.tmp");
        if let Err(e) = std::fs::write(&tmp, count.to_string()).and_then(|()| std::fs::rename(&tmp, &file)) {
            skiff_sdk::error!("cannot write {file}: {e}");
            std::process::exit(2);
        }
        skiff_sdk::info!("count {count}");
        if exit_after.is_some_and(|n| ticks >= n) {
            std::process::exit(1);
        }
        skiff_sdk::sleep(Duration::from_millis(interval_ms));
    }
}
