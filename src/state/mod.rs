//! The node's state directory: where it is, what lives in it, and the only code that reads or
//! writes it.
//!
//! Invariants:
//! - Every write goes through [`atomic::write_atomic`]: temp file in the same directory created
//!   with its final mode, fsync, rename, fsync of the directory. A reader sees the old or the new
//!   content, never a mix.
//! - Every error names the path it is about.
//! - One daemon owns a state directory at a time ([`lock::StateLock`]).

// This layer is the one place that touches the filesystem (clippy.toml forbids it elsewhere).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod atomic;
pub mod backup;
pub mod layout;
pub mod lock;
pub mod ownership;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use atomic::write_atomic;

use crate::format::args::ArgsFile;
pub use layout::Layout;
pub use lock::StateLock;
pub use ownership::Ownership;

/// File modes used by the agent. Private material is never readable by others.
pub mod mode {
    /// Private keys, tokens, kubeconfigs with embedded keys.
    pub const SECRET: u32 = 0o600;
    /// Certificates and other public material.
    pub const PUBLIC: u32 = 0o644;
    /// Service argument files (MicroK8s uses 0660 with the snap group).
    pub const ARGS: u32 = 0o660;
    /// Directories.
    pub const DIR: u32 = 0o755;
    /// Directories that hold sockets or secrets only the owner may traverse.
    pub const PRIVATE_DIR: u32 = 0o700;
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot move {from} to {to}: {source}")]
    Move {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "state directory {path} is already in use by another cluster-agent daemon (pid {pid}); stop it first"
    )]
    Locked { path: PathBuf, pid: String },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
}

/// The process environment the agent depends on, captured once at start-up so the library
/// never reads globals.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$SNAP_DATA`, set when running inside the MicroK8s snap.
    pub snap_data: Option<PathBuf>,
    /// `$SNAP`, the read-only snap directory.
    pub snap: Option<PathBuf>,
    /// `$SNAP_COMMON`.
    pub snap_common: Option<PathBuf>,
    /// `$CLUSTER_AGENT_TEST_HOLD`: comma-separated hold points at which a multi-step change
    /// waits (for crash tests; see `cluster::node::Node::hold`). Empty in production.
    pub test_holds: Vec<String>,
}

impl Environment {
    /// Reads the snap variables from the process environment (call once, in `main`).
    pub fn from_process() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let test_holds = std::env::var("CLUSTER_AGENT_TEST_HOLD")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        Environment {
            snap_data: var("SNAP_DATA"),
            snap: var("SNAP"),
            snap_common: var("SNAP_COMMON"),
            test_holds,
        }
    }

    /// True when running inside the MicroK8s snap.
    pub fn in_snap(&self) -> bool {
        self.snap.is_some() && self.snap_data.is_some()
    }
}

/// Where the MicroK8s snap keeps its data; used when it exists and nothing else was said.
pub const MICROK8S_SNAP_DATA: &str = "/var/snap/microk8s/current";
/// The default state directory outside a snap.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cluster-agent";

/// Resolves the state directory: `--state-dir` > `$SNAP_DATA` > the MicroK8s snap data
/// directory if it exists > `/var/lib/cluster-agent`.
pub fn resolve_state_dir(explicit: Option<&Path>, env: &Environment) -> PathBuf {
    resolve_state_dir_with(explicit, env, |p| p.is_dir())
}

