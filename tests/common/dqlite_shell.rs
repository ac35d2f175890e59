//! The Debian `dqlite` shell (go-dqlite): the independent view of a cluster's membership
//! (`.cluster`) and data the tests compare ours with.

use std::path::Path;
use std::process::{Command, Stdio};

pub const SHELL: &str = "/usr/bin/dqlite";

/// Runs `command` (SQL or a dot command) on database `k8s` through `server`, with the
/// cluster certificate of `backend`, for at most `secs` (the 1.11 shell hangs forever when
/// no member answers); its JSON output, or `None` if it failed.
pub fn shell(backend: &Path, server: &str, command: &str, secs: u32) -> Option<String> {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(SHELL)
        .args(["-s", server, "-c"])
        .arg(backend.join("cluster.crt"))
        .arg("-k")
        .arg(backend.join("cluster.key"))
        .args(["-f", "json", "k8s", command])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `.cluster` as the shell lists it, asking `server`.
pub fn shell_cluster(backend: &Path, server: &str) -> Option<Vec<ShellNode>> {
    serde_json::from_str(&shell(backend, server, ".cluster", 10)?).ok()
}

/// `(address, role word)` of every member the shell lists, sorted (`voter`, `standby`,
/// `spare`: the words of our `status`).
pub fn shell_roles(backend: &Path, server: &str) -> Option<Vec<(String, String)>> {
    let mut list: Vec<(String, String)> = shell_cluster(backend, server)?
        .into_iter()
        .map(|n| {
            let role = match n.role {
                0 => "voter",
                1 => "standby",
                _ => "spare",
            };
            (n.address, role.to_string())
        })
        .collect();
    list.sort();
    Some(list)
}

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

/// Creates table `t` and writes `rows` rows (0, 1, …) into it, in statements of 10 rows, through
/// `servers` (comma-separated).
pub fn write_rows(cert_dir: &Path, servers: &str, rows: usize) {
    shell(cert_dir, servers, "CREATE TABLE t (n INT)", 10).expect("CREATE TABLE");
    for chunk in 0..rows.div_ceil(10) {
        let values: Vec<String> = (chunk * 10..(chunk * 10 + 10).min(rows))
            .map(|i| format!("({i})"))
            .collect();
        let sql = format!("INSERT INTO t VALUES {}", values.join(","));
        shell(cert_dir, servers, &sql, 10).expect("INSERT");
    }
}

/// `SELECT count(*) FROM t` through `servers`, if it answers.
pub fn count_rows(cert_dir: &Path, servers: &str) -> Option<usize> {
    let out = shell(cert_dir, servers, "SELECT count(*) FROM t", 5)?;
    out.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}
