//! `add-node` on the daemon side: store a join token and describe how to reach this node.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, Refusal};
use crate::cluster::audit::{now_rfc3339, AuditEntry, LOCAL};
use crate::cluster::node::Node;
use crate::cluster::tokens::{Lifetime, NewToken, Scope, TokenError};
use crate::format::connection::TokenString;
use crate::sys::blocking::{blocking, TaskFailed};

#[derive(Debug, thiserror::Error)]
pub enum AddNodeError {
    /// A `--token` MicroK8s would refuse.
    #[error("{0}")]
    BadToken(String),
    #[error("This MicroK8s deployment is acting as a node in a cluster. Please use the microk8s add-node on the master.")]
    OnWorker,
    /// No node could join now: no leader answers, or too few voters for a quorum.
    #[error("The cluster's datastore is unavailable ({0}): a node could not join it now, so no token was issued. `cluster-agent status` shows which members answer; bring the missing voters back, or rebuild the cluster from the members that answer with `cluster-agent recover`.")]
    QuorumLost(String),
    #[error("{0}")]
    Internal(String),
}

impl Refusal for AddNodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            AddNodeError::BadToken(_) => ErrorKind::AddNodeBadToken,
            AddNodeError::OnWorker => ErrorKind::AddNodeOnWorker,
            AddNodeError::QuorumLost(_) => ErrorKind::AddNodeQuorumLost,
            AddNodeError::Internal(_) => ErrorKind::Internal,
        }
    }
}

crate::util::internal_from!(AddNodeError: crate::state::StateError, TaskFailed);

impl From<TokenError> for AddNodeError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::TooShort | TokenError::BadCharacters | TokenError::BadDescription(_) => {
                AddNodeError::BadToken(e.to_string())
            }
            other => AddNodeError::Internal(other.to_string()),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AddNodeRequest {
    /// Use this token (≥ 32 characters) instead of a generated one.
    pub token: Option<String>,
    /// Seconds of validity; `None` = single use, no expiry.
    pub ttl: Option<i64>,
    /// Never expires, never consumed (MicroK8s's `persistent-cluster-tokens.txt`).
    #[serde(default)]
    pub persistent: bool,
    /// Which nodes the token admits; `None`: either kind.
    #[serde(default)]
    pub role: Option<Scope>,
    /// Free text shown by `token list`.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddNodeResponse {
    pub token: String,
    /// First 12 hex characters of the SHA-256 of `certs/server.crt` (DER).
    pub check: String,
    pub port: u16,
    /// The address to show first.
    pub default_ip: Option<String>,
    /// Every address a joiner may use, default first, IPv6 unbracketed.
    pub addresses: Vec<String>,
    /// Our self-contained token string.
    pub token_string: String,
    /// Whether this node runs dqlite (MicroK8s prints the `--worker` hint only then).
    pub ha: bool,
}

/// Addresses to advertise: the bind address if the daemon is bound to one; else the default
/// IPv4 first, then every other usable address.
pub fn advertised(bind_ip: IpAddr, default_ip: Option<IpAddr>, all: &[IpAddr]) -> Vec<IpAddr> {
    if !bind_ip.is_unspecified() {
        return vec![bind_ip];
    }
    let mut out: Vec<IpAddr> = default_ip.into_iter().collect();
    for ip in all {
        if !ip.is_loopback() && !crate::util::addr::is_link_local(ip) && !out.contains(ip) {
            out.push(*ip);
        }
    }
    if out.is_empty() {
        out.push(IpAddr::from([127, 0, 0, 1]));
    }
    out
}

pub async fn add_node(node: &Node, req: AddNodeRequest) -> Result<AddNodeResponse, AddNodeError> {
    if let Some(why) = crate::local::status::unavailable(node).await {
        return Err(AddNodeError::QuorumLost(why));
    }
    let new = NewToken {
        lifetime: match (req.persistent, req.ttl) {
            (true, _) => Lifetime::Persistent,
            (false, Some(ttl)) => Lifetime::Ttl(ttl),
            (false, None) => Lifetime::SingleUse,
        },
        scope: req.role.unwrap_or(Scope::Any),
        description: req.description.clone().unwrap_or_default(),
    };
    let detail = format!(
        "{} token, role {}",
        match new.lifetime {
            Lifetime::Persistent => "persistent".to_string(),
            Lifetime::Ttl(ttl) => format!("{ttl} s"),
            Lifetime::SingleUse => "single-use".to_string(),
        },
        new.scope.name()
    );
    let node2 = node.clone();
    let resp = blocking(move || {
        let node = node2;
        let token = req.token.unwrap_or_else(crate::util::secret::random_hex_token);
        node.tokens().issue(&token, &new)?;
        let layout = node.state().layout();
        let server = node.state().read_string(&layout.server_crt())?;
        let check = crate::pki::fingerprint12(&server)
            .map_err(|e| AddNodeError::Internal(e.to_string()))?;
        let ca = node.state().read_string(&layout.ca_crt())?;
        let ca_sha256 =
            crate::pki::cert_sha256_hex(&ca, "CA certificate")
            .map_err(|e| AddNodeError::Internal(e.to_string()))?;
        let port = node.settings().bind.port();
        let addresses = advertised(
            node.settings().bind.ip(),
            crate::sys::host::default_ipv4(),
            &crate::sys::host::advertised_addresses(),
        );
        let token_string = TokenString {
            secret: token.clone(),
            ca_sha256,
            addresses: addresses
                .iter()
                .map(|ip| crate::util::addr::host_port(ip, port))
                .collect(),
        }
        .render();
        tracing::info!(token_id = %crate::cluster::tokens::token_id(&token), ttl = ?req.ttl, "join token issued");
        Ok::<_, AddNodeError>(AddNodeResponse {
            token,
            check,
            port,
            default_ip: addresses.first().map(IpAddr::to_string),
            addresses: addresses.iter().map(IpAddr::to_string).collect(),
            token_string,
            ha: node.state().has_marker("ha-cluster"),
        })
    })
    .await?;
    node.audit()
        .record(&AuditEntry {
            time: now_rfc3339(),
            source: LOCAL.to_string(),
            route: "add-node",
            token_id: Some(crate::cluster::tokens::token_id(&resp.token)),
            result: "created",
            status: None,
            detail: Some(detail),
        })
        .await;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_address_is_the_only_one() {
        let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        assert_eq!(
            advertised("127.0.0.9".parse().unwrap(), None, &ips),
            vec!["127.0.0.9".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn default_first_then_the_rest() {
        let all: Vec<IpAddr> = ["127.0.0.1", "10.0.0.2", "10.0.0.5", "fd00::5", "fe80::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got = advertised(
            "0.0.0.0".parse().unwrap(),
            Some("10.0.0.5".parse().unwrap()),
            &all,
        );
        let want: Vec<IpAddr> = ["10.0.0.5", "10.0.0.2", "fd00::5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
