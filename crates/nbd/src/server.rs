//! NBD server: serves [`Export`]s over a unix socket or TCP, many requests in flight per
//! connection, and reports connects and disconnects as [`Event`]s.
//!
//! Per connection: one task reads requests and dispatches each to its own task (bounded by
//! [`ServerOptions::max_in_flight`] and [`ServerOptions::max_buffered`]; with
//! [`ServerOptions::inline_writes`] it handles writes itself, in order); handlers complete in
//! any order and hand their replies to one writer task. `WRITE` payloads of 16 KiB and more are
//! read from the socket straight into reused buffers. `NBD_CMD_FLUSH` is a barrier: it waits for
//! every earlier request to complete before calling [`Export::flush`], so a successful flush
//! covers every write received before it. `NBD_CMD_DISC` and EOF drain all in-flight requests
//! before the [`Event::Disconnected`] is sent, so when the owner sees it, every reply has been
//! written and no export method is still running for that connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::export::{Export, WriteFlags, ZeroFlags};
use crate::pool::PayloadPool;
use crate::proto::handshake::{ClientFlags, ExportNameReply, Greeting};
use crate::proto::option::{
    self, ClientOption, GoRequest, Info, MetaRequest, RawOption, ReplyKind,
};
use crate::proto::reply::{self, Chunk, Extent, FLAG_DONE};
use crate::proto::request::{self, cflags, Request, REQUEST_HEADER_LEN};
use crate::proto::{
    errno, tflags, ProtocolError, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, MAX_PAYLOAD,
};

/// Name of the one metadata context the server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;
const MAX_OPTIONS: usize = 256;
const BUDGET_UNIT: usize = 4096;
/// Idle WRITE payload buffers a server keeps for reuse (QEMU sends 1 MiB writes, up to 16
/// in flight per connection; the export may hold some until its archive extent is written).
const PAYLOAD_BUFFERS: usize = 64;

/// Tuning knobs of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Requests handled concurrently per connection (QEMU's backup runs up to 64 workers).
    pub max_in_flight: usize,
    /// Payload bytes (write data and read lengths) in flight per connection.
    pub max_buffered: usize,
    /// Largest READ/WRITE accepted (≤ 32 MiB).
    pub max_payload: u32,
    /// A client must finish the handshake within this time.
    pub handshake_timeout: Duration,
    /// Handle WRITE, WRITE_ZEROES and TRIM one by one in the connection's reading task
    /// instead of a task each: for exports whose writes only hand data on (a push backup
    /// target), this saves a task spawn and a thread wake-up per request. Reads and block
    /// status still run concurrently.
    pub inline_writes: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_buffered: 128 << 20,
            max_payload: MAX_PAYLOAD,
            handshake_timeout: Duration::from_secs(30),
            inline_writes: false,
        }
    }
}

/// Where a running server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `NBD_CMD_DISC` (a clean close; QEMU sends FLUSH right before it).
    Disc,
    /// The client closed the socket without `NBD_CMD_DISC`.
    Eof,
    /// The client aborted or gave up during the handshake.
    Handshake,
    /// [`ServerHandle::shutdown`] was called.
    Shutdown,
    /// I/O or protocol error; the text is the error chain.
    Error(String),
}

/// Counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Requests received in transmission.
    pub requests: u64,
    /// Bytes received in WRITEs.
    pub bytes_written: u64,
    /// Bytes zeroed by WRITE_ZEROES.
    pub bytes_zeroed: u64,
    /// Bytes trimmed.
    pub bytes_trimmed: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Successful FLUSHes.
    pub flushes: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

/// A finished connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Connection id (as in [`Event::Connected`]).
    pub id: u64,
    /// The export the client selected, if it got that far.
    pub export: Option<String>,
    /// Why it ended.
    pub reason: CloseReason,
    /// Every write/zero/trim received was followed by a successful FLUSH (true when there were
    /// none). With `reason == Disc` and no errors this is QEMU's commit point.
    pub flushed: bool,
    /// Counters.
    pub stats: ConnStats,
}

