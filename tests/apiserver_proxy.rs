//! `cluster-agent apiserver-proxy` end to end: the real binary (and once the library entry
//! point) in front of real TCP upstreams on distinct loopback addresses, and a TLS fake of the
//! API server's endpoints API requiring the kubeconfig's client certificate.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use cluster_agent::pki::{Authority, LeafSpec, PemPair};
use common::{agent, eventually, run_cli, text, unique_loopback};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;

const DEADLINE: Duration = Duration::from_secs(20);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Upstreams: a TCP server that greets with its name, then echoes.

struct EchoUpstream {
    addr: SocketAddr,
    name: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EchoUpstream {
    fn start(rt: &Runtime, ip: IpAddr, name: &str) -> EchoUpstream {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        Self::start_on(rt, listener, name)
    }

    /// On a listener made elsewhere (e.g. in another network namespace).
    fn start_on(rt: &Runtime, listener: std::net::TcpListener, name: &str) -> EchoUpstream {
        listener.set_nonblocking(true).unwrap();
        let listener = {
            let _entered = rt.enter();
            tokio::net::TcpListener::from_std(listener).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let mut up = EchoUpstream {
            addr,
            name: name.to_string(),
            task: None,
        };
        up.task = Some(rt.spawn(Self::serve(listener, up.name.clone())));
        up
    }

    async fn serve(listener: tokio::net::TcpListener, name: String) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            while conns.try_join_next().is_some() {}
            let greeting = format!("{name}\n");
            conns.spawn(async move {
                if stream.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    }

    /// Closes the listener and every connection; returns once they are gone.
    fn kill(&mut self, rt: &Runtime) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = rt.block_on(task);
        }
    }

    fn restart(&mut self, rt: &Runtime) {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .unwrap();
        self.task = Some(rt.spawn(Self::serve(listener, self.name.clone())));
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// Connects through the proxy and reads the upstream's greeting.
fn ask(proxy: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.is_empty() {
        return Err("closed without a greeting".into());
    }
    Ok(line.trim_end().to_string())
}

// ---------------------------------------------------------------------------------------
// The proxy as a process.

/// provider.yaml as MicroK8s's join.py writes it (PyYAML dump of the template).
fn provider_yaml(addresses: &[String]) -> String {
    let mut s = String::from(
        "tcp:\n  routers:\n    Router-1:\n      rule: HostSNI(`*`)\n      service: kube-apiserver\n      tls:\n        passthrough: true\n  services:\n    kube-apiserver:\n      loadBalancer:\n        servers:\n",
    );
    for a in addresses {
        s.push_str(&format!("        - address: {a}\n"));
    }
    s
}

struct ProxyProcess {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    metrics: SocketAddr,
    child: Option<Child>,
}

impl ProxyProcess {
    /// Starts `cluster-agent apiserver-proxy` with a traefik.yaml listening on a fresh
    /// loopback address, a provider.yaml listing `upstreams`, and `extra` flags. Returns once
    /// /metrics answers (the proxy listener is bound before it).
    fn start(upstreams: &[String], watch: bool, refresh: &str, extra: &[&str]) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, unique_loopback(), upstreams, watch, refresh, extra)
    }

    fn start_in(
        dir: tempfile::TempDir,
        ip: Ipv4Addr,
        upstreams: &[String],
        watch: bool,
        refresh: &str,
        extra: &[&str],
    ) -> ProxyProcess {
        let listen = SocketAddr::from((ip, 16443));
        let metrics = SocketAddr::from((ip, 16444));
        let provider = dir.path().join("provider.yaml");
        std::fs::write(
            dir.path().join("traefik.yaml"),
            format!(
                "entryPoints:\n  apiserver:\n    address: \"{listen}\"\nproviders:\n  file:\n    filename: {}\n    watch: {watch}\n",
                provider.display()
            ),
        )
        .unwrap();
        std::fs::write(&provider, provider_yaml(upstreams)).unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let mut args: Vec<String> = vec![
            "apiserver-proxy".into(),
            "--traefik-config".into(),
            dir.path().join("traefik.yaml").display().to_string(),
            "--kubeconfig".into(),
            dir.path().join("kubelet.config").display().to_string(),
            "--refresh-interval".into(),
            refresh.into(),
            "--metrics-listen".into(),
            metrics.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = agent(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut proxy = ProxyProcess {
            dir,
            listen,
            metrics,
            child: Some(child),
        };
        eventually("proxy /metrics", DEADLINE, || {
            if let Ok(Some(status)) = proxy.child.as_mut().unwrap().try_wait() {
                panic!("proxy exited with {status}:\n{}", proxy.log());
            }
            proxy.try_metrics()
        });
        proxy
    }

    fn provider_path(&self) -> PathBuf {
        self.dir.path().join("provider.yaml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    fn try_metrics(&self) -> Option<String> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap();
        let resp = client
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .ok()?;
        (resp.status() == 200).then(|| resp.text().unwrap())
    }

    /// The value of `metric{upstream="addr"}`.
    fn metric(&self, metric: &str, upstream: &str) -> Option<String> {
        let prefix = format!("{metric}{{upstream=\"{upstream}\"}} ");
        self.try_metrics()?
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    fn healthy(&self, upstream: &str) -> Option<bool> {
        self.metric("cluster_agent_proxy_upstream_healthy", upstream)
            .map(|v| v == "1")
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let status = eventually("proxy exit", DEADLINE, || child.try_wait().unwrap());
        self.child = None;
        status
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fail-over and health.

#[test]
fn killed_upstream_never_fails_a_new_connection() {
    let rt = runtime();
    let mut ups: Vec<EchoUpstream> = (0..3)
        .map(|i| EchoUpstream::start(&rt, unique_loopback().into(), &format!("up{i}")))
        .collect();
    let addrs: Vec<String> = ups.iter().map(EchoUpstream::address).collect();
    let proxy = ProxyProcess::start(&addrs, false, "0", &[]);

    // Loopback latencies tie, so connections are spread (a scheduling spike on a busy machine
    // can keep one upstream out of the rotation for a while, hence "at least two").
    let served: Vec<String> = (0..30).map(|_| ask(proxy.listen).unwrap()).collect();
    let seen: BTreeSet<&String> = served.iter().collect();
    assert!(seen.len() >= 2, "{served:?}");

    // Kill the upstream that served last: it is in the rotation, so new connections are sent
    // to it first and must be retried on the others.
    let victim = ups
        .iter()
        .position(|u| Some(&u.name) == served.last())
        .unwrap();
    let survivor = (victim + 1) % ups.len();
    ups[victim].kill(&rt);
    for i in 0..60 {
        let got = ask(proxy.listen).unwrap_or_else(|e| {
            panic!("connection {i} after the kill failed: {e}\n{}", proxy.log())
        });
        assert_ne!(got, ups[victim].name);
    }
    assert_eq!(proxy.healthy(&addrs[victim]), Some(false));
    assert_eq!(proxy.healthy(&addrs[survivor]), Some(true));
    let failures = proxy
        .metric(
            "cluster_agent_proxy_upstream_connect_failures_total",
            &addrs[victim],
        )
        .unwrap();
    assert_ne!(failures, "0");
    // The transition is logged once, not once per connection.
    assert_eq!(
        proxy.log().matches("upstream marked down").count(),
        1,
        "{}",
        proxy.log()
    );
}

/// The upstream's host goes silent (its end of a veth link down: SYNs vanish, nothing is
/// refused): every new client is still served, by the other upstream; once the link is back
/// the probe finds the host again.
#[test]
fn silent_upstream_host_never_fails_a_new_connection() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    let rt = runtime();
    let link = match common::netns::Link::new(None) {
        Ok(link) => link,
        Err(e) => return eprintln!("skipped: no network namespace here ({e})"),
    };
    let far = EchoUpstream::start_on(&rt, link.listen(), "far");
    let near = EchoUpstream::start(&rt, unique_loopback().into(), "near");
    let addrs = [far.address(), near.address()];
    let proxy = ProxyProcess::start(&addrs, false, "0", &["--probe-interval", "200ms"]);
    eventually("both upstreams serve clients", DEADLINE, || {
        let served: BTreeSet<String> = (0..10).filter_map(|_| ask(proxy.listen).ok()).collect();
        (served.len() == 2).then_some(())
    });

    link.set_silent(true);
    for i in 0..20 {
        let got = ask(proxy.listen).unwrap_or_else(|e| {
            panic!(
                "connection {i} after the host went silent failed: {e}\n{}",
                proxy.log()
            )
        });
        assert_eq!(got, "near");
    }
    assert_eq!(proxy.healthy(&addrs[0]), Some(false));
    assert!(
        proxy.log().contains("connect timed out"),
        "the silent host should be marked down by a connect timeout\n{}",
        proxy.log()
    );

    link.set_silent(false);
    eventually("probe marks the host up again", DEADLINE, || {
        proxy.healthy(&addrs[0]).filter(|h| *h)
    });
    eventually("the host serves clients again", DEADLINE, || {
        (0..10)
            .filter_map(|_| ask(proxy.listen).ok())
            .any(|name| name == "far")
            .then_some(())
    });
}

#[test]
fn all_upstreams_down_then_one_back_is_found_by_the_probe() {
    let rt = runtime();
    let mut ups: Vec<EchoUpstream> = (0..2)
        .map(|i| EchoUpstream::start(&rt, unique_loopback().into(), &format!("up{i}")))
        .collect();
    let addrs: Vec<String> = ups.iter().map(EchoUpstream::address).collect();
    let proxy = ProxyProcess::start(&addrs, false, "0", &["--probe-interval", "200ms"]);
    assert!(ask(proxy.listen).is_ok());

    ups[0].kill(&rt);
    ups[1].kill(&rt);
    // Nothing accepts: the client connection is closed, and both are marked down.
    assert!(ask(proxy.listen).is_err());
    assert_eq!(proxy.healthy(&addrs[0]), Some(false));
    assert_eq!(proxy.healthy(&addrs[1]), Some(false));
    assert_eq!(
        proxy
            .try_metrics()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("cluster_agent_proxy_rejected_connections_total")),
        Some("cluster_agent_proxy_rejected_connections_total 1")
    );

    // Bring one back: with no client traffic at all, the active probe marks it up.
    ups[1].restart(&rt);
    eventually("probe marks the upstream up", DEADLINE, || {
        proxy.healthy(&addrs[1]).filter(|h| *h)
    });
    assert_eq!(proxy.healthy(&addrs[0]), Some(false));
    for _ in 0..5 {
        assert_eq!(ask(proxy.listen).unwrap(), "up1");
    }
}

#[test]
fn provider_file_changes_are_applied_when_watched() {
    let rt = runtime();
    let ups: Vec<EchoUpstream> = (0..2)
        .map(|i| EchoUpstream::start(&rt, unique_loopback().into(), &format!("up{i}")))
        .collect();
    let addrs: Vec<String> = ups.iter().map(EchoUpstream::address).collect();
    let proxy = ProxyProcess::start(&addrs[..1], true, "0", &[]);
    assert_eq!(ask(proxy.listen).unwrap(), "up0");

    std::fs::write(proxy.provider_path(), provider_yaml(&addrs[1..])).unwrap();
    eventually("the new provider list is used", DEADLINE, || {
        (ask(proxy.listen).ok()? == "up1").then_some(())
    });
    // An empty or broken provider file keeps the current list.
    std::fs::write(proxy.provider_path(), provider_yaml(&[])).unwrap();
    eventually("the empty list is noticed", DEADLINE, || {
        proxy
            .log()
            .contains("provider file lists no endpoints")
            .then_some(())
    });
    std::fs::write(proxy.provider_path(), "tcp: [\n").unwrap();
    eventually("the broken file is noticed", DEADLINE, || {
        proxy
            .log()
            .contains("keeping the current endpoints")
            .then_some(())
    });
    for _ in 0..5 {
        assert_eq!(ask(proxy.listen).unwrap(), "up1");
    }
}

#[test]
fn ipv6_loopback_upstream_through_the_library_entry_point() {
    use cluster_agent::format::traefik::Upstream;
    use cluster_agent::proxy::{Proxy, ProxyConfig, Settings};

    let rt = runtime();
    let up = EchoUpstream::start(&rt, "::1".parse().unwrap(), "v6");
    assert_eq!(up.address(), format!("[::1]:{}", up.addr.port()));
    let listen = SocketAddr::from((unique_loopback(), 0));
    let config = ProxyConfig {
        settings: Settings {
            traefik_config: PathBuf::from("unused"),
            kubeconfig: PathBuf::from("unused"),
            refresh_interval: None,
            listen: Some(listen),
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            stats_interval: None,
            metrics_listen: None,
        },
        listen,
        provider_file: PathBuf::from("unused"),
        watch: false,
        // The unbracketed form MicroK8s's Endpoints fallback wrote is understood too.
        upstreams: vec![Upstream::parse(&format!("::1:{}", up.addr.port())).unwrap()],
    };
    let proxy = rt.block_on(Proxy::bind(config)).unwrap();
    let addr = proxy.local_addr().unwrap();
    let pool = proxy.pool();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = rt.spawn(proxy.serve(async {
        let _ = stopped.await;
    }));
    for _ in 0..3 {
        assert_eq!(ask(addr).unwrap(), "v6");
    }
    let stats = pool.snapshot();
    assert_eq!(stats.upstreams[0].upstream.as_str(), up.address());
    assert_eq!(stats.upstreams[0].connections, 3);
    stop.send(()).unwrap();
    rt.block_on(served).unwrap();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

// ---------------------------------------------------------------------------------------
// Shutdown.

#[test]
fn sigterm_drains_open_connections_and_exits_0() {
    let rt = runtime();
    let up = EchoUpstream::start(&rt, unique_loopback().into(), "up0");
    let mut proxy = ProxyProcess::start(&[up.address()], false, "0", &["--drain-timeout", "60s"]);
    let mut open = TcpStream::connect(proxy.listen).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(open.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "up0\n");

    proxy.sigterm();
    eventually("new connections refused", DEADLINE, || {
        TcpStream::connect_timeout(&proxy.listen, Duration::from_secs(1))
            .is_err()
            .then_some(())
    });
    // The open connection still carries data both ways.
    open.write_all(b"still here\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "still here\n");
    assert!(proxy.child.as_mut().unwrap().try_wait().unwrap().is_none());

    drop(reader);
    drop(open);
    // Exits once the connection is gone, long before the 60 s drain timeout.
    let status = proxy.wait_exit();
    assert!(status.success(), "{status}\n{}", proxy.log());
    assert!(proxy.log().contains("stopped"), "{}", proxy.log());
}

#[test]
fn sighup_is_ignored() {
    let rt = runtime();
    let up = EchoUpstream::start(&rt, unique_loopback().into(), "up0");
    let mut proxy = ProxyProcess::start(&[up.address()], false, "0", &[]);
    nix::sys::signal::kill(proxy.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually("the hangup to be logged", DEADLINE, || {
        proxy.log().contains("SIGHUP ignored").then_some(())
    });
    assert!(proxy.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert_eq!(ask(proxy.listen).unwrap(), "up0");
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let rt = runtime();
    let up = EchoUpstream::start(&rt, unique_loopback().into(), "up0");
    let mut proxy = ProxyProcess::start(&[up.address()], false, "0", &["--drain-timeout", "200ms"]);
    let open = TcpStream::connect(proxy.listen).unwrap();
    let mut line = String::new();
    BufReader::new(open.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    proxy.sigterm();
    let status = proxy.wait_exit();
    assert!(status.success(), "{status}");
    assert!(
        proxy.log().contains("drain timeout reached"),
        "{}",
        proxy.log()
    );
    drop(open);
}

// ---------------------------------------------------------------------------------------
// Start-up errors.

#[test]
fn unusable_configuration_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let traefik = dir.path().join("traefik.yaml");
    let kubeconfig = dir.path().join("kubelet.config");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "apiserver-proxy",
            "--traefik-config",
            traefik.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_cli(&args, &[])
    };

    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("traefik.yaml"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(
        &traefik,
        "providers:\n  file:\n    filename: missing.yaml\n",
    )
    .unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("missing.yaml"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(dir.path().join("provider.yaml"), "tcp: [\n").unwrap();
    std::fs::write(
        &traefik,
        "entryPoints:\n  apiserver:\n    address: \":16443\"\n",
    )
    .unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("provider.yaml"),
        "{}",
        text(&out.stderr)
    );

    // A port already in use.
    let busy = std::net::TcpListener::bind((unique_loopback(), 0)).unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    std::fs::write(dir.path().join("provider.yaml"), provider_yaml(&[])).unwrap();
    let out = run(&["--listen", &busy_addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&busy_addr),
        "{}",
        text(&out.stderr)
    );

    // Go duration syntax, like MicroK8s: a bare number is a usage error.
    let out = run(&["--refresh-interval", "30"]);
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------
// Endpoint refresh through a fake API server.

struct Pki {
    ca: Authority,
    server: PemPair,
    client: PemPair,
}

impl Pki {
    fn new(ips: &[IpAddr]) -> Pki {
        let ca = Authority::generate("fake-cluster-ca").unwrap();
        let server = ca
            .issue(&LeafSpec {
                common_name: "kube-apiserver".into(),
                ips: ips.to_vec(),
                server: true,
                ..Default::default()
            })
            .unwrap();
        let client = ca
            .issue(&LeafSpec {
                common_name: "system:node:worker-1".into(),
                organization: Some("system:nodes".into()),
                client: true,
                ..Default::default()
            })
            .unwrap();
        Pki { ca, server, client }
    }

    /// A server config that requires a client certificate signed by the CA.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = cluster_agent::pki::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let certs = CertificateDer::pem_slice_iter(self.server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.server.key_pem.as_bytes()).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap(),
        )
    }

    fn write_kubeconfig(&self, path: &Path, server: &str) {
        let k = cluster_agent::format::kubeconfig::Kubeconfig::with_client_cert(
            server,
            self.ca.cert_pem(),
            "kubelet",
            &self.client.cert_pem,
            &self.client.key_pem,
        );
        std::fs::write(path, k.render()).unwrap();
    }

    fn https_client(&self) -> reqwest::blocking::Client {
        let identity = format!("{}{}", self.client.cert_pem, self.client.key_pem);
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.cert_pem().as_bytes()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
            // A new connection per request, so the proxy chooses an upstream every time.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }
}

/// What the fake API server answers; shared by every instance.
#[derive(Default)]
struct ApiState {
    slices: (u16, String),
    endpoints: (u16, String),
    slice_hits: u64,
    endpoint_hits: u64,
}

type Shared = Arc<Mutex<ApiState>>;

async fn slices(
    State(state): State<Shared>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, String) {
    if query.get("labelSelector").map(String::as_str)
        != Some("kubernetes.io/service-name=kubernetes")
    {
        return (StatusCode::BAD_REQUEST, "bad selector".into());
    }
    let mut s = state.lock().unwrap();
    s.slice_hits += 1;
    (
        StatusCode::from_u16(s.slices.0).unwrap(),
        s.slices.1.clone(),
    )
}

async fn endpoints(State(state): State<Shared>) -> (StatusCode, String) {
    let mut s = state.lock().unwrap();
    s.endpoint_hits += 1;
    (
        StatusCode::from_u16(s.endpoints.0).unwrap(),
        s.endpoints.1.clone(),
    )
}

/// Starts one fake API server instance on `ip` (port chosen by the system).
fn start_fake_api(rt: &Runtime, ip: Ipv4Addr, name: &str, pki: &Pki, state: Shared) -> SocketAddr {
    let listener = rt.block_on(tokio::net::TcpListener::bind((ip, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_string();
    let app = axum::Router::new()
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            get(slices),
        )
        .route(
            "/api/v1/namespaces/default/endpoints/kubernetes",
            get(endpoints),
        )
        .route("/whoami", get(move || async move { name }))
        .with_state(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    rt.spawn(cluster_agent::api::https::serve(
        listener,
        acceptor,
        app,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    addr
}

fn fixture(name: &str, a: SocketAddr, b: SocketAddr) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apiserver-proxy")
        .join(name);
    std::fs::read_to_string(path)
        .unwrap()
        .replace("@A_IP@", &a.ip().to_string())
        .replace("@A_PORT@", &a.port().to_string())
        .replace("@B_IP@", &b.ip().to_string())
        .replace("@B_PORT@", &b.port().to_string())
}

struct RefreshSetup {
    rt: Runtime,
    pki: Pki,
    state: Shared,
    a: SocketAddr,
    b: SocketAddr,
    proxy: ProxyProcess,
}

/// Two fake API servers A and B; the worker's provider.yaml lists only A; the kubeconfig points
/// at the proxy itself (as MicroK8s's kubelet.config does).
fn refresh_setup(initial: ApiState) -> RefreshSetup {
    let rt = runtime();
    let (proxy_ip, ip_a, ip_b) = (unique_loopback(), unique_loopback(), unique_loopback());
    let dir = tempfile::tempdir().unwrap();
    let state: Shared = Arc::new(Mutex::new(initial));
    // The API server certificate names the proxy's address: clients reach it through the proxy.
    let pki = Pki::new(&[proxy_ip.into(), ip_a.into(), ip_b.into()]);
    let a = start_fake_api(&rt, ip_a, "A", &pki, state.clone());
    let b = start_fake_api(&rt, ip_b, "B", &pki, state.clone());
    {
        let mut s = state.lock().unwrap();
        s.slices.1 = s
            .slices
            .1
            .replace("@FIXTURE@", &fixture("endpointslices.json", a, b));
        s.endpoints.1 = s
            .endpoints
            .1
            .replace("@FIXTURE@", &fixture("endpoints.json", a, b));
    }
    pki.write_kubeconfig(
        &dir.path().join("kubelet.config"),
        &format!("https://{proxy_ip}:16443"),
    );
    let proxy = ProxyProcess::start_in(
        dir,
        proxy_ip,
        &[a.to_string()],
        false,
        "300ms",
        &["--min-refresh-interval", "100ms"],
    );
    RefreshSetup {
        rt,
        pki,
        state,
        a,
        b,
        proxy,
    }
}

fn hits(state: &Shared) -> (u64, u64) {
    let s = state.lock().unwrap();
    (s.slice_hits, s.endpoint_hits)
}

#[test]
fn refresh_from_endpoint_slices_then_keeps_the_list_on_empty_or_failed_answers() {
    let setup = refresh_setup(ApiState {
        slices: (200, "@FIXTURE@".into()),
        endpoints: (500, "not used".into()),
        ..Default::default()
    });
    let RefreshSetup {
        pki,
        state,
        a,
        b,
        proxy,
        ..
    } = &setup;
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    let expected = provider_yaml(&want);

    eventually("provider.yaml lists A and B", DEADLINE, || {
        (std::fs::read_to_string(proxy.provider_path()).ok()? == expected).then_some(())
    });
    let mode = std::fs::metadata(proxy.provider_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    // Traffic now reaches B too (through the proxy, TLS passthrough, client cert checked).
    let client = pki.https_client();
    let url = format!("https://{}/whoami", proxy.listen);
    eventually("a connection served by B", DEADLINE, || {
        (client.get(&url).send().ok()?.text().ok()? == "B").then_some(())
    });
    assert_eq!(hits(state).1, 0, "no fallback while EndpointSlices work");

    // An empty answer keeps the previous list.
    state.lock().unwrap().slices = (200, r#"{"kind":"EndpointSliceList","items":[]}"#.into());
    let seen = hits(state).0;
    eventually("three more refreshes", DEADLINE, || {
        (hits(state).0 >= seen + 3).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(proxy.provider_path()).unwrap(),
        expected
    );

    // Failing APIs keep it too, and the failure is logged once, not per refresh.
    {
        let mut s = state.lock().unwrap();
        s.slices = (500, "boom".into());
        s.endpoints = (503, "boom".into());
    }
    let seen = hits(state);
    eventually("three more failed refreshes", DEADLINE, || {
        let now = hits(state);
        (now.0 >= seen.0 + 3 && now.1 >= seen.1 + 3).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(proxy.provider_path()).unwrap(),
        expected
    );
    let log = proxy.log();
    assert_eq!(
        log.matches("cannot refresh control plane endpoints")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("empty list of control plane endpoints").count(),
        1,
        "{log}"
    );
    assert!(client.get(&url).send().unwrap().status().is_success());
    let metrics = proxy.try_metrics().unwrap();
    assert!(
        metrics.contains("cluster_agent_proxy_endpoint_refreshes_total{result=\"updated\"} 1"),
        "{metrics}"
    );
}

#[test]
fn refresh_falls_back_to_endpoints() {
    let setup = refresh_setup(ApiState {
        slices: (404, r#"{"kind":"Status","code":404}"#.into()),
        endpoints: (200, "@FIXTURE@".into()),
        ..Default::default()
    });
    let RefreshSetup {
        state, a, b, proxy, ..
    } = &setup;
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    eventually("provider.yaml lists A and B", DEADLINE, || {
        (std::fs::read_to_string(proxy.provider_path()).ok()? == provider_yaml(&want)).then_some(())
    });
    let (slice_hits, endpoint_hits) = hits(state);
    assert!(slice_hits >= 1 && endpoint_hits >= 1);
    drop(setup.rt);
}
