//! Clients of other services: another node's :25000 (pinned TLS) and the Kubernetes API.

pub mod kubernetes;
pub mod peer;
pub mod recovery;
