//! NBD client: fixed-newstyle handshake with `NBD_OPT_GO`, structured replies and meta
//! contexts, then pipelined requests with a bounded number in flight.
//!
//! A [`Client`] is a cheap clone (`Arc` inside); many tasks may issue requests at once. One
//! reader task routes replies to requests by cookie. With [`ClientOptions::align_64k`] every
//! READ and BLOCK_STATUS is cut at 64 KiB boundaries into pieces of at most 64 KiB and TRIM
//! only covers whole 64 KiB clusters (or the tail of the export; trimming less is always
//! allowed): the workarounds for QEMU 7.2's snapshot-access bugs (wrong data across
//! copied/uncopied cluster boundaries, and an abort on unaligned TRIM).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

use crate::error::{Error, Result};
use crate::export::BlockSize;
use crate::proto::handshake::{ClientFlags, ExportNameReply, Greeting};
use crate::proto::option::{self, ClientOption, GoRequest, Info, MetaRequest, RawReply, ReplyKind};
use crate::proto::reply::{Chunk, Reply, FLAG_DONE};
use crate::proto::request::{self, cflags, Request};
use crate::proto::{
    tflags, ProtocolError, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_NO_ZEROES, MAX_PAYLOAD,
};
use crate::server::FrameReader;

/// The QEMU 7.2 snapshot-access cluster: requests never cross this boundary with `align_64k`.
pub const ALIGN_64K: u64 = 64 << 10;
/// Largest BLOCK_STATUS/WRITE_ZEROES/TRIM length per request (QEMU caps lengths near 2 GiB).
const MAX_RANGE: u64 = 1 << 30;

/// Connection options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Negotiate structured replies (needed for holes and block status).
    pub structured: bool,
    /// Meta contexts to select, e.g. `base:allocation`, `qemu:dirty-bitmap:bk-tmp`.
    pub meta_contexts: Vec<String>,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Split READ/BLOCK_STATUS/TRIM at 64 KiB boundaries (QEMU 7.2 snapshot-access workaround).
    pub align_64k: bool,
    /// Deadline for connect + handshake.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            structured: true,
            meta_contexts: vec![crate::server::BASE_ALLOCATION.to_owned()],
            max_in_flight: 64,
            align_64k: false,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handshake established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name as requested.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`proto::tflags`).
    pub flags: u16,
    /// Block-size constraints, if the server sent them.
    pub block_size: Option<BlockSize>,
    /// Structured replies are on.
    pub structured: bool,
    /// Selected meta contexts: (id, name).
    pub contexts: Vec<(u32, String)>,
}

/// One piece of a read: data or a hole that reads as zeroes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPiece {
    /// Bytes at `offset`.
    Data {
        /// Absolute offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Zeroes at `offset`.
    Hole {
        /// Absolute offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl ReadPiece {
    /// Start offset.
    pub fn offset(&self) -> u64 {
        match self {
            Self::Data { offset, .. } | Self::Hole { offset, .. } => *offset,
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Data { data, .. } => data.len() as u64,
            Self::Hole { len, .. } => *len,
        }
    }
    /// Whether the piece is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A block-status extent with its absolute offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockExtent {
    /// Absolute offset.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Context flags (`base:allocation`: 1 = hole, 2 = zero; dirty bitmap: 1 = dirty).
    pub flags: u32,
}

struct Pending {
    command: u16,
    length: u32,
    tx: mpsc::Sender<Reply>,
}

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

struct Inner {
    info: ExportInfo,
    align_64k: bool,
    max_in_flight: usize,
    writer: tokio::sync::Mutex<BufWriter<BoxWrite>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_cookie: AtomicU64,
    slots: Semaphore,
    closed: AtomicBool,
    failure: Mutex<Option<ProtocolError>>,
}

/// A connected NBD client (clone freely; all clones share the connection).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &self.inner.info)
            .finish()
    }
}

