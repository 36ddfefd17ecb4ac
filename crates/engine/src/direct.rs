//! The archive file written with `O_DIRECT`: the bytes go from aligned staging buffers
//! straight to the device, on I/O threads (four writes in flight), instead of being copied into the page cache and
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
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::fs::OFlags;

/// Alignment of buffer addresses, lengths and file offsets for `O_DIRECT` (the largest
/// logical block size in use).
const ALIGN: usize = 4096;
/// Bytes per direct write.
const CHUNK: usize = 4 << 20;
/// Direct writes in flight at once, each from its own I/O thread at its own offset: one
/// write at a time leaves the device idle between writes (queue depth 1), and a disk shared
/// with QEMU's source reads keeps up best with four (docs/benchmarks.md).
const WRITERS: usize = 4;
/// Staging buffers: one being filled, one queued, the others being written.
const BUFFERS: usize = WRITERS + 2;
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

/// A chunk to write at a file offset.
struct Job {
    at: u64,
    buf: Aligned,
}

/// A file opened with `O_DIRECT`, written from aligned chunks by [`WRITERS`] I/O threads,
/// each chunk at its own offset (the file is sequential once all are written).
pub(crate) struct DirectFile {
    cur: Option<Aligned>,
    allocated: usize,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<io::Result<Aligned>>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    file: File,
    /// Bytes handed to the I/O threads (the next chunk's offset).
    submitted: u64,
    /// Bytes taken by `write` (the file's final length).
    written: u64,
}

impl DirectFile {
    fn new(file: File) -> io::Result<Self> {
        let (jobs, rx) = sync_channel::<Job>(1);
        let rx = Arc::new(Mutex::new(rx));
        let (back, free) = sync_channel::<io::Result<Aligned>>(BUFFERS);
        let mut threads = Vec::with_capacity(WRITERS);
        for _ in 0..WRITERS {
            let (f, rx, back) = (file.try_clone()?, rx.clone(), back.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("archive-io".into())
                    .spawn(move || io_thread(f, rx, back))?,
            );
        }
        Ok(Self {
            cur: None,
            allocated: 0,
            jobs: Some(jobs),
            free,
            threads,
            file,
            submitted: 0,
            written: 0,
        })
    }

    /// A buffer to fill: one an I/O thread is done with if there is one (so a failed write
    /// shows at the next buffer, not only once all exist), else a new one while fewer than
    /// [`BUFFERS`] exist, else the next one returned (waiting for it: backpressure from the
    /// disk).
    fn next_buffer(&mut self) -> io::Result<Aligned> {
        let returned = match self.free.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) if self.allocated < BUFFERS => {
                self.allocated += 1;
                return Ok(Aligned::new());
            }
            Err(TryRecvError::Empty) => self.free.recv().ok(),
            Err(TryRecvError::Disconnected) => None,
        };
        match returned {
            Some(Ok(b)) => Ok(b),
            Some(Err(_)) | None => Err(self.stopped()),
        }
    }

    /// Stops the I/O threads and returns the first error one of them had.
    fn stopped(&mut self) -> io::Error {
        self.join()
            .err()
            .unwrap_or_else(|| io::Error::other("the archive I/O threads stopped"))
    }

    /// Closes the queue and waits for every I/O thread; the first error wins.
    fn join(&mut self) -> io::Result<()> {
        self.jobs = None;
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("an archive I/O thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn submit(&mut self, buf: Aligned) -> io::Result<()> {
        let at = self.submitted;
        self.submitted += buf.len as u64;
        let sent = self.jobs.as_ref().map(|j| j.send(Job { at, buf }));
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
        self.join()?;
        if self.file.metadata()?.len() != self.written {
            self.file.set_len(self.written)?;
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
        let _ = self.join();
    }
}

/// Writes chunks at their offsets until the queue closes; every buffer goes back to the
/// writer, or the error that stopped this thread does (so the writer never waits for a buffer
/// that will not come).
fn io_thread(
    file: File,
    jobs: Arc<Mutex<Receiver<Job>>>,
    back: SyncSender<io::Result<Aligned>>,
) -> io::Result<()> {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return Ok(()),
        };
        let Ok(Job { at, mut buf }) = job else {
            return Ok(());
        };
        if let Err(e) = write_chunk(&file, at, buf.data()) {
            let _ = back.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
        buf.len = 0;
        if back.send(Ok(buf)).is_err() {
            return Ok(());
        }
    }
}

