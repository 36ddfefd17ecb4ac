//! Blocking access to any QEMU image through a [`StorageDaemon`] and the NBD client.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use vmdump_launch::Session;
use vmdump_nbd::{Client, ClientOptions};

use crate::daemon::{StorageDaemon, EXPORT_NAME};
use crate::error::{Error, Result};
use crate::{BlockStatus, Extent, Finish, ReadAt, Size, WriteAt};

/// NBD writes in flight per image.
const IN_FLIGHT: usize = 8;
/// The longest range one block-status request asks about.
const STATUS_SPAN: u64 = 1 << 30;
/// `base:allocation` flag: the range reads as zeros.
const ZERO_FLAG: u32 = 2;

/// The extents of an NBD `base:allocation` block-status reply, neighbours of the same kind
/// joined.
pub(crate) fn extents_of(list: &[vmdump_nbd::client::BlockExtent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(list.len());
    for e in list {
        let zero = e.flags & ZERO_FLAG != 0;
        match out.last_mut() {
            Some(last) if last.zero == zero && last.end() == e.offset => {
                last.length += e.length;
            }
            _ => out.push(Extent {
                offset: e.offset,
                length: e.length,
                zero,
            }),
        }
    }
    out
}

/// The session of images opened without an explicit one: under the run base of the
/// environment (for an unprivileged user who cannot create it, `<tmp>/vmdump-<uid>`), for
/// the life of the process (a later run removes its directory).
fn process_session() -> Result<Arc<Session>> {
    static SESSION: OnceLock<Arc<Session>> = OnceLock::new();
    if let Some(s) = SESSION.get() {
        return Ok(Arc::clone(s));
    }
    let base = vmdump_launch::run_base_from_env();
    let s = Session::open(&base).or_else(|e| {
        let fallback =
            std::env::temp_dir().join(format!("vmdump-{}", rustix::process::getuid().as_raw()));
        tracing::debug!("{e}; using {}", fallback.display());
        Session::open(&fallback).map_err(|source| Error::Launch {
            tool: "qemu-storage-daemon",
            path: fallback,
            source,
        })
    })?;
    Ok(Arc::clone(SESSION.get_or_init(|| s)))
}

/// How to open an [`Image`].
#[derive(Debug, Clone)]
pub struct ImageOptions {
    path: PathBuf,
    format: Option<String>,
    read_only: bool,
    direct_io: bool,
    session: Option<Arc<Session>>,
    client: ClientOptions,
}

impl ImageOptions {
    /// Read-write, format detected, page cache used, the process's session.
    pub fn new(path: &Path) -> Self {
        ImageOptions {
            path: path.to_path_buf(),
            format: None,
            read_only: false,
            direct_io: false,
            session: None,
            client: ClientOptions::default(),
        }
    }

    /// The image format (detected with `qemu-img info` if not given).
    pub fn format(&mut self, format: &str) -> &mut Self {
        self.format = Some(format.to_owned());
        self
    }

    /// Open read-only.
    pub fn read_only(&mut self) -> &mut Self {
        self.read_only = true;
        self
    }

    /// Write past the page cache where the file system allows it (see
    /// [`StorageDaemon::start`]).
    pub fn direct_io(&mut self, on: bool) -> &mut Self {
        self.direct_io = on;
        self
    }

    /// Record the daemon in `session` (default: a session of the process under the run base
    /// of the environment).
    pub fn session(&mut self, session: &Arc<Session>) -> &mut Self {
        self.session = Some(Arc::clone(session));
        self
    }

    /// NBD client options.
    pub fn client(&mut self, options: ClientOptions) -> &mut Self {
        self.client = options;
        self
    }

    /// Start the daemon and connect. Must not be called from async code (it blocks on its own
    /// runtime).
    pub fn open(&self) -> Result<Image> {
        let session = match &self.session {
            Some(s) => Arc::clone(s),
            None => process_session()?,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmdump-image")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start a runtime for", &self.path, e))?;
        let (daemon, client) = rt.block_on(async {
            let daemon = StorageDaemon::start(
                &session,
                &self.path,
                self.format.as_deref(),
                self.read_only,
                self.direct_io,
            )
            .await?;
            let client = Client::connect_unix(daemon.socket(), EXPORT_NAME, &self.client)
                .await
                .map_err(|source| Error::Nbd {
                    what: "connect to",
                    path: daemon.path().to_path_buf(),
                    source,
                });
            match client {
                Ok(c) => Ok((daemon, c)),
                Err(e) => {
                    let _ = daemon.stop().await;
                    Err(e)
                }
            }
        })?;
        Ok(Image {
            path: daemon.path().to_path_buf(),
            size: client.size(),
            client: Some(client),
            daemon: Some(Box::new(daemon)),
            in_flight: VecDeque::new(),
            rt,
        })
    }
}

