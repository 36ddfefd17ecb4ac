//! The task log of one guest's backup: every line goes to the [`Progress`] receiver and, with
//! a `YYYY-MM-DD HH:MM:SS` prefix, into the `.log` file next to the archive.

use std::fmt::Display;
use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Local};

use vmdump_task::{Level, Progress};

/// How the task log writes times.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Log sink for one guest.
pub struct TaskLog<'a> {
    progress: &'a dyn Progress,
    file: Mutex<Sink>,
}

/// Where file lines go: kept until the `.log` is attached (its name is claimed only after
/// the plan succeeded), then written, then nowhere after a write error or `close`.
enum Sink {
    Pending(Vec<String>),
    Open(File),
    Closed,
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
            file: Mutex::new(Sink::Pending(Vec::new())),
        }
    }

    /// Also writes every line, from the first, into `file` (the `.log` beside the archive).
    pub fn attach(&self, mut file: File) {
        if let Ok(mut slot) = self.file.lock() {
            if let Sink::Pending(lines) = &*slot {
                let ok = lines.iter().all(|l| file.write_all(l.as_bytes()).is_ok());
                *slot = if ok { Sink::Open(file) } else { Sink::Closed };
            }
        }
    }

    /// Logs one line.
    pub fn line(&self, level: Level, text: &str, progress: bool) {
        self.progress.log(level, text, progress);
        if let Ok(mut slot) = self.file.lock() {
            let now = Local::now().format(TIME_FORMAT);
            let line = format!("{now} {}: {text}\n", level.prefix());
            match &mut *slot {
                Sink::Pending(lines) => lines.push(line),
                Sink::Open(f) => {
                    if f.write_all(line.as_bytes()).is_err() {
                        // A full disk must not stop the backup's cleanup; the error shows
                        // elsewhere.
                        *slot = Sink::Closed;
                    }
                }
                Sink::Closed => {}
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

    /// vzdump's first lines of a guest's backup: `Starting Backup of VM <vmid> (<vmtype>)` and
    /// the start time.
    pub fn started(&self, vmid: impl Display, vmtype: &str, at: DateTime<Local>) {
        self.info(&format!("Starting Backup of VM {vmid} ({vmtype})"));
        self.info(&format!("Backup started at {}", at.format(TIME_FORMAT)));
    }

    /// vzdump's last lines of a backup that succeeded after `duration`.
    pub fn finished(&self, vmid: impl Display, duration: Duration) {
        self.info(&format!(
            "Finished Backup of VM {vmid} ({})",
            crate::progress::format_hms(duration)
        ));
        self.info(&format!(
            "Backup finished at {}",
            Local::now().format(TIME_FORMAT)
        ));
    }

    /// vzdump's last lines of a backup that failed with `e`.
    pub fn failed(&self, vmid: impl Display, e: &dyn std::error::Error) {
        self.error(&format!(
            "Backup of VM {vmid} failed - {}",
            vmdump_task::one_line(e)
        ));
        self.info(&format!("Failed at {}", Local::now().format(TIME_FORMAT)));
    }

    /// The receiver of transfer updates.
    pub fn progress(&self) -> &dyn Progress {
        self.progress
    }

    /// Flushes and closes the file.
    pub fn close(&self) {
        if let Ok(mut slot) = self.file.lock() {
            if let Sink::Open(f) = std::mem::replace(&mut *slot, Sink::Closed) {
                let _ = f.sync_all();
            }
        }
    }
}
