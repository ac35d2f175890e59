//! Prometheus counters for `/metrics`: join attempts by result, tokens issued and consumed,
//! request latencies per route. Hand-rolled text format; no registry dependency.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    join_attempts: Mutex<BTreeMap<String, u64>>,
    tokens_issued: AtomicU64,
    tokens_consumed: AtomicU64,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    pub fn join_attempt(&self, result: &str) {
        if let Ok(mut m) = self.join_attempts.lock() {
            *m.entry(result.to_string()).or_default() += 1;
        }
    }

    pub fn token_issued(&self) {
        self.tokens_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn token_consumed(&self) {
        self.tokens_consumed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe(&self, route: &str, took: Duration) {
        let secs = took.as_secs_f64();
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(route.to_string()).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cluster_agent_join_attempts_total Join requests by result."
        );
        let _ = writeln!(out, "# TYPE cluster_agent_join_attempts_total counter");
        if let Ok(m) = self.join_attempts.lock() {
            for (result, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "cluster_agent_join_attempts_total{{result=\"{result}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP cluster_agent_tokens_issued_total Join tokens issued by add-node."
        );
        let _ = writeln!(out, "# TYPE cluster_agent_tokens_issued_total counter");
        let _ = writeln!(
            out,
            "cluster_agent_tokens_issued_total {}",
            self.tokens_issued.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP cluster_agent_tokens_consumed_total Tokens used by granted joins and certificate requests.");
        let _ = writeln!(out, "# TYPE cluster_agent_tokens_consumed_total counter");
        let _ = writeln!(
            out,
            "cluster_agent_tokens_consumed_total {}",
            self.tokens_consumed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cluster_agent_request_duration_seconds Request latency by route."
        );
        let _ = writeln!(
            out,
            "# TYPE cluster_agent_request_duration_seconds histogram"
        );
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "cluster_agent_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(out, "cluster_agent_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(
                    out,
                    "cluster_agent_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "cluster_agent_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.join_attempt("granted");
        m.join_attempt("invalid_token");
        m.join_attempt("invalid_token");
        m.token_issued();
        m.observe("/health", Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains("cluster_agent_join_attempts_total{result=\"invalid_token\"} 2"));
        assert!(text.contains("cluster_agent_tokens_issued_total 1"));
        assert!(text.contains(
            "cluster_agent_request_duration_seconds_bucket{route=\"/health\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("cluster_agent_request_duration_seconds_count{route=\"/health\"} 1"));
    }
}
