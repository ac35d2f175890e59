//! Per-source limit on failed authentication attempts: after `max_failures` failures inside
//! `window`, the source gets HTTP 429 until its oldest failure leaves the window. Successful
//! requests never count.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at most; beyond that the stalest are dropped (a flood of spoofed sources
/// cannot grow memory without bound).
const MAX_SOURCES: usize = 10_000;

pub struct RateLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        RateLimiter {
            max_failures: max_failures.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(mut map) = self.failures.lock() else {
            return false;
        };
        let Some(q) = map.get_mut(&ip) else {
            return false;
        };
        prune(q, now, self.window);
        let blocked = q.len() >= self.max_failures;
        if q.is_empty() {
            map.remove(&ip);
        }
        blocked
    }

    /// Records a failure; returns true when this failure makes the source blocked (so the
    /// caller logs once per episode, not once per attempt).
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(mut map) = self.failures.lock() else {
            return false;
        };
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            let window = self.window;
            map.retain(|_, q| {
                prune(q, now, window);
                !q.is_empty()
            });
            if map.len() >= MAX_SOURCES {
                return false;
            }
        }
        let q = map.entry(ip).or_default();
        prune(q, now, self.window);
        q.push_back(now);
        q.len() == self.max_failures
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_n_failures_and_expires() {
        let rl = RateLimiter::new(3, Duration::from_secs(10));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(!rl.record_failure(ip, t0));
        assert!(!rl.record_failure(ip, t0));
        assert!(!rl.is_blocked(ip, t0));
        assert!(rl.record_failure(ip, t0 + Duration::from_secs(1)));
        assert!(rl.is_blocked(ip, t0 + Duration::from_secs(2)));
        assert!(!rl.is_blocked(other, t0));
        assert!(!rl.is_blocked(ip, t0 + Duration::from_secs(10)));
    }
}
