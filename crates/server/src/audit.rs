//! The audit log: one JSON line per change (every changing API request, allowed or refused,
//! logins, token commands) appended to `<server dir>/audit.log` (mode 0600).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::StatusCode;

/// The audit log file.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Audit {
    /// The log `<dir>/audit.log` (opened on the first record).
    pub fn new(dir: &Path) -> Self {
        Audit {
            path: dir.join("audit.log"),
            file: Mutex::new(None),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry; a log that cannot be written is reported through `tracing`.
    pub fn record(
        &self,
        user: &str,
        addr: IpAddr,
        method: &str,
        path: &str,
        status: StatusCode,
        detail: Option<&str>,
    ) {
        let line = serde_json::json!({
            "time": chrono::Utc::now().timestamp(),
            "user": user,
            "addr": addr.to_string(),
            "method": method,
            "path": path,
            "status": status.as_u16(),
            "detail": detail,
        });
        self.append(&line);
    }

    /// Appends a prepared entry.
    pub fn append(&self, entry: &serde_json::Value) {
        let Ok(mut slot) = self.file.lock() else {
            return;
        };
        if slot.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(f) => *slot = Some(f),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot open the audit log");
                    return;
                }
            }
        }
        if let Some(f) = slot.as_mut() {
            if let Err(e) = f.write_all(format!("{entry}\n").as_bytes()) {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
                *slot = None;
            }
        }
    }
}
