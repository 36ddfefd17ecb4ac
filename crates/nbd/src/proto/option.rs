//! Option haggling: option requests (client → server) and option replies (server → client).
//!
//! ```text
//! C: u64 IHAVEOPT | u32 option | u32 length | data
//! S: u64 0x3e889045565a9 | u32 option | u32 reply type | u32 length | data
//! ```
//!
//! Framing ([`RawOption`], [`RawReply`]) is separate from the typed payloads
//! ([`ClientOption`], [`ReplyKind`]): a malformed payload inside a well-framed option is answered
//! with `NBD_REP_ERR_INVALID` and haggling goes on, while a framing error ends the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{
    put_string, take_fixed_string, take_string, ProtocolError, IHAVEOPT, MAX_INFO_REQUESTS,
    MAX_OPTION_LEN, MAX_QUERIES, MAX_STRING, OPTION_REPLY_MAGIC,
};

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS` (never supported here).
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit set on every error reply type.
pub const REP_ERR_BIT: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
/// `NBD_REP_ERR_POLICY`.
pub const REP_ERR_POLICY: u32 = REP_ERR_BIT | 2;
/// `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
/// `NBD_REP_ERR_PLATFORM`.
pub const REP_ERR_PLATFORM: u32 = REP_ERR_BIT | 4;
/// `NBD_REP_ERR_TLS_REQD`.
pub const REP_ERR_TLS_REQD: u32 = REP_ERR_BIT | 5;
/// `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;
/// `NBD_REP_ERR_SHUTDOWN`.
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR_BIT | 7;
/// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR_BIT | 8;
/// `NBD_REP_ERR_TOO_BIG`.
pub const REP_ERR_TOO_BIG: u32 = REP_ERR_BIT | 9;

/// `NBD_INFO_EXPORT`.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Human name of an option code, for logs and errors.
pub fn option_name(code: u32) -> &'static str {
    match code {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "unknown option",
    }
}

/// Human name of an option error reply, for errors.
pub fn reply_error_name(code: u32) -> &'static str {
    match code {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        _ => "unknown option error",
    }
}

/// One framed option request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOption {
    /// Option code.
    pub code: u32,
    /// Option payload (at most [`MAX_OPTION_LEN`]).
    pub data: Bytes,
}

impl RawOption {
    /// Decodes one option request.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        if buf.len() < 16 {
            buf.reserve(16 - buf.len());
            return Ok(None);
        }
        let magic = u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
        if magic != IHAVEOPT {
            return Err(ProtocolError::BadMagic {
                what: "option request",
                found: magic,
            });
        }
        let code = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes"));
        if len > MAX_OPTION_LEN {
            return Err(ProtocolError::TooLong {
                what: "option request",
                len: len.into(),
                max: MAX_OPTION_LEN.into(),
            });
        }
        let total = 16 + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(16);
        let data = buf.split_to(len as usize).freeze();
        Ok(Some(Self { code, data }))
    }

    /// Appends the option request.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(IHAVEOPT);
        buf.put_u32(self.code);
        buf.put_u32(self.data.len() as u32);
        buf.put_slice(&self.data);
    }
}

/// Payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRequest {
    /// Export name (empty = default export).
    pub name: String,
    /// Requested `NBD_INFO_*` types.
    pub info: Vec<u16>,
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Export the contexts are for.
    pub export: String,
    /// Queries such as `base:allocation` or `qemu:dirty-bitmap:bk-tmp`.
    pub queries: Vec<String>,
}

