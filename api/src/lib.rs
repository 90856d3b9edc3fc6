//! skiff-api: the resource types and wire messages of a skiff cluster, quantity
//! parsing (`500m`, `64Mi`), manifest reading and validation, and the HTTP client
//! that the CLI and node daemons use to talk to the scheduler (over HTTPS that
//! trusts the scheduler's own CA by fingerprint, `tls`).
//!
//! This crate is what other programs build against: its public items are stable.

pub mod client;
pub mod job;
pub mod manifest;
pub mod messages;
pub mod namespace;
pub mod objects;
pub mod quantity;
pub mod relay;
pub mod spec;
pub mod tls;
pub mod types;
pub mod validate;

pub use client::{Client, ClientError};
pub use types::*;
