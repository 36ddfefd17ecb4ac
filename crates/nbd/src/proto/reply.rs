//! Transmission replies (server → client): simple replies and structured reply chunks.
//!
//! ```text
//! simple:     u32 0x67446698 | u32 error | u64 cookie   (+ data for a successful simple READ)
//! structured: u32 0x668e33ef | u16 flags | u16 type | u64 cookie | u32 length | payload
//!   OFFSET_DATA   u64 offset | data (≥ 1 byte)
//!   OFFSET_HOLE   u64 offset | u32 hole length
//!   BLOCK_STATUS  u32 context id | n × (u32 length, u32 status flags)
//!   ERROR         u32 errno | u16 message length | message
//!   ERROR_OFFSET  u32 errno | u16 message length | message | u64 offset
//!   NONE          (empty, only with the DONE flag)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{ProtocolError, MAX_PAYLOAD, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};

/// Size of a simple reply header.
pub const SIMPLE_HEADER_LEN: usize = 16;
/// Size of a structured chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Largest structured chunk payload we accept: a full READ plus its 8-byte offset.
pub const MAX_CHUNK_PAYLOAD: u32 = MAX_PAYLOAD + 8;

/// Structured reply flag: this is the last chunk of the reply.
pub const FLAG_DONE: u16 = 1;

/// `NBD_REPLY_TYPE_NONE`.
pub const TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const TYPE_BLOCK_STATUS: u16 = 5;
/// `NBD_REPLY_TYPE_ERROR`.
pub const TYPE_ERROR: u16 = (1 << 15) | 1;
/// `NBD_REPLY_TYPE_ERROR_OFFSET`.
pub const TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// `base:allocation` status bit: the range is a hole.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` status bit: the range reads as zeroes.
pub const STATE_ZERO: u32 = 2;

/// One block-status descriptor: `length` bytes with `flags` (meaning depends on the context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub length: u32,
    /// Status flags (`base:allocation`: `STATE_HOLE | STATE_ZERO`; dirty bitmap: 1 = dirty).
    pub flags: u32,
}

/// The payload of one structured chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    OffsetData {
        /// Absolute export offset of `data`.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: reads as zeroes.
    OffsetHole {
        /// Absolute export offset.
        offset: u64,
        /// Hole length.
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    BlockStatus {
        /// Context id from `NBD_OPT_SET_META_CONTEXT`.
        context: u32,
        /// Descriptors, in order from the request offset.
        extents: Vec<Extent>,
    },
    /// `NBD_REPLY_TYPE_ERROR` / `NBD_REPLY_TYPE_ERROR_OFFSET`.
    Error {
        /// NBD errno (never 0).
        errno: u32,
        /// Human-readable message.
        message: String,
        /// Offset, for `ERROR_OFFSET`.
        offset: Option<u64>,
    },
    /// A non-error chunk type we do not know (clients treat it as a protocol error when
    /// it matters; it is skipped otherwise).
    Unknown {
        /// The chunk type.
        kind: u16,
    },
}

/// One decoded reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple reply; `data` holds READ data when the reply carries it.
    Simple {
        /// Cookie of the request.
        cookie: u64,
        /// NBD errno, 0 on success.
        error: u32,
        /// READ data (success only).
        data: Option<Bytes>,
    },
    /// One structured chunk.
    Structured {
        /// Cookie of the request.
        cookie: u64,
        /// Chunk flags (`FLAG_DONE`).
        flags: u16,
        /// The chunk.
        chunk: Chunk,
    },
}

impl Reply {
    /// Cookie the reply belongs to.
    pub fn cookie(&self) -> u64 {
        match self {
            Self::Simple { cookie, .. } | Self::Structured { cookie, .. } => *cookie,
        }
    }

