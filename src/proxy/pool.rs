//! The shared upstream pool: the [`Balancer`] behind a lock, plus the dialing that feeds it
//! (client connections with fail-over, and the active probe of upstreams marked down).
//!
//! Invariant: the lock is never held across an `.await`; dial results are reported after the
//! dial completes.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::balancer::{Balancer, DialKind, Health};
use super::metrics::Snapshot;
use crate::format::traefik::Upstream;

/// The connect timeout of the last upstream left to try for a client: long enough for two
/// SYN retransmissions, so one lost packet does not fail a client when there is no
/// alternative.
pub const LAST_RESORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(7);

const REFRESH_LABELS: [&str; 4] = ["updated", "unchanged", "empty", "failed"];

/// Cheap-to-clone handle on the upstreams and their health.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    balancer: Mutex<Balancer>,
    connect_timeout: Duration,
    rejected: AtomicU64,
    refreshes: [AtomicU64; 4],
}

impl Pool {
    pub fn new(upstreams: &[Upstream], connect_timeout: Duration) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                balancer: Mutex::new(Balancer::new(upstreams)),
                connect_timeout,
                rejected: AtomicU64::new(0),
                refreshes: Default::default(),
            }),
        }
    }

    fn balancer(&self) -> MutexGuard<'_, Balancer> {
        // The balancer's state stays consistent even if a holder panicked.
        self.inner
            .balancer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn upstreams(&self) -> Vec<Upstream> {
        self.balancer().upstreams()
    }

    /// Replaces the upstream list (established connections are not touched).
    pub fn set_upstreams(&self, upstreams: &[Upstream]) -> bool {
        self.balancer().set_upstreams(upstreams)
    }

    /// Connects to an upstream for a client: tries them in the balancer's order until one
    /// accepts. `None` when none did (the caller closes the client connection).
    pub async fn connect(&self) -> Option<(TcpStream, Upstream)> {
        let (plan, healthy) = {
            let mut balancer = self.balancer();
            (balancer.plan(Instant::now()), balancer.healthy_count())
        };
        let timeouts = connect_timeouts(plan.len(), healthy, self.inner.connect_timeout);
        for (upstream, timeout) in plan.into_iter().zip(timeouts) {
            let started = Instant::now();
            match dial(&upstream, timeout).await {
                Ok(stream) => {
                    let change = self.balancer().dial_ok(
                        &upstream,
                        started.elapsed(),
                        DialKind::Client,
                        Instant::now(),
                    );
                    log_change(&upstream, change, None);
                    return Some((stream, upstream));
                }
                Err(e) => {
                    let change = self.balancer().dial_failed(&upstream, Instant::now());
                    log_change(&upstream, change, Some(&e));
                }
            }
        }
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Reports the end of a connection returned by [`Pool::connect`].
    pub fn closed(&self, upstream: &Upstream, to_upstream: u64, from_upstream: u64) {
        self.balancer().closed(upstream, to_upstream, from_upstream);
    }

    /// Test-dials every upstream marked down, concurrently; a success marks it up again.
    pub async fn probe(&self) {
        let targets = self.balancer().probe_targets();
        let mut dials = tokio::task::JoinSet::new();
        for upstream in targets {
            let timeout = self.inner.connect_timeout;
            dials.spawn(async move {
                let started = Instant::now();
                let result = dial(&upstream, timeout).await.map(|_| started.elapsed());
                (upstream, result)
            });
        }
        while let Some(joined) = dials.join_next().await {
            let Ok((upstream, result)) = joined else {
                continue;
            };
            let now = Instant::now();
            let change = match &result {
                Ok(latency) => self
                    .balancer()
                    .dial_ok(&upstream, *latency, DialKind::Probe, now),
                Err(_) => self.balancer().dial_failed(&upstream, now),
            };
            log_change(&upstream, change, result.as_ref().err());
        }
    }

    /// Probes every `interval`, forever.
    pub async fn probe_every(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.probe().await;
        }
    }

    pub fn count_refresh(&self, label: &str) {
        if let Some(i) = REFRESH_LABELS.iter().position(|l| *l == label) {
            self.inner.refreshes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let upstreams = self.balancer().stats();
        let mut refreshes = [("", 0); 4];
        for (i, label) in REFRESH_LABELS.iter().enumerate() {
            refreshes[i] = (*label, self.inner.refreshes[i].load(Ordering::Relaxed));
        }
        Snapshot {
            upstreams,
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            refreshes,
        }
    }
}

fn log_change(upstream: &Upstream, change: Option<Health>, error: Option<&io::Error>) {
    match change {
        Some(Health::Down) => tracing::warn!(
            upstream = %upstream,
            error = error.map(|e| e.to_string()).unwrap_or_default(),
            "upstream marked down"
        ),
        Some(Health::Up) => tracing::info!(upstream = %upstream, "upstream is back up"),
        None => {}
    }
}

/// The connect timeout of each entry of a plan whose first `healthy` entries are the healthy
/// upstreams: the long last-resort timeout goes to the last healthy one (a live upstream
/// whose SYN was lost must not be given up for upstreams already known to be down), or to
/// the last entry when none is healthy.
fn connect_timeouts(len: usize, healthy: usize, default: Duration) -> Vec<Duration> {
    let patient = if healthy > 0 {
        healthy.min(len) - 1
    } else {
        len.saturating_sub(1)
    };
    (0..len)
        .map(|i| {
            if i == patient {
                default.max(LAST_RESORT_CONNECT_TIMEOUT)
            } else {
                default
            }
        })
        .collect()
}

/// One TCP connect with a deadline. IP literals need no DNS; names are resolved each time.
pub async fn dial(upstream: &Upstream, timeout: Duration) -> io::Result<TcpStream> {
    let connect = async {
        match upstream.socket_addr() {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(upstream.as_str()).await,
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_healthy_upstream_gets_the_patient_timeout() {
        let short = Duration::from_millis(500);
        let long = LAST_RESORT_CONNECT_TIMEOUT;
        // A healthy, B down: A is the one worth waiting for.
        assert_eq!(connect_timeouts(2, 1, short), vec![long, short]);
        assert_eq!(connect_timeouts(3, 2, short), vec![short, long, short]);
        assert_eq!(connect_timeouts(3, 3, short), vec![short, short, long]);
        // All down: the last one tried waits.
        assert_eq!(connect_timeouts(2, 0, short), vec![short, long]);
        assert_eq!(connect_timeouts(0, 0, short), Vec::<Duration>::new());
        // A configured timeout above the last-resort one is kept.
        let huge = Duration::from_secs(30);
        assert_eq!(connect_timeouts(1, 1, huge), vec![huge]);
    }
}
