//! Transmission requests (client → server).
//!
//! ```text
//! C: u32 0x25609513 | u16 command flags | u16 type | u64 cookie | u64 offset | u32 length
//!    (+ length bytes of data for NBD_CMD_WRITE)                      header: 28 bytes
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{ProtocolError, MAX_PAYLOAD, REQUEST_MAGIC};

/// Size of a request header.
pub const REQUEST_HEADER_LEN: usize = 28;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub mod cflags {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES`: do not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `READ`: do not fragment the structured reply.
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS`: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES`: fail fast instead of writing zeroes slowly.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Every flag we know.
    pub const ALL: u16 = FUA | NO_HOLE | DF | REQ_ONE | FAST_ZERO;
}

/// Human name of a command type.
pub fn command_name(ty: u16) -> &'static str {
    match ty {
        CMD_READ => "NBD_CMD_READ",
        CMD_WRITE => "NBD_CMD_WRITE",
        CMD_DISC => "NBD_CMD_DISC",
        CMD_FLUSH => "NBD_CMD_FLUSH",
        CMD_TRIM => "NBD_CMD_TRIM",
        CMD_CACHE => "NBD_CMD_CACHE",
        CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        _ => "unknown command",
    }
}

/// One request; `payload` is non-empty only for `NBD_CMD_WRITE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type (`CMD_*`).
    pub command: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (for WRITE: the payload length).
    pub length: u32,
    /// WRITE data.
    pub payload: Bytes,
}

impl Request {
    /// Decodes one request. A WRITE longer than `max_payload` (never above [`MAX_PAYLOAD`]) is a
    /// protocol error: its data cannot be skipped safely, so the connection must end.
    pub fn decode(buf: &mut BytesMut, max_payload: u32) -> Result<Option<Self>, ProtocolError> {
        let Some(head) = Self::decode_head(&buf[..], max_payload)? else {
            buf.reserve(REQUEST_HEADER_LEN - buf.len());
            return Ok(None);
        };
        let total = REQUEST_HEADER_LEN + head.payload_len();
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(REQUEST_HEADER_LEN);
        let payload = buf.split_to(head.payload_len()).freeze();
        Ok(Some(Self { payload, ..head }))
    }

