//! A copy of a set of files taken before a multi-step change, kept on disk so that it
//! survives a crash: the daemon that starts after one restores it (see the journal). One
//! file per saved path plus `manifest.json`, written last: a directory without a manifest
//! is an incomplete copy taken while nothing had changed yet, and is discarded.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{mode, StateDir, StateError};

const MANIFEST: &str = "manifest.json";

/// One saved path, relative to the state directory (a snap refresh moves `$SNAP_DATA`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    path: PathBuf,
    /// The copy's file name in the backup directory and the original mode; `None` if the
    /// file did not exist (restoring removes it again).
    copy: Option<(String, u32)>,
}

/// What the files looked like before a change.
#[derive(Debug)]
pub struct Backup {
    state: StateDir,
    dir: PathBuf,
    saved: Vec<Saved>,
}

impl Backup {
    /// Copies every path (absent files are recorded as absent) into `dir`, replacing
    /// whatever an earlier, finished or abandoned, change left there.
    pub fn take(state: &StateDir, dir: &Path, paths: &[PathBuf]) -> Result<Backup, StateError> {
        super::remove_dir_all(dir)?;
        let taken = Self::copy(state, dir, paths);
        if taken.is_err() {
            // An incomplete copy guards nothing: the change it was for does not start.
            let _ = super::remove_dir_all(dir);
        }
        taken
    }

    fn copy(state: &StateDir, dir: &Path, paths: &[PathBuf]) -> Result<Backup, StateError> {
        super::create_dir(dir, mode::PRIVATE_DIR)?;
        let mut saved = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let relative = path
                .strip_prefix(state.root())
                .unwrap_or(path)
                .to_path_buf();
            let copy = match super::read_bytes_optional(path)? {
                Some(bytes) => {
                    let name = format!("{i}");
                    let file_mode = super::mode_of(path)?;
                    state.write(&dir.join(&name), &bytes, mode::SECRET)?;
                    Some((name, file_mode))
                }
                None => None,
            };
            saved.push(Saved {
                path: relative,
                copy,
            });
        }
        let manifest = serde_json::to_vec_pretty(&saved).map_err(|e| StateError::Malformed {
            path: dir.join(MANIFEST),
            reason: e.to_string(),
        })?;
        state.write(&dir.join(MANIFEST), &manifest, mode::SECRET)?;
        Ok(Backup {
            state: state.clone(),
            dir: dir.to_path_buf(),
            saved,
        })
    }

    /// The complete copy in `dir`, if there is one.
    pub fn load(state: &StateDir, dir: &Path) -> Result<Option<Backup>, StateError> {
        let path = dir.join(MANIFEST);
        let Some(text) = super::read_optional(&path)? else {
            return Ok(None);
        };
        let saved: Vec<Saved> = serde_json::from_str(&text).map_err(|e| StateError::Malformed {
            path,
            reason: e.to_string(),
        })?;
        Ok(Some(Backup {
            state: state.clone(),
            dir: dir.to_path_buf(),
            saved,
        }))
    }

    /// The saved paths, absolute.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.saved
            .iter()
            .map(|s| self.state.root().join(&s.path))
            .collect()
    }

    /// Puts every file back as it was (content and mode, or absence). Keeps going on errors
    /// and reports the first. The copy stays until [`Backup::discard`].
    pub fn restore(&self) -> Result<(), StateError> {
        let mut first = None;
        for s in &self.saved {
            let path = self.state.root().join(&s.path);
            let result = match &s.copy {
                Some((name, file_mode)) => super::read_bytes(&self.dir.join(name))
                    .and_then(|bytes| self.state.write(&path, &bytes, *file_mode)),
                None => self.state.remove(&path),
            };
            if let Err(e) = result {
                tracing::error!(path = %path.display(), error = %e, "cannot restore file");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Deletes the copy (the change it guarded is finished or undone).
    pub fn discard(self) -> Result<(), StateError> {
        super::remove_dir_all(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_content_mode_and_absence_even_from_a_fresh_process() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let a = dir.path().join("a");
        let b = dir.path().join("sub/b");
        let saved = dir.path().join("saved");
        state.write(&a, b"old", 0o600).unwrap();
        Backup::take(&state, &saved, &[a.clone(), b.clone()]).unwrap();
        state.write(&a, b"new", 0o644).unwrap();
        state.write(&b, b"created", 0o644).unwrap();

        // As the daemon that starts after a crash finds it.
        let backup = Backup::load(&state, &saved).unwrap().unwrap();
        assert_eq!(backup.paths(), vec![a.clone(), b.clone()]);
        backup.restore().unwrap();
        assert_eq!(super::super::read_bytes(&a).unwrap(), b"old");
        assert_eq!(super::super::mode_of(&a).unwrap() & 0o777, 0o600);
        assert!(!super::super::exists(&b));
        backup.discard().unwrap();
        assert!(!super::super::exists(&saved));
        assert!(Backup::load(&state, &saved).unwrap().is_none());
    }

    #[test]
    fn a_copy_that_cannot_be_completed_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let saved = dir.path().join("saved");
        let a = dir.path().join("a");
        let unreadable = dir.path().join("a-directory");
        state.write(&a, b"x", 0o600).unwrap();
        state
            .write(&unreadable.join("inside"), b"y", 0o600)
            .unwrap();
        let err = Backup::take(&state, &saved, &[a, unreadable.clone()]).unwrap_err();
        assert!(err.to_string().contains("a-directory"), "{err}");
        assert!(!super::super::exists(&saved));
    }

    #[test]
    fn a_copy_without_its_manifest_is_not_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let saved = dir.path().join("saved");
        state.write(&saved.join("0"), b"partial", 0o600).unwrap();
        assert!(Backup::load(&state, &saved).unwrap().is_none());
    }
}
