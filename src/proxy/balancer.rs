//! Upstream selection and health, with no I/O: the caller reports dial results and asks for
//! the order in which to try upstreams for the next client connection.
//!
//! Policy:
//! - An upstream is marked down by one failed dial (passive check) and up again by one
//!   successful dial (a client's last-resort attempt or the active probe).
//! - A client tries the healthy upstreams first, then the down ones (longest-down first), so
//!   it never sees an error while any upstream accepts connections.
//! - Among healthy upstreams the first choice is the one with the lowest recent connect latency
//!   (the lowest of its last [`WINDOW`] connect times, so a one-off scheduling spike does not
//!   count but a sustained slowdown does); upstreams within `TIE_RATIO × best + TIE_SLACK` tie and are taken in turn
//!   (round-robin). An upstream without a recent sample (new, or not chosen for
//!   `STALE_AFTER`) counts as a tie, so slower upstreams get re-measured by real traffic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::format::traefik::Upstream;

/// Latencies up to this multiple of the best one tie.
pub const TIE_RATIO: f64 = 1.5;
/// Absolute slack added to the tie band (loopback and LAN jitter).
pub const TIE_SLACK: Duration = Duration::from_millis(1);
/// A latency sample older than this no longer excludes an upstream from the tie band.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// Connect times remembered per upstream.
pub const WINDOW: usize = 8;

#[derive(Debug, Clone)]
struct Entry {
    upstream: Upstream,
    healthy: bool,
    samples: VecDeque<Duration>,
    sampled_at: Option<Instant>,
    down_since: Option<Instant>,
    active: u64,
    connections: u64,
    failures: u64,
    bytes_to_upstream: u64,
    bytes_from_upstream: u64,
}

impl Entry {
    fn new(upstream: Upstream) -> Entry {
        Entry {
            upstream,
            healthy: true,
            samples: VecDeque::with_capacity(WINDOW),
            sampled_at: None,
            down_since: None,
            active: 0,
            connections: 0,
            failures: 0,
            bytes_to_upstream: 0,
            bytes_from_upstream: 0,
        }
    }

    fn latency(&self) -> Option<Duration> {
        self.samples.iter().min().copied()
    }

    fn fresh_latency(&self, now: Instant) -> Option<Duration> {
        match (self.latency(), self.sampled_at) {
            (Some(l), Some(at)) if now.saturating_duration_since(at) < STALE_AFTER => Some(l),
            _ => None,
        }
    }
}

/// A health transition worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

/// Whether a dial was made for a client or by the prober.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialKind {
    Client,
    Probe,
}

/// Per-upstream figures for `/metrics` and the stats line.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamStats {
    pub upstream: Upstream,
    pub healthy: bool,
    pub active: u64,
    pub connections: u64,
    pub failures: u64,
    pub dial_latency: Option<Duration>,
    pub bytes_to_upstream: u64,
    pub bytes_from_upstream: u64,
}

#[derive(Debug, Default)]
pub struct Balancer {
    entries: Vec<Entry>,
    next: usize,
}

impl Balancer {
    pub fn new(upstreams: &[Upstream]) -> Balancer {
        let mut b = Balancer::default();
        b.set_upstreams(upstreams);
        b
    }

    /// Replaces the upstream list, keeping the state of upstreams still present. Returns
    /// whether the list changed.
    pub fn set_upstreams(&mut self, upstreams: &[Upstream]) -> bool {
        let mut list = upstreams.to_vec();
        list.sort();
        list.dedup();
        if list == self.upstreams() {
            return false;
        }
        let mut old = std::mem::take(&mut self.entries);
        self.entries = list
            .into_iter()
            .map(|u| match old.iter().position(|e| e.upstream == u) {
                Some(i) => old.swap_remove(i),
                None => Entry::new(u),
            })
            .collect();
        true
    }

