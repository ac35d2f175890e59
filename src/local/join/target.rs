//! Where a join goes: the addresses a connection string names, what each must prove, and
//! the checks on them that need no network.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::error::JoinError;
use crate::clients::peer::Pin;
use crate::format::connection::Connection;

/// Largest clock difference tolerated between the two nodes (certificates and token
/// expiries depend on it).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// One address to try, with what it must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub token: String,
    pub pin: Pin,
}

/// The addresses to try for a connection string, in order.
pub fn targets(conn: &Connection, skip_verify: bool) -> Result<Vec<Target>, JoinError> {
    match conn {
        Connection::Legacy {
            addr,
            token,
            fingerprint,
        } => Ok(vec![Target {
            addr: *addr,
            token: token.clone(),
            pin: match fingerprint {
                Some(fp) if !skip_verify => Pin::LeafPrefix(fp.clone()),
                _ => Pin::None,
            },
        }]),
        Connection::Token(t) => t
            .addresses
            .iter()
            .map(|a| {
                let addr: SocketAddr = a.parse().map_err(|_| {
                    JoinError::InvalidConnection(format!(
                        "Invalid connection: bad address {a:?} in the token string"
                    ))
                })?;
                Ok(Target {
                    addr,
                    token: t.secret.clone(),
                    pin: if skip_verify {
                        Pin::None
                    } else {
                        Pin::Ca(t.ca_sha256.clone())
                    },
                })
            })
            .collect(),
    }
}

/// Is `target` this very node?
pub fn is_self(target: SocketAddr, bind: SocketAddr, local: &[IpAddr]) -> bool {
    if target.port() != bind.port() {
        return false;
    }
    if bind.ip().is_unspecified() {
        target.ip().is_loopback() || local.contains(&target.ip())
    } else {
        target.ip() == bind.ip()
    }
}

/// How far apart our clock (`now`) and the server's `Date` header are, if it sent one.
pub fn clock_skew(date_header: Option<&str>, now: std::time::SystemTime) -> Option<Duration> {
    let server = httpdate::parse_http_date(date_header?).ok()?;
    Some(match now.duration_since(server) {
        Ok(d) => d,
        Err(e) => e.duration(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::connection;

    #[test]
    fn self_detection() {
        let bind: SocketAddr = "10.0.0.5:25000".parse().unwrap();
        assert!(is_self("10.0.0.5:25000".parse().unwrap(), bind, &[]));
        assert!(!is_self("10.0.0.6:25000".parse().unwrap(), bind, &[]));
        assert!(!is_self("10.0.0.5:25001".parse().unwrap(), bind, &[]));
        let any: SocketAddr = "0.0.0.0:25000".parse().unwrap();
        let local: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        assert!(is_self("10.0.0.5:25000".parse().unwrap(), any, &local));
        assert!(is_self("127.0.0.1:25000".parse().unwrap(), any, &local));
    }

    #[test]
    fn skew_from_date_header() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            clock_skew(Some("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            clock_skew(Some("Sun, 06 Nov 1994 08:50:37 GMT"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(clock_skew(Some("garbage"), now), None);
        assert_eq!(clock_skew(None, now), None);
    }

    #[test]
    fn targets_from_both_connection_forms() {
        let t = "a".repeat(32);
        let c = connection::parse(&format!("10.0.0.1:25000/{t}/abcdef012345")).unwrap();
        assert_eq!(
            targets(&c, false).unwrap()[0].pin,
            Pin::LeafPrefix("abcdef012345".into())
        );
        assert_eq!(targets(&c, true).unwrap()[0].pin, Pin::None);
        let s = connection::TokenString {
            secret: t.clone(),
            ca_sha256: "b".repeat(64),
            addresses: vec!["10.0.0.1:25000".into(), "[fd00::1]:25000".into()],
        };
        let c = connection::parse(&s.render()).unwrap();
        let ts = targets(&c, false).unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[1].addr, "[fd00::1]:25000".parse().unwrap());
        assert_eq!(ts[1].pin, Pin::Ca("b".repeat(64)));
    }
}