impl Disconnect {
    /// FLUSH then DISC, no failed request: everything the client wrote is durable.
    pub fn is_clean_commit(&self) -> bool {
        self.reason == CloseReason::Disc && self.flushed && self.stats.errors == 0
    }
}

/// Something the owner of a server should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client finished the handshake and entered transmission on `export`.
    Connected {
        /// Connection id.
        id: u64,
        /// Export name.
        export: String,
    },
    /// A connection ended (handshake failures included); sent after all its requests finished.
    Disconnected(Disconnect),
}

/// A set of exports ready to be served. See the module docs.
pub struct Server<E: Export> {
    exports: BTreeMap<String, Arc<E>>,
    options: ServerOptions,
}

impl<E: Export> Default for Server<E> {
    fn default() -> Self {
        Self::new(ServerOptions::default())
    }
}

impl<E: Export> Server<E> {
    /// A server without exports.
    pub fn new(options: ServerOptions) -> Self {
        Self {
            exports: BTreeMap::new(),
            options,
        }
    }

    /// Adds (or replaces) an export under `name`.
    pub fn add_export(&mut self, name: impl Into<String>, export: E) -> &mut Self {
        self.exports.insert(name.into(), Arc::new(export));
        self
    }

    /// Listens on a unix socket (any stale file at `path` is removed first).
    pub async fn serve_unix(self, path: impl AsRef<Path>) -> Result<ServerHandle> {
        let path = path.as_ref().to_path_buf();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| Error::Connect {
            addr: path.display().to_string(),
            source,
        })?;
        Ok(self.spawn(ListenAddr::Unix(path), Listener::Unix(listener)))
    }

    /// Listens on TCP (use port 0 and [`ServerHandle::local_addr`] for a free port).
    pub async fn serve_tcp(self, addr: SocketAddr) -> Result<ServerHandle> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr()?;
        Ok(self.spawn(ListenAddr::Tcp(local), Listener::Tcp(listener)))
    }

    fn spawn(self, addr: ListenAddr, listener: Listener) -> ServerHandle {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            exports: self.exports,
            pool: PayloadPool::new(PAYLOAD_BUFFERS),
            options: self.options,
            events: events_tx,
            next_id: AtomicU64::new(1),
        });
        info!(%addr, exports = shared.exports.len(), "nbd server listening");
        let task = tokio::spawn(accept_loop(shared, listener, shutdown_rx));
        ServerHandle {
            addr,
            events,
            shutdown,
            task: Some(task),
        }
    }
}

/// A running server. Dropping it stops accepting; [`ServerHandle::shutdown`] also waits for
/// the connections to end.
pub struct ServerHandle {
    addr: ListenAddr,
    events: mpsc::UnboundedReceiver<Event>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ServerHandle {
    /// Where the server listens.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The next event; `None` once the server has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event if one is queued.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits for the next connection on `export` to end (skipping other events).
    pub async fn wait_disconnect(&mut self, export: &str) -> Option<Disconnect> {
        while let Some(ev) = self.events.recv().await {
            if let Event::Disconnected(d) = ev {
                if d.export.as_deref() == Some(export) {
                    return Some(d);
                }
            }
        }
        None
    }

    /// Stops accepting, ends every connection after its in-flight requests, and waits.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let ListenAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

struct Shared<E> {
    exports: BTreeMap<String, Arc<E>>,
    options: ServerOptions,
    pool: PayloadPool,
    events: mpsc::UnboundedSender<Event>,
    next_id: AtomicU64,
}

async fn accept_loop<E: Export>(
    shared: Arc<Shared<E>>,
    listener: Listener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok((r, w, peer)) => {
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                debug!(id, %peer, "nbd connection");
                conns.spawn(connection(Arc::clone(&shared), id, r, w, shutdown.clone()));
            }
            Err(e) => {
                warn!(error = %e, "nbd accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    while conns.join_next().await.is_some() {}
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

async fn accept(listener: &Listener) -> std::io::Result<(BoxRead, BoxWrite, String)> {
    match listener {
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w), "unix".to_owned()))
        }
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w), peer.to_string()))
        }
    }
}