impl Client {
    /// Connects to a unix socket and selects `export`.
    pub async fn connect_unix(
        path: impl AsRef<Path>,
        export: &str,
        options: &ClientOptions,
    ) -> Result<Self> {
        let path = path.as_ref();
        let fut = async {
            let s = UnixStream::connect(path)
                .await
                .map_err(|source| Error::Connect {
                    addr: path.display().to_string(),
                    source,
                })?;
            let (r, w) = s.into_split();
            Self::handshake(Box::new(r), Box::new(w), export, options).await
        };
        tokio::time::timeout(options.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("nbd handshake with {}", path.display()),
            })?
    }

    /// Connects over TCP and selects `export`.
    pub async fn connect_tcp(
        addr: SocketAddr,
        export: &str,
        options: &ClientOptions,
    ) -> Result<Self> {
        let fut = async {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|source| Error::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            Self::handshake(Box::new(r), Box::new(w), export, options).await
        };
        tokio::time::timeout(options.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("nbd handshake with {addr}"),
            })?
    }

    async fn handshake(
        r: Box<dyn AsyncRead + Send + Unpin>,
        w: BoxWrite,
        export: &str,
        options: &ClientOptions,
    ) -> Result<Self> {
        let mut reader = FrameReader::new(r);
        let mut w = BufWriter::with_capacity(256 << 10, w);
        let greeting = reader.next(Greeting::decode).await?.ok_or(Error::Closed)?;
        let mut cf = FLAG_C_FIXED_NEWSTYLE;
        if greeting.flags & FLAG_NO_ZEROES != 0 {
            cf |= FLAG_C_NO_ZEROES;
        }
        let mut out = BytesMut::new();
        ClientFlags(cf).encode(&mut out);
        w.write_all(&out).await?;

        let mut structured = false;
        if options.structured {
            let replies =
                option_exchange(&mut reader, &mut w, ClientOption::StructuredReply).await?;
            structured = matches!(replies.last(), Some(ReplyKind::Ack));
        }
        let mut contexts = Vec::new();
        if structured && !options.meta_contexts.is_empty() {
            let replies = option_exchange(
                &mut reader,
                &mut w,
                ClientOption::SetMetaContext(MetaRequest {
                    export: export.to_owned(),
                    queries: options.meta_contexts.clone(),
                }),
            )
            .await?;
            if matches!(replies.last(), Some(ReplyKind::Ack)) {
                for r in replies {
                    if let ReplyKind::MetaContext { id, name } = r {
                        contexts.push((id, name));
                    }
                }
            }
        }
        let replies = option_exchange(
            &mut reader,
            &mut w,
            ClientOption::Go(GoRequest {
                name: export.to_owned(),
                info: vec![option::INFO_BLOCK_SIZE],
            }),
        )
        .await?;
        let (size, flags, block_size) = match replies.last() {
            Some(ReplyKind::Ack) => {
                let mut export_info = None;
                let mut block_size = None;
                for r in &replies {
                    match r {
                        ReplyKind::Info(Info::Export { size, flags }) => {
                            export_info = Some((*size, *flags));
                        }
                        ReplyKind::Info(Info::BlockSize(bs)) => block_size = Some(*bs),
                        _ => {}
                    }
                }
                let (size, flags) = export_info.ok_or_else(|| {
                    ProtocolError::unexpected("NBD_OPT_GO", "ACK without NBD_INFO_EXPORT")
                })?;
                (size, flags, block_size)
            }
            Some(ReplyKind::Error { code, .. }) if *code == option::REP_ERR_UNSUP => {
                // Old server: fall back to NBD_OPT_EXPORT_NAME (no error reporting there).
                let mut out = BytesMut::new();
                ClientOption::ExportName(export.to_owned())
                    .to_raw()
                    .encode(&mut out);
                w.write_all(&out).await?;
                w.flush().await?;
                let no_zeroes = cf & FLAG_C_NO_ZEROES != 0;
                let r = reader
                    .next(|b| ExportNameReply::decode(b, no_zeroes))
                    .await?
                    .ok_or(Error::Closed)?;
                (r.size, r.flags, None)
            }
            Some(ReplyKind::Error { code, message }) => {
                return Err(Error::Refused {
                    option: "NBD_OPT_GO",
                    reply: option::reply_error_name(*code),
                    message: message.clone(),
                })
            }
            _ => return Err(ProtocolError::unexpected("NBD_OPT_GO", "no final reply").into()),
        };
        if flags & tflags::HAS_FLAGS == 0 {
            return Err(
                ProtocolError::unexpected("transmission flags", "HAS_FLAGS not set").into(),
            );
        }
        let info = ExportInfo {
            name: export.to_owned(),
            size,
            flags,
            block_size,
            structured,
            contexts,
        };
        debug!(?info, "nbd client connected");
        let max_in_flight = options.max_in_flight.clamp(1, 1024);
        let inner = Arc::new(Inner {
            info,
            align_64k: options.align_64k,
            max_in_flight,
            writer: tokio::sync::Mutex::new(w),
            pending: Mutex::new(HashMap::new()),
            next_cookie: AtomicU64::new(1),
            slots: Semaphore::new(max_in_flight),
            closed: AtomicBool::new(false),
            failure: Mutex::new(None),
        });
        tokio::spawn(reply_loop(Arc::downgrade(&inner), reader));
        Ok(Self { inner })
    }

    /// What the handshake established.
    pub fn info(&self) -> &ExportInfo {
        &self.inner.info
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    /// Whether the server granted meta context `name`.
    pub fn has_context(&self, name: &str) -> bool {
        self.context_id(name).is_some()
    }

    fn context_id(&self, name: &str) -> Option<u32> {
        self.inner
            .info
            .contexts
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
    }

    fn closed_error(&self) -> Error {
        match self.inner.failure.lock().ok().and_then(|f| f.clone()) {
            Some(p) => Error::Protocol(p),
            None => Error::Closed,
        }
    }

    /// Sends one request and returns the receiver for its reply messages.
    async fn submit(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: Option<Bytes>,
    ) -> Result<(mpsc::Receiver<Reply>, tokio::sync::SemaphorePermit<'_>)> {
        let permit = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| self.closed_error())?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let cookie = self.inner.next_cookie.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        self.inner
            .pending
            .lock()
            .map_err(|_| Error::Closed)?
            .insert(
                cookie,
                Pending {
                    command,
                    length,
                    tx,
                },
            );
        if self.inner.closed.load(Ordering::Acquire) {
            if let Ok(mut p) = self.inner.pending.lock() {
                p.remove(&cookie);
            }
            return Err(self.closed_error());
        }
        let req = Request {
            flags,
            command,
            cookie,
            offset,
            length,
            payload: Bytes::new(),
        };
        let mut head = BytesMut::with_capacity(28);
        req.encode_header(&mut head);
        let mut w = self.inner.writer.lock().await;
        let res = async {
            w.write_all(&head).await?;
            if let Some(p) = &payload {
                w.write_all(p).await?;
            }
            w.flush().await
        }
        .await;
        drop(w);
        if let Err(e) = res {
            if let Ok(mut p) = self.inner.pending.lock() {
                p.remove(&cookie);
            }
            return Err(e.into());
        }
        Ok((rx, permit))
    }

    async fn simple_command(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: Option<Bytes>,
    ) -> Result<()> {
        let (mut rx, _permit) = self.submit(command, flags, offset, length, payload).await?;
        let mut error = None;
        while let Some(reply) = rx.recv().await {
            match reply {
                Reply::Simple { error: 0, .. } => return error.map_or(Ok(()), Err),
                Reply::Simple { error: e, .. } => {
                    return Err(remote(command, offset, length.into(), e, String::new()))
                }
                Reply::Structured { flags, chunk, .. } => {
                    match chunk {
                        Chunk::Error { errno, message, .. } => {
                            error.get_or_insert(remote(
                                command,
                                offset,
                                length.into(),
                                errno,
                                message,
                            ));
                        }
                        Chunk::None => {}
                        other => {
                            error.get_or_insert(Error::Protocol(ProtocolError::unexpected(
                                "reply chunk",
                                format!(
                                    "type {} to {}",
                                    other.kind(),
                                    request::command_name(command)
                                ),
                            )));
                        }
                    }
                    if flags & FLAG_DONE != 0 {
                        return error.map_or(Ok(()), Err);
                    }
                }
            }
        }
        Err(self.closed_error())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::Usage(format!(
                "range {offset:#x}+{len:#x} beyond export size {:#x}",
                self.size()
            ))),
        }
    }

    /// Reads one request's worth (≤ 32 MiB) as data and hole pieces, sorted by offset.
    async fn read_one(&self, offset: u64, len: u32) -> Result<Vec<ReadPiece>> {
        let (mut rx, _permit) = self.submit(request::CMD_READ, 0, offset, len, None).await?;
        let mut pieces = Vec::new();
        let mut error = None;
        let end = offset + u64::from(len);
        let bad = |detail: String| Error::Protocol(ProtocolError::unexpected("read reply", detail));
        while let Some(reply) = rx.recv().await {
            match reply {
                Reply::Simple { error: 0, data, .. } => {
                    let data = data.unwrap_or_default();
                    if data.len() != len as usize {
                        return Err(bad(format!("simple reply of {} bytes", data.len())));
                    }
                    return Ok(vec![ReadPiece::Data { offset, data }]);
                }
                Reply::Simple { error: e, .. } => {
                    return Err(remote(
                        request::CMD_READ,
                        offset,
                        len.into(),
                        e,
                        String::new(),
                    ))
                }
                Reply::Structured { flags, chunk, .. } => {
                    match chunk {
                        Chunk::OffsetData { offset: o, data } => {
                            if o < offset || o + data.len() as u64 > end {
                                error.get_or_insert(bad(format!(
                                    "data chunk at {o:#x} outside request"
                                )));
                            } else {
                                pieces.push(ReadPiece::Data { offset: o, data });
                            }
                        }
                        Chunk::OffsetHole { offset: o, length } => {
                            if o < offset || o + u64::from(length) > end {
                                error.get_or_insert(bad(format!(
                                    "hole chunk at {o:#x} outside request"
                                )));
                            } else {
                                pieces.push(ReadPiece::Hole {
                                    offset: o,
                                    len: length.into(),
                                });
                            }
                        }
                        Chunk::Error {
                            errno,
                            message,
                            offset: eo,
                        } => {
                            error.get_or_insert(remote(
                                request::CMD_READ,
                                eo.unwrap_or(offset),
                                len.into(),
                                errno,
                                message,
                            ));
                        }
                        Chunk::None => {}
                        other => {
                            error.get_or_insert(bad(format!("chunk type {}", other.kind())));
                        }
                    }
                    if flags & FLAG_DONE != 0 {
                        if let Some(e) = error {
                            return Err(e);
                        }
                        pieces.sort_by_key(ReadPiece::offset);
                        let mut pos = offset;
                        for p in &pieces {
                            if p.offset() != pos {
                                return Err(bad(format!(
                                    "chunks leave a gap or overlap at {pos:#x}"
                                )));
                            }
                            pos += p.len();
                        }
                        if pos != end {
                            return Err(bad(format!("chunks end at {pos:#x}, not {end:#x}")));
                        }
                        return Ok(pieces);
                    }
                }
            }
        }
        Err(self.closed_error())
    }

    /// Cuts `offset..offset+len` into request-sized pieces (64 KiB-aligned with `align_64k`).
    fn split(&self, offset: u64, len: u64, max: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let mut next = (pos + max).min(end);
            if self.inner.align_64k {
                next = next.min((pos / ALIGN_64K + 1) * ALIGN_64K);
            }
            out.push((pos, next - pos));
            pos = next;
        }
        out
    }

    /// Reads `len` bytes at `offset` as data and hole pieces (sorted, contiguous).
    pub async fn read_pieces(&self, offset: u64, len: u64) -> Result<Vec<ReadPiece>> {
        self.check_range(offset, len)?;
        let parts = self.split(offset, len, u64::from(MAX_PAYLOAD));
        if parts.len() == 1 {
            return self.read_one(offset, len as u32).await;
        }
        let mut handles = VecDeque::new();
        let mut out = Vec::new();
        for (o, l) in parts {
            let c = self.clone();
            handles.push_back(tokio::spawn(async move { c.read_one(o, l as u32).await }));
            if handles.len() >= self.inner.max_in_flight {
                if let Some(h) = handles.pop_front() {
                    out.extend(join(h).await?);
                }
            }
        }
        while let Some(h) = handles.pop_front() {
            out.extend(join(h).await?);
        }
        Ok(out)
    }

    /// Reads `len` bytes at `offset`, holes filled with zeroes.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let pieces = self.read_pieces(offset, len).await?;
        if let [ReadPiece::Data { data, .. }] = pieces.as_slice() {
            return Ok(data.clone());
        }
        let mut buf = BytesMut::with_capacity(len as usize);
        for p in pieces {
            match p {
                ReadPiece::Data { data, .. } => buf.extend_from_slice(&data),
                ReadPiece::Hole { len, .. } => buf.resize(buf.len() + len as usize, 0),
            }
        }
        Ok(buf.freeze())
    }

    /// Streams `range` in `chunk`-byte reads with up to `depth` of them in flight; yields
    /// `(offset, bytes)` in order.
    pub fn read_range(&self, range: Range<u64>, chunk: u32, depth: usize) -> ReadStream {
        ReadStream {
            client: self.clone(),
            next: range.start,
            end: range.end,
            chunk: u64::from(chunk.clamp(512, MAX_PAYLOAD)),
            depth: depth.max(1),
            queue: VecDeque::new(),
        }
    }

    async fn block_status_one(&self, offset: u64, len: u32, id: u32) -> Result<Vec<BlockExtent>> {
        let (mut rx, _permit) = self
            .submit(request::CMD_BLOCK_STATUS, 0, offset, len, None)
            .await?;
        let mut extents: Option<Vec<BlockExtent>> = None;
        let mut error = None;
        while let Some(reply) = rx.recv().await {
            match reply {
                Reply::Simple { error: e, .. } => {
                    let e = if e == 0 {
                        Error::Protocol(ProtocolError::unexpected(
                            "block status reply",
                            "simple success reply",
                        ))
                    } else {
                        remote(
                            request::CMD_BLOCK_STATUS,
                            offset,
                            len.into(),
                            e,
                            String::new(),
                        )
                    };
                    return Err(e);
                }
                Reply::Structured { flags, chunk, .. } => {
                    match chunk {
                        Chunk::BlockStatus {
                            context,
                            extents: list,
                        } if context == id => {
                            let mut pos = offset;
                            let end = offset + u64::from(len);
                            let mut v = Vec::with_capacity(list.len().min(4096));
                            for e in list {
                                if pos >= end {
                                    break;
                                }
                                if e.length == 0 {
                                    error.get_or_insert(Error::Protocol(ProtocolError::malformed(
                                        "block status",
                                        "zero-length extent",
                                    )));
                                    break;
                                }
                                let l = u64::from(e.length).min(end - pos);
                                v.push(BlockExtent {
                                    offset: pos,
                                    length: l,
                                    flags: e.flags,
                                });
                                pos += l;
                            }
                            extents = Some(v);
                        }
                        Chunk::BlockStatus { .. } | Chunk::None => {}
                        Chunk::Error { errno, message, .. } => {
                            error.get_or_insert(remote(
                                request::CMD_BLOCK_STATUS,
                                offset,
                                len.into(),
                                errno,
                                message,
                            ));
                        }
                        other => {
                            error.get_or_insert(Error::Protocol(ProtocolError::unexpected(
                                "block status reply",
                                format!("chunk type {}", other.kind()),
                            )));
                        }
                    }
                    if flags & FLAG_DONE != 0 {
                        if let Some(e) = error {
                            return Err(e);
                        }
                        return match extents {
                            Some(v) if !v.is_empty() => Ok(v),
                            _ => Err(Error::Protocol(ProtocolError::unexpected(
                                "block status reply",
                                "no extents for the requested context",
                            ))),
                        };
                    }
                }
            }
        }
        Err(self.closed_error())
    }

    /// Block status of `offset..offset+len` in meta context `context` (e.g.
    /// `base:allocation`), as contiguous extents covering the whole range, adjacent equal
    /// flags merged.
    pub async fn block_status(
        &self,
        offset: u64,
        len: u64,
        context: &str,
    ) -> Result<Vec<BlockExtent>> {
        self.check_range(offset, len)?;
        let id = self
            .context_id(context)
            .ok_or_else(|| Error::Usage(format!("meta context {context:?} was not negotiated")))?;
        let mut out: Vec<BlockExtent> = Vec::new();
        let mut push = |e: BlockExtent| match out.last_mut() {
            Some(last) if last.flags == e.flags && last.offset + last.length == e.offset => {
                last.length += e.length;
            }
            _ => out.push(e),
        };
        if self.inner.align_64k {
            // Many small requests: pipeline them.
            let mut handles = VecDeque::new();
            for (o, l) in self.split(offset, len, ALIGN_64K) {
                let c = self.clone();
                handles.push_back(tokio::spawn(
                    async move { c.block_status_full(o, l, id).await },
                ));
                if handles.len() >= self.inner.max_in_flight {
                    if let Some(h) = handles.pop_front() {
                        join(h).await?.into_iter().for_each(&mut push);
                    }
                }
            }
            while let Some(h) = handles.pop_front() {
                join(h).await?.into_iter().for_each(&mut push);
            }
        } else {
            self.block_status_full(offset, len, id)
                .await?
                .into_iter()
                .for_each(&mut push);
        }
        Ok(out)
    }

    /// Repeats BLOCK_STATUS until the server has described the whole range.
    async fn block_status_full(&self, offset: u64, len: u64, id: u32) -> Result<Vec<BlockExtent>> {
        let mut out = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let l = (end - pos).min(MAX_RANGE) as u32;
            let v = self.block_status_one(pos, l, id).await?;
            for e in v {
                pos = e.offset + e.length;
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Writes `data` at `offset` (split into ≤ 32 MiB requests).
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if self.inner.info.flags & tflags::READ_ONLY != 0 {
            return Err(Error::Usage("export is read-only".into()));
        }
        let mut pos = 0usize;
        while pos < data.len() {
            let n = (data.len() - pos).min(MAX_PAYLOAD as usize);
            let piece = data.slice(pos..pos + n);
            self.simple_command(
                request::CMD_WRITE,
                0,
                offset + pos as u64,
                n as u32,
                Some(piece),
            )
            .await?;
            pos += n;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `offset`; `no_hole` keeps them allocated, `fast` fails with
    /// `ENOTSUP` instead of writing slowly.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        no_hole: bool,
        fast: bool,
    ) -> Result<()> {
        self.check_range(offset, len)?;
        if self.inner.info.flags & tflags::SEND_WRITE_ZEROES == 0 {
            return Err(Error::Usage("server does not support WRITE_ZEROES".into()));
        }
        let mut flags = 0;
        if no_hole {
            flags |= cflags::NO_HOLE;
        }
        if fast {
            flags |= cflags::FAST_ZERO;
        }
        for (o, l) in self.split_plain(offset, len, MAX_RANGE) {
            self.simple_command(request::CMD_WRITE_ZEROES, flags, o, l as u32, None)
                .await?;
        }
        Ok(())
    }

    fn split_plain(&self, offset: u64, len: u64, max: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(max);
            out.push((pos, n));
            pos += n;
        }
        out
    }

    /// Discards `len` bytes at `offset`. With `align_64k` only the whole 64 KiB clusters in
    /// the range (and the export's tail) are trimmed, in as few requests as possible (QEMU
    /// 7.2 aborts on an unaligned TRIM of a snapshot export, not on a long aligned one);
    /// partial clusters are skipped, which TRIM semantics allow.
    pub async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if self.inner.info.flags & tflags::SEND_TRIM == 0 {
            return Err(Error::Usage("server does not support TRIM".into()));
        }
        let (start, end) = if self.inner.align_64k {
            let end = offset + len;
            let end = if end == self.size() {
                end
            } else {
                end / ALIGN_64K * ALIGN_64K
            };
            (offset.next_multiple_of(ALIGN_64K), end)
        } else {
            (offset, offset + len)
        };
        if start >= end {
            return Ok(());
        }
        for (o, l) in self.split_plain(start, end - start, MAX_RANGE) {
            self.simple_command(request::CMD_TRIM, 0, o, l as u32, None)
                .await?;
        }
        Ok(())
    }

    /// Flushes the server's write cache.
    pub async fn flush(&self) -> Result<()> {
        if self.inner.info.flags & tflags::SEND_FLUSH == 0 {
            return Ok(());
        }
        self.simple_command(request::CMD_FLUSH, 0, 0, 0, None).await
    }

    /// Waits for every request in flight, sends `NBD_CMD_DISC` and closes the socket.
    /// Other clones fail with [`Error::Closed`] afterwards.
    pub async fn disconnect(&self) -> Result<()> {
        let all = self
            .inner
            .slots
            .acquire_many(self.inner.max_in_flight as u32)
            .await
            .map_err(|_| self.closed_error())?;
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let req = Request {
            flags: 0,
            command: request::CMD_DISC,
            cookie: 0,
            offset: 0,
            length: 0,
            payload: Bytes::new(),
        };
        let mut head = BytesMut::new();
        req.encode_header(&mut head);
        let mut w = self.inner.writer.lock().await;
        let res = async {
            w.write_all(&head).await?;
            w.flush().await?;
            w.shutdown().await
        }
        .await;
        drop(all);
        self.inner.slots.close();
        res.map_err(Error::from)
    }
}

