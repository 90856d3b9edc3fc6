//! The YAML manifest parser, validation included: never a panic, errors are one
//! line, and what it accepts is a deployment the scheduler's own checks take
//! when the CLI turns it into an apply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::manifest::parse_manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_manifest(text) {
        Ok(deployments) => {
            assert!(!deployments.is_empty());
            // What a manifest accepts, the server's own checks take.
            for d in &deployments {
                assert_eq!(skiff_api::validate::apply(&d.name, &d.request()), Ok(()), "{text:?}");
            }
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.is_empty(), "empty error for {text:?}");
        }
    }
});
