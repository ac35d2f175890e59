//! The :25000 TLS configuration (rustls, TLS 1.2+).

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

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
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

/// Server config for :25000: HTTP/2 and HTTP/1.1, no client certificates. When the
/// certificate file holds only the leaf, `ca` (if readable) is sent after it so joiners that
/// pin the cluster CA can verify the chain; the leaf stays first, so MicroK8s's fingerprint
/// check of the leaf is unaffected.
pub fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    min: MinTls,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut certs = load_certs(cert)?;
    if certs.len() == 1 {
        if let Some(ca) = ca.and_then(|p| load_certs(p).ok()) {
            if let Some(first) = ca.into_iter().next().filter(|c| *c != certs[0]) {
                certs.push(first);
            }
        }
    }
    let private = load_key(key)?;
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        MinTls::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinTls::Tls13 => &[&rustls::version::TLS13],
    };
    let pair_err = |reason: String| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| pair_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| pair_err(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
