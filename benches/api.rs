//! API benchmark (prints figures; not a test): requests/s and p99 latency of `POST
//! v2.0/join` with an invalid token and of `GET /health` over TLS on loopback, the daemon's RSS
//! idle and under that load, and `add-node` wall time.
//!
//! Run: `cargo bench --bench api` (release build of the daemon).
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 16;
const RUN_FOR: Duration = Duration::from_secs(5);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap().to_string();
    let bind = "127.0.250.2:25000";
    let mut child = Command::new(common::BIN)
        .args([
            "daemon",
            "--state-dir",
            &state,
            "--bind",
            bind,
            "--auth-failure-limit",
            "1000000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca_path = dir.path().join("certs/ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        if let Ok(ca) = std::fs::read(&ca_path) {
            let client = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .build()
                .unwrap();
            let ok = rt
                .block_on(client.get(format!("https://{bind}/health")).send())
                .is_ok();
            if ok {
                break client;
            }
        }
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(1));
    println!("daemon RSS idle: {:.1} MiB", rss_kib(pid) as f64 / 1024.0);

    let client = Arc::new(client);
    for (name, method) in [
        ("GET /health", "health"),
        ("POST v2.0/join (invalid token)", "join"),
    ] {
        let (count, mut lat, peak) = rt.block_on(load(client.clone(), bind, method, pid));
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        println!(
            "{name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, RSS under load {:.1} MiB",
            count as f64 / RUN_FOR.as_secs_f64(),
            p(0.50).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3,
            peak as f64 / 1024.0
        );
    }

    let mut walls = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let out = common::cli_in(dir.path(), &["add-node", "--format", "token"]);
        assert!(out.status.success());
        walls.push(start.elapsed());
    }
    walls.sort();
    println!(
        "add-node wall: median {:.1} ms, max {:.1} ms (20 runs)",
        walls[10].as_secs_f64() * 1e3,
        walls[19].as_secs_f64() * 1e3
    );
    let _ = child.kill();
    let _ = child.wait();
}

async fn load(
    client: Arc<reqwest::Client>,
    bind: &str,
    what: &str,
    pid: u32,
) -> (usize, Vec<Duration>, u64) {
    let until = Instant::now() + RUN_FOR;
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let url = match what {
            "health" => format!("https://{bind}/health"),
            _ => format!("https://{bind}/cluster/api/v2.0/join"),
        };
        let join = what == "join";
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let start = Instant::now();
                let req = if join {
                    client.post(&url).body(r#"{"token":"not-a-valid-token-not-a-valid-token","hostname":"x","port":"25000"}"#)
                } else {
                    client.get(&url)
                };
                if let Ok(resp) = req.send().await {
                    let _ = resp.bytes().await;
                    lat.push(start.elapsed());
                }
            }
            lat
        }));
    }
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len(), all, peak)
}
