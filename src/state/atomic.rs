//! Atomic file replacement: temp file in the same directory, created with its final mode,
//! fsync, rename over the target, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StateError;

/// Replaces `path` with `data` atomically. The file has `mode` from the moment it exists (the
/// temp file is created with it), so a secret is never briefly world-readable.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    write_atomic_with(path, data, mode, None, |from, to| fs::rename(from, to))
}

/// [`write_atomic`] for a file shared with a group: the temp file is created private to its
/// owner, handed to `gid`, and only then given `mode`, so no other group ever sees it.
pub fn write_atomic_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    gid: Option<u32>,
) -> Result<(), StateError> {
    write_atomic_with(path, data, mode, gid, |from, to| fs::rename(from, to))
}

/// [`write_atomic`] with the final rename injected, so tests can make it fail.
pub(crate) fn write_atomic_with(
    path: &Path,
    data: &[u8],
    mode: u32,
    gid: Option<u32>,
    rename: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> Result<(), StateError> {
    let fail = |source: io::Error| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path).map_err(fail)?;
    let result = (|| {
        let first_mode = if gid.is_some() { mode & 0o700 } else { mode };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(first_mode)
            .open(&tmp)?;
        if let Some(gid) = gid {
            std::os::unix::fs::fchown(&file, None, Some(gid))?;
        }
        // The umask may have cleared bits we asked for; the mode is part of the contract.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}.{}", std::process::id(), unique()));
    Ok(path.with_file_name(tmp_name))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_content_with_mode_from_creation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        write_atomic(&path, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(entries(dir.path()), vec!["ca.key"]);
    }

    #[test]
    fn temp_file_has_final_mode_before_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.txt");
        write_atomic_with(&path, b"x", 0o600, None, |from, to| {
            let mode = fs::metadata(from)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "temp file must be private from creation");
            fs::rename(from, to)
        })
        .unwrap();
    }

    #[test]
    fn failed_rename_keeps_old_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("args");
        write_atomic(&path, b"old\n", 0o660).unwrap();
        let err = write_atomic_with(&path, b"new\n", 0o660, None, |_, _| {
            Err(io::Error::other("simulated crash before rename"))
        })
        .unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(fs::read(&path).unwrap(), b"old\n");
        assert_eq!(entries(dir.path()), vec!["args"]);
    }

    #[test]
    fn replaces_existing_content_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = write_atomic(Path::new("/nonexistent-dir-xyz/file"), b"x", 0o600).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir-xyz/file"),
            "{err}"
        );
    }

    #[test]
    fn shared_file_gets_group_and_mode_before_rename() {
        use std::os::unix::fs::MetadataExt;
        // Root may hand a file to any gid, listed in /etc/group or not.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster-tokens.txt");
        write_atomic_with(&path, b"t\n", 0o660, Some(4242), |from, to| {
            let meta = fs::metadata(from)?;
            assert_eq!(meta.gid(), 4242, "group set before the file is visible");
            assert_eq!(meta.permissions().mode() & 0o777, 0o660);
            fs::rename(from, to)
        })
        .unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.gid(), meta.permissions().mode() & 0o777),
            (4242, 0o660)
        );
    }
}
