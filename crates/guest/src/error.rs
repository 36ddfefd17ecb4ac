//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong running a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The guest's configuration (or storage.cfg) is invalid or cannot be read.
    #[error("VM {vmid}: configuration")]
    Config {
        /// The VMID.
        vmid: u32,
        /// The underlying error (names file and line).
        #[source]
        source: vmdump_config::Error,
    },
    /// The config asks for something the runtime cannot do.
    #[error("VM {vmid}: {what}")]
    Unsupported {
        /// The VMID.
        vmid: u32,
        /// What and why.
        what: String,
    },
    /// A disk image does not exist.
    #[error("VM {vmid}: disk {key}: image {path} does not exist")]
    MissingImage {
        /// The VMID.
        vmid: u32,
        /// The disk key.
        key: String,
        /// The resolved path.
        path: PathBuf,
    },
    /// The guest is locked (`lock:` in its config) and the operation does not skip locks.
    #[error("VM {vmid} is locked ({lock})")]
    Locked {
        /// The VMID.
        vmid: u32,
        /// The lock name.
        lock: String,
    },
    /// `start` while a QEMU for this VM runs.
    #[error("VM {vmid} is already running (pid {pid})")]
    AlreadyRunning {
        /// The VMID.
        vmid: u32,
        /// The QEMU pid.
        pid: u32,
    },
    /// Another vmdump process holds the VM's lifecycle lock.
    #[error("VM {vmid} is busy: another vmdump process is starting or stopping it")]
    Busy {
        /// The VMID.
        vmid: u32,
    },
    /// An operation that needs a running QEMU found none.
    #[error("VM {vmid} is not running")]
    NotRunning {
        /// The VMID.
        vmid: u32,
    },
    /// File system trouble in the run directory.
    #[error("VM {vmid}: {path}")]
    Io {
        /// The VMID.
        vmid: u32,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Starting the QEMU binary failed.
    #[error("VM {vmid}: cannot run {program}")]
    Spawn {
        /// The VMID.
        vmid: u32,
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited with an error while starting.
    #[error("VM {vmid}: QEMU failed to start ({status}): {stderr}")]
    Launch {
        /// The VMID.
        vmid: u32,
        /// Exit status text.
        status: String,
        /// QEMU's error output (trimmed).
        stderr: String,
    },
    /// Talking to QEMU or the agent failed.
    #[error("VM {vmid}: {step}")]
    Qmp {
        /// The VMID.
        vmid: u32,
        /// What was being done (`query-status`, `connect to QMP`, ...).
        step: String,
        /// The underlying error.
        #[source]
        source: vmdump_qmp::Error,
    },
    /// A clean shutdown without force: the guest did not power off in time (it still runs).
    #[error("VM {vmid}: the guest did not power off within {after:?} (no forced stop)")]
    ShutdownTimeout {
        /// The VMID.
        vmid: u32,
        /// The deadline of each clean step.
        after: Duration,
    },
    /// A process did not exit within its deadline, even after SIGKILL.
    #[error("VM {vmid}: QEMU (pid {pid}) did not exit within {after:?}")]
    Timeout {
        /// The VMID.
        vmid: u32,
        /// The QEMU pid.
        pid: u32,
        /// How long we waited.
        after: Duration,
    },
}

/// Coarse categories callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Invalid or unsupported configuration.
    Config,
    /// The VM's state does not allow the operation (running, not running, locked).
    State,
    /// QEMU or the system failed.
    Runtime,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } | Error::Unsupported { .. } | Error::MissingImage { .. } => {
                ErrorKind::Config
            }
            Error::Locked { .. }
            | Error::AlreadyRunning { .. }
            | Error::NotRunning { .. }
            | Error::Busy { .. } => ErrorKind::State,
            _ => ErrorKind::Runtime,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