/// Writes `data` at `at`; on the first `EINVAL` of a direct write turns `O_DIRECT` off (for
/// every thread: the flag belongs to the shared open file) and goes on through the page cache.
fn write_chunk(file: &File, at: u64, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match file.write_at(&data[done..], at + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                let flags = rustix::fs::fcntl_getfl(file)?;
                if !flags.contains(OFlags::DIRECT) {
                    return Err(e);
                }
                rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ at every offset (a chunk written at the wrong offset shows).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 4096 * 7 + i * 13) as u8).collect()
    }

    fn write_through(path: &Path, data: &[u8], piece: usize) -> io::Result<bool> {
        let (mut sink, other, direct) = Sink::create(path)?;
        for p in data.chunks(piece) {
            sink.write_all(p)?;
        }
        sink.finish()?;
        other.sync_all()?;
        Ok(direct)
    }

    #[test]
    fn chunks_land_at_their_offsets_and_the_tail_is_cut_to_length() {
        // /var/tmp is a disk file system here and in CI (O_DIRECT works); many chunks, so
        // both threads write, and a length that is not a multiple of the alignment.
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let data = pattern(5 * CHUNK + 3 * ALIGN + 123);
        let path = dir.path().join("a");
        let direct = write_through(&path, &data, 1_000_003).expect("write");
        assert!(direct, "O_DIRECT refused on /var/tmp");
        assert!(std::fs::read(&path).expect("read") == data);
        // Exactly one chunk, and less than one block.
        for len in [CHUNK, 100] {
            let path = dir.path().join(format!("b{len}"));
            write_through(&path, &data[..len], 65536).expect("write");
            assert!(std::fs::read(&path).expect("read")[..] == data[..len]);
        }
    }

    #[test]
    fn tmpfs_takes_the_archive_whole() {
        // tmpfs refuses O_DIRECT on older kernels (the page-cache path) and takes it on
        // newer ones: the bytes must come out right either way.
        let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
        let data = pattern(2 * CHUNK + 77);
        let path = dir.path().join("a");
        write_through(&path, &data, 65536).expect("write");
        assert!(std::fs::read(&path).expect("read") == data);
    }

    #[test]
    fn a_failed_write_shows_at_the_next_buffer() {
        // Not only once every buffer is allocated: with six 4 MiB buffers a small full file
        // system would otherwise report its ENOSPC only at the last flush.
        let file = File::options().write(true).open("/dev/full").expect("open");
        let mut d = DirectFile::new(file).expect("direct");
        d.write_all(&vec![1u8; CHUNK])
            .expect("the first chunk is only queued");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let e = d
            .write_all(&[2u8])
            .expect_err("the next buffer brings the error");
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error())
        );
        assert!(d.allocated < BUFFERS, "{} buffers allocated", d.allocated);
    }

    #[test]
    fn a_write_error_reaches_the_writer() {
        // /dev/full takes the open and fails every write with ENOSPC.
        let file = File::options().write(true).open("/dev/full").expect("open");
        let mut d = DirectFile::new(file).expect("direct");
        let chunk = vec![1u8; CHUNK];
        let mut err = None;
        for _ in 0..2 * BUFFERS {
            if let Err(e) = d.write_all(&chunk) {
                err = Some(e);
                break;
            }
        }
        let e = match err {
            Some(e) => e,
            None => d.finish().expect_err("finish after failed writes"),
        };
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error()),
            "{e}"
        );
    }
}