/// Owns the read half and its buffer; decodes whole messages.
pub(crate) struct FrameReader<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(r: R) -> Self {
        Self {
            r,
            buf: BytesMut::with_capacity(256 << 10),
        }
    }

    /// Next message, or `Ok(None)` on EOF at a message boundary.
    pub(crate) async fn next<T>(
        &mut self,
        mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>,
    ) -> Result<Option<T>> {
        loop {
            if let Some(msg) = decode(&mut self.buf)? {
                return Ok(Some(msg));
            }
            if self.buf.capacity() - self.buf.len() < 64 << 10 {
                self.buf.reserve(256 << 10);
            }
            let n = self.r.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Closed)
                };
            }
        }
    }
}

/// WRITE payloads of at least this many bytes are read into a pooled buffer (smaller ones
/// are split off the frame buffer).
const POOLED_PAYLOAD: usize = 16 << 10;
/// While waiting for a request header, read at most this much: the rest of a large payload
/// then goes straight into its pooled buffer instead of through the frame buffer (a copy).
const HEAD_READ: usize = 4 << 10;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Next request, or `Ok(None)` on EOF at a request boundary. Large WRITE payloads are read
    /// from the socket directly into a buffer of `pool` (no allocation once the pool is warm,
    /// at most [`HEAD_READ`] bytes copied).
    async fn next_request(
        &mut self,
        max_payload: u32,
        pool: &PayloadPool,
    ) -> Result<Option<Request>> {
        loop {
            if let Some(mut req) = Request::decode_head(&self.buf, max_payload)? {
                let len = req.payload_len();
                if len < POOLED_PAYLOAD {
                    if let Some(req) = Request::decode(&mut self.buf, max_payload)? {
                        return Ok(Some(req));
                    }
                } else {
                    self.buf.advance(REQUEST_HEADER_LEN);
                    let mut payload = pool.take(len);
                    let have = self.buf.len().min(len);
                    payload.extend_from_slice(&self.buf[..have]);
                    self.buf.advance(have);
                    while payload.len() < len {
                        let want = len - payload.len();
                        if self.r.read_buf(&mut (&mut payload).limit(want)).await? == 0 {
                            return Err(Error::Closed);
                        }
                    }
                    req.payload = pool.freeze(payload);
                    return Ok(Some(req));
                }
            }
            if self.buf.capacity() - self.buf.len() < HEAD_READ {
                self.buf.reserve(HEAD_READ);
            }
            let n = self
                .r
                .read_buf(&mut (&mut self.buf).limit(HEAD_READ))
                .await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Closed)
                };
            }
        }
    }
}

struct Negotiated<E> {
    name: String,
    export: Arc<E>,
    structured: bool,
    base_allocation: bool,
}

