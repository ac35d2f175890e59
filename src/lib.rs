//! cluster-agent: the node-join agent of a MicroK8s-style cluster. See docs/ARCHITECTURE.md.

pub mod api;
pub mod args;
pub mod audit;
pub mod bootstrap;
pub mod cli;
pub mod client;
pub mod connection;
pub mod daemon;
pub mod datastore;
pub mod dqlite;
pub mod errtext;
pub mod goduration;
pub mod kubeconfig;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod node;
pub mod ops;
pub mod pki;
pub mod proxy;
pub mod ratelimit;
pub mod roles;
pub mod secret;
pub mod services;
pub mod state;
pub mod tokens;
