//! The NBD target QEMU's backup jobs write to: one unix socket, one export per disk (export
//! name = the QEMU drive id, e.g. `drive-scsi0`, size = the disk's size).
//!
//! Protocol subset: fixed newstyle handshake (`NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`; everything else `ERR_UNSUP`, so QEMU falls back to
//! simple replies), then `WRITE`, `WRITE_ZEROES`, `FLUSH`, `TRIM` (ignored), `READ` (zeroes;
//! QEMU's backup never reads its target) and `DISC`.
//!
//! **A request is never failed.** A write QEMU sends may be a copy-before-write on the guest's
//! I/O path; failing it would fail the guest's write (QEMU 7.2's backup filter breaks guest
//! writes on copy errors). Whatever goes wrong on our side is recorded in [`Shared`] and
//! acknowledged; the control task sees the failure and cancels the jobs.
//!
//! This server lives in the engine because `vmdump-nbd`'s server had not landed when the
//! engine was written; it is small on purpose.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cluster::{Assembler, Cluster};
use crate::pipeline::{Msg, Shared};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

const INFO_EXPORT: u16 = 0;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;
const TFLAG_SEND_TRIM: u16 = 1 << 5;
const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const EINVAL: u32 = 22;

/// Largest request payload accepted (QEMU's NBD client never sends more than 32 MiB).
const MAX_REQUEST: u32 = 32 << 20;
/// Largest option payload accepted during the handshake.
const MAX_OPTION: u32 = 64 << 10;

/// One disk the target exports.
#[derive(Debug)]
pub struct Export {
    /// Export name (the QEMU drive id).
    pub name: String,
    /// VMA dev_id of the disk.
    pub dev: u8,
    /// Disk size in bytes.
    pub size: u64,
    assembler: Mutex<Assembler>,
    /// Set once the client sent `DISC` (after `FLUSH`): the commit point of this disk.
    closed: watch::Sender<bool>,
}

impl Export {
    /// An export of a disk of `size` bytes.
    pub fn new(name: impl Into<String>, dev: u8, size: u64) -> Self {
        Self {
            name: name.into(),
            dev,
            size,
            assembler: Mutex::new(Assembler::new(size)),
            closed: watch::channel(false).0,
        }
    }

    /// `None` when every cluster arrived, else the first missing cluster.
    pub fn first_missing(&self) -> Option<u64> {
        self.assembler.lock().map_or(Some(0), |a| a.first_missing())
    }

