//! rustls configurations built from PEM text: the :25000 server (TLS 1.2+, a certificate that
//! can be swapped while serving) and the crypto provider every TLS user shares. Pure: the
//! caller reads the files (see `cluster::serving`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot load TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// Minimum protocol version. rustls speaks only 1.2 and 1.3; MicroK8s's `tls10`/`tls11`
/// are accepted as spellings and mean 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinTls {
    Tls12,
    Tls13,
}

impl MinTls {
    pub fn parse(s: &str) -> Result<MinTls, String> {
        match s {
            "" | "tls10" | "tls11" | "tls12" => Ok(MinTls::Tls12),
            "tls13" => Ok(MinTls::Tls13),
            other => Err(format!(
                "unsupported TLS version {other:?}; supported values: tls10, tls11, tls12, tls13"
            )),
        }
    }
}

/// The certificates of a PEM bundle read from `path` (named in errors).
pub fn certs_from_pem(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file read from `path` (named in errors).
pub fn key_from_pem(pem: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: pem_reason(e),
    })
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("{other:?}"),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file's text and where it came from.
#[derive(Debug, Clone)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: String,
}

/// The served chain and key. When the certificate file holds only the leaf, the CA (if
/// given) is sent after it so joiners that pin the cluster CA can verify the chain; the leaf
/// stays first, so MicroK8s's fingerprint check is unaffected.
pub fn certified_key(
    cert: &PemFile,
    key: &PemFile,
    ca: Option<&PemFile>,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let mut certs = certs_from_pem(&cert.pem, &cert.path)?;
    if certs.len() == 1 {
        if let Some(ca) = ca.and_then(|f| certs_from_pem(&f.pem, &f.path).ok()) {
            if let Some(first) = ca.into_iter().next().filter(|c| *c != certs[0]) {
                certs.push(first);
            }
        }
    }
    let private = key_from_pem(&key.pem, &key.path)?;
    let pair_err = |reason: String| TlsError::Pair {
        cert: cert.path.clone(),
        key: key.path.clone(),
        reason,
    };
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| pair_err(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| pair_err(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// The certificate served on :25000, replaceable without a restart (a control-plane join
/// replaces the cluster CA and with it `server.crt`).
#[derive(Debug)]
pub struct ServingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServingCert {
    pub fn new(key: Arc<rustls::sign::CertifiedKey>) -> Arc<ServingCert> {
        Arc::new(ServingCert {
            current: std::sync::RwLock::new(key),
        })
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: Arc<rustls::sign::CertifiedKey>) {
        if let Ok(mut current) = self.current.write() {
            *current = key;
        }
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// Server config for :25000: HTTP/2 and HTTP/1.1, no client certificates.
pub fn server_config(
    serving: Arc<ServingCert>,
    min: MinTls,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        MinTls::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinTls::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
