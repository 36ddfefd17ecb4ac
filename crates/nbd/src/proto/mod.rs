//! Sans-I/O NBD wire format: every message the handshake and the transmission phase use.
//!
//! Decoders follow one shape: `decode(&mut BytesMut) -> Result<Option<T>, ProtocolError>`.
//! `Ok(None)` means "not enough bytes yet" (the decoder reserves what it needs, so the caller
//! just reads more); `Ok(Some(_))` consumed exactly one message; `Err` means the peer broke the
//! protocol and the connection must end. A length field is checked against its limit *before*
//! anything is reserved, so a hostile peer can never make us allocate more than the limits
//! below. Encoders append to a `BytesMut`.
//!
//! Magic numbers and limits live here, once. The magics never change.

pub mod handshake;
pub mod option;
pub mod reply;
pub mod request;

/// `NBDMAGIC`, the first 8 bytes a newstyle server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second word of the greeting and prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Largest READ/WRITE payload we send or accept (QEMU's own limit is 32 MiB too).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option request or option reply payload we accept.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest string (export name, context name, error message) the spec allows.
pub const MAX_STRING: u32 = 4096;
/// Most meta-context queries we accept in one option.
pub const MAX_QUERIES: u32 = 64;
/// Most info requests we accept in one `NBD_OPT_GO`/`NBD_OPT_INFO`.
pub const MAX_INFO_REQUESTS: u16 = 64;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server may omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client wants no zero padding.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (16 bits, sent with the export size).
pub mod tflags {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational media hint.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_CMD_FLAG_DF` is supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections see a consistent export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Errno values carried on the wire (NBD numbers, which equal Linux's).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Cannot allocate memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left on device.
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Operation not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server is shutting down.
    pub const ESHUTDOWN: u32 = 108;

    /// An NBD errno with a message, carried inside a `std::io::Error` so that
    /// [`from_io`] recovers the exact code.
    #[derive(Debug)]
    pub struct Errno {
        /// NBD errno.
        pub code: u32,
        /// Human-readable reason.
        pub message: String,
    }

    impl std::fmt::Display for Errno {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} ({})", self.message, name(self.code))
        }
    }

    impl std::error::Error for Errno {}

    /// Builds an `io::Error` that maps to `code` on the wire.
    pub fn io_error(code: u32, message: impl Into<String>) -> std::io::Error {
        std::io::Error::other(Errno {
            code,
            message: message.into(),
        })
    }

    /// Maps a local I/O error onto the closest NBD errno (unknown ones become `EIO`).
    pub fn from_io(err: &std::io::Error) -> u32 {
        use std::io::ErrorKind as K;
        if let Some(e) = err.get_ref().and_then(|e| e.downcast_ref::<Errno>()) {
            return e.code;
        }
        if let Some(code) = err.raw_os_error() {
            let code = code as u32;
            if [
                EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN,
            ]
            .contains(&code)
            {
                return code;
            }
        }
        match err.kind() {
            K::PermissionDenied => EPERM,
            K::InvalidInput | K::InvalidData => EINVAL,
            K::OutOfMemory => ENOMEM,
            K::StorageFull => ENOSPC,
            K::Unsupported => ENOTSUP,
            _ => EIO,
        }
    }

    /// Human name of an NBD errno for messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            EPERM => "EPERM",
            EIO => "EIO",
            ENOMEM => "ENOMEM",
            EINVAL => "EINVAL",
            ENOSPC => "ENOSPC",
            EOVERFLOW => "EOVERFLOW",
            ENOTSUP => "ENOTSUP",
            ESHUTDOWN => "ESHUTDOWN",
            _ => "unknown errno",
        }
    }

    /// What an NBD errno means, worded as the C library's `strerror` words it (so a full
    /// disk reads the same whether the local write or the NBD server's failed).
    pub fn describe(code: u32) -> &'static str {
        match code {
            EPERM => "Operation not permitted",
            EIO => "Input/output error",
            ENOMEM => "Cannot allocate memory",
            EINVAL => "Invalid argument",
            ENOSPC => "No space left on device",
            EOVERFLOW => "Value too large for defined data type",
            ENOTSUP => "Operation not supported",
            ESHUTDOWN => "Cannot send after transport endpoint shutdown",
            _ => "unknown error",
        }
    }
}

/// A peer sent bytes that are not valid NBD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A magic number did not match.
    #[error("bad {what} magic {found:#x}")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// What arrived instead.
        found: u64,
    },
    /// A length field exceeds our limit (checked before any allocation).
    #[error("{what} length {len} exceeds limit {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Length the peer announced.
        len: u64,
        /// Our limit.
        max: u64,
    },
    /// A message is structurally wrong (inner lengths, string encoding, missing fields).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
    /// A well-formed message that is not allowed at this point.
    #[error("unexpected {what}: {detail}")]
    Unexpected {
        /// Which message.
        what: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn unexpected(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Unexpected {
            what,
            detail: detail.into(),
        }
    }
}

/// Reads a u32-length-prefixed UTF-8 string out of `buf`, bounded by [`MAX_STRING`].
pub(crate) fn take_string(
    buf: &mut bytes::Bytes,
    what: &'static str,
) -> Result<String, ProtocolError> {
    use bytes::Buf;
    if buf.remaining() < 4 {
        return Err(ProtocolError::malformed(what, "truncated string length"));
    }
    let len = buf.get_u32();
    if len > MAX_STRING {
        return Err(ProtocolError::TooLong {
            what,
            len: len.into(),
            max: MAX_STRING.into(),
        });
    }
    take_fixed_string(buf, len as usize, what)
}

/// Reads `len` bytes of UTF-8 out of `buf`.
pub(crate) fn take_fixed_string(
    buf: &mut bytes::Bytes,
    len: usize,
    what: &'static str,
) -> Result<String, ProtocolError> {
    if buf.len() < len {
        return Err(ProtocolError::malformed(
            what,
            format!("string of {len} bytes but only {} left", buf.len()),
        ));
    }
    let raw = buf.split_to(len);
    let s = std::str::from_utf8(&raw)
        .map_err(|_| ProtocolError::malformed(what, "string is not utf-8"))?;
    if s.contains('\0') {
        return Err(ProtocolError::malformed(what, "string contains NUL"));
    }
    Ok(s.to_owned())
}

/// Appends a u32-length-prefixed string.
pub(crate) fn put_string(buf: &mut bytes::BytesMut, s: &str) {
    use bytes::BufMut;
    buf.put_u32(s.len() as u32);
    buf.put_slice(s.as_bytes());
}

/// Feeds `full` (one encoded message) to `decode` one prefix at a time: every incomplete
/// prefix must return "need more" without consuming anything and reserve room for the rest of
/// what the decoder can know it needs (the whole message once its `header` bytes are in, else
/// the header); the whole message must decode, alone or followed by more bytes, consuming
/// exactly its own.
#[cfg(test)]
pub(crate) fn assert_needs_more_until_complete<T: std::fmt::Debug>(
    full: &[u8],
    header: usize,
    mut decode: impl FnMut(&mut bytes::BytesMut) -> Result<Option<T>, ProtocolError>,
) -> T {
    for k in 0..full.len() {
        let mut buf = bytes::BytesMut::from(&full[..k]);
        let got = decode(&mut buf);
        assert!(
            matches!(got, Ok(None)),
            "{k} of {} bytes: {got:?}",
            full.len()
        );
        assert_eq!(&buf[..], &full[..k], "{k} bytes: nothing consumed");
        let want = if k < header { header } else { full.len() };
        assert!(
            buf.capacity() >= want,
            "{k} of {} bytes: reserved {} < {want}",
            full.len(),
            buf.capacity()
        );
    }
    let mut exact = bytes::BytesMut::from(full);
    let msg = decode(&mut exact)
        .expect("complete message")
        .expect("decoded");
    assert!(exact.is_empty(), "the whole message consumed");
    let mut buf = bytes::BytesMut::from(full);
    buf.extend_from_slice(b"next");
    decode(&mut buf)
        .expect("complete message")
        .expect("decoded");
    assert_eq!(&buf[..], b"next", "exactly one message consumed");
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, Bytes, BytesMut};

    #[test]
    fn wire_numbers_are_the_specs() {
        // The numbers as the NBD protocol document (doc/proto.md) writes them.
        assert_eq!(NBD_MAGIC, 0x4e42444d41474943);
        assert_eq!(IHAVEOPT, 0x49484156454F5054);
        assert_eq!(OPTION_REPLY_MAGIC, 0x3e889045565a9);
        assert_eq!(REQUEST_MAGIC, 0x25609513);
        assert_eq!(SIMPLE_REPLY_MAGIC, 0x67446698);
        assert_eq!(STRUCTURED_REPLY_MAGIC, 0x668e33ef);
        assert_eq!(MAX_STRING, 4096);
        assert_eq!(MAX_PAYLOAD, 33_554_432);
        assert_eq!(MAX_OPTION_LEN, 65_536);
        assert_eq!([FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES], [1, 2]);
        assert_eq!([FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES], [1, 2]);
        use tflags::*;
        assert_eq!(
            [
                HAS_FLAGS,
                READ_ONLY,
                SEND_FLUSH,
                SEND_FUA,
                ROTATIONAL,
                SEND_TRIM,
                SEND_WRITE_ZEROES,
                SEND_DF,
                CAN_MULTI_CONN,
                SEND_CACHE,
                SEND_FAST_ZERO,
            ],
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 2048]
        );
    }

    /// Every errno the wire carries: number (the spec's, equal to Linux's), name, strerror text.
    const ERRNOS: [(u32, &str, &str); 8] = [
        (1, "EPERM", "Operation not permitted"),
        (5, "EIO", "Input/output error"),
        (12, "ENOMEM", "Cannot allocate memory"),
        (22, "EINVAL", "Invalid argument"),
        (28, "ENOSPC", "No space left on device"),
        (75, "EOVERFLOW", "Value too large for defined data type"),
        (95, "ENOTSUP", "Operation not supported"),
        (
            108,
            "ESHUTDOWN",
            "Cannot send after transport endpoint shutdown",
        ),
    ];

    #[test]
    fn errno_numbers_names_and_descriptions() {
        use errno::*;
        assert_eq!(
            [EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN],
            ERRNOS.map(|(code, _, _)| code)
        );
        for (code, name, text) in ERRNOS {
            assert_eq!(errno::name(code), name);
            assert_eq!(describe(code), text);
            // The local errno of the same number says the same thing.
            let local = std::io::Error::from_raw_os_error(code as i32).to_string();
            assert!(local.starts_with(text), "{local} vs {text}");
        }
        assert_eq!(errno::name(2), "unknown errno");
        assert_eq!(describe(2), "unknown error");
        let e = io_error(ENOSPC, "export full");
        assert_eq!(e.to_string(), "export full (ENOSPC)");
    }

    #[test]
    fn local_errors_map_to_the_closest_errno() {
        use errno::*;
        use std::io::{Error, ErrorKind as K};
        // Our own Errno keeps its exact code, whatever its kind says.
        assert_eq!(from_io(&io_error(ESHUTDOWN, "stopping")), ESHUTDOWN);
        assert_eq!(from_io(&io_error(EOVERFLOW, "past the end")), EOVERFLOW);
        // OS errors with an NBD number keep it; others become EIO.
        for (code, _, _) in ERRNOS {
            assert_eq!(from_io(&Error::from_raw_os_error(code as i32)), code);
        }
        assert_eq!(from_io(&Error::from_raw_os_error(2)), EIO, "ENOENT");
        assert_eq!(from_io(&Error::from_raw_os_error(13)), EPERM, "EACCES");
        for (kind, code) in [
            (K::PermissionDenied, EPERM),
            (K::InvalidInput, EINVAL),
            (K::InvalidData, EINVAL),
            (K::OutOfMemory, ENOMEM),
            (K::StorageFull, ENOSPC),
            (K::Unsupported, ENOTSUP),
            (K::UnexpectedEof, EIO),
            (K::Other, EIO),
        ] {
            assert_eq!(from_io(&Error::new(kind, "x")), code, "{kind:?}");
        }
    }

    fn string_of(len: usize) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u32(len as u32);
        b.put_bytes(b'x', len);
        b.freeze()
    }

    #[test]
    fn strings_up_to_the_spec_limit_are_read() {
        let mut b = string_of(4096);
        assert_eq!(take_string(&mut b, "name").unwrap(), "x".repeat(4096));
        assert!(b.is_empty());
        let mut b = string_of(0);
        assert_eq!(take_string(&mut b, "name").unwrap(), "");
        assert!(matches!(
            take_string(&mut string_of(4097), "name"),
            Err(ProtocolError::TooLong {
                len: 4097,
                max: 4096,
                ..
            })
        ));
        for short in [&[][..], &[0, 0, 0][..]] {
            assert!(matches!(
                take_string(&mut Bytes::copy_from_slice(short), "name"),
                Err(ProtocolError::Malformed { .. })
            ));
        }
        let mut b = Bytes::from_static(b"\0\0\0\x03ab");
        assert!(take_string(&mut b, "name").is_err(), "past the end");
        let mut b = Bytes::from_static(b"\0\0\0\x02a\0");
        assert!(take_string(&mut b, "name").is_err(), "NUL inside");
    }
}
