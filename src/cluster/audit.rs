//! The audit log: one JSON line per token event under `var/log/`, never the token itself
//! (only `tokens::token_id`, a short hash): every use and refusal on :25000 (`source` is
//! the peer's address, `route` the request's), and every token created or revoked on this
//! node (`source` is `local`, `route` the command). Appended with O_APPEND, mode 0600.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    pub time: String,
    /// The peer's address, or `local` for the node's own CLI.
    pub source: String,
    pub route: &'a str,
    pub token_id: Option<String>,
    pub result: &'a str,
    /// The HTTP status of a :25000 request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What a created token admits and how long it lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The `source` of events of the node's own CLI.
pub const LOCAL: &str = "local";

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
