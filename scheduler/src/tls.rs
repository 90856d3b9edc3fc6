//! The API's TLS. At first start the scheduler makes a CA (`ca.key`, `ca.crt`) and
//! a server certificate signed by it (`server.key`, and `server.crt` holding the
//! certificate and then the CA, so that a client holding only the CA's fingerprint
//! finds the CA in the chain). They stay in the data dir (keys 0600) and are
//! reused: the CA for as long as its files live (its fingerprint is what nodes
//! and the CLI pin), the server certificate until it no longer names every
//! address the server answers at or has less than 30 days left, when the same CA
//! signs a new one at start-up.
//!
//! `TlsListener` does the handshakes off the accept loop, so a client that
//! connects and says nothing holds up no one; a plain-HTTP request gets a one-line
//! 400 saying to use https.

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use skiff_api::tls::{CaFingerprint, PinnedCa};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";

const CA_NAME: &str = "skiff CA";
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 365;
/// A server certificate with less left than this is replaced at start-up.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest a client may take to begin and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The scheduler's CA and the server configuration that presents its certificate.
pub struct Tls {
    /// What clients pin.
    pub fingerprint: CaFingerprint,
    pub config: Arc<rustls::ServerConfig>,
}

/// The names the server certificate must be valid for: localhost and its
/// loopback addresses, the listen address (every interface's address when it is
/// unspecified), the host name, and `extra` (`--tls-san`).
pub fn names(listen: SocketAddr, extra: &[String]) -> anyhow::Result<Vec<String>> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if listen.ip().is_unspecified() {
        let addrs = nix::ifaddrs::getifaddrs().context("listing the interfaces' addresses")?;
        for a in addrs {
            let Some(ip) = a.address.and_then(|s| {
                s.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            }) else {
                continue;
            };
            // Link-local IPv6 addresses need a zone, which a URL cannot name.
            let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if ip.is_ipv4() || listen.is_ipv6() && !link_local {
                names.push(ip.to_string());
            }
        }
    } else {
        names.push(listen.ip().to_string());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    if !host.is_empty() && ServerName::try_from(host.to_string()).is_ok() {
        names.push(host.to_string());
    }
    for san in extra {
        let san = san.trim().to_string();
        if ServerName::try_from(san.clone()).is_err() {
            bail!("--tls-san {san:?} is neither a DNS name nor an IP address");
        }
        names.push(san);
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    Ok(names)
}

/// Loads the CA and server certificate from `data_dir`, making what is missing
/// (the server certificate anew if it does not cover `names` for 30 more days).
pub fn open(data_dir: &Path, names: &[String]) -> anyhow::Result<Tls> {
    let (ca_der, ca_pem, issuer) = ca(data_dir)?;
    let fingerprint = CaFingerprint::of(&ca_der);
    let (cert_path, key_path) = (data_dir.join(SERVER_CERT), data_dir.join(SERVER_KEY));
    let existing = std::fs::read(&cert_path).ok().zip(std::fs::read(&key_path).ok()).and_then(|(cert, key)| {
        let leaf = CertificateDer::from_pem_slice(&cert).ok()?;
        let key = PrivateKeyDer::from_pem_slice(&key).ok()?;
        covers(&ca_der, &leaf, names).then_some((leaf, key))
    });
    let (leaf, key) = match existing {
        Some(found) => found,
        None => {
            let (leaf, key) = issue(&issuer, names)?;
            crate::files::write_private(&key_path, key.serialize_pem().as_bytes())?;
            crate::files::write_atomic(&cert_path, format!("{}{ca_pem}", leaf.pem()).as_bytes(), 0o644)?;
            tracing::info!("made a server certificate for {} (signed by the CA {fingerprint})", names.join(", "));
            let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
            (leaf.der().clone(), key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![leaf, ca_der], key)
        .with_context(|| format!("the server certificate in {}", cert_path.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls { fingerprint, config: Arc::new(config) })
}

/// The CA's parameters. Signing needs only its name, key usages and key-id
/// method, so the same parameters and the stored key make the stored CA's issuer.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The CA's certificate and issuer: loaded, or made at first start.
fn ca(data_dir: &Path) -> anyhow::Result<(CertificateDer<'static>, String, Issuer<'static, KeyPair>)> {
    let (cert_path, key_path) = (data_dir.join(CA_CERT), data_dir.join(CA_KEY));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pem =
                std::fs::read_to_string(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
            let cert = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert_path.display()))?;
            let key_pem =
                std::fs::read_to_string(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem).with_context(|| format!("reading {}", key_path.display()))?;
            Ok((cert, pem, Issuer::new(ca_params(), key)))
        }
        (false, false) => {
            let key = KeyPair::generate().context("making the CA key")?;
            let mut params = ca_params();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(CA_DAYS);
            let cert = params.self_signed(&key).context("making the CA certificate")?;
            crate::files::write_private(&key_path, key.serialize_pem().as_bytes())?;
            crate::files::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!("made a CA in {} ({})", cert_path.display(), CaFingerprint::of(cert.der()));
            Ok((cert.der().clone(), cert.pem(), Issuer::new(ca_params(), key)))
        }
        _ => bail!(
            "{} and {} must both be there or both be gone: restore the missing one, or delete both to make a new CA (every node must then join with the new fingerprint)",
            cert_path.display(),
            key_path.display()
        ),
    }
}

/// A new server certificate for `names`, signed by the CA.
fn issue(issuer: &Issuer<'static, KeyPair>, names: &[String]) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate().context("making the server key")?;
    let mut params = CertificateParams::new(names.to_vec()).context("the server certificate's names")?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "skiff server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(SERVER_DAYS);
    let cert = params.signed_by(&key, issuer).context("signing the server certificate")?;
    Ok((cert, key))
}

/// Whether `leaf` chains to the CA and is valid for every name 30 days from now:
/// checked exactly as a client checks it.
fn covers(ca: &CertificateDer<'static>, leaf: &CertificateDer<'static>, names: &[String]) -> bool {
    let verifier = PinnedCa::new(Some(CaFingerprint::of(ca)));
    let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let later = UnixTime::since_unix_epoch(now + RENEW_BEFORE);
    names.iter().all(|n| {
        ServerName::try_from(n.clone())
            .is_ok_and(|name| verifier.verify_server_cert(leaf, std::slice::from_ref(ca), &name, &[], later).is_ok())
    })
}

/// A listener that hands axum connections whose TLS handshake is done.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and shakes hands with `config`, each connection in a task
    /// of its own.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                match tcp.accept().await {
                    Ok((stream, peer)) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            if let Some(tls) = handshake(stream, peer, local, acceptor).await {
                                let _ = tx.send((tls, peer)).await;
                            }
                        });
                    }
                    Err(e) if is_connection_error(&e) => {}
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum does.
                        tracing::error!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended: nothing will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The TLS handshake of one connection, or `None` (logged at debug: a scanner or
/// a client that does not trust the CA is no news). A plain-HTTP request is
/// answered with a 400 naming the https URL.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        // A TLS handshake record.
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            refuse_plain_http(stream, local).await;
            return None;
        }
        _ => return None,
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer} failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake with {peer} timed out");
            None
        }
    }
}

