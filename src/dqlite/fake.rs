//! A scripted dqlite peer for tests. It speaks the wire protocol through our codec
//! ([`super::proto`]: [`decode_request`] in, [`Response::encode`] out) and answers each
//! request as its [`Handler`] says, so retry and discovery paths that a live cluster produces
//! only by chance can be driven deterministically. The client's unit tests and
//! tests/dqlite_client.rs use it; the agent itself never does.
//!
//! A peer never panics: whatever goes wrong on a connection (an I/O error, a protocol
//! version other than 1, an answer the codec cannot encode) closes that connection.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::proto::{decode_request, Metadata, NodeInfo, Request, Response, Role, BOOTSTRAP_ID};

/// What the peer does with one request.
pub enum Action {
    /// Write this answer, then wait for the next request.
    Reply(Response),
    /// Close the connection without answering (an answer lost on the way).
    Close,
}

/// The script of a peer: called once for every request it decodes, on any connection.
pub type Handler = Arc<dyn Fn(Request) -> Action + Send + Sync>;

/// Serves one connection: reads the protocol version (it must be 1), then answers requests
/// in order until the other side closes, the handler says [`Action::Close`] or an error
/// closes the connection. Bytes the codec cannot decode are never answered.
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, handler: Handler) {
    let mut version = [0u8; 8];
    if s.read_exact(&mut version).await.is_err() || u64::from_le_bytes(version) != 1 {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        while let Ok(Some((req, used))) = decode_request(&buf) {
            buf.drain(..used);
            match handler(req) {
                Action::Reply(resp) => {
                    let Ok(bytes) = resp.encode() else {
                        return;
                    };
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Action::Close => return,
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Serves every connection `listener` accepts over plain TCP, on the current tokio runtime.
pub fn spawn_plain(listener: TcpListener, handler: Handler) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_conn(s, handler.clone()));
        }
    });
}

/// Serves every connection `listener` accepts over TLS with `config` (e.g. our mutual-TLS
/// [`super::tls::server_config`]), on the current tokio runtime. A failed handshake closes
/// that connection.
pub fn spawn_tls(listener: TcpListener, config: Arc<rustls::ServerConfig>, handler: Handler) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve_conn(tls, handler).await;
                }
            });
        }
    });
}

/// A single-node "cluster" at `address` that leads itself as the bootstrap member
/// ([`BOOTSTRAP_ID`]) and accepts every change.
pub fn leader_of_one(address: &str) -> Handler {
    leader_of_one_with_id(BOOTSTRAP_ID, address)
}

/// [`leader_of_one`] whose only member has node id `id`: LEADER and CLUSTER name it, CLIENT
/// is welcomed (15 s heartbeat), DESCRIBE answers failure domain 3 and weight 9, and every
/// other request succeeds with an empty answer.
pub fn leader_of_one_with_id(id: u64, address: &str) -> Handler {
    let address = address.to_string();
    Arc::new(move |req| {
        Action::Reply(match req {
            Request::Leader => Response::Node {
                id,
                address: address.clone(),
            },
            Request::Cluster => Response::Nodes(vec![NodeInfo {
                id,
                address: address.clone(),
                role: Role::Voter,
            }]),
            Request::Describe => Response::Metadata(Metadata {
                failure_domain: 3,
                weight: 9,
            }),
            Request::Client { .. } => Response::Welcome {
                heartbeat_timeout_ms: 15000,
            },
            _ => Response::Empty,
        })
    })
}
