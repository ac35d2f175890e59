//! Lost-quorum recovery on one data directory whose member is stopped (dqlite.md §3.4, the
//! procedure in `dqlite.h`): the last raft entry of the log, a backup of the directory,
//! a new configuration written into the winner's log (`dqlite_node_recover_ext`, as
//! go-dqlite's `ReconfigureMembershipExt` does it: a throw-away node object with id 1 and
//! address "1" on the directory), and the winner's raft files installed in another
//! survivor's directory in place of its own.
//!
//! Invariants: nothing here runs a member; the caller makes sure none runs on the directory
//! (libdqlite 1.11 does not lock it). An install never leaves a half-written backend: the new
//! directory is built beside it (`backend.recover-incoming`) and swapped in with two renames,
//! and [`settle_install`] completes or reverts a swap a crash cut between them. Identity
//! files (`info.yaml`, `failure-domain`, the cluster key pair, k8s-dqlite's files) stay the
//! survivor's own; only raft files and `cluster.yaml` come from the winner.

use std::path::{Path, PathBuf};

use super::ffi::{FfiError, Library};
use super::files::{self, CLUSTER_YAML};
use super::host::is_raft_file;
use super::raft_log::{self, LogSummary, RaftLogError};
use super::NodeInfo;
use crate::format::bundle::BundleFile;
use crate::state::{self, StateError};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot read the raft log in {dir}: {source}")]
    Log { dir: PathBuf, source: RaftLogError },
    #[error("reconfiguring the raft log in {dir}: {source}")]
    Reconfigure { dir: PathBuf, source: FfiError },
    #[error("the winner's data holds {0:?}, which is not a raft file")]
    NotRaftData(String),
    #[error("the winner's data holds no raft metadata")]
    NoMetadata,
    #[error("{0} does not exist")]
    NoBackend(PathBuf),
}

/// The sibling directory an install is built in.
fn incoming(backend: &Path) -> PathBuf {
    sibling(backend, "recover-incoming")
}

/// Where the survivor's own directory goes while the new one takes its place.
fn replaced(backend: &Path) -> PathBuf {
    sibling(backend, "recover-replaced")
}

fn sibling(backend: &Path, suffix: &str) -> PathBuf {
    let name = backend
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backend".into());
    backend.with_file_name(format!("{name}.{suffix}"))
}

/// Runs one of `raft_log`'s readers on the files of `backend`: a file that cannot be read
/// is that file's error, not the reader's.
fn read_log<T>(
    backend: &Path,
    reader: impl FnOnce(&[String], &mut dyn FnMut(&str) -> Option<Vec<u8>>) -> Result<T, RaftLogError>,
) -> Result<T, RecoveryError> {
    let names =
        state::list_dir(backend)?.ok_or_else(|| RecoveryError::NoBackend(backend.into()))?;
    let mut failed = None;
    let found = reader(
        &names,
        &mut |name| match state::read_bytes(&backend.join(name)) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                failed.get_or_insert(e);
                None
            }
        },
    );
    if let Some(e) = failed {
        return Err(e.into());
    }
    found.map_err(|source| RecoveryError::Log {
        dir: backend.into(),
        source,
    })
}

/// The term and index of the last entry of the log in `backend` (and the current term).
pub fn last_entry(backend: &Path) -> Result<LogSummary, RecoveryError> {
    read_log(backend, |names, read| raft_log::last_entry(names, read))
}

/// The configuration the log in `backend` ends with (what raft itself starts from; unlike
/// `cluster.yaml`, never stale), or `None` for a log without one.
pub fn last_configuration(backend: &Path) -> Result<Option<Vec<NodeInfo>>, RecoveryError> {
    let found = read_log(backend, |names, read| {
        raft_log::last_configuration(names, read)
    })?;
    Ok(found.map(|(_, servers)| {
        servers
            .into_iter()
            .map(|s| NodeInfo {
                id: s.id,
                address: s.address,
                role: super::Role::from_code(s.role).unwrap_or(super::Role::Spare),
            })
            .collect()
    }))
}