async fn refuse_plain_http(mut stream: TcpStream, local: SocketAddr) {
    // Read the request's head first: closing with unread data would reset the
    // connection before the client reads the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while head.len() < 64 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::json!({
        "error": format!("this skiff server speaks HTTPS: use https://{local} (the CLI and nodes trust its CA by fingerprint: see skiff server's output)")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("skiff-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        p
    }

    #[test]
    fn the_ca_is_made_once_and_the_server_certificate_follows_the_names() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("ca");
        let names1 = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = open(&dir, &names1).expect("first start");
        for key in [CA_KEY, SERVER_KEY] {
            let mode = std::fs::metadata(dir.join(key)).expect("key file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let cert1 = std::fs::read(dir.join(SERVER_CERT)).expect("server.crt");
        assert_eq!(
            CaFingerprint::of_pem(&std::fs::read(dir.join(CA_CERT)).expect("ca.crt")).ok(),
            Some(first.fingerprint)
        );

        // A restart with the same names reuses everything.
        let again = open(&dir, &names1).expect("restart");
        assert_eq!(again.fingerprint, first.fingerprint);
        assert_eq!(std::fs::read(dir.join(SERVER_CERT)).expect("server.crt"), cert1);

        // A new name: a new server certificate from the same CA, valid for it.
        let names2 = vec!["localhost".to_string(), "10.9.8.7".to_string()];
        let third = open(&dir, &names2).expect("new name");
        assert_eq!(third.fingerprint, first.fingerprint);
        let cert2 = std::fs::read(dir.join(SERVER_CERT)).expect("server.crt");
        assert_ne!(cert2, cert1);
        let ca = CertificateDer::from_pem_file(dir.join(CA_CERT)).expect("ca");
        let leaf = CertificateDer::from_pem_slice(&cert2).expect("leaf");
        assert!(covers(&ca, &leaf, &names2));
        assert!(!covers(&ca, &leaf, &["example.com".to_string()]));

        // Half a CA is refused rather than silently replaced.
        std::fs::remove_file(dir.join(CA_KEY)).expect("rm ca.key");
        let err = open(&dir, &names2).err().expect("half a CA");
        assert!(err.to_string().contains("must both be there"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_hold_loopback_the_listen_address_and_extras() {
        let n = names("10.1.2.3:7070".parse().expect("addr"), &["skiff.example.com".into()]).expect("names");
        for want in ["localhost", "127.0.0.1", "10.1.2.3", "skiff.example.com"] {
            assert!(n.iter().any(|x| x == want), "{want} missing from {n:?}");
        }
        let all = names("0.0.0.0:7070".parse().expect("addr"), &[]).expect("names");
        assert!(!all.iter().any(|x| x == "0.0.0.0"), "{all:?}");
        assert!(names("127.0.0.1:1".parse().expect("addr"), &["not a name!".into()]).is_err());
    }
}
