//! Trusting the scheduler's HTTPS. The scheduler makes its own CA at first start;
//! nodes and the CLI trust it by its fingerprint (the SHA-256 of the CA
//! certificate's DER, `sha256:<hex>`), as `kubeadm join
//! --discovery-token-ca-cert-hash` does, and nothing else: no system roots.
//!
//! The join token carries the fingerprint: `<secret>.sha256:<hex>`. Only the
//! secret is sent to the scheduler; the fingerprint says which server to believe.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The SHA-256 of a CA certificate's DER encoding, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaFingerprint(pub [u8; 32]);

impl CaFingerprint {
    /// The fingerprint of the certificate `der`.
    pub fn of(der: &[u8]) -> CaFingerprint {
        CaFingerprint(Sha256::digest(der).into())
    }

    /// The fingerprint of the first certificate in the PEM text `pem` (such as the
    /// scheduler's `DATA_DIR/ca.crt`).
    pub fn of_pem(pem: &[u8]) -> Result<CaFingerprint, TlsError> {
        let der = CertificateDer::from_pem_slice(pem).map_err(|e| TlsError::Pem(e.to_string()))?;
        Ok(CaFingerprint::of(&der))
    }
}

impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CaFingerprint {
    type Err = TlsError;

    /// `sha256:<64 hex digits>`; colons between the bytes (as `openssl x509
    /// -fingerprint` prints them) and upper case are accepted.
    fn from_str(s: &str) -> Result<CaFingerprint, TlsError> {
        let bad = || TlsError::Fingerprint(s.to_string());
        let hex_part = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(digits).map_err(|_| bad())?;
        Ok(CaFingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

/// A join token as the scheduler prints it: the secret a node registers with,
/// and the fingerprint of the CA the node must find at the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// What the node sends (a bearer token) to register.
    pub secret: String,
    /// The scheduler's CA; `None` for a bare secret (plain HTTP, or a fingerprint
    /// given separately).
    pub ca: Option<CaFingerprint>,
}

impl FromStr for JoinToken {
    type Err = TlsError;

    /// `<secret>` or `<secret>.sha256:<hex>`.
    fn from_str(s: &str) -> Result<JoinToken, TlsError> {
        let s = s.trim();
        let (secret, ca) = match s.split_once('.') {
            Some((secret, ca)) => (secret, Some(ca.parse()?)),
            None => (s, None),
        };
        if secret.is_empty() {
            return Err(TlsError::EmptyToken);
        }
        Ok(JoinToken { secret: secret.to_string(), ca })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca {
            Some(ca) => write!(f, "{}.{ca}", self.secret),
            None => f.write_str(&self.secret),
        }
    }
}

/// A fingerprint, PEM file or join token that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Not `sha256:<64 hex digits>`.
    #[error("CA fingerprint {0:?} is not sha256:<64 hex digits>")]
    Fingerprint(String),
    /// No certificate in a PEM text.
    #[error("no PEM certificate: {0}")]
    Pem(String),
    /// A join token with nothing before its fingerprint.
    #[error("the join token is empty")]
    EmptyToken,
}

/// Why a server's certificate was not trusted. It travels inside rustls's error
/// and is what the CLI and node print.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The server's chain holds no CA with the pinned fingerprint.
    #[error(
        "the server's CA is {presented}, not the pinned {pinned} (a wrong --ca-fingerprint or join token, or another server at that address)"
    )]
    Mismatch {
        /// The fingerprint the client was given.
        pinned: CaFingerprint,
        /// What the server's chain ends with.
        presented: String,
    },
    /// The client was given no fingerprint at all.
    #[error(
        "the server's CA {presented} is not trusted: pass --ca-fingerprint (skiff server prints it) or --ca-file DATA_DIR/ca.crt"
    )]
    NotPinned {
        /// What the server's chain ends with.
        presented: String,
    },
}

/// Trusts a server only if its chain holds the CA with the pinned fingerprint and
/// that CA signed a currently valid certificate for the name dialled (checked by
/// webpki with the CA as the only root).
#[derive(Debug)]
pub struct PinnedCa {
    pin: Option<CaFingerprint>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    /// A verifier trusting the CA `pin`; with `None` it trusts nothing and says
    /// which fingerprint the server showed.
    pub fn new(pin: Option<CaFingerprint>) -> PinnedCa {
        PinnedCa { pin, provider: Arc::new(rustls::crypto::ring::default_provider()) }
    }
}

