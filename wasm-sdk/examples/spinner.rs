//! A workload that never yields: logs once, then computes forever. The node must
//! keep it from starving other replicas (epoch interruption).

use std::hint::black_box;

fn main() {
    skiff_sdk::info!("spinning");
    let mut x: u64 = 1;
    loop {
        // black_box keeps the optimiser from proving the loop useless.
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
}
