//! The scheduler's request bodies: serde_json into each wire type it accepts,
//! then the validation the server runs on it. The first byte picks the type;
//! the rest is the body. Never a panic; an accepted apply or secret survives a
//! JSON round trip unchanged (what is stored is what was checked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::validate::{validate_apply, validate_name, validate_secret};
use skiff_api::{ApplyRequest, Heartbeat, ImageRequest, RegisterRequest, ScaleRequest, SecretRequest, TokenRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 7 {
        0 => {
            let Ok(req) = serde_json::from_slice::<ApplyRequest>(body) else { return };
            if validate_apply("fuzz", &req).is_ok() {
                let again: ApplyRequest = serde_json::from_slice(&serde_json::to_vec(&req).expect("encode"))
                    .expect("an accepted apply decodes again");
                assert_eq!(again, req);
                assert_eq!(validate_apply("fuzz", &again), Ok(()));
            }
        }
        1 => {
            let Ok(req) = serde_json::from_slice::<SecretRequest>(body) else { return };
            if validate_secret("fuzz", &req).is_ok() {
                let again: SecretRequest =
                    serde_json::from_slice(&serde_json::to_vec(&req).expect("encode")).expect("decodes again");
                assert_eq!(again.data, req.data);
            }
        }
        2 => {
            let Ok(req) = serde_json::from_slice::<RegisterRequest>(body) else { return };
            let _ = validate_name(&req.name);
        }
        3 => {
            let Ok(hb) = serde_json::from_slice::<Heartbeat>(body) else { return };
            let _ = serde_json::to_vec(&hb).expect("encode");
        }
        4 => {
            let _ = serde_json::from_slice::<ScaleRequest>(body);
        }
        5 => {
            let _ = serde_json::from_slice::<ImageRequest>(body);
        }
        _ => {
            let Ok(req) = serde_json::from_slice::<TokenRequest>(body) else { return };
            if let Some(name) = &req.name {
                let _ = validate_name(name);
            }
        }
    }
});
