//! HTTPS client to another node's :25000, pinned to the identity the user gave: the
//! FP12-or-longer prefix of the server certificate's SHA-256 (MicroK8s's `/FP` check), the full
//! SHA-256 of the cluster CA (our token string), or nothing (`--skip-verify`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// What the server must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Hex prefix (≥ 12 chars) of the SHA-256 of the leaf certificate's DER.
    LeafPrefix(String),
    /// Full hex SHA-256 of the CA certificate (DER) that must have signed the leaf; the server
    /// sends the CA in its chain.
    Ca(String),
    /// No verification (`--skip-verify`).
    None,
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

fn sha256_hex(der: &[u8]) -> String {
    crate::pki::hex(&Sha256::digest(der))
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Pin::None => Ok(ServerCertVerified::assertion()),
            Pin::LeafPrefix(prefix) => {
                if sha256_hex(end_entity).starts_with(&prefix.to_ascii_lowercase()) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(
                        "server certificate fingerprint mismatch".into(),
                    ))
                }
            }
            Pin::Ca(hash) => {
                let ca = intermediates
                    .iter()
                    .find(|c| sha256_hex(c).eq_ignore_ascii_case(hash))
                    .ok_or_else(|| {
                        rustls::Error::General(
                            "the server did not present the pinned cluster CA".into(),
                        )
                    })?;
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(ca.clone().into_owned())
                    .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
                webpki.verify_server_cert(end_entity, &[], server_name, &[], now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
}

/// A reqwest client pinned to `pin`, connecting from `local` when given.
pub fn client(
    pin: Pin,
    local: Option<IpAddr>,
    timeout: Duration,
) -> Result<reqwest::Client, PeerError> {
    let provider = crate::daemon::tls::provider();
    let verifier = Arc::new(PinnedVerifier {
        pin,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PeerError::Client(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    if let Some(ip) = local.filter(|ip| !ip.is_unspecified()) {
        builder = builder.local_address(ip);
    }
    builder
        .build()
        .map_err(|e| PeerError::Client(e.to_string()))
}

/// `https://ip:port` with IPv6 bracketed.
pub fn base_url(addr: SocketAddr) -> String {
    format!("https://{addr}")
}