fn resolve_state_dir_with(
    explicit: Option<&Path>,
    env: &Environment,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = &env.snap_data {
        return dir.clone();
    }
    let snap = Path::new(MICROK8S_SNAP_DATA);
    if exists(snap) {
        return snap.to_path_buf();
    }
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// Handle on a state directory. Cheap to clone; carries no open files.
#[derive(Debug, Clone)]
pub struct StateDir {
    layout: Layout,
    ownership: Ownership,
}

impl StateDir {
    /// A state directory whose files keep the agent's private modes (tests, tools).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir {
            layout: Layout::new(root.into()),
            ownership: Ownership::private(),
        }
    }

    /// The node's state directory, its shared files owned as MicroK8s owns them
    /// ([`ownership`]): what the daemon and the CLI use.
    pub fn for_node(root: impl Into<PathBuf>, env: &Environment) -> Self {
        let layout = Layout::new(root.into());
        let ownership = Ownership::resolve(&layout, env);
        StateDir { layout, ownership }
    }

    pub fn ownership(&self) -> Ownership {
        self.ownership
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Creates the directory skeleton (idempotent). `run/` is private so the control socket
    /// is never reachable by other users, even for the instant between bind and chmod.
    pub fn ensure_layout(&self) -> Result<(), StateError> {
        for dir in self.layout.directories() {
            create_dir(&dir, mode::DIR)?;
        }
        create_dir(&self.layout.run_dir(), mode::PRIVATE_DIR)?;
        set_mode(&self.layout.run_dir(), mode::PRIVATE_DIR)?;
        Ok(())
    }

    /// Takes the exclusive daemon lock on this state directory.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        StateLock::acquire(&self.layout.lock_file())
    }

    pub fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    pub fn read_string(&self, path: &Path) -> Result<String, StateError> {
        read_string(path)
    }

    /// Reads a file that may legitimately be absent.
    pub fn read_optional(&self, path: &Path) -> Result<Option<String>, StateError> {
        read_optional(path)
    }

    /// Replaces `path` atomically. `mode` is the agent's own choice; a file in a directory
    /// MicroK8s shares with its group gets that group and mode 0660 instead ([`ownership`]).
    pub fn write(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
        if let Some(parent) = path.parent() {
            create_dir(parent, mode::DIR)?;
        }
        let (mode, gid) = self.ownership.for_path(&self.layout, path, mode);
        atomic::write_atomic_owned(path, data, mode, gid)
    }

    /// Writes `data` only if `path` does not exist yet. Returns whether it wrote.
    pub fn write_if_missing(
        &self,
        path: &Path,
        data: &[u8],
        mode: u32,
    ) -> Result<bool, StateError> {
        if path.exists() {
            return Ok(false);
        }
        self.write(path, data, mode)?;
        Ok(true)
    }

    pub fn remove(&self, path: &Path) -> Result<(), StateError> {
        remove_file(path)
    }

    /// Creates an empty marker file under `var/lock/` (idempotent).
    pub fn set_marker(&self, name: &str) -> Result<(), StateError> {
        let path = self.layout.marker(name);
        self.write_if_missing(&path, b"", mode::SECRET).map(|_| ())
    }

    pub fn has_marker(&self, name: &str) -> bool {
        self.layout.marker(name).exists()
    }

    /// Reads and updates a service argument file in one atomic step.
    pub fn update_args(
        &self,
        service: &str,
        edit: impl FnOnce(&mut ArgsFile) -> bool,
    ) -> Result<bool, StateError> {
        let path = self.layout.args(service);
        let text = self.read_optional(&path)?.unwrap_or_default();
        let mut file = ArgsFile::parse(&text);
        if !edit(&mut file) {
            return Ok(false);
        }
        self.write(&path, file.render().as_bytes(), mode::ARGS)?;
        Ok(true)
    }

    /// Reads a service argument file; a missing file reads as empty.
    pub fn read_args(&self, service: &str) -> Result<ArgsFile, StateError> {
        let text = self
            .read_optional(&self.layout.args(service))?
            .unwrap_or_default();
        Ok(ArgsFile::parse(&text))
    }
}

/// Does `path` exist (following symlinks)?
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Is `path` a regular file (following symlinks)?
pub fn is_file(path: &Path) -> bool {
    path.is_file()
}

pub fn read_bytes(path: &Path) -> Result<Vec<u8>, StateError> {
    fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file that may legitimately be absent, as bytes.
pub fn read_bytes_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The names in directory `dir`, sorted; `None` if it does not exist.
pub fn list_dir(dir: &Path) -> Result<Option<Vec<String>>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StateError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(Some(names))
}

/// Removes a file; an absent file is not an error.
pub fn remove_file(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes a file and makes the removal durable (fsync of its directory); an absent file is
/// not an error.
pub fn remove_file_durably(path: &Path) -> Result<(), StateError> {
    remove_file(path)?;
    atomic::sync_parent(path).map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes a directory and everything in it; an absent directory is not an error.
pub fn remove_dir_all(path: &Path) -> Result<(), StateError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Renames `from` to `to` (a file or a whole directory, atomically on one filesystem) and
/// makes the rename durable.
pub fn rename(from: &Path, to: &Path) -> Result<(), StateError> {
    fs::rename(from, to).map_err(|source| StateError::Move {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })?;
    atomic::sync_parent(to).map_err(|source| StateError::Write {
        path: to.to_path_buf(),
        source,
    })
}

/// Appends `data` to `path` (created with `mode`), in one write.
pub fn append(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|source| StateError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Bytes an unprivileged writer may still put in the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> Result<u64, StateError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| StateError::Read {
        path: dir.to_path_buf(),
        source: io::Error::from(e),
    })?;
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
}

/// Writes `size` bytes to a probe file in `dir`, syncs and removes it: can this directory
/// take a write right now? (A full or failing disk answers no.)
pub fn probe_write(dir: &Path, size: usize) -> Result<(), StateError> {
    use std::io::Write;
    let path = dir.join(".cluster-agent-write-probe");
    let fail = |source: io::Error| StateError::Write {
        path: path.clone(),
        source,
    };
    let result = fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(&vec![0u8; size])?;
            f.sync_all()
        })
        .map_err(fail);
    let _ = fs::remove_file(&path);
    result
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> Result<u32, StateError> {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|source| StateError::Read {
            path: path.to_path_buf(),
            source,
        })
}