async fn connection<E: Export>(
    shared: Arc<Shared<E>>,
    id: u64,
    r: BoxRead,
    w: BoxWrite,
    shutdown: watch::Receiver<bool>,
) {
    let mut reader = FrameReader::new(r);
    let mut w = BufWriter::with_capacity(256 << 10, w);
    let hs = tokio::time::timeout(
        shared.options.handshake_timeout,
        handshake(&shared, &mut reader, &mut w),
    )
    .await;
    let neg = match hs {
        Ok(Ok(Some(neg))) => neg,
        Ok(Ok(None)) => {
            let _ = shared.events.send(Event::Disconnected(Disconnect {
                id,
                export: None,
                reason: CloseReason::Handshake,
                flushed: true,
                stats: ConnStats::default(),
            }));
            return;
        }
        Ok(Err(e)) => {
            debug!(id, error = %error_chain(&e), "nbd handshake failed");
            let _ = shared.events.send(Event::Disconnected(Disconnect {
                id,
                export: None,
                reason: CloseReason::Error(error_chain(&e)),
                flushed: true,
                stats: ConnStats::default(),
            }));
            return;
        }
        Err(_) => {
            let _ = shared.events.send(Event::Disconnected(Disconnect {
                id,
                export: None,
                reason: CloseReason::Error("handshake timed out".into()),
                flushed: true,
                stats: ConnStats::default(),
            }));
            return;
        }
    };
    info!(id, export = %neg.name, structured = neg.structured, "nbd client entered transmission");
    let _ = shared.events.send(Event::Connected {
        id,
        export: neg.name.clone(),
    });
    let name = neg.name.clone();
    let (reason, flushed, stats) = transmission(&shared, neg, reader, w, shutdown).await;
    info!(id, export = %name, ?reason, flushed, ?stats, "nbd connection closed");
    let _ = shared.events.send(Event::Disconnected(Disconnect {
        id,
        export: Some(name),
        reason,
        flushed,
        stats,
    }));
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn transmission_flags(caps: &crate::export::Capabilities, structured: bool) -> u16 {
    let mut f = tflags::HAS_FLAGS;
    if caps.read_only {
        f |= tflags::READ_ONLY;
    } else {
        if caps.trim {
            f |= tflags::SEND_TRIM;
        }
        if caps.write_zeroes {
            f |= tflags::SEND_WRITE_ZEROES;
            if caps.fast_zero {
                f |= tflags::SEND_FAST_ZERO;
            }
        }
        if caps.fua {
            f |= tflags::SEND_FUA;
        }
    }
    if caps.flush {
        f |= tflags::SEND_FLUSH;
    }
    if caps.multi_conn {
        f |= tflags::CAN_MULTI_CONN;
    }
    if structured {
        // Every read is answered with a single data chunk, so DF is always honoured.
        f |= tflags::SEND_DF;
    }
    f
}

async fn send_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    kind: ReplyKind,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    kind.to_raw(option).encode(&mut buf);
    w.write_all(&buf).await
}

async fn send_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    code: u32,
    message: impl Into<String>,
) -> std::io::Result<()> {
    send_reply(
        w,
        option,
        ReplyKind::Error {
            code,
            message: message.into(),
        },
    )
    .await
}

async fn handshake<E: Export, R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: &Shared<E>,
    reader: &mut FrameReader<R>,
    w: &mut W,
) -> Result<Option<Negotiated<E>>> {
    let mut out = BytesMut::new();
    Greeting {
        flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
    }
    .encode(&mut out);
    w.write_all(&out).await?;
    w.flush().await?;
    let Some(cflags) = reader.next(ClientFlags::decode).await? else {
        return Ok(None);
    };
    let mut structured = false;
    // (export name, base:allocation selected) from the last NBD_OPT_SET_META_CONTEXT.
    let mut meta: Option<(String, bool)> = None;
    for _ in 0..MAX_OPTIONS {
        let Some(raw) = reader.next(RawOption::decode).await? else {
            return Ok(None);
        };
        let code = raw.code;
        let opt = match ClientOption::parse(&raw) {
            Ok(opt) => opt,
            Err(e) => {
                debug!(option = option::option_name(code), error = %e, "invalid option");
                send_error(w, code, option::REP_ERR_INVALID, e.to_string()).await?;
                w.flush().await?;
                continue;
            }
        };
        debug!(option = option::option_name(code), "nbd option");
        match opt {
            ClientOption::ExportName(name) => {
                let Some((name, export)) = lookup(shared, &name) else {
                    // The spec offers no error reply here: close.
                    return Err(ProtocolError::unexpected(
                        "NBD_OPT_EXPORT_NAME",
                        format!("unknown export {name:?}"),
                    )
                    .into());
                };
                let mut out = BytesMut::new();
                ExportNameReply {
                    size: export.size(),
                    flags: transmission_flags(&export.capabilities(), structured),
                }
                .encode(&mut out, cflags.no_zeroes());
                w.write_all(&out).await?;
                w.flush().await?;
                let base_allocation = matches!(&meta, Some((m, true)) if *m == name);
                return Ok(Some(Negotiated {
                    name,
                    export,
                    structured,
                    base_allocation,
                }));
            }
            ClientOption::Abort => {
                let _ = send_reply(w, code, ReplyKind::Ack).await;
                let _ = w.flush().await;
                return Ok(None);
            }
            ClientOption::List => {
                for (name, export) in &shared.exports {
                    let description = export.description().unwrap_or_default();
                    send_reply(
                        w,
                        code,
                        ReplyKind::Server {
                            name: name.clone(),
                            description,
                        },
                    )
                    .await?;
                }
                send_reply(w, code, ReplyKind::Ack).await?;
            }
            ClientOption::StructuredReply => {
                structured = true;
                send_reply(w, code, ReplyKind::Ack).await?;
            }
            ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
                let set = code == option::OPT_SET_META_CONTEXT;
                if set {
                    meta = None;
                }
                if !structured {
                    send_error(
                        w,
                        code,
                        option::REP_ERR_INVALID,
                        "negotiate structured replies first",
                    )
                    .await?;
                } else {
                    meta_context(shared, w, code, set, req, &mut meta).await?;
                }
            }
            ClientOption::Info(req) | ClientOption::Go(req) => {
                let go = code == option::OPT_GO;
                if let Some((name, export)) = info(shared, w, code, &req, structured).await? {
                    if go {
                        w.flush().await?;
                        let base_allocation = matches!(&meta, Some((m, true)) if *m == name);
                        return Ok(Some(Negotiated {
                            name,
                            export,
                            structured,
                            base_allocation,
                        }));
                    }
                }
            }
            ClientOption::Other(_) => {
                send_error(w, code, option::REP_ERR_UNSUP, "").await?;
            }
        }
        w.flush().await?;
    }
    Err(ProtocolError::unexpected("option", format!("more than {MAX_OPTIONS} options")).into())
}

