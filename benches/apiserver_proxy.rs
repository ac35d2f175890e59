//! apiserver-proxy benchmark (prints figures; not a test), run by `benches/apiserver-proxy.sh`:
//! - `throughput`: bulk upload and download through the proxy vs a direct connection, all on
//!   loopback. Client, proxy and upstream share the machine's cores, so this measures the
//!   proxy's CPU cost per byte more than anything a worker would notice;
//! - `link`: the same with the upstreams in a network namespace behind a veth pair limited to
//!   `--link-rate` (default 10gbit) each way, the way a worker reaches its API servers
//!   (target: proxied ≥ 90 % of direct);
//! - `connect`: connect + first byte from the upstream, direct vs proxied;
//! - `failover`: after an upstream dies (target: ≤ 1 s), for a killed process (connection
//!   refused) and a silent host (its end of the link down: SYNs vanish).
//!
//! The proxy is the release `cluster-agent apiserver-proxy` binary with its default flags.
//! `link` and `failover` need root (network namespaces, tc); without it they say so and skip.
//!
//! Arguments (after `--`): section names (all by default); `--link-rate R`; `--pin` to give
//! the proxy CPU 1 of its own and keep clients and upstreams on CPU 0 (direct runs too);
//! `--reference haproxy` to put HAProxy (splice on, one thread) where our proxy was, as a
//! yardstick for what a user-space proxy costs on the same machine.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
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
    serve_blocking(TcpListener::bind(at).unwrap(), role)
}

fn serve_blocking(listener: TcpListener, role: Role) -> SocketAddr {
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

/// How the run was asked for.
struct Options {
    sections: Vec<String>,
    pin: bool,
    reference: Option<String>,
    link_rate: String,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            sections: Vec::new(),
            pin: false,
            reference: None,
            link_rate: "10gbit".to_string(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--pin" => options.pin = true,
                "--reference" => options.reference = args.next(),
                "--link-rate" => options.link_rate = args.next().unwrap_or(options.link_rate),
                // cargo bench passes `--bench`; ignore harness flags.
                flag if flag.starts_with("--") => {}
                section => options.sections.push(section.to_string()),
            }
        }
        options
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == section)
    }

    /// The command that starts a process, on CPU 1 when pinned.
    fn command(&self, program: &str) -> Command {
        if self.pin {
            let mut c = Command::new("taskset");
            c.args(["--cpu-list", "1", program]);
            c
        } else {
            Command::new(program)
        }
    }
}

/// Keeps this process (clients and upstreams, threads started from now on) on CPU 0.
fn pin_self_to_cpu0() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

fn start_proxy(options: &Options, listen: SocketAddr, upstreams: &[SocketAddr]) -> Proxy {
    match options.reference.as_deref() {
        None => start_agent_proxy(options, listen, upstreams),
        Some("haproxy") => start_haproxy(options, listen, upstreams),
        Some(other) => panic!("unknown reference proxy {other:?} (known: haproxy)"),
    }
}