    /// Decodes one reply. `simple_read_len(cookie)` must return the request length when a
    /// successful *simple* reply to `cookie` carries READ data (only without structured replies):
    /// simple replies do not say how long they are.
    pub fn decode(
        buf: &mut BytesMut,
        simple_read_len: impl Fn(u64) -> Option<u32>,
    ) -> Result<Option<Self>, ProtocolError> {
        if buf.len() < 4 {
            buf.reserve(CHUNK_HEADER_LEN);
            return Ok(None);
        }
        let magic = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
        match magic {
            SIMPLE_REPLY_MAGIC => {
                if buf.len() < SIMPLE_HEADER_LEN {
                    buf.reserve(SIMPLE_HEADER_LEN - buf.len());
                    return Ok(None);
                }
                let error = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
                let cookie = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
                let data_len = match (error, simple_read_len(cookie)) {
                    (0, Some(len)) => {
                        if len > MAX_PAYLOAD {
                            return Err(ProtocolError::TooLong {
                                what: "simple read reply",
                                len: len.into(),
                                max: MAX_PAYLOAD.into(),
                            });
                        }
                        Some(len as usize)
                    }
                    _ => None,
                };
                let total = SIMPLE_HEADER_LEN + data_len.unwrap_or(0);
                if buf.len() < total {
                    buf.reserve(total - buf.len());
                    return Ok(None);
                }
                buf.advance(SIMPLE_HEADER_LEN);
                let data = data_len.map(|n| buf.split_to(n).freeze());
                Ok(Some(Self::Simple {
                    cookie,
                    error,
                    data,
                }))
            }
            STRUCTURED_REPLY_MAGIC => {
                if buf.len() < CHUNK_HEADER_LEN {
                    buf.reserve(CHUNK_HEADER_LEN - buf.len());
                    return Ok(None);
                }
                let mut head = &buf[4..CHUNK_HEADER_LEN];
                let flags = head.get_u16();
                let kind = head.get_u16();
                let cookie = head.get_u64();
                let len = head.get_u32();
                if len > MAX_CHUNK_PAYLOAD {
                    return Err(ProtocolError::TooLong {
                        what: "structured reply chunk",
                        len: len.into(),
                        max: MAX_CHUNK_PAYLOAD.into(),
                    });
                }
                let total = CHUNK_HEADER_LEN + len as usize;
                if buf.len() < total {
                    buf.reserve(total - buf.len());
                    return Ok(None);
                }
                buf.advance(CHUNK_HEADER_LEN);
                let payload = buf.split_to(len as usize).freeze();
                let chunk = Chunk::parse(kind, flags, payload)?;
                Ok(Some(Self::Structured {
                    cookie,
                    flags,
                    chunk,
                }))
            }
            other => Err(ProtocolError::BadMagic {
                what: "reply",
                found: other.into(),
            }),
        }
    }
}

