//! What this host is called and which addresses it has.

use std::net::{IpAddr, SocketAddr};

/// Hostname and usable addresses of this machine.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub hostname: String,
    /// Non-link-local addresses of every interface, IPv4 first, loopback included.
    pub addresses: Vec<IpAddr>,
}

impl HostIdentity {
    pub fn discover() -> HostIdentity {
        HostIdentity {
            hostname: hostname(),
            addresses: local_addresses(),
        }
    }
}

/// The lower-cased hostname (MicroK8s's join sends `socket.gethostname().lower()`).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Addresses of all interfaces, without link-local ones, IPv4 before IPv6, de-duplicated.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if is_link_local(&ip) || out.contains(&ip) {
                continue;
            }
            out.push(ip);
        }
    }
    out.sort_by_key(|ip| ip.is_ipv6());
    out
}

pub fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// `ip:port` with IPv6 bracketed, as in join URLs.
pub fn host_port(ip: &IpAddr, port: u16) -> String {
    SocketAddr::new(*ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(
            host_port(&"10.0.0.1".parse().unwrap(), 25000),
            "10.0.0.1:25000"
        );
        assert_eq!(
            host_port(&"fd00::1".parse().unwrap(), 25000),
            "[fd00::1]:25000"
        );
    }

    #[test]
    fn link_local_is_detected() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"169.254.1.1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn loopback_is_listed() {
        assert!(local_addresses().contains(&"127.0.0.1".parse().unwrap()));
    }
}
