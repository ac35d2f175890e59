//! Join connection strings: MicroK8s's `IP:PORT/TOKEN[/FINGERPRINT]` and our self-contained
//! token string (base64url of JSON `{secret, ca_sha256, addresses}`), which carries every
//! control-plane address and the full CA hash so the joiner can try each address and pin the
//! CA without a `/FP` part.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Prefix that tells our token string from a legacy connection string at a glance.
pub const TOKEN_STRING_PREFIX: &str = "ca1.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenString {
    pub secret: String,
    pub ca_sha256: String,
    pub addresses: Vec<String>,
}

/// A parsed connection argument of `join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Legacy {
        addr: SocketAddr,
        token: String,
        fingerprint: Option<String>,
    },
    Token(TokenString),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Invalid connection: {0}")]
pub struct ConnectionError(pub String);

const FORMAT: &str = "Expected format: <master_IP>:<master_PORT>/<token>[/<fingerprint>]";

impl TokenString {
    pub fn render(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{TOKEN_STRING_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }
}

/// Parses what the user passed to `join`.
pub fn parse(input: &str) -> Result<Connection, ConnectionError> {
    let input = input.trim();
    if let Some(encoded) = input.strip_prefix(TOKEN_STRING_PREFIX) {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| ConnectionError("the token string is not valid base64url".into()))?;
        let t: TokenString = serde_json::from_slice(&bytes)
            .map_err(|_| ConnectionError("the token string is not a cluster-agent token".into()))?;
        if t.secret.len() < 32 || t.addresses.is_empty() || t.ca_sha256.len() != 64 {
            return Err(ConnectionError("the token string is incomplete".into()));
        }
        return Ok(Connection::Token(t));
    }
    let parts: Vec<&str> = input.split('/').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(ConnectionError(FORMAT.into()));
    }
    let (host, port) = parts[0]
        .rsplit_once(':')
        .ok_or_else(|| ConnectionError(FORMAT.into()))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6,
        None if host.contains(':') => return Err(ConnectionError(FORMAT.into())),
        None => host,
    };
    let ip: IpAddr = host
        .parse()
        .map_err(|_| ConnectionError("Invalid master IP".into()))?;
    let port: u32 = port
        .parse()
        .map_err(|_| ConnectionError("Master PORT not a number".into()))?;
    if !(1..=65535).contains(&port) {
        return Err(ConnectionError("Master PORT not in range 1:65535".into()));
    }
    let token = parts[1].to_string();
    if token.len() < 32 {
        return Err(ConnectionError(
            "Cluster token size should be at least 32 bytes".into(),
        ));
    }
    let fingerprint = match parts.get(2) {
        Some(fp) if fp.len() < 12 => {
            return Err(ConnectionError(
                "Fingerprint should be at least 12 bytes".into(),
            ))
        }
        Some(fp) => Some(fp.to_string()),
        None => None,
    };
    Ok(Connection::Legacy {
        addr: SocketAddr::new(ip, port as u16),
        token,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn legacy_forms() {
        let c = parse(&format!("10.0.0.1:25000/{T}/abcdef123456")).unwrap();
        assert_eq!(
            c,
            Connection::Legacy {
                addr: "10.0.0.1:25000".parse().unwrap(),
                token: T.into(),
                fingerprint: Some("abcdef123456".into())
            }
        );
        let c = parse(&format!("[fd00::1]:25000/{T}")).unwrap();
        assert!(matches!(
            c,
            Connection::Legacy {
                fingerprint: None,
                ..
            }
        ));
    }

    #[test]
    fn legacy_errors_match_microk8s() {
        let err = |s: &str| parse(s).unwrap_err().0;
        assert_eq!(err("10.0.0.1:25000"), FORMAT);
        assert_eq!(err(&format!("fd00::1:25000/{T}")), FORMAT);
        assert_eq!(err(&format!("node1:25000/{T}")), "Invalid master IP");
        assert_eq!(err(&format!("10.0.0.1:x/{T}")), "Master PORT not a number");
        assert_eq!(
            err(&format!("10.0.0.1:70000/{T}")),
            "Master PORT not in range 1:65535"
        );
        assert_eq!(
            err("10.0.0.1:25000/short"),
            "Cluster token size should be at least 32 bytes"
        );
        assert_eq!(
            err(&format!("10.0.0.1:25000/{T}/abc")),
            "Fingerprint should be at least 12 bytes"
        );
    }

    #[test]
    fn token_string_round_trip() {
        let t = TokenString {
            secret: T.into(),
            ca_sha256: "a".repeat(64),
            addresses: vec!["10.0.0.1:25000".into(), "[fd00::1]:25000".into()],
        };
        let s = t.render();
        assert!(s.starts_with(TOKEN_STRING_PREFIX));
        assert!(!s.contains('/'), "must not look like a legacy string");
        assert_eq!(parse(&s).unwrap(), Connection::Token(t));
        assert!(parse("ca1.!!!").is_err());
    }
}