/// A typed option request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME` (no reply on failure: the server closes).
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_INFO`.
    Info(GoRequest),
    /// `NBD_OPT_GO`.
    Go(GoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaRequest),
    /// Anything else (answered with `NBD_REP_ERR_UNSUP`).
    Other(u32),
}

impl ClientOption {
    /// The option code on the wire.
    pub fn code(&self) -> u32 {
        match self {
            Self::ExportName(_) => OPT_EXPORT_NAME,
            Self::Abort => OPT_ABORT,
            Self::List => OPT_LIST,
            Self::Info(_) => OPT_INFO,
            Self::Go(_) => OPT_GO,
            Self::StructuredReply => OPT_STRUCTURED_REPLY,
            Self::ListMetaContext(_) => OPT_LIST_META_CONTEXT,
            Self::SetMetaContext(_) => OPT_SET_META_CONTEXT,
            Self::Other(code) => *code,
        }
    }

    /// Parses the payload of a framed option.
    pub fn parse(raw: &RawOption) -> Result<Self, ProtocolError> {
        let mut data = raw.data.clone();
        let what = option_name(raw.code);
        let opt = match raw.code {
            OPT_EXPORT_NAME => {
                if data.len() > MAX_STRING as usize {
                    return Err(ProtocolError::TooLong {
                        what,
                        len: data.len() as u64,
                        max: MAX_STRING.into(),
                    });
                }
                let len = data.len();
                Self::ExportName(take_fixed_string(&mut data, len, what)?)
            }
            OPT_ABORT => Self::Abort,
            OPT_LIST => Self::List,
            OPT_STRUCTURED_REPLY => Self::StructuredReply,
            OPT_INFO | OPT_GO => {
                let name = take_string(&mut data, what)?;
                if data.remaining() < 2 {
                    return Err(ProtocolError::malformed(what, "missing info request count"));
                }
                let n = data.get_u16();
                if n > MAX_INFO_REQUESTS {
                    return Err(ProtocolError::TooLong {
                        what,
                        len: n.into(),
                        max: MAX_INFO_REQUESTS.into(),
                    });
                }
                if data.remaining() != 2 * n as usize {
                    return Err(ProtocolError::malformed(
                        what,
                        format!("{n} info requests but {} bytes left", data.remaining()),
                    ));
                }
                let info = (0..n).map(|_| data.get_u16()).collect();
                let req = GoRequest { name, info };
                if raw.code == OPT_GO {
                    Self::Go(req)
                } else {
                    Self::Info(req)
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let export = take_string(&mut data, what)?;
                if data.remaining() < 4 {
                    return Err(ProtocolError::malformed(what, "missing query count"));
                }
                let n = data.get_u32();
                if n > MAX_QUERIES {
                    return Err(ProtocolError::TooLong {
                        what,
                        len: n.into(),
                        max: MAX_QUERIES.into(),
                    });
                }
                let mut queries = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    queries.push(take_string(&mut data, what)?);
                }
                let req = MetaRequest { export, queries };
                if raw.code == OPT_SET_META_CONTEXT {
                    Self::SetMetaContext(req)
                } else {
                    Self::ListMetaContext(req)
                }
            }
            other => return Ok(Self::Other(other)),
        };
        // Every option we parse must consume its payload exactly.
        if data.has_remaining() {
            return Err(ProtocolError::malformed(
                what,
                format!("{} trailing bytes", data.remaining()),
            ));
        }
        Ok(opt)
    }

    /// Encodes the option into its framed form.
    pub fn to_raw(&self) -> RawOption {
        let mut data = BytesMut::new();
        match self {
            Self::ExportName(name) => data.put_slice(name.as_bytes()),
            Self::Abort | Self::List | Self::StructuredReply | Self::Other(_) => {}
            Self::Info(req) | Self::Go(req) => {
                put_string(&mut data, &req.name);
                data.put_u16(req.info.len() as u16);
                for i in &req.info {
                    data.put_u16(*i);
                }
            }
            Self::ListMetaContext(req) | Self::SetMetaContext(req) => {
                put_string(&mut data, &req.export);
                data.put_u32(req.queries.len() as u32);
                for q in &req.queries {
                    put_string(&mut data, q);
                }
            }
        }
        RawOption {
            code: self.code(),
            data: data.freeze(),
        }
    }
}

/// One framed option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The option this answers.
    pub option: u32,
    /// Reply type (`REP_*`).
    pub kind: u32,
    /// Reply payload (at most [`MAX_OPTION_LEN`]).
    pub data: Bytes,
}

impl RawReply {
    /// Decodes one option reply.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        if buf.len() < 20 {
            buf.reserve(20 - buf.len());
            return Ok(None);
        }
        let magic = u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
        if magic != OPTION_REPLY_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "option reply",
                found: magic,
            });
        }
        let option = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
        let kind = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes"));
        if len > MAX_OPTION_LEN {
            return Err(ProtocolError::TooLong {
                what: "option reply",
                len: len.into(),
                max: MAX_OPTION_LEN.into(),
            });
        }
        let total = 20 + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(20);
        let data = buf.split_to(len as usize).freeze();
        Ok(Some(Self { option, kind, data }))
    }

    /// Appends the reply.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(OPTION_REPLY_MAGIC);
        buf.put_u32(self.option);
        buf.put_u32(self.kind);
        buf.put_u32(self.data.len() as u32);
        buf.put_slice(&self.data);
    }
}

/// Block-size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size (power of two, 1..=64 KiB).
    pub min: u32,
    /// Preferred block size (power of two, ≥ max(min, 512)).
    pub preferred: u32,
    /// Maximum payload size (multiple of `min`, or 0xffffffff).
    pub max: u32,
}

impl BlockSize {
    /// Checks the spec's constraints between the three values.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let ok = self.min.is_power_of_two()
            && self.min <= 64 << 10
            && self.preferred.is_power_of_two()
            && self.preferred >= self.min.max(512)
            && (self.max == u32::MAX || (self.max >= self.min && self.max % self.min == 0));
        if ok {
            Ok(())
        } else {
            Err(ProtocolError::malformed(
                "NBD_INFO_BLOCK_SIZE",
                format!("inconsistent constraints {self:?}"),
            ))
        }
    }
}

/// A typed `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSize),
    /// An info type we do not know (clients must ignore it).
    Unknown(u16),
}

