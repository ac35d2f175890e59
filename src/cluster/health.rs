//! Whether this node's member can do its job, measured rather than assumed: its backend
//! directory takes a synced write and has room for raft's next segments, and the cluster
//! still lists it. `/health` answers 503 with the reason while it cannot; the reason is
//! logged once when it appears and once when it clears.
//!
//! A member that cannot write tells the roles policy through its election weight
//! ([`CANNOT_WRITE_WEIGHT`]), the one value every member reports about itself: the leader's
//! policy then never promotes it and replaces it as a voter when a healthy member can take
//! the vote.

use std::sync::RwLock;
use std::time::Duration;

use crate::cluster::node::Node;
pub use crate::cluster::roles::policy::CANNOT_WRITE_WEIGHT;

/// Room raft needs to open its next segments (it preallocates them 8 MiB at a time).
pub const MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// Size of the synced probe write.
const PROBE_BYTES: usize = 64 * 1024;

/// How often the health is measured.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long the membership may take to say whether it lists this member.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(2);

/// Why this node is degraded, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degraded {
    /// The backend directory cannot take a write, or is about to run out of room.
    CannotWrite(String),
    /// The cluster answers but no longer lists this node's member.
    NotAMember,
}

impl std::fmt::Display for Degraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Degraded::CannotWrite(why) => write!(f, "the datastore member cannot write: {why}"),
            Degraded::NotAMember => f.write_str(
                "the cluster does not list this node's datastore member (removed, or a leave did not finish)",
            ),
        }
    }
}

/// The last measurement, shared by the checker and `/health`.
#[derive(Debug, Default)]
pub struct LocalHealth {
    degraded: RwLock<Option<Degraded>>,
    /// A write failed since this process started: raft does not recover from a failed
    /// write without a restart (its storage stays in error), so neither does this health.
    write_failed: std::sync::atomic::AtomicBool,
}

impl LocalHealth {
    pub fn degraded(&self) -> Option<Degraded> {
        self.degraded.read().ok().and_then(|d| d.clone())
    }

    /// Records a measurement; logs only a change.
    fn set(&self, now: Option<Degraded>) {
        let Ok(mut slot) = self.degraded.write() else {
            return;
        };
        if *slot != now {
            match &now {
                Some(why) => tracing::warn!(reason = %why, "degraded"),
                None => tracing::info!("healthy again"),
            }
            *slot = now;
        }
    }
}

/// Can the backend directory take a write with room to spare? Blocking.
pub fn disk_problem(backend: &std::path::Path, min_free: u64) -> Option<String> {
    match crate::state::available_bytes(backend) {
        Ok(free) if free < min_free => {
            return Some(format!(
                "{} has {} KiB free, raft needs {} KiB for its next segments",
                backend.display(),
                free / 1024,
                min_free / 1024
            ))
        }
        Ok(_) => {}
        Err(e) => return Some(e.to_string()),
    }
    crate::state::probe_write(backend, PROBE_BYTES)
        .err()
        .map(|e| e.to_string())
}

/// One measurement of this node: nothing to measure on a worker or without a member.
pub async fn measure(node: &Node) -> Option<Degraded> {
    if node.state().has_marker("clustered.lock") {
        return None;
    }
    let live = node.own_member()?;
    let backend = node.state().layout().backend_dir();
    let disk = tokio::task::spawn_blocking(move || disk_problem(&backend, MIN_FREE_BYTES))
        .await
        .ok()
        .flatten();
    let health = node.health();
    if disk.is_some() {
        health
            .write_failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let disk = disk.or_else(|| {
        health
            .write_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| {
                "its disk failed it earlier and raft does not recover from a failed write: restart the member (this daemon; inside the snap, k8s-dqlite and this daemon) once the disk has room".to_string()
            })
    });
    // Say so to the cluster (again each time: the member forgets its weight on restart).
    let weight = if disk.is_some() {
        CANNOT_WRITE_WEIGHT
    } else {
        0
    };
    if disk.is_some() || node.health().degraded().is_some() {
        let _ = tokio::time::timeout(
            MEMBERSHIP_WAIT,
            live.client.weight(&live.own_address, weight),
        )
        .await;
    }
    if let Some(why) = disk {
        return Some(Degraded::CannotWrite(why));
    }
    match tokio::time::timeout(MEMBERSHIP_WAIT, live.client.cluster()).await {
        Ok(Ok(nodes)) if !nodes.is_empty() && !nodes.iter().any(|n| n.id == live.own_id) => {
            Some(Degraded::NotAMember)
        }
        // No answer says nothing about this member (status reports the datastore).
        _ => None,
    }
}

/// Measures every [`CHECK_INTERVAL`] until `stop`.
pub async fn watch(node: Node, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = measure(&node).await;
        node.health().set(now);
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_directory_with_room_is_fine_and_a_full_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_problem(dir.path(), 0), None);
        let why = disk_problem(dir.path(), u64::MAX).unwrap();
        assert!(why.contains("KiB free"), "{why}");
        let gone = dir.path().join("missing");
        assert!(disk_problem(&gone, 0).is_some());
    }

    #[test]
    fn a_change_is_recorded_and_read_back() {
        let h = LocalHealth::default();
        assert_eq!(h.degraded(), None);
        h.set(Some(Degraded::NotAMember));
        assert_eq!(h.degraded(), Some(Degraded::NotAMember));
        h.set(None);
        assert_eq!(h.degraded(), None);
    }
}