/// Copies `backend` whole to `backend.recover-backup-<stamp>` (another name if that exists);
/// returns the backup's path. Backups are never deleted by the agent.
pub fn backup(backend: &Path, stamp: &str) -> Result<PathBuf, RecoveryError> {
    if !state::exists(backend) {
        return Err(RecoveryError::NoBackend(backend.into()));
    }
    let mut target = sibling(backend, &format!("recover-backup-{stamp}"));
    let mut n = 1;
    while state::exists(&target) {
        n += 1;
        target = sibling(backend, &format!("recover-backup-{stamp}-{n}"));
    }
    state::copy_dir(backend, &target)?;
    Ok(target)
}

/// Every raft file of `backend` (metadata, segments, snapshots), for the other survivors.
pub fn raft_files(backend: &Path) -> Result<Vec<BundleFile>, RecoveryError> {
    let names =
        state::list_dir(backend)?.ok_or_else(|| RecoveryError::NoBackend(backend.into()))?;
    names
        .into_iter()
        .filter(|n| is_raft_file(n))
        .map(|name| {
            let data = state::read_bytes(&backend.join(&name))?;
            Ok(BundleFile { name, data })
        })
        .collect()
}

/// Writes a configuration of exactly `members` into the log of `backend` and makes
/// `cluster.yaml` say the same. Run once, on the winner, with every member stopped.
pub fn reconfigure(backend: &Path, members: &[NodeInfo]) -> Result<(), RecoveryError> {
    let fail = |source| RecoveryError::Reconfigure {
        dir: backend.into(),
        source,
    };
    let lib = Library::load().map_err(fail)?;
    let mut node = lib.create_node(1, "1", backend).map_err(fail)?;
    let list: Vec<(u64, String, u64)> = members
        .iter()
        .map(|m| (m.id, m.address.clone(), m.role.code()))
        .collect();
    node.recover(&list).map_err(fail)?;
    drop(node);
    files::write_cluster(backend, members)?;
    Ok(())
}

/// Replaces the raft files (and `cluster.yaml`) of `backend` with `files`, keeping every
/// other file of the survivor's own. The new directory is complete and synced before it
/// takes the old one's place.
pub fn install(backend: &Path, files: &[BundleFile]) -> Result<(), RecoveryError> {
    if let Some(bad) = files
        .iter()
        .find(|f| !is_raft_file(&f.name) && f.name != CLUSTER_YAML)
    {
        return Err(RecoveryError::NotRaftData(bad.name.clone()));
    }
    if !files.iter().any(|f| f.name.starts_with("metadata")) {
        return Err(RecoveryError::NoMetadata);
    }
    settle_install(backend)?;
    let names =
        state::list_dir(backend)?.ok_or_else(|| RecoveryError::NoBackend(backend.into()))?;
    let ready = incoming(backend);
    let partial = sibling(backend, "recover-incoming.partial");
    state::remove_dir_all(&ready)?;
    state::remove_dir_all(&partial)?;
    state::make_dir(&partial, state::mode_of(backend)?)?;
    let replaced_by_bundle = |name: &str| is_raft_file(name) || name == CLUSTER_YAML;
    for name in names.iter().filter(|n| !replaced_by_bundle(n)) {
        let from = backend.join(name);
        if !state::is_file(&from) {
            continue;
        }
        let mode = state::mode_of(&from)?;
        state::write_atomic(&partial.join(name), &state::read_bytes(&from)?, mode)?;
    }
    for file in files {
        state::write_atomic(&partial.join(&file.name), &file.data, state::mode::SECRET)?;
    }
    state::sync_dir(&partial)?;
    state::rename(&partial, &ready)?;
    let old = replaced(backend);
    state::remove_dir_all(&old)?;
    state::rename(backend, &old)?;
    state::rename(&ready, backend)?;
    state::remove_dir_all(&old)?;
    Ok(())
}

