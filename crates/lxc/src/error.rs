//! The crate's error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong running or storing a container.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The container's config (or storage.cfg) is invalid or cannot be read.
    #[error("CT {vmid}: configuration")]
    Config {
        /// The VMID.
        vmid: u32,
        /// The underlying error.
        #[source]
        source: vmdump_config::Error,
    },
    /// The container has no config.
    #[error("CT {vmid} does not exist ({})", path.display())]
    NoSuchContainer {
        /// The VMID.
        vmid: u32,
        /// The config path looked for.
        path: PathBuf,
    },
    /// A tool (`lxc-*`, `mount`, `btrfs`, `mkfs.ext4`, `rsync`) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// Its error output (last lines).
        stderr: String,
    },
    /// A tool could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Creating or removing a volume's files (image, btrfs subvolume) failed.
    #[error("{what} volume '{volume}'")]
    Volume {
        /// `create` or `remove`.
        what: &'static str,
        /// The volume id.
        volume: String,
        /// The underlying error (boxed: it is large).
        #[source]
        source: Box<vmdump_blockdev::Error>,
    },
    /// A file operation failed.
    #[error("{op} '{}'", path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The container is in the wrong state for the operation.
    #[error("CT {vmid} is {state}")]
    State {
        /// The VMID.
        vmid: u32,
        /// What it is (`running`, `not running`, `frozen`, ...).
        state: String,
    },
    /// The container config is locked.
    #[error("CT {vmid} is locked ({lock})")]
    Locked {
        /// The VMID.
        vmid: u32,
        /// The lock name.
        lock: String,
    },
    /// Another vmdump process holds the container's lifecycle lock.
    #[error("CT {vmid} is busy: another vmdump process is working on it")]
    Busy {
        /// The VMID.
        vmid: u32,
    },
    /// The config asks for something the runtime cannot do.
    #[error("CT {vmid}: {what}")]
    Unsupported {
        /// The VMID.
        vmid: u32,
        /// What and why.
        what: String,
    },
    /// A clean shutdown did not finish in time.
    #[error("CT {vmid} did not shut down within {secs} seconds")]
    ShutdownTimeout {
        /// The VMID.
        vmid: u32,
        /// The timeout.
        secs: u64,
    },
    /// An image to read is still attached to a loop device (mounted elsewhere).
    #[error("image '{}' is in use ({by})", path.display())]
    InUse {
        /// The image.
        path: PathBuf,
        /// The loop device holding it.
        by: String,
    },
    /// Extracting a template tarball failed.
    #[error("CT {vmid}: extract template")]
    Template {
        /// The VMID.
        vmid: u32,
        /// The archive error.
        #[source]
        source: vmdump_tar::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn volume(
        what: &'static str,
        vol: &crate::volume::CtVolume,
        source: vmdump_blockdev::Error,
    ) -> Self {
        Error::Volume {
            what,
            volume: vol.volid.to_string(),
            source: Box::new(source),
        }
    }

    pub(crate) fn config(vmid: u32, source: vmdump_config::Error) -> Self {
        Error::Config { vmid, source }
    }
}