/// Sends one option and collects replies up to the final ACK or error.
async fn option_exchange<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    w: &mut BufWriter<BoxWrite>,
    opt: ClientOption,
) -> Result<Vec<ReplyKind>> {
    let code = opt.code();
    let mut out = BytesMut::new();
    opt.to_raw().encode(&mut out);
    w.write_all(&out).await?;
    w.flush().await?;
    let mut replies = Vec::new();
    for _ in 0..1024 {
        let raw: RawReply = reader.next(RawReply::decode).await?.ok_or(Error::Closed)?;
        if raw.option != code {
            return Err(ProtocolError::unexpected(
                "option reply",
                format!(
                    "reply to {} while waiting for {}",
                    option::option_name(raw.option),
                    option::option_name(code)
                ),
            )
            .into());
        }
        let kind = ReplyKind::parse(&raw)?;
        let last = matches!(kind, ReplyKind::Ack | ReplyKind::Error { .. });
        replies.push(kind);
        if last {
            return Ok(replies);
        }
    }
    Err(ProtocolError::unexpected("option reply", "more than 1024 replies to one option").into())
}

fn remote(command: u16, offset: u64, length: u64, errno: u32, message: String) -> Error {
    Error::Remote {
        command: request::command_name(command),
        offset,
        length,
        errno,
        message,
    }
}