impl Chunk {
    fn parse(kind: u16, flags: u16, mut p: Bytes) -> Result<Self, ProtocolError> {
        let what = "structured reply chunk";
        if flags & !FLAG_DONE != 0 {
            return Err(ProtocolError::malformed(
                what,
                format!("unknown flags {flags:#x}"),
            ));
        }
        let chunk = match kind {
            TYPE_NONE => {
                if !p.is_empty() || flags & FLAG_DONE == 0 {
                    return Err(ProtocolError::malformed(
                        what,
                        "NONE chunk must be empty and final",
                    ));
                }
                Self::None
            }
            TYPE_OFFSET_DATA => {
                if p.len() < 9 {
                    return Err(ProtocolError::malformed(
                        what,
                        format!("OFFSET_DATA of {} bytes", p.len()),
                    ));
                }
                let offset = p.get_u64();
                Self::OffsetData { offset, data: p }
            }
            TYPE_OFFSET_HOLE => {
                if p.len() != 12 {
                    return Err(ProtocolError::malformed(
                        what,
                        format!("OFFSET_HOLE of {} bytes", p.len()),
                    ));
                }
                let offset = p.get_u64();
                let length = p.get_u32();
                if length == 0 {
                    return Err(ProtocolError::malformed(what, "empty OFFSET_HOLE"));
                }
                Self::OffsetHole { offset, length }
            }
            TYPE_BLOCK_STATUS => {
                if p.len() < 12 || (p.len() - 4) % 8 != 0 {
                    return Err(ProtocolError::malformed(
                        what,
                        format!("BLOCK_STATUS of {} bytes", p.len()),
                    ));
                }
                let context = p.get_u32();
                let extents = p
                    .chunks_exact(8)
                    .map(|d| Extent {
                        length: u32::from_be_bytes(d[0..4].try_into().expect("4 bytes")),
                        flags: u32::from_be_bytes(d[4..8].try_into().expect("4 bytes")),
                    })
                    .collect();
                Self::BlockStatus { context, extents }
            }
            TYPE_ERROR | TYPE_ERROR_OFFSET => {
                if p.len() < 6 {
                    return Err(ProtocolError::malformed(what, "ERROR chunk too short"));
                }
                let errno = p.get_u32();
                let mlen = p.get_u16() as usize;
                let expect = mlen + if kind == TYPE_ERROR_OFFSET { 8 } else { 0 };
                if p.len() != expect {
                    return Err(ProtocolError::malformed(
                        what,
                        format!("ERROR message length {mlen} disagrees with chunk length"),
                    ));
                }
                if errno == 0 {
                    return Err(ProtocolError::malformed(what, "ERROR chunk with errno 0"));
                }
                let message = String::from_utf8_lossy(&p.split_to(mlen)).into_owned();
                let offset = (kind == TYPE_ERROR_OFFSET).then(|| p.get_u64());
                Self::Error {
                    errno,
                    message,
                    offset,
                }
            }
            k if k & (1 << 15) != 0 => {
                // Unknown error types still carry errno + message by rule.
                if p.len() < 6 {
                    return Err(ProtocolError::malformed(what, "error chunk too short"));
                }
                let errno = p.get_u32();
                Self::Error {
                    errno: if errno == 0 { super::errno::EIO } else { errno },
                    message: format!("unknown error chunk type {k:#x}"),
                    offset: None,
                }
            }
            k => Self::Unknown { kind: k },
        };
        Ok(chunk)
    }

    /// Chunk type on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            Self::None => TYPE_NONE,
            Self::OffsetData { .. } => TYPE_OFFSET_DATA,
            Self::OffsetHole { .. } => TYPE_OFFSET_HOLE,
            Self::BlockStatus { .. } => TYPE_BLOCK_STATUS,
            Self::Error { offset: None, .. } => TYPE_ERROR,
            Self::Error {
                offset: Some(_), ..
            } => TYPE_ERROR_OFFSET,
            Self::Unknown { kind } => *kind,
        }
    }

    /// Appends header and payload except for OFFSET_DATA's data, which the caller writes
    /// after the returned buffer (so large reads are not copied).
    pub fn encode(&self, buf: &mut BytesMut, cookie: u64, flags: u16) {
        let payload_len = match self {
            Self::None | Self::Unknown { .. } => 0,
            Self::OffsetData { data, .. } => 8 + data.len(),
            Self::OffsetHole { .. } => 12,
            Self::BlockStatus { extents, .. } => 4 + 8 * extents.len(),
            Self::Error {
                message, offset, ..
            } => 6 + message.len().min(u16::MAX as usize) + if offset.is_some() { 8 } else { 0 },
        };
        buf.put_u32(STRUCTURED_REPLY_MAGIC);
        buf.put_u16(flags);
        buf.put_u16(self.kind());
        buf.put_u64(cookie);
        buf.put_u32(payload_len as u32);
        match self {
            Self::None | Self::Unknown { .. } => {}
            Self::OffsetData { offset, .. } => buf.put_u64(*offset),
            Self::OffsetHole { offset, length } => {
                buf.put_u64(*offset);
                buf.put_u32(*length);
            }
            Self::BlockStatus { context, extents } => {
                buf.put_u32(*context);
                for e in extents {
                    buf.put_u32(e.length);
                    buf.put_u32(e.flags);
                }
            }
            Self::Error {
                errno,
                message,
                offset,
            } => {
                let msg = &message.as_bytes()[..message.len().min(u16::MAX as usize)];
                buf.put_u32(*errno);
                buf.put_u16(msg.len() as u16);
                buf.put_slice(msg);
                if let Some(o) = offset {
                    buf.put_u64(*o);
                }
            }
        }
    }
}

