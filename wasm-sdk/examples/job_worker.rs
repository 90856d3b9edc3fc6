//! A job's run for the tests and the benchmark: prints which index and try it
//! is (`SKIFF_JOB_INDEX`, `SKIFF_JOB_ATTEMPT`, set by the scheduler) and its
//! arguments, then exits.
//!
//! Its environment decides how: `SLEEP_MS` sleeps first (a run that takes a
//! while); `FAIL_INDEX` and `FAIL_TIMES` make that index exit 3 on its first
//! `FAIL_TIMES` tries (`FAIL_INDEX=all`: every index); `EXIT_CODE` exits with
//! that status. As a core module (wasm32-wasip1) the node sees the status
//! itself; as a component (wasm32-wasip2) any non-zero status is 1.

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let index = var("SKIFF_JOB_INDEX").unwrap_or_else(|| "none".into());
    let attempt: u32 = var("SKIFF_JOB_ATTEMPT").and_then(|a| a.parse().ok()).unwrap_or(1);
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("job-worker index={index} attempt={attempt} args={}", args.join(","));
    eprintln!("job-worker index={index} to stderr");
    if let Some(ms) = var("SLEEP_MS").and_then(|s| s.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        println!("job-worker index={index} slept {ms}ms");
    }
    let fail_times: u32 = var("FAIL_TIMES").and_then(|t| t.parse().ok()).unwrap_or(0);
    let failing = var("FAIL_INDEX").is_some_and(|f| f == "all" || f == index);
    if failing && attempt <= fail_times {
        println!("job-worker index={index} fails try {attempt} of {fail_times}");
        std::process::exit(3);
    }
    if let Some(code) = var("EXIT_CODE").and_then(|c| c.parse::<i32>().ok()) {
        std::process::exit(code);
    }
}
