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

/// Every interface address with its prefix length.
pub fn interface_cidrs() -> Vec<Cidr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            let mask = ifa.netmask;
            match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                (Some(v4), _) => {
                    let m = mask
                        .and_then(|m| m.as_sockaddr_in().map(|n| u32::from(n.ip()).count_ones()));
                    Some(Cidr {
                        ip: IpAddr::V4(v4.ip()),
                        prefix: m.unwrap_or(32) as u8,
                    })
                }
                (None, Some(v6)) => {
                    let m = mask
                        .and_then(|m| m.as_sockaddr_in6().map(|n| u128::from(n.ip()).count_ones()));
                    Some(Cidr {
                        ip: IpAddr::V6(v6.ip()),
                        prefix: m.unwrap_or(128) as u8,
                    })
                }
                _ => None,
            }
        })
        .collect()
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

/// Every interface address as `(interface name, ip)`, in the kernel's order.
fn interface_addresses() -> Vec<(String, IpAddr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (None, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            Some((ifa.interface_name, ip))
        })
        .collect()
}

/// De-duplicated addresses passing `keep`, IPv4 before IPv6.
fn select_addresses(keep: impl Fn(&str, &IpAddr) -> bool) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for (iface, ip) in interface_addresses() {
        if keep(&iface, &ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out.sort_by_key(|ip| ip.is_ipv6());
    out
}

/// Addresses of all interfaces, without link-local ones, IPv4 before IPv6, de-duplicated.
pub fn local_addresses() -> Vec<IpAddr> {
    select_addresses(|_, ip| !is_link_local(ip))
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

/// Interfaces whose addresses are never advertised (CNI overlays, as MicroK8s's `get_ips`).
const CNI_INTERFACES: &[&str] = &["vxlan.calico", "flannel.1", "cni0", "ovn0"];

/// Addresses a joining node may use to reach this one: every non-loopback, non-link-local
/// address of a non-CNI interface, IPv4 first.
pub fn advertised_addresses() -> Vec<IpAddr> {
    select_addresses(|iface, ip| {
        !CNI_INTERFACES.contains(&iface) && !ip.is_loopback() && !is_link_local(ip)
    })
}

/// The first IPv4 address of the interface holding the default route.
pub fn default_ipv4() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = default_route_interface(&routes)?;
    interface_addresses()
        .into_iter()
        .find(|(name, ip)| *name == iface && ip.is_ipv4())
        .map(|(_, ip)| ip)
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
    fn loopback_is_listed() {
        assert!(local_addresses().contains(&"127.0.0.1".parse().unwrap()));
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
