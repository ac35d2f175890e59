//! The recovery calls between survivors of a cluster that lost its quorum
//! (`/cluster/api/v2.0/recover/*` on :25000, signed with the cluster's key): what the
//! coordinator asks each survivor and what it answers. JSON, except the winner's data, which
//! travels as a bundle (`format::bundle`).

use serde::{Deserialize, Serialize};

pub const SURVEY: &str = "/cluster/api/v2.0/recover/survey";
pub const PREPARE: &str = "/cluster/api/v2.0/recover/prepare";
pub const EXPORT: &str = "/cluster/api/v2.0/recover/export";
pub const RECONFIGURE: &str = "/cluster/api/v2.0/recover/reconfigure";
pub const INSTALL: &str = "/cluster/api/v2.0/recover/install";
pub const START: &str = "/cluster/api/v2.0/recover/start";
pub const FINISH: &str = "/cluster/api/v2.0/recover/finish";
/// Not a recovery step: where a member's log ends, for the roles driver of a healthy cluster.
pub const PROGRESS: &str = "/cluster/api/v2.0/recover/progress";

/// The header carrying a request's proof: `<unix seconds>:<hex HMAC>` (see `util::mac`).
pub const PROOF_HEADER: &str = "x-cluster-agent-recovery";

/// A position in a raft log: the more recent log has the higher term, then the higher index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPosition {
    pub term: u64,
    pub index: u64,
}

/// The recovery a survivor records as under way on it (`var/cluster-agent/recovery.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// The run's id (random, chosen by the coordinator).
    pub run: String,
    /// The coordinator's :25000 address.
    pub coordinator: String,
    /// When this survivor joined the run (unix seconds).
    pub started: i64,
    /// The last step this survivor took for it.
    pub step: String,
    /// Where this survivor's backend was backed up for the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

/// Any call naming its run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    pub run: String,
    /// The coordinator's :25000 address.
    pub coordinator: String,
}

/// What a survivor says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurvivorReport {
    /// Its member's id and address (`info.yaml`).
    pub id: u64,
    pub address: String,
    /// `embedded` or `external` (k8s-dqlite hosts the member).
    pub datastore: String,
    /// Its member runs now.
    pub member_running: bool,
    /// The last entry of its log as it is on disk now (`None`: an empty log).
    pub last_entry: Option<LogPosition>,
    /// The recovery recorded as under way on it, finished or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryRecord>,
    /// The run holding this survivor now (its lease has not run out).
    #[serde(default)]
    pub held_by: Option<RunRequest>,
    /// The configuration its log ends with (empty: none could be read).
    #[serde(default)]
    pub configuration: Vec<RecoveredMember>,
}

/// The answer to `progress`: a member and where its log ends now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProgress {
    pub id: u64,
    pub address: String,
    pub last_entry: Option<LogPosition>,
}

/// The answer to `prepare`: the member is stopped and its data backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    pub backup: String,
    /// The last entry of its log, read with the member stopped.
    pub last_entry: Option<LogPosition>,
}

/// One member of the recovered configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredMember {
    pub id: u64,
    pub address: String,
    /// dqlite's role code: 0 voter, 1 stand-by, 2 spare.
    pub role: u64,
}

/// `reconfigure`: the configuration the winner's log gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconfigureRequest {
    pub run: String,
    pub coordinator: String,
    pub members: Vec<RecoveredMember>,
}

/// What a step answers when it has nothing else to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDone {
    pub message: String,
}
