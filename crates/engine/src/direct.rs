//! The archive file written with `O_DIRECT`: the bytes go from aligned staging buffers
//! straight to the device, on an I/O thread, instead of being copied into the page cache and
//! written back later.
//!
//! Why: a live backup already copies every byte once out of the NBD socket. Writing it
//! through the page cache costs a second kernel copy plus the page-cache bookkeeping (page
//! allocation, dirty tracking, writeback), the larger part of vmdump's system time per
//! gigabyte, and it fills the host's page cache with an archive nobody reads back. QEMU's own
//! push into a local image pays one copy; with `O_DIRECT` vmdump pays one user-space copy into
//! a staging buffer that stays in the CPU cache.
//!
//! Where the file system refuses `O_DIRECT` (tmpfs, some FUSE file systems) the file is written
//! through the page cache as before: at open, or at the first write that fails with `EINVAL`.
//! The last block is padded to the alignment for its direct write and the file truncated to
//! its real length afterwards. Durability is unchanged: the caller still fsyncs the file.

use std::fs::File;
use std::io::{self, BufWriter, IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use rustix::fs::OFlags;

/// Alignment of buffer addresses, lengths and file offsets for `O_DIRECT` (the largest
/// logical block size in use).
const ALIGN: usize = 4096;
/// Bytes per direct write.
const CHUNK: usize = 4 << 20;
/// Staging buffers: one being filled, the others queued or being written.
const BUFFERS: usize = 3;
/// Buffer in front of a file written through the page cache.
const BUF: usize = 1 << 20;

/// A staging buffer whose data starts at an `ALIGN`-aligned address.
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new() -> Self {
        let v = vec![0u8; CHUNK + ALIGN];
        let off = (ALIGN - v.as_ptr() as usize % ALIGN) % ALIGN;
        Self { v, off, len: 0 }
    }

    /// Copies as much of `data` as fits; returns the bytes taken.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = (CHUNK - self.len).min(data.len());
        let at = self.off + self.len;
        self.v[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn data(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

/// Where the archive bytes go: the page cache (a `BufWriter`) or direct writes.
pub(crate) enum Sink {
    /// Through the page cache.
    Buffered(BufWriter<File>),
    /// `O_DIRECT` through staging buffers and an I/O thread.
    Direct(DirectFile),
}

impl Sink {
    /// Through the page cache into an open file (a pipe, or a file the caller opened).
    pub(crate) fn buffered(file: File) -> Self {
        Sink::Buffered(BufWriter::with_capacity(BUF, file))
    }

    /// Creates `path` (which must not exist), with `O_DIRECT` where the file system allows
    /// it; also returns a second handle on the file (for fsync) and whether it is direct.
    pub(crate) fn create(path: &Path) -> io::Result<(Self, File, bool)> {
        let direct = File::options()
            .write(true)
            .create_new(true)
            .custom_flags(OFlags::DIRECT.bits() as i32)
            .open(path);
        let (file, is_direct) = match direct {
            Ok(f) => (f, true),
            // The file is created before the open refuses O_DIRECT (tmpfs): open it again.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                let f = match File::options().write(true).create_new(true).open(path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        File::options().write(true).open(path)?
                    }
                    other => other?,
                };
                (f, false)
            }
            Err(e) => return Err(e),
        };
        let other = file.try_clone()?;
        let sink = if is_direct {
            Sink::Direct(DirectFile::new(file)?)
        } else {
            Sink::buffered(file)
        };
        Ok((sink, other, is_direct))
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Buffered(w) => w.write(buf),
            Sink::Direct(d) => d.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sink::Buffered(w) => w.write_vectored(bufs),
            Sink::Direct(d) => {
                let mut n = 0;
                for b in bufs {
                    d.write_all(b)?;
                    n += b.len();
                }
                Ok(n)
            }
        }
    }

    /// Buffered: flushes to the file. Direct: a no-op (the staging buffer holds less than one
    /// aligned chunk; [`Sink::finish`] writes it).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Buffered(w) => w.flush(),
            Sink::Direct(_) => Ok(()),
        }
    }
}

