//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong talking to QEMU's monitor or guest agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to the socket failed.
    #[error("connect to {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("i/o on the {peer} socket")]
    Io {
        /// `"qmp"` or `"qga"`.
        peer: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that is not the protocol.
    #[error("{peer} protocol violation: {detail}")]
    Protocol {
        /// `"qmp"` or `"qga"`.
        peer: &'static str,
        /// What was wrong, with a short excerpt of the offending input.
        detail: String,
    },
    /// QEMU (or the agent) answered the command with an error.
    #[error("{command} failed: {class}: {desc}")]
    Remote {
        /// The command that failed.
        command: String,
        /// QAPI error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`.
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },
    /// The client refused to send a request that would harm QEMU 7.2 or is meaningless.
    #[error("{command} refused: {reason}")]
    Refused {
        /// The command that was not sent.
        command: String,
        /// Why.
        reason: &'static str,
    },
    /// The connection is gone (QEMU exited, the socket was closed).
    #[error("{peer} connection closed")]
    Closed {
        /// `"qmp"` or `"qga"`.
        peer: &'static str,
    },
    /// No answer (or no matching event) within the deadline.
    #[error("{what}: no answer within {after:?}")]
    Timeout {
        /// The command or the awaited event.
        what: String,
        /// The deadline that passed.
        after: Duration,
    },
}

/// Coarse categories callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Socket-level failure (including connect).
    Io,
    /// Malformed input from the peer, or a request the client refuses to send.
    Protocol,
    /// QEMU or the agent returned an error reply.
    Remote,
    /// The connection was closed.
    Closed,
    /// A deadline passed.
    Timeout,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Connect { .. } | Error::Io { .. } => ErrorKind::Io,
            Error::Protocol { .. } | Error::Refused { .. } => ErrorKind::Protocol,
            Error::Remote { .. } => ErrorKind::Remote,
            Error::Closed { .. } => ErrorKind::Closed,
            Error::Timeout { .. } => ErrorKind::Timeout,
        }
    }

    /// The QAPI error class when this is a [`Error::Remote`].
    pub fn remote_class(&self) -> Option<&str> {
        match self {
            Error::Remote { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