fn lookup<E>(shared: &Shared<E>, name: &str) -> Option<(String, Arc<E>)> {
    if let Some(e) = shared.exports.get(name) {
        return Some((name.to_owned(), Arc::clone(e)));
    }
    // The empty name selects the default export: the only one, if there is exactly one.
    if name.is_empty() && shared.exports.len() == 1 {
        return shared
            .exports
            .iter()
            .next()
            .map(|(n, e)| (n.clone(), Arc::clone(e)));
    }
    None
}

async fn info<E: Export, W: AsyncWrite + Unpin>(
    shared: &Shared<E>,
    w: &mut W,
    code: u32,
    req: &GoRequest,
    structured: bool,
) -> Result<Option<(String, Arc<E>)>> {
    let Some((name, export)) = lookup(shared, &req.name) else {
        send_error(
            w,
            code,
            option::REP_ERR_UNKNOWN,
            format!("no export named {:?}", req.name),
        )
        .await?;
        return Ok(None);
    };
    let caps = export.capabilities();
    send_reply(
        w,
        code,
        ReplyKind::Info(Info::Export {
            size: export.size(),
            flags: transmission_flags(&caps, structured),
        }),
    )
    .await?;
    for ty in &req.info {
        match *ty {
            option::INFO_NAME => {
                send_reply(w, code, ReplyKind::Info(Info::Name(name.clone()))).await?;
            }
            option::INFO_DESCRIPTION => {
                if let Some(d) = export.description() {
                    send_reply(w, code, ReplyKind::Info(Info::Description(d))).await?;
                }
            }
            option::INFO_BLOCK_SIZE => {
                if let Some(bs) = caps.block_size {
                    send_reply(w, code, ReplyKind::Info(Info::BlockSize(bs))).await?;
                }
            }
            _ => {}
        }
    }
    send_reply(w, code, ReplyKind::Ack).await?;
    Ok(Some((name, export)))
}

async fn meta_context<E: Export, W: AsyncWrite + Unpin>(
    shared: &Shared<E>,
    w: &mut W,
    code: u32,
    set: bool,
    req: MetaRequest,
    meta: &mut Option<(String, bool)>,
) -> Result<()> {
    let Some((name, export)) = lookup(shared, &req.export) else {
        send_error(
            w,
            code,
            option::REP_ERR_UNKNOWN,
            format!("no export named {:?}", req.export),
        )
        .await?;
        return Ok(());
    };
    let offered = export.capabilities().block_status;
    let wanted = if set {
        req.queries.iter().any(|q| q == BASE_ALLOCATION)
    } else {
        req.queries.is_empty()
            || req
                .queries
                .iter()
                .any(|q| q == BASE_ALLOCATION || q == "base:")
    };
    let selected = offered && wanted;
    if selected {
        send_reply(
            w,
            code,
            ReplyKind::MetaContext {
                id: if set { BASE_ALLOCATION_ID } else { 0 },
                name: BASE_ALLOCATION.to_owned(),
            },
        )
        .await?;
    }
    send_reply(w, code, ReplyKind::Ack).await?;
    if set {
        *meta = Some((name, selected));
    }
    Ok(())
}

