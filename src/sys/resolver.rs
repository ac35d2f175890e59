//! Name resolution (a joining node's hostname, a node named to `remove-node`), behind a trait
//! so tests decide what a name resolves to.

use std::net::IpAddr;

use crate::sys::runner::BoxFuture;

pub trait Resolver: Send + Sync {
    /// Every address `name` resolves to; empty when it does not resolve.
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<IpAddr>>;
}

/// The system resolver (getaddrinfo on a blocking thread, through tokio).
#[derive(Debug, Default, Clone)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<IpAddr>> {
        Box::pin(async move {
            if name.is_empty() {
                return Vec::new();
            }
            match tokio::net::lookup_host((name, 0)).await {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(_) => Vec::new(),
            }
        })
    }
}

/// A fixed table of names; for tests.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    pub names: Vec<(String, IpAddr)>,
}

impl Resolver for StaticResolver {
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<IpAddr>> {
        let found = self
            .names
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, ip)| *ip)
            .collect();
        Box::pin(async move { found })
    }
}
