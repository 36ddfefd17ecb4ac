use std::path::PathBuf;

/// Errors of disk access.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation on a disk failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done (`open`, `read`, `sync`, ...).
        what: &'static str,
        /// The disk.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A read or write at an offset failed.
    #[error("{what} {} at offset {offset}", path.display())]
    IoAt {
        /// `read` or `write`.
        what: &'static str,
        /// The disk.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A request reaches past the end of the disk.
    #[error("{} bytes at offset {offset} are past the end of {} ({size} bytes)", len, path.display())]
    OutOfRange {
        /// The disk.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// `qemu-img` or `qemu-storage-daemon` failed.
    #[error("{tool} on {}: {detail}", path.display())]
    Tool {
        /// The program.
        tool: &'static str,
        /// The image.
        path: PathBuf,
        /// Exit status and stderr, or what was wrong with its answer.
        detail: String,
    },
    /// A helper process could not be started or recorded.
    #[error("start {tool} for {}", path.display())]
    Launch {
        /// The program.
        tool: &'static str,
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmdump_launch::Error,
    },
    /// The storage daemon's monitor failed.
    #[error("qemu-storage-daemon monitor for {}", path.display())]
    Qmp {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmdump_qmp::Error,
    },
    /// NBD access to an image failed.
    #[error("nbd {what} {}", path.display())]
    Nbd {
        /// What was done (`connect to`, `read`, `write`, `block status of`, ...).
        what: &'static str,
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmdump_nbd::Error,
    },
    /// An NBD request at an offset failed.
    #[error("nbd {what} {} at offset {offset}", path.display())]
    NbdAt {
        /// `read` or `write`.
        what: &'static str,
        /// The image.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Why.
        #[source]
        source: vmdump_nbd::Error,
    },
    /// An archive could not be indexed.
    #[error("archive {}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why (boxed: the format error is large).
        #[source]
        source: Box<vmdump_vma::Error>,
    },
    /// A read of an archive's disk failed (a cluster a truncated archive lost, ...).
    #[error("read {device} of archive {} at offset {offset}", path.display())]
    ArchiveAt {
        /// The archive.
        path: PathBuf,
        /// Device name.
        device: String,
        /// Byte offset in the device.
        offset: u64,
        /// Why (boxed: the format error is large).
        #[source]
        source: Box<vmdump_vma::Error>,
    },
    /// A path vmdump cannot hand to QEMU (not UTF-8).
    #[error("path {} is not UTF-8", path.display())]
    Path {
        /// The path.
        path: PathBuf,
    },
}

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The disk or the file system failed.
    Io,
    /// A request past the end of the disk.
    OutOfBounds,
    /// A QEMU tool failed or could not be started.
    Tool,
    /// The caller's input cannot be used.
    Usage,
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. }
            | Error::IoAt { .. }
            | Error::Nbd { .. }
            | Error::NbdAt { .. }
            | Error::Archive { .. }
            | Error::ArchiveAt { .. } => ErrorKind::Io,
            Error::OutOfRange { .. } => ErrorKind::OutOfBounds,
            Error::Tool { .. } | Error::Launch { .. } | Error::Qmp { .. } => ErrorKind::Tool,
            Error::Path { .. } => ErrorKind::Usage,
        }
    }

    /// The kind of the file system error behind a failed operation on a file (`AlreadyExists`
    /// when [`crate::volume`] finds the name taken), if that is what failed.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::Io { source, .. } | Error::IoAt { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
