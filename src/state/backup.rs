//! In-memory snapshot of a set of files, restored if a multi-step change fails half-way.

use std::path::PathBuf;

use super::{StateDir, StateError};

#[derive(Debug)]
struct Saved {
    path: PathBuf,
    /// Content and mode, or `None` if the file did not exist.
    before: Option<(Vec<u8>, u32)>,
}

/// What the files looked like before a change.
#[derive(Debug)]
pub struct Backup {
    state: StateDir,
    saved: Vec<Saved>,
}

impl Backup {
    /// Records the current content and mode of every path (absent files are recorded as
    /// absent, so restoring removes them again).
    pub fn take(state: &StateDir, paths: &[PathBuf]) -> Result<Backup, StateError> {
        use std::os::unix::fs::PermissionsExt;
        let mut saved = Vec::new();
        for path in paths {
            let before = match std::fs::read(path) {
                Ok(bytes) => {
                    let mode = std::fs::metadata(path)
                        .map(|m| m.permissions().mode() & 0o7777)
                        .map_err(|source| StateError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    Some((bytes, mode))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(StateError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            };
            saved.push(Saved {
                path: path.clone(),
                before,
            });
        }
        Ok(Backup {
            state: state.clone(),
            saved,
        })
    }

    /// Puts every file back as it was. Keeps going on errors and reports the first.
    pub fn restore(&self) -> Result<(), StateError> {
        let mut first = None;
        for s in &self.saved {
            let result = match &s.before {
                Some((bytes, mode)) => self.state.write(&s.path, bytes, *mode),
                None => self.state.remove(&s.path),
            };
            if let Err(e) = result {
                tracing::error!(path = %s.path.display(), error = %e, "cannot restore file");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_content_mode_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        state.write(&a, b"old", 0o600).unwrap();
        let backup = Backup::take(&state, &[a.clone(), b.clone()]).unwrap();
        state.write(&a, b"new", 0o644).unwrap();
        state.write(&b, b"created", 0o644).unwrap();
        backup.restore().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!b.exists());
    }
}
