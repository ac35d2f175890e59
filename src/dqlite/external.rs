//! This node's member when k8s-dqlite hosts it (`--datastore external`, inside the MicroK8s
//! snap): who it is (`info.yaml`) and a client to its cluster, seeded from the backend's
//! `info.yaml` and `cluster.yaml` and secured with its `cluster.crt`. The files change under
//! the agent's feet (k8s-dqlite writes them; a join or leave replaces the certificate), so
//! the client is rebuilt when the addresses it was seeded with are not the backend's any
//! more, or when told the certificate changed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::membership::Live;
use super::{files, Client, ClientTls, Options};

/// The member k8s-dqlite hosts from a backend directory.
#[derive(Debug)]
pub struct ExternalMember {
    backend: PathBuf,
    /// The members' expected one-way latency: the client's deadlines follow it.
    network_latency: Duration,
    cached: Mutex<Option<(Vec<String>, Arc<Client>)>>,
}

impl ExternalMember {
    pub fn new(backend: PathBuf, network_latency: Duration) -> Arc<ExternalMember> {
        Arc::new(ExternalMember {
            backend,
            network_latency,
            cached: Mutex::new(None),
        })
    }

    /// `(id, address)` from `info.yaml`: `None` before k8s-dqlite first started.
    pub fn own(&self) -> Option<(u64, String)> {
        files::read_info(&self.backend).ok().flatten()
    }

    /// The addresses the backend knows: its own, then every member in `cluster.yaml`.
    fn seeds(&self) -> Vec<String> {
        let mut seeds: Vec<String> = self.own().map(|(_, a)| a).into_iter().collect();
        if let Ok(Some(nodes)) = files::read_cluster(&self.backend) {
            for n in nodes {
                if !seeds.contains(&n.address) {
                    seeds.push(n.address);
                }
            }
        }
        seeds
    }

    /// A client to the cluster as the backend describes it now; `None` without a cluster
    /// certificate or any address.
    pub fn client(&self) -> Option<Arc<Client>> {
        let seeds = self.seeds();
        if seeds.is_empty() {
            return None;
        }
        let mut cached = self.cached.lock().ok()?;
        if let Some((seeded, client)) = cached.as_ref() {
            if *seeded == seeds {
                return Some(client.clone());
            }
        }
        let tls = ClientTls::load(
            &self.backend.join("cluster.crt"),
            &self.backend.join("cluster.key"),
        )
        .ok()?;
        // As the embedded member's client: callers that must answer fast bound their wait.
        let options = Options {
            call_timeout: Duration::from_secs(30),
            ..Options::for_latency(self.network_latency)
        };
        let client = Arc::new(Client::new(seeds.clone(), Some(tls), options).ok()?);
        *cached = Some((seeds, client.clone()));
        Some(client)
    }

    /// This member's identity and a client to its cluster, as the embedded member gives
    /// them: `None` before k8s-dqlite first started it (or without a certificate).
    pub fn live(&self) -> Option<Live> {
        let (own_id, own_address) = self.own()?;
        Some(Live {
            client: self.client()?,
            own_id,
            own_address,
        })
    }

    /// The certificate (or the whole backend) was replaced: the next [`client`] is new.
    ///
    /// [`client`]: ExternalMember::client
    pub fn forget(&self) {
        if let Ok(mut cached) = self.cached.lock() {
            *cached = None;
        }
    }
}