/// An image opened through `qemu-storage-daemon`: a [`Source`](crate::Source) and a
/// [`Target`](crate::Target) for synchronous callers. Writes are pipelined, up to 8 in
/// flight (callers never write overlapping ranges concurrently, so their order does not
/// matter). Dropping it without [`Finish::finish`] stops the daemon too.
pub struct Image {
    path: PathBuf,
    size: u64,
    client: Option<Client>,
    /// Boxed: it is large, and images sit in enums next to small sources.
    daemon: Option<Box<StorageDaemon>>,
    in_flight: VecDeque<(u64, tokio::task::JoinHandle<vmdump_nbd::Result<()>>)>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// Open `path` (format detected when `None`), read-only or read-write, in the process's
    /// session.
    pub fn open(path: &Path, format: Option<&str>, read_only: bool) -> Result<Self> {
        let mut o = ImageOptions::new(path);
        if let Some(f) = format {
            o.format(f);
        }
        if read_only {
            o.read_only();
        }
        o.open()
    }

    /// The image format.
    pub fn format(&self) -> &str {
        self.daemon.as_ref().map_or("", |d| d.format())
    }

    /// The daemon serving the image.
    pub fn daemon(&self) -> Option<&StorageDaemon> {
        self.daemon.as_deref()
    }

    fn client(&self) -> Result<&Client> {
        self.client.as_ref().ok_or_else(|| Error::Nbd {
            what: "use",
            path: self.path.clone(),
            source: vmdump_nbd::Error::Closed,
        })
    }

    fn nbd(&self, what: &'static str) -> impl Fn(vmdump_nbd::Error) -> Error + '_ {
        move |source| Error::Nbd {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(&self.path, self.size, offset, len)
    }

    /// Read `len` bytes at `offset` (no copy out of the NBD reply).
    pub fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        self.check(offset, len)?;
        let c = self.client()?;
        self.rt
            .block_on(c.read(offset, len))
            .map_err(self.nbd("read"))
    }

    /// Wait for the oldest write in flight.
    fn complete_one(&mut self) -> Result<()> {
        let Some((offset, handle)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let res = match self.rt.block_on(handle) {
            Ok(r) => r,
            Err(e) => Err(vmdump_nbd::Error::Io(std::io::Error::other(format!(
                "write task failed: {e}"
            )))),
        };
        res.map_err(|source| Error::NbdAt {
            what: "write",
            path: self.path.clone(),
            offset,
            source,
        })
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut result = Ok(());
        while !self.in_flight.is_empty() {
            if let Err(e) = self.complete_one() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        let path = self.path.clone();
        let client = self.client.take();
        let daemon = self.daemon.take();
        let closed = self.rt.block_on(async move {
            let mut result = Ok(());
            if let Some(c) = client {
                let read_only = daemon.as_ref().is_none_or(|d| d.read_only());
                let done = async {
                    if !read_only {
                        c.flush().await?;
                    }
                    c.disconnect().await
                };
                result = done.await.map_err(|source| Error::Nbd {
                    what: "flush and disconnect",
                    path: path.clone(),
                    source,
                });
            }
            if let Some(d) = daemon {
                let stopped = d.stop().await;
                if result.is_ok() {
                    result = stopped;
                }
            }
            result
        });
        if result.is_ok() {
            result = closed;
        }
        result
    }

    /// Flush, disconnect and stop the daemon, reporting any failure.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.client.is_some() || self.daemon.is_some() {
            if let Err(e) = self.shutdown() {
                tracing::warn!(error = %e, "closing image");
            }
        }
    }
}

impl Size for Image {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for Image {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.read(offset, buf.len() as u64)?;
        buf.copy_from_slice(&data);
        Ok(())
    }
}

impl BlockStatus for Image {
    /// `base:allocation`: a range reads as zeros when the zero flag is set.
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Ok(Vec::new());
        }
        let len = (end - range.start).min(STATUS_SPAN);
        let c = self.client()?;
        let extents = self
            .rt
            .block_on(c.block_status(range.start, len, vmdump_nbd::server::BASE_ALLOCATION))
            .map_err(self.nbd("block status of"))?;
        Ok(extents_of(&extents))
    }
}

impl WriteAt for Image {
    fn write_at(&mut self, data: Bytes, offset: u64) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        while self.in_flight.len() >= IN_FLIGHT {
            self.complete_one()?;
        }
        let client = self.client()?.clone();
        let handle = self
            .rt
            .spawn(async move { client.write(offset, data).await });
        self.in_flight.push_back((offset, handle));
        Ok(())
    }
}

impl Finish for Image {
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.shutdown()
    }
}
