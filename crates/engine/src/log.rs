//! The task log of one guest's backup: every line goes to the [`Progress`] receiver and, with
//! a `YYYY-MM-DD HH:MM:SS` prefix, into the `.log` file next to the archive.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::progress::{Level, Progress};

/// Log sink for one guest.
pub struct TaskLog<'a> {
    progress: &'a dyn Progress,
    file: Mutex<Option<File>>,
}

impl std::fmt::Debug for TaskLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLog").finish_non_exhaustive()
    }
}

impl<'a> TaskLog<'a> {
    /// A log that only forwards to `progress`.
    pub fn new(progress: &'a dyn Progress) -> Self {
        Self {
            progress,
            file: Mutex::new(None),
        }
    }

    /// Also writes every line into `path` (created or truncated).
    pub fn open_file(&self, path: &Path) -> std::io::Result<()> {
        let f = File::create(path)?;
        if let Ok(mut slot) = self.file.lock() {
            *slot = Some(f);
        }
        Ok(())
    }

    /// Logs one line.
    pub fn line(&self, level: Level, text: &str, progress: bool) {
        self.progress.log(level, text, progress);
        if let Ok(mut slot) = self.file.lock() {
            if let Some(f) = slot.as_mut() {
                let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
                if writeln!(f, "{now} {}: {text}", level.prefix()).is_err() {
                    // A full disk must not stop the backup's cleanup; the error shows elsewhere.
                    *slot = None;
                }
            }
        }
    }

    /// `INFO:` line.
    pub fn info(&self, text: &str) {
        self.line(Level::Info, text, false);
    }

    /// `WARN:` line.
    pub fn warn(&self, text: &str) {
        self.line(Level::Warn, text, false);
    }

    /// `ERROR:` line.
    pub fn error(&self, text: &str) {
        self.line(Level::Error, text, false);
    }

    /// The receiver of transfer updates.
    pub fn progress(&self) -> &dyn Progress {
        self.progress
    }

    /// Flushes and closes the file.
    pub fn close(&self) {
        if let Ok(mut slot) = self.file.lock() {
            if let Some(f) = slot.take() {
                let _ = f.sync_all();
            }
        }
    }
}
