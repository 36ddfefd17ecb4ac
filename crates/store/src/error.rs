//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong on a backup storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`read`, `remove`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The storage configuration is unusable.
    #[error("storage configuration")]
    Config(#[source] vmdump_config::Error),
    /// The storage cannot hold backups (`msg` reads on from the id: "does not allow ...").
    #[error("storage '{storage}' {msg}")]
    Storage {
        /// Storage id.
        storage: String,
        /// What is wrong.
        msg: String,
    },
    /// A volume id is not `<storage>:backup/<vzdump archive name>`.
    #[error("invalid backup volume id '{0}'")]
    InvalidVolid(String),
    /// No such backup.
    #[error("backup '{0}' does not exist")]
    NotFound(String),
    /// The backup is protected.
    #[error("backup '{0}' is protected")]
    Protected(String),
    /// A limit of the storage or the policy would be exceeded.
    #[error("{0}")]
    Limit(String),
    /// Notes must be one line of UTF-8 text.
    #[error("invalid notes: {0}")]
    Notes(String),
    /// Some removals of a prune failed (each is logged).
    #[error("error pruning backups - check log")]
    Prune {
        /// The files that could not be removed, with the reason.
        failed: Vec<(PathBuf, String)>,
    },
}

/// Coarse categories callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// File system trouble.
    Io,
    /// Bad input or configuration.
    Invalid,
    /// The backup does not exist.
    NotFound,
    /// Refused: protected backup or a limit.
    Refused,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Prune { .. } => ErrorKind::Io,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Protected(_) | Error::Limit(_) => ErrorKind::Refused,
            _ => ErrorKind::Invalid,
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
