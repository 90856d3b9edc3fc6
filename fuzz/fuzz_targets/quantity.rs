//! CPU and memory quantities: never a panic, and what the formatters write
//! parses back to the same value (memory only when it is exact: `format_memory`
//! rounds to one decimal when no binary suffix divides the bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::quantity::{format_cpu, format_memory, parse_cpu, parse_memory};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = parse_cpu(text) {
        assert_eq!(parse_cpu(&format_cpu(m)), Ok(m), "cpu {text:?} = {m}m does not round-trip");
    }
    if let Ok(b) = parse_memory(text) {
        let shown = format_memory(b);
        if !shown.contains('.') {
            assert_eq!(parse_memory(&shown), Ok(b), "memory {text:?} = {b} shown as {shown:?}");
        }
    }
    // And every value the formatters can be given, from the input's bytes.
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        assert_eq!(parse_cpu(&format_cpu(n)), Ok(n), "format_cpu({n})");
        let shown = format_memory(n);
        if !shown.contains('.') {
            assert_eq!(parse_memory(&shown), Ok(n), "format_memory({n}) = {shown:?}");
        }
    }
});
