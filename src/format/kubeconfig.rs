//! Kubeconfig files (`credentials/*.config`) in the shape MicroK8s writes: one cluster, one
//! user with embedded client certificate and key, one context.

use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("not a valid kubeconfig: {0}")]
    Parse(String),
    #[error("kubeconfig has no {0}")]
    Missing(&'static str),
    #[error("kubeconfig field {field} is not valid base64: {reason}")]
    Base64 { field: &'static str, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub clusters: Vec<NamedCluster>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
    pub kind: String,
    #[serde(default)]
    pub preferences: serde_yaml::Mapping,
    pub users: Vec<NamedUser>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedCluster {
    pub cluster: Cluster,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(
        rename = "certificate-authority-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub certificate_authority_data: Option<String>,
    pub server: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedContext {
    pub context: Context,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Context {
    pub cluster: String,
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct User {
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub client_certificate_data: Option<String>,
    #[serde(
        rename = "client-key-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token: Option<String>,
}

/// PEM material decoded from a kubeconfig, for building an HTTPS client.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub server: String,
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
    pub token: Option<String>,
}

const B64: base64::engine::general_purpose::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;

impl Kubeconfig {
    /// A kubeconfig for `user` authenticating with a client certificate.
    pub fn with_client_cert(
        server: &str,
        ca_pem: &str,
        user: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Kubeconfig {
        Kubeconfig {
            api_version: "v1".into(),
            clusters: vec![NamedCluster {
                cluster: Cluster {
                    certificate_authority_data: Some(B64.encode(ca_pem)),
                    server: server.into(),
                },
                name: "microk8s-cluster".into(),
            }],
            contexts: vec![NamedContext {
                context: Context {
                    cluster: "microk8s-cluster".into(),
                    user: user.into(),
                },
                name: "microk8s".into(),
            }],
            current_context: "microk8s".into(),
            kind: "Config".into(),
            preferences: serde_yaml::Mapping::new(),
            users: vec![NamedUser {
                name: user.into(),
                user: User {
                    client_certificate_data: Some(B64.encode(cert_pem)),
                    client_key_data: Some(B64.encode(key_pem)),
                    token: None,
                },
            }],
        }
    }

    pub fn parse(text: &str) -> Result<Kubeconfig, KubeconfigError> {
        serde_yaml::from_str(text).map_err(|e| KubeconfigError::Parse(e.to_string()))
    }

    pub fn render(&self) -> String {
        // Serialising plain structs of strings cannot fail.
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// The server and credentials of the current context.
    pub fn credentials(&self) -> Result<Credentials, KubeconfigError> {
        let context = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .or_else(|| self.contexts.first())
            .ok_or(KubeconfigError::Missing("context"))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .ok_or(KubeconfigError::Missing("cluster"))?;
        let user = self
            .users
            .iter()
            .find(|u| u.name == context.context.user)
            .ok_or(KubeconfigError::Missing("user"))?;
        let decode =
            |field: &'static str, v: &Option<String>| -> Result<Option<String>, KubeconfigError> {
                v.as_deref()
                    .map(|s| {
                        B64.decode(s.trim())
                            .map_err(|e| KubeconfigError::Base64 {
                                field,
                                reason: e.to_string(),
                            })
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    })
                    .transpose()
            };
        Ok(Credentials {
            server: cluster.cluster.server.clone(),
            ca_pem: decode(
                "certificate-authority-data",
                &cluster.cluster.certificate_authority_data,
            )?,
            client_cert_pem: decode(
                "client-certificate-data",
                &user.user.client_certificate_data,
            )?,
            client_key_pem: decode("client-key-data", &user.user.client_key_data)?,
            token: user.user.token.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k =
            Kubeconfig::with_client_cert("https://127.0.0.1:16443", "CA", "admin", "CERT", "KEY");
        let text = k.render();
        assert!(text.contains("current-context: microk8s"));
        let creds = Kubeconfig::parse(&text).unwrap().credentials().unwrap();
        assert_eq!(creds.server, "https://127.0.0.1:16443");
        assert_eq!(creds.ca_pem.as_deref(), Some("CA"));
        assert_eq!(creds.client_cert_pem.as_deref(), Some("CERT"));
        assert_eq!(creds.client_key_pem.as_deref(), Some("KEY"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Kubeconfig::parse("[ not yaml").is_err());
        assert!(Kubeconfig::parse("kind: Config").is_err());
    }
}
