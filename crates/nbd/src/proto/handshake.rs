//! The fixed-newstyle greeting, the client flags and the `NBD_OPT_EXPORT_NAME` reply.
//!
//! ```text
//! S: u64 NBDMAGIC | u64 IHAVEOPT | u16 handshake flags        (18 bytes)
//! C: u32 client flags                                         (4 bytes)
//! S (EXPORT_NAME only): u64 size | u16 transmission flags | 124 zero bytes unless NO_ZEROES
//! ```

use bytes::{Buf, BufMut, BytesMut};

use super::{
    ProtocolError, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, IHAVEOPT,
    NBD_MAGIC,
};

/// Size of the greeting on the wire.
pub const GREETING_LEN: usize = 18;

/// The server's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags (`FLAG_FIXED_NEWSTYLE`, `FLAG_NO_ZEROES`).
    pub flags: u16,
}

impl Greeting {
    /// Appends the greeting.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(NBD_MAGIC);
        buf.put_u64(IHAVEOPT);
        buf.put_u16(self.flags);
    }

    /// Decodes a greeting; only fixed newstyle servers are accepted.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        if buf.len() < GREETING_LEN {
            buf.reserve(GREETING_LEN - buf.len());
            return Ok(None);
        }
        let magic = buf.get_u64();
        if magic != NBD_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "greeting",
                found: magic,
            });
        }
        let opt = buf.get_u64();
        if opt != IHAVEOPT {
            // 0x00420281861253 would be an oldstyle server: not supported.
            return Err(ProtocolError::BadMagic {
                what: "newstyle greeting",
                found: opt,
            });
        }
        let flags = buf.get_u16();
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(ProtocolError::unexpected(
                "greeting",
                "server does not speak fixed newstyle",
            ));
        }
        Ok(Some(Self { flags }))
    }
}

/// The client's answer to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags(pub u32);

impl ClientFlags {
    /// Appends the flags.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.0);
    }

    /// Decodes the flags; unknown bits are a protocol error (the spec says close).
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        if buf.len() < 4 {
            buf.reserve(4 - buf.len());
            return Ok(None);
        }
        let flags = buf.get_u32();
        if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(ProtocolError::unexpected(
                "client flags",
                format!("unknown bits in {flags:#x}"),
            ));
        }
        Ok(Some(Self(flags)))
    }

    /// Whether the client asked to skip the zero padding.
    pub fn no_zeroes(&self) -> bool {
        self.0 & FLAG_C_NO_ZEROES != 0
    }
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
}

impl ExportNameReply {
    /// Appends the reply, with the 124 zero bytes unless `no_zeroes`.
    pub fn encode(&self, buf: &mut BytesMut, no_zeroes: bool) {
        buf.put_u64(self.size);
        buf.put_u16(self.flags);
        if !no_zeroes {
            buf.put_bytes(0, 124);
        }
    }

    /// Decodes the reply.
    pub fn decode(buf: &mut BytesMut, no_zeroes: bool) -> Result<Option<Self>, ProtocolError> {
        let need = if no_zeroes { 10 } else { 134 };
        if buf.len() < need {
            buf.reserve(need - buf.len());
            return Ok(None);
        }
        let size = buf.get_u64();
        let flags = buf.get_u16();
        buf.advance(need - 10);
        Ok(Some(Self { size, flags }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trip_and_partial() {
        let mut buf = BytesMut::new();
        Greeting { flags: 3 }.encode(&mut buf);
        assert_eq!(buf.len(), GREETING_LEN);
        let mut part = BytesMut::from(&buf[..10]);
        assert_eq!(Greeting::decode(&mut part).unwrap(), None);
        assert_eq!(
            Greeting::decode(&mut buf).unwrap(),
            Some(Greeting { flags: 3 })
        );
    }

    #[test]
    fn oldstyle_and_garbage_are_rejected() {
        let mut buf = BytesMut::new();
        buf.put_u64(NBD_MAGIC);
        buf.put_u64(0x0000_4202_8186_1253);
        buf.put_u16(0);
        assert!(matches!(
            Greeting::decode(&mut buf),
            Err(ProtocolError::BadMagic { .. })
        ));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\n"[..]);
        assert!(Greeting::decode(&mut buf).is_err());
    }

    #[test]
    fn unknown_client_flags_rejected() {
        let mut buf = BytesMut::from(&[0, 0, 0, 7][..]);
        assert!(ClientFlags::decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 3][..]);
        assert!(ClientFlags::decode(&mut buf).unwrap().unwrap().no_zeroes());
    }

    #[test]
    fn greeting_needs_all_18_bytes_and_fixed_newstyle() {
        let mut full = BytesMut::new();
        Greeting { flags: 1 }.encode(&mut full);
        let g = crate::proto::assert_needs_more_until_complete(&full, GREETING_LEN, |b| {
            Greeting::decode(b)
        });
        assert_eq!(g, Greeting { flags: 1 });
        for (flags, fixed) in [(0, false), (1, true), (2, false), (3, true)] {
            let mut buf = BytesMut::new();
            Greeting { flags }.encode(&mut buf);
            assert_eq!(Greeting::decode(&mut buf).is_ok(), fixed, "flags {flags}");
        }
    }

    #[test]
    fn client_flags_say_whether_zeroes_are_skipped() {
        for (bits, no_zeroes) in [(0, false), (1, false), (2, true), (3, true)] {
            let mut full = BytesMut::new();
            ClientFlags(bits).encode(&mut full);
            let f = crate::proto::assert_needs_more_until_complete(&full, 4, |b| {
                ClientFlags::decode(b)
            });
            assert_eq!(f, ClientFlags(bits));
            assert_eq!(f.no_zeroes(), no_zeroes, "flags {bits}");
        }
        assert!(ClientFlags::decode(&mut BytesMut::from(&[0, 0, 0, 4][..])).is_err());
    }

    #[test]
    fn export_name_reply_with_and_without_the_124_zeroes() {
        let reply = ExportNameReply {
            size: 0x0102_0304_0506_0708,
            flags: 0x0a0b,
        };
        for (no_zeroes, len) in [(false, 134), (true, 10)] {
            let mut full = BytesMut::new();
            reply.encode(&mut full, no_zeroes);
            assert_eq!(full.len(), len);
            assert_eq!(&full[..10], &[1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b]);
            assert!(full[10..].iter().all(|&b| b == 0));
            let got = crate::proto::assert_needs_more_until_complete(&full, len, |b| {
                ExportNameReply::decode(b, no_zeroes)
            });
            assert_eq!(got, reply);
        }
    }
}
