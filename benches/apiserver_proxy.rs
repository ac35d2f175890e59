//! apiserver-proxy benchmark (prints figures; not a test), run by `benches/apiserver-proxy.sh`:
//! - throughput through the proxy vs a direct connection on loopback, both directions
//!   (target: ≥ 90 % of direct);
//! - connect latency overhead: connect + first byte from the upstream, direct vs proxied;
//! - failover after an upstream dies (target: ≤ 1 s), for a killed process (connection
//!   refused) and a silent host (SYNs dropped, emulated with a full accept queue).
//!
//! The proxy is the release `cluster-agent apiserver-proxy` binary with its default flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-agent");
const TRANSFER: u64 = 2 << 30;
const CHUNK: usize = 256 * 1024;
const RUNS: usize = 5;
const CONNECTS: usize = 2000;

/// Loopback addresses for this run: 127.251.<pid-derived>.x.
fn addr(last: u8, port: u16) -> SocketAddr {
    let mid = (std::process::id() % 250) as u8;
    SocketAddr::from((Ipv4Addr::new(127, 251, mid, last), port))
}

// ---------------------------------------------------------------------------------------
// Blocking upstreams for throughput and latency.

/// Sink: reads to EOF, then answers one byte. Source: reads an 8-byte length, sends that many
/// bytes, closes. Greeter: sends one byte, then waits for EOF.
#[derive(Clone, Copy)]
enum Role {
    Sink,
    Source,
    Greeter,
}

fn spawn_blocking_upstream(at: SocketAddr, role: Role) -> SocketAddr {
    let listener = TcpListener::bind(at).unwrap();
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; CHUNK];
                match role {
                    Role::Sink => {
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                        let _ = s.write_all(b"k");
                    }
                    Role::Source => {
                        let mut len = [0u8; 8];
                        if s.read_exact(&mut len).is_err() {
                            return;
                        }
                        let mut left = u64::from_be_bytes(len);
                        while left > 0 {
                            let n = left.min(CHUNK as u64) as usize;
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                    }
                    Role::Greeter => {
                        if s.write_all(b"g").is_ok() {
                            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                        }
                    }
                }
            });
        }
    });
    local
}

fn upload(target: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(target).unwrap();
    s.set_nodelay(true).unwrap();
    let buf = vec![7u8; CHUNK];
    let start = Instant::now();
    let mut left = TRANSFER;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).unwrap();
    TRANSFER as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn download(target: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(target).unwrap();
    s.set_nodelay(true).unwrap();
    let start = Instant::now();
    s.write_all(&TRANSFER.to_be_bytes()).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf).unwrap() {
            0 => break,
            n => got += n as u64,
        }
    }
    assert_eq!(got, TRANSFER);
    TRANSFER as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn connect_first_byte(target: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(target).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    start.elapsed()
}

/// User + system CPU time of a process so far (from /proc, clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the ")" that closes the command name: field 3 (state) first; utime and stime are
    // fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

// ---------------------------------------------------------------------------------------
// The proxy process.

struct Proxy {
    child: Child,
    listen: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(listen: SocketAddr, upstreams: &[SocketAddr]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let provider = dir.path().join("provider.yaml");
    let servers: Vec<String> = upstreams.iter().map(|u| u.to_string()).collect();
    std::fs::write(
        &provider,
        cluster_agent::proxy::config::render_provider(&servers),
    )
    .unwrap();
    let traefik = dir.path().join("traefik.yaml");
    std::fs::write(
        &traefik,
        format!(
            "entryPoints:\n  apiserver:\n    address: \"{listen}\"\nproviders:\n  file:\n    filename: {}\n",
            provider.display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["apiserver-proxy", "--traefik-config"])
        .arg(&traefik)
        .args(["--kubeconfig", "/nonexistent", "--refresh-interval", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proxy {
        child,
        listen,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------
// Controllable upstreams for failover (tokio, so they can be killed or silenced).

struct Controlled {
    addr: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Greets with `name`, then holds the connection. `silence` stops accepting but keeps the
/// listener (backlog 1) open, so once its queue is full new SYNs are dropped.
fn controlled(rt: &tokio::runtime::Runtime, at: SocketAddr, name: u8) -> Controlled {
    let _guard = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(at).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let task = rt.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut s, _)) = accepted else { continue };
                    tokio::spawn(async move {
                        if s.write_all(&[name]).await.is_ok() {
                            let mut b = [0u8; 64];
                            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                        }
                    });
                }
                _ = stopped.notified() => break,
            }
        }
        // Silent: keep the listener, never accept again.
        std::future::pending::<()>().await;
        drop(listener);
    });
    Controlled { addr, stop, task }
}

/// Connects through the proxy and reads the greeting; the time it took and who answered.
fn attempt(proxy: SocketAddr) -> (Duration, Option<u8>) {
    let start = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&proxy, Duration::from_secs(10)) else {
        return (start.elapsed(), None);
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    let who = s.read_exact(&mut b).ok().map(|_| b[0]);
    (start.elapsed(), who)
}

