//! Honest health: a member whose disk is full says so (`/health` 503 with the reason) and is
//! never promoted; once it has room again it is healthy and takes the vote it was kept from.
//! Needs root (a small tmpfs as the node's state directory).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn health(node: &Node) -> (u16, String) {
    let resp = https_client(&node.state)
        .get(format!("https://{}/health", node.bind()))
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

fn role_of(node: &Node, watcher: &Node) -> Option<String> {
    let s = watcher.status_json()?;
    members(&s)
        .into_iter()
        .find(|(a, _, _)| *a == dqlite_addr(node))
        .map(|(_, r, _)| r)
}

#[test]
fn a_member_with_a_full_disk_is_degraded_and_never_promoted() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(dir.path(), "64m");
    let mut d = Node::start_at(unique_loopback(), dir);
    d.wait_healthy();
    let [a, _b, mut c] = cluster.into_nodes();
    join(&a, &d, &[]);
    eventually("d is a stand-by", Duration::from_secs(60), || {
        (role_of(&d, &a)? == "standby").then_some(())
    });

    // Fill d's disk: only a few MiB left, less than raft needs for its next segments.
    let free = nix::sys::statvfs::statvfs(&d.state).unwrap();
    let left = free.blocks_available() as u64 * free.fragment_size() as u64;
    let fill = d.state.join("fill");
    let file = std::fs::File::create(&fill).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    let status = Command::new("fallocate")
        .args(["-l", &(left - 4 * 1024 * 1024).to_string()])
        .arg(&fill)
        .status()
        .unwrap();
    assert!(status.success());
    let (code, body) = eventually("d reports it cannot write", Duration::from_secs(20), || {
        let (code, body) = health(&d);
        (code == 503).then_some((code, body))
    });
    assert_eq!(code, 503);
    assert!(
        body.contains("degraded") && body.contains("cannot write"),
        "{body}"
    );
    assert!(d.log_text().contains("degraded"), "logged");

    // A voter goes: d is the only candidate, but it cannot write, so it is not promoted
    // (the dead voter keeps its vote until a healthy member can take it).
    c.kill();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(role) = role_of(&d, &a) {
            assert_ne!(role, "voter", "a member that cannot write was promoted");
        }
    }

    // Room again. Raft does not recover from a failed write without a restart, so d stays
    // degraded, saying so, until its daemon restarts; then it is healthy and takes the vote
    // it was kept from (so the check above could fail).
    std::fs::remove_file(&fill).unwrap();
    let body = eventually(
        "d says a restart is needed",
        Duration::from_secs(20),
        || {
            let (code, body) = health(&d);
            (code == 503 && body.contains("restart")).then_some(body)
        },
    );
    assert!(body.contains("degraded"), "{body}");
    d.terminate();
    d.restart();
    eventually("d healthy again", Duration::from_secs(20), || {
        (health(&d).0 == 200).then_some(())
    });
    let promoted = Instant::now() + Duration::from_secs(30);
    while role_of(&d, &a).as_deref() != Some("voter") {
        assert!(
            Instant::now() < promoted,
            "d was not promoted once healthy.\na: {}\nd: {}",
            a.log_text(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
