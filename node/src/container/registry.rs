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
//!
//! Private registries: the scheduler sends the credential of `skiff registry
//! login HOST` with each assignment whose image names HOST; the agent hands the
//! credentials of the node's current assignments to [`Registries::set_credentials`]
//! (memory only, never on disk). oci-client speaks both schemes registries
//! use: HTTP basic auth (a `WWW-Authenticate: Basic` challenge, as
//! docker-registry with htpasswd sends), and bearer tokens (a `Bearer
//! realm=…,service=…` challenge: the credential goes, as basic auth, to the
//! realm for a token scoped `repository:NAME:pull`, and the token to the
//! registry). A registry that refuses us is retried with backoff (the replica
//! stays `starting`, saying why), as a credential may arrive or be corrected.

use crate::blobs::sha256_hex;
use crate::runtime::ArtifactError;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::errors::OciErrorCode;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use skiff_api::RegistryCredential;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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
    /// Credentials by lowercased host: those the node's current assignments carry.
    credentials: Arc<Mutex<HashMap<String, RegistryCredential>>>,
}

/// How we asked: the user whose credential we sent, if any.
struct Asked<'a> {
    host: &'a str,
    user: Option<String>,
}

impl Registries {
    /// Registries, with `insecure` hosts allowed over plain HTTP.
    pub fn new(insecure: Vec<String>) -> Registries {
        Registries {
            insecure: insecure.into_iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            credentials: Arc::default(),
        }
    }

    /// The credentials to pull with from now on: exactly those given (the
    /// ones the node's assignments carry), so a credential the scheduler no
    /// longer sends is forgotten.
    pub fn set_credentials(&self, creds: impl IntoIterator<Item = RegistryCredential>) {
        let map = creds.into_iter().map(|c| (c.host.to_ascii_lowercase(), c)).collect();
        *self.credentials.lock().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// The credential for `registry`, as oci-client takes it, and its user.
    fn auth(&self, registry: &str) -> (RegistryAuth, Option<String>) {
        let creds = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        match creds.get(&registry.to_ascii_lowercase()) {
            Some(c) => (RegistryAuth::Basic(c.username.clone(), c.password.clone()), Some(c.username.clone())),
            None => (RegistryAuth::Anonymous, None),
        }
    }

    /// A client for `reference`'s registry that authenticates with its
    /// credential, if the node holds one: a bearer challenge is answered now
    /// (a refused credential is an error here, where the token server says
    /// why), basic auth goes with every request.
    async fn authed<'r>(&self, reference: &'r Reference) -> Result<(Client, RegistryAuth, Asked<'r>), ArtifactError> {
        let registry = reference.registry();
        let client = self.client(registry);
        let (auth, user) = self.auth(registry);
        let asked = Asked { host: registry, user };
        if asked.user.is_some() {
            client
                .auth(reference, &auth, RegistryOperation::Pull)
                .await
                .map_err(|e| classify(&format!("cannot log in to registry {registry}"), e, &asked))?;
        }
        client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
        Ok((client, auth, asked))
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
        let (client, auth, asked) = self.authed(reference).await?;
        let accepted: Vec<&str> = MANIFEST_TYPES.iter().chain(INDEX_TYPES.iter()).copied().collect();
        let mut target = reference.clone();
        // An index points at a manifest; one level is all there is.
        for _ in 0..2 {
            let (bytes, _) = client
                .pull_manifest_raw(&target, &auth, &accepted)
                .await
                .map_err(|e| classify(&format!("cannot pull the manifest of {target}"), e, &asked))?;
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
        let (client, _, asked) = self.authed(reference).await?;
        let mut out: Vec<u8> = Vec::new();
        client
            .pull_blob(reference, digest, &mut out)
            .await
            .map_err(|e| classify(&format!("cannot pull blob {digest} of {reference}"), e, &asked))?;
        let got = format!("sha256:{}", sha256_hex(&out));
        if got != digest {
            return Err(ArtifactError::Invalid(format!(
                "blob {digest} from the registry has digest {got}; refusing it"
            )));
        }
        Ok(out)
    }
}

/// A registry error: not found or malformed never gets better by retrying; a
/// network error may, and so may a refusal (a credential may arrive or be
/// corrected: the replica waits, saying why, as Kubernetes' ImagePullBackOff).
fn classify(what: &str, e: OciDistributionError, asked: &Asked<'_>) -> ArtifactError {
    let refused = match &e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|o| matches!(o.code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
        }
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => false,
    };
    let host = asked.host;
    if refused {
        return ArtifactError::Transient(match &asked.user {
            Some(user) => format!("{what}: registry {host} refused the credentials for user {user}"),
            None => format!(
                "{what}: registry {host} requires credentials; store them with `skiff registry login {host} --username USER --password-stdin`"
            ),
        });
    }
    let msg = format!("{what}: {e}");
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => ArtifactError::Transient(msg),
        OciDistributionError::ServerError { code, .. } if code >= 500 || code == 429 => ArtifactError::Transient(msg),
        _ => ArtifactError::Invalid(msg),
    }
}

