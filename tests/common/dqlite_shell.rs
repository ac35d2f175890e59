//! What the Debian `dqlite` shell (go-dqlite) prints for `.cluster` with `-f json`: the
//! independent view of a cluster's membership the tests compare ours with.

/// One member as the shell lists it (role codes: 0 voter, 1 stand-by, 2 spare).
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ShellNode {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Role")]
    pub role: u64,
}
