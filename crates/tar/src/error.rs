//! The crate's error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely, for callers that branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Reading or writing the stream or a file failed.
    Io,
    /// The archive is not a valid tar stream.
    Corrupt,
    /// A valid tar feature this crate does not handle.
    Unsupported,
    /// A member was refused for safety (absolute name, `..`, symlink escape, device node).
    Refused,
}

/// An archive or filesystem error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The archive stream failed.
    #[error("{what}")]
    Stream {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A filesystem operation on `path` failed.
    #[error("{op} '{}'", path.display())]
    File {
        /// The operation.
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A header or extended record at `offset` is invalid.
    #[error("corrupt archive at byte {offset}: {msg}")]
    Corrupt {
        /// Offset of the header in the (uncompressed) stream.
        offset: u64,
        /// What is wrong.
        msg: String,
    },
    /// A tar feature this crate does not handle.
    #[error("unsupported archive member at byte {offset}: {msg}")]
    Unsupported {
        /// Offset of the header.
        offset: u64,
        /// What it is.
        msg: String,
    },
    /// A member refused for safety; nothing was written for it.
    #[error("refusing archive member '{name}': {msg}")]
    Refused {
        /// The member name as stored.
        name: String,
        /// Why.
        msg: String,
    },
    /// A value does not fit the format.
    #[error("cannot store '{name}': {msg}")]
    TooLarge {
        /// The member name.
        name: String,
        /// What does not fit.
        msg: String,
    },
}

impl Error {
    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Stream { .. } | Error::File { .. } => ErrorKind::Io,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Unsupported { .. } | Error::TooLarge { .. } => ErrorKind::Unsupported,
            Error::Refused { .. } => ErrorKind::Refused,
        }
    }

    pub(crate) fn file(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn refused(name: &[u8], msg: impl Into<String>) -> Self {
        Error::Refused {
            name: String::from_utf8_lossy(name).into_owned(),
            msg: msg.into(),
        }
    }
}
