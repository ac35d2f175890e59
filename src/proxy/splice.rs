//! Moving bytes between the client and the upstream until both directions are done.
//!
//! On Linux each direction goes socket → pipe → socket with `splice(2)`, so the payload never
//! enters user space (on a loopback benchmark this doubles throughput over a user-space copy).
//! Elsewhere, or when a pipe cannot be created (descriptor limit), it falls back to tokio's
//! buffered copy. Semantics are the same either way: when one side stops sending, the other
//! side gets a FIN and the opposite direction continues; an error in either direction closes
//! both connections.

use std::io;

use tokio::net::TcpStream;

/// Copy buffer per direction for the fallback.
const BUFFER: usize = 64 * 1024;

/// Forwards until both directions are done; returns (bytes to upstream, bytes from upstream).
pub async fn forward(client: TcpStream, upstream: TcpStream) -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        match (linux::Pipe::new(), linux::Pipe::new()) {
            (Ok(up), Ok(down)) => {
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                return tokio::try_join!(
                    linux::one_way(client_read, upstream_write, up),
                    linux::one_way(upstream_read, client_write, down),
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "no pipe for splice; copying through user space");
            }
        }
    }
    copy(client, upstream).await
}

async fn copy(mut client: TcpStream, mut upstream: TcpStream) -> io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER).await
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};

    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    use tokio::io::{AsyncWriteExt, Interest};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    /// Pipe capacity asked for (the unprivileged maximum by default is 1 MiB); the kernel's
    /// 64 KiB default is kept if the request is refused.
    const PIPE_SIZE: usize = 256 * 1024;

    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        pub fn new() -> io::Result<Pipe> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
            Ok(Pipe { read, write })
        }
    }

    fn splice_io(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        splice(from, None, to, None, len, flags).map_err(io::Error::from)
    }

    /// One direction: fill the (empty) pipe from `from`, drain it completely into `to`,
    /// repeat until EOF, then send FIN to `to`.
    pub async fn one_way(
        from: OwnedReadHalf,
        mut to: OwnedWriteHalf,
        pipe: Pipe,
    ) -> io::Result<u64> {
        let src = from.as_ref();
        let mut total = 0u64;
        loop {
            // The pipe is empty here, so EAGAIN can only mean "socket has no data".
            let n = loop {
                src.readable().await?;
                match src.try_io(Interest::READABLE, || {
                    splice_io(src, &pipe.write, PIPE_SIZE)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                break;
            }
            // The pipe holds `left` bytes, so EAGAIN can only mean "socket buffer full".
            let mut left = n;
            while left > 0 {
                let dst = to.as_ref();
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || splice_io(&pipe.read, dst, left)) {
                    Ok(m) => {
                        left -= m;
                        total += m as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        to.shutdown().await?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Two connected sockets on loopback (port chosen by the system).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Client sends 8 MiB and half-closes; the upstream reads it all, answers 3 MiB after the
    /// client's FIN, and closes. Both sides must see exactly the other's bytes.
    async fn exercise(spliced: bool) {
        let (mut client, proxy_client) = pair().await;
        let (proxy_upstream, mut upstream) = pair().await;
        let forwarding = tokio::spawn(async move {
            if spliced {
                forward(proxy_client, proxy_upstream).await
            } else {
                copy(proxy_client, proxy_upstream).await
            }
        });
        let request = pattern(8 << 20, 1);
        let response = pattern(3 << 20, 7);
        let upstream_side = {
            let (request, response) = (request.clone(), response.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                upstream.read_to_end(&mut got).await.unwrap();
                assert!(got == request, "upstream received different bytes");
                upstream.write_all(&response).await.unwrap();
            })
        };
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got == response, "client received different bytes");
        upstream_side.await.unwrap();
        let counts = forwarding.await.unwrap().unwrap();
        assert_eq!(counts, (8 << 20, 3 << 20));
    }

    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

    #[tokio::test]
    async fn splice_forwards_both_ways_with_half_close() {
        tokio::time::timeout(DEADLINE, exercise(true))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn copy_fallback_forwards_both_ways_with_half_close() {
        tokio::time::timeout(DEADLINE, exercise(false))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_reset_upstream_ends_the_client_connection() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_upstream, upstream) = pair().await;
        let forwarding = tokio::spawn(forward(proxy_client, proxy_upstream));
        // Linger 0: closing sends RST instead of FIN (and never blocks, which is what the
        // deprecation warns about).
        #[allow(deprecated)]
        upstream
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(upstream);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(DEADLINE, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(forwarding.await.unwrap().is_err());
    }
}