struct Failover {
    first_success_after: Duration,
    worst_attempt: Duration,
    failed: usize,
    attempts: usize,
}

/// Runs clients through the proxy, makes upstream A die with `kill`, keeps going for 2 s.
fn failover(rt: &tokio::runtime::Runtime, base: u8, kill: impl FnOnce(Controlled)) -> Failover {
    let a = controlled(rt, addr(base, 0), b'A');
    let b = controlled(rt, addr(base + 1, 0), b'B');
    let proxy = start_proxy(addr(base + 2, 16443), &[a.addr, b.addr]);
    // Warm up: both upstreams in use.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(attempt(proxy.listen).1);
    }
    assert!(
        seen.contains(&Some(b'A')) && seen.contains(&Some(b'B')),
        "{seen:?}"
    );
    kill(a);
    let killed = Instant::now();
    let mut result = Failover {
        first_success_after: Duration::MAX,
        worst_attempt: Duration::ZERO,
        failed: 0,
        attempts: 0,
    };
    while killed.elapsed() < Duration::from_secs(2) {
        let (took, who) = attempt(proxy.listen);
        result.attempts += 1;
        result.worst_attempt = result.worst_attempt.max(took);
        match who {
            Some(b'B') if result.first_success_after == Duration::MAX => {
                result.first_success_after = killed.elapsed();
            }
            Some(b'B') => {}
            _ => result.failed += 1,
        }
    }
    drop(b.task);
    result
}

fn main() {
    println!(
        "apiserver-proxy benchmark: release binary, default flags, loopback, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // Throughput and latency.
    let sink = spawn_blocking_upstream(addr(2, 0), Role::Sink);
    let source = spawn_blocking_upstream(addr(3, 0), Role::Source);
    let greeter = spawn_blocking_upstream(addr(4, 0), Role::Greeter);
    let p_sink = start_proxy(addr(5, 16443), &[sink]);
    let p_source = start_proxy(addr(6, 16443), &[source]);
    let p_greeter = start_proxy(addr(7, 16443), &[greeter]);

    for (what, direct, proxy, f) in [
        ("upload  ", sink, &p_sink, upload as fn(SocketAddr) -> f64),
        ("download", source, &p_source, download),
    ] {
        let mut d = Vec::new();
        let mut p = Vec::new();
        let cpu_before = cpu_time(proxy.child.id());
        for _ in 0..RUNS {
            d.push(f(direct));
            p.push(f(proxy.listen));
        }
        let cpu = cpu_time(proxy.child.id()) - cpu_before;
        let gib = (RUNS as u64 * TRANSFER) as f64 / f64::from(1u32 << 30);
        let (d, p) = (median(d), median(p));
        println!(
            "throughput {what}  direct {d:6.0} MB/s   proxied {p:6.0} MB/s   ratio {:5.1} %   proxy CPU {:4.0} ms/GiB  (median of {RUNS} × {} MiB)",
            100.0 * p / d,
            cpu.as_secs_f64() * 1e3 / gib,
            TRANSFER >> 20
        );
    }

    let mut direct: Vec<Duration> = (0..CONNECTS).map(|_| connect_first_byte(greeter)).collect();
    let mut proxied: Vec<Duration> = (0..CONNECTS)
        .map(|_| connect_first_byte(p_greeter.listen))
        .collect();
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    let (p50, p99) = (
        percentile(&mut proxied, 0.5),
        percentile(&mut proxied, 0.99),
    );
    println!(
        "connect + first byte  direct p50 {:6.0} µs p99 {:6.0} µs   proxied p50 {:6.0} µs p99 {:6.0} µs   overhead p50 {:6.0} µs  ({CONNECTS} connections)",
        d50.as_secs_f64() * 1e6,
        d99.as_secs_f64() * 1e6,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        (p50.as_secs_f64() - d50.as_secs_f64()) * 1e6,
    );
    drop((p_sink, p_source, p_greeter));

    // Failover.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let refused = failover(&rt, 10, |a| {
        a.task.abort();
        let _ = rt.block_on(a.task);
    });
    let silent = failover(&rt, 20, |a| {
        a.stop.notify_one();
        // Fill the accept queue until a connect no longer completes: SYNs are now dropped.
        let mut held = Vec::new();
        loop {
            match TcpStream::connect_timeout(&a.addr, Duration::from_millis(100)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
            assert!(held.len() < 64, "accept queue never filled");
        }
        std::mem::forget(held);
        std::mem::forget(a);
    });
    for (what, f) in [
        ("process killed (refused)", refused),
        ("host silent (SYN dropped)", silent),
    ] {
        println!(
            "failover, {what}: first success {:7.1} ms after the failure, worst client connect {:7.1} ms, failed clients {} of {}",
            f.first_success_after.as_secs_f64() * 1e3,
            f.worst_attempt.as_secs_f64() * 1e3,
            f.failed,
            f.attempts
        );
    }
}