/// Appends a simple reply header (READ data, if any, follows).
pub fn encode_simple(buf: &mut BytesMut, cookie: u64, error: u32) {
    buf.put_u32(SIMPLE_REPLY_MAGIC);
    buf.put_u32(error);
    buf.put_u64(cookie);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(chunk: &Chunk, flags: u16) -> BytesMut {
        let mut buf = BytesMut::new();
        chunk.encode(&mut buf, 9, flags);
        if let Chunk::OffsetData { data, .. } = chunk {
            buf.put_slice(data);
        }
        buf
    }

    #[test]
    fn chunks_round_trip() {
        for chunk in [
            Chunk::None,
            Chunk::OffsetData {
                offset: 4096,
                data: Bytes::from_static(b"abc"),
            },
            Chunk::OffsetHole {
                offset: 1 << 40,
                length: 65536,
            },
            Chunk::BlockStatus {
                context: 1,
                extents: vec![
                    Extent {
                        length: 65536,
                        flags: 0,
                    },
                    Extent {
                        length: 1 << 20,
                        flags: STATE_HOLE | STATE_ZERO,
                    },
                ],
            },
            Chunk::Error {
                errno: 22,
                message: "no".into(),
                offset: None,
            },
            Chunk::Error {
                errno: 5,
                message: "bad sector".into(),
                offset: Some(512),
            },
        ] {
            let mut buf = enc(&chunk, FLAG_DONE);
            let reply = Reply::decode(&mut buf, |_| None).unwrap().unwrap();
            assert_eq!(
                reply,
                Reply::Structured {
                    cookie: 9,
                    flags: FLAG_DONE,
                    chunk
                }
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn simple_read_uses_request_length() {
        let mut buf = BytesMut::new();
        encode_simple(&mut buf, 3, 0);
        buf.put_slice(b"0123");
        assert_eq!(
            Reply::decode(&mut buf.clone(), |_| Some(5)).unwrap(),
            None,
            "waits for all 5 data bytes"
        );
        let r = Reply::decode(&mut buf, |c| (c == 3).then_some(4))
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Reply::Simple {
                cookie: 3,
                error: 0,
                data: Some(Bytes::from_static(b"0123"))
            }
        );
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let bad = |kind: u16, flags: u16, payload: &[u8]| {
            let mut buf = BytesMut::new();
            buf.put_u32(STRUCTURED_REPLY_MAGIC);
            buf.put_u16(flags);
            buf.put_u16(kind);
            buf.put_u64(1);
            buf.put_u32(payload.len() as u32);
            buf.put_slice(payload);
            Reply::decode(&mut buf, |_| None)
        };
        assert!(bad(TYPE_NONE, 0, &[]).is_err(), "NONE without DONE");
        assert!(bad(TYPE_OFFSET_DATA, 1, &[0; 8]).is_err(), "empty data");
        assert!(bad(TYPE_OFFSET_HOLE, 1, &[0; 11]).is_err());
        assert!(bad(TYPE_BLOCK_STATUS, 1, &[0; 13]).is_err());
        assert!(bad(TYPE_ERROR, 1, &[0, 0, 0, 5, 0, 9, b'x']).is_err());
        assert!(bad(TYPE_ERROR, 1, &[0, 0, 0, 0, 0, 0]).is_err(), "errno 0");
        assert!(
            bad(TYPE_OFFSET_DATA, 0x80, &[0; 9]).is_err(),
            "unknown flag"
        );
        let mut buf = BytesMut::new();
        buf.put_u32(STRUCTURED_REPLY_MAGIC);
        buf.put_u16(1);
        buf.put_u16(TYPE_OFFSET_DATA);
        buf.put_u64(1);
        buf.put_u32(u32::MAX);
        assert!(Reply::decode(&mut buf, |_| None).is_err());
        assert!(
            buf.capacity() < 1 << 20,
            "no allocation from hostile length"
        );
        let mut buf = BytesMut::from(&b"\xde\xad\xbe\xef and then some"[..]);
        assert!(Reply::decode(&mut buf, |_| None).is_err());
    }

    #[test]
    fn reply_numbers_are_the_specs() {
        assert_eq!(
            [SIMPLE_HEADER_LEN, CHUNK_HEADER_LEN],
            [16, 20],
            "header sizes"
        );
        assert_eq!(MAX_CHUNK_PAYLOAD, 33_554_440);
        assert_eq!(FLAG_DONE, 1);
        assert_eq!(
            [
                TYPE_NONE,
                TYPE_OFFSET_DATA,
                TYPE_OFFSET_HOLE,
                TYPE_BLOCK_STATUS,
                TYPE_ERROR,
                TYPE_ERROR_OFFSET
            ],
            [0, 1, 2, 5, 32769, 32770]
        );
        assert_eq!([STATE_HOLE, STATE_ZERO], [1, 2]);
    }

    #[test]
    fn replies_need_more_until_complete() {
        let mut simple = BytesMut::new();
        encode_simple(&mut simple, 7, 0);
        // Payloads longer than twice the header: a short reservation is not hidden by the
        // buffer doubling its capacity.
        simple.put_bytes(b'd', 100);
        let r = crate::proto::assert_needs_more_until_complete(&simple, 16, |b| {
            Reply::decode(b, |c| (c == 7).then_some(100))
        });
        assert_eq!(r.cookie(), 7);
        let mut error = BytesMut::new();
        encode_simple(&mut error, 8, 5);
        let r = crate::proto::assert_needs_more_until_complete(&error, 16, |b| {
            Reply::decode(b, |_| Some(10))
        });
        assert_eq!(
            r,
            Reply::Simple {
                cookie: 8,
                error: 5,
                data: None
            },
            "a failed read carries no data"
        );
        let chunk = Chunk::OffsetData {
            offset: 1 << 33,
            data: Bytes::from(vec![b'c'; 100]),
        };
        let r = crate::proto::assert_needs_more_until_complete(&enc(&chunk, 0), 20, |b| {
            Reply::decode(b, |_| None)
        });
        assert_eq!(
            r,
            Reply::Structured {
                cookie: 9,
                flags: 0,
                chunk
            }
        );
        // Four bytes are enough to refuse a bad magic.
        let mut buf = BytesMut::from(&b"\xde\xad\xbe\xef"[..]);
        assert!(matches!(
            Reply::decode(&mut buf, |_| None),
            Err(ProtocolError::BadMagic { .. })
        ));
    }

    fn header_only(magic_len: (u32, u32), kind: u16) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(magic_len.0);
        if magic_len.0 == SIMPLE_REPLY_MAGIC {
            buf.put_u32(0);
            buf.put_u64(1);
        } else {
            buf.put_u16(0);
            buf.put_u16(kind);
            buf.put_u64(1);
            buf.put_u32(magic_len.1);
        }
        buf
    }

    #[test]
    fn payload_lengths_up_to_the_limits() {
        // A full 32 MiB read is accepted (and waited for), one byte more is refused.
        let mut buf = header_only((SIMPLE_REPLY_MAGIC, 0), 0);
        assert_eq!(Reply::decode(&mut buf, |_| Some(MAX_PAYLOAD)), Ok(None));
        let mut buf = header_only((SIMPLE_REPLY_MAGIC, 0), 0);
        assert!(matches!(
            Reply::decode(&mut buf, |_| Some(MAX_PAYLOAD + 1)),
            Err(ProtocolError::TooLong {
                len: 33_554_433,
                ..
            })
        ));
        let mut buf = header_only((STRUCTURED_REPLY_MAGIC, MAX_CHUNK_PAYLOAD), 1);
        assert_eq!(Reply::decode(&mut buf, |_| None), Ok(None));
        let mut buf = header_only((STRUCTURED_REPLY_MAGIC, MAX_CHUNK_PAYLOAD + 1), 1);
        assert!(matches!(
            Reply::decode(&mut buf, |_| None),
            Err(ProtocolError::TooLong {
                len: 33_554_441,
                ..
            })
        ));
    }

    fn chunk(kind: u16, flags: u16, payload: &[u8]) -> Result<Chunk, ProtocolError> {
        Chunk::parse(kind, flags, Bytes::copy_from_slice(payload))
    }

    #[test]
    fn chunk_payloads_at_their_length_boundaries() {
        assert_eq!(
            chunk(TYPE_OFFSET_DATA, 0, &[0, 0, 0, 0, 0, 0, 0, 3, b'x']).unwrap(),
            Chunk::OffsetData {
                offset: 3,
                data: Bytes::from_static(b"x")
            },
            "one data byte"
        );
        assert_eq!(
            chunk(TYPE_BLOCK_STATUS, 0, &[0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 3]).unwrap(),
            Chunk::BlockStatus {
                context: 1,
                extents: vec![Extent {
                    length: 512,
                    flags: 3
                }]
            },
            "one descriptor"
        );
        for len in [0, 4, 11, 16, 19] {
            assert!(
                chunk(TYPE_BLOCK_STATUS, 0, &vec![0; len]).is_err(),
                "BLOCK_STATUS of {len} bytes"
            );
        }
        assert!(chunk(TYPE_BLOCK_STATUS, 0, &[1; 20]).is_ok());
        assert!(chunk(TYPE_OFFSET_HOLE, 0, &[0; 12]).is_err(), "empty hole");
        assert_eq!(
            chunk(TYPE_ERROR, 0, &[0, 0, 0, 28, 0, 0]).unwrap(),
            Chunk::Error {
                errno: 28,
                message: String::new(),
                offset: None
            },
            "an error without a message"
        );
        for len in 0..6 {
            assert!(chunk(TYPE_ERROR, 0, &vec![1; len]).is_err());
            assert!(chunk(0x8003, 0, &vec![1; len]).is_err());
        }
        assert_eq!(
            chunk(
                TYPE_ERROR_OFFSET,
                0,
                &[0, 0, 0, 5, 0, 1, b'e', 0, 0, 0, 0, 0, 0, 2, 0]
            )
            .unwrap(),
            Chunk::Error {
                errno: 5,
                message: "e".into(),
                offset: Some(512)
            }
        );
        assert!(chunk(TYPE_ERROR_OFFSET, 0, &[0, 0, 0, 5, 0, 1, b'e']).is_err());
    }

    #[test]
    fn only_bit_15_makes_an_unknown_chunk_an_error() {
        assert_eq!(
            chunk(99, FLAG_DONE, &[1, 2, 3]).unwrap(),
            Chunk::Unknown { kind: 99 }
        );
        assert_eq!(
            chunk(0x8003, 0, &[0, 0, 0, 22, 0, 0]).unwrap(),
            Chunk::Error {
                errno: 22,
                message: "unknown error chunk type 0x8003".into(),
                offset: None
            }
        );
        assert_eq!(
            chunk(0x8003, 0, &[0, 0, 0, 0, 0, 0]).unwrap(),
            Chunk::Error {
                errno: 5,
                message: "unknown error chunk type 0x8003".into(),
                offset: None
            },
            "errno 0 would read as success: EIO"
        );
    }
}
