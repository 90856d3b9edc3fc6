//! End-to-end tests: real `skiff server`, `skiff node` and `skiff dev` processes,
//! driven only through the CLI and the HTTP API. One test binary (as wasmtime
//! does) to keep builds short.

mod auth;
mod autoscale;
mod bad_input;
mod canary;
mod cluster;
mod container_lifecycle;
mod containers;
mod drain;
mod exec;
mod faults;
mod http;
mod image_gc;
mod jobs;
mod namespaces;
mod observability;
mod openapi;
mod real_apps;
mod registry_auth;
mod rollout;
mod scale_to_zero;
mod secrets;
mod servers;
mod soak;
mod volumes;
