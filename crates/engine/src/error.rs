//! The engine's error type, and [`Failure`]: what the archive side (NBD target, writer
//! thread) records when it fails, so the control task can report it with its source.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can make a guest's backup fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file (guest config, storage.cfg, vzdump.conf) is missing or invalid,
    /// or an option value is (the option types live in `vmdump-config`).
    #[error(transparent)]
    Config(#[from] vmdump_config::Error),
    /// A combination of options that cannot work, or an invalid `notes-template`.
    #[error("option '{key}': {reason}")]
    Option {
        /// The option name.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The backup storage cannot take backups.
    #[error("storage '{storage}' does not allow content 'backup'")]
    NoBackupContent {
        /// The storage id.
        storage: String,
    },
    /// The guest's config carries a `lock:` of another operation.
    #[error("VM is locked ({lock})")]
    GuestLocked {
        /// The guest id.
        vmid: u32,
        /// The lock's value (`migrate`, `snapshot`, ...).
        lock: String,
    },
    /// The hook script failed (non-zero exit, or could not run).
    #[error("command '{command}' failed: {detail}")]
    Hook {
        /// The command line (`<script> <phase> [<mode> <vmid>]`).
        command: String,
        /// `exit code N` or why it did not run.
        detail: String,
    },
    /// The work after the archive (pruning) failed; the archive stays.
    #[error("{0}")]
    AfterArchive(String),
    /// The guest did not reach the state the backup mode needs (it did not power off in time
    /// in stop mode, ...); what was done to it has been undone.
    #[error("{0}")]
    Mode(String),
    /// A disk has no volume to read.
    #[error("device '{device}' has no volume")]
    NoVolume {
        /// The device (`drive-scsi0`).
        device: String,
    },
    /// A file operation failed.
    #[error("{what} '{}'", path.display())]
    File {
        /// What we were doing (`create archive`, `rename`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The final name of the archive is taken (by a backup of the same second that another
    /// process finished first): nothing is replaced.
    #[error("'{}' already exists; not replaced", path.display())]
    NameTaken {
        /// The final archive name.
        path: PathBuf,
    },
    /// Writing the archive failed, or data from QEMU did not fit the disks.
    #[error("{}", .0.summary())]
    Transfer(#[source] Arc<Failure>),
    /// Building the archive header (configs, devices) failed.
    #[error("archive header")]
    Header(#[source] vmdump_vma::Error),
    /// A cluster never arrived although QEMU reported the job done.
    #[error("device '{device}': cluster {cluster} never arrived from QEMU")]
    Incomplete {
        /// The device (`drive-scsi0`).
        device: String,
        /// The first missing cluster.
        cluster: u64,
    },
    /// QEMU has no usable block node for a disk.
    #[error("device '{device}': QEMU reports node '{node}' with size {size}")]
    NoBlockNode {
        /// The device (`drive-scsi0`).
        device: String,
        /// The node name found (empty when none).
        node: String,
        /// The size QEMU reports.
        size: u64,
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
    /// A block job reported an error, vanished, or did not end after a cancel.
    #[error("backup job '{job}' failed: {message}")]
    Job {
        /// The job id(s).
        job: String,
        /// QEMU's message (QEMU reports job errors as text).
        message: String,
    },
    /// The NBD target could not listen.
    #[error("nbd target: cannot listen on '{}'", path.display())]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: vmdump_nbd::Error,
    },
    /// QEMU did not close the NBD connections after `blockdev-del`.
    #[error("nbd target: QEMU did not close the connections")]
    NotClosed,
    /// QEMU went away during the backup.
    #[error("QEMU exited during the backup")]
    QemuExited,
    /// The VM runtime (run directory, QEMU process) failed.
    #[error(transparent)]
    Guest(#[from] vmdump_guest::Error),
    /// The run's session directory (records of helper processes) could not be written.
    #[error("run session")]
    Session(#[from] vmdump_launch::Error),
    /// Reading a disk's point-in-time view through its fleecing export failed. QEMU breaks
    /// the snapshot (`on-cbw-error=break-snapshot`) when the fleecing image fails or fills
    /// up, so the backup fails there and the guest's writes go on.
    #[error("device '{device}': reading the fleecing snapshot failed (a full or failing fleecing image breaks it)")]
    Fleecing {
        /// The device (`drive-scsi0`).
        device: String,
        /// The underlying error (boxed: it is large).
        #[source]
        source: Box<vmdump_blockdev::Error>,
    },
    /// A fleecing image could not be created or removed.
    #[error("{what} fleecing image '{volume}'")]
    FleecingImage {
        /// `create` or `remove`.
        what: &'static str,
        /// The volume id.
        volume: String,
        /// The underlying error (boxed: it is large).
        #[source]
        source: Box<vmdump_blockdev::Error>,
    },
    /// The feature is not implemented.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    /// The container runtime (LXC, mounts, snapshots) failed.
    #[error(transparent)]
    Container(#[from] vmdump_lxc::Error),
    /// Writing a container's tar archive failed.
    #[error("tar archive")]
    Archive(#[from] vmdump_tar::Error),
    /// A copy step of a container backup (rsync) failed.
    #[error("{what} failed: {detail}")]
    Sync {
        /// Which step.
        what: &'static str,
        /// How it ended and its last error lines.
        detail: String,
    },
    /// A VM without any disk to back up.
    #[error("VM {vmid} has no disk to back up")]
    NoDisks {
        /// The guest id.
        vmid: u32,
    },
    /// The backup was cancelled (signal or a caller).
    #[error("aborted by signal")]
    Interrupted,
    /// The node-global backup lock could not be taken.
    #[error("can't acquire lock '{}' {detail}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// `- got timeout` or `(wait = 0)`, as vzdump words it.
        detail: &'static str,
    },
}

/// What the archive side of a running backup hit first (recorded by the NBD target or the
/// writer thread while the control task runs; see `pipeline::Shared`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Writing a cluster into the archive failed.
    #[error("device '{device}' cluster {cluster}")]
    Write {
        /// The device.
        device: String,
        /// The cluster number.
        cluster: u64,
        /// The VMA writer's error (I/O errors of the file and compressor inside).
        #[source]
        source: vmdump_vma::Error,
    },
    /// Finishing the VMA stream failed.
    #[error("finishing the archive")]
    Finish(#[source] vmdump_vma::Error),
    /// Writing out the archive file's last buffered bytes, or its fsync, failed.
    #[error("writing out the archive '{target}'")]
    WriteOut {
        /// The archive file's path, or "standard output".
        target: String,
        /// The write's or the fsync's error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU wrote past the end of a disk.
    #[error("device '{device}': write of {len} bytes at offset {offset:#x} goes past the end of the disk ({size} bytes)")]
    OutOfRange {
        /// The device.
        device: String,
        /// Start of the write.
        offset: u64,
        /// Its length.
        len: u64,
        /// The disk size.
        size: u64,
    },
    /// QEMU's NBD connection for a disk ended before its `DISC`.
    #[error("nbd connection for '{device}' broke before the backup finished ({reason})")]
    Disconnected {
        /// The device.
        device: String,
        /// How it ended.
        reason: String,
    },
    /// The writer thread is gone (it failed or could not start).
    #[error("the archive writer stopped")]
    WriterStopped,
    /// QEMU's job reports more clusters copied than arrived at the target.
    #[error("device '{device}': the backup job copied {copied} clusters but {arrived} arrived")]
    Lost {
        /// The device.
        device: String,
        /// Clusters the job copied (its progress).
        copied: u64,
        /// Clusters that arrived.
        arrived: u64,
    },
}

impl Failure {
    /// What kind of failure this is, in a few words (the source chain says the rest).
    pub fn summary(&self) -> &'static str {
        match self {
            Failure::Write { .. }
            | Failure::Finish(_)
            | Failure::WriteOut { .. }
            | Failure::WriterStopped => "writing the archive failed",
            Failure::OutOfRange { .. } => "QEMU sent data that does not fit the disk",
            Failure::Disconnected { .. } => "the NBD connection from QEMU broke",
            Failure::Lost { .. } => "data QEMU copied did not reach the archive",
        }
    }
}

/// Coarse categories callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad configuration or options: fix the input and retry.
    Config,
    /// Another operation holds a lock (node-global lock, guest `lock:`).
    Busy,
    /// File-system trouble (archive, log, disk full).
    Io,
    /// QEMU, its jobs or the NBD connection to it failed.
    Qemu,
    /// Not implemented.
    Unsupported,
    /// Cancelled by a signal or a caller.
    Interrupted,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(e) if e.kind() == vmdump_config::ErrorKind::Io => ErrorKind::Io,
            Error::Config(_)
            | Error::Option { .. }
            | Error::NoBackupContent { .. }
            | Error::NoVolume { .. }
            | Error::NoDisks { .. } => ErrorKind::Config,
            Error::Hook { .. } | Error::Mode(_) => ErrorKind::Qemu,
            Error::AfterArchive(_) => ErrorKind::Io,
            Error::GuestLocked { .. } | Error::Lock { .. } => ErrorKind::Busy,
            Error::File { .. } | Error::NameTaken { .. } | Error::Header(_) | Error::Session(_) => {
                ErrorKind::Io
            }
            Error::Transfer(f) => match **f {
                Failure::Write { .. }
                | Failure::Finish(_)
                | Failure::WriteOut { .. }
                | Failure::WriterStopped => ErrorKind::Io,
                _ => ErrorKind::Qemu,
            },
            Error::Incomplete { .. }
            | Error::NoBlockNode { .. }
            | Error::Qmp { .. }
            | Error::Job { .. }
            | Error::Listen { .. }
            | Error::NotClosed
            | Error::QemuExited
            | Error::Fleecing { .. }
            | Error::Guest(_) => ErrorKind::Qemu,
            Error::FleecingImage { .. } => ErrorKind::Io,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Container(e) => match e {
                vmdump_lxc::Error::Config { .. }
                | vmdump_lxc::Error::NoSuchContainer { .. }
                | vmdump_lxc::Error::Unsupported { .. } => ErrorKind::Config,
                vmdump_lxc::Error::Locked { .. } | vmdump_lxc::Error::Busy { .. } => {
                    ErrorKind::Busy
                }
                _ => ErrorKind::Io,
            },
            Error::Archive(e) if e.kind() == vmdump_tar::ErrorKind::Io => ErrorKind::Io,
            Error::Archive(_) => ErrorKind::Io,
            Error::Sync { .. } => ErrorKind::Io,
            Error::Interrupted => ErrorKind::Interrupted,
        }
    }

    pub(crate) fn option(key: &'static str, reason: impl Into<String>) -> Self {
        Error::Option {
            key,
            reason: reason.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages_keep_the_source() {
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let e = Error::Transfer(Arc::new(Failure::Write {
            device: "drive-scsi0".into(),
            cluster: 7,
            source: vmdump_vma::Error::Io {
                offset: 65536,
                source: io,
            },
        }));
        assert_eq!(e.kind(), ErrorKind::Io);
        let text = vmdump_task::one_line(&e);
        assert!(
            text.starts_with("writing the archive failed: device 'drive-scsi0' cluster 7: "),
            "{text}"
        );
        let e = Error::Transfer(Arc::new(Failure::Disconnected {
            device: "drive-scsi0".into(),
            reason: "Eof".into(),
        }));
        assert_eq!(e.kind(), ErrorKind::Qemu);
        assert_eq!(Error::Interrupted.kind(), ErrorKind::Interrupted);
        assert_eq!(Error::Interrupted.to_string(), "aborted by signal");
        let e = Error::from(vmdump_config::Error::NoSuchGuest {
            vmid: 100,
            path: "/x/100.conf".into(),
        });
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(e.to_string(), "VM 100 does not exist (no /x/100.conf)");
    }
}
