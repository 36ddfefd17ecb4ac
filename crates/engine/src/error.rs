//! The engine's error type.

use std::path::PathBuf;

/// Everything that can make a guest's backup fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad option value (command line or `vzdump.conf`).
    #[error("option '{key}': {detail}")]
    Option {
        /// The option name.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The guest's configuration or the storage configuration is unusable.
    #[error("{path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where known.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what} '{path}'")]
    File {
        /// What we were doing (`create archive`, `rename`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the archive failed (disk full, I/O error, compressor error).
    #[error("writing the archive failed: {detail}")]
    Archive {
        /// The first error the archive side hit, including the device and cluster.
        detail: String,
    },
    /// Data from QEMU did not fit the disks it claimed to back up.
    #[error("device '{device}': {detail}")]
    Device {
        /// The device (`drive-scsi0`).
        device: String,
        /// What was wrong (offset, length, cluster).
        detail: String,
    },
    /// A QMP command or event wait failed.
    #[error("qmp {step}")]
    Qmp {
        /// The step of the backup (`blockdev-add vmdump-tgt-drive-scsi0`, ...).
        step: String,
        /// The underlying error.
        #[source]
        source: vmdump_qmp::Error,
    },
    /// A block job reported an error or was cancelled.
    #[error("backup job '{job}' failed: {detail}")]
    Job {
        /// The job id.
        job: String,
        /// QEMU's message.
        detail: String,
    },
    /// The NBD target's server failed (socket, protocol).
    #[error("nbd target: {detail}")]
    Nbd {
        /// What went wrong.
        detail: String,
    },
    /// Starting or stopping QEMU failed.
    #[error("qemu: {detail}")]
    Qemu {
        /// What went wrong.
        detail: String,
    },
    /// The feature is not implemented.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// The backup was interrupted by a signal or a cancel request.
    #[error("interrupted by signal")]
    Interrupted,
    /// The node-global backup lock could not be taken.
    #[error("can't acquire lock '{}' {detail}", path.display())]
    Lock {
        /// The lock file.
        path: std::path::PathBuf,
        /// `- got timeout` or `(wait = 0)`, as vzdump words it.
        detail: &'static str,
    },
}

impl Error {
    pub(crate) fn option(key: &str, detail: impl Into<String>) -> Self {
        Error::Option {
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn qmp(step: impl Into<String>, source: vmdump_qmp::Error) -> Self {
        Error::Qmp {
            step: step.into(),
            source,
        }
    }

    pub(crate) fn file(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::File {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
