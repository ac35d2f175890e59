//! The audit log: one JSON line per token use under `var/log/`, never the token itself
//! (only `tokens::token_id`, a short hash). Appended with O_APPEND, mode 0600.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    pub time: String,
    pub source: IpAddr,
    pub route: &'a str,
    pub token_id: Option<String>,
    pub result: &'a str,
    pub status: u16,
}

pub struct AuditLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> Self {
        AuditLog {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one entry; failures are logged, never returned (auditing must not break joins).
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let _guard = self.lock.lock();
        use std::os::unix::fs::OpenOptionsExt;
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write audit log");
        }
    }
}

/// RFC 3339 UTC timestamp.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
