//! A guest's own HTTP requests: to another deployment by name through the
//! node's ingress, to an allowed host directly (HTTPS verified against the
//! system's roots and `--outbound-ca-file`), and nowhere else.

use http::Response;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// ingress, to an allowed host directly (HTTPS verified against the system's
/// roots and `--outbound-ca-file`), and nowhere else.
pub(super) struct Outbound {
    pub(super) allowed: Arc<Vec<String>>,
    pub(super) suffix: String,
    pub(super) ingress: Option<SocketAddr>,
    pub(super) tls: tokio_native_tls::TlsConnector,
    /// The caller's namespace, when it has `isolation: namespace` (#20): then
    /// only that namespace's deployments are reached.
    pub(super) isolated: Option<String>,
}

/// The TLS client for guests' outbound HTTPS: the system's trust store (OpenSSL's
/// default paths, as `update-ca-certificates` maintains them) plus the
/// certificates in `ca_file`, if given.
pub(super) fn outbound_tls(ca_file: Option<&Path>) -> anyhow::Result<tokio_native_tls::TlsConnector> {
    use tokio_native_tls::native_tls;
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the outbound CA file {}: {e}", path.display()))?;
        let certs = native_tls::Certificate::stack_from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("the outbound CA file {} is not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("the outbound CA file {} holds no PEM certificate", path.display());
        }
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    let connector = builder.build().map_err(|e| anyhow::anyhow!("cannot set up TLS for outbound https: {e}"))?;
    Ok(tokio_native_tls::TlsConnector::from(connector))
}

/// A connection to send one request over: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Whether `host` (and `port`) matches one of `allowed`: `host`, `host:port`,
/// or `*.domain` (any subdomain).
pub fn host_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim().to_ascii_lowercase();
        let (name, want_port) = match pattern.rsplit_once(':') {
            Some((n, p)) => match p.parse::<u16>() {
                Ok(p) => (n.to_string(), Some(p)),
                Err(_) => return false,
            },
            None => (pattern.clone(), None),
        };
        if want_port.is_some_and(|p| p != port) {
            return false;
        }
        match name.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == name,
        }
    })
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    Response<WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        use wasmtime_wasi_http::Error;
        let uri = request.uri().clone();
        let host = uri.host().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let internal = host.ends_with(&format!(".{}", self.suffix));
        let other_namespace = match (&self.isolated, host.strip_suffix(&format!(".{}", self.suffix))) {
            (Some(own), Some(name)) if internal => skiff_api::namespace::of_host(name) != own.as_str(),
            _ => false,
        };
        let target: Result<String, Error> = if other_namespace {
            tracing::debug!(%host, "outbound request refused: another namespace, and this one is isolated");
            let own = self.isolated.as_deref().unwrap_or_default();
            crate::metrics::METRICS.isolation_refusals.with_label_values(&[own, "wasm"]).inc();
            Err(Error::HttpRequestDenied)
        } else if internal {
            // Inside the cluster: plain HTTP to the node's own ingress whatever
            // the scheme; the ingress routes it on like any request.
            match self.ingress {
                Some(addr) => Ok(addr.to_string()),
                None => Err(Error::DestinationUnavailable),
            }
        } else if !host_allowed(&self.allowed, &host, port) {
            tracing::debug!(%host, port, "outbound request refused: host not in allowed_hosts");
            Err(Error::HttpRequestDenied)
        } else {
            Ok(format!("{host}:{port}"))
        };
        let tls = (https && !internal).then(|| self.tls.clone());
        // The name the certificate must carry (an IPv6 literal without brackets).
        let tls_name = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(Duration::from_secs(10));
        let first_byte_timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(60));
        Box::new(async move {
            let target = target?;
            let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&target))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Connect)?;
            let stream: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(tls) => {
                    let handshake = tokio::time::timeout(connect_timeout, tls.connect(&tls_name, stream))
                        .await
                        .map_err(|_| Error::ConnectionTimeout)?;
                    Box::new(handshake.map_err(|e| {
                        tracing::debug!(%host, port, "outbound TLS handshake failed: {e}");
                        // OpenSSL says "certificate verify failed" for an untrusted
                        // or misnamed certificate; the guest gets that as its own code.
                        if e.to_string().contains("certificate") {
                            Error::TlsCertificateError
                        } else {
                            Error::TlsProtocolError
                        }
                    })?)
                }
            };
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                .await
                .map_err(Error::from)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("outbound connection ended: {e}");
                }
            });
            let mut request = request;
            // Origin form on the wire; the Host header (set by wasmtime) keeps
            // the name, which is what routes `NAME.skiff.local` at the ingress.
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
            *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
            let resp = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(Error::from)?;
            let resp = resp.map(|b| b.map_err(Error::from).boxed_unsync());
            Ok((resp, Box::new(async { Ok(()) }) as Box<dyn std::future::Future<Output = _> + Send>))
        })
    }
}
