//! What this host is called and which addresses it has (the machine's view; the pure
//! address rules are in `util::addr`).

use std::net::IpAddr;

use crate::util::addr::{default_route_interface, is_link_local, Cidr};

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
    let routes = crate::state::read_optional(std::path::Path::new("/proc/net/route")).ok()??;
    let iface = default_route_interface(&routes)?;
    interface_addresses()
        .into_iter()
        .find(|(name, ip)| *name == iface && ip.is_ipv4())
        .map(|(_, ip)| ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        assert!(local_addresses().contains(&"127.0.0.1".parse().unwrap()));
    }
}
