//! cluster-agent: the node-join agent of a MicroK8s-style cluster. See docs/ARCHITECTURE.md.
//!
//! The source tree is layered. Each folder is a layer and uses only the layers listed before
//! it (siblings on one line never use each other); `tests/layers.rs` fails on any other
//! edge. When lower code needs something from above, that thing moves down.
//!
//! ```text
//! util                 addresses, hex, Go durations, error text, secrets, HMAC request proofs
//! format               args files, kubeconfig, join strings, traefik files, :25000 wire types,
//!                      launch configurations, csr template, node labels, recovery calls, bundles
//! pki                  CA, leaves, fingerprints, rustls configurations
//! state                the state directory: the only user of std::fs
//! sys                  service manager, command runner, host identity, clock, resolver
//! dqlite               wire codec, client, embedded member, membership, raft log reader,
//!                      lost-quorum recovery of one data directory
//! clients              pinned peer client, recovery client, Kubernetes API client
//! cluster              node, datastore, tokens, audit, health, bootstrap, roles, calico,
//!                      k8s-dqlite's service, this node's part in a recovery
//! grant | local        what :25000 grants | what the CLI asks of its node
//! api | control        the :25000 HTTP face | the control socket
//! proxy                the worker's apiserver-proxy
//! daemon               wiring, launch-configuration watcher
//! cli                  the command line and the exit-code table
//! ```

pub mod util;

pub mod format;

pub mod pki;

pub mod state;

pub mod sys;

pub mod dqlite;

pub mod clients;

pub mod cluster;

pub mod grant;
pub mod local;

pub mod api;
pub mod control;

pub mod proxy;

pub mod daemon;

pub mod cli;
