//! A workload that grows its memory without end, 1 MiB at a time, logging the total
//! every 16 MiB. Its memory limit must stop it, not the node.

use std::hint::black_box;

const MIB: usize = 1 << 20;

fn main() {
    skiff_sdk::info!("membomb: growing memory until stopped");
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Fill the chunk so the pages are really used, not just reserved.
        hoard.push(black_box(vec![0xA5u8; MIB]));
        if hoard.len().is_multiple_of(16) {
            skiff_sdk::info!("membomb: holding {} MiB", hoard.len());
        }
    }
}