type Outgoing = (BytesMut, Option<Bytes>);

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes_written: AtomicU64,
    bytes_zeroed: AtomicU64,
    bytes_trimmed: AtomicU64,
    bytes_read: AtomicU64,
    flushes: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConnStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnStats {
            requests: g(&self.requests),
            bytes_written: g(&self.bytes_written),
            bytes_zeroed: g(&self.bytes_zeroed),
            bytes_trimmed: g(&self.bytes_trimmed),
            bytes_read: g(&self.bytes_read),
            flushes: g(&self.flushes),
            errors: g(&self.errors),
        }
    }
}

struct Ctx<E> {
    export: Arc<E>,
    size: u64,
    caps: crate::export::Capabilities,
    structured: bool,
    base_allocation: bool,
    tx: mpsc::Sender<Outgoing>,
    counters: Counters,
    max_payload: u32,
}

async fn transmission<E: Export, R: AsyncRead + Unpin, W: AsyncWrite + Unpin + Send + 'static>(
    shared: &Shared<E>,
    neg: Negotiated<E>,
    mut reader: FrameReader<R>,
    mut w: BufWriter<W>,
    mut shutdown: watch::Receiver<bool>,
) -> (CloseReason, bool, ConnStats) {
    let opts = &shared.options;
    let max_in_flight = opts.max_in_flight.clamp(1, 4096);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(max_in_flight + 4);
    let write_failed = Arc::new(AtomicBool::new(false));
    let wf = Arc::clone(&write_failed);
    let writer = tokio::spawn(async move {
        while let Some((head, data)) = rx.recv().await {
            let mut res = w.write_all(&head).await;
            if let (Ok(()), Some(d)) = (&res, &data) {
                res = w.write_all(d).await;
            }
            if res.is_ok() && rx.is_empty() {
                res = w.flush().await;
            }
            if let Err(e) = res {
                debug!(error = %e, "nbd reply write failed");
                wf.store(true, Ordering::Relaxed);
                break;
            }
        }
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    });
    let caps = neg.export.capabilities();
    let ctx = Arc::new(Ctx {
        size: neg.export.size(),
        export: neg.export,
        caps,
        structured: neg.structured,
        base_allocation: neg.base_allocation,
        tx,
        counters: Counters::default(),
        max_payload: opts.max_payload.min(MAX_PAYLOAD),
    });
    let count = Arc::new(Semaphore::new(max_in_flight));
    let budget_units = (opts.max_buffered / BUDGET_UNIT).clamp(1, u32::MAX as usize >> 1);
    let budget = Arc::new(Semaphore::new(budget_units));
    let mut dirty = false;
    let mut flushed_ok = true;
    let reason = loop {
        if write_failed.load(Ordering::Relaxed) {
            break CloseReason::Error("writing replies failed".into());
        }
        let next = tokio::select! {
            biased;
            _ = shutdown.changed() => break CloseReason::Shutdown,
            r = reader.next_request(ctx.max_payload, &shared.pool) => r,
        };
        let req = match next {
            Ok(Some(req)) => req,
            Ok(None) => break CloseReason::Eof,
            Err(e) => break CloseReason::Error(error_chain(&e)),
        };
        ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
        match req.command {
            request::CMD_DISC => break CloseReason::Disc,
            request::CMD_FLUSH => {
                // Barrier: every earlier request completes before the flush.
                let all = Arc::clone(&count)
                    .acquire_many_owned(max_in_flight as u32)
                    .await
                    .expect("semaphore never closed");
                let result = if ctx.caps.flush {
                    ctx.export.flush().await
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
                };
                if result.is_ok() {
                    ctx.counters.flushes.fetch_add(1, Ordering::Relaxed);
                    dirty = false;
                    flushed_ok = true;
                } else {
                    flushed_ok = false;
                }
                complete(&ctx, &req, result.map(|()| Done::Empty)).await;
                drop(all);
            }
            _ => {
                let write = matches!(
                    req.command,
                    request::CMD_WRITE | request::CMD_WRITE_ZEROES | request::CMD_TRIM
                );
                dirty |= write;
                if write && opts.inline_writes {
                    let result = handle(&ctx, &req).await;
                    complete(&ctx, &req, result).await;
                    continue;
                }
                let units = if req.command == request::CMD_WRITE || req.command == request::CMD_READ
                {
                    (req.length as usize)
                        .div_ceil(BUDGET_UNIT)
                        .clamp(1, budget_units)
                } else {
                    1
                };
                let permit = Arc::clone(&count)
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let bytes = Arc::clone(&budget)
                    .acquire_many_owned(units as u32)
                    .await
                    .expect("semaphore never closed");
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    let result = handle(&ctx, &req).await;
                    complete(&ctx, &req, result).await;
                    drop((permit, bytes));
                });
            }
        }
    };
    // Drain: wait for every in-flight request before reporting the close.
    let _all = count
        .acquire_many(max_in_flight as u32)
        .await
        .expect("semaphore never closed");
    let stats = ctx.counters.snapshot();
    drop(ctx);
    let _ = writer.await;
    (reason, !dirty && flushed_ok, stats)
}

