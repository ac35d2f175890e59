//! dqlite membership: the wire codec ([`proto`], sans-IO), mutual TLS as go-dqlite does it
//! ([`tls`]), the async client ([`client`]: leader discovery, retries, deadlines), and the
//! embedded member ([`host`] over [`ffi`], identity files in [`files`]) and this node's
//! membership slot ([`membership`]: the running member and the live view of its cluster).
//! [`fake`] is a scripted peer for tests.
//! See docs/dqlite.md and docs/dqlite-embedded.md.

pub mod client;
pub mod external;
/// A scripted dqlite peer for tests: it speaks the wire protocol through our codec
/// ([`proto`]) and answers as a test's script says. The agent itself never uses it.
pub mod fake;
pub mod ffi;
pub mod files;
pub mod host;
pub mod membership;
pub mod proto;
pub mod raft_log;
pub mod recovery;
pub mod tls;

pub use client::{Client, ClientError, Connection, LeaderInfo, Options};
pub use host::{EmbeddedMember, HostError, MemberConfig};
pub use proto::{Metadata, NodeInfo, Role};
pub use tls::{client_config, server_config, ClientTls};
