//! The crate's error type.

use crate::proto::{errno, ProtocolError};

/// Everything that can go wrong speaking NBD.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to or listening on a socket failed.
    #[error("connect to {addr}")]
    Connect {
        /// Socket path or TCP address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("i/o on nbd connection")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error("nbd protocol violation")]
    Protocol(#[from] ProtocolError),
    /// The server refused an option during the handshake (unknown export, unsupported, ...).
    #[error("server refused {option}: {reply}{}", fmt_msg(message))]
    Refused {
        /// Option name, e.g. `NBD_OPT_GO`.
        option: &'static str,
        /// Name of the `NBD_REP_ERR_*` reply.
        reply: &'static str,
        /// The server's message, possibly empty.
        message: String,
    },
    /// The server failed a request.
    #[error("{command} at offset {offset:#x} length {length:#x} failed: {} ({errno}, {}){}", errno::name(*errno), errno::describe(*errno), fmt_msg(message))]
    Remote {
        /// Command name, e.g. `NBD_CMD_READ`.
        command: &'static str,
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
        /// NBD errno.
        errno: u32,
        /// The server's message, possibly empty.
        message: String,
    },
    /// The connection is gone (peer closed, or the client was disconnected).
    #[error("nbd connection closed")]
    Closed,
    /// Nothing happened within the deadline.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
    },
    /// The caller asked for something the export or this crate cannot do.
    #[error("invalid request: {0}")]
    Usage(String),
}

fn fmt_msg(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// The category of an [`Error`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Local or socket I/O.
    Io,
    /// The peer broke the protocol.
    Protocol,
    /// The server failed a request with this NBD errno.
    Remote(u32),
    /// The server refused a handshake option.
    Refused,
    /// The connection is gone.
    Closed,
    /// A deadline passed.
    Timeout,
    /// Invalid use of the API.
    Usage,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Connect { .. } | Self::Io(_) => ErrorKind::Io,
            Self::Protocol(_) => ErrorKind::Protocol,
            Self::Refused { .. } => ErrorKind::Refused,
            Self::Remote { errno, .. } => ErrorKind::Remote(*errno),
            Self::Closed => ErrorKind::Closed,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Usage(_) => ErrorKind::Usage,
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_say_what_the_errno_means() {
        let e = Error::Remote {
            command: "NBD_CMD_WRITE",
            offset: 0x100000,
            length: 0x10000,
            errno: errno::ENOSPC,
            message: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "NBD_CMD_WRITE at offset 0x100000 length 0x10000 failed: ENOSPC (28, No space left on device)"
        );
        assert_eq!(e.kind(), ErrorKind::Remote(errno::ENOSPC));
    }
}