enum Done {
    Empty,
    Data(Bytes),
    Extents(Vec<Extent>),
}

fn fail(code: u32, msg: &str) -> std::io::Error {
    errno::io_error(code, msg)
}

async fn handle<E: Export>(ctx: &Ctx<E>, req: &Request) -> std::io::Result<Done> {
    let allowed = match req.command {
        request::CMD_WRITE => cflags::FUA,
        request::CMD_READ => cflags::FUA | cflags::DF,
        request::CMD_WRITE_ZEROES => cflags::FUA | cflags::NO_HOLE | cflags::FAST_ZERO,
        request::CMD_TRIM => cflags::FUA,
        request::CMD_BLOCK_STATUS => cflags::REQ_ONE,
        request::CMD_CACHE => 0,
        _ => return Err(fail(errno::EINVAL, "unknown command")),
    };
    if req.flags & !allowed != 0 {
        return Err(fail(errno::EINVAL, "bad flags"));
    }
    let end = req.offset.checked_add(u64::from(req.length));
    let in_range = end.is_some_and(|e| e <= ctx.size);
    let writes = matches!(
        req.command,
        request::CMD_WRITE | request::CMD_WRITE_ZEROES | request::CMD_TRIM
    );
    if writes && ctx.caps.read_only {
        return Err(fail(errno::EPERM, "read-only export"));
    }
    if !in_range {
        return Err(fail(
            if writes { errno::ENOSPC } else { errno::EINVAL },
            "beyond end of export",
        ));
    }
    let fua = req.flags & cflags::FUA != 0;
    let c = &ctx.counters;
    match req.command {
        request::CMD_WRITE => {
            c.bytes_written
                .fetch_add(u64::from(req.length), Ordering::Relaxed);
            ctx.export
                .write(req.offset, req.payload.clone(), WriteFlags { fua })
                .await?;
            Ok(Done::Empty)
        }
        request::CMD_WRITE_ZEROES => {
            if !ctx.caps.write_zeroes {
                return Err(fail(errno::EINVAL, "write zeroes not supported"));
            }
            let flags = ZeroFlags {
                no_hole: req.flags & cflags::NO_HOLE != 0,
                fast_zero: req.flags & cflags::FAST_ZERO != 0,
                fua,
            };
            if flags.fast_zero && !ctx.caps.fast_zero {
                return Err(fail(errno::ENOTSUP, "no fast zero"));
            }
            c.bytes_zeroed
                .fetch_add(u64::from(req.length), Ordering::Relaxed);
            ctx.export
                .write_zeroes(req.offset, req.length, flags)
                .await?;
            Ok(Done::Empty)
        }
        request::CMD_TRIM => {
            if !ctx.caps.trim {
                return Err(fail(errno::EINVAL, "trim not supported"));
            }
            c.bytes_trimmed
                .fetch_add(u64::from(req.length), Ordering::Relaxed);
            ctx.export.trim(req.offset, req.length).await?;
            Ok(Done::Empty)
        }
        request::CMD_READ => {
            if !ctx.caps.read {
                return Err(fail(errno::EINVAL, "export is write-only"));
            }
            if req.length > ctx.max_payload {
                return Err(fail(errno::EINVAL, "read too large"));
            }
            if req.length == 0 {
                return Ok(Done::Data(Bytes::new()));
            }
            let data = ctx.export.read(req.offset, req.length).await?;
            if data.len() != req.length as usize {
                return Err(fail(errno::EIO, "short read"));
            }
            c.bytes_read
                .fetch_add(u64::from(req.length), Ordering::Relaxed);
            Ok(Done::Data(data))
        }
        request::CMD_CACHE => Ok(Done::Empty),
        request::CMD_BLOCK_STATUS => {
            if !ctx.base_allocation || !ctx.structured {
                return Err(fail(errno::EINVAL, "no meta context negotiated"));
            }
            if req.length == 0 {
                return Err(fail(errno::EINVAL, "empty block status"));
            }
            let raw = ctx.export.block_status(req.offset, req.length).await?;
            let mut left = req.length;
            let mut extents = Vec::new();
            for e in raw {
                if left == 0 {
                    break;
                }
                if e.length == 0 {
                    continue;
                }
                let length = e.length.min(left);
                left -= length;
                extents.push(Extent {
                    length,
                    flags: e.flags,
                });
                if req.flags & cflags::REQ_ONE != 0 {
                    break;
                }
            }
            if extents.is_empty() {
                return Err(fail(errno::EIO, "export returned no extents"));
            }
            Ok(Done::Extents(extents))
        }
        _ => Err(fail(errno::EINVAL, "unknown command")),
    }
}

