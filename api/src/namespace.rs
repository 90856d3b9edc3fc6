//! Namespaces (#20): every deployment, replica, job, cron, secret, volume and
//! event belongs to one. The scheduler keys a namespaced object `NAME` in
//! `default` and `NS/NAME` elsewhere ([`key`]): a name is a DNS label and holds
//! no `/`, so no two keys collide, and everything stored before namespaces
//! existed is in `default` as it is.

use crate::quantity::{Cpu, Memory};
use serde::{Deserialize, Serialize};

/// The namespace that exists from the start, and the one of every object stored
/// before namespaces.
pub const DEFAULT: &str = "default";

/// The env var a replica of a namespace with `isolation: namespace` gets (set by
/// the scheduler after the spec's own env); its node then keeps the replica's
/// outbound calls to `*.skiff.local` within the namespace.
pub const ISOLATION_ENV: &str = "SKIFF_NAMESPACE_ISOLATION";

/// The namespace a cluster-internal host name (`NAME.skiff.local`,
/// `NAME.NS.skiff.local`, given without the suffix) names.
pub fn of_host(name: &str) -> &str {
    name.split_once('.').map_or(DEFAULT, |(_, ns)| ns)
}

/// The internal key of `name` in namespace `ns`.
pub fn key(ns: &str, name: &str) -> String {
    if ns == DEFAULT || ns.is_empty() { name.to_string() } else { format!("{ns}/{name}") }
}

/// The namespace and plain name of key `key` (a job's replicas' owner, `job:KEY`,
/// is in the job's namespace).
pub fn split(key: &str) -> (&str, &str) {
    let k = key.strip_prefix("job:").unwrap_or(key);
    match k.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (DEFAULT, k),
    }
}

/// The namespace of key `key`.
pub fn of(key: &str) -> &str {
    split(key).0
}

/// `key` with its namespace prefix taken away (as shown to users).
pub fn plain(key: &str) -> String {
    match key.strip_prefix("job:") {
        Some(k) => format!("job:{}", split(k).1),
        None => split(key).1.to_string(),
    }
}

/// How much a namespace may hold; an absent limit is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Quota {
    /// CPU of every replica together (requests × replicas).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "4"))]
    pub cpu: Option<Cpu>,
    /// Memory of every replica together.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "8Gi"))]
    pub memory: Option<Memory>,
    /// Replicas, all deployments and jobs' runs under way together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Deployments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployments: Option<u64>,
    /// Volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<u64>,
}

impl Quota {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Quota::default()
    }
}

/// What a namespace holds, counted as its quota is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Usage {
    /// CPU asked by its deployments' desired replicas and its jobs' runs under way.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "500m"))]
    pub cpu: Cpu,
    /// Memory asked by its deployments' desired replicas and its jobs' runs under way.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1Gi"))]
    pub memory: Memory,
    /// Desired replicas of its deployments, and its jobs' runs under way.
    pub replicas: u64,
    /// Deployments.
    pub deployments: u64,
    /// Volumes.
    pub volumes: u64,
}

/// Whose calls a namespace's workloads may make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Its workloads may call any namespace's services (the default).
    #[default]
    None,
    /// Its workloads' calls through the ingress reach only its own namespace.
    Namespace,
}

/// A namespace as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Namespace {
    /// Its name (a DNS label).
    pub name: String,
    /// Its limits.
    #[serde(default)]
    pub quota: Quota,
    /// Whom its workloads may call.
    #[serde(default)]
    pub isolation: Isolation,
    /// What it holds now.
    #[serde(default)]
    pub usage: Usage,
    /// When it was made (0 for `default`).
    #[serde(default)]
    pub created_ms: u64,
}

/// `PUT /v1/namespaces/{ns}`: creates a namespace, or sets its quota and isolation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceRequest {
    /// Its limits; absent: unchanged (none for a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Whom its workloads may call; absent: unchanged (`none` for a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_default_are_plain_names() {
        assert_eq!(key(DEFAULT, "web"), "web");
        assert_eq!(key("team-a", "web"), "team-a/web");
        assert_eq!(split("web"), (DEFAULT, "web"));
        assert_eq!(split("team-a/web"), ("team-a", "web"));
        assert_eq!(split("job:team-a/nightly"), ("team-a", "nightly"));
        assert_eq!(plain("job:team-a/nightly"), "job:nightly");
        assert_eq!(of("job:x"), DEFAULT);
    }
}
