//! A "remote host" on this machine: a network namespace behind a veth pair, optionally
//! rate-limited, that can go silent (its end of the link down: packets to it vanish and
//! nothing answers, as when a host loses power) and come back. Needs root (`ip netns`, `tc`).
//!
//! Shared by the end-to-end tests and the apiserver-proxy benchmark (`#[path]`), so it
//! depends on std and nix only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One namespace and its veth pair; dropping it removes both.
pub struct Link {
    netns: String,
    host_if: String,
    peer_if: String,
    /// This side's address on the link.
    pub host_ip: Ipv4Addr,
    /// The far side's address: listeners made by [`Link::listen`] are bound to it.
    pub peer_ip: Ipv4Addr,
}

/// Why a link could not be made (typically: not root).
#[derive(Debug)]
pub struct LinkError(pub String);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), LinkError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LinkError(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Link {
    /// A new link; `rate` (a tc rate such as "10gbit") shapes both directions.
    /// Addresses are /30s in 198.18.0.0/15 (RFC 2544, benchmarking: never a real network),
    /// one /24 per process id (modulo 512) and one /30 per link; a /24 that is already
    /// routed here (another run) is refused rather than shared.
    pub fn new(rate: Option<&str>) -> Result<Link, LinkError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n >= 64 {
            return Err(LinkError("at most 64 links per process".into()));
        }
        let pid = std::process::id();
        let slot = pid % 512;
        let (b, c, d) = (18 + (slot / 256) as u8, (slot % 256) as u8, (n * 4) as u8);
        let pid = pid % 100_000;
        let link = Link {
            netns: format!("ca-test-{pid}-{n}"),
            host_if: format!("ca{pid}h{n}"),
            peer_if: format!("ca{pid}p{n}"),
            host_ip: Ipv4Addr::new(198, b, c, d + 1),
            peer_ip: Ipv4Addr::new(198, b, c, d + 2),
        };
        if n == 0 {
            let routes = Command::new("ip")
                .args(["-4", "route", "show", "root", &format!("198.{b}.{c}.0/24")])
                .output()
                .map_err(|e| LinkError(format!("ip: {e}")))?;
            if !routes.stdout.is_empty() {
                return Err(LinkError(format!(
                    "198.{b}.{c}.0/24 is already in use on this machine"
                )));
            }
        }
        run("ip", &["netns", "add", &link.netns])?;
        // From here on, Drop removes whatever was made.
        let (ns, host, peer) = (
            link.netns.as_str(),
            link.host_if.as_str(),
            link.peer_if.as_str(),
        );
        let host_cidr = format!("{}/30", link.host_ip);
        let peer_cidr = format!("{}/30", link.peer_ip);
        run(
            "ip",
            &[
                "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns,
            ],
        )?;
        run("ip", &["addr", "add", &host_cidr, "dev", host])?;
        run("ip", &["link", "set", host, "up"])?;
        run("ip", &["-n", ns, "addr", "add", &peer_cidr, "dev", peer])?;
        run("ip", &["-n", ns, "link", "set", peer, "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        if let Some(rate) = rate {
            let tbf = [
                "root", "tbf", "rate", rate, "burst", "512kb", "latency", "5ms",
            ];
            run("tc", &[&["qdisc", "add", "dev", host][..], &tbf].concat())?;
            run(
                "tc",
                &[&["-n", ns, "qdisc", "add", "dev", peer][..], &tbf].concat(),
            )?;
        }
        Ok(link)
    }

    /// A listener on the far side (port chosen by the system). It is bound from a thread
    /// that entered the namespace; the socket stays in it whichever thread uses it later.
    pub fn listen(&self) -> TcpListener {
        let path = format!("/var/run/netns/{}", self.netns);
        let at = SocketAddr::from((self.peer_ip, 0));
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    TcpListener::bind(at).unwrap()
                })
                .join()
                .unwrap()
        })
    }

    /// Sets the far end's interface down (`true`: SYNs to it are dropped without an answer)
    /// or up again.
    pub fn set_silent(&self, silent: bool) {
        let state = if silent { "down" } else { "up" };
        run(
            "ip",
            &["-n", &self.netns, "link", "set", &self.peer_if, state],
        )
        .unwrap();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it; the second call is for the
        // case where the namespace was made but the pair was not moved into it.
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}

/// A LAN of hosts on this machine: a bridge in this namespace and one network namespace
/// per host, each behind a veth pair plugged into the bridge. Hosts reach each other (and
/// this namespace reaches them) on one /24 in 198.19.0.0/16 (RFC 2544); cutting a host sets
/// its end down, so packets to and from it vanish, as when its cable is pulled.
pub struct Lan {
    bridge: String,
    hosts: Vec<LanHost>,
}

/// One host of a [`Lan`].
pub struct LanHost {
    pub netns: String,
    host_if: String,
    peer_if: String,
    pub ip: Ipv4Addr,
}

impl Lan {
    pub fn new(hosts: usize) -> Result<Lan, LinkError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n >= 16 {
            return Err(LinkError("at most 16 LANs per process".into()));
        }
        let pid = std::process::id() % 100_000;
        // One /24 per LAN: 16 per process, 8 processes' worth in 198.19.128.0/17.
        let c = 128 + ((std::process::id() % 8) * 16 + n) as u8;
        let routes = Command::new("ip")
            .args(["-4", "route", "show", "root", &format!("198.19.{c}.0/24")])
            .output()
            .map_err(|e| LinkError(format!("ip: {e}")))?;
        if !routes.stdout.is_empty() {
            return Err(LinkError(format!(
                "198.19.{c}.0/24 is already in use on this machine"
            )));
        }
        let mut lan = Lan {
            bridge: format!("cabr{pid}{n:x}"),
            hosts: Vec::new(),
        };
        let br = lan.bridge.clone();
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("198.19.{c}.1/24"), "dev", &br],
        )?;
        run("ip", &["link", "set", &br, "up"])?;
        for i in 0..hosts {
            let host = LanHost {
                netns: format!("ca-lan-{pid}-{n}-{i}"),
                host_if: format!("ca{pid}{n:x}l{i}"),
                peer_if: format!("ca{pid}{n:x}m{i}"),
                ip: Ipv4Addr::new(198, 19, c, 10 + i as u8),
            };
            let (ns, h, p) = (
                host.netns.clone(),
                host.host_if.clone(),
                host.peer_if.clone(),
            );
            run("ip", &["netns", "add", &ns])?;
            lan.hosts.push(host);
            run(
                "ip",
                &[
                    "link", "add", &h, "type", "veth", "peer", "name", &p, "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &h, "master", &br])?;
            run("ip", &["link", "set", &h, "up"])?;
            let cidr = format!("{}/24", lan.hosts[i].ip);
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", &p])?;
            run("ip", &["-n", &ns, "link", "set", &p, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    pub fn host(&self, i: usize) -> &LanHost {
        &self.hosts[i]
    }

    /// The argv prefix that runs a program on host `i`.
    pub fn on(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.hosts[i].netns.clone(),
        ]
    }

    /// Cuts host `i` off the LAN (`true`) or plugs it back in.
    pub fn cut(&self, i: usize, cut: bool) {
        let state = if cut { "down" } else { "up" };
        let h = &self.hosts[i];
        run("ip", &["-n", &h.netns, "link", "set", &h.peer_if, state]).unwrap();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = run("ip", &["netns", "del", &h.netns]);
            let _ = run("ip", &["link", "del", &h.host_if]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
