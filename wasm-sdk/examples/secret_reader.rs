//! Reads a secret two ways, as an environment variable and as a file, and logs
//! whether they agree — never the value itself.
//!
//! Configuration (environment):
//! - `SECRET_ENV`: the variable holding the secret (default `DB_PASSWORD`)
//! - `SECRET_FILE`: the file holding the same secret (default `/secrets/db/password`)

use std::time::Duration;

fn main() {
    let var: String = skiff_sdk::config("SECRET_ENV", "DB_PASSWORD".to_string());
    let path: String = skiff_sdk::config("SECRET_FILE", "/secrets/db/password".to_string());
    loop {
        let from_env = skiff_sdk::env(&var);
        let from_file = std::fs::read_to_string(&path);
        match (&from_env, &from_file) {
            (Some(v), Ok(f)) => skiff_sdk::info!("secret {var}: {} bytes; file {path} matches: {}", v.len(), v == f),
            (None, _) => skiff_sdk::warn!("secret {var} is not set"),
            (_, Err(e)) => skiff_sdk::warn!("cannot read {path}: {e}"),
        }
        // A guest must not be able to write its secrets.
        let writable = std::fs::write(&path, "x").is_ok();
        skiff_sdk::info!("secret file writable: {writable}");
        skiff_sdk::sleep(Duration::from_millis(500));
    }
}
