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

/// The certificate served on :25000, reloadable without a restart (a control-plane join
/// replaces the cluster CA and with it `server.crt`). When the certificate file holds only
/// the leaf, the CA (if readable) is sent after it so joiners that pin the cluster CA can
/// verify the chain; the leaf stays first, so MicroK8s's fingerprint check is unaffected.
#[derive(Debug)]
pub struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServingCert {
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Arc<ServingCert>, TlsError> {
        let current = Self::read(cert, key, ca)?;
        Ok(Arc::new(ServingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca: ca.map(Path::to_path_buf),
            current: std::sync::RwLock::new(current),
        }))
    }

    /// Re-reads the files; on error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Self::read(&self.cert, &self.key, self.ca.as_deref())?;
        if let Ok(mut current) = self.current.write() {
            *current = fresh;
        }
        Ok(())
    }

    fn read(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let mut certs = load_certs(cert)?;
        if certs.len() == 1 {
            if let Some(ca) = ca.and_then(|p| load_certs(p).ok()) {
                if let Some(first) = ca.into_iter().next().filter(|c| *c != certs[0]) {
                    certs.push(first);
                }
            }
        }
        let private = load_key(key)?;
        let pair_err = |reason: String| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
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
        .map_err(|e| TlsError::Pair {
            cert: serving.cert.clone(),
            key: serving.key.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