impl Sink {
    /// Writes out everything buffered (the direct tail padded, then the file truncated to its
    /// length). The caller fsyncs.
    pub(crate) fn finish(self) -> io::Result<()> {
        match self {
            Sink::Buffered(mut w) => w.flush(),
            Sink::Direct(d) => d.finish(),
        }
    }
}

/// A file opened with `O_DIRECT`, written sequentially from aligned chunks by an I/O thread.
pub(crate) struct DirectFile {
    cur: Option<Aligned>,
    allocated: usize,
    jobs: Option<SyncSender<Aligned>>,
    free: Receiver<io::Result<Aligned>>,
    thread: Option<JoinHandle<io::Result<File>>>,
    written: u64,
}

impl DirectFile {
    fn new(file: File) -> io::Result<Self> {
        let (jobs, rx) = sync_channel::<Aligned>(BUFFERS);
        let (back, free) = sync_channel::<io::Result<Aligned>>(BUFFERS);
        let thread = std::thread::Builder::new()
            .name("archive-io".into())
            .spawn(move || io_thread(file, rx, back))?;
        Ok(Self {
            cur: None,
            allocated: 0,
            jobs: Some(jobs),
            free,
            thread: Some(thread),
            written: 0,
        })
    }

    /// A buffer to fill: a new one while fewer than [`BUFFERS`] exist, else one the I/O
    /// thread is done with (waiting for it: backpressure from the disk).
    fn next_buffer(&mut self) -> io::Result<Aligned> {
        if self.allocated < BUFFERS {
            self.allocated += 1;
            return Ok(Aligned::new());
        }
        match self.free.recv() {
            Ok(r) => r,
            Err(_) => Err(self.stopped()),
        }
    }

    /// The I/O thread's error, once it has stopped.
    fn stopped(&mut self) -> io::Error {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the archive I/O thread stopped"),
        }
    }

    fn submit(&mut self, buf: Aligned) -> io::Result<()> {
        let sent = self.jobs.as_ref().map(|j| j.send(buf));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    fn finish(mut self) -> io::Result<()> {
        if let Some(mut cur) = self.cur.take() {
            if cur.len > 0 {
                let padded = cur.len.next_multiple_of(ALIGN);
                let at = cur.off + cur.len;
                cur.v[at..cur.off + padded].fill(0);
                cur.len = padded;
                self.submit(cur)?;
            }
        }
        self.jobs = None;
        let file = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            _ => return Err(io::Error::other("the archive I/O thread panicked")),
        };
        if file.metadata()?.len() != self.written {
            file.set_len(self.written)?;
        }
        Ok(())
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut cur = match self.cur.take() {
            Some(c) => c,
            None => self.next_buffer()?,
        };
        let n = cur.fill(data);
        self.written += n as u64;
        if cur.len == CHUNK {
            self.submit(cur)?;
        } else {
            self.cur = Some(cur);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes the chunks in order; on the first `EINVAL` of a direct write it turns `O_DIRECT`
/// off and goes on through the page cache. Returns the file when the queue closes.
fn io_thread(
    mut file: File,
    jobs: Receiver<Aligned>,
    back: SyncSender<io::Result<Aligned>>,
) -> io::Result<File> {
    let mut direct = true;
    while let Ok(mut buf) = jobs.recv() {
        let mut done = 0;
        while done < buf.len {
            match file.write(&buf.data()[done..]) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    let _ = back.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if direct
                        && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    direct = false;
                    let flags = rustix::fs::fcntl_getfl(&file)?;
                    rustix::fs::fcntl_setfl(&file, flags - OFlags::DIRECT)?;
                }
                Err(e) => {
                    let _ = back.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            }
        }
        buf.len = 0;
        if back.send(Ok(buf)).is_err() {
            break;
        }
    }
    Ok(file)
}
