//! skiff-sdk: the guest side of a skiff workload, for Rust programs built for
//! `wasm32-wasip2` (components) or `wasm32-wasip1` (core modules).
//!
//! A skiff replica is an ordinary WASI command: `fn main` runs, stdout and stderr
//! become the replica's logs, and the environment holds exactly what the deployment
//! declares plus a few variables the node injects (`SKIFF_DEPLOYMENT`,
//! `SKIFF_REPLICA`, `SKIFF_REVISION`). This crate wraps those conventions so that a
//! workload reads its configuration and logs the same way everywhere:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let greeting: String = skiff_sdk::config("GREETING", "hello".to_string());
//! let interval: u64 = skiff_sdk::config("INTERVAL_MS", 1000);
//! skiff_sdk::info!("replica {} starting", skiff_sdk::replica().unwrap_or_default());
//! loop {
//!     skiff_sdk::info!("{greeting}");
//!     skiff_sdk::sleep(Duration::from_millis(interval));
//! }
//! ```
//!
//! HTTP services (components exporting `wasi:http/incoming-handler`) write a
//! handler function with [`http`] and export it with [`http::export!`].
//!
//! The crate has no `unsafe` of its own; commands go through `std`, which WASI
//! implements, and [`http`] through the `wasi:http` bindings of the `wasip2` crate.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod http;

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

/// The value of the environment variable `key`, or `None` when it is unset or not
/// valid UTF-8. A replica sees only the variables its deployment declares and the
/// `SKIFF_*` variables the node injects.
pub fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Reads configuration value `key` from the environment and parses it as `T`.
///
/// Returns `default` when the variable is unset. When it is set but does not parse
/// as `T`, logs a warning (`WARN config KEY="value" is not valid; using the
/// default`) on stderr and returns `default`: a workload with a bad setting keeps
/// running and says why it ignored it, instead of crash-looping.
pub fn config<T: FromStr>(key: &str, default: T) -> T {
    match env(key) {
        None => default,
        Some(raw) => match raw.trim().parse::<T>() {
            Ok(v) => v,
            Err(_) => {
                log_line(Level::Warn, format_args!("config {key}={raw:?} is not valid; using the default"));
                default
            }
        },
    }
}

/// The name of the deployment this replica belongs to (`SKIFF_DEPLOYMENT`), or
/// `None` when not running under skiff.
pub fn deployment() -> Option<String> {
    env("SKIFF_DEPLOYMENT")
}

/// This replica's id, `<deployment>-<suffix>` (`SKIFF_REPLICA`), or `None` when not
/// running under skiff.
pub fn replica() -> Option<String> {
    env("SKIFF_REPLICA")
}

/// The deployment revision this replica runs (`SKIFF_REVISION`), or `None` when not
/// running under skiff or when the value is not a number.
pub fn revision() -> Option<u64> {
    env("SKIFF_REVISION").and_then(|v| v.trim().parse().ok())
}

/// Blocks this replica for `duration`. The node keeps running other replicas
/// meanwhile; a sleeping guest costs no CPU.
pub fn sleep(duration: Duration) {
    std::thread::sleep(duration);
}

/// The severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal operation; written to stdout.
    Info,
    /// Something unexpected that the workload survives; written to stderr.
    Warn,
    /// A failure; written to stderr.
    Error,
}

impl Level {
    /// The word that starts a line of this level: `INFO`, `WARN`, `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Writes one log line, `LEVEL message`, to stdout (info) or stderr (warn, error),
/// and flushes it so that the node sees it at once. Write errors are ignored: a
/// workload must not die because its log sink went away. The [`info!`], [`warn!`]
/// and [`error!`] macros call this.
pub fn log_line(level: Level, args: std::fmt::Arguments<'_>) {
    let line = format!("{} {}\n", level.as_str(), args);
    match level {
        Level::Info => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        Level::Warn | Level::Error => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(line.as_bytes());
            let _ = err.flush();
        }
    }
}

/// Logs an `INFO` line to stdout, with `format!` syntax: `info!("tick {n}")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        $crate::log_line($crate::Level::Info, ::std::format_args!($($arg)*))
    };
}

/// Logs a `WARN` line to stderr, with `format!` syntax: `warn!("retrying: {e}")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::log_line($crate::Level::Warn, ::std::format_args!($($arg)*))
    };
}

/// Logs an `ERROR` line to stderr, with `format!` syntax: `error!("cannot start: {e}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::log_line($crate::Level::Error, ::std::format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_falls_back_to_default() {
        assert_eq!(config("SKIFF_SDK_TEST_SURELY_UNSET", 42u64), 42);
    }

    #[test]
    fn level_words() {
        assert_eq!([Level::Info, Level::Warn, Level::Error].map(Level::as_str), ["INFO", "WARN", "ERROR"]);
    }
}