    /// The request whose header starts `buf` (checked, not consumed), with an empty
    /// payload; `None` until the whole header is there. [`Request::payload_len`] tells how
    /// many payload bytes follow the header.
    pub fn decode_head(buf: &[u8], max_payload: u32) -> Result<Option<Self>, ProtocolError> {
        if buf.len() < REQUEST_HEADER_LEN {
            return Ok(None);
        }
        let mut head = &buf[..REQUEST_HEADER_LEN];
        let magic = head.get_u32();
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "request",
                found: magic.into(),
            });
        }
        let req = Self {
            flags: head.get_u16(),
            command: head.get_u16(),
            cookie: head.get_u64(),
            offset: head.get_u64(),
            length: head.get_u32(),
            payload: Bytes::new(),
        };
        let max = max_payload.min(MAX_PAYLOAD);
        if req.payload_len() > max as usize {
            return Err(ProtocolError::TooLong {
                what: "NBD_CMD_WRITE payload",
                len: req.payload_len() as u64,
                max: max.into(),
            });
        }
        Ok(Some(req))
    }

    /// Bytes of payload that follow the header on the wire (`length` for WRITE, else 0).
    pub fn payload_len(&self) -> usize {
        if self.command == CMD_WRITE {
            self.length as usize
        } else {
            0
        }
    }

    /// Appends the header (the caller sends `payload` after it, to avoid a copy).
    pub fn encode_header(&self, buf: &mut BytesMut) {
        buf.put_u32(REQUEST_MAGIC);
        buf.put_u16(self.flags);
        buf.put_u16(self.command);
        buf.put_u64(self.cookie);
        buf.put_u64(self.offset);
        buf.put_u32(self.length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_round_trip_waits_for_payload() {
        let req = Request {
            flags: cflags::FUA,
            command: CMD_WRITE,
            cookie: 42,
            offset: 1 << 20,
            length: 5,
            payload: Bytes::from_static(b"hello"),
        };
        let mut buf = BytesMut::new();
        req.encode_header(&mut buf);
        let mut partial = buf.clone();
        assert_eq!(Request::decode(&mut partial, MAX_PAYLOAD).unwrap(), None);
        buf.put_slice(&req.payload);
        buf.put_u8(0xaa);
        assert_eq!(Request::decode(&mut buf, MAX_PAYLOAD).unwrap(), Some(req));
        assert_eq!(&buf[..], &[0xaa]);
    }

    #[test]
    fn huge_write_rejected_without_allocation() {
        let mut buf = BytesMut::new();
        Request {
            flags: 0,
            command: CMD_WRITE,
            cookie: 1,
            offset: 0,
            length: u32::MAX,
            payload: Bytes::new(),
        }
        .encode_header(&mut buf);
        assert!(matches!(
            Request::decode(&mut buf, MAX_PAYLOAD),
            Err(ProtocolError::TooLong { .. })
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn read_length_is_not_a_payload() {
        let mut buf = BytesMut::new();
        Request {
            flags: 0,
            command: CMD_READ,
            cookie: 1,
            offset: 0,
            length: u32::MAX,
            payload: Bytes::new(),
        }
        .encode_header(&mut buf);
        let req = Request::decode(&mut buf, MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(req.length, u32::MAX);
        assert!(req.payload.is_empty());
    }

    #[test]
    fn command_numbers_are_the_specs() {
        let commands = [
            (CMD_READ, 0, "NBD_CMD_READ"),
            (CMD_WRITE, 1, "NBD_CMD_WRITE"),
            (CMD_DISC, 2, "NBD_CMD_DISC"),
            (CMD_FLUSH, 3, "NBD_CMD_FLUSH"),
            (CMD_TRIM, 4, "NBD_CMD_TRIM"),
            (CMD_CACHE, 5, "NBD_CMD_CACHE"),
            (CMD_WRITE_ZEROES, 6, "NBD_CMD_WRITE_ZEROES"),
            (CMD_BLOCK_STATUS, 7, "NBD_CMD_BLOCK_STATUS"),
        ];
        for (code, spec, name) in commands {
            assert_eq!(code, spec, "{name}");
            assert_eq!(command_name(code), name);
        }
        assert_eq!(command_name(8), "unknown command");
        use cflags::*;
        assert_eq!([FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO], [1, 2, 4, 8, 16]);
        assert_eq!(ALL, 31);
        assert_eq!(REQUEST_HEADER_LEN, 28);
    }

    fn write_of(len: u32) -> BytesMut {
        let mut buf = BytesMut::new();
        Request {
            flags: 0,
            command: CMD_WRITE,
            cookie: 5,
            offset: 4096,
            length: len,
            payload: Bytes::new(),
        }
        .encode_header(&mut buf);
        buf.put_bytes(0x5a, len as usize);
        buf
    }

    #[test]
    fn writes_up_to_the_negotiated_maximum() {
        let full = write_of(100);
        let req = crate::proto::assert_needs_more_until_complete(&full, REQUEST_HEADER_LEN, |b| {
            Request::decode(b, 100)
        });
        assert_eq!(&req.payload[..], &[0x5a; 100]);
        assert_eq!((req.cookie, req.offset, req.length), (5, 4096, 100));
        assert!(matches!(
            Request::decode(&mut write_of(101), 100),
            Err(ProtocolError::TooLong {
                len: 101,
                max: 100,
                ..
            })
        ));
        // A larger negotiated maximum is still capped at 32 MiB.
        let mut head = write_of(0);
        head[24..28].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert!(matches!(
            Request::decode(&mut head, u32::MAX),
            Err(ProtocolError::TooLong {
                max: 33_554_432,
                ..
            })
        ));
        let mut head = write_of(0);
        head[24..28].copy_from_slice(&MAX_PAYLOAD.to_be_bytes());
        assert_eq!(Request::decode(&mut head, u32::MAX), Ok(None));
        assert!(head.capacity() >= REQUEST_HEADER_LEN + MAX_PAYLOAD as usize);
    }
}