impl super::ContainerRuntime {
    /// The registry credentials the node's current assignments carry (set by
    /// the agent at every converge; a pull waiting for one uses it at its next try).
    pub fn set_registry_credentials(&self, creds: impl IntoIterator<Item = RegistryCredential>) {
        self.registries.set_credentials(creds);
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

    /// A registry that answers only bearer tokens, and its token server: the
    /// `WWW-Authenticate: Bearer realm=…,service=…` challenge of `/v2/`, the
    /// token from the realm for the user's basic credentials and the
    /// repository's pull scope, then the manifest and blob for that token.
    mod bearer {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::{IntoResponse, Response};
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        /// base64("alice:s3cret")
        const ALICE: &str = "Basic YWxpY2U6czNjcmV0";
        const TOKEN: &str = "tok-123";
        pub const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},"layers":[]}"#;
        pub const BLOB: &[u8] = b"layer bytes";

        #[derive(Clone, Default)]
        pub struct Fake {
            pub port: u16,
            /// The token requests' queries.
            pub asked: Arc<Mutex<Vec<HashMap<String, String>>>>,
        }

        fn challenge(port: u16) -> Response {
            let value = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry""#);
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, value)], "").into_response()
        }

        fn bearer_ok(h: &HeaderMap) -> bool {
            h.get(header::AUTHORIZATION).is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes())
        }

        async fn v2(State(f): State<Fake>) -> Response {
            challenge(f.port)
        }

        async fn token(State(f): State<Fake>, h: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
            f.asked.lock().unwrap().push(q);
            match h.get(header::AUTHORIZATION) {
                Some(v) if v.as_bytes() == ALICE.as_bytes() => {
                    axum::Json(serde_json::json!({ "token": TOKEN, "expires_in": 300 })).into_response()
                }
                Some(_) => (StatusCode::UNAUTHORIZED, "invalid username or password").into_response(),
                // An anonymous token that may pull nothing, as public registries give.
                None => axum::Json(serde_json::json!({ "token": "anonymous" })).into_response(),
            }
        }

        async fn manifest(State(f): State<Fake>, h: HeaderMap) -> Response {
            if !bearer_ok(&h) {
                return challenge(f.port);
            }
            let ct = "application/vnd.oci.image.manifest.v1+json";
            ([(header::CONTENT_TYPE, ct)], MANIFEST).into_response()
        }

        async fn blob(State(f): State<Fake>, h: HeaderMap) -> Response {
            if !bearer_ok(&h) {
                return challenge(f.port);
            }
            BLOB.into_response()
        }

        pub async fn start() -> Fake {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let fake = Fake { port: listener.local_addr().expect("addr").port(), ..Fake::default() };
            let app = axum::Router::new()
                .route("/v2/", axum::routing::get(v2))
                .route("/token", axum::routing::get(token))
                .route("/v2/team/app/manifests/{reference}", axum::routing::get(manifest))
                .route("/v2/team/app/blobs/{digest}", axum::routing::get(blob))
                .with_state(fake.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            fake
        }
    }

    fn credential(host: &str, password: &str) -> RegistryCredential {
        RegistryCredential { host: host.to_string(), username: "alice".into(), password: password.into() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bearer_challenge_is_answered_with_a_token_for_the_credential() {
        let fake = bearer::start().await;
        let host = format!("127.0.0.1:{}", fake.port);
        let reference = Registries::parse(&format!("{host}/team/app:1")).unwrap();
        let registries = Registries::default();

        // No credential: the anonymous token pulls nothing, and the reason says what to do.
        let Err(ArtifactError::Transient(why)) = registries.manifest(&reference).await else {
            panic!("an anonymous pull from a private registry succeeded or was not retried")
        };
        assert!(why.contains(&format!("registry {host} requires credentials")), "{why}");
        assert!(why.contains(&format!("skiff registry login {host}")), "{why}");

        // A wrong password: the token server refuses it, and the reason says so.
        registries.set_credentials([credential(&host, "wrong")]);
        let Err(ArtifactError::Transient(why)) = registries.manifest(&reference).await else {
            panic!("a pull with a wrong password succeeded or was not retried")
        };
        assert!(why.contains(&format!("registry {host} refused the credentials for user alice")), "{why}");

        // The right one: a token scoped to the repository, then the manifest and a blob.
        registries.set_credentials([credential(&host.to_uppercase(), "s3cret")]);
        let (bytes, digest) = registries.manifest(&reference).await.expect("manifest with a token");
        assert_eq!(bytes, bearer::MANIFEST);
        assert_eq!(digest, format!("sha256:{}", sha256_hex(bearer::MANIFEST)));
        let blob_digest = format!("sha256:{}", sha256_hex(bearer::BLOB));
        assert_eq!(registries.blob(&reference, &blob_digest).await.expect("blob with a token"), bearer::BLOB);
        let asked = fake.asked.lock().unwrap().clone();
        let last = asked.last().expect("the token server was asked");
        assert_eq!(last.get("scope").map(String::as_str), Some("repository:team/app:pull"));
        assert_eq!(last.get("service").map(String::as_str), Some("fake-registry"));

        // Forgotten with the assignments that carried it.
        registries.set_credentials([]);
        assert!(registries.manifest(&reference).await.is_err());
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
