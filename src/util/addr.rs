//! Addresses as text and numbers: `host:port` forms, interface prefixes, the MicroK8s rules
//! that pick an address. Pure: nothing here looks at the machine (see `sys::host`).

use std::net::{IpAddr, SocketAddr};

/// An interface address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, other: &IpAddr) -> bool {
        match (self.ip, other) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.min(32)))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(*b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.min(128)))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(*b) & mask
            }
            _ => false,
        }
    }

    fn host_only(&self) -> bool {
        match self.ip {
            IpAddr::V4(_) => self.prefix >= 32,
            IpAddr::V6(_) => self.prefix >= 128,
        }
    }
}

/// MicroK8s's choice of the dqlite bind address from the address a joiner contacted: that
/// address if it is a regular interface address; for a virtual IP (a /32 or /128) the
/// interface address of a subnet containing it; an address on no interface is an error.
pub fn matching_bind_address(host: IpAddr, cidrs: &[Cidr]) -> Result<IpAddr, String> {
    // Linux answers on the whole 127/8 through `lo`: every loopback address is ours.
    if host.is_loopback() {
        return Ok(host);
    }
    let mut subnet_match = None;
    let mut virtual_ip = false;
    for c in cidrs {
        if c.ip == host {
            if c.host_only() {
                virtual_ip = true;
                continue;
            }
            return Ok(host);
        }
        if !c.host_only() && c.contains(&host) {
            subnet_match = Some(c.ip);
        }
    }
    if virtual_ip {
        return Ok(subnet_match.unwrap_or(host));
    }
    Err(format!(
        "address {host} was not found in any host interface. refuse to update dqlite bind address to {host} as it would break the cluster"
    ))
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

/// The interface of the first default route in `/proc/net/route` text.
pub fn default_route_interface(routes: &str) -> Option<String> {
    routes.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let iface = fields.next()?;
        let destination = fields.next()?;
        (destination == "00000000").then(|| iface.to_string())
    })
}

/// The host part of `host:port`, brackets removed.
pub fn host_of(address: &str) -> &str {
    let host = match address.rfind(':') {
        Some(i) if !address.ends_with(']') => &address[..i],
        _ => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Does `address` belong to `ip`? Exact host comparison (never a substring match).
pub fn address_is_ip(address: &str, ip: &IpAddr) -> bool {
    host_of(address)
        .parse::<IpAddr>()
        .map(|h| &h == ip)
        .unwrap_or(false)
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, or Go's `:PORT` (all interfaces).
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in bind address {s:?}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse()
        .map_err(|_| format!("invalid bind address {s:?}: expected IP:PORT, [IPv6]:PORT or :PORT"))
}

/// IPv4-mapped IPv6 peers (dual-stack listeners) are treated as their IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
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
    fn microk8s_bind_address_cases() {
        let c = |s: &str, p: u8| Cidr {
            ip: s.parse().unwrap(),
            prefix: p,
        };
        let cidrs = [
            c("127.0.0.1", 8),
            c("10.0.0.10", 16),
            c("10.10.0.10", 16),
            c("10.0.100.100", 32),
            c("192.168.100.100", 32),
        ];
        let pick = |h: &str| matching_bind_address(h.parse().unwrap(), &cidrs);
        assert_eq!(pick("10.0.0.10").unwrap().to_string(), "10.0.0.10");
        assert_eq!(pick("10.0.100.100").unwrap().to_string(), "10.0.0.10");
        assert_eq!(
            pick("192.168.100.100").unwrap().to_string(),
            "192.168.100.100"
        );
        assert!(pick("1.1.1.1").is_err());
    }

    #[test]
    fn link_local_is_detected() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"169.254.1.1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn host_matching_is_exact() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(address_is_ip("10.0.0.1:19001", &ip));
        assert!(!address_is_ip("10.0.0.12:19001", &ip));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(address_is_ip("[fd00::1]:19001", &v6));
        assert_eq!(host_of("[fd00::1]:19001"), "fd00::1");
    }

    #[test]
    fn bind_forms() {
        assert_eq!(
            parse_bind("0.0.0.0:25000").unwrap().to_string(),
            "0.0.0.0:25000"
        );
        assert_eq!(parse_bind(":25000").unwrap().to_string(), "0.0.0.0:25000");
        assert_eq!(
            parse_bind("[::1]:25000").unwrap().to_string(),
            "[::1]:25000"
        );
        assert!(parse_bind("localhost:25000").is_err());
        assert!(parse_bind("1.2.3.4").is_err());
    }
}
#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn finds_default_route_interface() {
        let text =
            "Iface\tDestination\tGateway\nlo\t0000007F\t00000000\neth0\t00000000\t0102A8C0\n";
        assert_eq!(default_route_interface(text).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }
}