pub fn read_string(path: &Path) -> Result<String, StateError> {
    fs::read_to_string(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_optional(path: &Path) -> Result<Option<String>, StateError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create_dir(path: &Path, mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| StateError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Copies the regular files and directories under `from` into a new directory `to` (which
/// must not exist), keeping each file's mode, every file synced; the copy is built under
/// `<to>.partial` and renamed into place, so `to` exists only once it is whole. A leftover
/// `.partial` from an interrupted copy is replaced. Returns the number of bytes copied.
pub fn copy_dir(from: &Path, to: &Path) -> Result<u64, StateError> {
    use std::os::unix::fs::PermissionsExt;
    if to.exists() {
        return Err(StateError::Write {
            path: to.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "the copy's target exists"),
        });
    }
    let partial = PathBuf::from(format!("{}.partial", to.display()));
    remove_dir_all(&partial)?;
    let dir_mode = fs::metadata(from)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|source| StateError::Read {
            path: from.to_path_buf(),
            source,
        })?;
    create_dir(&partial, dir_mode)?;
    let mut copied = 0u64;
    let mut stack = vec![(from.to_path_buf(), partial.clone())];
    while let Some((src, dst)) = stack.pop() {
        for name in list_dir(&src)?.unwrap_or_default() {
            let (s, d) = (src.join(&name), dst.join(&name));
            let meta = fs::symlink_metadata(&s).map_err(|source| StateError::Read {
                path: s.clone(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                create_dir(&d, mode)?;
                stack.push((s, d));
            } else if meta.is_file() {
                let data = read_bytes(&s)?;
                copied += data.len() as u64;
                atomic::write_atomic(&d, &data, mode)?;
            }
        }
    }
    rename(&partial, to)?;
    Ok(copied)
}

/// Makes `path` (a directory) and its parent's entry for it durable.
pub fn sync_dir(path: &Path) -> Result<(), StateError> {
    let fail = |source: io::Error| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    atomic::sync_parent(path).map_err(fail)
}

/// Creates directory `path` (and its parents) with `mode`.
pub fn make_dir(path: &Path, mode: u32) -> Result<(), StateError> {
    create_dir(path, mode)
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        StateError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Test support: what a directory holds, to show that a refused request changed nothing.
#[cfg(test)]
pub mod testing {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Every file under `root` (recursively) with its bytes and mode, and every directory.
    pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<(Vec<u8>, u32)>> {
        let mut out = BTreeMap::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for name in super::list_dir(&dir).ok().flatten().unwrap_or_default() {
                let path = dir.join(name);
                if path.is_dir() {
                    out.insert(path.clone(), None);
                    dirs.push(path);
                } else if let (Ok(bytes), Ok(mode)) =
                    (super::read_bytes(&path), super::mode_of(&path))
                {
                    out.insert(path, Some((bytes, mode)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_state_dir_wins() {
        let env = Environment {
            snap_data: Some("/snap/data".into()),
            ..Default::default()
        };
        let got = resolve_state_dir_with(Some(Path::new("/x")), &env, |_| true);
        assert_eq!(got, PathBuf::from("/x"));
    }

    #[test]
    fn snap_data_beats_defaults() {
        let env = Environment {
            snap_data: Some("/var/snap/microk8s/1234".into()),
            ..Default::default()
        };
        let got = resolve_state_dir_with(None, &env, |_| true);
        assert_eq!(got, PathBuf::from("/var/snap/microk8s/1234"));
    }

    #[test]
    fn microk8s_dir_used_only_when_present() {
        let env = Environment::default();
        assert_eq!(
            resolve_state_dir_with(None, &env, |_| true),
            PathBuf::from(MICROK8S_SNAP_DATA)
        );
        assert_eq!(
            resolve_state_dir_with(None, &env, |_| false),
            PathBuf::from(DEFAULT_STATE_DIR)
        );
    }

    #[test]
    fn layout_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.ensure_layout().unwrap();
        assert!(state.layout().certs_dir().is_dir());
        assert!(!state.has_marker("ha-cluster"));
        state.set_marker("ha-cluster").unwrap();
        assert!(state.has_marker("ha-cluster"));
        use std::os::unix::fs::PermissionsExt;
        let run = fs::metadata(state.layout().run_dir()).unwrap();
        assert_eq!(run.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn update_args_rewrites_atomically_and_reports_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.ensure_layout().unwrap();
        let changed = state
            .update_args("kubelet", |f| f.set("--node-ip", "10.0.0.1"))
            .unwrap();
        assert!(changed);
        let again = state
            .update_args("kubelet", |f| f.set("--node-ip", "10.0.0.1"))
            .unwrap();
        assert!(!again);
        assert_eq!(
            state.read_args("kubelet").unwrap().get("--node-ip"),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn read_errors_name_the_path() {
        let err = read_string(Path::new("/nonexistent/cluster-agent/x.crt")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cluster-agent/x.crt"));
    }
}