/// Completes or reverts an install a crash cut short: with no backend, the complete new
/// directory takes its place (else the old one goes back); leftovers go. Returns what it
/// did, if anything.
pub fn settle_install(backend: &Path) -> Result<Option<String>, RecoveryError> {
    let (ready, old) = (incoming(backend), replaced(backend));
    let partial = sibling(backend, "recover-incoming.partial");
    let mut done = None;
    if !state::exists(backend) {
        if state::exists(&ready) {
            state::rename(&ready, backend)?;
            done = Some(format!(
                "finished installing the recovered data in {}",
                backend.display()
            ));
        } else if state::exists(&old) {
            state::rename(&old, backend)?;
            done = Some(format!(
                "put the survivor's own data back in {}",
                backend.display()
            ));
        }
    }
    for leftover in [ready, old, partial] {
        if state::exists(&leftover) {
            state::remove_dir_all(&leftover)?;
            done.get_or_insert_with(|| format!("removed the leftover {}", leftover.display()));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, data: &[u8]) -> BundleFile {
        BundleFile::new(name, data)
    }

    #[test]
    fn install_swaps_raft_files_and_keeps_identity() {
        let dir = tempfile::tempdir().unwrap();
        let backend = dir.path().join("backend");
        state::make_dir(&backend, 0o700).unwrap();
        for (name, data) in [
            ("info.yaml", "own id"),
            ("failure-domain", "2"),
            ("cluster.yaml", "old"),
            ("metadata1", "old meta"),
            ("open-1", "old log"),
        ] {
            state::write_atomic(&backend.join(name), data.as_bytes(), 0o600).unwrap();
        }
        install(
            &backend,
            &[
                file("metadata1", b"new meta"),
                file("0000000000000001-0000000000000009", b"seg"),
                file("cluster.yaml", b"new"),
            ],
        )
        .unwrap();
        let names = state::list_dir(&backend).unwrap().unwrap();
        assert_eq!(
            names,
            [
                "0000000000000001-0000000000000009",
                "cluster.yaml",
                "failure-domain",
                "info.yaml",
                "metadata1"
            ]
        );
        assert_eq!(
            state::read_string(&backend.join("info.yaml")).unwrap(),
            "own id"
        );
        assert_eq!(
            state::read_string(&backend.join("metadata1")).unwrap(),
            "new meta"
        );
        assert_eq!(state::list_dir(dir.path()).unwrap().unwrap(), ["backend"]);
    }

    #[test]
    fn install_refuses_foreign_files_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = dir.path().join("backend");
        state::make_dir(&backend, 0o700).unwrap();
        state::write_atomic(&backend.join("info.yaml"), "own".as_bytes(), 0o600).unwrap();
        assert!(matches!(
            install(
                &backend,
                &[file("metadata1", b"m"), file("info.yaml", b"theirs")]
            ),
            Err(RecoveryError::NotRaftData(_))
        ));
        assert!(matches!(
            install(&backend, &[file("open-1", b"x")]),
            Err(RecoveryError::NoMetadata)
        ));
        assert_eq!(state::list_dir(dir.path()).unwrap().unwrap(), ["backend"]);
        assert_eq!(
            state::read_string(&backend.join("info.yaml")).unwrap(),
            "own"
        );
    }

    #[test]
    fn an_install_cut_between_its_renames_is_completed_or_reverted() {
        let dir = tempfile::tempdir().unwrap();
        let backend = dir.path().join("backend");
        // Cut after the old directory moved away, the new one complete: it goes in.
        state::make_dir(&incoming(&backend), 0o700).unwrap();
        state::write_atomic(
            &incoming(&backend).join("metadata1"),
            "new".as_bytes(),
            0o600,
        )
        .unwrap();
        state::make_dir(&replaced(&backend), 0o700).unwrap();
        state::write_atomic(
            &replaced(&backend).join("metadata1"),
            "old".as_bytes(),
            0o600,
        )
        .unwrap();
        assert!(settle_install(&backend).unwrap().is_some());
        assert_eq!(
            state::read_string(&backend.join("metadata1")).unwrap(),
            "new"
        );
        assert_eq!(state::list_dir(dir.path()).unwrap().unwrap(), ["backend"]);
        // Cut with only the old one aside: it comes back.
        state::rename(&backend, &replaced(&backend)).unwrap();
        assert!(settle_install(&backend).unwrap().is_some());
        assert_eq!(
            state::read_string(&backend.join("metadata1")).unwrap(),
            "new"
        );
        assert_eq!(settle_install(&backend).unwrap(), None);
    }

    #[test]
    fn backups_get_fresh_names_and_copy_everything() {
        let dir = tempfile::tempdir().unwrap();
        let backend = dir.path().join("backend");
        state::make_dir(&backend, 0o700).unwrap();
        state::write_atomic(&backend.join("metadata1"), "m".as_bytes(), 0o600).unwrap();
        let first = backup(&backend, "20261202T050000Z").unwrap();
        let second = backup(&backend, "20261202T050000Z").unwrap();
        assert_ne!(first, second);
        assert_eq!(state::read_string(&second.join("metadata1")).unwrap(), "m");
    }
}
