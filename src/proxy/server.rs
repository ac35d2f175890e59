//! The listener: accept, connect an upstream through the [`Pool`], forward bytes both ways
//! ([`splice::forward`]) until both sides are done; on shutdown stop accepting and let open connections finish for up to
//! the drain timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::pool::Pool;
use super::splice;

/// Serves until `shutdown` resolves, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    pool: Pool,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    // Each connection task holds a sender; `recv` returns `None` once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let pool = pool.clone();
                    let open = open_tx.clone();
                    tokio::spawn(async move {
                        proxy_connection(client, peer, &pool).await;
                        drop(open);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(open_tx);
    let open: u64 = pool.snapshot().upstreams.iter().map(|u| u.active).sum();
    tracing::info!(
        open,
        ?drain_timeout,
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(drain_timeout, open_rx.recv())
        .await
        .is_err()
    {
        let open: u64 = pool.snapshot().upstreams.iter().map(|u| u.active).sum();
        tracing::warn!(
            open,
            "drain timeout reached; closing the remaining connections"
        );
    }
}

async fn proxy_connection(client: TcpStream, peer: SocketAddr, pool: &Pool) {
    let Some((upstream, target)) = pool.connect().await else {
        tracing::debug!(%peer, "no upstream accepted the connection; closing it");
        return;
    };
    // Kubernetes API traffic is request/response: no Nagle delays in either hop.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (to_upstream, from_upstream) = match splice::forward(client, upstream).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(%peer, upstream = %target, error = %e, "connection ended with an error");
            (0, 0)
        }
    };
    pool.closed(&target, to_upstream, from_upstream);
}