/// A typed option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyKind {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: one export of a list.
    Server {
        /// Export name.
        name: String,
        /// Free-form description (may be empty).
        description: String,
    },
    /// `NBD_REP_INFO`.
    Info(Info),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// Context id used in block-status chunks.
        id: u32,
        /// Context name.
        name: String,
    },
    /// An error reply (bit 31 set) with its optional message.
    Error {
        /// `REP_ERR_*` code.
        code: u32,
        /// Message, possibly empty.
        message: String,
    },
    /// A non-error reply type we do not know.
    Unknown(u32),
}

impl ReplyKind {
    /// Parses a framed reply's payload.
    pub fn parse(raw: &RawReply) -> Result<Self, ProtocolError> {
        let mut data = raw.data.clone();
        let what = "option reply";
        let kind = match raw.kind {
            REP_ACK => {
                if !data.is_empty() {
                    return Err(ProtocolError::malformed(what, "NBD_REP_ACK with payload"));
                }
                Self::Ack
            }
            REP_SERVER => {
                let name = take_string(&mut data, what)?;
                let len = data.len();
                let description = take_fixed_string(&mut data, len, what)?;
                Self::Server { name, description }
            }
            REP_INFO => {
                if data.len() < 2 {
                    return Err(ProtocolError::malformed(what, "NBD_REP_INFO without type"));
                }
                let ty = data.get_u16();
                let info = match ty {
                    INFO_EXPORT => {
                        if data.len() != 10 {
                            return Err(ProtocolError::malformed(
                                what,
                                format!("NBD_INFO_EXPORT of {} bytes", data.len() + 2),
                            ));
                        }
                        Info::Export {
                            size: data.get_u64(),
                            flags: data.get_u16(),
                        }
                    }
                    INFO_NAME | INFO_DESCRIPTION => {
                        if data.len() > MAX_STRING as usize {
                            return Err(ProtocolError::TooLong {
                                what: "NBD_INFO_NAME/DESCRIPTION",
                                len: data.len() as u64,
                                max: MAX_STRING.into(),
                            });
                        }
                        let len = data.len();
                        let s = take_fixed_string(&mut data, len, what)?;
                        if ty == INFO_NAME {
                            Info::Name(s)
                        } else {
                            Info::Description(s)
                        }
                    }
                    INFO_BLOCK_SIZE => {
                        if data.len() != 12 {
                            return Err(ProtocolError::malformed(
                                what,
                                format!("NBD_INFO_BLOCK_SIZE of {} bytes", data.len() + 2),
                            ));
                        }
                        let bs = BlockSize {
                            min: data.get_u32(),
                            preferred: data.get_u32(),
                            max: data.get_u32(),
                        };
                        bs.validate()?;
                        Info::BlockSize(bs)
                    }
                    other => {
                        data.clear();
                        Info::Unknown(other)
                    }
                };
                Self::Info(info)
            }
            REP_META_CONTEXT => {
                if data.len() < 4 {
                    return Err(ProtocolError::malformed(
                        what,
                        "NBD_REP_META_CONTEXT too short",
                    ));
                }
                let id = data.get_u32();
                if data.len() > MAX_STRING as usize {
                    return Err(ProtocolError::TooLong {
                        what: "meta context name",
                        len: data.len() as u64,
                        max: MAX_STRING.into(),
                    });
                }
                let len = data.len();
                let name = take_fixed_string(&mut data, len, what)?;
                Self::MetaContext { id, name }
            }
            code if code & REP_ERR_BIT != 0 => {
                // Error text is for humans; be lenient about its encoding.
                let message = String::from_utf8_lossy(&data).into_owned();
                data.clear();
                Self::Error { code, message }
            }
            other => {
                data.clear();
                Self::Unknown(other)
            }
        };
        if !data.is_empty() {
            return Err(ProtocolError::malformed(what, "trailing bytes"));
        }
        Ok(kind)
    }

