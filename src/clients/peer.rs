//! HTTPS client to another node's :25000, pinned to the identity the user gave: the
//! FP12-or-longer prefix of the server certificate's SHA-256 (MicroK8s's `/FP` check), the full
//! SHA-256 of the cluster CA (our token string), or nothing (`--skip-verify`).
//!
//! A server that fails its pin is refused during the handshake with a [`PinMismatch`] inside
//! rustls's error; [`PeerError::Identity`] is found by downcasting, never by reading messages.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::sys::runner::BoxFuture;
use crate::util::errtext::error_chain;
use crate::util::hex::sha256_hex;

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

/// Why a server is not the one pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinMismatch {
    #[error("server certificate fingerprint mismatch")]
    Fingerprint,
    #[error("the server did not present the pinned cluster CA")]
    CaNotPresented,
    #[error("the server certificate is not valid for the pinned cluster CA: {0}")]
    CaChain(String),
}

impl PinMismatch {
    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }

    /// The mismatch that made a connection fail, if that is why: looks through the error's
    /// sources for the rustls error the verifier returned. tokio-rustls wraps it in an
    /// `io::Error`, which the connector may wrap in another; `io::Error::source` skips the
    /// wrapped error itself, so wrappers are opened with `get_ref`.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<PinMismatch> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = next {
            let mut inner = e;
            while let Some(io) = inner.downcast_ref::<std::io::Error>() {
                match io.get_ref() {
                    Some(wrapped) => inner = wrapped,
                    None => break,
                }
            }
            if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
                inner.downcast_ref::<rustls::Error>()
            {
                if let Some(found) = other.0.downcast_ref::<PinMismatch>() {
                    return Some(found.clone());
                }
            }
            next = e.source();
        }
        None
    }
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
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
                    Err(PinMismatch::Fingerprint.into_rustls())
                }
            }
            Pin::Ca(hash) => {
                let ca = intermediates
                    .iter()
                    .find(|c| sha256_hex(c).eq_ignore_ascii_case(hash))
                    .ok_or_else(|| PinMismatch::CaNotPresented.into_rustls())?;
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
                webpki
                    .verify_server_cert(end_entity, &[], server_name, &[], now)
                    .map_err(|e| PinMismatch::CaChain(e.to_string()).into_rustls())
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
    /// The server is not the one pinned (or its chain does not verify against the pin).
    #[error(transparent)]
    Identity(PinMismatch),
    /// No answer: refused, unreachable, timed out, cut off (the text is the whole chain).
    #[error("{0}")]
    Transport(String),
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
}

impl PeerError {
    fn from_request(e: reqwest::Error) -> PeerError {
        match PinMismatch::find(&e) {
            Some(mismatch) => PeerError::Identity(mismatch),
            None => PeerError::Transport(error_chain(&e)),
        }
    }
}

/// A reqwest client pinned to `pin`, connecting from `local` when given.
pub fn client(
    pin: Pin,
    local: Option<IpAddr>,
    timeout: Duration,
) -> Result<reqwest::Client, PeerError> {
    let provider = crate::pki::tls::provider();
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

/// What a peer answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The `Date` header, if any (for the clock-skew check).
    pub date: Option<String>,
    pub body: Vec<u8>,
}

/// The joining side's view of another node's :25000 (a trait so tests can answer for it).
pub trait PeerClient: Send + Sync {
    /// `GET path` on the peer at `addr`, which must prove `pin`.
    fn get<'a>(
        &'a self,
        addr: SocketAddr,
        pin: &'a Pin,
        path: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Answer, PeerError>>;

    /// `POST path` with a JSON `body`.
    fn post_json<'a>(
        &'a self,
        addr: SocketAddr,
        pin: &'a Pin,
        path: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Answer, PeerError>>;
}

/// Largest answer read from a peer (a join answer is a few kilobytes).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The real peers, over HTTPS from this node's own address (`local`, unless unspecified).
#[derive(Debug, Clone)]
pub struct HttpsPeers {
    pub local: Option<IpAddr>,
}

impl HttpsPeers {
    async fn send(
        &self,
        pin: &Pin,
        timeout: Duration,
        build: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Answer, PeerError> {
        let client = client(pin.clone(), self.local, timeout)?;
        let mut response = build(&client)
            .send()
            .await
            .map_err(PeerError::from_request)?;
        let status = response.status().as_u16();
        let date = response
            .headers()
            .get("date")
            .and_then(|d| d.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(PeerError::from_request)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(PeerError::Transport(format!(
                    "the answer is larger than {} MiB",
                    MAX_ANSWER_BYTES >> 20
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, date, body })
    }
}

impl PeerClient for HttpsPeers {
    fn get<'a>(
        &'a self,
        addr: SocketAddr,
        pin: &'a Pin,
        path: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Answer, PeerError>> {
        Box::pin(self.send(pin, timeout, move |c| {
            c.get(format!("{}{path}", base_url(addr)))
        }))
    }

    fn post_json<'a>(
        &'a self,
        addr: SocketAddr,
        pin: &'a Pin,
        path: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Answer, PeerError>> {
        Box::pin(self.send(pin, timeout, move |c| {
            c.post(format!("{}{path}", base_url(addr)))
                .header("content-type", "application/json")
                .body(body)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, LeafSpec};

    /// A TLS server on a loopback port that completes handshakes with `pair` and answers
    /// every request with 200 `{}`.
    async fn serve(pair: &pki::PemPair, chain: Option<&str>) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut pem = pair.cert_pem.clone();
        if let Some(ca) = chain {
            pem.push_str(ca);
        }
        let certs = crate::pki::tls::certs_from_pem(&pem, std::path::Path::new("t")).unwrap();
        let key = crate::pki::tls::key_from_pem(&pair.key_pem, std::path::Path::new("t")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(crate::pki::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn leaf(ca: &pki::Authority) -> pki::PemPair {
        ca.issue(&LeafSpec {
            common_name: "node".into(),
            ips: vec!["127.0.0.1".parse().unwrap()],
            server: true,
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_wrong_pin_is_a_typed_identity_error() {
        let ca = pki::Authority::generate("ca").unwrap();
        let pair = leaf(&ca);
        let addr = serve(&pair, Some(ca.cert_pem())).await;
        let peers = HttpsPeers { local: None };
        let t = Duration::from_secs(5);

        let right = pki::fingerprint12(&pair.cert_pem).unwrap();
        let ok = peers
            .get(addr, &Pin::LeafPrefix(right), "/health", t)
            .await
            .unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"{}"[..]));

        let wrong = Pin::LeafPrefix("000000000000".into());
        let err = peers.get(addr, &wrong, "/health", t).await.unwrap_err();
        assert!(
            matches!(err, PeerError::Identity(PinMismatch::Fingerprint)),
            "{err:?}"
        );

        let other_ca = pki::Authority::generate("other").unwrap();
        let hash = pki::cert_sha256_hex(other_ca.cert_pem(), "ca").unwrap();
        let err = peers
            .get(addr, &Pin::Ca(hash), "/health", t)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PeerError::Identity(PinMismatch::CaNotPresented)),
            "{err:?}"
        );

        let hash = pki::cert_sha256_hex(ca.cert_pem(), "ca").unwrap();
        let ok = peers.get(addr, &Pin::Ca(hash), "/health", t).await.unwrap();
        assert_eq!(ok.status, 200);
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = HttpsPeers { local: None }
            .get(addr, &Pin::None, "/health", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Transport(_)), "{err:?}");
    }
}
