//! The cluster core: the node handle and its datastore, join tokens and their audit log, bootstrap of a state
//! directory, the dqlite roles policy and driver, the serving certificate, Calico's
//! autodetection, and the node's counters.

pub mod audit;
pub mod bootstrap;
pub mod calico;
pub mod datastore;
pub mod health;
pub mod journal;
pub mod k8s_dqlite;
pub mod metrics;
pub mod node;
pub mod operation;
pub mod recovery;
pub mod roles;
pub mod serving;
pub mod tokens;
