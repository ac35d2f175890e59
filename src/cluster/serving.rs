//! The :25000 serving certificate of this node: read from its files, swapped in place when a
//! join or leave replaces them (open connections keep the old one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pki::tls::{self, PemFile, ServingCert, TlsError};
use crate::state::{self, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error(transparent)]
    Read(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("reloading the certificate failed: {0}")]
    Task(String),
}

/// The certificate, key and (optional) CA files, and the certificate now served from them.
#[derive(Debug)]
pub struct Serving {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    current: Arc<ServingCert>,
}

fn read(path: &Path) -> Result<PemFile, StateError> {
    Ok(PemFile {
        path: path.to_path_buf(),
        pem: state::read_string(path)?,
    })
}

impl Serving {
    /// Reads and checks the pair (and the CA, which is sent after a lone leaf if readable).
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Arc<Serving>, ServingError> {
        let current = ServingCert::new(Self::read(cert, key, ca)?);
        Ok(Arc::new(Serving {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca: ca.map(Path::to_path_buf),
            current,
        }))
    }

    fn read(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, ServingError> {
        let ca = ca.and_then(|p| read(p).ok());
        Ok(tls::certified_key(&read(cert)?, &read(key)?, ca.as_ref())?)
    }

    /// Re-reads the files; on error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), ServingError> {
        let fresh = Self::read(&self.cert, &self.key, self.ca.as_deref())?;
        self.current.replace(fresh);
        Ok(())
    }

    /// The resolver a rustls server configuration serves from.
    pub fn resolver(&self) -> Arc<ServingCert> {
        self.current.clone()
    }
}