async fn complete<E>(ctx: &Ctx<E>, req: &Request, result: std::io::Result<Done>) {
    let mut head = BytesMut::with_capacity(32);
    let mut data = None;
    match result {
        Ok(done) => {
            let is_read = req.command == request::CMD_READ;
            match (done, ctx.structured) {
                (Done::Data(d), true) if !d.is_empty() => {
                    Chunk::OffsetData {
                        offset: req.offset,
                        data: d.clone(),
                    }
                    .encode(&mut head, req.cookie, FLAG_DONE);
                    data = Some(d);
                }
                (Done::Data(_), true) => Chunk::None.encode(&mut head, req.cookie, FLAG_DONE),
                (Done::Data(d), false) => {
                    reply::encode_simple(&mut head, req.cookie, 0);
                    data = Some(d);
                }
                (Done::Extents(extents), _) => Chunk::BlockStatus {
                    context: BASE_ALLOCATION_ID,
                    extents,
                }
                .encode(&mut head, req.cookie, FLAG_DONE),
                (Done::Empty, true) if is_read => {
                    Chunk::None.encode(&mut head, req.cookie, FLAG_DONE);
                }
                (Done::Empty, _) => reply::encode_simple(&mut head, req.cookie, 0),
            }
        }
        Err(e) => {
            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
            let code = errno::from_io(&e);
            debug!(
                command = request::command_name(req.command),
                offset = req.offset,
                length = req.length,
                errno = code,
                error = %e,
                "nbd request failed"
            );
            if ctx.structured {
                Chunk::Error {
                    errno: code,
                    message: e.to_string(),
                    offset: None,
                }
                .encode(&mut head, req.cookie, FLAG_DONE);
            } else {
                reply::encode_simple(&mut head, req.cookie, code);
            }
        }
    }
    let _ = ctx.tx.send((head, data)).await;
}
