//! Rendering the proxy's figures: Prometheus text for `/metrics` and a one-line summary for
//! the log. Pure.

use std::fmt::Write;

use super::balancer::UpstreamStats;

/// Everything the proxy reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub upstreams: Vec<UpstreamStats>,
    /// Client connections closed because no upstream accepted.
    pub rejected: u64,
    /// Endpoint refreshes by outcome (`updated`, `unchanged`, `empty`, `failed`).
    pub refreshes: [(&'static str, u64); 4],
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Prometheus text exposition format.
pub fn render_prometheus(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per = |f: &dyn Fn(&UpstreamStats) -> String| -> Vec<(String, String)> {
        s.upstreams
            .iter()
            .map(|u| {
                (
                    format!("{{upstream=\"{}\"}}", label(u.upstream.as_str())),
                    f(u),
                )
            })
            .collect()
    };
    family(
        "cluster_agent_proxy_upstream_healthy",
        "gauge",
        "1 when the upstream accepts connections, 0 when it is marked down.",
        per(&|u| u8::from(u.healthy).to_string()),
    );
    family(
        "cluster_agent_proxy_upstream_active_connections",
        "gauge",
        "Client connections currently proxied to the upstream.",
        per(&|u| u.active.to_string()),
    );
    family(
        "cluster_agent_proxy_upstream_connections_total",
        "counter",
        "Client connections proxied to the upstream.",
        per(&|u| u.connections.to_string()),
    );
    family(
        "cluster_agent_proxy_upstream_connect_failures_total",
        "counter",
        "Failed connection attempts (clients and probes).",
        per(&|u| u.failures.to_string()),
    );
    family(
        "cluster_agent_proxy_upstream_dial_seconds",
        "gauge",
        "Lowest of the last 8 TCP connect times (NaN before the first connection).",
        per(&|u| match u.dial_latency {
            Some(d) => format!("{:.6}", d.as_secs_f64()),
            None => "NaN".into(),
        }),
    );
    let bytes: Vec<(String, String)> = s
        .upstreams
        .iter()
        .flat_map(|u| {
            let name = label(u.upstream.as_str());
            [
                (
                    format!("{{upstream=\"{name}\",direction=\"to_upstream\"}}"),
                    u.bytes_to_upstream.to_string(),
                ),
                (
                    format!("{{upstream=\"{name}\",direction=\"from_upstream\"}}"),
                    u.bytes_from_upstream.to_string(),
                ),
            ]
        })
        .collect();
    family(
        "cluster_agent_proxy_upstream_bytes_total",
        "counter",
        "Bytes copied on closed connections.",
        bytes,
    );
    family(
        "cluster_agent_proxy_rejected_connections_total",
        "counter",
        "Client connections closed because no upstream accepted a connection.",
        vec![(String::new(), s.rejected.to_string())],
    );
    family(
        "cluster_agent_proxy_endpoint_refreshes_total",
        "counter",
        "Control-plane endpoint refreshes by result.",
        s.refreshes
            .iter()
            .map(|(result, n)| (format!("{{result=\"{result}\"}}"), n.to_string()))
            .collect(),
    );
    out
}

/// One log line: `10.0.0.4:16443 up active=2 total=40 failures=0 dial=0.41ms; ...`.
pub fn stats_line(s: &Snapshot) -> String {
    let mut parts: Vec<String> = s
        .upstreams
        .iter()
        .map(|u| {
            let dial = match u.dial_latency {
                Some(d) => format!("{:.2}ms", d.as_secs_f64() * 1000.0),
                None => "-".into(),
            };
            format!(
                "{} {} active={} total={} failures={} dial={dial}",
                u.upstream,
                if u.healthy { "up" } else { "down" },
                u.active,
                u.connections,
                u.failures
            )
        })
        .collect();
    if parts.is_empty() {
        parts.push("no upstreams".into());
    }
    format!("{}; rejected={}", parts.join("; "), s.rejected)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::format::traefik::Upstream;

    fn snapshot() -> Snapshot {
        Snapshot {
            upstreams: vec![
                UpstreamStats {
                    upstream: Upstream::parse("10.0.0.4:16443").unwrap(),
                    healthy: true,
                    active: 2,
                    connections: 40,
                    failures: 0,
                    dial_latency: Some(Duration::from_micros(410)),
                    bytes_to_upstream: 5,
                    bytes_from_upstream: 7,
                },
                UpstreamStats {
                    upstream: Upstream::parse("[fd00::1]:16443").unwrap(),
                    healthy: false,
                    active: 0,
                    connections: 0,
                    failures: 3,
                    dial_latency: None,
                    bytes_to_upstream: 0,
                    bytes_from_upstream: 0,
                },
            ],
            rejected: 1,
            refreshes: [
                ("updated", 1),
                ("unchanged", 2),
                ("empty", 0),
                ("failed", 3),
            ],
        }
    }

    #[test]
    fn prometheus_lines() {
        let text = render_prometheus(&snapshot());
        for line in [
            "# TYPE cluster_agent_proxy_upstream_healthy gauge",
            "cluster_agent_proxy_upstream_healthy{upstream=\"10.0.0.4:16443\"} 1",
            "cluster_agent_proxy_upstream_healthy{upstream=\"[fd00::1]:16443\"} 0",
            "cluster_agent_proxy_upstream_active_connections{upstream=\"10.0.0.4:16443\"} 2",
            "cluster_agent_proxy_upstream_connections_total{upstream=\"10.0.0.4:16443\"} 40",
            "cluster_agent_proxy_upstream_connect_failures_total{upstream=\"[fd00::1]:16443\"} 3",
            "cluster_agent_proxy_upstream_dial_seconds{upstream=\"10.0.0.4:16443\"} 0.000410",
            "cluster_agent_proxy_upstream_dial_seconds{upstream=\"[fd00::1]:16443\"} NaN",
            "cluster_agent_proxy_upstream_bytes_total{upstream=\"10.0.0.4:16443\",direction=\"from_upstream\"} 7",
            "cluster_agent_proxy_rejected_connections_total 1",
            "cluster_agent_proxy_endpoint_refreshes_total{result=\"failed\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn stats_line_summarises() {
        assert_eq!(
            stats_line(&snapshot()),
            "10.0.0.4:16443 up active=2 total=40 failures=0 dial=0.41ms; \
             [fd00::1]:16443 down active=0 total=0 failures=3 dial=-; rejected=1"
        );
        assert_eq!(stats_line(&Snapshot::default()), "no upstreams; rejected=0");
    }
}
