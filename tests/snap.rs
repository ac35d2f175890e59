//! `snap/`: pointing a MicroK8s checkout's `cluster-agent` part at a repository of this
//! agent (`snap/use-in-microk8s.sh`), checked on a stand-in checkout and a throwaway git
//! repository (the real build is `snap/microk8s-component/build.sh`, run by MicroK8s's
//! build-component.sh; see snap/README.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

use std::path::Path;
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/snap/use-in-microk8s.sh");

fn run(program: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap()
}

/// A MicroK8s checkout as far as the script cares: snapcraft.yaml and the Go agent's
/// component files.
fn fake_checkout(dir: &Path) {
    let component = dir.join("build-scripts/components/cluster-agent");
    std::fs::create_dir_all(&component).unwrap();
    std::fs::create_dir_all(dir.join("snap")).unwrap();
    std::fs::write(dir.join("snap/snapcraft.yaml"), "name: microk8s\n").unwrap();
    std::fs::write(
        component.join("repository"),
        "https://github.com/canonical/microk8s-cluster-agent\n",
    )
    .unwrap();
    std::fs::write(component.join("version.sh"), "#!/bin/bash\necho main\n").unwrap();
    std::fs::write(
        component.join("build.sh"),
        "#!/bin/bash\nmake cluster-agent\n",
    )
    .unwrap();
}

/// A git repository with one commit on branch `release-1`.
fn repository(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    assert!(run("git", &["init", "-q", "-b", "release-1"], dir)
        .status
        .success());
    std::fs::write(dir.join("Cargo.toml"), "[package]\n").unwrap();
    assert!(run("git", &["add", "."], dir).status.success());
    assert!(run("git", &["commit", "-q", "-m", "one"], dir)
        .status
        .success());
}

#[test]
fn the_part_builds_the_given_repository_at_the_given_ref() {
    let dir = tempfile::tempdir().unwrap();
    let checkout = dir.path().join("microk8s");
    let repo = dir.path().join("agent");
    fake_checkout(&checkout);
    repository(&repo);
    let out = run(
        "bash",
        &[
            SCRIPT,
            checkout.to_str().unwrap(),
            repo.to_str().unwrap(),
            "release-1",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let component = checkout.join("build-scripts/components/cluster-agent");
    assert_eq!(
        std::fs::read_to_string(component.join("repository"))
            .unwrap()
            .trim(),
        repo.to_str().unwrap()
    );
    let version = run(
        "bash",
        &[component.join("version.sh").to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "release-1");
    let build = std::fs::read_to_string(component.join("build.sh")).unwrap();
    assert!(build.contains("cargo build --release --locked"), "{build}");
    assert!(build.contains("\"${INSTALL}/cluster-agent\""), "{build}");
    assert!(run(
        "bash",
        &["-n", component.join("build.sh").to_str().unwrap()],
        dir.path()
    )
    .status
    .success());
    // What build-component.sh does with them: a shallow clone of that branch.
    let clone = dir.path().join("clone");
    let out = run(
        "git",
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            "-b",
            "release-1",
            repo.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn refuses_what_is_not_a_microk8s_checkout_or_a_missing_ref() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("agent");
    repository(&repo);
    let out = run(
        "bash",
        &[
            SCRIPT,
            dir.path().to_str().unwrap(),
            repo.to_str().unwrap(),
            "release-1",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not look like a MicroK8s checkout"));

    let checkout = dir.path().join("microk8s");
    fake_checkout(&checkout);
    let before =
        std::fs::read_to_string(checkout.join("build-scripts/components/cluster-agent/repository"))
            .unwrap();
    let out = run(
        "bash",
        &[
            SCRIPT,
            checkout.to_str().unwrap(),
            repo.to_str().unwrap(),
            "no-such-branch",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no branch or tag no-such-branch"));
    assert_eq!(
        std::fs::read_to_string(checkout.join("build-scripts/components/cluster-agent/repository"))
            .unwrap(),
        before,
        "nothing replaced"
    );
}
