//! The one error type of this crate.

use std::path::PathBuf;

/// Broad category of an [`Error`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The archive is damaged, truncated or inconsistent with its config.
    Corrupt,
    /// Reading the archive or writing a target failed (disk full, permissions, tool failure).
    Io,
    /// The request conflicts with the current state (VM exists, VM running, bad storage).
    Refused,
    /// The restore was interrupted (signal).
    Interrupted,
}

/// Everything that can go wrong during a restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The archive stream is not a valid VMA archive.
    #[error("archive")]
    Archive(#[source] vmdump_vma::Error),
    /// Reading the (possibly compressed) archive input failed.
    #[error("read archive input{}", .what.as_deref().map(|w| format!(" ({w})")).unwrap_or_default())]
    Input {
        /// What was being read (decompressor name, file).
        what: Option<String>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The decompressor failed.
    #[error("decompressor '{tool}' failed: {detail}")]
    Decompress {
        /// The tool or codec.
        tool: String,
        /// Exit status or message.
        detail: String,
    },
    /// The archive has no `qemu-server.conf`.
    #[error("archive contains no qemu-server.conf (not a VM backup?)")]
    NoConfig,
    /// The archived config or a local config could not be parsed or written.
    #[error("config")]
    Config(#[source] vmdump_config::Error),
    /// A device of the archive has no `#qmdump#map` line, or a map line names no device.
    #[error("{0}")]
    Mapping(String),
    /// The target storage cannot be used.
    #[error("storage '{storage}': {msg}")]
    Storage {
        /// Storage id.
        storage: String,
        /// What is wrong.
        msg: String,
    },
    /// A VM config already exists and `force` was not given.
    #[error("unable to restore VM {vmid} - config file already exists (use --force to overwrite)")]
    Exists {
        /// The VM id.
        vmid: u32,
    },
    /// The VM to overwrite is running.
    #[error("unable to restore VM {vmid} - VM is running")]
    Running {
        /// The VM id.
        vmid: u32,
    },
    /// The VM to overwrite is protected.
    #[error("unable to restore VM {vmid} - VM is protected (protection: 1)")]
    Protected {
        /// The VM id.
        vmid: u32,
    },
    /// Creating, writing or removing a volume failed.
    #[error("{what} '{}'", path.display())]
    Volume {
        /// What was done (`create volume`, `write to`, ...).
        what: &'static str,
        /// The volume's path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a device's data failed at an offset.
    #[error("write device '{device}' at offset {offset}")]
    Write {
        /// Archive device name.
        device: String,
        /// Byte offset in the device.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a device's new volume failed (its disk says where and why).
    #[error("{what} device '{device}'")]
    Disk {
        /// `open` or `write`.
        what: &'static str,
        /// Archive device name.
        device: String,
        /// The underlying error (boxed: it is large).
        #[source]
        source: Box<vmdump_blockdev::Error>,
    },
    /// The run's session directory (records of new volumes and helpers) could not be
    /// written.
    #[error("run session")]
    Session(#[from] vmdump_launch::Error),
    /// Creating or removing a volume's files (image, btrfs subvolume) failed.
    #[error("{what} volume '{volume}'")]
    VolumeFiles {
        /// `create` or `remove`.
        what: &'static str,
        /// The volume id.
        volume: String,
        /// The underlying error (boxed: it is large).
        #[source]
        source: Box<vmdump_blockdev::Error>,
    },
    /// The VM's lock file could not be taken (run directory trouble).
    #[error("take the VM lock in '{}'", path.display())]
    LockFile {
        /// The run directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<vmdump_guest::Error>,
    },
    /// Another restore or command holds the VM's lock.
    #[error("VM {vmid} is locked by another vmdump operation")]
    Locked {
        /// The VM id.
        vmid: u32,
    },
    /// The VM to overwrite has a `lock:` in its config (a backup runs, ...).
    #[error("unable to restore VM {vmid} - VM is locked ({what})")]
    ConfigLocked {
        /// The VM id.
        vmid: u32,
        /// The lock's value (`backup`, `migrate`, ...).
        what: String,
    },
    /// The restore was interrupted by a signal.
    #[error("aborted by signal")]
    Interrupted,
    /// A container archive is invalid or has a member that was refused.
    #[error("container archive")]
    Tar(#[source] vmdump_tar::Error),
    /// The archive has no `./etc/vzdump/pct.conf` first (not a container backup).
    #[error("archive contains no ./etc/vzdump/pct.conf (not a container backup?)")]
    NoCtConfig,
    /// The container runtime or its volumes failed.
    #[error(transparent)]
    Container(#[from] vmdump_lxc::Error),
    /// A worker thread panicked (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// Live-restore: the archive could not be opened for random access.
    #[error("open archive '{}'", path.display())]
    Access {
        /// The archive.
        path: PathBuf,
        /// The underlying error (boxed: it is large).
        #[source]
        source: Box<vmdump_blockdev::Error>,
    },
    /// Live-restore: the archive lost clusters at its end; the guest would read errors.
    #[error("archive '{}' is truncated (at offset {at} of the uncompressed stream): live-restore needs every cluster", path.display())]
    Truncated {
        /// The archive.
        path: PathBuf,
        /// Where it ends.
        at: u64,
    },
    /// Live-restore cannot restore this archive or disk.
    #[error("live-restore: {0}")]
    LiveUnsupported(String),
    /// Live-restore: the archive's NBD server failed.
    #[error("serve the archive over NBD")]
    Nbd(#[source] vmdump_nbd::Error),
    /// Live-restore: the VM runtime failed (start, stop).
    #[error("VM runtime")]
    Guest(#[source] Box<vmdump_guest::Error>),
    /// Live-restore: a QMP command to the restored VM failed.
    #[error("QMP '{step}'")]
    Qmp {
        /// The command.
        step: String,
        /// The underlying error.
        #[source]
        source: vmdump_qmp::Error,
    },
    /// Live-restore: the copy of a disk failed.
    #[error("copy of '{disk}' failed: {msg}")]
    Mirror {
        /// The config key (`scsi0`).
        disk: String,
        /// QEMU's message.
        msg: String,
    },
    /// Live-restore failed after the VM started: it was stopped and everything was kept.
    #[error(
        "live-restore of VM {vmid} failed; the VM was stopped and nothing was removed: {kept}"
    )]
    LiveFailed {
        /// The VM id.
        vmid: u32,
        /// What was kept, and where the guest's writes are.
        kept: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Archive(e) => match e.kind() {
                vmdump_vma::ErrorKind::Io => ErrorKind::Io,
                _ => ErrorKind::Corrupt,
            },
            Error::NoConfig | Error::Mapping(_) => ErrorKind::Corrupt,
            Error::Input { .. }
            | Error::Decompress { .. }
            | Error::Volume { .. }
            | Error::Write { .. }
            | Error::Disk { .. }
            | Error::Session(_)
            | Error::VolumeFiles { .. }
            | Error::LockFile { .. }
            | Error::Internal(_) => ErrorKind::Io,
            Error::Config(_)
            | Error::Storage { .. }
            | Error::Exists { .. }
            | Error::Running { .. }
            | Error::Protected { .. }
            | Error::Locked { .. }
            | Error::ConfigLocked { .. } => ErrorKind::Refused,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::Tar(e) => match e.kind() {
                vmdump_tar::ErrorKind::Io => ErrorKind::Io,
                vmdump_tar::ErrorKind::Refused => ErrorKind::Refused,
                _ => ErrorKind::Corrupt,
            },
            Error::NoCtConfig => ErrorKind::Corrupt,
            Error::Container(_) => ErrorKind::Io,
            Error::Access { .. } => ErrorKind::Io,
            Error::Truncated { .. } => ErrorKind::Corrupt,
            Error::LiveUnsupported(_) => ErrorKind::Refused,
            Error::Nbd(_) | Error::Guest(_) | Error::Qmp { .. } | Error::Mirror { .. } => {
                ErrorKind::Io
            }
            Error::LiveFailed { source, .. } => source.kind(),
        }
    }
}

impl From<vmdump_vma::Error> for Error {
    fn from(e: vmdump_vma::Error) -> Self {
        // An i/o error below the VMA reader is usually the decompressor or the input; keep
        // it as an archive error so the offset stays in the message.
        Error::Archive(e)
    }
}

impl From<vmdump_config::Error> for Error {
    fn from(e: vmdump_config::Error) -> Self {
        Error::Config(e)
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