    /// Builds the framed reply to `option`.
    pub fn to_raw(&self, option: u32) -> RawReply {
        let mut data = BytesMut::new();
        let kind = match self {
            Self::Ack => REP_ACK,
            Self::Server { name, description } => {
                put_string(&mut data, name);
                data.put_slice(description.as_bytes());
                REP_SERVER
            }
            Self::Info(info) => {
                match info {
                    Info::Export { size, flags } => {
                        data.put_u16(INFO_EXPORT);
                        data.put_u64(*size);
                        data.put_u16(*flags);
                    }
                    Info::Name(s) => {
                        data.put_u16(INFO_NAME);
                        data.put_slice(s.as_bytes());
                    }
                    Info::Description(s) => {
                        data.put_u16(INFO_DESCRIPTION);
                        data.put_slice(s.as_bytes());
                    }
                    Info::BlockSize(bs) => {
                        data.put_u16(INFO_BLOCK_SIZE);
                        data.put_u32(bs.min);
                        data.put_u32(bs.preferred);
                        data.put_u32(bs.max);
                    }
                    Info::Unknown(ty) => data.put_u16(*ty),
                }
                REP_INFO
            }
            Self::MetaContext { id, name } => {
                data.put_u32(*id);
                data.put_slice(name.as_bytes());
                REP_META_CONTEXT
            }
            Self::Error { code, message } => {
                data.put_slice(message.as_bytes());
                *code
            }
            Self::Unknown(kind) => *kind,
        };
        RawReply {
            option,
            kind,
            data: data.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(opt: ClientOption) {
        let mut buf = BytesMut::new();
        opt.to_raw().encode(&mut buf);
        let raw = RawOption::decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(ClientOption::parse(&raw).unwrap(), opt);
    }

    #[test]
    fn options_round_trip() {
        round_trip(ClientOption::ExportName("backup".into()));
        round_trip(ClientOption::Go(GoRequest {
            name: "disk".into(),
            info: vec![INFO_BLOCK_SIZE, INFO_NAME],
        }));
        round_trip(ClientOption::SetMetaContext(MetaRequest {
            export: "snap".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:bk-tmp".into()],
        }));
        round_trip(ClientOption::StructuredReply);
        round_trip(ClientOption::Abort);
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            ReplyKind::Ack,
            ReplyKind::Info(Info::Export {
                size: 1 << 30,
                flags: 0xded,
            }),
            ReplyKind::Info(Info::BlockSize(BlockSize {
                min: 1,
                preferred: 4096,
                max: 32 << 20,
            })),
            ReplyKind::MetaContext {
                id: 7,
                name: "base:allocation".into(),
            },
            ReplyKind::Server {
                name: "a".into(),
                description: "b".into(),
            },
            ReplyKind::Error {
                code: REP_ERR_UNKNOWN,
                message: "no such export".into(),
            },
        ] {
            let mut buf = BytesMut::new();
            r.to_raw(OPT_GO).encode(&mut buf);
            let raw = RawReply::decode(&mut buf).unwrap().unwrap();
            assert_eq!(ReplyKind::parse(&raw).unwrap(), r);
        }
    }

    #[test]
    fn hostile_lengths_are_rejected_before_allocation() {
        let mut buf = BytesMut::new();
        buf.put_u64(IHAVEOPT);
        buf.put_u32(OPT_GO);
        buf.put_u32(u32::MAX);
        assert!(matches!(
            RawOption::decode(&mut buf),
            Err(ProtocolError::TooLong { .. })
        ));
        assert!(buf.capacity() < 1 << 20);

        // Inner name length points past the payload.
        let raw = RawOption {
            code: OPT_GO,
            data: Bytes::from_static(&[0, 0, 0x10, 0, b'a', 0, 0]),
        };
        assert!(ClientOption::parse(&raw).is_err());
        // Info count disagrees with the payload.
        let raw = RawOption {
            code: OPT_GO,
            data: Bytes::from_static(&[0, 0, 0, 1, b'a', 0, 5, 0, 3]),
        };
        assert!(ClientOption::parse(&raw).is_err());
        // Bad block size constraints.
        let raw = RawReply {
            option: OPT_GO,
            kind: REP_INFO,
            data: Bytes::from_static(&[0, 3, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1]),
        };
        assert!(ReplyKind::parse(&raw).is_err());
    }

    #[test]
    fn option_and_reply_numbers_are_the_specs() {
        let options = [
            (OPT_EXPORT_NAME, 1, "NBD_OPT_EXPORT_NAME"),
            (OPT_ABORT, 2, "NBD_OPT_ABORT"),
            (OPT_LIST, 3, "NBD_OPT_LIST"),
            (OPT_STARTTLS, 5, "NBD_OPT_STARTTLS"),
            (OPT_INFO, 6, "NBD_OPT_INFO"),
            (OPT_GO, 7, "NBD_OPT_GO"),
            (OPT_STRUCTURED_REPLY, 8, "NBD_OPT_STRUCTURED_REPLY"),
            (OPT_LIST_META_CONTEXT, 9, "NBD_OPT_LIST_META_CONTEXT"),
            (OPT_SET_META_CONTEXT, 10, "NBD_OPT_SET_META_CONTEXT"),
        ];
        for (code, spec, name) in options {
            assert_eq!(code, spec, "{name}");
            assert_eq!(option_name(code), name);
        }
        assert_eq!(option_name(4), "unknown option");
        assert_eq!(
            [REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT],
            [1, 2, 3, 4]
        );
        // The spec writes the error replies as 2^31 + n.
        let errors = [
            (REP_ERR_UNSUP, 0x8000_0001, "NBD_REP_ERR_UNSUP"),
            (REP_ERR_POLICY, 0x8000_0002, "NBD_REP_ERR_POLICY"),
            (REP_ERR_INVALID, 0x8000_0003, "NBD_REP_ERR_INVALID"),
            (REP_ERR_PLATFORM, 0x8000_0004, "NBD_REP_ERR_PLATFORM"),
            (REP_ERR_TLS_REQD, 0x8000_0005, "NBD_REP_ERR_TLS_REQD"),
            (REP_ERR_UNKNOWN, 0x8000_0006, "NBD_REP_ERR_UNKNOWN"),
            (REP_ERR_SHUTDOWN, 0x8000_0007, "NBD_REP_ERR_SHUTDOWN"),
            (
                REP_ERR_BLOCK_SIZE_REQD,
                0x8000_0008,
                "NBD_REP_ERR_BLOCK_SIZE_REQD",
            ),
            (REP_ERR_TOO_BIG, 0x8000_0009, "NBD_REP_ERR_TOO_BIG"),
        ];
        for (code, spec, name) in errors {
            assert_eq!(code, spec, "{name}");
            assert_eq!(reply_error_name(code), name);
        }
        assert_eq!(reply_error_name(0x8000_000a), "unknown option error");
        assert_eq!(reply_error_name(1), "unknown option error");
        assert_eq!(
            [INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn option_requests_up_to_the_limit_are_framed() {
        for len in [0, 3, MAX_OPTION_LEN as usize] {
            let raw = RawOption {
                code: 99,
                data: Bytes::from(vec![7; len]),
            };
            let mut full = BytesMut::new();
            raw.encode(&mut full);
            let got = crate::proto::assert_needs_more_until_complete(&full, 16, RawOption::decode);
            assert_eq!(got, raw);
        }
        let mut buf = BytesMut::new();
        buf.put_u64(IHAVEOPT);
        buf.put_u32(OPT_GO);
        buf.put_u32(MAX_OPTION_LEN + 1);
        assert_eq!(
            RawOption::decode(&mut buf),
            Err(ProtocolError::TooLong {
                what: "option request",
                len: 65_537,
                max: 65_536
            })
        );
    }

    #[test]
    fn option_replies_up_to_the_limit_are_framed() {
        for len in [0, 3, MAX_OPTION_LEN as usize] {
            let raw = RawReply {
                option: OPT_GO,
                kind: REP_ERR_INVALID,
                data: Bytes::from(vec![b'e'; len]),
            };
            let mut full = BytesMut::new();
            raw.encode(&mut full);
            let got = crate::proto::assert_needs_more_until_complete(&full, 20, RawReply::decode);
            assert_eq!(got, raw);
        }
        let mut buf = BytesMut::new();
        buf.put_u64(OPTION_REPLY_MAGIC);
        buf.put_u32(OPT_GO);
        buf.put_u32(REP_ACK);
        buf.put_u32(MAX_OPTION_LEN + 1);
        assert!(matches!(
            RawReply::decode(&mut buf),
            Err(ProtocolError::TooLong { len: 65_537, .. })
        ));
    }

    fn too_long(r: Result<impl std::fmt::Debug, ProtocolError>) -> (u64, u64) {
        match r {
            Err(ProtocolError::TooLong { len, max, .. }) => (len, max),
            other => panic!("expected TooLong, got {other:?}"),
        }
    }

    #[test]
    fn option_payload_counts_up_to_their_limits() {
        let name = "n".repeat(4096);
        round_trip(ClientOption::ExportName(name.clone()));
        let raw = ClientOption::ExportName(name.clone() + "n").to_raw();
        assert_eq!(too_long(ClientOption::parse(&raw)), (4097, 4096));

        let go = |n: u16| GoRequest {
            name: name.clone(),
            info: (0..n).collect(),
        };
        round_trip(ClientOption::Go(go(64)));
        round_trip(ClientOption::Info(go(0)));
        let raw = ClientOption::Go(go(65)).to_raw();
        assert_eq!(too_long(ClientOption::parse(&raw)), (65, 64));

        let meta = |n: usize| MetaRequest {
            export: String::new(),
            queries: vec!["base:allocation".into(); n],
        };
        round_trip(ClientOption::ListMetaContext(meta(0)));
        round_trip(ClientOption::SetMetaContext(meta(64)));
        let raw = ClientOption::ListMetaContext(meta(65)).to_raw();
        assert_eq!(too_long(ClientOption::parse(&raw)), (65, 64));
        round_trip(ClientOption::List);
        round_trip(ClientOption::Other(OPT_STARTTLS));

        // Counts cut short are malformed, not a panic.
        for data in [&[0, 0, 0, 0, 0][..], &[0, 0, 0, 0, 0, 0, 0][..]] {
            for code in [OPT_GO, OPT_SET_META_CONTEXT] {
                let raw = RawOption {
                    code,
                    data: Bytes::copy_from_slice(data),
                };
                let r = ClientOption::parse(&raw);
                assert!(
                    matches!(r, Err(ProtocolError::Malformed { .. })),
                    "{code} {data:?}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn block_size_constraints_follow_the_spec() {
        let ok = |min, preferred, max| {
            BlockSize {
                min,
                preferred,
                max,
            }
            .validate()
            .is_ok()
        };
        assert!(ok(1, 4096, 32 << 20));
        assert!(ok(512, 512, u32::MAX), "no maximum, not a multiple of min");
        assert!(ok(65536, 65536, 65536));
        assert!(ok(4096, 4096, 8192));
        assert!(!ok(3, 4096, u32::MAX), "min not a power of two");
        assert!(!ok(131072, 131072, u32::MAX), "min above 64 KiB");
        assert!(!ok(1, 3000, u32::MAX), "preferred not a power of two");
        assert!(!ok(1, 256, u32::MAX), "preferred below 512");
        assert!(!ok(4096, 2048, u32::MAX), "preferred below min");
        assert!(!ok(512, 4096, 1000), "max not a multiple of min");
        assert!(!ok(4096, 4096, 0), "max below min");
    }

    fn reply(kind: u32, data: &[u8]) -> Result<ReplyKind, ProtocolError> {
        ReplyKind::parse(&RawReply {
            option: OPT_GO,
            kind,
            data: Bytes::copy_from_slice(data),
        })
    }

    #[test]
    fn reply_payloads_at_their_length_boundaries() {
        assert_eq!(
            reply(REP_INFO, &[0, 99]).unwrap(),
            ReplyKind::Info(Info::Unknown(99)),
            "a bare unknown info type"
        );
        assert!(reply(REP_INFO, &[0]).is_err());
        assert!(reply(REP_INFO, &[]).is_err());
        assert!(reply(REP_INFO, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(reply(REP_ACK, &[0]).is_err());
        let long = "d".repeat(4096);
        for (ty, info) in [
            (INFO_NAME, Info::Name(long.clone())),
            (INFO_DESCRIPTION, Info::Description(long.clone())),
            (INFO_NAME, Info::Name("disk".into())),
            (INFO_DESCRIPTION, Info::Description(String::new())),
        ] {
            let r = ReplyKind::Info(info);
            assert_eq!(ReplyKind::parse(&r.to_raw(OPT_GO)).unwrap(), r);
            let mut data = vec![0, ty as u8];
            data.extend(std::iter::repeat_n(b'd', 4097));
            assert_eq!(too_long(reply(REP_INFO, &data)), (4097, 4096));
        }

        assert_eq!(
            reply(REP_META_CONTEXT, &[0, 0, 0, 9]).unwrap(),
            ReplyKind::MetaContext {
                id: 9,
                name: String::new()
            }
        );
        assert!(reply(REP_META_CONTEXT, &[0, 0, 9]).is_err());
        let r = ReplyKind::MetaContext {
            id: 1,
            name: long.clone(),
        };
        assert_eq!(ReplyKind::parse(&r.to_raw(OPT_GO)).unwrap(), r);
        let mut data = vec![0, 0, 0, 1];
        data.extend(std::iter::repeat_n(b'm', 4097));
        assert_eq!(too_long(reply(REP_META_CONTEXT, &data)), (4097, 4096));
    }

    #[test]
    fn only_bit_31_makes_a_reply_an_error() {
        assert_eq!(reply(77, &[1, 2]).unwrap(), ReplyKind::Unknown(77));
        assert_eq!(
            reply(0x8000_0063, b"m\xff").unwrap(),
            ReplyKind::Error {
                code: 0x8000_0063,
                message: "m\u{fffd}".into()
            },
            "unknown error codes are errors; messages are read leniently"
        );
        assert_eq!(
            reply(REP_ERR_POLICY, b"").unwrap(),
            ReplyKind::Error {
                code: REP_ERR_POLICY,
                message: String::new()
            }
        );
    }
}