    /// Whether the client disconnected cleanly (`DISC`).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// The running NBD target.
#[derive(Debug)]
pub struct Target {
    socket: PathBuf,
    exports: Arc<Vec<Arc<Export>>>,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Target {
    /// Binds `socket` and serves `exports`. Clusters go to `tx`; failures to `shared`.
    pub fn start(
        socket: &Path,
        exports: Vec<Arc<Export>>,
        tx: mpsc::Sender<Msg>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let exports = Arc::new(exports);
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let exports = Arc::clone(&exports);
            let conns = Arc::clone(&conns);
            tokio::spawn(async move {
                loop {
                    let (stream, _) = match listener.accept().await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "nbd target: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let conn = Connection {
                        exports: Arc::clone(&exports),
                        tx: tx.clone(),
                        shared: Arc::clone(&shared),
                    };
                    let h = tokio::spawn(async move {
                        if let Err(e) = conn.serve(stream).await {
                            tracing::debug!(error = %e, "nbd target connection ended");
                        }
                    });
                    if let Ok(mut c) = conns.lock() {
                        c.retain(|h| !h.is_finished());
                        c.push(h);
                    }
                }
            })
        };
        Ok(Self {
            socket: socket.to_path_buf(),
            exports,
            accept,
            conns,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The exports.
    pub fn exports(&self) -> &[Arc<Export>] {
        &self.exports
    }

    /// Waits (at most `wait`) until every export saw `DISC`.
    pub async fn wait_closed(&self, wait: Duration) -> bool {
        let all = async {
            for e in self.exports.iter() {
                let mut rx = e.closed.subscribe();
                if rx.wait_for(|c| *c).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(wait, all).await.unwrap_or(false)
    }

    /// Stops accepting, ends every connection, removes the socket. Dropping the last clone
    /// of the cluster sender lets the writer thread finish.
    pub async fn shutdown(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let conns = self
            .conns
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        for c in conns {
            // Connections that already saw DISC are done; the rest are cut off.
            if !c.is_finished() {
                c.abort();
            }
            let _ = c.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct Connection {
    exports: Arc<Vec<Arc<Export>>>,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

type Reader = BufReader<tokio::net::unix::OwnedReadHalf>;
type Writer = BufWriter<tokio::net::unix::OwnedWriteHalf>;

impl Connection {
    async fn serve(self, stream: UnixStream) -> std::io::Result<()> {
        let (r, w) = stream.into_split();
        let mut r = BufReader::with_capacity(1 << 20, r);
        let mut w = BufWriter::new(w);
        let Some(export) = self.handshake(&mut r, &mut w).await? else {
            return Ok(());
        };
        let result = self.transmission(&export, &mut r, &mut w).await;
        if let Err(e) = &result {
            if !export.is_closed() {
                self.shared.fail(format!(
                    "nbd connection for '{}' broke before the backup finished: {e}",
                    export.name
                ));
            }
        }
        result
    }

    async fn handshake(
        &self,
        r: &mut Reader,
        w: &mut Writer,
    ) -> std::io::Result<Option<Arc<Export>>> {
        w.write_u64(NBDMAGIC).await?;
        w.write_u64(IHAVEOPT).await?;
        w.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
        w.flush().await?;
        let client_flags = r.read_u32().await?;
        loop {
            let magic = r.read_u64().await?;
            if magic != IHAVEOPT {
                return Err(protocol(format!("bad option magic {magic:#x}")));
            }
            let opt = r.read_u32().await?;
            let len = r.read_u32().await?;
            if len > MAX_OPTION {
                return Err(protocol(format!("option {opt} of {len} bytes")));
            }
            let mut data = vec![0; len as usize];
            r.read_exact(&mut data).await?;
            match opt {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    let Some(export) = self.find(&name) else {
                        // No way to reply with an error here: hang up.
                        return Err(protocol(format!("unknown export '{name}'")));
                    };
                    w.write_u64(export.size).await?;
                    w.write_u16(transmission_flags()).await?;
                    if client_flags & CLIENT_NO_ZEROES == 0 {
                        w.write_all(&[0; 124]).await?;
                    }
                    w.flush().await?;
                    return Ok(Some(export));
                }
                OPT_ABORT => {
                    reply(w, opt, REP_ACK, &[]).await?;
                    w.flush().await?;
                    return Ok(None);
                }
                OPT_GO | OPT_INFO => {
                    let name = (data.len() >= 4)
                        .then(|| u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize)
                        .filter(|&n| data.len() >= 4 + n + 2)
                        .map(|n| String::from_utf8_lossy(&data[4..4 + n]).into_owned());
                    let Some(name) = name else {
                        reply(w, opt, REP_ERR_INVALID, b"malformed request").await?;
                        w.flush().await?;
                        continue;
                    };
                    let Some(export) = self.find(&name) else {
                        reply(w, opt, REP_ERR_UNKNOWN, b"unknown export").await?;
                        w.flush().await?;
                        continue;
                    };
                    let mut info = Vec::with_capacity(12);
                    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    info.extend_from_slice(&export.size.to_be_bytes());
                    info.extend_from_slice(&transmission_flags().to_be_bytes());
                    reply(w, opt, REP_INFO, &info).await?;
                    reply(w, opt, REP_ACK, &[]).await?;
                    w.flush().await?;
                    if opt == OPT_GO {
                        return Ok(Some(export));
                    }
                }
                _ => {
                    reply(w, opt, REP_ERR_UNSUP, &[]).await?;
                    w.flush().await?;
                }
            }
        }
    }

    fn find(&self, name: &str) -> Option<Arc<Export>> {
        self.exports.iter().find(|e| e.name == name).cloned()
    }

    async fn transmission(
        &self,
        export: &Export,
        r: &mut Reader,
        w: &mut Writer,
    ) -> std::io::Result<()> {
        let mut payload = Vec::new();
        loop {
            let magic = r.read_u32().await?;
            if magic != REQUEST_MAGIC {
                return Err(protocol(format!("bad request magic {magic:#x}")));
            }
            let _flags = r.read_u16().await?;
            let cmd = r.read_u16().await?;
            let handle = r.read_u64().await?;
            let offset = r.read_u64().await?;
            let len = r.read_u32().await?;
            match cmd {
                CMD_WRITE => {
                    if len > MAX_REQUEST {
                        return Err(protocol(format!("write of {len} bytes")));
                    }
                    payload.resize(len as usize, 0);
                    r.read_exact(&mut payload).await?;
                    self.accept(export, offset, Some(&payload), u64::from(len))
                        .await;
                    simple_reply(w, 0, handle).await?;
                }
                CMD_WRITE_ZEROES => {
                    self.accept(export, offset, None, u64::from(len)).await;
                    simple_reply(w, 0, handle).await?;
                }
                CMD_FLUSH | CMD_TRIM => simple_reply(w, 0, handle).await?,
                CMD_READ => {
                    if len > MAX_REQUEST {
                        return Err(protocol(format!("read of {len} bytes")));
                    }
                    simple_reply(w, 0, handle).await?;
                    w.write_all(&vec![0; len as usize]).await?;
                }
                CMD_DISC => {
                    w.flush().await?;
                    export.closed.send_replace(true);
                    return Ok(());
                }
                other => {
                    tracing::warn!(cmd = other, "nbd target: unsupported command");
                    simple_reply(w, EINVAL, handle).await?;
                }
            }
            // Reply promptly when nothing else is queued (QEMU keeps several in flight).
            if r.buffer().is_empty() {
                w.flush().await?;
            }
        }
    }

    /// Feeds one request into the assembler and the writer; never fails the request.
    async fn accept(&self, export: &Export, offset: u64, data: Option<&[u8]>, len: u64) {
        if self.shared.failed() {
            return;
        }
        let mut ready: Vec<Cluster> = Vec::new();
        let res = match export.assembler.lock() {
            Ok(mut a) => match data {
                Some(d) => a.write(offset, d, |c| ready.push(c)),
                None => a.write_zeroes(offset, len, |c| ready.push(c)),
            },
            Err(_) => {
                self.shared.fail("internal error: assembler lock poisoned");
                return;
            }
        };
        if let Err(e) = res {
            self.shared.fail(format!("device '{}': {e}", export.name));
            return;
        }
        for cluster in ready {
            let msg = Msg {
                dev: export.dev,
                cluster,
            };
            if self.tx.send(msg).await.is_err() {
                self.shared.fail("the archive writer stopped");
                return;
            }
        }
    }
}

fn transmission_flags() -> u16 {
    TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
}

async fn reply(w: &mut Writer, opt: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    w.write_u64(REPLY_MAGIC).await?;
    w.write_u32(opt).await?;
    w.write_u32(kind).await?;
    w.write_u32(data.len() as u32).await?;
    w.write_all(data).await
}

async fn simple_reply(w: &mut Writer, error: u32, handle: u64) -> std::io::Result<()> {
    w.write_u32(SIMPLE_REPLY_MAGIC).await?;
    w.write_u32(error).await?;
    w.write_u64(handle).await
}

fn protocol(detail: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, detail)
}
