//! cluster-agent: the node-join agent of a MicroK8s-style cluster. See docs/ARCHITECTURE.md.

pub mod api;
pub mod args;
pub mod bootstrap;
pub mod cli;
pub mod daemon;
pub mod dqlite;
pub mod goduration;
pub mod kubeconfig;
pub mod net;
pub mod pki;
pub mod secret;
pub mod services;
pub mod state;
