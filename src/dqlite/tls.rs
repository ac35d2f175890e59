//! Mutual TLS between dqlite members and clients, as go-dqlite's app layer does it
//! (dqlite.md §4): one self-signed key pair (`cluster.crt` / `cluster.key`) shared by every
//! member is at once the only trust root, the server certificate and the client
//! certificate. Clients verify the server against the name in the certificate's first DNS
//! SAN (go-dqlite's `ServerName`), never against the IP they dialled.
//!
//! Both sides are built here so the embedded member host and the client agree by
//! construction.
//!
//! No session resumption either way: every member answers to the same name, so a session
//! one member issued means nothing to another, and Go clients (Debian's go-dqlite 1.11:
//! k8s-dqlite, the `dqlite` shell) that offer a session our member issued to a Go member
//! fail the connection ("bad record MAC") instead of falling back to a full handshake. A
//! mixed cluster (k8s-dqlite and embedded members) needs full handshakes.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::pki::tls::provider;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Read(#[from] crate::state::StateError),
    #[error("cluster certificate is not usable: {0}")]
    Cert(String),
    #[error("cluster key is not usable: {0}")]
    Key(String),
    #[error("cluster certificate has no DNS subject alternative name (go-dqlite requires one as TLS server name)")]
    NoDnsSan,
    #[error("cannot build TLS configuration: {0}")]
    Config(String),
}

/// What a client needs to open TLS connections to cluster members.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// The name sent as SNI and verified in the server certificate.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads `cluster.crt` and `cluster.key` (or any cert/key pair) from disk.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientTls, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        client_config(&cert_pem, &key_pem)
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(String, String), TlsError> {
    Ok((
        crate::state::read_string(cert)?,
        crate::state::read_string(key)?,
    ))
}

/// Client side: trust exactly the cluster certificate, present it (with its key) as client
/// certificate, verify the server name from the certificate's first DNS SAN.
pub fn client_config(cert_pem: &str, key_pem: &str) -> Result<ClientTls, TlsError> {
    let (cert, key) = parse_pair(cert_pem, key_pem)?;
    let server_name = first_dns_san(&cert)?;
    let roots = root_store(&cert)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(ClientTls {
        config: Arc::new(config),
        server_name,
    })
}

/// Server side (for the embedded member's TLS terminator): present the cluster
/// certificate, require a client certificate and verify it against the cluster certificate.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = parse_pair(cert_pem, key_pem)?;
    let roots = Arc::new(root_store(&cert)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // No session for a client to offer to another member (see the module comment).
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// [`server_config`] from files.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_pem, key_pem) = read_pair(cert, key)?;
    server_config(&cert_pem, &key_pem)
}

fn parse_pair(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| TlsError::Cert(format!("{e:?}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(format!("{e:?}")))?;
    Ok((cert, key))
}

fn root_store(cert: &CertificateDer<'static>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(cert.clone())
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    Ok(roots)
}

/// The first DNS SAN of a certificate, as go-dqlite's `SimpleDialTLSConfig` picks it.
pub fn first_dns_san(cert: &CertificateDer<'_>) -> Result<ServerName<'static>, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::Cert(e.to_string()))?
        .ok_or(TlsError::NoDnsSan)?;
    let name = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .ok_or(TlsError::NoDnsSan)?;
    ServerName::try_from(name).map_err(|e| TlsError::Cert(format!("DNS SAN: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, LeafSpec};

    fn cluster_pair(dns: &[&str]) -> pki::PemPair {
        pki::self_signed(&LeafSpec {
            common_name: "k8s".into(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ips: vec![[127, 0, 0, 1].into()],
            server: true,
            client: true,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn server_name_is_first_dns_san() {
        let pair = cluster_pair(&["node-a", "node-b"]);
        let tls = client_config(&pair.cert_pem, &pair.key_pem).unwrap();
        assert_eq!(tls.server_name, ServerName::try_from("node-a").unwrap());
        server_config(&pair.cert_pem, &pair.key_pem).unwrap();
    }

    #[test]
    fn no_dns_san_is_an_error() {
        let pair = cluster_pair(&[]);
        assert!(matches!(
            client_config(&pair.cert_pem, &pair.key_pem),
            Err(TlsError::NoDnsSan)
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            client_config("nope", "nope"),
            Err(TlsError::Cert(_))
        ));
        let pair = cluster_pair(&["x"]);
        assert!(matches!(
            client_config(&pair.cert_pem, "nope"),
            Err(TlsError::Key(_))
        ));
    }

    #[test]
    fn load_reports_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("cluster.crt");
        let err = ClientTls::load(&missing, &dir.path().join("cluster.key")).unwrap_err();
        assert!(err.to_string().contains("cluster.crt"), "{err}");
    }
}
