//! The audit log: one JSON line per token use under `var/log/`, never the token itself
//! (only `tokens::token_id`, a short hash). Appended with O_APPEND, mode 0600.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    /// One append at a time, so lines never interleave.
    lock: Arc<Mutex<()>>,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> Self {
        AuditLog {
            path,
            lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one entry (on the blocking pool); failures are logged, never returned
    /// (auditing must not break joins).
    pub async fn record(&self, entry: &AuditEntry<'_>) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let (path, lock) = (self.path.clone(), self.lock.clone());
        let written = tokio::task::spawn_blocking(move || {
            let _guard = lock.lock();
            crate::state::append(&path, &line, crate::state::mode::SECRET)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write audit log"),
            Err(e) => tracing::warn!(error = %e, "cannot write audit log"),
        }
    }
}

/// RFC 3339 UTC timestamp.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
