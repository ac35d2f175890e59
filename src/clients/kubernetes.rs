//! A client for the Kubernetes API server named in a kubeconfig: trusts exactly its CA,
//! presents its client certificate (or bearer token), never goes through an HTTP proxy, and
//! reads bounded responses. Used by `remove-node` (delete a Node) and the apiserver-proxy
//! (endpoint refresh).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::format::kubeconfig::Kubeconfig;
use crate::state::StateError;
use crate::util::errtext::error_chain;

/// Deadline of one API request (connect included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error(transparent)]
    Read(#[from] StateError),
    #[error("kubeconfig {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// An HTTPS client for the API server named in a kubeconfig.
#[derive(Debug, Clone)]
pub struct ApiClient {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// Reads the kubeconfig and builds a client trusting exactly its CA and presenting its
    /// client certificate (or bearer token).
    pub fn from_kubeconfig(path: &Path) -> Result<ApiClient, KubeconfigError> {
        let text = crate::state::read_string(path)?;
        let bad = |reason: String| KubeconfigError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        let creds = Kubeconfig::parse(&text)
            .and_then(|k| k.credentials())
            .map_err(|e| bad(e.to_string()))?;
        let ca = creds
            .ca_pem
            .ok_or_else(|| bad("no certificate-authority-data".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let cert = cert.map_err(|e| bad(format!("certificate-authority-data: {e:?}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("certificate-authority-data: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("certificate-authority-data holds no certificate".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::pki::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match (&creds.client_cert_pem, &creds.client_key_pem) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(format!("client-certificate-data: {e:?}")))?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| bad(format!("client-key-data: {e:?}")))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| bad(format!("client certificate: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            // The server is this node's own proxy or a control plane: never an HTTP proxy.
            .no_proxy()
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(ApiClient {
            client,
            base: creds.server.trim_end_matches('/').to_string(),
            token: creds.token,
        })
    }

    /// `GET /api/v1/nodes` → `(name, InternalIPs)` of every node.
    pub async fn nodes(&self) -> Result<Vec<(String, Vec<String>)>, String> {
        let body = self.get("/api/v1/nodes").await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|n| {
                        let name = n["metadata"]["name"].as_str()?.to_string();
                        let ips = n["status"]["addresses"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter(|x| x["type"] == "InternalIP")
                                    .filter_map(|x| x["address"].as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        Some((name, ips))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `DELETE /api/v1/nodes/<name>`; returns the HTTP status. `name` must be a Kubernetes
    /// object name (it becomes a path segment).
    pub async fn delete_node(&self, name: &str) -> Result<u16, String> {
        if !is_object_name(name) {
            return Err(format!("{name:?} is not a Kubernetes node name"));
        }
        let mut request = self
            .client
            .delete(format!("{}/api/v1/nodes/{name}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| error_chain(&e))?;
        Ok(response.status().as_u16())
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// `GET <server><path>` (JSON), read up to 16 MiB; a non-2xx status is an error.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        // Bounded: an endpoints list is kilobytes; a misbehaving server must not make the
        // proxy buffer without limit.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(format!(
                    "response larger than {} MiB",
                    MAX_RESPONSE_BYTES >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Largest API response read (node and endpoint lists).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A DNS-1123 subdomain, the form of Kubernetes node names.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_subdomains() {
        for good in ["w1", "node-1.example", "10.0.0.9", "a"] {
            assert!(is_object_name(good), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "W1",
            "-a",
            "a-",
            "a b",
            "a?x=1",
            &"a".repeat(254),
        ] {
            assert!(!is_object_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn kubeconfig_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("kubelet.config");
        let err = ApiClient::from_kubeconfig(&missing).unwrap_err();
        assert!(err.to_string().contains("kubelet.config"), "{err}");

        let no_ca = dir.path().join("no-ca.config");
        let mut k = Kubeconfig::with_client_cert("https://127.0.0.1:16443", "x", "u", "c", "k");
        k.clusters[0].cluster.certificate_authority_data = None;
        crate::state::write_atomic(&no_ca, k.render().as_bytes(), 0o600).unwrap();
        let err = ApiClient::from_kubeconfig(&no_ca).unwrap_err();
        assert!(err.to_string().contains("no-ca.config"), "{err}");
        assert!(
            err.to_string().contains("certificate-authority-data"),
            "{err}"
        );
    }

    #[test]
    fn kubeconfig_with_real_material_builds_a_client() {
        let ca = crate::pki::Authority::generate("test-ca").unwrap();
        let client = ca
            .issue(&crate::pki::LeafSpec {
                common_name: "system:node:w1".into(),
                client: true,
                ..Default::default()
            })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.config");
        let k = Kubeconfig::with_client_cert(
            "https://127.0.0.1:16443/",
            ca.cert_pem(),
            "kubelet",
            &client.cert_pem,
            &client.key_pem,
        );
        crate::state::write_atomic(&path, k.render().as_bytes(), 0o600).unwrap();
        let api = ApiClient::from_kubeconfig(&path).unwrap();
        assert_eq!(api.base, "https://127.0.0.1:16443");
    }
}
