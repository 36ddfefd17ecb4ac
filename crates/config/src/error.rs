//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong reading, validating or writing configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a file failed.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file (or creating its directory) failed.
    #[error("write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a configuration file is malformed or has an invalid value.
    #[error("{file}:{line}: {msg}")]
    Parse {
        /// The file (or a label such as `<string>` when parsed from memory).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A property string (`key=value,...`) is malformed.
    #[error("invalid property string '{text}': {msg}")]
    PropertyString {
        /// The offending text.
        text: String,
        /// What is wrong.
        msg: String,
    },
    /// A value given to a setter or a typed accessor is invalid.
    #[error("invalid value for '{key}': {msg}")]
    Value {
        /// The configuration key.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A volume id is not `<storage>:<volume>` or an absolute path, or its volume name does not
    /// fit the storage type.
    #[error("invalid volume '{volume}': {msg}")]
    Volume {
        /// The volume id.
        volume: String,
        /// What is wrong.
        msg: String,
    },
    /// A guest has no config file.
    #[error("VM {vmid} does not exist (no {})", path.display())]
    NoSuchGuest {
        /// The guest id.
        vmid: u32,
        /// The config file that is missing.
        path: PathBuf,
    },
    /// A storage id is not defined in storage.cfg.
    #[error("storage '{0}' does not exist")]
    NoSuchStorage(String),
    /// The storage cannot do what was asked (no path, wrong content type, disabled...).
    #[error("storage '{storage}': {msg}")]
    Storage {
        /// The storage id.
        storage: String,
        /// What is wrong.
        msg: String,
    },
}

/// Coarse categories callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// File system trouble.
    Io,
    /// Malformed or invalid configuration.
    Invalid,
    /// A referenced storage or volume does not exist or does not fit.
    NotFound,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Read { .. } | Error::Write { .. } => ErrorKind::Io,
            Error::NoSuchStorage(_) | Error::NoSuchGuest { .. } => ErrorKind::NotFound,
            _ => ErrorKind::Invalid,
        }
    }

    pub(crate) fn parse(file: &str, line: usize, msg: impl Into<String>) -> Self {
        Error::Parse {
            file: file.to_string(),
            line,
            msg: msg.into(),
        }
    }

    pub(crate) fn value(key: &str, msg: impl Into<String>) -> Self {
        Error::Value {
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    /// Re-anchor a value error at a file position (used when validating while parsing).
    pub(crate) fn at(self, file: &str, line: usize) -> Self {
        match self {
            Error::Parse { .. } | Error::Read { .. } | Error::Write { .. } => self,
            other => Error::parse(file, line, other.to_string()),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
