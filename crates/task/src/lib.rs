//! What a long-running operation (a backup, a restore) shares with whoever runs it: one
//! interface for its log lines and transfer counters ([`Progress`]), and one cancellation
//! token ([`Cancel`]).
//!
//! Backup and restore report through the same trait, so the CLI has one implementation
//! (plain lines, or an indicatif bar on a terminal) and one signal handler that sets the one
//! token. Library crates never print: they call [`Progress::log`] with a [`Level`], and the
//! caller decides how a line looks (vzdump's `INFO: ` prefix, qmrestore's plain lines).
//!
//! [`registry`] keeps every task on disk (id, state, start/end, log, transfer counters), so
//! backups, restores and prunes started from the command line, the scheduler or the web API
//! are listed and followed the same way; a caller tees its [`Progress`] into a
//! [`TaskFile`] with [`Tee`].
//!
//! Non-goals: formatting (each operation keeps its own tool's wording), the backup's own
//! `.log` beside the archive (the engine's).
//!
//! ```
//! use vmdump_task::{Cancel, Level, Progress, Transfer};
//!
//! struct Print;
//! impl Progress for Print {
//!     fn log(&self, level: Level, line: &str, _progress: bool) {
//!         println!("{}: {line}", level.prefix());
//!     }
//! }
//! let cancel = Cancel::new();
//! let watcher = cancel.clone();
//! Print.log(Level::Info, "starting", false);
//! cancel.cancel();
//! assert!(watcher.is_cancelled());
//! Print.update(&Transfer::default());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod registry;

pub use registry::{TaskDir, TaskFile, TaskInfo, TaskStatus, Tee, Upid};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An error and its causes in one line, `error: cause: cause`: how a failure reads in a task
/// log, a job summary or a notification, where `{:#}` chains are not at hand.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Severity of a log line (`INFO:`, `WARN:`, `ERROR:` in vzdump's task log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal progress.
    Info,
    /// Something worth a look; the operation still succeeds.
    Warn,
    /// The operation failed.
    Error,
}

impl Level {
    /// The prefix vzdump puts in front of the line.
    pub fn prefix(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Transfer counters of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer {
    /// Bytes processed so far (data and zeroes).
    pub transferred: u64,
    /// Of those, bytes that were all zero.
    pub zero: u64,
    /// Bytes in all (sum of the disk sizes).
    pub total: u64,
    /// Time since the data phase started.
    pub elapsed: Duration,
}

/// Receives log lines and transfer updates. Implementations must be cheap: they are called
/// on the operation's control path.
pub trait Progress: Send + Sync {
    /// One log line. `progress` marks the periodic percentage lines, which a terminal UI may
    /// show as a bar instead.
    fn log(&self, level: Level, line: &str, progress: bool);

    /// Transfer counters, about once a second (backup) or per percent (restore).
    fn update(&self, transfer: &Transfer) {
        let _ = transfer;
    }
}

/// A [`Progress`] that drops everything (library users that only want the result).
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn log(&self, _level: Level, _line: &str, _progress: bool) {}
}

/// A shared cancellation flag: set once (by a signal handler or a caller), seen by every
/// clone. Every long loop of an operation checks it and then cleans up.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token nobody has cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every holder to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A token-bucket rate limit (vzdump's `bwlimit`): at most `rate` bytes per second on
/// average, with bursts of at most a tenth of a second's worth (never less than 64 KiB).
/// Backup (the container archive stream) and restore (the archive input) pace their bytes
/// through it.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: u64,
    burst: u64,
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    /// A limit of `rate` bytes per second (0 counts as 1).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        let burst = (rate / 10).max(64 * 1024);
        RateLimit {
            rate,
            burst,
            tokens: burst as f64,
            last: std::time::Instant::now(),
        }
    }

    /// Waits (sleeping this thread) until some of `want` bytes may pass, and returns how many
    /// may: at least 1 (for `want` > 0), at most `want`. The caller then reports what it
    /// really moved with [`used`](Self::used).
    pub fn grant(&mut self, want: usize) -> usize {
        let now = std::time::Instant::now();
        let add = now.duration_since(self.last).as_secs_f64() * self.rate as f64;
        self.tokens = (self.tokens + add).min(self.burst as f64);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens).max(self.burst as f64 / 4.0) / self.rate as f64;
            std::thread::sleep(Duration::from_secs_f64(wait));
            self.tokens += wait * self.rate as f64;
            self.last = std::time::Instant::now();
        }
        (self.tokens as usize).clamp(1, want.max(1)).min(want)
    }

    /// `n` bytes went through.
    pub fn used(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_paces_bytes() {
        let mut limit = RateLimit::new(1024 * 1024);
        let start = std::time::Instant::now();
        let mut left = 600 * 1024;
        while left > 0 {
            let n = limit.grant(left.min(64 * 1024));
            assert!(n >= 1);
            limit.used(n);
            left -= n;
        }
        let secs = start.elapsed().as_secs_f64();
        // 600 KiB at 1 MiB/s with a 102 KiB initial burst: about 0.49 s.
        assert!(secs > 0.4 && secs < 1.5, "{secs}");
        assert_eq!(limit.grant(0), 0);
    }
}
