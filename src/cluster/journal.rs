//! The journal: the on-disk record of the multi-step change this node is making (a join, a
//! leave, the reset of a removed member). It is written, atomically, before the change's
//! first write and again before each step that cannot be taken back without knowing it was
//! taken; it is removed when the change is finished or undone. A daemon that starts and
//! finds one settles it (`local::settle`) before it serves anything, so a node killed at any
//! step comes back as its old self or as the new member, never as something in between.
//!
//! Files: `var/cluster-agent/journal.json` (0600) and, while a change runs, the copy of the
//! files it may replace in `var/cluster-agent/saved/` (`state::backup`).

use serde::{Deserialize, Serialize};

use crate::state::backup::Backup;
use crate::state::{mode, StateDir, StateError};

/// A change in progress and how far it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub enum Change {
    /// Joining a cluster as a control plane; `voters` are the cluster's, as it answered.
    JoinControlPlane {
        step: JoinStep,
        voters: Vec<String>,
        contacted: String,
    },
    /// Joining a cluster as a worker (local files only).
    JoinWorker { step: WorkerStep },
    /// A control plane leaving its cluster (or resetting after it was removed from it).
    LeaveControlPlane {
        step: LeaveStep,
        failure_domain: u64,
        /// External datastore: the address k8s-dqlite's fresh single-node member takes
        /// (this member's own), for the `init.yaml` the reset writes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_address: Option<String>,
    },
    /// A worker going back to a standalone node.
    LeaveWorker,
}

/// How far a control-plane join went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum JoinStep {
    /// The previous datastore is being moved aside and the cluster's files installed: the
    /// cluster knows nothing of this member yet.
    Installing,
    /// A fresh member with this identity runs and is being added to the cluster: whether
    /// the cluster took it is the cluster's to say.
    Adding { id: u64, address: String },
    /// k8s-dqlite is being started with `init.yaml` (external datastore): it adds a member
    /// at `address` by itself, so whether the cluster took it is the cluster's to say.
    Starting { address: String },
    /// The cluster lists the member: only the clean-up is left.
    Joined,
    /// Decided: the join is being undone (whatever the cluster says by now).
    Undoing,
}

/// How far a worker join went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum WorkerStep {
    /// Writing the worker's files: undone from the saved copy.
    Configuring,
    /// Every file written: only the service restarts and the clean-up are left.
    Configured,
}

/// How far a control-plane leave went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum LeaveStep {
    /// The cluster is being asked to remove this member: whether it did is the cluster's
    /// to say.
    Removing { id: u64, address: String },
    /// The member is out of the cluster: this node is being reset to a fresh single node.
    Resetting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub change: Change,
    /// When the change started (unix seconds).
    pub started: i64,
}

/// The journal of one state directory.
#[derive(Debug, Clone)]
pub struct Journal {
    state: StateDir,
}

impl Journal {
    pub fn new(state: &StateDir) -> Journal {
        Journal {
            state: state.clone(),
        }
    }

    /// The change in progress, if any.
    pub fn read(&self) -> Result<Option<Record>, StateError> {
        let path = self.state.layout().journal();
        let Some(text) = self.state.read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Malformed {
                path,
                reason: e.to_string(),
            })
    }

    /// Records `record` (atomically: a reader sees the previous step or this one).
    pub fn record(&self, record: &Record) -> Result<(), StateError> {
        let path = self.state.layout().journal();
        let text = serde_json::to_vec_pretty(record).map_err(|e| StateError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        self.state.write(&path, &text, mode::SECRET)
    }

    /// Saves `paths` (see `state::backup`) for the change about to start.
    pub fn save_files(&self, paths: &[std::path::PathBuf]) -> Result<Backup, StateError> {
        Backup::take(&self.state, &self.state.layout().saved_files(), paths)
    }

    /// The files the change in progress saved, if it saved any.
    pub fn saved_files(&self) -> Result<Option<Backup>, StateError> {
        Backup::load(&self.state, &self.state.layout().saved_files())
    }

    /// The change is finished or undone: the record goes, then the saved files, durably (a
    /// power cut right after must not bring the record back).
    pub fn clear(&self) -> Result<(), StateError> {
        crate::state::remove_file_durably(&self.state.layout().journal())?;
        crate::state::remove_dir_all(&self.state.layout().saved_files())
    }

    /// Is a change recorded (one that a restart has not settled yet)?
    pub fn pending(&self) -> Result<bool, StateError> {
        Ok(crate::state::exists(&self.state.layout().journal()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let journal = Journal::new(&state);
        assert_eq!(journal.read().unwrap(), None);
        let record = Record {
            change: Change::JoinControlPlane {
                step: JoinStep::Adding {
                    id: 7,
                    address: "10.0.0.2:19001".into(),
                },
                voters: vec!["10.0.0.1:19001".into()],
                contacted: "10.0.0.1:25000".into(),
            },
            started: 1_800_000_000,
        };
        journal.record(&record).unwrap();
        assert_eq!(journal.read().unwrap(), Some(record));
        let text = state.read_string(&state.layout().journal()).unwrap();
        assert!(
            text.contains("\"operation\": \"join-control-plane\""),
            "{text}"
        );
        assert!(text.contains("\"step\": \"adding\""), "{text}");
        assert_eq!(
            crate::state::mode_of(&state.layout().journal()).unwrap() & 0o777,
            0o600
        );
        journal.clear().unwrap();
        assert_eq!(journal.read().unwrap(), None);
    }

    #[test]
    fn a_garbled_journal_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state
            .write(&state.layout().journal(), b"{not json", 0o600)
            .unwrap();
        let err = Journal::new(&state).read().unwrap_err().to_string();
        assert!(err.contains("journal.json"), "{err}");
    }
}
