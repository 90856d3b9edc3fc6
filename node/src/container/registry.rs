//! Pulls from OCI registries (the distribution API, with the oci-client crate):
//! an image reference whose first path component names a host
//! (`localhost:5000/busybox:1`, `registry.example.com/team/app@sha256:…`) is
//! pulled by the node itself when the scheduler does not hold its blobs.
//!
//! HTTPS always, except for a registry on a loopback address and for the hosts
//! given to the node with `--insecure-registry HOST`, which are spoken to over
//! plain HTTP. Every blob is checked against its digest before it is kept; layers
//! then take the same path as imported ones (the content-addressed cache and the
//! hostile-input-safe unpacking).

use crate::blobs::sha256_hex;
use crate::runtime::ArtifactError;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::net::IpAddr;
use std::time::Duration;

/// Media types of a single-platform image manifest.
pub const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
/// Media types of a multi-platform index.
pub const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// Whether `reference` names a registry host (its first path component has a
/// `.` or a `:`, or is `localhost`), as Docker reads references.
pub fn is_remote(reference: &str) -> bool {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

/// The host of `registry` (`host[:port]`, `[v6]:port`).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    registry
        .rsplit_once(':')
        .filter(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h)
}

/// Whether `registry` is on this machine's loopback.
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The registries a node pulls from.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// Hosts (`host` or `host:port`) spoken to over plain HTTP.
    insecure: Vec<String>,
}

impl Registries {
    /// Registries, with `insecure` hosts allowed over plain HTTP.
    pub fn new(insecure: Vec<String>) -> Registries {
        Registries { insecure: insecure.into_iter().map(|h| h.trim().to_ascii_lowercase()).collect() }
    }

    /// Whether `registry` is spoken to over plain HTTP.
    pub fn plain_http(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        is_loopback(&registry) || self.insecure.iter().any(|h| *h == registry || h == host_of(&registry))
    }

    fn client(&self, registry: &str) -> Client {
        let protocol = if self.plain_http(registry) {
            ClientProtocol::HttpsExcept(vec![registry.to_string()])
        } else {
            ClientProtocol::Https
        };
        Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        })
    }

    /// Parses a remote reference.
    pub fn parse(reference: &str) -> Result<Reference, ArtifactError> {
        reference
            .parse::<Reference>()
            .map_err(|e| ArtifactError::Invalid(format!("image reference {reference} is not valid: {e}")))
    }

    /// The image manifest `reference` names, and its digest: a tag is resolved
    /// now; an index is narrowed to the linux manifest of this machine's
    /// architecture. The bytes are checked against the digest.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), ArtifactError> {
        let client = self.client(reference.registry());
        let accepted: Vec<&str> = MANIFEST_TYPES.iter().chain(INDEX_TYPES.iter()).copied().collect();
        let mut target = reference.clone();
        // An index points at a manifest; one level is all there is.
        for _ in 0..2 {
            let (bytes, _) = client
                .pull_manifest_raw(&target, &RegistryAuth::Anonymous, &accepted)
                .await
                .map_err(|e| classify(&format!("cannot pull the manifest of {target}"), e))?;
            let digest = format!("sha256:{}", sha256_hex(&bytes));
            if let Some(want) = target.digest()
                && want != digest
            {
                return Err(ArtifactError::Invalid(format!(
                    "the registry sent a manifest of {target} whose digest is {digest}; refusing it"
                )));
            }
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| ArtifactError::Invalid(format!("the manifest of {target} is not JSON: {e}")))?;
            let media_type = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or_default();
            let is_index = INDEX_TYPES.contains(&media_type) || (media_type.is_empty() && v.get("manifests").is_some());
            if !is_index {
                return Ok((bytes.to_vec(), digest));
            }
            let arch = oci_arch();
            let chosen = v
                .get("manifests")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .find(|m| {
                    let p = &m["platform"];
                    p["os"] == "linux" && p["architecture"] == arch
                })
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| ArtifactError::Invalid(format!("{target} has no image for linux/{arch}")))?;
            target = reference.clone_with_digest(chosen.to_string());
        }
        Err(ArtifactError::Invalid(format!("{reference} is an index of indexes, which is not supported")))
    }

    /// Blob `digest` of `reference`'s repository, checked against its digest.
    pub async fn blob(&self, reference: &Reference, digest: &str) -> Result<Vec<u8>, ArtifactError> {
        let client = self.client(reference.registry());
        let mut out: Vec<u8> = Vec::new();
        client
            .pull_blob(reference, digest, &mut out)
            .await
            .map_err(|e| classify(&format!("cannot pull blob {digest} of {reference}"), e))?;
        let got = format!("sha256:{}", sha256_hex(&out));
        if got != digest {
            return Err(ArtifactError::Invalid(format!(
                "blob {digest} from the registry has digest {got}; refusing it"
            )));
        }
        Ok(out)
    }
}

/// A registry error: not found, refused or malformed never gets better by
/// retrying; a network error may.
fn classify(what: &str, e: OciDistributionError) -> ArtifactError {
    let msg = format!("{what}: {e}");
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => ArtifactError::Transient(msg),
        OciDistributionError::ServerError { code, .. } if code >= 500 || code == 429 => ArtifactError::Transient(msg),
        _ => ArtifactError::Invalid(msg),
    }
}

/// This machine's architecture as OCI spells it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_references_name_a_host() {
        assert!(is_remote("localhost:5000/busybox:1"));
        assert!(is_remote("localhost/busybox"));
        assert!(is_remote("registry.example.com/team/app@sha256:00"));
        assert!(is_remote("127.0.0.1:5000/app"));
        assert!(!is_remote("busybox"));
        assert!(!is_remote("busybox:1.36"));
        assert!(!is_remote("team/app:v1"));
        assert!(!is_remote("busybox:latest@sha256:00"));
    }

    #[test]
    fn plain_http_only_for_loopback_and_named_hosts() {
        let r = Registries::new(vec!["registry.lan:5000".into(), "plain.example".into()]);
        assert!(r.plain_http("localhost:5000"));
        assert!(r.plain_http("127.0.0.1:5000"));
        assert!(r.plain_http("[::1]:5000"));
        assert!(r.plain_http("registry.lan:5000"));
        assert!(!r.plain_http("registry.lan:5001"));
        assert!(r.plain_http("plain.example:443"));
        assert!(!r.plain_http("registry.example.com"));
        assert!(!r.plain_http("10.0.0.1:5000"));
    }
}