fn refuse(e: TrustError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = match intermediates.last() {
            Some(ca) => CaFingerprint::of(ca).to_string(),
            None => "not sent (the server sent its certificate alone)".to_string(),
        };
        let Some(pin) = self.pin else {
            return Err(refuse(TrustError::NotPinned { presented }));
        };
        let Some(ca) = intermediates.iter().find(|c| CaFingerprint::of(c) == pin) else {
            return Err(refuse(TrustError::Mismatch { pinned: pin, presented }));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client configuration that trusts only the CA `pin` (see [`PinnedCa`]).
pub fn client_config(pin: Option<CaFingerprint>) -> rustls::ClientConfig {
    let verifier = Arc::new(PinnedCa::new(pin));
    rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// The one-line reason of a TLS failure somewhere in `err`'s sources: the
/// [`TrustError`] if the verifier refused, else rustls's own words.
pub(crate) fn failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            if let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) = tls
                && let Some(trust) = other.downcast_ref::<TrustError>()
            {
                return Some(trust.to_string());
            }
            return Some(tls.to_string());
        }
        // An io::Error's source() skips the error it wraps: step into it instead.
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_and_join_tokens_parse() {
        let hex64 = "ab".repeat(32);
        let fp: CaFingerprint = format!("sha256:{hex64}").parse().expect("fingerprint");
        assert_eq!(fp.to_string(), format!("sha256:{hex64}"));
        let colons = format!("sha256:{}", vec!["AB"; 32].join(":"));
        assert_eq!(colons.parse::<CaFingerprint>().expect("colons"), fp);
        for bad in ["", "ab", &hex64, "sha256:abc", &format!("md5:{hex64}"), &format!("sha256:{hex64}00")] {
            assert!(bad.parse::<CaFingerprint>().is_err(), "{bad:?} parsed");
        }

        let t: JoinToken = format!("skj_123.sha256:{hex64}").parse().expect("token");
        assert_eq!(t, JoinToken { secret: "skj_123".into(), ca: Some(fp) });
        assert_eq!(t.to_string(), format!("skj_123.sha256:{hex64}"));
        assert_eq!("skj_1\n".parse::<JoinToken>().expect("bare"), JoinToken { secret: "skj_1".into(), ca: None });
        assert!("skj_1.sha256:zz".parse::<JoinToken>().is_err());
        assert!(format!(".sha256:{hex64}").parse::<JoinToken>().is_err());
    }

    /// A CA (self-signed) and its key.
    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).expect("ca cert");
        (cert, rcgen::Issuer::new(params, key))
    }

    fn leaf(names: &[&str], issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.signed_by(&key, issuer).expect("leaf").der().clone()
    }

    fn verify(
        pin: Option<CaFingerprint>,
        leaf: &CertificateDer<'static>,
        chain: &[CertificateDer<'static>],
        name: &str,
    ) -> Result<(), String> {
        let name = ServerName::try_from(name.to_string()).expect("server name");
        PinnedCa::new(pin).verify_server_cert(leaf, chain, &name, &[], UnixTime::now()).map(|_| ()).map_err(|e| {
            let wrapped: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::other(e));
            failure(wrapped.as_ref()).unwrap_or_default()
        })
    }

    #[test]
    fn the_verifier_trusts_only_the_pinned_ca() {
        let (ca_a, issuer_a) = ca("skiff CA");
        let (ca_b, issuer_b) = ca("skiff CA");
        let (fp_a, fp_b) = (CaFingerprint::of(ca_a.der()), CaFingerprint::of(ca_b.der()));
        let good = leaf(&["127.0.0.1", "localhost"], &issuer_a);
        let chain_a = [ca_a.der().clone()];

        // The pinned CA signed a certificate for the name dialled.
        assert_eq!(verify(Some(fp_a), &good, &chain_a, "127.0.0.1"), Ok(()));
        assert_eq!(verify(Some(fp_a), &good, &chain_a, "localhost"), Ok(()));

        // Another CA: refused, naming both fingerprints.
        let err = verify(Some(fp_b), &good, &chain_a, "127.0.0.1").expect_err("wrong pin");
        assert_eq!(
            err,
            format!(
                "the server's CA is {fp_a}, not the pinned {fp_b} (a wrong --ca-fingerprint or join token, or another server at that address)"
            )
        );
        // No pin: refused, saying what the server showed.
        let err = verify(None, &good, &chain_a, "127.0.0.1").expect_err("no pin");
        assert!(err.starts_with(&format!("the server's CA {fp_a} is not trusted")), "{err}");
        // The chain without the CA.
        let err = verify(Some(fp_a), &good, &[], "127.0.0.1").expect_err("no CA sent");
        assert!(err.contains("not sent"), "{err}");

        // An impostor showing the right CA's (public) certificate beside its own,
        // signed by another key: the signature does not check out.
        let impostor = leaf(&["127.0.0.1"], &issuer_b);
        let err = verify(Some(fp_a), &impostor, &chain_a, "127.0.0.1").expect_err("impostor");
        assert!(err.starts_with("invalid peer certificate"), "{err}");
        let err = verify(Some(fp_a), &impostor, &[ca_a.der().clone(), ca_b.der().clone()], "127.0.0.1")
            .expect_err("impostor with its own CA after the pinned one");
        assert!(err.starts_with("invalid peer certificate"), "{err}");

        // The right CA, but a certificate for another name.
        let err = verify(Some(fp_a), &good, &chain_a, "10.1.2.3").expect_err("wrong name");
        assert!(err.contains("not valid for name"), "{err}");

        // The fingerprint of a PEM file is that of its DER.
        assert_eq!(CaFingerprint::of_pem(ca_a.pem().as_bytes()).expect("pem"), fp_a);
        assert!(CaFingerprint::of_pem(b"nothing").is_err());
    }
}