    pub fn upstreams(&self) -> Vec<Upstream> {
        self.entries.iter().map(|e| e.upstream.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The order in which to try upstreams for one client connection (see the module doc).
    pub fn plan(&mut self, now: Instant) -> Vec<Upstream> {
        let healthy: Vec<&Entry> = self.entries.iter().filter(|e| e.healthy).collect();
        let best = healthy.iter().filter_map(|e| e.fresh_latency(now)).min();
        let band = best.map(|b| b.mul_f64(TIE_RATIO) + TIE_SLACK);
        let (ties, mut slower): (Vec<&Entry>, Vec<&Entry>) =
            healthy
                .iter()
                .partition(|e| match (e.fresh_latency(now), band) {
                    (Some(l), Some(band)) => l <= band,
                    _ => true,
                });
        slower.sort_by_key(|e| e.latency());
        let mut down: Vec<&Entry> = self.entries.iter().filter(|e| !e.healthy).collect();
        down.sort_by_key(|e| e.down_since);

        let mut order = Vec::with_capacity(self.entries.len());
        if !ties.is_empty() {
            let start = self.next % ties.len();
            order.extend(
                ties[start..]
                    .iter()
                    .chain(&ties[..start])
                    .map(|e| e.upstream.clone()),
            );
        }
        order.extend(slower.iter().map(|e| e.upstream.clone()));
        order.extend(down.iter().map(|e| e.upstream.clone()));
        if !ties.is_empty() {
            self.next = self.next.wrapping_add(1);
        }
        order
    }

    /// Records a successful dial. Returns `Some(Health::Up)` when the upstream was down.
    pub fn dial_ok(
        &mut self,
        upstream: &Upstream,
        latency: Duration,
        kind: DialKind,
        now: Instant,
    ) -> Option<Health> {
        let entry = self.entry(upstream)?;
        if entry.samples.len() == WINDOW {
            entry.samples.pop_front();
        }
        entry.samples.push_back(latency);
        entry.sampled_at = Some(now);
        if kind == DialKind::Client {
            entry.active += 1;
            entry.connections += 1;
        }
        let was_down = !entry.healthy;
        entry.healthy = true;
        entry.down_since = None;
        was_down.then_some(Health::Up)
    }

    /// Records a failed dial. Returns `Some(Health::Down)` when the upstream was healthy.
    pub fn dial_failed(&mut self, upstream: &Upstream, now: Instant) -> Option<Health> {
        let entry = self.entry(upstream)?;
        entry.failures += 1;
        let was_up = entry.healthy;
        entry.healthy = false;
        if was_up {
            entry.down_since = Some(now);
        }
        was_up.then_some(Health::Down)
    }

    /// Records the end of a client connection that `dial_ok(.., Client, ..)` counted.
    pub fn closed(&mut self, upstream: &Upstream, to_upstream: u64, from_upstream: u64) {
        if let Some(entry) = self.entry(upstream) {
            entry.active = entry.active.saturating_sub(1);
            entry.bytes_to_upstream += to_upstream;
            entry.bytes_from_upstream += from_upstream;
        }
    }

    /// How many upstreams are currently considered healthy (they lead every plan).
    pub fn healthy_count(&self) -> usize {
        self.entries.iter().filter(|e| e.healthy).count()
    }

    /// Upstreams the active prober should test.
    pub fn probe_targets(&self) -> Vec<Upstream> {
        self.entries
            .iter()
            .filter(|e| !e.healthy)
            .map(|e| e.upstream.clone())
            .collect()
    }

    pub fn stats(&self) -> Vec<UpstreamStats> {
        self.entries
            .iter()
            .map(|e| UpstreamStats {
                upstream: e.upstream.clone(),
                healthy: e.healthy,
                active: e.active,
                connections: e.connections,
                failures: e.failures,
                dial_latency: e.latency(),
                bytes_to_upstream: e.bytes_to_upstream,
                bytes_from_upstream: e.bytes_from_upstream,
            })
            .collect()
    }

    fn entry(&mut self, upstream: &Upstream) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| &e.upstream == upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        Upstream::parse(s).unwrap()
    }

    fn three() -> (Balancer, Upstream, Upstream, Upstream) {
        let (a, b, c) = (up("10.0.0.1:1"), up("10.0.0.2:1"), up("10.0.0.3:1"));
        (Balancer::new(&[c.clone(), a.clone(), b.clone()]), a, b, c)
    }

    fn firsts(b: &mut Balancer, n: usize, now: Instant) -> Vec<Upstream> {
        (0..n).map(|_| b.plan(now)[0].clone()).collect()
    }

    #[test]
    fn unknown_latencies_round_robin_and_plan_covers_everyone() {
        let (mut b, a, bb, c) = three();
        let now = Instant::now();
        assert_eq!(
            firsts(&mut b, 4, now),
            vec![a.clone(), bb.clone(), c.clone(), a.clone()]
        );
        let plan = b.plan(now);
        assert_eq!(plan.len(), 3);
        assert_eq!(plan, vec![bb, c, a]);
    }

    #[test]
    fn lowest_latency_wins_and_ties_alternate() {
        let (mut b, a, bb, c) = three();
        let now = Instant::now();
        b.dial_ok(&a, Duration::from_millis(10), DialKind::Probe, now);
        b.dial_ok(&bb, Duration::from_millis(50), DialKind::Probe, now);
        b.dial_ok(&c, Duration::from_micros(10_500), DialKind::Probe, now);
        // a and c tie (10.5 ms <= 1.5 × 10 ms + 1 ms); b is slower and comes after them.
        let picks = firsts(&mut b, 4, now);
        assert_eq!(picks, vec![a.clone(), c.clone(), a.clone(), c.clone()]);
        assert_eq!(b.plan(now)[2], bb);
    }

    #[test]
    fn one_spike_does_not_exclude_but_a_sustained_slowdown_does() {
        let (mut b, a, bb, _) = three();
        b.set_upstreams(&[a.clone(), bb.clone()]);
        let now = Instant::now();
        let ms = Duration::from_millis;
        for _ in 0..3 {
            b.dial_ok(&a, ms(1), DialKind::Probe, now);
            b.dial_ok(&bb, ms(1), DialKind::Probe, now);
        }
        b.dial_ok(&bb, ms(9), DialKind::Probe, now);
        let picks = firsts(&mut b, 4, now);
        assert!(picks.contains(&a) && picks.contains(&bb), "{picks:?}");
        for _ in 0..WINDOW {
            b.dial_ok(&bb, ms(9), DialKind::Probe, now);
        }
        assert!(firsts(&mut b, 4, now).iter().all(|u| u == &a));
    }

    #[test]
    fn stale_sample_counts_as_a_tie_again() {
        let (mut b, a, bb, c) = three();
        let t0 = Instant::now();
        b.dial_ok(&a, Duration::from_millis(1), DialKind::Probe, t0);
        b.dial_ok(&bb, Duration::from_millis(50), DialKind::Probe, t0);
        b.dial_ok(&c, Duration::from_millis(50), DialKind::Probe, t0);
        assert!(firsts(&mut b, 5, t0).iter().all(|u| u == &a));
        let later = t0 + STALE_AFTER + Duration::from_secs(1);
        // Only a is refreshed; b and c have stale samples and join the rotation.
        b.dial_ok(&a, Duration::from_millis(1), DialKind::Probe, later);
        let picks = firsts(&mut b, 3, later);
        assert!(picks.contains(&bb) && picks.contains(&c), "{picks:?}");
    }

    #[test]
    fn failed_dial_marks_down_once_and_moves_to_the_end() {
        let (mut b, a, bb, c) = three();
        let now = Instant::now();
        assert_eq!(b.dial_failed(&bb, now), Some(Health::Down));
        assert_eq!(b.dial_failed(&bb, now), None);
        for _ in 0..6 {
            let plan = b.plan(now);
            assert_eq!(plan.last(), Some(&bb));
            assert_ne!(plan[0], bb);
        }
        assert_eq!(b.probe_targets(), vec![bb.clone()]);
        assert_eq!(
            b.dial_ok(&bb, Duration::from_millis(1), DialKind::Probe, now),
            Some(Health::Up)
        );
        assert!(b.probe_targets().is_empty());
        let picks = firsts(&mut b, 3, now);
        assert!(picks.contains(&a) && picks.contains(&bb) && picks.contains(&c));
    }

    #[test]
    fn all_down_still_plans_every_upstream_longest_down_first() {
        let (mut b, a, bb, c) = three();
        let t0 = Instant::now();
        b.dial_failed(&c, t0);
        b.dial_failed(&a, t0 + Duration::from_secs(1));
        b.dial_failed(&bb, t0 + Duration::from_secs(2));
        assert_eq!(b.plan(t0 + Duration::from_secs(3)), vec![c, a, bb]);
    }

    #[test]
    fn counters_follow_client_connections_only() {
        let (mut b, a, _, _) = three();
        let now = Instant::now();
        b.dial_ok(&a, Duration::from_millis(2), DialKind::Client, now);
        b.dial_ok(&a, Duration::from_millis(4), DialKind::Client, now);
        b.dial_ok(&a, Duration::from_millis(2), DialKind::Probe, now);
        b.closed(&a, 10, 20);
        b.dial_failed(&a, now);
        let s = &b.stats()[0];
        assert_eq!(s.upstream, a);
        assert_eq!((s.active, s.connections, s.failures), (1, 2, 1));
        assert_eq!((s.bytes_to_upstream, s.bytes_from_upstream), (10, 20));
        assert!(!s.healthy);
        assert_eq!(s.dial_latency, Some(Duration::from_millis(2)));
    }

    #[test]
    fn set_upstreams_keeps_known_state() {
        let (mut b, a, bb, c) = three();
        let now = Instant::now();
        b.dial_failed(&a, now);
        let d = up("10.0.0.4:1");
        assert!(!b.set_upstreams(&[c.clone(), bb.clone(), a.clone()]));
        assert!(b.set_upstreams(&[d.clone(), a.clone(), a.clone()]));
        assert_eq!(b.upstreams(), vec![a.clone(), d.clone()]);
        let stats = b.stats();
        assert!(!stats[0].healthy && stats[0].failures == 1);
        assert!(stats[1].healthy && stats[1].failures == 0);
        // Results for upstreams no longer listed are ignored.
        assert_eq!(b.dial_failed(&bb, now), None);
        assert!(b.set_upstreams(&[]));
        assert!(b.is_empty());
        assert!(b.plan(now).is_empty());
    }
}
