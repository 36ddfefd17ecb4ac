//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong managing or running jobs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file is invalid.
    #[error("configuration")]
    Config(#[from] vmdump_config::Error),
    /// A job's schedule is not a calendar event.
    #[error("job '{job}': schedule")]
    Schedule {
        /// Job id.
        job: String,
        /// The parse error.
        #[source]
        source: vmdump_schedule::Error,
    },
    /// No job with this id.
    #[error("job '{0}' does not exist")]
    NoSuchJob(String),
    /// The backup storage.
    #[error("backup storage")]
    Store(#[from] vmdump_store::Error),
    /// The backup engine (before any guest ran).
    #[error("backup job")]
    Engine(#[from] vmdump_engine::Error),
    /// A state file or lock.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another scheduler already runs on this host.
    #[error("another scheduler holds {0}")]
    SchedulerRunning(PathBuf),
    /// Delivering a notification failed (logged; never fails a backup).
    #[error("notification target '{target}': {msg}")]
    Notify {
        /// Target name.
        target: String,
        /// What went wrong.
        msg: String,
    },
}

/// Coarse categories callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad configuration or input.
    Invalid,
    /// Not found.
    NotFound,
    /// File system, engine or delivery trouble.
    Io,
    /// Refused because something else holds a lock.
    Busy,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::Schedule { .. } => ErrorKind::Invalid,
            Error::NoSuchJob(_) => ErrorKind::NotFound,
            Error::SchedulerRunning(_) => ErrorKind::Busy,
            _ => ErrorKind::Io,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
