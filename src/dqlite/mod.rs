//! dqlite membership: the wire codec ([`proto`], sans-IO), mutual TLS as go-dqlite does it
//! ([`tls`]) and the async client ([`client`]: leader discovery, retries, deadlines).
//! See docs/dqlite.md.

pub mod client;
pub mod proto;
pub mod tls;

pub use client::{Client, ClientError, Connection, LeaderInfo, Options};
pub use proto::{Metadata, NodeInfo, Role};
pub use tls::{client_config, server_config, ClientTls};
