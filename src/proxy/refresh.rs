//! Refreshing the upstream list from the Kubernetes API, as MicroK8s does: list the
//! EndpointSlices of service `default/kubernetes`, fall back to the `default/kubernetes`
//! Endpoints object, using the server, CA and client certificate of `--kubeconfig` (on a
//! worker that server is this proxy itself).
//!
//! Invariant: a failed or empty answer never replaces the current list; only a non-empty list
//! that differs from the current one does (then provider.yaml is rewritten, mode 0644).

use crate::errtext::error_chain;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{render_provider, Upstream};
use super::endpoints;
use super::pool::Pool;
use crate::kubeconfig::Kubeconfig;
use crate::state::StateError;

pub const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";
pub const ENDPOINTS_PATH: &str = "/api/v1/namespaces/default/endpoints/kubernetes";

/// Deadline of one API request (connect included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Read(#[from] StateError),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("EndpointSlices: {slices}; Endpoints: {endpoints}")]
    Api { slices: String, endpoints: String },
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
    pub fn from_kubeconfig(path: &Path) -> Result<ApiClient, RefreshError> {
        let text = crate::state::read_string(path)?;
        let bad = |reason: String| RefreshError::Kubeconfig {
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
        let builder = rustls::ClientConfig::builder_with_provider(crate::daemon::tls::provider())
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

    /// The control-plane endpoints: EndpointSlices, else Endpoints.
    pub async fn control_plane_endpoints(&self) -> Result<Vec<Upstream>, RefreshError> {
        let slices = match self.get(SLICES_PATH).await {
            Ok(body) => match endpoints::from_endpoint_slices(&body) {
                Ok(list) => return Ok(list),
                Err(e) => e.to_string(),
            },
            Err(e) => e,
        };
        tracing::debug!(error = %slices, "EndpointSlices unavailable, falling back to Endpoints");
        let endpoints = match self.get(ENDPOINTS_PATH).await {
            Ok(body) => match endpoints::from_endpoints(&body) {
                Ok(list) => return Ok(list),
                Err(e) => e.to_string(),
            },
            Err(e) => e,
        };
        Err(RefreshError::Api { slices, endpoints })
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

    async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
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

/// What one refresh round produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Updated(Vec<Upstream>),
    Unchanged,
    Empty,
    Failed(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Updated(_) => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Empty => "empty",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// Compares a fetched list with the current one.
pub fn decide(current: &[Upstream], fetched: Result<Vec<Upstream>, String>) -> Outcome {
    match fetched {
        Err(e) => Outcome::Failed(e),
        Ok(list) if list.is_empty() => Outcome::Empty,
        Ok(list) if list == current => Outcome::Unchanged,
        Ok(list) => Outcome::Updated(list),
    }
}

/// What to log for an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// Log it (a change, or the first problem of a streak).
    Log,
    /// Problems are over: say so once.
    Recovered,
    /// Nothing new.
    Quiet,
}

/// Logs a failing or empty refresh once per streak instead of on every tick.
#[derive(Debug, Default)]
pub struct LogOnce {
    failing: Option<&'static str>,
}

impl LogOnce {
    pub fn note(&mut self, outcome: &Outcome) -> Note {
        match outcome {
            Outcome::Updated(_) => {
                self.failing = None;
                Note::Log
            }
            Outcome::Unchanged => match self.failing.take() {
                Some(_) => Note::Recovered,
                None => Note::Quiet,
            },
            Outcome::Empty | Outcome::Failed(_) => {
                let label = outcome.label();
                if self.failing.replace(label) == Some(label) {
                    Note::Quiet
                } else {
                    Note::Log
                }
            }
        }
    }
}

/// Settings of the refresh loop.
#[derive(Debug, Clone)]
pub struct Refresher {
    pub kubeconfig: PathBuf,
    pub provider_file: PathBuf,
    pub interval: Duration,
}

impl Refresher {
    /// Refreshes now and then every `interval`, forever.
    pub async fn run(self, pool: Pool) {
        let mut log = LogOnce::default();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.once(&pool, &mut log).await;
        }
    }

    /// One round: fetch, decide, apply, log.
    pub async fn once(&self, pool: &Pool, log: &mut LogOnce) -> Outcome {
        let fetched = match ApiClient::from_kubeconfig(&self.kubeconfig) {
            Ok(client) => client.control_plane_endpoints().await,
            Err(e) => Err(e),
        };
        let outcome = decide(&pool.upstreams(), fetched.map_err(|e| e.to_string()));
        pool.count_refresh(outcome.label());
        let note = log.note(&outcome);
        match &outcome {
            Outcome::Updated(list) => {
                let shown: Vec<&str> = list.iter().map(Upstream::as_str).collect();
                tracing::info!(upstreams = ?shown, "updating control plane endpoints");
                let text = render_provider(list);
                if let Err(e) = crate::state::write_atomic(
                    &self.provider_file,
                    text.as_bytes(),
                    crate::state::mode::PUBLIC,
                ) {
                    tracing::warn!(error = %e, "cannot save the endpoint list; using it anyway");
                }
                pool.set_upstreams(list);
            }
            Outcome::Empty if note == Note::Log => tracing::warn!(
                "the API returned an empty list of control plane endpoints; keeping the current list"
            ),
            Outcome::Failed(e) if note == Note::Log => tracing::warn!(
                error = %e,
                "cannot refresh control plane endpoints; keeping the current list"
            ),
            Outcome::Unchanged if note == Note::Recovered => {
                tracing::info!("control plane endpoints refreshed again")
            }
            _ => {}
        }
        outcome
    }
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

    fn ups(list: &[&str]) -> Vec<Upstream> {
        list.iter().map(|s| Upstream::parse(s).unwrap()).collect()
    }

    #[test]
    fn decide_keeps_the_list_on_empty_or_error() {
        let current = ups(&["1.1.1.1:16443"]);
        assert_eq!(decide(&current, Ok(vec![])), Outcome::Empty);
        assert_eq!(
            decide(&current, Err("boom".into())),
            Outcome::Failed("boom".into())
        );
        assert_eq!(decide(&current, Ok(current.clone())), Outcome::Unchanged);
        let new = ups(&["1.1.1.1:16443", "2.2.2.2:16443"]);
        assert_eq!(decide(&current, Ok(new.clone())), Outcome::Updated(new));
    }

    #[test]
    fn problems_are_logged_once_per_streak() {
        let mut log = LogOnce::default();
        let failed = Outcome::Failed("x".into());
        let failed2 = Outcome::Failed("y".into());
        assert_eq!(log.note(&Outcome::Unchanged), Note::Quiet);
        assert_eq!(log.note(&failed), Note::Log);
        assert_eq!(log.note(&failed2), Note::Quiet);
        assert_eq!(log.note(&Outcome::Empty), Note::Log);
        assert_eq!(log.note(&Outcome::Empty), Note::Quiet);
        assert_eq!(log.note(&Outcome::Unchanged), Note::Recovered);
        assert_eq!(log.note(&Outcome::Unchanged), Note::Quiet);
        assert_eq!(log.note(&failed), Note::Log);
        assert_eq!(log.note(&Outcome::Updated(vec![])), Note::Log);
        assert_eq!(log.note(&failed), Note::Log);
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
        std::fs::write(&no_ca, k.render()).unwrap();
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
        std::fs::write(&path, k.render()).unwrap();
        let api = ApiClient::from_kubeconfig(&path).unwrap();
        assert_eq!(api.base, "https://127.0.0.1:16443");
    }
}