fn wait_listening(listen: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// HAProxy in TCP mode with splice both ways and a 500 ms connect timeout, like ours.
fn start_haproxy(options: &Options, listen: SocketAddr, upstreams: &[SocketAddr]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haproxy.cfg");
    let mut text = format!(
        "global\n  maxconn 4000\n  nbthread 1\n  tune.maxpollevents 1024\n\
         defaults\n  mode tcp\n  option splice-request\n  option splice-response\n  timeout connect 500ms\n  timeout client 1h\n  timeout server 1h\n\
         frontend apiserver\n  bind {listen}\n  default_backend upstreams\n\
         backend upstreams\n  balance roundrobin\n"
    );
    for (i, u) in upstreams.iter().enumerate() {
        text.push_str(&format!("  server u{i} {u} check inter 1s\n"));
    }
    std::fs::write(&config, text).unwrap();
    let child = options
        .command("haproxy")
        .args(["-db", "-q", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("haproxy is not installed (apt-get install haproxy)");
    wait_listening(listen);
    Proxy {
        child,
        listen,
        _dir: dir,
    }
}

fn start_agent_proxy(options: &Options, listen: SocketAddr, upstreams: &[SocketAddr]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let provider = dir.path().join("provider.yaml");
    let servers: Vec<String> = upstreams.iter().map(|u| u.to_string()).collect();
    std::fs::write(
        &provider,
        cluster_agent::format::traefik::render_provider(&servers),
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
    let child = options
        .command(BIN)
        .args(["apiserver-proxy", "--traefik-config"])
        .arg(&traefik)
        .args(["--kubeconfig", "/nonexistent", "--refresh-interval", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_listening(listen);
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
    task: tokio::task::JoinHandle<()>,
}

/// Greets with `name`, then holds the connection until the client closes it.
fn controlled(rt: &tokio::runtime::Runtime, listener: TcpListener, name: u8) -> Controlled {
    let _guard = rt.enter();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = rt.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if s.write_all(&[name]).await.is_ok() {
                    let mut b = [0u8; 64];
                    while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    Controlled { addr, task }
}

// A "remote host" behind a veth pair, shared with the end-to-end tests.
#[path = "../tests/common/netns.rs"]
mod netns;
use netns::Link;

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

/// Runs clients through the proxy, makes upstream A fail with `kill`, keeps going for 2 s.
/// A listens on `a` (behind a link when the failure needs one), B on loopback.
fn failover(
    options: &Options,
    rt: &tokio::runtime::Runtime,
    base: u8,
    a: TcpListener,
    kill: impl FnOnce(Controlled),
) -> Failover {
    let a = controlled(rt, a, b'A');
    let b = controlled(rt, TcpListener::bind(addr(base + 1, 0)).unwrap(), b'B');
    let proxy = start_proxy(options, addr(base + 2, 16443), &[a.addr, b.addr]);
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
    b.task.abort();
    result
}

/// Upload and download, direct and through a proxy, to a sink and a source upstream.
fn throughput_to(options: &Options, over: &str, sink: SocketAddr, source: SocketAddr, base: u8) {
    let p_sink = start_proxy(options, addr(base, 16443), &[sink]);
    let p_source = start_proxy(options, addr(base + 1, 16443), &[source]);
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
            "throughput {what} {over}  direct {d:6.0} MB/s   proxied {p:6.0} MB/s   ratio {:5.1} %   proxy CPU {:4.0} ms/GiB  (median of {RUNS} × {} MiB)",
            100.0 * p / d,
            cpu.as_secs_f64() * 1e3 / gib,
            TRANSFER >> 20
        );
    }
}

fn throughput(options: &Options) {
    let sink = spawn_blocking_upstream(addr(2, 0), Role::Sink);
    let source = spawn_blocking_upstream(addr(3, 0), Role::Source);
    throughput_to(options, "loopback", sink, source, 5);
}

/// The upstreams on the far side of a rate-limited link, the proxy and clients on this side:
/// what a worker sees, with the network rather than the CPU as the limit.
fn throughput_over_link(options: &Options) {
    let rate = options.link_rate.as_str();
    let link = match Link::new(Some(rate)) {
        Ok(link) => link,
        Err(e) => {
            println!(
                "throughput over a {rate} link: skipped, needs root for a network namespace ({e})"
            );
            return;
        }
    };
    let sink = serve_blocking(link.listen(), Role::Sink);
    let source = serve_blocking(link.listen(), Role::Source);
    throughput_to(options, &format!("{rate} link"), sink, source, 8);
}

fn connect_latency(options: &Options) {
    let greeter = spawn_blocking_upstream(addr(4, 0), Role::Greeter);
    let p_greeter = start_proxy(options, addr(7, 16443), &[greeter]);
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
}

fn failovers(options: &Options) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = TcpListener::bind(addr(10, 0)).unwrap();
    let refused = Ok(failover(options, &rt, 10, a, |a| {
        a.task.abort();
        let _ = rt.block_on(a.task);
    }));
    let silent = Link::new(None).map(|link| {
        failover(options, &rt, 20, link.listen(), |a| {
            link.set_silent(true);
            // The task keeps its listener: only the link is gone.
            std::mem::forget(a);
        })
    });
    for (what, f) in [
        ("process killed (refused)", refused),
        ("host silent (link down)", silent),
    ] {
        match f {
            Ok(f) => println!(
                "failover, {what}: first success {:7.1} ms after the failure, worst client connect {:7.1} ms, failed clients {} of {}",
                f.first_success_after.as_secs_f64() * 1e3,
                f.worst_attempt.as_secs_f64() * 1e3,
                f.failed,
                f.attempts
            ),
            Err(e) => println!("failover, {what}: skipped, needs root for a network namespace ({e})"),
        }
    }
}

fn main() {
    let options = Options::parse();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    if options.pin {
        pin_self_to_cpu0();
    }
    println!(
        "apiserver-proxy benchmark: {}, loopback, {} cores{}",
        match options.reference.as_deref() {
            None => "release cluster-agent, default flags",
            Some(other) => other,
        },
        cores,
        if options.pin {
            ", proxy pinned to CPU 1, clients and upstreams to CPU 0"
        } else {
            ", nothing pinned"
        }
    );
    if options.runs("throughput") {
        throughput(&options);
    }
    if options.runs("link") {
        throughput_over_link(&options);
    }
    if options.runs("connect") {
        connect_latency(&options);
    }
    if options.runs("failover") {
        failovers(&options);
    }
}