async fn join<T>(h: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    h.await
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?
}

async fn reply_loop(
    inner: std::sync::Weak<Inner>,
    mut reader: FrameReader<Box<dyn AsyncRead + Send + Unpin>>,
) {
    let outcome: std::result::Result<(), Error> = async {
        loop {
            let expect_simple_data = |cookie: u64| {
                let strong = inner.upgrade()?;
                let p = strong.pending.lock().ok()?;
                let pending = p.get(&cookie)?;
                (pending.command == request::CMD_READ && !strong.info.structured)
                    .then_some(pending.length)
            };
            let decoded = reader
                .next(|b| Reply::decode(b, expect_simple_data))
                .await?;
            let Some(reply) = decoded else {
                return Err(Error::Closed);
            };
            let Some(strong) = inner.upgrade() else {
                return Ok(());
            };
            let cookie = reply.cookie();
            let done = match &reply {
                Reply::Simple { .. } => true,
                Reply::Structured { flags, .. } => flags & FLAG_DONE != 0,
            };
            let tx = {
                let mut p = strong.pending.lock().map_err(|_| Error::Closed)?;
                let tx = p.get(&cookie).map(|x| x.tx.clone());
                if done {
                    p.remove(&cookie);
                }
                tx
            };
            let Some(tx) = tx else {
                return Err(
                    ProtocolError::unexpected("reply", format!("unknown cookie {cookie}")).into(),
                );
            };
            drop(strong);
            // The requester may have given up (dropped); that is fine.
            let _ = tx.send(reply).await;
        }
    }
    .await;
    if let Some(strong) = inner.upgrade() {
        if let Err(Error::Protocol(p)) = &outcome {
            debug!(error = %p, "nbd client: server broke the protocol");
            if let Ok(mut f) = strong.failure.lock() {
                *f = Some(p.clone());
            }
        }
        strong.closed.store(true, Ordering::Release);
        if let Ok(mut p) = strong.pending.lock() {
            p.clear();
        }
    }
}

/// Ordered, pipelined reads of a range; see [`Client::read_range`].
pub struct ReadStream {
    client: Client,
    next: u64,
    end: u64,
    chunk: u64,
    depth: usize,
    queue: VecDeque<(u64, tokio::task::JoinHandle<Result<Bytes>>)>,
}

impl ReadStream {
    /// The next `(offset, bytes)`, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<(u64, Bytes)>> {
        while self.queue.len() < self.depth && self.next < self.end {
            let off = self.next;
            let len = self.chunk.min(self.end - off);
            self.next += len;
            let c = self.client.clone();
            self.queue
                .push_back((off, tokio::spawn(async move { c.read(off, len).await })));
        }
        let (off, h) = self.queue.pop_front()?;
        Some(join(h).await.map(|b| (off, b)))
    }
}

impl Drop for ReadStream {
    fn drop(&mut self) {
        for (_, h) in &self.queue {
            h.abort();
        }
    }
}
